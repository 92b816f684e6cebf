"""Devices and precisions: resolving the user's choice, moving batches, autocast.

Every layer that runs tensors uses these (the graph core excepted: it follows the
device of the graph it is given), so they sit at the bottom beside ``errors``.

- ``resolve_device("auto" | "cpu" | "cuda" | "cuda:N")``: ``auto`` takes the first GPU
  when CUDA is available, else the CPU; a GPU asked for where there is none is an error.
- ``to_device(obj, device)``: a PyG batch, a tensor, or a dict / list of them on
  ``device``. Towards CUDA the host tensors are first pinned so that the copy is
  asynchronous (``non_blocking``); on the CPU nothing is copied at all.
- ``autocast(device, precision)``: ``torch.autocast`` in bfloat16 for ``bf16``, a no-op
  for ``fp32``. Parameters, optimiser state and checkpoints stay float32; only the
  matrix products inside the context run in bfloat16.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

import torch

from nngraph.errors import NNGraphError

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
PRECISIONS = ("fp32", "bf16")


class DeviceError(NNGraphError):
    """A device or precision that does not exist on this machine or is misspelt."""


def parse_device_name(name: str) -> tuple[str, int | None] | None:
    """("auto" | "cpu" | "cuda", the GPU index or None) of a device name, read in any case with
    spaces around; None when it is none of ``DEVICE_CHOICES``. The spelling only: whether the
    device exists is ``resolve_device``'s question."""
    text = name.strip().lower()
    if text in ("auto", "cpu"):
        return text, None
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if not match:
        return None
    return "cuda", int(match.group(1)) if match.group(1) is not None else None


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """The ``torch.device`` a device string names; ``auto``/None: a GPU if any, else the CPU."""
    if isinstance(name, torch.device):
        name = str(name)
    parsed = parse_device_name(name or "auto")
    if parsed is None:
        raise DeviceError(f"unknown device {name!r}; use {DEVICE_CHOICES}")
    kind, index = parsed
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} asked for, but this torch sees no CUDA GPU "
                          f"(torch {torch.__version__}); use --device cpu or auto")
    index = index if index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise DeviceError(f"device {name!r} asked for, but there are only {torch.cuda.device_count()} CUDA "
                          f"GPUs (cuda:0..cuda:{torch.cuda.device_count() - 1})")
    return torch.device("cuda", index)


def resolve_precision(name: str) -> str:
    """``fp32`` or ``bf16``, checked."""
    if name not in PRECISIONS:
        raise DeviceError(f"unknown precision {name!r}; use {' or '.join(PRECISIONS)}")
    return name


def autocast(device: torch.device, precision: str):
    """Context in which matrix products run in ``precision`` on ``device`` (no-op for fp32)."""
    if resolve_precision(precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def to_device(obj: Any, device: torch.device) -> Any:
    """``obj`` (tensor, PyG batch, or dict / list / tuple of them) on ``device``.

    On the CPU (where our data is built) this returns ``obj`` itself; towards a GPU, host
    tensors are pinned and copied with ``non_blocking=True``.
    """
    if device.type == "cpu":
        return obj
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    if not hasattr(obj, "to"):
        return obj
    pinned = obj.pin_memory() if device.type == "cuda" and _on_cpu(obj) else obj
    return pinned.to(device, non_blocking=True)


def _on_cpu(obj: Any) -> bool:
    """Whether a tensor / PyG batch lives on the CPU (its first tensor does)."""
    if isinstance(obj, torch.Tensor):
        return obj.device.type == "cpu"
    x = getattr(obj, "x", None)
    return isinstance(x, torch.Tensor) and x.device.type == "cpu"


def float32(output: Any) -> Any:
    """A model output (tensor or {name: tensor}) in float32: losses and metrics are fp32."""
    if isinstance(output, dict):
        return {k: float32(v) for k, v in output.items()}
    if isinstance(output, torch.Tensor) and output.is_floating_point():
        return output.float()
    return output
