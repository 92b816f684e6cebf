"""Import a folder of the user's own networks plus a labels CSV (``--format models``).

    nngraph data import weights/ --format models --labels labels.csv \
        --architecture mypkg.nets:make_cnn --input-shape 1,8,8 --out my_zoo

``labels.csv``: a header ``file,<target columns>`` (optionally an ``arch`` column, passed to
the factory as its one string argument, for zoos of several architectures, and a ``split``
column of train / val / test); one row per network. Each file is a plain name inside SRC:
a state_dict (``.safetensors``, or ``.pt`` / ``.pth`` read with ``torch.load(weights_only=True)``)
loaded into a model of ``--architecture``, or a ``.pt2`` archive of ``torch.export.save``, which
is the network itself (no ``--architecture``; ``--input-shape`` defaults to the one it was
exported for).

The trust boundary (issue 34): nothing read from SRC runs code unless ``--trust``. The
architecture is the user's own Python factory, named on the command line (``module:function``,
imported from the Python path as any installed code, never from SRC); files are plain names
that resolve inside SRC, regular files of at most ``MAX_FILE_BYTES``; the CSV is bounded too.
``torch.export.load`` (torch 2.13) can run code from a ``.pt2``: it unpickles tensor
subclasses, custom objects and the sample inputs with ``weights_only=False``, loads compiled
AOTInductor libraries, evaluates the archive's symbolic-shape expressions with sympy, and
resolves operator names to any ``torch.*`` attribute, so a ``.pt2`` is read only with
``--trust`` (as whole-module pickles are). A TorchScript archive is code as well (and
``torch.jit`` is deprecated): it is refused with the way to re-save it as ``.pt2``. The
networks then go through ``from_models`` (one line, naming the file, for a network that does
not convert).
"""

from __future__ import annotations

import csv
import importlib
import io
import logging
import os
import zipfile
from pathlib import Path

import torch

from nngraph.data.from_models import from_models
from nngraph.errors import DataError, NNGraphError
from nngraph.io import read_bounded

MAX_FILE_BYTES = 1 << 30  # one state_dict of at most 1 GiB
MAX_LABELS_BYTES = 64 << 20


def import_models_folder(src: str | os.PathLike, out: str | os.PathLike, *, labels: str | None = None,
                         architecture: str | None = None, input_shape: str | None = None, trust: bool = False,
                         seed: int = 0, shard_size: int = 256, command: str = "", **_) -> dict:
    """Read SRC's networks named by ``labels`` (state_dicts into models of ``architecture``, or
    ``.pt2`` programs with ``trust``); write the corpus."""
    if labels is None:
        raise NNGraphError("--format models needs --labels; see `nngraph data import --help`")
    root = Path(src)
    rows = list(csv.DictReader(io.StringIO(read_bounded(labels, MAX_LABELS_BYTES).decode("utf-8", "replace"))))
    if not rows or "file" not in rows[0]:
        raise DataError(f"{labels} needs a header with a 'file' column and one row per network")
    targets_names = [c for c in rows[0] if c not in ("file", "arch", "split")]
    if not targets_names:
        raise DataError(f"{labels} has no target column besides file/arch/split; add one (e.g. accuracy)")
    exported = [Path(row["file"] or "").suffix == ".pt2" for row in rows]
    missing = [f"--{n}" for n, v, needed in (("architecture", architecture, not all(exported)),
                                              ("input-shape", input_shape, not any(exported))) if needed and v is None]
    if missing:
        raise NNGraphError(f"--format models needs {', '.join(missing)} for state_dict files; see "
                           "`nngraph data import --help`")
    factory = load_factory(architecture) if not all(exported) else None
    models, targets = [], []
    for i, row in enumerate(rows):
        if exported[i]:
            models.append(read_exported(root, row["file"], trust))
        else:
            models.append(_state_dict_model(factory, architecture, row, read_state_dict(root, row["file"])))
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
    shape = _shape(input_shape) if input_shape is not None else exported_shape(models[exported.index(True)])
    zoo = from_models(models, targets, torch.zeros(1, *shape), out, splits=splits, seed=seed,
                      target_names=targets_names if len(targets_names) > 1 else None, shard_size=shard_size,
                      model_names=[row["file"] for row in rows])
    return zoo.manifest


