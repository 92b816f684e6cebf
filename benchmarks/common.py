"""Shared helpers of the benchmark scripts: machine facts and atomic result files.

Every result file is JSON with ``title``, ``command``, ``machine``, ``commit``,
``wall_s`` and ``rows`` (a list of flat dicts, rendered as one table in RESULTS.md).
"""

from __future__ import annotations

import os
import platform
import subprocess
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


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


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
