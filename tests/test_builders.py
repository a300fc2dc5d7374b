"""Region builders: rotation hulls, segments and pixel boxes (shapes, exact vertices, clipping,
degenerate coordinates, and SpecErrors that say what is wrong)."""

import re

import numpy as np
import pytest

from provrepair.errors import SpecError
from provrepair.specs import Box, RegionSpec, VPolytope, pixel_box, rotation_hull, rotations, segment
from provrepair.specs.builders import DEFAULT_ANGLES


def _digit(h=12, w=12, channels=None, seed=0):
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w))
    img[3:9, 4:8] = rng.uniform(0.5, 1.0, (6, 4))
    return img if channels is None else np.stack([img * (c + 1) / channels for c in range(channels)])


# ---------------------------------------------------------------------- rotations
def test_rotation_hull_default_is_seven_rotations_with_the_image_at_zero():
    img = _digit()
    hull = rotation_hull(img)
    assert isinstance(hull, VPolytope)
    assert hull.vertices.shape == (7, 12, 12)
    np.testing.assert_allclose(DEFAULT_ANGLES, [-30, -20, -10, 0, 10, 20, 30])
    np.testing.assert_array_equal(hull.vertices[3], img)  # 0 degrees: the image, bit for bit
    assert not np.array_equal(hull.vertices[0], img)


@pytest.mark.parametrize("layout", ["chw", "hw", "flat"])
def test_rotations_keep_the_layout_given(layout):
    img = _digit(channels=3)
    if layout == "chw":
        r = rotations(img, [0, 15])
        assert r.shape == (2, 3, 12, 12)
        chw = r
    elif layout == "hw":
        r = rotations(img[0], [0, 15])
        assert r.shape == (2, 12, 12)
        chw = r[:, None]
    else:
        r = rotations(img.reshape(-1), [0, 15], shape=(3, 12, 12))
        assert r.shape == (2, 3 * 12 * 12)
        chw = r.reshape(2, 3, 12, 12)
    np.testing.assert_array_equal(chw[0], img[: chw.shape[1]])
    # every channel is rotated the same way
    if chw.shape[1] == 3:
        single = rotations(img[1], [15])[0]
        np.testing.assert_allclose(chw[1, 1], single, atol=1e-12)


def test_rotation_is_about_the_centre_and_counter_clockwise():
    x = np.arange(36.0).reshape(6, 6) / 36
    np.testing.assert_allclose(rotations(x, [90])[0], np.rot90(x), atol=1e-12)
    np.testing.assert_allclose(rotations(x, [360, -360])[0], x)


def test_rotation_clip_and_range():
    img = _digit() * 3.0  # values up to 3
    assert rotations(img, [10, 20]).max() <= 1.0
    assert rotations(img, [10], clip=(0.0, 0.5)).max() <= 0.5
    raw = rotations(img, [10], clip=None)
    assert raw.max() > 1.0 and raw.min() >= 0.0  # bilinear: no overshoot, background 0


def test_rotation_hull_builds_a_region_spec():
    imgs = [_digit(seed=s)[None] for s in range(3)]
    spec = RegionSpec.polytopes([rotation_hull(x).vertices for x in imgs], labels=[1, 2, 3], n_outputs=10)
    assert spec.input_shape == (1, 12, 12) and len(spec) == 3
    flat = rotation_hull(imgs[0].reshape(-1), shape=(1, 12, 12))
    assert flat.input_shape == (144,)
    np.testing.assert_allclose(flat.vertices.reshape(7, 1, 12, 12), rotation_hull(imgs[0]).vertices)


@pytest.mark.parametrize("image, kw, match", [
    (np.zeros(144), {}, "shape="),
    (np.zeros((2, 2, 3, 3)), {}, "(C, H, W)"),
    (np.zeros(144), {"shape": (10, 10)}, "needs 100"),
    (np.full((4, 4), np.nan), {}, "NaN"),
    (np.zeros((4, 4)), {"angles": []}, "at least one angle"),
    (np.zeros((4, 4)), {"angles": [10]}, "at least two angles"),
    (np.zeros((4, 4)), {"angles": [np.inf, 0]}, "finite"),
    (np.zeros((4, 4)), {"clip": (1, 0)}, "lo <= hi"),
    ("abc", {}, "numbers"),
])
def test_rotation_hull_rejects_bad_input(image, kw, match):
    with pytest.raises(SpecError, match=re.escape(match)):
        rotation_hull(image, **kw)


