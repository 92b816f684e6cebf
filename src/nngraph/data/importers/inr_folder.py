"""Import DWSNets / neural-graphs INR folders (MNIST and Fashion-MNIST SIRENs).

Source layout: one ``.pth`` per INR holding the state dict of the official SIREN
(``nn/inr.py`` of DWSNets / neural-graphs, ``INR(n_layers=3, hidden_features=32)``),
optionally with an int ``label`` entry (the Fashion-MNIST release), and a split file
``{"train": {"path": [...], "label": [...]}, "val": ..., "test": ...}`` whose relative
paths are under the source folder. The official network is

    seq.0 .. seq.{L-2}:  z = W a + b,  a' = sin(30 z)        (Siren layers, w0 = 30)
    seq.{L-1}:           f = W a + b                          (nn.Linear)
    output:              f + 0.5

which is :class:`nngraph.data.inr.Siren` with ``variant="dwsnet"``, ``depth = L-1`` and
w0 = 30: the import renames ``seq.{i}`` to ``hidden.{i}`` and ``seq.{L-1}`` to ``out``
and copies the tensors bit for bit (stacked over INRs, no per-INR conversion).

Each INR's ``item.image`` (what the dilate task edits) is the INR rendered on nngraph's
pixel grid (:func:`nngraph.data.inr.pixel_grid`, coordinates (row, col)). DWSNets and
neural-graphs render their INRs on (x = column, y = row) coordinates (``make_coordinates``),
so these renders show the images transposed; the dilate task renders on the same grid and a 3x3 dilation commutes with
transposition, so its targets stay consistent. The original images are not part of an
INR folder; ``psnr`` is therefore unknown (null) and ``seed`` is the row index (a
deterministic seed for refits such as the dilation floor, not the INR's own).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import torch

from nngraph.data.corpus import INRCorpus
from nngraph.data.fitting import SirenSpec
from nngraph.data.importers.common import (
    SPLITS,
    check_out,
    chunks,
    default_workers,
    find_split_file,
    parallel_map,
    read_split_json,
    resolve_paths,
    sha256_file,
    staged_output,
)
from nngraph.data.importers.torchfile import read_torch_file
from nngraph.data.inr import pixel_grid, render_sirens
from nngraph.data.store import ITEM_PREFIX, MAX_CLASSES, CorpusWriter
from nngraph.errors import DataError

W0 = 30.0
_SEQ = re.compile(r"seq\.(\d+)\.(weight|bias)")
LOAD_CHUNK = 512  # files per worker task
# Size caps, checked with os.stat before a file is read. The first file sets the
# architecture: an official SIREN file is about 5 KB and the widest published INRs are a
# few MB, so 64 MiB bounds it generously. Every other file must share that architecture:
# at most 4 bytes x 2 (float64) x its parameters plus 64 KiB of zip and pickle records.
MAX_FIRST_FILE_BYTES = 64 << 20
FILE_OVERHEAD_BYTES = 64 << 10


def file_cap(shapes: dict[str, tuple[int, ...]]) -> int:
    """The largest file that can hold one INR of these parameter shapes (float64 at most)."""
    return 8 * sum(int(np.prod(s)) for s in shapes.values()) + FILE_OVERHEAD_BYTES


def _load_state(path: Path, max_bytes: int = MAX_FIRST_FILE_BYTES) -> tuple[dict[str, np.ndarray], int | None]:
    """(state dict as arrays, label stored in the file or None) of one INR file.

    A file over ``max_bytes`` (``os.stat``) is refused before it is read. Read with
    :func:`read_torch_file` (fast); files it does not handle go through
    ``torch.load(weights_only=True)``, which runs no pickled code.
    """
    size = path.stat().st_size
    if size > max_bytes:
        raise DataError(f"{path} has {size:,} bytes, more than an INR of this folder's architecture can hold "
                        f"({max_bytes:,}); remove it from the split file or replace it with the release's file")
    obj = read_torch_file(path, size)
    if obj is None:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a bad file
            raise DataError(f"{path} is not a readable PyTorch file ({str(exc).splitlines()[0][:120]}); "
                            f"replace it with the release's file") from None
        if isinstance(obj, dict):
            obj = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in obj.items()}
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, not a state dict; point to the INR .pth files")
    label = obj.get("label")
    state = {k: v for k, v in obj.items() if k != "label"}
    for key, value in state.items():
        if not isinstance(key, str) or not _SEQ.fullmatch(key) or not isinstance(value, np.ndarray):
            raise DataError(f"{path}: unknown parameter name {key!r}; an official SIREN has only seq.N.weight and "
                            f"seq.N.bias")
    if label is not None and (not isinstance(label, (int, np.integer)) or isinstance(label, (bool, np.bool_))):
        raise DataError(f"{path}: its label {label!r} is not an int")
    return state, (int(label) if label is not None else None)


def _shapes(path: Path) -> dict[str, tuple[int, ...]]:
    state, _ = _load_state(path)
    return {k: tuple(v.shape) for k, v in state.items()}


def _load_chunk(task: tuple[list[Path], dict[str, tuple[int, ...]]]) -> tuple[dict[str, np.ndarray], list]:
    """Stacked parameters {name: [n, *shape]} and stored labels of a chunk of files."""
    paths, shapes = task
    stacks = {k: np.empty((len(paths), *s), dtype=np.float32) for k, s in shapes.items()}
    labels = []
    cap = file_cap(shapes)
    for i, path in enumerate(paths):
        state, label = _load_state(path, cap)
        if set(state) != set(shapes):
            extra = sorted(set(state) - set(shapes)) or sorted(set(shapes) - set(state))
            raise DataError(f"{path}: parameters {extra} differ from the first INR's {sorted(shapes)}; "
                            f"all INRs of a folder must share one architecture")
        for key, value in state.items():
            if tuple(value.shape) != shapes[key]:
                raise DataError(f"{path}: {key} has shape {tuple(value.shape)}, the first INR's has "
                                f"{shapes[key]}; all INRs of a folder must share one architecture")
            stacks[key][i] = value
        labels.append(label)
    return stacks, labels


def spec_of(shapes: dict[str, tuple[int, ...]], where: Path) -> tuple[SirenSpec, dict[str, str]]:
    """The SirenSpec of official parameter shapes and the renaming seq.N.* -> Siren names."""
    layers = sorted({int(_SEQ.fullmatch(k).group(1)) for k in shapes})
    if layers != list(range(len(layers))) or len(layers) < 2:
        raise DataError(f"{where}: SIREN layers {layers} are not seq.0 .. seq.L-1 with L >= 2")
    for i in layers:
        for part in ("weight", "bias"):
            if f"seq.{i}.{part}" not in shapes:
                raise DataError(f"{where}: seq.{i}.{part} is missing; an official SIREN layer has weight and bias")
    depth = len(layers) - 1
    hidden = shapes["seq.0.weight"][0]
    for i in layers:
        w, b = shapes[f"seq.{i}.weight"], shapes[f"seq.{i}.bias"]
        fan_in = shapes["seq.0.weight"][1] if i == 0 else hidden
        fan_out = shapes[f"seq.{depth}.weight"][0] if i == depth else hidden
        if w != (fan_out, fan_in) or b != (fan_out,):
            raise DataError(f"{where}: seq.{i} has weight {w} and bias {b}, expected ({fan_out}, {fan_in}) and "
                            f"({fan_out},); nngraph's SIREN has one hidden width")
    spec = SirenSpec(in_features=shapes["seq.0.weight"][1], hidden=hidden, depth=depth,
                     out_features=shapes[f"seq.{depth}.weight"][0], w0=W0, variant="dwsnet")
    rename = {f"seq.{i}.{p}": (f"hidden.{i}.{p}" if i < depth else f"out.{p}") for i in layers for p in ("weight", "bias")}
    return spec, rename


def import_inr_folder(src, out, *, splits=None, image_size: int = 28, shard_size: int = 1024,
                      workers: int | None = None, command: str | None = None, log=print) -> dict:
    """Import an INR folder into the corpus ``out``; returns its manifest."""
    t0 = time.perf_counter()
    src = Path(src)
    if not src.is_dir():
        raise DataError(f"INR folder {src} does not exist; pass the folder the split file's paths are relative to")
    if image_size < 1:
        raise DataError(f"--image-size must be >= 1, got {image_size}")
    check_out(out)
    split_file = find_split_file(src, splits)
    table = read_split_json(split_file, ("label",))
    listed = [p for s in SPLITS for p in table[s]["path"]]
    split_of = [s for s in SPLITS for _ in table[s]["path"]]
    if not listed:
        raise DataError(f"split file {split_file} lists no INRs")
    paths = resolve_paths(src, listed, split_file, split_of)
    with staged_output(out, log) as stage:
        shapes = _shapes(paths[0])
        spec, rename = spec_of(shapes, paths[0])
        n = len(paths)
        log(f"{src}: reading {n} INRs ({spec.depth} sine layers of {spec.hidden}, w0 {W0:g}) with "
            f"{default_workers(workers)} workers")
        stacks = {k: np.empty((n, *s), dtype=np.float32) for k, s in shapes.items()}
        stored_labels: list = []
        spans = chunks(n, LOAD_CHUNK)
        results = parallel_map(_load_chunk, [(paths[a:b], shapes) for a, b in spans], default_workers(workers))
        for (a, b), (part, labels) in zip(spans, results):
            for key, value in part.items():
                stacks[key][a:b] = value
            stored_labels += labels
        labels = _labels(table, stored_labels, paths, split_file)
        params = {rename[k]: torch.from_numpy(v) for k, v in stacks.items()}
        params = {name: params[name] for name in spec.param_shapes()}  # Siren state_dict order
        _check_finite(params, paths)
        t_read = time.perf_counter() - t0
        images = _render(params, spec, image_size)
        plan = {
            "kind": INRCorpus.kind,
            "layout": "stacked",
            "architectures": [spec.to_dict()],
            "command": command,
            "config": {
                "import": {"format": "inr-folder", "source": str(src.resolve()),
                           "split_file": str(split_file.resolve()), "split_file_sha256": sha256_file(split_file)},
                "image_size": [image_size, image_size], "spec": spec.to_dict(), "shard_size": shard_size,
                "n_items": n,
            },
            "items": {
                "split": split_of,
                "label": labels,
                "source_path": listed,
                "source_index": list(range(n)),
                "seed": list(range(n)),
            },
        }
        writer = CorpusWriter(stage, plan, n, shard_size, result_columns=("psnr",))
        for k, a, b in writer.pending():
            tensors = {name: v[a:b] for name, v in params.items()}
            tensors[ITEM_PREFIX + "image"] = images[a:b]
            writer.write(k, tensors, {"psnr": [None] * (b - a)})
        seconds = time.perf_counter() - t0
        manifest = writer.finish({"imported": n, "seconds": round(seconds, 2), "read_seconds": round(t_read, 2),
                                  "inrs_per_second": round(n / max(seconds, 1e-9), 1)})
    log(f"{out}: {n} INRs imported in {seconds:.1f} s ({n / max(seconds, 1e-9):.0f} INRs/s; "
        + ", ".join(f"{s} {split_of.count(s)}" for s in SPLITS) + ")")
    return manifest


def _labels(table: dict, stored: list, paths: list[Path], split_file: Path) -> list[int]:
    """Labels from the split file, else from the files; both present must agree."""
    listed = [v for s in SPLITS for v in table[s].get("label", [None] * len(table[s]["path"]))]
    labels = []
    for path, from_split, from_file in zip(paths, listed, stored):
        if from_split is None and from_file is None:
            raise DataError(f"{path} has no label in {split_file} nor in the file; use a split file with labels")
        value = from_file if from_split is None else _class(from_split)
        if value is None:
            raise DataError(f"{split_file}: label {from_split!r} of {path} is not an integer class")
        if from_file is not None and value != from_file:
            raise DataError(f"{path} holds label {from_file} but {split_file} says {value}; use the matching split file")
        if not 0 <= value < MAX_CLASSES:
            raise DataError(f"label {value} of {path} is outside the classes 0..{MAX_CLASSES - 1}; "
                            f"fix the label in {split_file} or in the file")
        labels.append(value)
    return labels


def _class(value) -> int | None:
    """An integer class from a JSON label (an int, or a float or string of an integer), else None;
    2.5 is not a class and is never truncated."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _check_finite(params: dict[str, torch.Tensor], paths: list[Path]) -> None:
    bad = None
    for value in params.values():
        rows = ~torch.isfinite(value.flatten(1)).all(1)  # [n]
        bad = rows if bad is None else bad | rows
    if bad.any():
        raise DataError(f"{paths[int(bad.nonzero()[0])]} holds NaN or inf parameters; remove it from the split file")


@torch.no_grad()
def _render(params: dict[str, torch.Tensor], spec: SirenSpec, size: int, batch: int = 1024) -> torch.Tensor:
    """Every INR rendered on the size x size pixel grid: [n, size, size]."""
    first = next(iter(params.values()))
    coords = pixel_grid(size, size).to(first.device)  # [P, 2]
    n = first.shape[0]
    out = coords.new_empty(n, size, size)
    for a, b in chunks(n, batch):
        part = {k: v[a:b] for k, v in params.items()}
        out[a:b] = render_sirens(part, coords, spec.w0, spec.offset).reshape(b - a, size, size)
    return out
