"""Import the neural-graphs CNN Wild Park (CIFAR-10 CNNs of mixed architectures).

Source layout: one Ray Tune checkpoint per network, ``{"model": state_dict,
"optimizer": ..., "config": the sampled CNN config, "iteration": ..., ...}``, and a split
file ``{"train": {"path": [...], "score": [...], "step": [...]}, "val": ..., "test": ...}``
(``cnn_park_splits.json``) whose relative paths are under the source folder. Every path
listed is one network (the release lists several checkpoints of each training run); its
label is its ``score`` (test accuracy).

The config (an OmegaConf node of the sampler's ``CNNConfig``: ``channels`` with the
input channels first, ``kernel_size``, ``stride``, ``padding``, ``residual``,
``activation``, ``n_classes``) becomes a :mod:`nngraph.data.park` architecture spec; the
state dict (``layers.{i}.weight/bias``, ``fc.weight/bias``) is checked against it and
stored unchanged. Checkpoints are read without running their pickled code: tensors are
rebuilt by torch, every other pickled class (OmegaConf containers, the sampler's
dataclass, Ray's state) is replaced by an inert record whose fields are read back. Only
the zip format of ``torch.save`` (PyTorch >= 1.6) is read this way; a legacy (non-zip)
checkpoint is refused unless ``trust=True`` (``--trust``), which reads it with plain
pickle, running whatever code it holds. A checkpoint over ``MAX_CHECKPOINT_BYTES`` is
refused by its size before it is read, and the state dict's shapes are checked against
the config's (computed, not built) before any model exists. Networks whose score is
empty or not finite are dropped, and their count printed.
"""

from __future__ import annotations

import math
import pickle
import time
import types
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from nngraph.data.corpus import NetworkZoo
from nngraph.data.importers.common import (
    SPLITS,
    check_out,
    default_workers,
    find_split_file,
    parallel_map,
    read_split_json,
    resolve_paths,
    sha256_file,
    staged_output,
)
from nngraph.data.park import park_param_shapes
from nngraph.data.store import CorpusWriter
from nngraph.errors import DataError, NNGraphError

IMAGE_SIZE = (32, 32)  # CIFAR-10
# A Wild Park checkpoint holds one small CNN (at most a few hundred thousand parameters)
# with its Adam state: a few MB. 256 MiB bounds what one worker reads from one file.
MAX_CHECKPOINT_BYTES = 256 << 20
_TENSOR_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("collections", "OrderedDict"),
    ("torch", "Size"),
}


class _Record:
    """An inert stand-in for a pickled object of a class that is not loaded."""

    origin = ""

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (__dict__, __slots__ values)
            state = {**(state[0] or {}), **(state[1] or {})}
        self.state = state


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _TENSOR_GLOBALS:
            return super().find_class(module, name)
        return type(name, (_Record,), {"origin": f"{module}.{name}"})


def _inert_load(file, **kwargs):
    return _Unpickler(file, **kwargs).load()


# Every pickle torch reads through this module, with Unpickler or load, is inert.
_PICKLE = types.SimpleNamespace(Unpickler=_Unpickler, load=_inert_load, __name__="nngraph_inert_pickle")


def plain(obj):
    """Python values of a config: OmegaConf nodes (inert records, or the real classes of a
    ``--trust`` load) unwrapped into dicts, lists and scalars."""
    if isinstance(obj, Mapping):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, Sequence) and not isinstance(obj, (str, bytes)):
        return [plain(v) for v in obj]
    state = obj.state if isinstance(obj, _Record) else getattr(obj, "__dict__", None)
    if isinstance(state, dict):
        if "_content" in state:
            return plain(state["_content"])
        if "_val" in state:
            return plain(state["_val"])
        return {k: plain(v) for k, v in state.items() if not k.startswith("_")}
    return obj


