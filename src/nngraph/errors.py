"""Errors that nngraph raises on bad input.

Every message is one line: what is wrong, then what to do about it. The CLI prints
the message without a traceback and exits with status 2.
"""

import errno
import os


class NNGraphError(Exception):
    """Base class: a problem with the user's input, model or files (not a bug in nngraph)."""


class UnsupportedModelError(NNGraphError):
    """The network uses a layer, op or control flow that nngraph cannot convert."""


class InputShapeError(NNGraphError):
    """An input tensor has a shape that does not fit the network or graph."""


class NonFiniteError(NNGraphError):
    """A parameter or input holds NaN or infinity."""


class DataError(NNGraphError):
    """A data file, corpus or manifest is missing, corrupt or of the wrong format."""


class StorageError(NNGraphError):
    """A file or folder cannot be written: a read-only or full file system, or no permission."""


def storage_error(path: str | os.PathLike | None, exc: OSError) -> StorageError:
    """The one-line ``StorageError`` of a failed write: the path, the reason and what to do."""
    fix = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space",
           errno.EROFS: "choose a folder on a writable file system"}.get(exc.errno, "check the folder's permissions")
    return StorageError(f"cannot write {path or exc.filename}: {exc.strerror or exc}; {fix} and rerun "
                        "(nothing already written is lost)")
