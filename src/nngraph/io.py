"""Atomic file writes: a reader sees the old file or the whole new one, never a part.

Every write goes to a temporary file in the target's folder (same file system), is
flushed to disk, and is moved into place with ``os.replace``; on any error the temporary
file is removed and the target is untouched. Files get the usual permissions
(0666 minus the umask), not ``mkstemp``'s 0600.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """A binary file to write; it replaces ``path`` when the block ends without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 1, allow_nan: bool = False) -> None:
    """Write ``obj`` as JSON (and a final newline) to ``path`` atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=indent, allow_nan=allow_nan) + "\n").encode())
