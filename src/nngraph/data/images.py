"""Image sources for INR corpora and CNN zoos: IDX files, MNIST, Fashion-MNIST, scikit-learn digits.

Every source is returned as an :class:`ImageSet`: images float32 in [0, 1] [n, H, W],
labels int64 [n], the index of every image in its source, and a split name per image
(``train``, ``val`` or ``test``). Splits are fixed and seeded, so a corpus built twice
holds the same images in the same splits:

- IDX folder with a training and a test file pair (MNIST, Fashion-MNIST): the test files
  are the test split; ``val`` is a class-stratified 1/12 of the training files (5,000 of
  Fashion-MNIST's 60,000, i.e. 55k train / 5k val), drawn with ``SPLIT_SEED``.
- a single IDX pair, or scikit-learn's ``load_digits`` (1,797 8x8 images, values 0..16
  divided by 16): a class-stratified 70 / 15 / 15 train / val / test split.

MNIST (``--images mnist``) is the four standard IDX files (``MNIST_SHA256``), which nngraph
never downloads: put them (gzip-compressed or not) in ``$NNGRAPH_MNIST`` or, without it, in
``~/.local/share/nngraph/mnist`` (``$XDG_DATA_HOME/nngraph/mnist``). Their SHA-256 digests
(of the uncompressed bytes) are checked on first use; a stamp in ``~/.cache/nngraph``
(``$XDG_CACHE_HOME``) keyed by path, size and modification time skips the check afterwards.

Source index: position in the training file, or ``n_train + position`` in the test file.
``limit`` keeps a class-stratified subset: ``limit`` images in total, shared among the
splits in proportion to their sizes.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nngraph.errors import DataError, StorageError
from nngraph.io import atomic_write_json

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
MNIST_ENV = "NNGRAPH_MNIST"
# SHA-256 of the uncompressed standard MNIST files (LeCun, Cortes & Burges); nothing downloads them
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
SPLITS = ("train", "val", "test")
SPLIT_SEED = 20240517  # fixed: the split is part of the corpus definition
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


@dataclass
class ImageSet:
    """images [n, H, W] float32 in [0, 1]; labels [n] int64; index [n] int64; split [n] str."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor
    split: np.ndarray
    source: dict

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, split: str) -> "ImageSet":
        keep = torch.from_numpy(np.flatnonzero(self.split == split))
        return ImageSet(self.name, self.images[keep], self.labels[keep], self.index[keep],
                        self.split[keep.numpy()], self.source)

    def counts(self) -> dict[str, int]:
        return {s: int((self.split == s).sum()) for s in SPLITS}


# --------------------------------------------------------------------------- IDX