# ---------------------------------------------------------------------- segments
def test_segment_endpoints():
    a, b = _digit(), _digit(seed=1)
    s = segment(a, b)
    assert s.vertices.shape == (2, 12, 12)
    np.testing.assert_array_equal(s.vertices[0], a)
    np.testing.assert_array_equal(s.vertices[1], b)
    assert segment(a, a).n_vertices == 2  # a point, allowed


def test_segment_rejects_bad_input():
    with pytest.raises(SpecError, match="same shape"):
        segment(np.zeros(3), np.zeros(4))
    with pytest.raises(SpecError, match="NaN"):
        segment(np.zeros(3), np.array([0.0, np.nan, 0.0]))
    with pytest.raises(SpecError, match="at least one value"):
        segment(np.zeros(0), np.zeros(0))


# ---------------------------------------------------------------------- pixel boxes
def test_pixel_box_frees_only_the_chosen_pixels():
    img = _digit()
    box = pixel_box(img, [(5, 5), (0, 0), (11, 11)], 0.1)
    assert isinstance(box, Box) and box.input_shape == (12, 12)
    free = box.upper > box.lower
    assert free.sum() == 3 and free[5, 5] and free[0, 0] and free[11, 11]
    fixed = ~free
    np.testing.assert_array_equal(box.lower[fixed], img[fixed])  # degenerate: lower == upper == image
    np.testing.assert_array_equal(box.upper[fixed], img[fixed])
    assert box.corners().shape == (8, 12, 12)
    # clipped to [0, 1]: a black pixel only goes up
    assert box.lower[0, 0] == 0.0 and box.upper[0, 0] == pytest.approx(0.1)
    v = img[5, 5]
    assert box.lower[5, 5] == pytest.approx(max(v - 0.1, 0)) and box.upper[5, 5] == pytest.approx(min(v + 0.1, 1))


def test_pixel_box_flat_indices_channels_and_flat_images():
    img = _digit(channels=2)
    box = pixel_box(img, [5 * 12 + 5, 0], 0.2)
    free = box.upper > box.lower
    assert free.sum() == 4 and free[:, 5, 5].all() and free[:, 0, 0].all()
    flat = pixel_box(img.reshape(-1), [(5, 5), (0, 0)], 0.2, shape=(2, 12, 12))
    assert flat.input_shape == (288,)
    np.testing.assert_array_equal(flat.lower, box.lower.reshape(-1))
    vec = pixel_box(np.full(10, 0.5), [0, 9], 0.25, clip=None)
    np.testing.assert_allclose(vec.lower[[0, 9]], 0.25)
    np.testing.assert_allclose(vec.upper[[0, 9]], 0.75)
    assert (vec.upper > vec.lower).sum() == 2
    zero = pixel_box(img, [3], 0.0)  # radius 0: a point
    assert not (zero.upper > zero.lower).any()


@pytest.mark.parametrize("pixels, radius, kw, match", [
    ([], 0.1, {}, "at least one pixel"),
    ([(12, 0)], 0.1, {}, "outside the 12x12"),
    ([144], 0.1, {}, "out of range"),
    ([-1], 0.1, {}, "out of range"),
    ([3, 3], 0.1, {}, "listed twice"),
    ([(1, 1), (1, 1)], 0.1, {}, "listed twice"),
    ([0.5], 0.1, {}, "integers"),
    ([[1, 2, 3]], 0.1, {}, "(row, col) pairs"),
    ([0], -0.1, {}, ">= 0"),
    ([0], np.nan, {}, ">= 0"),
    ([0], 0.1, {"clip": (0, 0.5)}, "outside clip"),
])
def test_pixel_box_rejects_bad_input(pixels, radius, kw, match):
    with pytest.raises(SpecError, match=re.escape(match)):
        pixel_box(_digit(), pixels, radius, **kw)


def test_pixel_box_row_col_needs_a_shape():
    with pytest.raises(SpecError, match="need an image shape"):
        pixel_box(np.zeros(16), [(1, 1)], 0.1)
