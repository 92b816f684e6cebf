"""CNN zoo throughput and accuracy spread on Fashion-MNIST (14x14).

    python benchmarks/bench_zoo.py                 # 200 sampled + 200 fixed-architecture nets
    python benchmarks/bench_zoo.py --count 50 --variants fixed

Trains ``--count`` nets per variant with ``nngraph.data.zoo.generate`` on the 55k
Fashion-MNIST training split (downsampled 28 -> 14 by 2x2 average pooling), labels them
with the accuracy on the first ``--test-limit`` test images, and writes
``benchmarks/results/zoo.json``: nets/s, the time extrapolated to 1,000 nets, CPU seconds
per net, the load average of the machine during the run (other jobs slow the wall
time down), and the accuracy histogram in bins of 0.1.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from nngraph.data import zoo  # noqa: E402
from nngraph.data.images import load_images  # noqa: E402


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def load_data(test_limit: int, factor: int) -> zoo.ZooData:
    """Fashion-MNIST train split and the first ``test_limit`` test images, downsampled."""
    images = load_images("fashion-mnist")
    train, test = images.subset("train"), images.subset("test")
    return zoo.make_zoo_data(train.images, train.labels, test.images, test.labels, factor=factor,
                             test_limit=test_limit)


def run_variant(name: str, count: int, data: zoo.ZooData, seed: int, workers: int) -> dict:
    """Generate ``count`` nets of one variant; return one result row."""
    fixed = name == "fixed"
    load_before = os.getloadavg()[0]
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    acc, attempts, macs, steps = [], 0, [], []
    for record in zoo.generate(count, data, seed, fixed_arch=fixed, progress=True, workers=workers):
        acc.append(record["test_accuracy"])
        attempts += record["attempts"] - 1
        macs.append(zoo.forward_macs(record["arch"], *data.image_size))
        steps.append(record["training"]["steps"])
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    acc = np.asarray(acc)
    hist, _ = np.histogram(acc, bins=10, range=(0.0, 1.0))
    q = np.quantile(acc, [0.1, 0.5, 0.9])
    return {
        "variant": name,
        "nets": count,
        "workers": workers,
        "wall_s": round(wall, 1),
        "nets_per_s": round(count / wall, 3),
        "min_per_1000": round(1000 * wall / count / 60, 1),
        "cpu_s_per_net": round(cpu / count, 2),
        "min_per_1000_if_idle": round(1000 * cpu / count / workers / 60, 1),
        "load_avg_1m": f"{load_before:.1f}->{os.getloadavg()[0]:.1f}",
        "acc_mean": round(float(acc.mean()), 3),
        "acc_min": round(float(acc.min()), 3),
        "acc_p10_p50_p90": "/".join(f"{v:.3f}" for v in q),
        "acc_max": round(float(acc.max()), 3),
        "hist_0.0_to_1.0_by_0.1": "/".join(str(int(h)) for h in hist),
        "retried_recipes": attempts,
        "mean_fwd_mmacs": round(float(np.mean(macs)) / 1e6, 3),
        "mean_steps": round(float(np.mean(steps)), 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=200, help="nets per variant")
    p.add_argument("--variants", default="sampled,fixed", help="comma-separated: sampled, fixed")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes, one torch thread each")
    p.add_argument("--test-limit", type=int, default=2000, help="test images that label each net")
    p.add_argument("--downsample", type=int, default=2, help="average-pooling factor (28 -> 14)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="10 fixed-architecture nets; quick_ result")
    args = p.parse_args()
    if args.quick:
        args.count, args.variants = 10, "fixed"
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in ("sampled", "fixed"):
            p.error(f"unknown variant {v!r}; use sampled and/or fixed")
    data = load_data(args.test_limit, args.downsample)
    t0 = time.perf_counter()
    rows = [run_variant(v, args.count, data, args.seed, args.workers) for v in variants]
    for row in rows:
        print(row)
    path = write_result(
        "5_zoo",
        "5b. CNN zoo: throughput and accuracy spread (Fashion-MNIST 14x14)",
        "python benchmarks/bench_zoo.py " + " ".join(sys.argv[1:]),
        time.perf_counter() - t0,
        rows,
        data={"train_images": int(data.train_x.shape[0]), "test_images": int(data.test_x.shape[0]),
              "image_size": list(data.image_size)},
        target="1,000 nets in <= 45 min on 2 cores",
        quick=args.quick,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
