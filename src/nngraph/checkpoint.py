"""Run-folder checkpoints that load without running code.

A run folder is something people send each other, so nothing read from it may execute
code: its checkpoints are safetensors files (tensors and a JSON header, no pickle).

- ``best.safetensors``: the best epoch's model weights, a plain ``state_dict`` (its keys
  are the model's parameter names; the header's metadata holds ``epoch``). Together with
  ``config.json`` and ``model.json`` (what rebuilds the model without the corpus, see
  ``nngraph.run``) it is what a run keeps of its model.
- ``last.safetensors``: everything a resume needs, as one file written atomically (the
  commit point of an epoch): model and optimiser state, counters, history, RNG state and
  the corpus identity. Nested state is stored as a JSON tree in the metadata whose
  tensors are references ``{"$tensor": key}`` into the file's tensor table.

Runs written by earlier versions hold ``best.pt`` / ``last.pt`` pickles. They are refused
with the one-line migration ``nngraph migrate-run RUN``: it reads them with
``torch.load(weights_only=True)`` (tensors and plain containers only) and, for a pickle
that needs more, only with ``--trust``.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from nngraph.errors import NNGraphError
from nngraph.io import atomic_write_bytes

BEST, LAST = "best.safetensors", "last.safetensors"
LEGACY = {"best.pt": BEST, "last.pt": LAST}
_KEY = "nngraph"  # metadata key of the JSON tree


def _encode(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """``obj`` as JSON with its tensors moved into ``tensors`` (keys: their path in the tree)."""
    if isinstance(obj, torch.Tensor):
        key = path if path not in tensors else f"{path}#{len(tensors)}"  # a str key holding "/" could collide
        tensors[key] = obj.detach().to("cpu", copy=True).contiguous()  # a copy: no storage shared with another
        return {"$tensor": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {"$dict": {k: _encode(v, f"{path}/{k}", tensors) for k, v in obj.items()}}
        return {"$items": [[k, _encode(v, f"{path}/{k}", tensors)] for k, v in obj.items()]}  # e.g. int keys
    if isinstance(obj, (list, tuple)):
        return [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {path} in a checkpoint")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "$tensor" in obj:
            return tensors[obj["$tensor"]]
        if "$dict" in obj:
            return {k: _decode(v, tensors) for k, v in obj["$dict"].items()}
        return {k: _decode(v, tensors) for k, v in obj["$items"]}
    return obj


def save_state(path: str | Path, state: dict) -> None:
    """Write a nested state (dicts, lists, tensors, numbers, strings) to ``path`` atomically."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, "", tensors)
    atomic_write_bytes(path, save(tensors, metadata={_KEY: json.dumps(tree, allow_nan=True)}))


def load_state(path: str | Path) -> dict:
    """The nested state ``save_state`` wrote; nothing in the file is executed."""
    metadata, tensors = _read(path)
    if _KEY not in metadata:
        raise NNGraphError(f"{path} is not a checkpoint of an nngraph run (no state in its header); "
                           "start the run again with --overwrite")
    try:
        return _decode(json.loads(metadata[_KEY]), tensors)
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError):
        raise NNGraphError(f"{path} has a damaged header; start the run again with --overwrite") from None


def save_weights(path: str | Path, state_dict: dict[str, torch.Tensor], **metadata: Any) -> None:
    """A model's ``state_dict`` as a plain safetensors file; ``metadata`` values stored as JSON."""
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state_dict.items()}
    atomic_write_bytes(path, save(tensors, metadata={k: json.dumps(v) for k, v in metadata.items()}))


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, metadata) of a file ``save_weights`` wrote."""
    metadata, tensors = _read(path)
    try:
        return tensors, {k: json.loads(v) for k, v in metadata.items()}
    except ValueError:
        raise NNGraphError(f"{path} has a damaged header; start the run again with --overwrite") from None


def _read(path: str | Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    from safetensors import SafetensorError, safe_open

    if not Path(path).is_file():  # a device or FIFO in its place is never opened
        raise NNGraphError(f"{path} is not a regular file; start the run again with --overwrite")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise NNGraphError(f"{path} is not a readable checkpoint ({' '.join(str(exc).split())[:120]}); "
                           "start the run again with --overwrite") from None


# ---- legacy run folders -----------------------------------------------------------------


def legacy_files(run: str | Path) -> list[Path]:
    """The pickle checkpoints of an earlier nngraph in ``run`` that have no safetensors twin."""
    run = Path(run)
    return [run / old for old, new in LEGACY.items() if (run / old).exists() and not (run / new).exists()]


def refuse_legacy(run: str | Path) -> None:
    """One line naming the migration when ``run`` still holds pickle checkpoints."""
    old = legacy_files(run)
    if old:
        raise NNGraphError(f"{run} holds checkpoints of an earlier nngraph ({', '.join(p.name for p in old)}: "
                           "pickles, which can run code when loaded); convert them once with "
                           f"`nngraph migrate-run {run}`")


def migrate_run(run: str | Path, trust: bool = False) -> list[str]:
    """Convert ``run``'s ``best.pt`` / ``last.pt`` into safetensors and remove them; returns
    what was converted. Tensor-only pickles load with ``weights_only=True``; one that needs
    other classes (code) is refused unless ``trust``."""
    run = Path(run)
    if not (run / "config.json").exists():
        raise NNGraphError(f"{run} is not a run folder (no config.json); pass the --out of `nngraph train`")
    done = []
    for old in legacy_files(run):
        state = _load_legacy(old, trust)
        if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
            raise NNGraphError(f"{old} is not a checkpoint of an nngraph run (no model state); "
                               "start the run again with --overwrite")
        if old.name == "best.pt":
            save_weights(run / BEST, state["model"], epoch=int(state.get("epoch", -1)))
        else:
            save_state(run / LAST, {**state, "corpus": None})  # the identity of its corpus was not recorded
        old.unlink()
        done.append(f"{old.name} -> {LEGACY[old.name]}")
    return done


def _load_legacy(path: Path, trust: bool) -> Any:
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it reads anyway
            warnings.simplefilter("ignore")
            return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for files it cannot read safely
        found = re.search(r"GLOBAL (\S+)", str(exc))
        failure = f"it needs {found.group(1)}" if found else " ".join(str(exc).split())[:120]
    if not trust:
        raise NNGraphError(f"{path} does not load as tensors only ({failure}): loading it runs code from the "
                           "file; pass --trust only if you made it or trust its source")
    try:
        return torch.load(path, weights_only=False, map_location="cpu")
    except Exception as exc:  # noqa: BLE001
        raise NNGraphError(f"cannot read {path} ({type(exc).__name__}); start the run again with "
                           "--overwrite") from None
