"""The corruption suite: shapes, ranges, determinism, severity trend, errors, contact sheet."""

from __future__ import annotations

import numpy as np
import pytest

from provrepair.data import corruptions as cmod
from provrepair.data.corruptions import (
    CIFAR10C_PARAMS,
    CORRUPTIONS,
    GROUPS,
    corrupt,
    corrupt_all,
    corruption_group,
)
from provrepair.errors import InputError

# Corruptions whose output depends on the seed (the others are deterministic filters).
RANDOM = {
    "gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "glass_blur", "motion_blur",
    "snow", "frost", "fog", "spatter", "elastic_transform",
}


def _digits() -> np.ndarray:
    """Four 28x28 digit-like strokes (anti-aliased), (4, 1, 28, 28) float32 in [0, 1]."""
    yy, xx = np.mgrid[0:28, 0:28].astype(np.float32)
    ring = np.abs(np.hypot(yy - 14, xx - 14) - 7)  # a "0"
    bar = np.abs(xx - 14) + np.where((yy > 5) & (yy < 23), 0, 99)  # a "1"
    seven = np.minimum(np.abs(yy - 7) + np.where((xx > 7) & (xx < 21), 0, 99),
                       np.abs((xx - 20) + 0.45 * (yy - 7)) + np.where((yy > 6) & (yy < 23), 0, 99))
    cross = np.minimum(np.abs(xx - yy), np.abs(xx + yy - 27)) + np.where(np.abs(xx - 14) < 8, 0, 99)
    dist = np.stack([ring, bar, seven, cross])
    return np.clip(2.0 - dist, 0.0, 1.0)[:, None].astype(np.float32)


def _colour_images() -> np.ndarray:
    """Two 32x32 colour images: a gradient scene with a red disc, and a cat photo."""
    from provrepair.data.contact_sheet import sample_rgb_image

    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    scene = np.stack([0.2 + 0.6 * xx, 0.3 + 0.5 * yy, 0.9 - 0.6 * xx * yy])
    disc = (xx - 0.6) ** 2 + (yy - 0.4) ** 2 < 0.05
    scene[:, disc] = np.array([0.9, 0.1, 0.1])[:, None]
    return np.stack([scene.astype(np.float32), sample_rgb_image(32)])


GRAY = _digits()
RGB = _colour_images()


def test_names_and_groups():
    assert len(CORRUPTIONS) == 19 == len(set(CORRUPTIONS))
    assert set(GROUPS) == {"noise", "blur", "weather", "image_property", "digital_error"}
    members = [c for group in GROUPS.values() for c in group]
    assert sorted(members) == sorted(CORRUPTIONS)  # each corruption in exactly one group
    assert corruption_group("fog") == "weather" and corruption_group("jpeg_compression") == "digital_error"
    assert set(CIFAR10C_PARAMS) == set(CORRUPTIONS)
    assert all(len(v) == 5 for v in CIFAR10C_PARAMS.values())


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_every_severity_shape_dtype_range(name):
    for images in (GRAY, RGB):
        for sev in range(1, 6):
            out = corrupt(images, name, sev, seed=3)
            assert out.shape == images.shape and out.dtype == np.float32
            assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
            change = np.abs(out - images).mean()
            if name == "saturate" and images is GRAY and sev <= 3:
                # a grey pixel has no saturation to scale: documented no-op on grayscale
                np.testing.assert_array_equal(out, images)
            else:
                assert change > 1e-4, (name, sev, images.shape)


def test_grayscale_three_dim_input_round_trips():
    for name in CORRUPTIONS:
        flat = corrupt(GRAY[:, 0], name, 2, seed=5)
        assert flat.shape == GRAY[:, 0].shape
        np.testing.assert_array_equal(flat, corrupt(GRAY, name, 2, seed=5)[:, 0])


def test_input_not_modified_and_torch_accepted():
    import torch

    before = RGB.copy()
    corrupt(RGB, "contrast", 3)
    np.testing.assert_array_equal(RGB, before)
    out = corrupt(torch.from_numpy(GRAY), "fog", 2, seed=1)
    np.testing.assert_array_equal(out, corrupt(GRAY, "fog", 2, seed=1))


def test_determinism_under_seed():
    for name in CORRUPTIONS:
        a = corrupt(RGB, name, 3, seed=11)
        b = corrupt(RGB, name, 3, seed=11)
        np.testing.assert_array_equal(a, b)
        c = corrupt(RGB, name, 3, seed=12)
        if name in RANDOM:
            assert not np.array_equal(a, c), name
        else:
            np.testing.assert_array_equal(a, c)


def test_severity_increases_change_on_average():
    change = np.array([[np.mean([np.abs(corrupt(imgs, name, s, seed=0) - imgs).mean() for imgs in (GRAY, RGB)])
                        for s in range(1, 6)] for name in CORRUPTIONS])
    mean = change.mean(axis=0)
    assert np.all(np.diff(mean) > 0), mean
    # Individual exceptions are allowed (the CIFAR-10-C table is not monotone everywhere: the elastic
    # transform's strongest affine jitter is at severity 1, saturate goes from desaturating to
    # oversaturating); most corruptions still change the image more at 5 than at 1.
    grows = change[:, 4] > change[:, 0]
    assert grows.sum() >= 16, [n for n, g in zip(CORRUPTIONS, grows) if not g]


