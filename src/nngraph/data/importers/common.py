"""Shared pieces of the importers: split files, source paths, parallel reading, staged output.

An import either produces a complete corpus at ``--out`` or leaves nothing there: the
corpus is written into a hidden staging folder next to ``--out`` and moved into place
with one ``os.replace`` when every network has been read, checked and written; on any
error the staging folder is removed. An existing non-empty ``--out`` is never touched and
is refused before any data is read. One writer at a time: a lock file next to ``--out``
holds the writer's PID; a second writer is refused while that process lives, and the
lock and staging folders of a writer that died (killed) are taken over and removed.

Every path a split file lists must resolve inside the source folder after symlinks
(``Path.resolve`` + ``is_relative_to``) and be listed once; anything else is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from nngraph.data.store import pid_alive, writer_lock
from nngraph.errors import DataError

SPLITS = ("train", "val", "test")
# The Fashion-MNIST INR release lists 70,000 paths in about 5 MB of JSON.
MAX_SPLIT_FILE_BYTES = 256 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_split_file(src: Path, splits: str | os.PathLike | None) -> Path:
    """The split file: ``splits`` if given, else the one ``*splits*.json`` in ``src``."""
    if splits is not None:
        path = Path(splits)
        if not path.is_file():
            raise DataError(f"split file {path} does not exist; pass the JSON file that lists the networks with --splits")
        return path
    found = sorted(src.glob("*splits*.json"))
    if len(found) != 1:
        what = "no *splits*.json" if not found else f"{len(found)} split files ({', '.join(p.name for p in found)})"
        raise DataError(f"{src} holds {what}; name the split file with --splits FILE")
    return inside(src, found[0], "the split file")


def read_split_json(path: Path, columns: tuple[str, ...]) -> dict[str, dict[str, list]]:
    """``{"train": {"path": [...], col: [...]}, "val": ..., "test": ...}`` as written by
    the DWSNets / neural-graphs split scripts. A split given as a plain list of paths
    (the Fashion-MNIST INR release) has no other columns.
    """
    if not path.is_file():
        raise DataError(f"split file {path} is not a regular file; pass the split file of the release")
    size = path.stat().st_size
    if size > MAX_SPLIT_FILE_BYTES:
        raise DataError(f"split file {path} has {size:,} bytes, more than a split file of networks holds "
                        f"({MAX_SPLIT_FILE_BYTES:,}); pass the split file of the release")
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(size))
    except (OSError, ValueError) as exc:
        raise DataError(f"split file {path} is not valid JSON ({exc}); pass the split file of the release") from None
    if not isinstance(data, dict) or any(s not in data for s in SPLITS):
        raise DataError(f"split file {path} must map train, val and test to their networks; got keys "
                        f"{sorted(data) if isinstance(data, dict) else type(data).__name__}")
    out = {}
    for split in SPLITS:
        entry = data[split]
        if isinstance(entry, list):
            entry = {"path": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), list):
            raise DataError(f"split file {path}: {split!r} must be a list of paths or {{\"path\": [...], ...}}")
        n = len(entry["path"])
        for col in columns:
            if col in entry and (not isinstance(entry[col], list) or len(entry[col]) != n):
                raise DataError(f"split file {path}: {split}.{col} must list one value per path ({n})")
        out[split] = {k: entry[k] for k in ("path", *columns) if k in entry}
    return out


def inside(root: Path, path: Path, what: str) -> Path:
    """``path``, refused unless it resolves (after symlinks) inside ``root``."""
    if not path.resolve().is_relative_to(root.resolve()):
        raise DataError(f"{what} {path} resolves to {path.resolve()}, outside {root}; nngraph reads only files "
                        f"inside the source folder: copy the file in or remove the entry")
    return path


def resolve_paths(src: Path, listed: Sequence, split_file: Path, splits: Sequence[str] | None = None) -> list[Path]:
    """Paths of the split file: relative to ``src``, each inside it after symlinks, an
    existing file, and listed once (a file in two splits would leak test data)."""
    paths, seen = [], {}
    for i, p in enumerate(listed):
        if not isinstance(p, str) or not p:
            raise DataError(f"split file {split_file} lists {p!r}, not a file path; list paths relative to {src}")
        path = inside(src, src / p, f"{split_file} lists")
        if not path.is_file():
            raise DataError(f"{path} is listed in {split_file} but missing; restore the file or use the split file "
                            f"that matches {src}")
        key = path.resolve()
        if key in seen:
            where = f" (in {splits[seen[key]]} and {splits[i]})" if splits is not None else ""
            raise DataError(f"{split_file} lists {path} twice{where}; every network must be in one split only")
        seen[key] = i
        paths.append(path)
    return paths


def chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it terminates the pool


def parallel_map(fn: Callable, tasks: Sequence, workers: int) -> Iterator:
    """``fn`` over ``tasks`` in order, in ``workers`` forked processes (one torch thread each)."""
    if workers <= 1 or len(tasks) <= 1:
        yield from map(fn, tasks)
        return
    pool = multiprocessing.get_context("fork").Pool(min(workers, len(tasks)), _init_worker)
    try:
        yield from pool.imap(fn, tasks)
    finally:
        pool.terminate()
        pool.join()


def default_workers(workers: int | None) -> int:
    return workers if workers is not None else min(os.cpu_count() or 1, 8)


def check_out(out: str | os.PathLike) -> Path:
    """``out`` as a Path, refused unless it does not exist or is an empty folder (checked
    before any data is read)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"--out {out} already exists and is not an empty folder; choose a new folder or delete it")
    return out


def remove_dead_stages(out: Path) -> list[Path]:
    """Remove ``.{out}.importing-PID`` folders of processes that are no longer alive."""
    removed = []
    for stage in out.parent.glob(f".{out.name}.importing-*"):
        pid = stage.name.rsplit("-", 1)[-1]
        if stage.is_dir() and pid.isdigit() and (int(pid) == os.getpid() or not pid_alive(int(pid))):
            shutil.rmtree(stage, ignore_errors=True)
            removed.append(stage)
    return removed


@contextlib.contextmanager
def staged_output(out: str | os.PathLike, log=print) -> Iterator[Path]:
    """A fresh staging folder that becomes ``out`` when the block succeeds.

    ``out`` must not exist or be an empty folder; otherwise nothing is written. The block
    holds ``out``'s writer lock; staging folders that killed imports left are removed.
    """
    out = check_out(out)
    with writer_lock(out):
        out = check_out(out)  # another writer may have finished between the first check and the lock
        removed = remove_dead_stages(out)
        if removed:
            log(f"removed {len(removed)} staging folder(s) of interrupted imports: "
                + ", ".join(p.name for p in removed))
        stage = out.parent / f".{out.name}.importing-{os.getpid()}"
        stage.mkdir()
        try:
            yield stage
            if out.is_dir():
                out.rmdir()
            os.replace(stage, out)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