def read_idx(path: str | os.PathLike, expect_ndim: int | None = None) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed), validating magic number and size.

    Layout: 2 zero bytes, 1 dtype byte (0x08 = uint8, ...), 1 byte ndim, ndim big-endian
    uint32 sizes, then the data. ``expect_ndim`` = 3 for ``idx3`` images, 1 for labels.
    """
    path = Path(path)
    fix = "re-download or reinstall it (e.g. apt-get install --reinstall dataset-fashion-mnist)"
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise DataError(f"IDX file {path} does not exist; check the path passed to --images") from None
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot read IDX file {path} ({exc}); {fix}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        magic = raw[:4].hex() if len(raw) >= 4 else "too short"
        raise DataError(f"{path} is not an IDX file (magic number {magic}, expected 0000080{expect_ndim or 'N'}); "
                        f"pass a folder of MNIST-format *-idx3-ubyte / *-idx1-ubyte files")
    ndim = raw[3]
    if expect_ndim is not None and ndim != expect_ndim:
        raise DataError(f"{path} has {ndim} dimensions but an idx{expect_ndim} file was expected "
                        f"(magic number {raw[:4].hex()}); check that images and labels files are not swapped")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated inside its header; {fix}")
    dims = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"{path} holds {len(raw)} bytes but its header {dims} needs {expected}; "
                        f"the file is truncated or corrupt, {fix}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _to_unit(images: np.ndarray, path: Path) -> torch.Tensor:
    if images.dtype == np.uint8:
        return torch.from_numpy(images.astype(np.float32) / 255.0)
    x = images.astype(np.float32)
    if x.size and (x.min() < 0 or x.max() > 1):
        raise DataError(f"{path} holds values outside [0, 1] and is not uint8; convert it to uint8 pixels")
    return torch.from_numpy(x)


def read_idx_pair(images_path: Path, labels_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """images [n, H, W] float32 in [0, 1], labels [n] int64 from one IDX images/labels pair."""
    images = read_idx(images_path, expect_ndim=3)
    labels = read_idx(labels_path, expect_ndim=1)
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
                        f"{labels.shape[0]} labels; use matching files")
    return _to_unit(images, images_path), torch.from_numpy(labels.astype(np.int64))


_IMAGE_FILE = re.compile(r"^(?P<stem>.*?)images?([-.])idx3-ubyte(\.gz)?$")


def _find_pairs(folder: Path) -> dict[str, tuple[Path, Path]]:
    """{'train'|'test'|'all': (images, labels)} from MNIST-style names in ``folder``."""
    pairs: dict[str, tuple[Path, Path]] = {}
    for img in sorted(folder.iterdir()):
        m = _IMAGE_FILE.match(img.name)
        if not m:
            continue
        candidates = [folder / img.name.replace("images", "labels").replace("idx3", "idx1"),
                      folder / img.name.replace("image", "label").replace("idx3", "idx1")]
        base = [c for c in candidates if c.exists()]
        if not base:
            alt = [c.with_suffix("") if c.suffix == ".gz" else c.with_name(c.name + ".gz") for c in candidates]
            base = [c for c in alt if c.exists()]
        if not base:
            raise DataError(f"{img} has no matching labels file (expected {candidates[0].name}); "
                            f"put the *-idx1-ubyte labels next to it")
        stem = m.group("stem").lower()
        kind = "test" if ("t10k" in stem or "test" in stem) else ("train" if "train" in stem else "all")
        if kind in pairs:
            continue  # .gz and plain copies of the same file: first one wins
        pairs[kind] = (img, base[0])
    return pairs


def load_idx_folder(folder: str | os.PathLike, name: str | None = None) -> ImageSet:
    """All images of a folder of MNIST-format IDX files, with the fixed split (module doc)."""
    folder = Path(folder)
    if folder.is_file():
        raise DataError(f"--images {folder} is a file, not a folder; pass the folder that holds the "
                        f"*-idx3-ubyte / *-idx1-ubyte files, or digits / mnist / fashion-mnist")
    if not folder.is_dir():
        raise DataError(f"images folder {folder} does not exist; pass --images digits, mnist, fashion-mnist "
                        f"or a folder of *-idx3-ubyte / *-idx1-ubyte files")
    pairs = _find_pairs(folder)
    if not pairs:
        raise DataError(f"{folder} holds no *-idx3-ubyte[.gz] image files; pass a folder of "
                        f"MNIST-format IDX files (images and labels)")
    name = name or folder.name
    if "train" in pairs and "test" in pairs:
        xtr, ytr = read_idx_pair(*pairs["train"])
        xte, yte = read_idx_pair(*pairs["test"])
        if xtr.shape[1:] != xte.shape[1:]:
            raise DataError(f"{pairs['train'][0]} and {pairs['test'][0]} have different image sizes; "
                            f"use files of one dataset")
        n_val = int(round(len(ytr) / 12))
        val = _stratified_pick(ytr.numpy(), n_val, np.random.default_rng(SPLIT_SEED))
        split = np.array(["train"] * len(ytr) + ["test"] * len(yte), dtype=object)
        split[val] = "val"
        images, labels = torch.cat([xtr, xte]), torch.cat([ytr, yte])
        files = [str(p) for p in (*pairs["train"], *pairs["test"])]
        rule = f"test = test files; val = stratified {n_val} of the training files (seed {SPLIT_SEED})"
    else:
        key = next(iter(pairs))
        images, labels = read_idx_pair(*pairs[key])
        split = _stratified_three_way(labels.numpy())
        files = [str(p) for p in pairs[key]]
        rule = f"stratified 70/15/15 train/val/test (seed {SPLIT_SEED})"
    return ImageSet(name, images, labels, torch.arange(len(labels)), split,
                    {"name": name, "files": files, "split_rule": rule, "split_seed": SPLIT_SEED})


def load_fashion_mnist(folder: str | os.PathLike | None = None) -> ImageSet:
    """Fashion-MNIST (70k 28x28) from Debian's ``dataset-fashion-mnist`` package."""
    folder = Path(folder) if folder is not None else FASHION_MNIST_DIR
    if not folder.is_dir() or not any(folder.glob("*idx3-ubyte*")):
        raise DataError(f"Fashion-MNIST not found in {folder}; run `apt-get install dataset-fashion-mnist` "
                        f"or pass --images PATH to a folder of IDX files")
    return load_idx_folder(folder, name="fashion-mnist")


def mnist_folder() -> Path:
    """Where nngraph looks for the MNIST files: ``$NNGRAPH_MNIST``, else ``$XDG_DATA_HOME/nngraph/mnist``
    (``~/.local/share/nngraph/mnist``)."""
    if os.environ.get(MNIST_ENV):
        return Path(os.environ[MNIST_ENV]).expanduser().resolve()
    data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return (data_home / "nngraph" / "mnist").resolve()


