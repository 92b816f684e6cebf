"""bf16 and torch.compile against fp32 eager on this machine: training speed and accuracy of NG-T and NG-GNN.

    python benchmarks/bench_precision.py [--quick] [--device cpu]

Four modes: eager or compiled layers (``--compile``: each layer through torch.compile,
compilation in the warm-up steps) times fp32 or bf16 autocast (``--precision bf16``: the
products in bfloat16; loss, metrics, parameters and optimiser state in fp32). Two
measurements:

- speed: forward + backward + AdamW at the published size (node width 64, edge width
  32, 4 layers, NG-T 8 heads, batch 128) on SIREN graphs (2->32->32->1, random weights),
  graphs/s as the median of the timed steps after 2 warm-up steps;
- accuracy (eager fp32, eager bf16, compiled bf16; compiling an fp32 model changes its
  arithmetic only by rounding): the same short training run (the task benchmarks' CPU size: widths 32/16,
  2 layers, NG-T 4 heads, 16 probes; AdamW lr 3e-3, batch 32, ``EPOCHS`` epochs, seeds
  ``SEEDS``) on the digits INR corpus (1,797 SIRENs of scikit-learn's 8x8 digits, built
  once into ``benchmarks/work/precision/``), test accuracy of the best validation epoch.
  A rerun reuses the finished runs of the same ``src/`` (git tree hash) and trains again
  after the library changes.

Writes ``results/5_precision.json`` (``quick_5_precision.json`` with ``--quick``) with
a verdict per model in its notes: speed-up and accuracy change. Needs a quiet machine:
about 25 minutes on 2 cores. ``--quick`` (tiny sizes, a 60-INR corpus, one epoch, the
three modes with an accuracy) only proves the script works (about 2 minutes, most of it
compiling).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import RESULTS, git_version, siren_graphs, training_step_times, write_result  # noqa: E402

PUBLISHED = {"hidden": 64, "edge_hidden": 32, "layers": 4, "heads": 8}
TASK_SIZE = {"hidden": 32, "edge_hidden": 16, "layers": 2, "heads": 4, "probes": 16}
EPOCHS, SEEDS = 10, (0, 1)
MODES = (("eager", "fp32"), ("eager", "bf16"), ("compiled", "fp32"), ("compiled", "bf16"))
ACCURACY_MODES = (("eager", "fp32"), ("eager", "bf16"), ("compiled", "bf16"))


def speed(model_name: str, compiled: bool, precision: str, sizes: dict, batch: int, steps: int, device) -> float:
    """graphs/s of forward + backward + AdamW, median over ``steps`` after 2 warm-up steps
    (which compile a compiled model)."""
    import torch

    from nngraph.models import create_model

    _, graphs = siren_graphs(batch, variant="dwsnet")
    kwargs = dict(sizes)
    if model_name != "ngt":
        kwargs.pop("heads")
    torch.manual_seed(0)
    model = create_model(model_name, example=graphs, out_dim=10, **kwargs).to(device)
    if compiled:
        model.compile_layers()
    labels = torch.randint(0, 10, (batch,), generator=torch.Generator().manual_seed(1)).to(device)
    times, _ = training_step_times(model, graphs.to(device), labels, steps, precision=precision)
    return batch / statistics.median(times)


def corpus(work: Path, quick: bool) -> Path:
    """The digits INR corpus (built once; a rerun reuses it)."""
    from nngraph.data.build import build_inr_corpus

    root = work / ("digits-quick" if quick else "digits")
    small = dict(limit=60, steps=30) if quick else {}
    build_inr_corpus(root, images="digits", variant="dwsnet", seed=0, progress=False, log=lambda *a: None, **small)
    return root


def accuracy(data: Path, work: Path, model: str, compiled: bool, precision: str, seed: int, sizes: dict,
             epochs: int, device: str) -> dict:
    """One training run (reused when its metrics.json exists for this version of ``src/``, its
    git tree hash): test accuracy and train seconds."""
    from nngraph.train import TrainConfig, train

    out = work / "runs" / git_version("HEAD:src") / f"{model}-{'compiled-' if compiled else ''}{precision}-s{seed}"
    if (out / "metrics.json").exists():
        result = json.loads((out / "metrics.json").read_text())
    else:
        kwargs = dict(sizes)
        if model != "ngt":
            kwargs.pop("heads")
        config = TrainConfig(task="classify", data=str(data), model=model, out=str(out), epochs=epochs,
                             batch_size=32, lr=3e-3, seed=seed, model_kwargs=kwargs, device=device,
                             precision=precision, compile=compiled)
        result = train(config, progress=False)
    return {"test_accuracy": result["test"]["accuracy"], "train_s": result["train_seconds"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, proves the script works; quick_ result")
    ap.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N (default: cpu, the verdict's machine)")
    ap.add_argument("--work", default=str(HERE / "work" / "precision"), help="corpus and runs folder")
    ap.add_argument("--results", default=str(RESULTS), help="folder of the result JSON")
    args = ap.parse_args()
    import torch

    from nngraph.device import resolve_device

    torch.set_num_threads(2)
    device = resolve_device(args.device)
    work = Path(args.work) / ("quick" if args.quick else "full")
    start = time.perf_counter()
    if args.quick:
        # one size for both measurements (the accuracy run's SIRENs as wide as the speed run's,
        # the batch as large): the compiled training step of the accuracy run can come from
        # inductor's cache; compiled fp32 (speed only) is left out
        speed_sizes, batch, steps = {"hidden": 8, "edge_hidden": 4, "layers": 1, "heads": 2}, 32, 1
        modes = ACCURACY_MODES
        task_sizes, epochs, seeds = {**speed_sizes, "probes": 2}, 1, (0,)
    else:
        speed_sizes, batch, steps, modes = PUBLISHED, 128, 3, MODES
        task_sizes, epochs, seeds = TASK_SIZE, EPOCHS, SEEDS
    data = corpus(work, args.quick)
    rows, notes = [], []
    for model in ("ngt", "nggnn"):
        rates, accs = {}, {}
        for mode, precision in modes:
            compiled = mode == "compiled"
            rates[mode, precision] = speed(model, compiled, precision, speed_sizes, batch, steps, device)
            row = {"model": model, "layers": mode, "precision": precision,
                   "graphs/s": round(rates[mode, precision], 2),
                   "speed-up": round(rates[mode, precision] / rates["eager", "fp32"], 2)}
            if (mode, precision) in ACCURACY_MODES:
                runs = [accuracy(data, work, model, compiled, precision, s, task_sizes, epochs, str(device))
                        for s in seeds]
                accs[mode, precision] = [r["test_accuracy"] for r in runs]
                row.update({"test accuracy per seed": [round(a, 4) for a in accs[mode, precision]],
                            "mean test accuracy": round(statistics.mean(accs[mode, precision]), 4),
                            "train s per run": round(statistics.mean(r["train_s"] for r in runs), 1)})
            rows.append(row)
            print(row, flush=True)
        base = accs["eager", "fp32"]
        spread = max(base) - min(base) if len(base) > 1 else float("nan")
        for mode, precision in ACCURACY_MODES[1:]:
            change = statistics.mean(accs[mode, precision]) - statistics.mean(base)
            notes.append(f"{model}: {mode} {precision} trains {rates[mode, precision] / rates['eager', 'fp32']:.2f}x as "
                         f"fast as eager fp32 (graphs/s); test accuracy changes by {change:+.4f} (eager fp32 spread "
                         f"over seeds {spread:.4f})")
    notes.append(f"graphs/s: forward + backward + AdamW, batch {batch}, widths {speed_sizes['hidden']}/"
                 f"{speed_sizes['edge_hidden']}, {speed_sizes['layers']} layers, {speed_sizes['heads']} heads (NG-T)")
    notes.append(f"device {device}; accuracy runs: widths {task_sizes['hidden']}/{task_sizes['edge_hidden']}, "
                 f"{task_sizes['layers']} layers, {task_sizes['probes']} probes, {epochs} epochs, seeds {list(seeds)}")
    command = "python benchmarks/bench_precision.py" + (" --quick" if args.quick else "") + (
        f" --device {args.device}" if args.device != "cpu" else "")
    path = write_result("5_precision", "5f. bf16 and compiled layers against fp32 eager: training speed and accuracy (NG-T, NG-GNN)", command,
                        time.perf_counter() - start, rows, quick=args.quick, notes=notes,
                        directory=Path(args.results))
    print("\n".join(notes))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
