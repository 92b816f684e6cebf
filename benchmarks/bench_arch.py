"""Real architectures: conversion cost of a full-width ResNet-18, and how graph size and
NG-GNN / NG-T cost grow with network width.

    python benchmarks/bench_arch.py [--quick]

Rows, each measured in a fresh process (so that its peak resident memory is its own):

- "convert": ``to_graph`` of ResNet-18 (torchvision's structure, written by hand in
  ``tests/graph/archs.py``; 11.7 M parameters at width 64 with 1000 classes; the width
  rows have 10 classes) on a 3 x 32 x 32 example,
  median of 3 (wall and process CPU time: on a machine shared with other jobs the CPU
  time is the better guide to the wall time on an idle one); ``to_params`` checked bit-exact; ``execute`` on 2 images checked against
  the model (relative error) and timed; graph size (nodes, edges, d_e, MB of tensors);
- "nggnn" / "ngt": one forward + backward of the model ("cpu" size: node width 32, edge
  width 16, 2 layers, 4 heads; no probes) on a batch of one ResNet-18 graph of base width
  w, median of 2 after one warm-up. NG-T attends over all N^2 node pairs (its dense
  edge features alone take N^2 d_e floats), so it runs only up to the widths that fit.

The full run uses widths 8, 16, 32, 64, ``--quick`` widths 4, 8, 16, both with the
full-width conversion row; NG-T runs up to width 8 (925 nodes: 2.1 GB peak; its memory
grows as N^2, so width 16 would need about 8 GB).
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _peak_mb() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _graph_mb(graph) -> float:
    tensors = [graph[k] for k in graph.keys() if hasattr(graph[k], "element_size")]
    return round(sum(t.numel() * t.element_size() for t in tensors) / 2**20, 1)


def convert_row(width: int, classes: int, threads: int) -> dict:
    import torch

    import nngraph
    from nngraph.architectures import ResNet, randomise

    torch.set_num_threads(threads)
    model = randomise(ResNet(width=width, num_classes=classes), 0)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
    before = _peak_mb()
    times, cpu = [], []
    for _ in range(3):
        start, start_cpu = time.perf_counter(), time.process_time()
        graph = nngraph.to_graph(model, x[:1])
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    convert_peak = _peak_mb() - before
    params = nngraph.to_params(graph)
    state = model.state_dict()
    exact = all(torch.equal(params[k], state[k]) for k in state)
    start = time.perf_counter()
    y, _ = nngraph.execute(graph, x)
    execute_s = time.perf_counter() - start
    rel = float((y - expected).abs().max()) / max(float(expected.abs().max()), 1.0)
    return {"row": "convert", "resnet18_width": width, "classes": classes, "parameters": sum(p.numel() for p in model.parameters()),
            "nodes": graph.num_nodes, "edges": graph.num_edges, "d_e": graph.edge_attr.shape[1],
            "graph_mb": _graph_mb(graph), "to_graph_s": round(statistics.median(times), 2),
            "to_graph_cpu_s": round(statistics.median(cpu), 2),
            "to_graph_extra_peak_mb": convert_peak, "to_params_exact": exact,
            "execute_s_2_images": round(execute_s, 2), "execute_rel_error": float(f"{rel:.2g}"),
            "peak_rss_mb": _peak_mb()}


def model_row(name: str, width: int, threads: int) -> dict:
    import torch

    import nngraph
    from common import forward_backward_seconds
    from nngraph.architectures import ResNet, randomise

    torch.set_num_threads(threads)
    graph = nngraph.to_graph(randomise(ResNet(width=width, num_classes=10), 0), torch.zeros(1, 3, 32, 32))
    seconds = forward_backward_seconds(name, nngraph.collate([graph]))
    return {"row": name, "resnet18_width": width, "nodes": graph.num_nodes, "edges": graph.num_edges,
            "step_s": round(seconds, 2), "peak_rss_mb": _peak_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="widths 4-16 (NG-T up to 8); quick_ result")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads per row (default 2; use 1 on a machine shared with other jobs)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one row in this process
    args = parser.parse_args()
    if args.one:
        kind, width, classes, threads = json.loads(args.one)
        print(json.dumps(convert_row(width, classes, threads) if kind == "convert" else model_row(kind, width, threads)))
        return
    from common import write_result

    widths, ngt_max = ((4, 8, 16), 8) if args.quick else ((8, 16, 32, 64), 8)
    specs = [("convert", 64, 1000)] + [("convert", w, 10) for w in widths]
    specs += [("nggnn", w, 10) for w in widths] + [("ngt", w, 10) for w in widths if w <= ngt_max]
    start = time.perf_counter()
    rows = []
    for spec in specs:
        out = subprocess.run([sys.executable, __file__, "--one", json.dumps([*spec, args.threads])], capture_output=True, text=True)
        if out.returncode != 0:
            lines = (out.stderr.strip() or f"exit code {out.returncode} (killed: out of memory?)").splitlines()
            rows.append({"row": spec[0], "resnet18_width": spec[1], "error": lines[-1][:200]})
        else:
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    path = write_result("5_arch", "5e. Real architectures: ResNet-18 conversion and cost against width",
                        "python benchmarks/bench_arch.py" + (" --quick" if args.quick else "")
                        + (f" --threads {args.threads}" if args.threads != 2 else ""),
                        time.perf_counter() - start, rows, quick=args.quick,
                        notes=[f"each row in a fresh process with {args.threads} torch thread(s); on a machine shared "
                               "with other jobs use --threads 1 (two threads there mostly wait on each other)"])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
