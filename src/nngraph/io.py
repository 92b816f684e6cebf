"""Atomic file writes: a reader sees the old file or the whole new one, never a part.

Every write goes to a temporary file in the target's folder (same file system), is
flushed to disk, and is moved into place with ``os.replace``; on any error the temporary
file is removed and the target is untouched. Files get the usual permissions
(0666 minus the umask), not ``mkstemp``'s 0600. A file-system error (read-only, full,
no permission) raises ``StorageError`` in one line naming the path.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

from nngraph.errors import NNGraphError, storage_error

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """A binary file to write; it replaces ``path`` when the block ends without error."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise storage_error(path, exc) from exc
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise storage_error(path, exc) from exc
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path) as f:
        f.write(data)


def json_text(obj: Any, indent: int = 1, allow_nan: bool = False) -> str:
    """``obj`` as the JSON text nngraph writes (and a final newline)."""
    return json.dumps(obj, indent=indent, allow_nan=allow_nan) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 1, allow_nan: bool = False) -> None:
    """Write ``obj`` as JSON (and a final newline) to ``path`` atomically."""
    atomic_write_bytes(path, json_text(obj, indent, allow_nan).encode())


def atomic_write_json_lines(path: str | os.PathLike, records: list[Any]) -> None:
    """Write ``records`` as JSON lines (one per record, NaN allowed) to ``path`` atomically:
    a log rewritten whole, so no line is ever lost or half-written."""
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in records).encode())


def read_bounded(path: str | os.PathLike, limit: int = 64 * 1024 * 1024) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; anything else (a device, a
    FIFO, a folder, a larger file) is refused in one line before it is read."""
    path = Path(path)
    if not path.is_file():
        raise NNGraphError(f"{path} is not a regular file; pass the files nngraph wrote")
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise NNGraphError(f"{path} is larger than {limit:,} bytes, more than nngraph writes there; pass the "
                           "files nngraph wrote")
    return data


# folder -> descriptor of its lock file, for the folders this process holds
_LOCKS: dict[str, int] = {}
LOCK_FILE = ".nngraph.lock"


def lock_folder(folder: str | os.PathLike, what: str) -> None:
    """Hold an exclusive lock on ``folder`` (``flock`` on a file in it) until ``unlock_folder``
    or the end of the process, however it ends (a killed process holds nothing). A folder
    another process holds is refused in one line; taking it again in this process is a no-op."""
    key = str(Path(folder).resolve())
    if key in _LOCKS:
        return
    try:
        fd = os.open(Path(folder) / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666 & ~_UMASK)
    except OSError as exc:
        raise storage_error(Path(folder) / LOCK_FILE, exc) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise NNGraphError(f"{folder} is in use by another nngraph process ({what}); wait for it to end, or "
                           "choose another --out") from None
    _LOCKS[key] = fd


def unlock_folder(folder: str | os.PathLike) -> None:
    """Release this process's lock on ``folder`` (if it holds one)."""
    fd = _LOCKS.pop(str(Path(folder).resolve()), None)
    if fd is not None:
        os.close(fd)
