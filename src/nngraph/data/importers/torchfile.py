"""A fast reader of small ``torch.save`` files (state dicts of tensors), for bulk imports.

``torch.load(weights_only=True)`` spends about a millisecond per file in Python; an INR
corpus has 70,000 files. PyTorch's format (since 1.6) is an uncompressed zip archive:
``<name>/data.pkl`` (the pickled object; each tensor refers to a storage by key) and
``<name>/data/<key>`` (the raw little-endian bytes of each storage). This module reads
the zip's central directory with ``struct``, unpickles ``data.pkl`` with a restricted
unpickler (plain containers, numbers and tensors only; nothing else is ever imported)
and returns every tensor as a numpy view of the file's bytes. Anything else (the legacy
format, compressed or zip64 entries, other pickled classes, big-endian files) returns
``None`` and the caller falls back to ``torch.load``.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from pathlib import Path

import numpy as np

_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
           "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
           "ByteStorage": np.uint8, "BoolStorage": np.bool_}


class _Unsupported(Exception):
    """Not a file this reader handles; use torch.load."""


def _rebuild_tensor(storage: np.ndarray, offset: int, size, stride, *_) -> np.ndarray:
    """A read-only view of ``storage`` (the whole storage as a 1-D array) with torch's layout."""
    last = offset + sum((n - 1) * st for n, st in zip(size, stride)) if all(size) else offset - 1
    if offset < 0 or last >= len(storage) or any(st < 0 for st in stride):
        raise _Unsupported("tensor outside its storage")
    return np.lib.stride_tricks.as_strided(storage[offset:], tuple(size), tuple(st * storage.itemsize for st in stride),
                                           writeable=False)


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, records: dict[str, memoryview], prefix: str):
        super().__init__(file)
        self.records, self.prefix = records, prefix

    def find_class(self, module: str, name: str):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in _DTYPES:
            return name
        raise _Unsupported(f"{module}.{name}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and pid[1] in _DTYPES):
            raise _Unsupported("storage reference")
        _, dtype, key, _, numel = pid
        raw = self.records.get(f"{self.prefix}/data/{key}")
        if raw is None or len(raw) < numel * np.dtype(_DTYPES[dtype]).itemsize:
            raise _Unsupported("missing storage")
        return np.frombuffer(raw, _DTYPES[dtype], count=numel)


def _zip_records(data: bytes) -> dict[str, memoryview]:
    """{name: bytes} of an uncompressed zip archive (no zip64)."""
    end = data.rfind(b"PK\x05\x06", max(0, len(data) - 65_557))
    if end < 0 or len(data) < end + 22:
        raise _Unsupported("no end of central directory")
    count, size, offset = struct.unpack_from("<HII", data, end + 10)
    if count == 0xFFFF or offset == 0xFFFFFFFF or offset + size > end:
        raise _Unsupported("zip64")
    view = memoryview(data)
    records, pos = {}, offset
    for _ in range(count):
        if data[pos:pos + 4] != b"PK\x01\x02":
            raise _Unsupported("bad central directory")
        method, = struct.unpack_from("<H", data, pos + 10)
        csize, usize, nlen, elen, clen = struct.unpack_from("<IIHHH", data, pos + 20)
        local, = struct.unpack_from("<I", data, pos + 42)
        name = data[pos + 46:pos + 46 + nlen].decode()
        if method != 0 or csize != usize or csize == 0xFFFFFFFF or data[local:local + 4] != b"PK\x03\x04":
            raise _Unsupported("compressed or zip64 entry")
        lnlen, lelen = struct.unpack_from("<HH", data, local + 26)
        start = local + 30 + lnlen + lelen
        if start + csize > len(data):
            raise _Unsupported("truncated")
        records[name] = view[start:start + csize]
        pos += 46 + nlen + elen + clen
    return records


def read_torch_file(path: Path, size: int | None = None):
    """The object of a small ``torch.save`` file with numpy arrays for tensors, or None.

    ``size``: the byte count the caller checked (``os.stat``); no more is read.
    """
    with open(path, "rb") as f:
        data = f.read(size) if size is not None else f.read()
    if not data.startswith(b"PK\x03\x04"):
        return None
    try:
        records = _zip_records(data)
        pickles = [name for name in records if name.endswith("/data.pkl") and name.count("/") == 1]
        if len(pickles) != 1:
            return None
        prefix = pickles[0].split("/")[0]
        order = records.get(f"{prefix}/byteorder")
        if order is not None and bytes(order) != b"little":
            return None
        return _Unpickler(io.BytesIO(records[pickles[0]]), records, prefix).load()
    except (_Unsupported, pickle.UnpicklingError, struct.error, UnicodeDecodeError, ValueError, EOFError,
            IndexError, TypeError):
        return None
