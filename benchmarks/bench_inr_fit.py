"""Benchmark batched SIREN fitting on Fashion-MNIST (2->32->32->1, 28x28).

Measures, on a class-stratified subset of the Fashion-MNIST training split:

- throughput of the hand-written batched kernel (fixed steps, no early stop) and of a
  naive batched autograd fit (torch.bmm + torch.optim.Adam on stacked parameters), both
  in INR-steps/s, on the same images and machine state;
- every variant's default recipe (``nngraph.data.fitting.DEFAULT_RECIPES``): INR-steps/s,
  INRs/s and the PSNR distribution; and, for ``dwsnet``, the published recipe (Adam,
  lr 5e-4, 1000 steps, stop at 40 dB) on the same images for comparison.

Wall-clock rates depend on what else runs on the machine, so the result also records
the process CPU time per wall second (``cpu_per_wall``; 2.0 = both cores were ours), the
rate per CPU-second, and the load average before and after.

    .venv/bin/python benchmarks/bench_inr_fit.py            # writes benchmarks/results/inr_fit.json
    .venv/bin/python benchmarks/bench_inr_fit.py --n 256 --skip-published
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from nngraph.data.fitting import DEFAULT_RECIPES, FitRecipe, SirenSpec, fit_inrs, init_params
from nngraph.data.images import load_images
from nngraph.data.inr import pixel_grid
from nngraph.data.store import atomic_write_json

RESULTS = Path(__file__).parent / "results" / "inr_fit.json"


def psnr_summary(psnr: np.ndarray) -> dict:
    out = {"mean": float(psnr.mean()), "min": float(psnr.min()), "max": float(psnr.max())}
    for q in (5, 25, 50, 75, 95):
        out[f"p{q}"] = float(np.percentile(psnr, q))
    return {k: round(v, 3) for k, v in out.items()}


def timed(fn):
    """(result, wall seconds, process CPU seconds) of fn()."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def run_recipe(images, spec, recipe, chunk_size, workers) -> dict:
    res, wall, cpu = timed(lambda: fit_inrs(images, spec, recipe, range(len(images)), chunk_size=chunk_size,
                                            workers=workers, progress=False))
    psnr = res.psnr.numpy()
    out = {
        "recipe": recipe.to_dict(),
        "n_inrs": len(images),
        "wall_s": round(wall, 2),
        "cpu_per_wall": round(cpu / wall, 2),
        "inr_steps": res.inr_steps,
        "inr_steps_per_s": round(res.inr_steps / wall, 1),
        "inr_steps_per_cpu_s": round(res.inr_steps / cpu, 1),
        "inrs_per_s": round(len(images) / wall, 2),
        "steps_mean": round(float(res.steps.float().mean()), 1),
        "psnr": psnr_summary(psnr),
    }
    if recipe.target_psnr is not None:
        out["fraction_at_target"] = round(float((psnr >= recipe.target_psnr).mean()), 4)
    return out


def naive_fit_rate(images: torch.Tensor, spec: SirenSpec, steps: int, lr: float) -> dict:
    """The baseline: autograd through torch.bmm on stacked parameters + torch.optim.Adam."""
    B, H, W = images.shape
    params = {k: v.clone().requires_grad_(True) for k, v in init_params(spec, range(B)).items()}
    opt = torch.optim.Adam(params.values(), lr=lr)
    grid = pixel_grid(H, W)  # [P, 2]
    target = images.reshape(B, H * W, 1) - spec.offset  # [B, P, 1]
    names = spec.layer_names()

    def step():
        h = grid.expand(B, -1, -1)  # [B, P, 2]
        for name in names[:-1]:
            h = torch.sin(spec.w0 * torch.baddbmm(params[f"{name}.bias"][:, None], h,
                                                 params[f"{name}.weight"].transpose(1, 2)))  # [B, P, h]
        y = torch.baddbmm(params["out.bias"][:, None], h, params["out.weight"].transpose(1, 2))  # [B, P, 1]
        loss = (y - target).square().mean(dim=(1, 2)).sum()  # summed over INRs
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    _, wall, cpu = timed(lambda: [step() for _ in range(steps)])
    return {"n_inrs": B, "steps": steps, "wall_s": round(wall, 2), "cpu_per_wall": round(cpu / wall, 2),
            "inr_steps_per_s": round(B * steps / wall, 1), "inr_steps_per_cpu_s": round(B * steps / cpu, 1),
            "torch_threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=512, help="images per recipe (stratified from the train split)")
    ap.add_argument("--throughput-steps", type=int, default=100, help="fixed steps of the throughput runs")
    ap.add_argument("--chunk-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=None, help="default: torch's thread count")
    ap.add_argument("--skip-published", action="store_true", help="skip the published dwsnet recipe")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    data = load_images("fashion-mnist").subset("train")
    rng = np.random.default_rng(0)
    pick = np.sort(np.concatenate([rng.permutation(np.flatnonzero(data.labels.numpy() == c))[: args.n // 10 + 1]
                                   for c in range(10)]))[: args.n]
    images = data.images[torch.from_numpy(pick)]  # [n, 28, 28]
    result = {
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "python": platform.python_version(), "load_avg_start": [round(x, 2) for x in os.getloadavg()]},
        "images": {"source": "fashion-mnist train split", "n": len(images), "indices_seed": 0},
        "architecture": "2->32->32->1 SIREN, 28x28 pixels",
    }
    print(f"{len(images)} Fashion-MNIST images; load average {os.getloadavg()}", flush=True)

    # throughput: same images, fixed steps, no early stop
    spec = SirenSpec(variant="dwsnet")
    fixed = FitRecipe(steps=args.throughput_steps, lr=5e-4, target_psnr=None)
    fast = run_recipe(images, spec, fixed, args.chunk_size, args.workers)
    naive = naive_fit_rate(images[:256], spec, steps=max(10, args.throughput_steps // 4), lr=5e-4)
    result["throughput"] = {"handwritten": {k: fast[k] for k in ("n_inrs", "inr_steps", "wall_s", "cpu_per_wall",
                                                                  "inr_steps_per_s", "inr_steps_per_cpu_s")},
                            "naive_autograd": naive,
                            "speedup": round(fast["inr_steps_per_s"] / naive["inr_steps_per_s"], 2)}
    print(f"throughput: hand-written {fast['inr_steps_per_s']:.0f} INR-steps/s "
          f"(cpu/wall {fast['cpu_per_wall']}), naive {naive['inr_steps_per_s']:.0f}", flush=True)

    result["recipes"] = {}
    for variant, recipe in DEFAULT_RECIPES.items():
        r = run_recipe(images, SirenSpec(variant=variant), recipe, args.chunk_size, args.workers)
        result["recipes"][variant] = r
        print(f"{variant} default: {r['inr_steps_per_s']:.0f} INR-steps/s, {r['inrs_per_s']:.1f} INRs/s, "
              f"PSNR {r['psnr']}", flush=True)
    if not args.skip_published:
        published = FitRecipe(steps=1000, lr=5e-4, schedule="constant", target_psnr=40.0)
        r = run_recipe(images, SirenSpec(variant="dwsnet"), published, args.chunk_size, args.workers)
        result["recipes"]["dwsnet_published"] = r
        print(f"dwsnet published: {r['inr_steps_per_s']:.0f} INR-steps/s, PSNR {r['psnr']}", flush=True)
    result["machine"]["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
