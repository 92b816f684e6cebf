"""On-disk corpora of networks: sharded safetensors plus ``manifest.json``.

A corpus directory holds ``manifest.json`` and ``shard-00000.safetensors``, ... Each
shard holds a contiguous range ``[start, stop)`` of items:

- ``layout = "stacked"`` (one architecture, e.g. INR corpora): one tensor per parameter
  name, stacked over the shard's items: ``hidden.0.weight`` [n, 32, 2], ...
- ``layout = "per_item"`` (heterogeneous zoos): ``net{index}.{param}`` per network.
- per-item tensors in either layout under ``item.{name}``, e.g. ``item.image`` [n, H, W];
  the shard's per-item results (PSNR, accuracy, seeds, ...) as JSON in its safetensors
  header metadata (``items``), so a shard describes itself.

``manifest.json`` (format ``nngraph-corpus``, ``format_version`` = ``FORMAT_VERSION``):
``kind`` (``inr`` | ``zoo``), ``layout``, ``architectures`` (list of specs) and
``config`` (everything that defines the build: sources, variant, recipe, seeds, shard
size), per-item columns ``items = {"split": [...], "label": [...], ...}`` (results are
``null`` until their shard is written), and ``shards`` with file name, item range, size
in bytes and SHA-256. Every shard and every manifest update is written to a temporary
file and moved into place with ``os.replace``, so a killed build leaves only whole files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from nngraph.errors import DataError
from nngraph.io import atomic_write_bytes, json_text

FORMAT = "nngraph-corpus"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ITEM_PREFIX = "item."
_MANIFEST_KEYS = ("kind", "layout", "architectures", "config", "items", "shards")
def write_shard(path: str | os.PathLike, tensors: dict[str, torch.Tensor], results: dict | None = None) -> dict:
    """Write one shard atomically; ``results`` (per-item JSON columns) go in its header.

    Returns {"bytes", "sha256"} of the file.
    """
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION)}
    if results is not None:
        meta["items"] = json.dumps(results, allow_nan=False)
    data = canonical_safetensors(st_save({k: v.contiguous() for k, v in tensors.items()}, metadata=meta))
    atomic_write_bytes(path, data)
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def canonical_safetensors(data: bytes) -> bytes:
    """The same safetensors file with its JSON header in one fixed form.

    safetensors writes ``__metadata__`` from a hash map, so its key order (and so the
    file's bytes) varies between processes. The header is rewritten with sorted keys,
    no spaces, padded with spaces to a multiple of 8 bytes; tensor offsets are relative
    to the end of the header, so the data part is unchanged. Equal tensors and metadata
    then give byte-identical files (and SHA-256).
    """
    n = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8:8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + data[8 + n:]


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


# --------------------------------------------------------------------------- reading


def shard_metadata(data: bytes) -> dict:
    """The ``__metadata__`` of a safetensors file's header (8-byte length + JSON)."""
    if len(data) < 8:
        raise ValueError("file shorter than a safetensors header")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ValueError("header longer than the file")
    return json.loads(data[8:8 + n]).get("__metadata__", {}) or {}


def read_manifest(root: str | os.PathLike, kind: str | None = None) -> dict:
    """Load and validate ``root/manifest.json``."""
    path = Path(root) / MANIFEST
    if not Path(root).is_dir():
        raise DataError(f"corpus folder {root} does not exist; build it with `nngraph data inrs --out {root}` "
                        f"or `nngraph data zoo --out {root}`")
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path} is missing; build the corpus with `nngraph data inrs|zoo --out {root}`") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); rebuild the corpus into an empty --out folder") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path} is not an nngraph corpus manifest; point to a folder built by `nngraph data`")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(f"{path} has format version {version}, this nngraph reads version {FORMAT_VERSION}; "
                        f"rebuild the corpus with this nngraph into a new --out folder")
    missing = [k for k in _MANIFEST_KEYS if k not in manifest]
    if not missing and (not isinstance(manifest["items"], dict) or "split" not in manifest["items"]):
        missing = ["items.split"]
    if missing:
        raise DataError(f"{path} lacks the key {missing[0]!r} (damaged or hand-edited); rebuild the corpus "
                        f"into an empty --out folder")
    if kind is not None and manifest.get("kind") != kind:
        raise DataError(f"{path} describes a {manifest.get('kind')!r} corpus, not {kind!r}; "
                        f"use the matching dataset class")
    return manifest


