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

A corpus may come from someone else, so reading trusts nothing in it: the manifest is a
regular file of at most ``MAX_MANIFEST_BYTES``; its columns all have one length n; its
shards tile ``[0, n)``; a shard's file name is a plain name that resolves inside the
corpus folder after symlinks (so no read or write follows it out); a shard is read only
when ``os.stat`` gives the byte count the manifest records, and never past it; every
complete shard's safetensors header (read without its data) must hold its item range;
the kind-specific checks (an INR corpus's architecture against those tensor shapes, a
zoo's targets and architectures) are the corpus classes' (``data.corpus``), which sit above
this byte layer: it imports no builder.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shlex
import stat
from collections.abc import Iterator
from contextlib import contextmanager
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
SPLITS = ("train", "val", "test")  # the values of items.split
_MANIFEST_KEYS = ("kind", "layout", "architectures", "config", "items", "shards")
# A manifest takes about 70 bytes per INR and 400 per zoo network (measured): 256 MiB
# holds over 600,000 networks; a bigger file is not one nngraph wrote, and is not parsed.
MAX_MANIFEST_BYTES = 256 << 20
# A safetensors header lists names, shapes and offsets: a few hundred bytes per tensor.
MAX_HEADER_BYTES = 100 << 20
# Classes of an INR corpus: a confusion matrix has MAX_CLASSES**2 cells (ImageNet has 1000).
MAX_CLASSES = 1000
# Parameters of one network whose architecture no stored tensor confirms (an INR corpus with
# no complete shard yet, a run's recorded SIREN or CNN spec): 10^8 float32 values (400 MB)
# is far beyond any network of a corpus; a hand-edited ``hidden = 50000`` (2.5e9) is refused
# before a model of that size is built.
MAX_UNVERIFIED_PARAMS = 10**8


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
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_MANIFEST_BYTES:
            raise DataError(f"{path} is not a regular file of at most {MAX_MANIFEST_BYTES >> 20} MB, so not a "
                            f"manifest nngraph wrote; rebuild the corpus into an empty --out folder")
        with open(path, "rb") as f:
            manifest = json.loads(f.read(info.st_size))
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
    if not isinstance(manifest["config"], dict) or not isinstance(manifest.get("command") or "", str):
        raise damaged(path, "config is not a mapping or command not a string")
    if kind is not None and manifest.get("kind") != kind:
        raise DataError(f"{path} describes a {manifest.get('kind')!r} corpus, not {kind!r}; "
                        f"use the matching dataset class")
    _check_columns(path, manifest)
    _check_shards(root, path, manifest)
    complete_headers(root, manifest)
    return manifest


def damaged(path: Path, what: str) -> DataError:
    return DataError(f"{path}: {what} (damaged or hand-edited); rebuild the corpus into an empty --out folder")


def _check_columns(path: Path, manifest: dict) -> None:
    """Every per-item column is a list of one length n (``n_items`` when recorded); splits are SPLITS."""
    items = manifest["items"]
    n = len(items["split"]) if isinstance(items["split"], list) else -1
    for col, values in items.items():
        if not isinstance(values, list) or len(values) != n:
            got = len(values) if isinstance(values, list) else type(values).__name__
            raise damaged(path, f"items.{col} has {got} values, items.split has {n}")
    if manifest.get("n_items", n) != n:
        raise damaged(path, f"n_items is {manifest['n_items']!r} but the columns hold {n} items")
    stray = [s for s in items["split"] if s not in SPLITS][:1]
    if stray:
        raise damaged(path, f"items.split holds {str(stray[0])[:40]!r}, not one of {', '.join(SPLITS)}")


def _check_shards(root, path: Path, manifest: dict) -> None:
    """Shards tile ``[0, n)`` in order, items.shard agrees, and every file name stays inside."""
    shards, n = manifest["shards"], len(manifest["items"]["split"])
    if not isinstance(shards, list) or not isinstance(manifest["architectures"], list):
        raise damaged(path, "shards and architectures must be lists")
    if manifest["layout"] not in ("stacked", "per_item"):
        raise damaged(path, f"layout {manifest['layout']!r} is neither 'stacked' nor 'per_item'")
    stop = 0
    for k, entry in enumerate(shards):
        if not isinstance(entry, dict):
            raise damaged(path, f"shard {k} is not a mapping")
        shard_path(root, entry)
        a, b = entry.get("start"), entry.get("stop")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (a, b)) or a != stop or b <= a or b > n:
            raise damaged(path, f"shard {k} covers items {a!r}..{b!r}; the shards must tile 0..{n} in order")
        if entry.get("complete") and (not isinstance(entry.get("bytes"), int) or isinstance(entry["bytes"], bool)
                                      or not isinstance(entry.get("sha256"), str)):
            raise damaged(path, f"complete shard {k} lacks its byte count or SHA-256 (reads are bounded by them)")
        stop = b
    if stop != n:
        raise damaged(path, f"the shards cover items 0..{stop}, the columns hold {n}")
    if "shard" in manifest["items"]:
        expected = np.repeat(np.arange(len(shards)), [e["stop"] - e["start"] for e in shards]).tolist()
        if manifest["items"]["shard"] != expected:
            raise damaged(path, "items.shard does not match the shards' item ranges")


