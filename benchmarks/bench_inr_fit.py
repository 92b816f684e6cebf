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

    .venv/bin/python benchmarks/bench_inr_fit.py            # writes benchmarks/results/5_inr_fit.json
    .venv/bin/python benchmarks/bench_inr_fit.py --quick    # 128 images, no published recipe
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from nngraph.data.fitting import DEFAULT_RECIPES, PUBLISHED_RECIPES, FitRecipe, SirenSpec, fit_inrs, init_params
from nngraph.data.images import load_images
from nngraph.data.inr import pixel_grid

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402


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
    ap.add_argument("--quick", action="store_true", help="128 images, no published recipe; quick_ result")
    args = ap.parse_args()
    if args.quick:
        args.n, args.skip_published = 128, True
    start = time.perf_counter()
    load_start = os.getloadavg()[0]

    data = load_images("fashion-mnist").subset("train")
    rng = np.random.default_rng(0)
    pick = np.sort(np.concatenate([rng.permutation(np.flatnonzero(data.labels.numpy() == c))[: args.n // 10 + 1]
                                   for c in range(10)]))[: args.n]
    images = data.images[torch.from_numpy(pick)]  # [n, 28, 28]
    print(f"{len(images)} Fashion-MNIST images; load average {os.getloadavg()}", flush=True)

    def row(name: str, r: dict) -> dict:
        psnr = r.get("psnr", {})
        return {"run": name, "INRs": r["n_inrs"], "INR-steps/s": r["inr_steps_per_s"],
                "INR-steps per CPU s": r["inr_steps_per_cpu_s"], "cpu/wall": r["cpu_per_wall"],
                "INRs/s": r.get("inrs_per_s", ""), "mean steps": r.get("steps_mean", ""),
                "mean PSNR": psnr.get("mean", ""), "p5/p50/p95 PSNR": "/".join(f"{psnr[q]:.1f}" for q in ("p5", "p50", "p95"))
                if psnr else "", "reach target": r.get("fraction_at_target", "")}

    # throughput: same images, fixed steps, no early stop
    spec = SirenSpec(variant="dwsnet")
    fixed = FitRecipe(steps=args.throughput_steps, lr=5e-4, target_psnr=None)
    fast = run_recipe(images, spec, fixed, args.chunk_size, args.workers)
    naive = naive_fit_rate(images[:256], spec, steps=max(10, args.throughput_steps // 4), lr=5e-4)
    rows = [row(f"throughput: hand-written kernel, {args.throughput_steps} fixed steps", fast),
            row("throughput: naive autograd + torch.optim.Adam", naive)]
    print(rows[0], rows[1], sep="\n", flush=True)
    recipes = dict(DEFAULT_RECIPES)
    if not args.skip_published:
        recipes["dwsnet_published"] = PUBLISHED_RECIPES["dwsnet"]
    for name, recipe in recipes.items():
        variant = name.split("_")[0]
        r = run_recipe(images, SirenSpec(variant=variant), recipe, args.chunk_size, args.workers)
        rows.append(row(f"{name} recipe ({recipe.steps} steps, lr {recipe.lr}, {recipe.schedule})"
                        if name.endswith("published") else f"{name} default recipe", r))
        print(rows[-1], flush=True)
    path = write_result("5_inr_fit", "5c. INR fitting on Fashion-MNIST (2->32->32->1 SIREN, 28x28, 2 threads)",
                        "python benchmarks/bench_inr_fit.py" + (" --quick" if args.quick else ""),
                        time.perf_counter() - start, rows, quick=args.quick,
                        load_average=f"{load_start:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
