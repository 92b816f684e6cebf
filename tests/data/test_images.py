import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nngraph.data import images as img
from nngraph.errors import DataError


def test_read_idx_roundtrip_plain_and_gz(tmp_path, write_idx):
    x = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a-images-idx3-ubyte", "a-images-idx3-ubyte.gz"):
        write_idx(tmp_path / name, x)
        assert np.array_equal(img.read_idx(tmp_path / name, expect_ndim=3), x)


def test_wrong_magic_is_rejected_with_file_name(tmp_path):
    path = tmp_path / "bad-images-idx3-ubyte"
    path.write_bytes(b"\x12\x34\x08\x03" + b"\x00" * 20)
    with pytest.raises(DataError, match="bad-images-idx3-ubyte.*not an IDX file") as e:
        img.read_idx(path, expect_ndim=3)
    assert "\n" not in str(e.value)


def test_swapped_dimensions_and_truncation_rejected(tmp_path, write_idx):
    write_idx(tmp_path / "x-images-idx3-ubyte", np.zeros(5, dtype=np.uint8))
    with pytest.raises(DataError, match="1 dimensions but an idx3"):
        img.read_idx(tmp_path / "x-images-idx3-ubyte", expect_ndim=3)
    path = tmp_path / "t-images-idx3-ubyte"
    write_idx(path, np.zeros((4, 3, 3), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match="truncated or corrupt"):
        img.read_idx(path, expect_ndim=3)
    gz = tmp_path / "g-images-idx3-ubyte.gz"
    gz.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot read IDX file"):
        img.read_idx(gz)


def test_idx_folder_splits_and_values(tmp_path, make_idx_folder):
    arrays = make_idx_folder(tmp_path / "mn", n_train=24, n_test=10)
    data = img.load_idx_folder(tmp_path / "mn")
    assert data.images.shape == (34, 5, 4) and data.images.dtype == torch.float32
    assert data.labels.dtype == torch.int64
    assert torch.allclose(data.images[:24] * 255, torch.from_numpy(arrays["train"][0]).float())
    assert data.counts() == {"train": 22, "val": 2, "test": 10}  # val = 24/12, stratified
    assert (data.split[24:] == "test").all()
    again = img.load_idx_folder(tmp_path / "mn")
    assert (again.split == data.split).all()  # fixed split


def test_label_count_mismatch(tmp_path, make_idx_folder, write_idx):
    make_idx_folder(tmp_path / "mn")
    write_idx(tmp_path / "mn" / "t10k-labels-idx1-ubyte.gz", np.zeros(3, dtype=np.uint8))
    with pytest.raises(DataError, match="10 images but .* 3 labels"):
        img.load_idx_folder(tmp_path / "mn")


def test_missing_folders_are_explained(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="does not exist"):
        img.load_images(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no \\*-idx3-ubyte"):
        img.load_images(str(tmp_path / "empty"))
    monkeypatch.setattr(img, "FASHION_MNIST_DIR", tmp_path / "gone")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist.*--images PATH"):
        img.load_images("fashion-mnist")


def test_digits_split_and_limit_are_stratified():
    data = img.load_images("digits")
    assert data.images.shape == (1797, 8, 8)
    assert float(data.images.min()) == 0.0 and float(data.images.max()) == 1.0
    counts = data.counts()
    assert sum(counts.values()) == 1797 and abs(counts["val"] - 0.15 * 1797) < 10
    small = img.load_images("digits", limit=100)
    assert len(small) == 100
    for split in img.SPLITS:
        labels = small.labels[torch.from_numpy(small.split == split)]
        per_class = np.bincount(labels.numpy(), minlength=10)
        assert per_class.max() - per_class.min() <= 2  # balanced classes stay balanced
    assert set(small.index.tolist()) <= set(data.index.tolist())
    # a limited item keeps its split
    full_split = dict(zip(data.index.tolist(), data.split.tolist()))
    assert all(full_split[i] == s for i, s in zip(small.index.tolist(), small.split.tolist()))


SHARED_MNIST = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "mnist"


def test_mnist_named_source_reads_the_standard_files_once_checked(tmp_path, monkeypatch):
    if not (SHARED_MNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("the shared MNIST copy (../shared/data/mnist) is not on this machine")
    monkeypatch.setenv("NNGRAPH_MNIST", str(SHARED_MNIST))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data = img.load_images("mnist")
    assert data.name == "mnist" and data.images.shape == (70000, 28, 28)
    assert data.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert data.counts() == {"train": 55000, "val": 5000, "test": 10000}
    assert data.source["files"][0] == str(SHARED_MNIST.resolve() / "train-images-idx3-ubyte.gz")
    stamp = json.loads((tmp_path / "cache" / "nngraph" / "mnist-sha256.json").read_text())
    assert len(stamp) == 4  # every file checked once, then skipped while path, size and mtime stay
    calls = []
    monkeypatch.setattr(img.hashlib, "sha256", lambda raw: calls.append(1))
    img.verify_mnist(SHARED_MNIST.resolve())
    assert calls == []


def _fake_mnist(folder, write_idx, labels=(5, 0, 4)):
    """Four small IDX files under the standard names, and their digests (a stand-in for MNIST_SHA256)."""
    folder.mkdir(parents=True)
    digests = {}
    for name, array in (("train-images-idx3-ubyte", np.zeros((12, 3, 3), np.uint8)),
                        ("train-labels-idx1-ubyte", np.array((labels * 4)[:12], np.uint8)),
                        ("t10k-images-idx3-ubyte", np.ones((3, 3, 3), np.uint8)),
                        ("t10k-labels-idx1-ubyte", np.array(labels, np.uint8))):
        write_idx(folder / f"{name}.gz", array)
        digests[name] = hashlib.sha256(gzip.decompress((folder / f"{name}.gz").read_bytes())).hexdigest()
    return digests


def test_mnist_checks_digests_and_says_where_to_put_the_files(tmp_path, monkeypatch, write_idx):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("NNGRAPH_MNIST", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"MNIST not found: .*nowhere has no train-images-idx3-ubyte\[.gz\]; put "
                                        r"the four standard MNIST IDX files .*or set NNGRAPH_MNIST") as e:
        img.load_images("mnist")
    assert "\n" not in str(e.value)
    monkeypatch.delenv("NNGRAPH_MNIST")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert img.mnist_folder() == (tmp_path / "data" / "nngraph" / "mnist").resolve()  # the documented default
    digests = _fake_mnist(tmp_path / "data" / "nngraph" / "mnist", write_idx)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz has SHA-256 .*not the standard ba891046e650"):
        img.load_images("mnist")
    monkeypatch.setattr(img, "MNIST_SHA256", digests)
    data = img.load_images("mnist")
    assert data.name == "mnist" and len(data) == 15 and data.labels[-3:].tolist() == [5, 0, 4]
    # a file replaced after its check is checked again
    write_idx(tmp_path / "data" / "nngraph" / "mnist" / "t10k-labels-idx1-ubyte.gz", np.array((1, 1, 1), np.uint8))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz has SHA-256"):
        img.load_images("mnist")