def load_shard(root: str | os.PathLike, entry: dict, rebuild_hint: str = "") -> dict[str, torch.Tensor]:
    """Read one shard, checking its size and SHA-256 against the manifest entry."""
    path = Path(root) / entry["file"]
    fix = rebuild_hint or "rerun the command that built the corpus (it refits only the bad shard)"
    data, problem = _read_checked(path, entry)
    if problem:
        raise DataError(f"shard {path} {problem}; {fix}")
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise DataError(f"shard {path} is not a readable safetensors file ({exc}); {fix}") from None
    return tensors


def shard_problem(root: str | os.PathLike, entry: dict) -> str | None:
    """What is wrong with a shard file against its manifest entry ("is missing", ...), or None."""
    return _read_checked(Path(root) / entry["file"], entry)[1]


def _read_checked(path: Path, entry: dict) -> tuple[bytes, str | None]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return b"", "is missing"
    if entry.get("bytes") is not None and len(data) != entry["bytes"]:
        return data, f"has {len(data)} bytes, the manifest says {entry['bytes']} (truncated or replaced)"
    if entry.get("sha256") and hashlib.sha256(data).hexdigest() != entry["sha256"]:
        return data, "does not match its SHA-256 in the manifest (corrupt)"
    return data, None


def rebuild_hint(root: str | os.PathLike, manifest: dict) -> str:
    """``rerun `COMMAND` ...``; the ``--out`` of an ``nngraph data inrs|zoo`` command is
    replaced by the corpus' current folder (it may have been moved since)."""
    cmd = manifest.get("command")
    if not cmd:
        return f"rerun the `nngraph data` command that built {root}"
    words = shlex.split(cmd)
    if not any(a == "data" and b in ("inrs", "zoo") for a, b in zip(words, words[1:])):
        return f"rerun `{cmd}`"  # e.g. `nngraph demo --out DIR`, whose --out is not the corpus
    for i, word in enumerate(words):
        if word == "--out" and i + 1 < len(words):
            words[i + 1] = str(root)
        elif word.startswith("--out="):
            words[i] = f"--out={root}"
    return f"rerun `{shlex.join(words)}`"


def check_complete(root, manifest: dict) -> None:
    if not manifest.get("complete"):
        done = sum(1 for s in manifest["shards"] if s.get("complete"))
        raise DataError(f"corpus {root} is incomplete ({done} of {len(manifest['shards'])} shards); "
                        f"{rebuild_hint(root, manifest)} to finish it")


# --------------------------------------------------------------------------- writing