def _state_dict_model(factory, architecture: str, row: dict, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A model of the user's factory (called with the row's ``arch`` if any) holding ``state``."""
    model = factory(row["arch"]) if "arch" in row else factory()
    if not isinstance(model, torch.nn.Module):
        raise NNGraphError(f"--architecture {architecture} returned a {type(model).__name__}, not a torch module")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise DataError(f"{row['file']} does not fit --architecture {architecture} "
                        f"({' '.join(str(exc).split())[:100]})") from None
    return model


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


def read_exported(root: Path, name: str, trust: bool) -> torch.export.ExportedProgram:
    """The program of a ``torch.export.save`` archive inside ``root``, read only with ``trust``
    (``torch.export.load`` can run code from the file; see the module's docstring)."""
    path = _member(root, name)
    _refuse_torchscript(path)
    if not trust:
        raise DataError(f"{path}: torch.export.load unpickles parts of a .pt2 archive and resolves its operators "
                        "by name, which can run code from the file; rerun with --trust if you made the files or "
                        "trust their source (or save state_dicts and pass --architecture)")
    data = read_bounded(path, MAX_FILE_BYTES)
    export_log = logging.getLogger("torch.export")  # it logs a traceback for a file it cannot read, then raises
    export_log.disabled, was = True, export_log.disabled
    try:
        program = torch.export.load(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - the reader raises many kinds for archives it cannot read
        raise DataError(f"{path} is not a readable torch.export archive ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:80]}); save it with torch.export.save") from None
    finally:
        export_log.disabled = was
    if not isinstance(program, torch.export.ExportedProgram):
        raise DataError(f"{path} holds a {type(program).__name__}, not an ExportedProgram; save one with "
                        "torch.export.save")
    return program


def exported_shape(program: torch.export.ExportedProgram) -> tuple[int, ...]:
    """The shape of one input (batch dimension dropped) that ``program`` was exported for."""
    inputs = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in program.graph_signature.user_inputs]
    value = inputs[0].meta.get("val") if inputs else None
    if not isinstance(value, torch.Tensor) or value.dim() < 2 or \
            not all(isinstance(s, int) for s in value.shape[1:]):
        raise NNGraphError("pass --input-shape: the first .pt2 does not record one static input shape")
    return tuple(value.shape[1:])


def read_state_dict(root: Path, name: str) -> dict[str, torch.Tensor]:
    """A state_dict from a plain file name inside ``root`` (tensors only; no code runs)."""
    path = _member(root, name)
    _refuse_torchscript(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load

            state = load(read_bounded(path, MAX_FILE_BYTES))
        elif path.suffix in (".pt", ".pth"):
            state = torch.load(path, weights_only=True, map_location="cpu")
        else:
            raise DataError(f"{path}: networks are state_dicts (.safetensors, .pt, .pth) or torch.export archives "
                            "(.pt2)")
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - the readers raise many kinds for files they cannot read
        raise DataError(f"{path} does not load as tensors only ({type(exc).__name__}); save it with "
                        "torch.save(model.state_dict(), ...) or safetensors") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"{path} holds no state_dict (a dict of tensors)")
    return state


def _member(root: Path, name: str) -> Path:
    """``root / name`` for a plain file name: a regular file inside ``root`` of at most ``MAX_FILE_BYTES``."""
    path = root / name
    if not name or Path(name).name != name or not path.resolve().is_relative_to(root.resolve()):
        raise DataError(f"{name!r} is not a plain file name inside {root}; list files of the folder only")
    if not path.is_file() or path.stat().st_size > MAX_FILE_BYTES:
        raise DataError(f"{path} is not a regular file of at most {MAX_FILE_BYTES >> 30} GiB")
    return path


def _refuse_torchscript(path: Path) -> None:
    """Refuse a TorchScript zip archive (it holds ``<name>/code/`` or ``constants.pkl``): it is code."""
    try:
        with zipfile.ZipFile(path) as archive:
            scripted = any("/code/" in n or n.endswith("/constants.pkl") for n in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return
    if scripted:
        raise DataError(f"{path} is a TorchScript archive, which is code (and torch.jit is deprecated); re-save the "
                        f"model with torch.export.save(torch.export.export(model, (x,)), '{path.stem}.pt2') and "
                        "pass --trust, or save its state_dict")


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in str(text).split(","))
    except ValueError:
        shape = ()
    if not shape or any(not 1 <= s <= 1 << 16 for s in shape):
        raise NNGraphError(f"--input-shape {text!r}: give one input's shape as C,H,W (e.g. 1,28,28)")
    return shape
