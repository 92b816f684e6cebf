"""Import a Small CNN Zoo collection (Unterthiner et al. 2020), e.g. CIFAR10-GS.

Source layout (one folder per collection):

- ``weights.npy``: ``[rows, P]`` float32, one flattened network per row (every saved
  checkpoint of every run);
- ``layout.csv``: ``varname,start_idx,end_idx,shape`` per variable, e.g.
  ``sequential/conv2d/kernel:0,0,144,"(3, 3, 1, 16)"``; TensorFlow order: conv kernels
  ``[kh, kw, in, out]``, dense kernels ``[in, out]``;
- ``metrics.csv.gz``: one row per weights row with ``step``, ``test_accuracy`` and the
  run's ``config.*`` (``config.activation``, ``config.dataset``, ...);
- optionally an index file (``--splits``): one weights row per line, the shuffle order
  the NFN / neural-graphs experiments use.

The networks are Keras ``Conv2D(16, 3, strides=2, padding="valid", activation=act)`` x 3
(layers and widths are read from the layout), global average pooling and ``Dense(10)``
on grey images scaled to [-1, 1]; dropout is the identity at evaluation. Each becomes a
:class:`nngraph.data.zoo.ZooCNN` with ``padding`` 0, stride 2 and its run's activation,
kernels transposed to PyTorch order (conv ``[out, in, kh, kw]``, dense ``[out, in]``).

Selection and split (the NFN protocol): rows are put in the index file's order (else the
file's), only rows of the final ``step`` are kept, rows whose ``test_accuracy`` is empty
or not finite are dropped (their count is printed), then the second half is ``test`` and
the first half is shuffled with ``random.Random(0)`` and cut 80/20 into ``train`` and
``val``.

The three files must be regular files inside the folder (a symlink out of it is
refused); ``weights.npy`` is memory-mapped and its shape read first, so the layout's
spans and the metrics' row count are checked against it before anything is allocated.
"""

from __future__ import annotations

import ast
import csv
import gzip
import io
import math
import random
import re
import time
from pathlib import Path

import numpy as np
import torch

from nngraph.data.corpus import NetworkZoo
from nngraph.data.importers.common import check_out, inside, sha256_file, staged_output
from nngraph.data.store import CorpusWriter
from nngraph.data.zoo import SPEC_VERSION
from nngraph.errors import DataError

STRIDE = 2  # the zoo's cnn_stride (not in metrics.csv.gz)
IMAGE_SIZES = {"mnist": 28, "fashion_mnist": 28, "cifar10": 32, "svhn_cropped": 32}
ACTIVATIONS = ("relu", "tanh", "sigmoid")  # the zoo's options nngraph converts (not selu)
_VAR = re.compile(r"(?:.*/)?(conv2d|dense)(?:_(\d+))?/(kernel|bias):0")


def read_layout(path: Path) -> list[dict]:
    """Rows of layout.csv as {"layer": ("conv2d"|"dense", index), "part", "start", "stop", "shape"}."""
    if not path.is_file():
        raise DataError(f"{path} is missing; a Small CNN Zoo folder holds weights.npy, layout.csv and metrics.csv.gz")
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                name, start, stop = row["varname"], int(row["start_idx"]), int(row["end_idx"])
                shape = tuple(int(v) for v in ast.literal_eval(row["shape"]))
            except (KeyError, TypeError, ValueError, SyntaxError):
                raise DataError(f"{path}: row {row} needs varname, start_idx, end_idx and a shape tuple") from None
            match = _VAR.fullmatch(name)
            if match is None:
                raise DataError(f"{path}: unknown parameter name {name!r}; the zoo's CNN has conv2d*/dense "
                                f"kernel:0 and bias:0 only")
            if stop - start != math.prod(shape) or start < 0 or min(shape, default=1) < 1:
                raise DataError(f"{path}: {name} has shape {shape} ({math.prod(shape)} values) but spans "
                                f"{start}..{stop} ({stop - start}); the layout is inconsistent")
            rows.append({"layer": (match.group(1), int(match.group(2) or 0)), "part": match.group(3),
                         "start": start, "stop": stop, "shape": shape, "varname": name})
    return rows