def complete_headers(root, manifest: dict) -> list[tuple[dict, dict]]:
    """(entry, safetensors header) of every complete shard of the recorded size whose
    header is readable (the others are damaged: reported, or rebuilt by a rerun, when
    read), after checking that its tensors hold its item range:
    in a stacked layout every tensor has ``stop - start`` rows, in a per-item layout
    every ``net{i}.*`` has ``start <= i < stop``."""
    path = Path(root) / MANIFEST
    out = []
    for entry in manifest["shards"]:
        header = read_header(shard_path(root, entry), entry.get("bytes")) if entry.get("complete") else None
        if header is None:
            continue
        a, b = entry["start"], entry["stop"]
        for name, info in header.items():
            if name == "__metadata__":
                continue
            shape = info.get("shape") if isinstance(info, dict) else None
            if not isinstance(shape, list):
                raise damaged(path, f"shard {entry['file']} lists tensor {name!r} without a shape")
            if manifest["layout"] == "per_item" and not name.startswith(ITEM_PREFIX):
                net = name.partition(".")[0]
                if not (net.startswith("net") and net[3:].isdigit() and a <= int(net[3:]) < b):
                    raise damaged(path, f"shard {entry['file']} holds {name}, outside its networks {a}..{b - 1}")
            elif shape[:1] != [b - a]:
                raise damaged(path, f"shard {entry['file']} holds {name} of shape {shape} for its {b - a} items "
                                     f"{a}..{b - 1}")
        out.append((entry, header))
    return out


def shard_path(root: str | os.PathLike, entry: dict) -> Path:
    """``root / entry["file"]``, refused unless the name is a plain ``*.safetensors`` file
    name that resolves inside ``root`` after symlinks (a crafted ``../victim.txt`` or a
    symlink out of the corpus is never read nor written)."""
    root = Path(root)
    name = entry.get("file") if isinstance(entry, dict) else None
    if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name \
            or not name.endswith(".safetensors"):
        raise DataError(f"{root / MANIFEST} lists the shard file {name!r}, which is not a plain *.safetensors name "
                        f"inside the corpus (damaged or hand-edited); rebuild the corpus into an empty --out folder")
    path = root / name
    if not path.resolve().is_relative_to(root.resolve()):
        raise DataError(f"shard {path} resolves to {path.resolve()}, outside the corpus {root}; remove the link "
                        f"and rerun the build, or rebuild the corpus into an empty --out folder")
    return path


def load_shard(root: str | os.PathLike, entry: dict, rebuild_hint: str = "") -> dict[str, torch.Tensor]:
    """Read one shard, checking its size and SHA-256 against the manifest entry."""
    path = shard_path(root, entry)
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
    return _read_checked(shard_path(root, entry), entry)[1]


def _read_checked(path: Path, entry: dict) -> tuple[bytes, str | None]:
    """The file's bytes, or a problem. The size comes from ``os.stat`` first and must be
    the manifest's byte count (when it records one); nothing past it is ever read, and
    only regular files are read (not ``/dev/zero``, a FIFO, ...)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return b"", "is missing"
    if not stat.S_ISREG(info.st_mode):
        return b"", "is not a regular file"
    expected = entry.get("bytes")
    if expected is not None and info.st_size != expected:
        return b"", f"has {info.st_size} bytes, the manifest says {expected} (truncated or replaced)"
    with open(path, "rb") as f:
        data = f.read(info.st_size)
    if len(data) != info.st_size:
        return b"", f"changed while it was read ({len(data)} of {info.st_size} bytes)"
    if entry.get("sha256") and hashlib.sha256(data).hexdigest() != entry["sha256"]:
        return data, "does not match its SHA-256 in the manifest (corrupt)"
    return data, None


def read_header(path: Path, size: int | None = None) -> dict | None:
    """The JSON header of a safetensors file (names, dtypes, shapes, offsets) without its
    data, or None when the file is missing, not ``size`` bytes long (when given) or its
    header is unreadable."""
    try:
        info = os.stat(path)  # before open: opening a FIFO would wait for a writer
        if not stat.S_ISREG(info.st_mode) or info.st_size < 8 or size not in (None, info.st_size):
            return None
        size = info.st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n > min(size - 8, MAX_HEADER_BYTES):
                return None
            header = json.loads(f.read(n))
    except (OSError, ValueError):
        return None
    return header if isinstance(header, dict) else None


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
            path = shard_path(self.root, entry)
            if entry.get("complete"):
                try:
                    load_shard(self.root, entry)
                    continue
                except DataError as exc:
                    print(f"warning: {exc.args[0].split(';')[0]}; building it again")
                    entry.update(complete=False, bytes=None, sha256=None)
                    changed = True
            if not entry.get("complete") and path.exists():
                data, problem = _read_checked(path, {})
                try:
                    if problem:
                        raise ValueError(problem)
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
        info = write_shard(shard_path(self.root, entry), tensors, results)
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


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


@contextmanager
def writer_lock(out: str | os.PathLike) -> Iterator[None]:
    """Hold ``.{out}.lock`` (next to ``out``) for the block: one writer per corpus.

    The lock is an exclusive ``flock`` on that file, which holds the owner's PID for the
    message. A second writer is refused in one line while the owner lives; the kernel
    drops the lock of a process that dies (killed), so its file is simply taken over. On
    a read-only folder no lock can be taken, and none is needed (nothing can write there).
    """
    out = Path(out)
    lock = out.parent / f".{out.name}.lock"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            yield
            return
        raise
    held = False
    try:
        while not held:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                raise DataError(f"another nngraph process (PID {owner}) is writing {out}; wait for it to finish "
                                f"and rerun") from None
            try:
                held = os.stat(lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                held = False
            if not held:  # its owner removed the file as this process opened it: lock the new one
                os.close(fd)
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        if held:
            lock.unlink(missing_ok=True)  # while still held: a waiting opener sees another inode
        os.close(fd)