def read_checkpoint(path: Path, trust: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, sampler config) of one Wild Park checkpoint (see the module docstring)."""
    size = path.stat().st_size
    if size > MAX_CHECKPOINT_BYTES:
        raise DataError(f"{path} has {size:,} bytes, more than a Wild Park checkpoint holds "
                        f"({MAX_CHECKPOINT_BYTES:,}); remove it from the split file")
    with open(path, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
    if not is_zip and not trust:
        raise DataError(f"{path} is not a zip-format torch.save checkpoint (a legacy pickle, whose loading can run "
                        f"code); nngraph reads it only with --trust, if you trust where it came from")
    try:
        if is_zip:
            obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_PICKLE)
        else:  # --trust: the user vouches for the file
            obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise DataError(f"{path} is not a readable checkpoint ({str(exc).splitlines()[0][:120]}); "
                        f"replace it with the release's file") from None
    if not isinstance(obj, Mapping) or not isinstance(obj.get("model"), Mapping) or "config" not in obj:
        raise DataError(f"{path} is not a Wild Park checkpoint (a dict with 'model' and 'config'); "
                        f"point the split file to checkpoint.pt files")
    try:
        config = plain(obj["config"])
    except RecursionError:
        raise DataError(f"{path}: its config is nested too deeply to be a Wild Park sampler config") from None
    if not isinstance(config, dict):
        raise DataError(f"{path}: its config is a {type(config).__name__}, not a mapping of the CNN's settings")
    return obj["model"], config


def architecture_of(config: dict, path: Path) -> tuple[dict, dict[str, tuple[int, ...]]]:
    """The :mod:`nngraph.data.park` spec of a sampler config and its parameter shapes."""
    try:
        channels = list(config["channels"])
        arch = {"family": "wild-park", "in_channels": channels[0], "num_classes": config["n_classes"],
                "channels": channels[1:], "kernel": list(config["kernel_size"]), "stride": list(config["stride"]),
                "padding": list(config["padding"]), "residual": list(config["residual"]),
                "activation": list(config["activation"])}
        shapes = park_param_shapes(arch)
    except (KeyError, TypeError, IndexError) as exc:
        raise DataError(f"{path}: the config lacks the CNN setting {exc}; it is not a Wild Park sampler config") from None
    except NNGraphError as exc:
        raise DataError(f"{path}: {exc}") from None
    return arch, shapes


def _load_chunk(task: tuple[list[Path], bool]) -> list[tuple[dict, dict[str, np.ndarray]]]:
    """(architecture, {name: array}) of each checkpoint, its tensors checked against its config."""
    paths, trust = task
    out = []
    for path in paths:
        state, config = read_checkpoint(path, trust)
        arch, shapes = architecture_of(config, path)
        for key, value in state.items():
            if key not in shapes:
                raise DataError(f"{path}: unknown parameter name {key!r}; its config describes "
                                f"{', '.join(shapes)}")
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != shapes[key]:
                got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise DataError(f"{path}: {key} has shape {got}, its config says {shapes[key]}")
        missing = [k for k in shapes if k not in state]
        if missing:
            raise DataError(f"{path}: parameters {missing} are missing from 'model'")
        arrays = {k: state[k].detach().float().numpy() for k in shapes}
        if not all(np.isfinite(a).all() for a in arrays.values()):
            raise DataError(f"{path} holds NaN or inf parameters; remove it from the split file")
        out.append((arch, arrays))
    return out


def import_wild_park(src, out, *, splits=None, shard_size: int = 256, workers: int | None = None,
                     trust: bool = False, command: str | None = None, log=print) -> dict:
    """Import a CNN Wild Park folder into the corpus ``out``; returns its manifest.

    ``trust``: also read legacy (non-zip) checkpoints, with plain pickle (runs their code).
    """
    t0 = time.perf_counter()
    src = Path(src)
    if not src.is_dir():
        raise DataError(f"Wild Park folder {src} does not exist; pass the folder the split file's paths are relative to")
    check_out(out)
    split_file = find_split_file(src, splits)
    table = read_split_json(split_file, ("score", "step"))
    for s in SPLITS:
        if "score" not in table[s]:
            raise DataError(f"split file {split_file}: {s!r} has no 'score' list; use cnn_park_splits.json")
    listed = [p for s in SPLITS for p in table[s]["path"]]
    split_of = [s for s in SPLITS for _ in table[s]["path"]]
    scores = [_score(v, p, split_file) for s in SPLITS for v, p in zip(table[s]["score"], table[s]["path"])]
    steps = [v for s in SPLITS for v in table[s].get("step", [None] * len(table[s]["path"]))]
    keep = [i for i, v in enumerate(scores) if v is not None]
    if len(keep) < len(listed):
        log(f"{split_file}: dropped {len(listed) - len(keep)} networks whose score is empty or not finite "
            f"(first: {listed[scores.index(None)]})")
    listed, split_of, scores, steps = ([col[i] for i in keep] for col in (listed, split_of, scores, steps))
    if not listed:
        raise DataError(f"split file {split_file} lists no networks with a finite score")
    paths = resolve_paths(src, listed, split_file, split_of)
    n = len(paths)
    plan = {
        "kind": NetworkZoo.kind,
        "layout": "per_item",
        "architectures": [],
        "command": command,
        "config": {
            "import": {"format": "wild-park", "source": str(src.resolve()), "split_file": str(split_file.resolve()),
                       "split_file_sha256": sha256_file(split_file)},
            "image_size": list(IMAGE_SIZE), "shard_size": shard_size, "count": n,
        },
        "items": {"split": split_of, "source_path": listed},
    }
    log(f"{src}: reading {n} Wild Park checkpoints with {default_workers(workers)} workers")
    with staged_output(out, log) as stage:
        writer = CorpusWriter(stage, plan, n, shard_size, result_columns=("label", "arch", "training", "seed"))
        pending = writer.pending()
        loaded = parallel_map(_load_chunk, [(paths[a:b], trust) for _, a, b in pending], default_workers(workers))
        for (k, a, b), records in zip(pending, loaded):
            tensors = {f"net{a + j}.{name}": torch.from_numpy(v) for j, (_, arrays) in enumerate(records)
                       for name, v in arrays.items()}
            writer.write(k, tensors, {"label": scores[a:b], "arch": [arch for arch, _ in records],
                                      "training": [{"step": s} for s in steps[a:b]], "seed": list(range(a, b))})
        seconds = time.perf_counter() - t0
        manifest = writer.finish({"imported": n, "architectures": len(writer.manifest["architectures"]),
                                  "seconds": round(seconds, 2)})
    log(f"{out}: {n} networks ({len(manifest['architectures'])} architectures) imported in {seconds:.1f} s")
    return manifest


def _score(value, path, split_file: Path) -> float | None:
    """A network's score as a float; None (dropped) when empty or not finite."""
    if value is None or value == "":
        return None
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{split_file}: the score {value!r} of {path} is not a number") from None
    return score if math.isfinite(score) else None