def torch_layout(rows: list[dict], path: Path) -> tuple[list[int], int, int, list[tuple[str, dict, str]]]:
    """(conv widths, kernel, classes, [(state-dict name, layout row, kind)]) of the zoo's CNN."""
    by_layer: dict[tuple[str, int], dict[str, dict]] = {}
    for row in rows:
        by_layer.setdefault(row["layer"], {})[row["part"]] = row
    convs = sorted(k for k in by_layer if k[0] == "conv2d")
    dense = [k for k in by_layer if k[0] == "dense"]
    if not convs or len(dense) != 1 or any(set(v) != {"kernel", "bias"} for v in by_layer.values()):
        raise DataError(f"{path}: expected conv2d layers and one dense layer, each with kernel:0 and bias:0")
    widths, kernel, entries = [], None, []
    c_in = None
    for i, key in enumerate(convs):
        k, b = by_layer[key]["kernel"], by_layer[key]["bias"]
        if len(k["shape"]) != 4 or k["shape"][0] != k["shape"][1] or b["shape"] != (k["shape"][3],) \
                or (c_in is not None and k["shape"][2] != c_in) or kernel not in (None, k["shape"][0]):
            raise DataError(f"{path}: {k['varname']} {k['shape']} / {b['varname']} {b['shape']} do not chain as "
                            f"[k, k, in, out] conv layers of one kernel size")
        kernel, c_in = k["shape"][0], k["shape"][3]
        widths.append(c_in)
        entries += [(f"blocks.{i}.conv.weight", k, "conv"), (f"blocks.{i}.conv.bias", b, "bias")]
    k, b = by_layer[dense[0]]["kernel"], by_layer[dense[0]]["bias"]
    if len(k["shape"]) != 2 or k["shape"][0] != c_in or b["shape"] != (k["shape"][1],):
        raise DataError(f"{path}: {k['varname']} {k['shape']} does not read the last conv's {c_in} channels")
    entries += [("head.weight", k, "dense"), ("head.bias", b, "bias")]
    in_channels = by_layer[convs[0]]["kernel"]["shape"][2]
    return [in_channels, *widths], kernel, k["shape"][1], entries


def read_metrics(path: Path, max_rows: int) -> list[dict]:
    """The rows of metrics.csv.gz; more than ``max_rows`` (the weights' rows) is refused as
    soon as row ``max_rows + 1`` is read (a gzip bomb is not read to its end)."""
    if not path.is_file():
        raise DataError(f"{path} is missing; a Small CNN Zoo folder holds weights.npy, layout.csv and metrics.csv.gz")
    rows = []
    try:
        with gzip.open(path, "rt", newline="") as f:
            for row in csv.DictReader(f):
                if len(rows) == max_rows:
                    raise DataError(f"{path} has more rows than weights.npy ({max_rows}); they must describe the "
                                    f"same networks")
                rows.append(row)
    except (OSError, EOFError, csv.Error, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not a readable gzip CSV ({exc}); replace it with the release's file") from None
    if not rows or any(c not in rows[0] for c in ("step", "test_accuracy")):
        raise DataError(f"{path} needs the columns step and test_accuracy")
    return rows


def read_weights(path: Path, width: int) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path} is missing; a Small CNN Zoo folder holds weights.npy, layout.csv and metrics.csv.gz")
    try:
        weights = np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path} is not a readable .npy file ({str(exc).splitlines()[0]}); it may be truncated: "
                        f"download it again") from None
    if weights.ndim != 2 or weights.shape[1] < width:
        raise DataError(f"{path} has shape {weights.shape}, layout.csv needs [rows, >= {width}]")
    return weights


