"""Shared fixtures: tiny IDX files and a tiny digits INR corpus built once per session."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from nngraph.data.build import build_inr_corpus

TINY = dict(images="digits", variant="dwsnet", steps=40, limit=30, seed=0, shard_size=10, chunk_size=8,
            workers=1, progress=False, log=lambda *a: None)


def write_idx(path, array: np.ndarray, magic_dtype: int = 0x08, compress: bool | None = None) -> None:
    """Write ``array`` as an IDX file (gzip if the name ends in .gz)."""
    header = bytes([0, 0, magic_dtype, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + np.ascontiguousarray(array).astype(array.dtype.newbyteorder(">")).tobytes()
    if compress if compress is not None else str(path).endswith(".gz"):
        raw = gzip.compress(raw)
    path.write_bytes(raw)


def make_idx_folder(folder, n_train=24, n_test=10, size=(5, 4), gz=True, seed=0):
    """A fake MNIST-style folder: train/t10k images and labels; returns the arrays."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    out = {}
    for stem, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, *size), dtype=np.uint8)
        y = (np.arange(n) % 3).astype(np.uint8)
        write_idx(folder / f"{stem}-images-idx3-ubyte{ext}", x)
        write_idx(folder / f"{stem}-labels-idx1-ubyte{ext}", y)
        out[stem] = (x, y)
    return out


@pytest.fixture(name="tiny")
def _tiny_options():
    """Options of the tiny corpus, for rebuilding it."""
    return dict(TINY)


@pytest.fixture(name="write_idx")
def _write_idx_fixture():
    return write_idx


@pytest.fixture(name="make_idx_folder")
def _make_idx_folder_fixture():
    return make_idx_folder


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """30 digits INRs (dwsnet, 40 steps) in 3 shards of 10; built once."""
    root = tmp_path_factory.mktemp("corpus") / "inrs"
    build_inr_corpus(root, **TINY)
    return root
