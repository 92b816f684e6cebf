"""Training throughput and peak memory of the metanetworks and baselines on SIREN graphs.

    python benchmarks/bench_models.py [--quick]

One row per (model, configuration, input-network width, execution mode): forward +
backward + AdamW step on a batch of SIREN graphs (2 -> w -> w -> 1), graphs/s as the
median over timed steps after warm-up, and the peak resident memory of a fresh
process that ran only that row. "published" is the size of the neural-graphs paper
(node width 64, edge width 32, 4 layers, 8 heads, batch 128); "cpu" the size of the
task benchmarks (32, 16, 2 layers, 4 heads). "compiled" wraps each layer in torch.compile
(needs a C++ compiler; warm-up includes compilation, excluded from the timing).

Width scaling: the "cpu" size, eager, batch 8, on SIRENs of hidden width 32 to 256
(N = 2w + 3 nodes; NG-T's pair states grow as N^2), plotted as seconds per graph and
peak memory against width in ``5_models_width.png``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

CONFIGS = {
    "published": {"hidden": 64, "edge_hidden": 32, "layers": 4, "heads": 8, "batch": 128},
    "cpu": {"hidden": 32, "edge_hidden": 16, "layers": 2, "heads": 4, "batch": 32},
}


def run_one(model_name: str, config: str, width: int, mode: str, batch: int, steps: int, device: str = "cpu") -> dict:
    import torch

    from common import siren_graphs, training_step_times
    from nngraph.models import create_model

    torch.set_num_threads(2)
    sizes = dict(CONFIGS.get(config, {}))  # baselines: their defaults ("default")
    sizes.pop("batch", None)
    if model_name != "ngt":
        sizes.pop("heads", None)
    template, graphs = siren_graphs(batch, hidden=width)
    model = create_model(model_name, example=graphs, out_dim=10, **sizes).to(device)
    graphs = graphs.to(device)
    if mode == "compiled":
        model.compile_layers()
    labels = torch.randint(0, 10, (batch,), generator=torch.Generator().manual_seed(1)).to(device)
    times, _ = training_step_times(model, graphs, labels, steps)
    median = statistics.median(times)
    return {"model": model_name, "config": config, "siren_width": width, "mode": mode, "batch": batch,
            "nodes_per_graph": template.num_nodes, "graphs_per_s": round(batch / median, 1),
            "step_s": round(median, 3), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


WIDTHS = (32, 64, 128, 256)
BASELINES = ("mlp", "deepsets", "statnn", "nfn-np", "nfn-hnp")


def plot_width_scaling(rows: list[dict], quick: bool) -> None:
    from common import RESULTS

    from nngraph import plots

    prefix = "quick_" if quick else ""
    seconds, memory = {}, {}
    for model in ("nggnn", "ngt"):
        mine = sorted((r for r in rows if r["model"] == model), key=lambda r: r["siren_width"])
        seconds[f"{model}: ms per graph"] = ([r["siren_width"] for r in mine], [1000 / r["graphs_per_s"] for r in mine])
        memory[f"{model}: peak RSS GB"] = ([r["siren_width"] for r in mine], [r["peak_rss_mb"] / 1024 for r in mine])
    plots.lines({**seconds, **memory}, RESULTS / f"{prefix}5_models_width.png", "SIREN hidden width",
                "ms per graph (train step) / GB", title="cost against input-network width (batch 8, eager)",
                logx=True, logy=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="eager only, widths 32 and 64; quick_ result")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per row (default 3)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one row in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(*json.loads(args.one))))
        return
    from common import write_result

    rows_to_run = []
    for mode in ("eager",) if args.quick else ("eager", "compiled"):
        for model in ("nggnn", "ngt"):
            rows_to_run.append((model, "published", 32, mode, 128, args.steps, args.device))
    for model in BASELINES:
        rows_to_run.append((model, "default", 32, "eager", 32, args.steps, args.device))
    widths = (32, 64) if args.quick else WIDTHS
    for model in ("nggnn", "ngt"):
        rows_to_run.append((model, "cpu", 32, "eager", 32, args.steps, args.device))
        for width in widths:
            rows_to_run.append((model, "cpu", width, "eager", 8, args.steps, args.device))
    start = time.perf_counter()
    rows = []
    for spec in rows_to_run:
        out = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True)
        if out.returncode != 0:
            lines = (out.stderr.strip() or f"exit code {out.returncode} (killed: out of memory?)").splitlines()
            rows.append({"model": spec[0], "config": spec[1], "siren_width": spec[2], "mode": spec[3],
                         "batch": spec[4], "error": lines[-1][:200]})
        else:
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    path = write_result("5_models", "5d. Metanetwork training throughput and peak memory (SIREN graphs)",
                        "python benchmarks/bench_models.py" + (" --quick" if args.quick else "")
                        + (f" --device {args.device}" if args.device != "cpu" else ""),
                        time.perf_counter() - start, rows, quick=args.quick)
    plot_width_scaling([r for r in rows if r["batch"] == 8 and "graphs_per_s" in r], args.quick)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
