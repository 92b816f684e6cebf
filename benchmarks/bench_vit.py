"""A ViT against a CNN of similar parameter count: graph size and NG-GNN / NG-T cost.

    python benchmarks/bench_vit.py [--threads 1]

Rows, each in a fresh process (its peak resident memory is its own):

- "graph": the ViT of ``nngraph.architectures`` (3 x 32 x 32 images, 8 x 8 patches:
  17 tokens, D = 32, 4 heads, 2 pre-norm blocks, 10 classes) and the hand-written
  ResNet-18 of ``nngraph.architectures`` at the base width whose parameter count is closest:
  parameters, nodes, edges, d_e, MB of graph tensors, conversion time; execute checked
  against the model (relative error);
- "nggnn" / "ngt": one forward + backward of the model (node width 32, edge width 16,
  2 layers, 4 heads; no probes) on a batch of one graph, median of 2 after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _model(arch: str):
    from nngraph.architectures import ResNet, ViT, randomise

    vit = randomise(ViT(image=32, patch=8, dim=32, heads=4, depth=2, classes=10, attention="mha"), 0)
    if arch == "vit":
        return vit
    target = sum(p.numel() for p in vit.parameters())
    widths = range(2, 17)
    sizes = {w: sum(p.numel() for p in ResNet(width=w, num_classes=10).parameters()) for w in widths}
    width = min(widths, key=lambda w: abs(sizes[w] - target))
    return randomise(ResNet(width=width, num_classes=10), 0)


def graph_row(arch: str, threads: int) -> dict:
    import torch

    import nngraph

    torch.set_num_threads(threads)
    model = _model(arch)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    graph = nngraph.to_graph(model, x)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        expected = model(x)
        err = float((nngraph.execute(graph, x)[0] - expected).abs().max() / expected.abs().max().clamp(min=1))
    tensors = [graph[k] for k in graph.keys() if hasattr(graph[k], "element_size")]
    mb = sum(t.numel() * t.element_size() for t in tensors) / 2**20
    return {"row": "graph", "arch": arch, "params": sum(p.numel() for p in model.parameters()),
            "nodes": graph.num_nodes, "edges": graph.num_edges, "d_e": graph.edge_attr.shape[1],
            "graph_mb": round(mb, 1), "convert_s": round(seconds, 3), "execute_rel_err": f"{err:.1e}"}


def model_row(name: str, arch: str, threads: int) -> dict:
    import torch

    import nngraph
    from common import forward_backward_seconds

    torch.set_num_threads(threads)
    batch = nngraph.collate([nngraph.to_graph(_model(arch), torch.zeros(1, 3, 32, 32))])
    return {"row": name, "arch": arch, "nodes": batch.num_nodes, "edges": batch.num_edges,
            "step_s": round(forward_backward_seconds(name, batch), 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch threads per row (1 on a shared machine)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one row in this process
    args = parser.parse_args()
    if args.one:
        kind, arch, threads = json.loads(args.one)
        print(json.dumps(graph_row(arch, threads) if kind == "graph" else model_row(kind, arch, threads)))
        return
    from common import write_result

    start = time.perf_counter()
    rows = []
    for spec in [(kind, arch) for kind in ("graph", "nggnn", "ngt") for arch in ("vit", "cnn")]:
        out = subprocess.run([sys.executable, __file__, "--one", json.dumps([*spec, args.threads])],
                             capture_output=True, text=True)
        if out.returncode != 0:
            lines = (out.stderr.strip() or f"exit code {out.returncode}").splitlines()
            rows.append({"row": spec[0], "arch": spec[1], "error": lines[-1][:200]})
        else:
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    path = write_result("5_vit", "5g. A ViT against a CNN of similar parameter count: graph size and metanetwork cost",
                        "python benchmarks/bench_vit.py" + (f" --threads {args.threads}" if args.threads != 2 else ""),
                        time.perf_counter() - start, rows, quick=False,
                        notes=[f"each row in a fresh process with {args.threads} torch thread(s)"])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