def read_index(path: Path, rows: int) -> np.ndarray:
    """The row order of an index file (one integer per line, as NFN's split CSVs)."""
    if not path.is_file():
        raise DataError(f"index file {path} does not exist; pass the split CSV of the collection with --splits")
    try:
        order = np.loadtxt(io.StringIO(path.read_text()), dtype=np.int64, ndmin=1)
    except ValueError as exc:
        raise DataError(f"index file {path} must hold one integer per line ({exc})") from None
    if order.size and (order.min() < 0 or order.max() >= rows):
        raise DataError(f"index file {path} holds rows outside 0..{rows - 1}; it belongs to another collection")
    values, counts = np.unique(order, return_counts=True)
    if (counts > 1).any():
        raise DataError(f"index file {path} lists row {int(values[counts > 1][0])} twice; every network must be "
                        f"in one split only")
    return order


def nfn_splits(n: int) -> list[str]:
    """Split of n final networks: second half test, first half shuffled (Random(0)) 80/20 train/val."""
    split = ["test"] * n
    trainval = list(range(int(0.5 * n)))
    random.Random(0).shuffle(trainval)
    cut = int(0.8 * len(trainval))
    for i in trainval[:cut]:
        split[i] = "train"
    for i in trainval[cut:]:
        split[i] = "val"
    return split


def import_cnn_zoo(src, out, *, splits=None, shard_size: int = 1000, command: str | None = None, log=print) -> dict:
    """Import a Small CNN Zoo folder into the corpus ``out``; returns its manifest."""
    t0 = time.perf_counter()
    src = Path(src)
    if not src.is_dir():
        raise DataError(f"Small CNN Zoo folder {src} does not exist; pass the folder holding weights.npy")
    check_out(out)
    layout_path, metrics_path, weights_path = (inside(src, src / name, "the source file") for name in
                                               ("layout.csv", "metrics.csv.gz", "weights.npy"))
    widths, kernel, classes, entries = torch_layout(read_layout(layout_path), layout_path)
    weights = read_weights(weights_path, max(e["stop"] for _, e, _ in entries))
    metrics = read_metrics(metrics_path, weights.shape[0])
    if len(metrics) != weights.shape[0]:
        raise DataError(f"{metrics_path} has {len(metrics)} rows but {weights_path} has {weights.shape[0]}; "
                        f"they must describe the same networks")
    order = read_index(Path(splits), len(metrics)) if splits is not None else np.arange(len(metrics))
    try:
        steps = np.array([float(metrics[r]["step"]) for r in order])
    except (TypeError, ValueError):
        raise DataError(f"{metrics_path}: a step is not a number; replace it with the release's file") from None
    final = order[steps == steps.max()] if len(order) else order
    accuracy = [_accuracy(metrics[r]["test_accuracy"], r, metrics_path) for r in final.tolist()]
    dropped = [r for r, a in zip(final.tolist(), accuracy) if a is None]
    if dropped:
        log(f"{metrics_path}: dropped {len(dropped)} networks whose test_accuracy is empty or not finite "
            f"(rows {', '.join(map(str, dropped[:5]))}{', ...' if len(dropped) > 5 else ''})")
        final = np.array([r for r, a in zip(final.tolist(), accuracy) if a is not None], dtype=np.int64)
    n = len(final)
    if n == 0:
        raise DataError(f"{src} has no networks to import")
    dataset = metrics[int(final[0])].get("config.dataset")
    if dataset not in IMAGE_SIZES:
        raise DataError(f"{metrics_path}: config.dataset {dataset!r} is not one of {sorted(IMAGE_SIZES)}; "
                        f"nngraph needs the image size of the collection")
    archs, labels, training, seeds = [], [], [], []
    for r in final.tolist():
        row = metrics[r]
        act = row.get("config.activation")
        if act not in ACTIVATIONS:
            raise DataError(f"{metrics_path}: row {r} has config.activation {act!r}; nngraph converts "
                            f"{', '.join(ACTIVATIONS)}")
        if row.get("config.dnn_architecture", "cnn") != "cnn":
            raise DataError(f"{metrics_path}: row {r} is a {row['config.dnn_architecture']!r} network; only 'cnn' "
                            f"(no batch norm) collections are supported")
        archs.append(_architecture(widths, kernel, classes, act))
        labels.append(float(row["test_accuracy"]))  # finite: checked above
        training.append({k[len("config."):]: v for k, v in row.items() if k.startswith("config.")})
        seed = row.get("config.random_seed")
        seeds.append(int(float(seed)) if seed not in (None, "") else r)
    plan = {
        "kind": NetworkZoo.kind,
        "layout": "stacked",  # every network has the same parameter shapes (activations differ)
        "architectures": [],
        "command": command,
        "config": {
            "import": {"format": "cnn-zoo", "source": str(src.resolve()),
                       "split_file": str(Path(splits).resolve()) if splits is not None else None,
                       "split_file_sha256": sha256_file(Path(splits)) if splits is not None else None,
                       "weights_shape": list(weights.shape), "final_step": float(steps.max())},
            "image_size": [IMAGE_SIZES[dataset]] * 2, "shard_size": shard_size, "count": n,
        },
        "items": {"split": nfn_splits(n), "source_path": [f"weights.npy[{r}]" for r in final.tolist()]},
    }
    log(f"{src}: importing {n} networks (final step {steps.max():g} of {len(order)} rows)")
    with staged_output(out, log) as stage:
        writer = CorpusWriter(stage, plan, n, shard_size, result_columns=("label", "arch", "training", "seed"))
        for k, a, b in writer.pending():
            rows = final[a:b]
            ascending = np.sort(rows)  # read the memory map in file order
            block = np.asarray(weights[ascending])[np.searchsorted(ascending, rows)]  # [b-a, P]
            bad = ~np.isfinite(block).all(1)
            if bad.any():
                raise DataError(f"{weights_path}: row {int(rows[bad.argmax()])} holds NaN or inf; use the release's "
                                f"file (its final checkpoints are finite)")
            writer.write(k, _tensors(block, entries), {"label": labels[a:b], "arch": archs[a:b],
                                                       "training": training[a:b], "seed": seeds[a:b]})
        seconds = time.perf_counter() - t0
        manifest = writer.finish({"imported": n, "seconds": round(seconds, 2)})
    log(f"{out}: {n} networks imported in {seconds:.1f} s")
    return manifest


