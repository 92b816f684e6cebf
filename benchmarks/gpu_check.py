"""One short visit to a GPU machine: the CUDA tests, then speed and memory (< 5 minutes).

    PYTHONPATH=src python benchmarks/gpu_check.py                      # on the GPU machine (make gpu-check)
    PYTHONPATH=src python benchmarks/gpu_check.py --device cpu --quick # the same script on a CPU, < 1 minute

Runs from a source checkout without installing anything: the GPU machine's own Python
(with its CUDA build of torch) and ``src/`` on PYTHONPATH. It first says which of the
packages nngraph uses import there (torch_geometric is required; a missing optional one
only costs the tests that need it), then:

1. the CUDA tests (``pytest tests/test_devices.py -k "cuda or gpus"``: every
   device-parametrised test on ``cuda``, two-GPU DDP when there are two GPUs);
2. NG-T and NG-GNN at the published size (node width 64, edge width 32, 4 layers,
   8 heads, batch 128; 0 and 64 probes) on synthetic INR graphs (nngraph's Siren, random
   weights, ``graphs_from_params``; no corpus needed): graphs/s of forward + backward +
   AdamW (median over timed steps after warm-up), fp32 and bf16 autocast, and the peak
   memory (``torch.cuda.max_memory_allocated``) of each row;
3. INR fitting with the batched kernel (2->32->32->1 dwsnet SIRENs, 28x28 random images,
   fixed steps, no early stop): INR-steps/s.

Writes ``benchmarks/results/gpu_check.json`` (``--out`` elsewhere), rendered into
RESULTS.md by ``benchmarks/run.py --render``. ``--quick`` shrinks every size (batch 4,
widths 32/16, 2 layers, 4 heads, probes 0 in fp32 and 4 in bf16, one timed step, 64 INRs)
to prove the script works before a GPU visit.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

PACKAGES = {  # module -> what needs it
    "torch_geometric": "every graph batch (required)",
    "numpy": "INR fitting and metrics (required)",
    "safetensors": "corpus storage (the CUDA training tests build a corpus)",
    "rich": "progress bars and tables (the CUDA training tests)",
    "sklearn": "the digits images of the CUDA training tests",
    "matplotlib": "plots written at the end of a training run",
    "scipy": "Kendall's tau of the generalize task",
    "pytest": "the CUDA tests",
}
REQUIRED = ("torch_geometric", "numpy")


def check_packages() -> dict[str, bool]:
    """Which packages import here; one line per missing one."""
    found = {}
    for name, why in PACKAGES.items():
        try:
            importlib.import_module(name)
            found[name] = True
        except Exception as exc:  # noqa: BLE001 - any import failure means "missing"
            found[name] = False
            print(f"missing: {name} ({why}): {type(exc).__name__}: {str(exc).splitlines()[0][:120]}", flush=True)
    return found


def run_cuda_tests(timeout: int) -> dict:
    """The device-parametrised tests on cuda; returns a summary row."""
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:warnings", "-p", "no:cacheprovider",
               "tests/test_devices.py", "-k", "cuda or gpus"]
    start = time.perf_counter()
    try:
        out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        tail = (out.stdout.strip().splitlines() or ["(no output)"])[-1]
        code = out.returncode
        if code:
            print(out.stdout[-4000:], out.stderr[-2000:], sep="\n", flush=True)
    except subprocess.TimeoutExpired:
        tail, code = f"timed out after {timeout} s", -1
    print(f"CUDA tests: {tail}", flush=True)
    return {"what": "CUDA tests (tests/test_devices.py -k 'cuda or gpus')", "result": tail, "exit_code": code,
            "seconds": round(time.perf_counter() - start, 1)}


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_row(name: str, probes: int, precision: str, batch_size: int, steps: int, device, sizes: dict,
              warmup: int = 2) -> dict:
    """graphs/s of forward + backward + AdamW and peak memory, one model configuration."""
    import torch

    from common import siren_graphs, training_step_times
    from nngraph.models import create_model

    _, host_batch = siren_graphs(batch_size, variant="dwsnet")
    torch.manual_seed(0)
    kwargs = dict(sizes)
    if name != "ngt":
        kwargs.pop("heads")
    model = create_model(name, example=host_batch, out_dim=10, probes=probes, **kwargs).to(device)
    labels = torch.randint(0, 10, (batch_size,), generator=torch.Generator().manual_seed(1)).to(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times, loss = training_step_times(model, host_batch.to(device), labels, steps, warmup, precision)
    median = statistics.median(times)
    row = {"what": f"{name} probes={probes} {precision}", "model": name, "probes": probes, "precision": precision,
           "batch": batch_size, "graphs_per_s": round(batch_size / median, 1), "step_ms": round(1000 * median, 2),
           "finite_loss": bool(torch.isfinite(loss))}
    if device.type == "cuda":
        row["peak_mem_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return row


def fitting_row(n_inrs: int, steps: int, device) -> dict:
    """INR-steps/s of the batched fitting kernel on random 28x28 images."""
    import torch

    from nngraph.data.fitting import FitRecipe, SirenSpec, fit_chunk, init_params, pack

    spec = SirenSpec(variant="dwsnet")
    images = torch.rand(n_inrs, 28, 28, generator=torch.Generator().manual_seed(0)).to(device)
    theta = pack(spec, init_params(spec, range(n_inrs))).to(device)
    recipe = FitRecipe(steps=steps, lr=5e-4, target_psnr=None)
    fit_chunk(spec, FitRecipe(steps=2, lr=5e-4, target_psnr=None), images, theta)  # warm-up
    _synchronize(device)
    start = time.perf_counter()
    _, psnr, done, _ = fit_chunk(spec, recipe, images, theta)
    _synchronize(device)
    seconds = time.perf_counter() - start
    return {"what": f"INR fitting: {n_inrs} SIRENs 2->32->32->1, 28x28, {steps} steps",
            "inr_steps_per_s": round(int(done.sum()) / seconds, 1), "seconds": round(seconds, 2),
            "mean_psnr": round(float(psnr.mean()), 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: proves the script works (CPU: < 1 minute)")
    ap.add_argument("--skip-tests", action="store_true", help="only the measurements")
    ap.add_argument("--out", default=str(HERE / "results" / "gpu_check.json"), help="result JSON")
    args = ap.parse_args()
    wall = time.perf_counter()
    found = check_packages()
    if not all(found[name] for name in REQUIRED):
        print("error: torch_geometric and numpy must import to run nngraph; install them into this Python first "
              "(pip install torch_geometric numpy), then rerun", file=sys.stderr)
        return 2
    import torch

    from nngraph.device import resolve_device
    from nngraph.errors import NNGraphError

    try:
        device = resolve_device(args.device)
    except NNGraphError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__} on {device} ({name}); CUDA GPUs: {torch.cuda.device_count()}", flush=True)
    rows = []
    if device.type == "cuda" and not args.skip_tests:
        if found["pytest"]:
            rows.append(run_cuda_tests(timeout=150))
        else:
            print("CUDA tests skipped: pytest does not import here", flush=True)
    elif device.type != "cuda":
        print("CUDA tests skipped: the device is not a GPU", flush=True)
    published = {"hidden": 64, "edge_hidden": 32, "layers": 4, "heads": 8}
    batch_size, steps, warmup, probe_counts = (4, 1, 1, (0, 4)) if args.quick else (128, 10, 2, (0, 64))
    if args.quick:  # the task benchmarks' CPU size
        published = {"hidden": 32, "edge_hidden": 16, "layers": 2, "heads": 4}
    combos = [(p, precision) for p in probe_counts for precision in ("fp32", "bf16")]
    if args.quick:  # every code path once
        combos = [(probe_counts[0], "fp32"), (probe_counts[1], "bf16")]
    for model in ("ngt", "nggnn"):
        for probes, precision in combos:
            try:
                row = model_row(model, probes, precision, batch_size, steps, device, published, warmup)
            except Exception as exc:  # noqa: BLE001 - a failing row is reported, the others still run
                row = {"what": f"{model} probes={probes} {precision}", "error": f"{type(exc).__name__}: {exc}"[:300]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    n_inrs, fit_steps = (64, 5) if args.quick else (8192, 50)
    try:
        rows.append(fitting_row(n_inrs, fit_steps, device))
    except Exception as exc:  # noqa: BLE001
        rows.append({"what": "INR fitting", "error": f"{type(exc).__name__}: {exc}"[:300]})
    print(json.dumps(rows[-1]), flush=True)

    from common import commit, machine

    payload = {"title": "GPU check: CUDA tests, NG-T / NG-GNN at the published size, INR fitting",
               "command": "PYTHONPATH=src python benchmarks/gpu_check.py" + (f" --device {args.device}"
                                                                           if args.device != "auto" else "")
               + (" --quick" if args.quick else ""),
               "machine": {**machine(), "device": f"{device} ({name})"}, "commit": commit(),
               "wall_s": round(time.perf_counter() - wall, 1), "rows": rows,
               "packages_missing": [k for k, v in found.items() if not v],
               "notes": ["graphs/s: forward + backward + AdamW on one batch kept on the device, median of the "
                         "timed steps after 2 warm-up steps; peak_mem_mb: torch.cuda.max_memory_allocated",
                         "published size: node width 64, edge width 32, 4 layers, 8 heads (NG-T), batch 128; "
                         "SIRENs 2->32->32->1 (dwsnet), random weights"]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out} in {payload['wall_s']} s", flush=True)
    failed = [r for r in rows if "error" in r or r.get("exit_code")]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
