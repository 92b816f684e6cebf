"""Import a folder of the user's own state_dicts plus a labels CSV (``--format models``).

    nngraph data import weights/ --format models --labels labels.csv \
        --architecture mypkg.nets:make_cnn --input-shape 1,8,8 --out my_zoo

``labels.csv``: a header ``file,<target columns>`` (optionally an ``arch`` column, passed to
the factory as its one string argument, for zoos of several architectures, and a ``split``
column of train / val / test); one row per network. Each file is a plain name inside SRC:
``.safetensors`` or ``.pt`` / ``.pth`` read with ``torch.load(weights_only=True)``.

The trust boundary (issue 34): nothing read from SRC runs code. The architecture is the
user's own Python factory, named on the command line (``module:function``, imported from
the Python path as any installed code, never from SRC); files are plain names that resolve
inside SRC, regular files of at most ``MAX_FILE_BYTES``; the CSV is bounded too. The
networks then go through ``from_models`` (one line for a state_dict that does not fit).
"""

from __future__ import annotations

import csv
import importlib
import io
import os
from pathlib import Path

import torch

from nngraph.data.from_models import from_models
from nngraph.errors import DataError, NNGraphError
from nngraph.io import read_bounded

MAX_FILE_BYTES = 1 << 30  # one state_dict of at most 1 GiB
MAX_LABELS_BYTES = 64 << 20


def import_models_folder(src: str | os.PathLike, out: str | os.PathLike, *, labels: str | None = None,
                         architecture: str | None = None, input_shape: str | None = None, seed: int = 0,
                         shard_size: int = 256, command: str = "", **_) -> dict:
    """Read SRC's state_dicts named by ``labels`` into models of ``architecture``; write the corpus."""
    missing = [f"--{n}" for n, v in (("labels", labels), ("architecture", architecture), ("input-shape", input_shape))
               if v is None]
    if missing:
        raise NNGraphError(f"--format models needs {', '.join(missing)}; see `nngraph data import --help`")
    root = Path(src)
    factory = load_factory(architecture)
    shape = _shape(input_shape)
    rows = list(csv.DictReader(io.StringIO(read_bounded(labels, MAX_LABELS_BYTES).decode("utf-8", "replace"))))
    if not rows or "file" not in rows[0]:
        raise DataError(f"{labels} needs a header with a 'file' column and one row per network")
    targets_names = [c for c in rows[0] if c not in ("file", "arch", "split")]
    if not targets_names:
        raise DataError(f"{labels} has no target column besides file/arch/split; add one (e.g. accuracy)")
    models, targets = [], []
    for i, row in enumerate(rows):
        model = factory(row["arch"]) if "arch" in row else factory()
        if not isinstance(model, torch.nn.Module):
            raise NNGraphError(f"--architecture {architecture} returned a {type(model).__name__}, not a torch module")
        try:
            model.load_state_dict(read_state_dict(root, row["file"]))
        except RuntimeError as exc:
            raise DataError(f"{row['file']} does not fit --architecture {architecture} "
                            f"({' '.join(str(exc).split())[:100]})") from None
        models.append(model)
        try:
            values = [float(row[c]) for c in targets_names]
        except (TypeError, ValueError):
            raise DataError(f"{labels} row {i + 2}: the targets {[row[c] for c in targets_names]} are not numbers") \
                from None
        targets.append(values if len(values) > 1 else values[0])
    if all(float(t).is_integer() for t in targets if not isinstance(t, list)) and \
            all(row[targets_names[0]].strip().lstrip("-").isdigit() for row in rows):
        targets = [int(t) for t in targets]  # integer columns are classes
    splits = [row["split"] for row in rows] if "split" in rows[0] else (0.8, 0.1, 0.1)
    zoo = from_models(models, targets, torch.zeros(1, *shape), out, splits=splits, seed=seed,
                      target_names=targets_names if len(targets_names) > 1 else None, shard_size=shard_size)
    return zoo.manifest


def load_factory(spec: str):
    """The callable ``module:function`` from the Python path (the user's own code, named by the user)."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise NNGraphError(f"--architecture {spec!r}: give module:function (e.g. mypkg.nets:make_cnn)")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise NNGraphError(f"--architecture {spec}: {exc}; install the module or run from its folder") from None
    if not callable(found):
        raise NNGraphError(f"--architecture {spec} is not callable; name a function or class that builds a model")
    return found


def read_state_dict(root: Path, name: str) -> dict[str, torch.Tensor]:
    """A state_dict from a plain file name inside ``root`` (tensors only; no code runs)."""
    path = root / name
    if not name or Path(name).name != name or not path.resolve().is_relative_to(root.resolve()):
        raise DataError(f"{name!r} is not a plain file name inside {root}; list files of the folder only")
    if not path.is_file() or path.stat().st_size > MAX_FILE_BYTES:
        raise DataError(f"{path} is not a regular file of at most {MAX_FILE_BYTES >> 30} GiB")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load

            state = load(read_bounded(path, MAX_FILE_BYTES))
        elif path.suffix in (".pt", ".pth"):
            state = torch.load(path, weights_only=True, map_location="cpu")
        else:
            raise DataError(f"{path}: state_dicts are .safetensors, .pt or .pth files")
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - the readers raise many kinds for files they cannot read
        raise DataError(f"{path} does not load as tensors only ({type(exc).__name__}); save it with "
                        "torch.save(model.state_dict(), ...) or safetensors") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"{path} holds no state_dict (a dict of tensors)")
    return state


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in str(text).split(","))
    except ValueError:
        shape = ()
    if not shape or any(not 1 <= s <= 1 << 16 for s in shape):
        raise NNGraphError(f"--input-shape {text!r}: give one input's shape as C,H,W (e.g. 1,28,28)")
    return shape