def _verified_stamp() -> Path:
    """The stamp of MNIST files already checked: {resolved path: [size, mtime_ns, sha256]}."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "nngraph" / "mnist-sha256.json"


def verify_mnist(folder: Path) -> list[Path]:
    """The four MNIST files in ``folder`` (``NAME`` or ``NAME.gz``), each checked against
    ``MNIST_SHA256`` unless the stamp says this very file (path, size, mtime) passed before."""
    files = []
    for name in MNIST_SHA256:
        found = [folder / n for n in (name, name + ".gz") if (folder / n).is_file()]
        if not found:
            raise DataError(f"MNIST not found: {folder} has no {name}[.gz]; put the four standard MNIST IDX files "
                            f"({', '.join(MNIST_SHA256)}, .gz or not) there, or set {MNIST_ENV} to their folder")
        files.append(found[0])
    stamp_path = _verified_stamp()
    try:
        stamp = json.loads(stamp_path.read_text())
        stamp = stamp if isinstance(stamp, dict) else {}
    except (OSError, ValueError):
        stamp = {}
    changed = False
    for path, expected in zip(files, MNIST_SHA256.values()):
        info = path.stat()
        key, seen = str(path.resolve()), [info.st_size, info.st_mtime_ns, expected]
        if stamp.get(key) == seen:
            continue
        raw = path.read_bytes()
        try:
            raw = gzip.decompress(raw) if path.suffix == ".gz" else raw
        except (OSError, EOFError) as exc:
            raise DataError(f"cannot read MNIST file {path} ({exc}); replace it with the standard file") from None
        digest = hashlib.sha256(raw).hexdigest()
        if digest != expected:
            raise DataError(f"MNIST file {path} has SHA-256 {digest[:12]}..., not the standard {expected[:12]}...; "
                            f"replace it with the standard {path.name.removesuffix('.gz')} file")
        stamp[key], changed = seen, True
    if changed:
        try:
            atomic_write_json(stamp_path, stamp, indent=1)
        except StorageError:
            pass  # an unwritable cache only means checking again next time
    return files


def load_mnist(folder: str | os.PathLike | None = None) -> ImageSet:
    """MNIST (60k + 10k 28x28 digits) from the standard IDX files in ``folder`` or ``mnist_folder()``,
    checked by SHA-256 (``verify_mnist``); split as every IDX folder (55k / 5k / 10k)."""
    folder = Path(folder).expanduser().resolve() if folder is not None else mnist_folder()
    verify_mnist(folder)
    return load_idx_folder(folder, name="mnist")


def load_digits_set() -> ImageSet:
    """scikit-learn's ``load_digits``: 1,797 8x8 images (values / 16), split 70/15/15."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.from_numpy((d.images / 16.0).astype(np.float32))  # [1797, 8, 8]
    labels = torch.from_numpy(d.target.astype(np.int64))
    split = _stratified_three_way(d.target)
    return ImageSet("digits", images, labels, torch.arange(len(labels)), split,
                    {"name": "digits", "files": ["sklearn.datasets.load_digits"],
                     "split_rule": f"stratified 70/15/15 train/val/test (seed {SPLIT_SEED})",
                     "split_seed": SPLIT_SEED})


def load_images(spec: str, limit: int | None = None) -> ImageSet:
    """``digits``, ``mnist``, ``fashion-mnist`` or a folder of IDX files; optionally a stratified subset."""
    if spec == "digits":
        data = load_digits_set()
    elif spec == "mnist":
        data = load_mnist()
    elif spec == "fashion-mnist":
        data = load_fashion_mnist()
    else:
        data = load_idx_folder(spec)
    if limit is not None:
        data = stratified_limit(data, limit)
    return data


# --------------------------------------------------------------------------- splits


def _largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
    """Integer counts summing to ``total``, proportional to ``weights``."""
    weights = np.asarray(weights, dtype=np.float64)
    exact = weights / weights.sum() * total
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def _stratified_pick(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n`` items with class proportions of ``labels`` (sorted)."""
    classes, sizes = np.unique(labels, return_counts=True)
    counts = np.minimum(_largest_remainder(sizes, n), sizes)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, counts)]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def _stratified_three_way(labels: np.ndarray, fractions=(0.70, 0.15, 0.15)) -> np.ndarray:
    """A split name per item: per class, shuffled with SPLIT_SEED and cut 70/15/15."""
    rng = np.random.default_rng(SPLIT_SEED)
    split = np.empty(len(labels), dtype=object)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        counts = _largest_remainder(np.array(fractions), len(idx))
        bounds = np.cumsum(counts)[:-1]
        for name, part in zip(SPLITS, np.split(idx, bounds)):
            split[part] = name
    return split


def stratified_limit(data: ImageSet, limit: int) -> ImageSet:
    """Keep ``limit`` images: shared among splits by size, class-stratified in each split."""
    if limit < 1:
        raise DataError(f"--limit must be >= 1, got {limit}")
    if limit > len(data):
        raise DataError(f"--limit {limit} is larger than {data.name}, which holds {len(data)} images; "
                        f"pass --limit {len(data)} or less (or leave it out for all)")
    if limit == len(data):
        return data
    sizes = np.array([(data.split == s).sum() for s in SPLITS])
    per_split = _largest_remainder(sizes, limit)
    rng = np.random.default_rng(SPLIT_SEED + 1)
    keep = []
    labels = data.labels.numpy()
    for name, k in zip(SPLITS, per_split):
        members = np.flatnonzero(data.split == name)
        keep.append(members[_stratified_pick(labels[members], int(k), rng)])
    keep_t = torch.from_numpy(np.sort(np.concatenate(keep)))
    source = dict(data.source, limit=limit)
    return ImageSet(data.name, data.images[keep_t], data.labels[keep_t], data.index[keep_t],
                    data.split[keep_t.numpy()], source)