def test_other_sizes_and_non_square():
    rng = np.random.default_rng(0)
    big = rng.random((2, 3, 64, 64), dtype=np.float32)
    odd = rng.random((2, 30, 47), dtype=np.float32)
    for name in CORRUPTIONS:
        for images in (big, odd):
            out = corrupt(images, name, 5, seed=2)
            assert out.shape == images.shape and out.dtype == np.float32
            assert 0.0 <= out.min() and out.max() <= 1.0


def test_jpeg_mosaic_matches_per_image_encoding():
    import io

    from PIL import Image

    out = corrupt(GRAY, "jpeg_compression", 4)
    for i in range(len(GRAY)):
        u8 = np.clip(np.rint(GRAY[i, 0] * 255), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(u8).save(buf, format="JPEG", quality=CIFAR10C_PARAMS["jpeg_compression"][3])
        buf.seek(0)
        np.testing.assert_array_equal(out[i, 0], np.asarray(Image.open(buf), dtype=np.float32) / 255)


def test_chunked_processing(monkeypatch):
    whole = corrupt(GRAY, "gaussian_blur", 3)
    monkeypatch.setattr(cmod, "_CHUNK_VALUES", 2 * 28 * 28)  # 2 images per chunk
    np.testing.assert_array_equal(corrupt(GRAY, "gaussian_blur", 3), whole)
    np.testing.assert_array_equal(corrupt(GRAY, "motion_blur", 3, seed=4), corrupt(GRAY, "motion_blur", 3, seed=4))


def test_unknown_name_lists_valid_names_and_closest():
    with pytest.raises(InputError) as err:
        corrupt(GRAY, "gausian_noise", 1)
    msg = str(err.value)
    assert "'gaussian_noise'" in msg and "Did you mean" in msg and "jpeg_compression" in msg
    with pytest.raises(InputError, match="Valid names"):
        corrupt(GRAY, "rain", 1)


@pytest.mark.parametrize("severity", [0, 6, -1, 2.5, "3", True, None])
def test_bad_severity(severity):
    with pytest.raises(InputError, match="severity must be an integer from 1 to 5"):
        corrupt(GRAY, "fog", severity)


def test_bad_images():
    with pytest.raises(InputError, match="28 to 64 pixels"):
        corrupt(np.zeros((2, 1, 27, 28), np.float32), "fog", 1)
    with pytest.raises(InputError, match="28 to 64 pixels"):
        corrupt(np.zeros((2, 3, 28, 65), np.float32), "fog", 1)
    with pytest.raises(InputError, match="C = 1 or 3"):
        corrupt(np.zeros((2, 2, 28, 28), np.float32), "fog", 1)
    with pytest.raises(InputError, match="C = 1 or 3"):
        corrupt(np.zeros((28, 28), np.float32), "fog", 1)
    with pytest.raises(InputError, match="/ 255"):
        corrupt(np.zeros((2, 1, 28, 28), np.uint8), "fog", 1)
    with pytest.raises(InputError, match=r"in \[0, 1\]"):
        corrupt(np.full((2, 1, 28, 28), 255.0, np.float32), "fog", 1)
    with pytest.raises(InputError, match="NaN"):
        corrupt(np.full((2, 1, 28, 28), np.nan, np.float32), "fog", 1)
    with pytest.raises(InputError, match="seed"):
        corrupt(GRAY, "fog", 1, seed=-1)
    assert corrupt(np.zeros((0, 1, 28, 28), np.float32), "fog", 1).shape == (0, 1, 28, 28)


def test_corrupt_all_yields_every_pair_and_validates_first():
    seen = []
    pairs = corrupt_all(GRAY[:2], names=("fog", "pixelate"), severities=(1, 5), seed=2,
                        progress=lambda done, total, n, s: seen.append((done, total, n, s)))
    result = {(n, s): a for n, s, a in pairs}
    assert list(result) == [("fog", 1), ("fog", 5), ("pixelate", 1), ("pixelate", 5)]
    np.testing.assert_array_equal(result[("fog", 5)], corrupt(GRAY[:2], "fog", 5, seed=2))
    assert seen[-1] == (4, 4, "pixelate", 5)
    with pytest.raises(InputError, match="unknown corruption"):
        corrupt_all(GRAY, names=("fog", "smog"))  # raised on the call, before any work
    with pytest.raises(InputError, match="severity"):
        corrupt_all(GRAY, severities=(1, 9))


def test_contact_sheets(tmp_path):
    from PIL import Image

    from provrepair.data.contact_sheet import contact_sheet

    gray_png, rgb_png = tmp_path / "gray.png", tmp_path / "sub" / "rgb.png"
    contact_sheet(GRAY[2], gray_png)
    contact_sheet(RGB[1], rgb_png, names=("fog", "saturate"), severities=(1, 5))
    with Image.open(gray_png) as im:
        assert im.size[0] > 6 * 84 and im.size[1] > 19 * 84  # 19 rows, 6 columns of 84 px cells
    with Image.open(rgb_png) as im:
        assert im.size[1] < 4 * 96  # 2 rows
    assert not list(tmp_path.glob("**/*.tmp"))  # written atomically, no leftovers
    with pytest.raises(InputError):
        contact_sheet(np.zeros((2, 3, 32, 32), np.float32), tmp_path / "x.png")
