"""Shared helpers of the benchmark scripts: machine facts and atomic result files.

Every result file is JSON with ``title``, ``command``, ``machine``, ``commit``,
``wall_s`` and ``rows`` (a list of flat dicts, rendered as one table in RESULTS.md).
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

from nngraph.io import atomic_write_json

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def git_version(rev: str = "HEAD") -> str:
    """``git rev-parse --short rev`` of this repository, "+dirty" when ``src/`` has uncommitted
    changes, "unknown" outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "rev-parse", "--short", rev], capture_output=True, text=True, check=True,
                             cwd=root)
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], capture_output=True, text=True,
                               cwd=root).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def commit() -> str:
    """The commit of the code that ran (see ``git_version``)."""
    return git_version("HEAD")


def siren_graphs(batch: int, seed: int = 0, **siren_kwargs):
    """(template graph, fast-path batch) of ``batch`` SIRENs with random weights (std 0.1):
    the synthetic input of the speed measurements (no corpus needed)."""
    import nngraph
    from nngraph.data.inr import Siren
    from nngraph.graph.fast import graphs_from_params

    gen = torch.Generator().manual_seed(seed)
    siren = Siren(**siren_kwargs)
    template = nngraph.to_graph(siren, torch.zeros(1, siren.hidden[0].in_features))
    params = {k: torch.randn(batch, *v.shape, generator=gen) * 0.1 for k, v in siren.state_dict().items()}
    return template, graphs_from_params(template, params)


def training_step_times(model, graphs, labels, steps: int, warmup: int = 2,
                        precision: str = "fp32") -> tuple[list[float], torch.Tensor]:
    """Seconds of each of ``steps`` forward + backward + AdamW steps of ``model`` on one batch
    (classification into ``labels``), after ``warmup`` untimed ones; a GPU is synchronised
    around each step. Returns the times and the last loss."""
    from nngraph.device import autocast

    device = graphs.x.device
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    times = []
    for step in range(steps + warmup):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with autocast(device, precision):
            out = model(graphs)
        loss = torch.nn.functional.cross_entropy(out.float(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return times, loss.detach()


def forward_backward_seconds(name: str, batch, steps: int = 2) -> float:
    """Median seconds of forward + backward of metanetwork ``name`` at the task tables' CPU
    size (widths 32/16, 2 layers, NG-T 4 heads) on ``batch``, after one untimed step."""
    from nngraph.models import create_model

    torch.manual_seed(0)
    sizes = {"hidden": 32, "edge_hidden": 16, "layers": 2, **({"heads": 4} if name == "ngt" else {})}
    model = create_model(name, example=batch, out_dim=10, **sizes)
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        model(batch).sum().backward()
        if step:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_step_times(models: dict[str, tuple[str, torch.nn.Module]], graphs, rounds: int = 5,
                           steps: int = 2) -> dict[str, float]:
    """Median seconds of one training step (forward, loss, backward, AdamW) of each model on the
    batch ``graphs``: {name: (task, model)}, task "classify" (cross-entropy into 10 classes) or
    "dilate" (the dilation loss of 28 x 28 renders). The models take turns, ``steps`` steps each per
    round for ``rounds`` rounds after one untimed step, so a loaded machine slows all of them alike:
    compare them as ratios."""
    from nngraph.tasks.dilate import DilateTask

    gen = torch.Generator().manual_seed(0)
    count = graphs.num_graphs
    labels = torch.randint(0, 10, (count,), generator=gen)
    dilate = DilateTask(28, 28, 30.0, 0.5)
    target = {"target": torch.rand(count, 28, 28, generator=gen)}
    optimisers = {name: torch.optim.AdamW(model.parameters(), 1e-3) for name, (_, model) in models.items()}

    def step(name: str) -> None:
        task, model = models[name]
        out = model(graphs)
        loss = (dilate._per_network_mse(out, target, graphs).mean() if task == "dilate"
                else torch.nn.functional.cross_entropy(out, labels))
        optimisers[name].zero_grad()
        loss.backward()
        optimisers[name].step()

    for name in models:
        step(name)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name in models:
            start = time.perf_counter()
            for _ in range(steps):
                step(name)
            times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(t) for name, t in times.items()}


def write_result(name: str, title: str, command: str, wall_s: float, rows: list[dict], quick: bool = False,
                 directory: Path = RESULTS, **extra) -> Path:
    """Write ``results/<name>.json`` (``quick_<name>.json`` for a quick run; into ``directory`` if
    given) atomically; returns its path."""
    name = ("quick_" if quick else "") + name
    payload = {"title": title, "command": command, "machine": machine(), "commit": commit(),
               "wall_s": round(wall_s, 1), "rows": rows, **extra}
    path = directory / f"{name}.json"
    atomic_write_json(path, payload, indent=2, allow_nan=True)
    return path