class CorpusWriter:
    """Resumable writer of a corpus whose items are planned up front.

    ``plan`` is the manifest without results: format fields, kind, layout,
    architectures, config and per-item columns. An existing manifest in ``root`` must
    have the same ``config`` (else the folder belongs to another build); shards it lists
    as complete are kept when their file matches size and SHA-256, and a shard file that
    was written but not yet recorded (a kill between the two writes) is adopted.
    """

    def __init__(self, root: str | os.PathLike, plan: dict, n_items: int, shard_size: int,
                 result_columns: tuple[str, ...]):
        if shard_size < 1:
            raise DataError(f"--shard-size must be >= 1, got {shard_size}")
        self.root = Path(root)
        self.result_columns = result_columns
        self._saved: str | None = None  # the manifest text last read or written
        path = self.root / MANIFEST
        if self.root.exists() and not self.root.is_dir():
            raise DataError(f"--out {self.root} is a file; choose a folder")
        if self.root.is_dir():  # temporary files of a write that was killed
            for stale in self.root.glob(".*.tmp"):
                stale.unlink(missing_ok=True)
        if path.exists():
            old = read_manifest(self.root)
            if old.get("config") != plan["config"] or old.get("kind") != plan["kind"]:
                diff = sorted(k for k in set(old.get("config", {})) | set(plan["config"])
                              if old.get("config", {}).get(k) != plan["config"].get(k))
                raise DataError(f"{self.root} holds a corpus built with other options (differs in "
                                f"{', '.join(diff) or 'kind'}); use another --out folder or delete this one")
            self.manifest = old
            self._saved = json_text(old)
            if not old.get("complete"):  # a complete corpus is left untouched (it may be read-only)
                self.manifest["command"] = plan.get("command", old.get("command"))
            self._reconcile()
        else:
            if self.root.exists() and any(p.name.endswith(".safetensors") for p in self.root.iterdir()):
                raise DataError(f"{self.root} holds shards but no {MANIFEST}; use an empty --out folder")
            self.manifest = dict(plan)
            self.manifest.update(format=FORMAT, format_version=FORMAT_VERSION, complete=False, n_items=n_items)
            for col in result_columns:
                self.manifest["items"][col] = [None] * n_items
            self.manifest["items"]["shard"] = [i // shard_size for i in range(n_items)]
            self.manifest["shards"] = [
                {"file": shard_name(k), "start": s, "stop": min(s + shard_size, n_items), "complete": False}
                for k, s in enumerate(range(0, n_items, shard_size))
            ]
            self.save()

    def save(self) -> None:
        """Write the manifest, unless the file already holds exactly this content."""
        text = json_text(self.manifest)
        if text != self._saved:
            atomic_write_bytes(self.root / MANIFEST, text.encode())
            self._saved = text

    def _reconcile(self) -> None:
        changed = False
        for k, entry in enumerate(self.manifest["shards"]):
            path = self.root / entry["file"]
            if entry.get("complete"):
                try:
                    load_shard(self.root, entry)
                    continue
                except DataError as exc:
                    print(f"warning: {exc.args[0].split(';')[0]}; building it again")
                    entry.update(complete=False, bytes=None, sha256=None)
                    changed = True
            if not entry.get("complete") and path.exists():
                data = path.read_bytes()
                try:
                    st_load(data)
                    results = json.loads(shard_metadata(data)["items"])
                    if any(len(results[c]) != entry["stop"] - entry["start"] for c in self.result_columns):
                        raise ValueError("item count")
                except Exception:
                    continue  # rewritten when its turn comes
                self._record(k, results, {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
                changed = True
        if changed:
            self.manifest["complete"] = all(s["complete"] for s in self.manifest["shards"])
            self.save()

    def pending(self) -> list[tuple[int, int, int]]:
        """(shard index, start, stop) of every shard still to build."""
        return [(k, s["start"], s["stop"]) for k, s in enumerate(self.manifest["shards"]) if not s["complete"]]

    def _record(self, k: int, results: dict, info: dict) -> None:
        entry = self.manifest["shards"][k]
        for col in self.result_columns:
            values = [_plain(v) for v in results[col]]
            if col == "arch":  # architecture specs are listed once; items hold their index
                archs = self.manifest["architectures"]
                values = [archs.index(a) if a in archs else (archs.append(a) or len(archs) - 1) for a in values]
            self.manifest["items"][col][entry["start"]:entry["stop"]] = values
        entry.update(info, complete=True)

    def write(self, k: int, tensors: dict[str, torch.Tensor], results: dict[str, list]) -> None:
        """Write shard ``k`` (tensors plus ``item.{column}`` for results), then the manifest."""
        entry = self.manifest["shards"][k]
        n = entry["stop"] - entry["start"]
        results = {c: [_plain(v) for v in results[c]] for c in self.result_columns}
        for col, values in results.items():
            if len(values) != n:
                raise ValueError(f"shard {k}: {len(values)} values of {col} for {n} items")
        info = write_shard(self.root / entry["file"], tensors, results)
        self._record(k, results, info)
        self.save()

    def finish(self, summary: dict | None = None) -> dict:
        self.manifest["complete"] = all(s["complete"] for s in self.manifest["shards"])
        if summary is not None:
            self.manifest["summary"] = summary
        self.save()
        return self.manifest


def _plain(v):
    if isinstance(v, (np.generic, torch.Tensor)):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


# --------------------------------------------------------------------------- datasets


class _Corpus:
    """Shared reading logic: manifest, split selection, shard loading."""

    kind = ""

    def __init__(self, root: str | os.PathLike, split: str | None = None):
        self.root = Path(root)
        self.manifest = read_manifest(self.root, self.kind)
        check_complete(self.root, self.manifest)
        items = self.manifest["items"]
        splits = np.asarray(items["split"], dtype=object)
        if split is not None and split not in set(splits.tolist()) | {"train", "val", "test"}:
            raise DataError(f"unknown split {split!r}; choose train, val or test")
        self.split = split
        self.rows = np.flatnonzero(splits == split) if split is not None else np.arange(len(splits))
        self._tensors: dict[str, torch.Tensor] | None = None
        self._stats: dict | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def column(self, name: str) -> list:
        col = self.manifest["items"][name]
        return [col[i] for i in self.rows]

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor(self.column("label"))

    def _load_rows(self, rows: np.ndarray) -> dict[str, list[torch.Tensor]]:
        """Tensors of the shards that hold ``rows``: {key: [per shard]} with row selection."""
        shards = self.manifest["shards"]
        shard_of = np.asarray(self.manifest["items"]["shard"])
        parts: dict[str, list[torch.Tensor]] = {}
        for k in np.unique(shard_of[rows]):
            entry = shards[int(k)]
            tensors = load_shard(self.root, entry, self._hint())
            local = rows[shard_of[rows] == k] - entry["start"]
            for key, t in tensors.items():
                parts.setdefault(key, []).append((t, torch.from_numpy(local)))
        return parts

    def _hint(self) -> str:
        return f"{rebuild_hint(self.root, self.manifest)} to rebuild it"


class InrDataset(_Corpus):
    """A homogeneous INR corpus (``nngraph data inrs``), optionally one split.

    Item ``i``: ``{"params": {name: tensor}, "label": int, "image": [H, W], "psnr": float,
    "index": source image index, "seed": int}``. All items of the dataset are loaded at
    construction (a 70k Fashion-MNIST corpus is about 0.6 GB).
    """

    kind = "inr"

    def __init__(self, root: str | os.PathLike, split: str | None = None):
        super().__init__(root, split)
        from nngraph.data.fitting import SirenSpec

        self.spec = SirenSpec.from_dict(self.manifest["architectures"][0])
        self.param_names = list(self.spec.param_shapes())
        parts = self._load_rows(self.rows)
        keys = self.param_names + [ITEM_PREFIX + "image"]
        try:
            cat = {k: torch.cat([t[i] for t, i in parts[k]]) if parts.get(k) else torch.empty(0) for k in keys}
        except KeyError as exc:
            raise DataError(f"corpus {self.root}: a shard lacks tensor {exc}; {self._hint()}") from None
        self.params = {k: cat[k] for k in self.param_names}  # {name: [n, *shape]}
        self.images = cat[ITEM_PREFIX + "image"]  # [n, H, W]

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        items = self.manifest["items"]
        return {
            "params": {k: v[i] for k, v in self.params.items()},
            "label": int(items["label"][row]),
            "image": self.images[i],
            "psnr": items["psnr"][row],
            "index": int(items["source_index"][row]),
            "seed": int(items["seed"][row]),
        }

    def stacked_params(self) -> dict[str, torch.Tensor]:
        """The whole dataset as {name: [n, *shape]} (the input of the graph fast path)."""
        return self.params

    def module(self, i: int):
        """Item ``i`` as a :class:`nngraph.data.inr.Siren` with its stored weights."""
        net = self.spec.build()
        net.load_state_dict({k: v[i] for k, v in self.params.items()})
        return net

    def weight_stats(self) -> dict[str, tuple[float, float]]:
        """{name: (mean, std)} of every parameter tensor over the *training* split."""
        if self._stats is None:
            train = self if self.split == "train" else InrDataset(self.root, "train")
            self._stats = _stats(train.params)
        return self._stats


class ZooDataset(_Corpus):
    """A CNN zoo (``nngraph data zoo``), optionally one split.

    Item ``i``: ``{"params": state_dict, "label": test accuracy, "arch": spec dict,
    "training": recipe dict, "index": int, "seed": int}``.
    """

    kind = "zoo"

    def __init__(self, root: str | os.PathLike, split: str | None = None):
        super().__init__(root, split)
        self.architectures = self.manifest["architectures"]
        parts = self._load_rows(self.rows)
        self.layout = self.manifest["layout"]
        pos = {int(r): j for j, r in enumerate(self.rows)}
        self.items: list[dict[str, torch.Tensor]] = [dict() for _ in self.rows]
        if self.layout == "per_item":
            for key, chunks in parts.items():
                if key.startswith(ITEM_PREFIX):
                    continue
                net, name = key.split(".", 1)
                row = int(net[3:])
                if row in pos:
                    self.items[pos[row]][name] = chunks[0][0]
        else:
            for key, chunks in parts.items():
                if key.startswith(ITEM_PREFIX):
                    continue
                stacked = torch.cat([t[i] for t, i in chunks])
                for j in range(len(self.rows)):
                    self.items[j][key] = stacked[j]
        for j, params in enumerate(self.items):
            if not params:
                raise DataError(f"corpus {self.root}: network {self.rows[j]} has no tensors; {self._hint()}")
        self._state_dict_order()

    def _state_dict_order(self) -> None:
        """Put every item's tensors in its model's state_dict order (files store them sorted)."""
        from nngraph.data.zoo import build_cnn

        arch_of = self.manifest["items"]["arch"]
        orders: dict[int, list[str]] = {}
        for j, row in enumerate(self.rows):
            a = arch_of[row]
            if a not in orders:
                orders[a] = list(build_cnn(self.architectures[a]).state_dict())
            params = self.items[j]
            if set(orders[a]) != set(params):
                raise DataError(f"corpus {self.root}: network {row} does not match its architecture's "
                                f"parameters; {self._hint()}")
            self.items[j] = {k: params[k] for k in orders[a]}

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        items = self.manifest["items"]
        return {
            "params": self.items[i],
            "label": float(items["label"][row]),
            "arch": self.architectures[items["arch"][row]],
            "training": items["training"][row],
            "index": int(row),
            "seed": int(items["seed"][row]),
        }

    def model(self, i: int):
        """Item ``i`` as a torch module (``nngraph.data.zoo.build_cnn``) with its weights."""
        from nngraph.data.zoo import build_cnn

        net = build_cnn(self[i]["arch"])
        net.load_state_dict(self.items[i])
        return net.eval()

    def stacked_params(self) -> dict[str, torch.Tensor]:
        """{name: [n, *shape]}; only for zoos of one architecture (``--fixed-arch``)."""
        arch_ids = {self.manifest["items"]["arch"][r] for r in self.rows}
        if len(arch_ids) > 1:
            raise DataError(f"zoo {self.root} has {len(arch_ids)} architectures; stacked parameters need "
                            f"one (build it with --fixed-arch)")
        if not self.items:
            return {}
        return {k: torch.stack([p[k] for p in self.items]) for k in self.items[0]}

    def weight_stats(self) -> dict[str, tuple[float, float]]:
        """{name: (mean, std)} per parameter name over the training split's networks."""
        if self._stats is None:
            train = self if self.split == "train" else ZooDataset(self.root, "train")
            groups: dict[str, list[torch.Tensor]] = {}
            for params in train.items:
                for k, v in params.items():
                    if v.is_floating_point():
                        groups.setdefault(k, []).append(v.reshape(-1))
            self._stats = _stats({k: torch.cat(v) for k, v in groups.items()})
        return self._stats


def _stats(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[float, float]]:
    out = {}
    for k, v in tensors.items():
        v = v.double()
        out[k] = (float(v.mean()), float(v.std())) if v.numel() > 1 else (float(v.sum()), 0.0)
    return out
