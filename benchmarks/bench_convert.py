"""Conversion throughput: the one-architecture fast path and the general torch.fx path.

    python benchmarks/bench_convert.py [--count 100000] [--repeats 3]

Fast path: B stacked SIRENs (2->32->32->1, the dwsnet corpus shape) -> node features
[B, N, d_v] and edge features [B, E, d_e] through one template graph
(``nngraph.graph.fast.stacked_features``), and a PyG batch of 128 graphs
(``graphs_from_params``) as a training loop builds it. General path: ``to_graph`` per
network (trace, shape propagation, op rules) for a SIREN and a small residual CNN.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nngraph  # noqa: E402
from common import write_result  # noqa: E402
from nngraph.data.inr import Siren  # noqa: E402
from nngraph.graph.fast import graphs_from_params, stacked_features  # noqa: E402


class SmallResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        h = torch.relu(self.bn(self.stem(x)))
        h = torch.relu(h + self.block(h))
        return self.head(h.mean((2, 3)))


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100_000, help="networks in the fast-path stack (default 100000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions; the median is reported (default 3)")
    parser.add_argument("--quick", action="store_true", help="10,000 networks, one repetition; quick_ result")
    args = parser.parse_args()
    if args.quick:
        args.count, args.repeats = 10_000, 1
    torch.set_num_threads(2)
    start = time.perf_counter()
    rows = []

    template = nngraph.to_graph(Siren(), torch.zeros(1, 2))
    gen = torch.Generator().manual_seed(0)
    stack = {k: torch.randn(args.count, *v.shape, generator=gen) * 0.1 for k, v in Siren().state_dict().items()}
    times = timed(lambda: stacked_features(template, stack), args.repeats)
    rows.append({"path": "fast: stacked features", "network": "SIREN 2-32-32-1", "networks": args.count,
                 "median_s": round(statistics.median(times), 3),
                 "networks_per_s": round(args.count / statistics.median(times))})
    small = {k: v[:128] for k, v in stack.items()}
    times = timed(lambda: graphs_from_params(template, small), max(args.repeats, 10))
    rows.append({"path": "fast: PyG batch", "network": "SIREN 2-32-32-1", "networks": 128,
                 "median_s": round(statistics.median(times), 4),
                 "networks_per_s": round(128 / statistics.median(times))})

    for name, model, example in [
        ("SIREN 2-32-32-1", Siren(), torch.zeros(1, 2)),
        ("residual CNN 16ch", SmallResNet().eval(), torch.zeros(1, 1, 28, 28)),
    ]:
        count = 50
        times = timed(lambda: [nngraph.to_graph(model, example) for _ in range(count)], args.repeats)
        rows.append({"path": "general: to_graph (torch.fx)", "network": name, "networks": count,
                     "median_s": round(statistics.median(times), 3),
                     "networks_per_s": round(count / statistics.median(times), 1)})

    path = write_result("5_convert", "5a. Conversion throughput", "python benchmarks/bench_convert.py"
                        + (" --quick" if args.quick else ""), time.perf_counter() - start, rows, quick=args.quick)
    for row in rows:
        print(row)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
