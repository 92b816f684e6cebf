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