def _accuracy(value, row: int, path: Path) -> float | None:
    """A row's test accuracy; None (the row is dropped) when empty or not finite."""
    if value is None or value.strip() == "":
        return None
    try:
        accuracy = float(value)
    except ValueError:
        raise DataError(f"{path}: row {row} has test_accuracy {value!r}, not a number") from None
    return accuracy if math.isfinite(accuracy) else None


def _architecture(widths: list[int], kernel: int, classes: int, activation: str) -> dict:
    return {"version": SPEC_VERSION, "in_channels": widths[0], "num_classes": classes, "activation": activation,
            "batchnorm": False,
            "layers": [{"channels": c, "kernel": kernel, "stride": STRIDE, "residual": False, "padding": 0}
                       for c in widths[1:]]}


def _tensors(block: np.ndarray, entries: list[tuple[str, dict, str]]) -> dict[str, torch.Tensor]:
    """Flat TensorFlow-order rows [n, P] -> stacked PyTorch-order parameters {name: [n, ...]}."""
    n = block.shape[0]
    out = {}
    for name, row, kind in entries:
        arr = block[:, row["start"]:row["stop"]].reshape(n, *row["shape"])
        if kind == "conv":
            arr = arr.transpose(0, 4, 3, 1, 2)  # [n, kh, kw, in, out] -> [n, out, in, kh, kw]
        elif kind == "dense":
            arr = arr.transpose(0, 2, 1)  # [n, in, out] -> [n, out, in]
        out[name] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    return out
