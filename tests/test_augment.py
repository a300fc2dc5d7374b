"""DeepPatch's augmentors: Gaussian blur (dynamic / static) and spatial transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from provrepair.data.augment import (
    BLUR_SIGMAS,
    SPATIAL_LEVELS,
    SPATIAL_RANGES,
    apply_spatial,
    blur,
    blur_dynamic,
    blur_kernel_size,
    blur_static,
    gaussian_kernel1d,
    spatial,
    spatial_params,
    spatial_static,
)
from provrepair.errors import InputError


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(0)
    x = np.zeros((6, 1, 28, 28), np.float32)
    x[:, :, 8:20, 12:16] = 1.0  # a bar, like a "1"
    x[:, :, 8:11, 8:20] = 0.8
    return np.clip(x + 0.05 * rng.random(x.shape, dtype=np.float32), 0, 1)


def test_kernel_size_formula():
    assert BLUR_SIGMAS == (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
    assert [blur_kernel_size(s) for s in BLUR_SIGMAS] == [3, 5, 7, 9, 11, 13]
    for s in BLUR_SIGMAS:
        taps = gaussian_kernel1d(s)
        assert taps.size == blur_kernel_size(s)
        assert abs(taps.sum() - 1) < 1e-6 and np.allclose(taps, taps[::-1]) and taps.argmax() == taps.size // 2
    with pytest.raises(InputError):
        blur_kernel_size(0)


def test_blur_properties(images):
    const = np.full((2, 3, 30, 30), 0.4, np.float32)
    np.testing.assert_allclose(blur(const, 2.0), const, atol=1e-6)
    prev = images.var()
    for s in BLUR_SIGMAS:  # stronger blur, smoother image
        out = blur(images, s)
        assert out.shape == images.shape and out.dtype == np.float32
        assert out.var() < prev
        prev = out.var()
    assert blur(images[:, 0], 1.0).shape == images[:, 0].shape
    # torch path: same numbers, stays a tensor
    t = blur(torch.from_numpy(images), 1.5)
    assert isinstance(t, torch.Tensor)
    np.testing.assert_allclose(t.numpy(), blur(images, 1.5), atol=1e-5)


def test_blur_dynamic_p0_p1(images):
    out = blur_dynamic(images, np.random.default_rng(1), p=0.0)
    np.testing.assert_array_equal(out, images)
    assert out is not images
    out = blur_dynamic(images, 1, p=1.0)
    candidates = [blur(images, s) for s in BLUR_SIGMAS]
    for i in range(len(images)):
        assert not np.array_equal(out[i], images[i])
        assert any(np.allclose(out[i], c[i], atol=1e-6) for c in candidates)  # blurred at one of the sigmas


def test_blur_dynamic_rate_and_determinism():
    x = np.random.default_rng(2).random((400, 1, 28, 28), dtype=np.float32)
    out = blur_dynamic(x, 5)
    blurred = np.array([not np.array_equal(a, b) for a, b in zip(out, x)])
    assert 0.4 < blurred.mean() < 0.6
    np.testing.assert_array_equal(out, blur_dynamic(x, 5))
    t = blur_dynamic(torch.from_numpy(x), 5)
    np.testing.assert_allclose(t.numpy(), out, atol=1e-5)
    with pytest.raises(InputError):
        blur_dynamic(x, 0, p=1.5)


def test_blur_static(images):
    sets = blur_static(images)
    assert list(sets) == list(BLUR_SIGMAS)
    for s, arr in sets.items():
        np.testing.assert_array_equal(arr, blur(images, s))


def test_spatial_shapes_ranges_determinism(images):
    out, params = spatial(images, 3, return_params=True)
    assert out.shape == images.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1 + 1e-6
    assert np.all(np.abs(params["rotate"]) <= SPATIAL_RANGES.rotate)
    assert np.all(np.abs(params["tx"]) <= SPATIAL_RANGES.translate)
    assert np.all(np.abs(params["ty"]) <= SPATIAL_RANGES.translate)
    assert np.all(np.abs(params["shear"]) <= SPATIAL_RANGES.shear)
    assert np.all(np.abs(params["zoom"] - 1) <= SPATIAL_RANGES.zoom)
    np.testing.assert_array_equal(out, spatial(images, 3))
    assert not np.array_equal(out, spatial(images, 4))
    small = spatial_params(1000, 0, tau=0.5)
    assert np.abs(small["rotate"]).max() <= 15.0 and np.abs(small["rotate"]).max() > 14.0
    with pytest.raises(InputError):
        spatial(images, 0, tau=0)


def test_spatial_levels(images):
    assert SPATIAL_LEVELS == ((0.0, 0.2), (0.2, 0.4), (0.4, 0.6), (0.6, 0.8), (0.8, 1.0))
    for level, (lo, hi) in enumerate(SPATIAL_LEVELS, start=1):
        out, p = spatial_static(images, level, seed=9, return_params=True)
        for key, r in (("rotate", SPATIAL_RANGES.rotate), ("tx", SPATIAL_RANGES.translate),
                       ("shear", SPATIAL_RANGES.shear)):
            mag = np.abs(p[key]) / r
            assert np.all(mag > lo - 1e-9) and np.all(mag <= hi + 1e-9), (level, key)
        mag = np.abs(p["zoom"] - 1) / SPATIAL_RANGES.zoom
        assert np.all(mag > lo - 1e-9) and np.all(mag <= hi + 1e-9)
        np.testing.assert_array_equal(out, spatial_static(images, level, seed=9))
    many = spatial_params(2000, 1, level=1)
    assert (many["rotate"] < 0).mean() == pytest.approx(0.5, abs=0.05)  # both signs
    for bad in (0, 6, 2.0):
        with pytest.raises(InputError, match="level"):
            spatial_static(images, bad)


def test_spatial_geometry(images):
    n = len(images)
    ident = {"rotate": np.zeros(n), "tx": np.zeros(n), "ty": np.zeros(n), "shear": np.zeros(n), "zoom": np.ones(n)}
    np.testing.assert_allclose(apply_spatial(images, ident), images, atol=1e-6)
    # translation by one pixel to the right, zero fill on the left
    shift = dict(ident, tx=np.full(n, 1 / 28))
    expected = np.zeros_like(images)
    expected[..., 1:] = images[..., :-1]
    np.testing.assert_allclose(apply_spatial(images, shift), expected, atol=1e-5)
    # +90 degrees turns the image counter-clockwise, as np.rot90 does
    quarter = dict(ident, rotate=np.full(n, 90.0))
    np.testing.assert_allclose(apply_spatial(images, quarter), np.rot90(images, 1, axes=(2, 3)), atol=1e-5)


def test_spatial_torch_matches_numpy(images):
    p = spatial_params(len(images), 7, tau=1.0)
    a = apply_spatial(images, p)
    b = apply_spatial(torch.from_numpy(images), p)
    assert isinstance(b, torch.Tensor)
    np.testing.assert_allclose(b.numpy(), a, atol=1e-5)
    rgb = np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(spatial(torch.from_numpy(rgb), 1).numpy(), spatial(rgb, 1), atol=1e-5)


def test_bad_inputs():
    with pytest.raises(InputError, match="255"):
        blur(np.zeros((2, 1, 28, 28), np.uint8), 1.0)
    with pytest.raises(InputError):
        spatial(np.zeros((28, 28), np.float32), 0)
    with pytest.raises(InputError, match="rng"):
        blur_dynamic(np.zeros((2, 1, 28, 28), np.float32), "seed")
