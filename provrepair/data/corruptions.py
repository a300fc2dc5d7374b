"""The 19 common corruptions of CIFAR-10-C / ImageNet-C, for small grayscale and RGB images.

``corrupt(images, name, severity, seed=seed)`` applies one corruption at one severity (1-5) to a
batch of float32 images in ``[0, 1]`` of shape ``(N, C, H, W)`` (``C`` in {1, 3}) or ``(N, H, W)``,
with ``28 <= H, W <= 64``. It is deterministic under ``seed`` and vectorised over the batch: every
corruption runs as whole-batch numpy / scipy operations (JPEG: one Pillow encode of a mosaic of the
grayscale batch; colour images are encoded one by one), so the full MNIST test corruption set
(10,000 images x 19 corruptions x 5 severities) takes well under a minute on two cores (see
``benchmarks/corruptions.py``).

Parameters follow the **CIFAR-10-C table** (Hendrycks & Dietterich, ICLR 2019, the 32x32 generator),
not the ImageNet-C one, which destroys small images. Lengths in that table are in pixels of a 32x32
image. They are used as they are for images up to 32 px (MNIST's 28 px included: shrinking them
would turn e.g. the radius-1 defocus disk of severity 4 into a single pixel) and scaled by
``min(H, W) / 32`` above that, so that a severity means about the same degradation at 64 px. The
elastic transform's lengths are fractions of the image size, as in the reference.

The implementations are written for this module; where they differ from the reference generator
(which relies on ImageMagick and OpenCV), the corruption's docstring says how. In short:

* ``glass_blur``: the reference's sequential per-pixel swap loop is replaced by one vectorised
  random-neighbour gather per iteration, which is exactly what that loop computes on RGB images
  (on grayscale images the reference really swaps; here both go through the gather).
* ``motion_blur`` / ``snow``: ImageMagick's one-sided Gaussian line kernel is rebuilt from integer
  shifts, as ImageMagick does (taps whose weight is below 1e-3 of the total are skipped).
* ``fog``: the diamond-square plasma is replaced by multi-octave periodic value noise with the same
  per-octave amplitude decay (``decay**-2`` per halving of the scale).
* ``frost``: the six frost photographs are replaced by procedural ice-crystal textures (needles with
  hexagonal side branches over fractal haze), generated once per process from a fixed seed.
* ``spatter`` (water): the Canny / distance-transform / histogram-equalisation relief is replaced by
  an emboss of the smoothed drop mask; the mud variant follows the reference.
* ``pixelate``: area-average downsampling, nearest upsampling (Pillow's BOX filter behaves so).

Grayscale images go through the colour corruptions (brightness, saturate, snow, frost, spatter) as
RGB images with equal channels and come back as luminance (ITU-R 601 weights). ``saturate`` then
has nothing to scale: a grey pixel has saturation 0, so severities 1-3 (pure saturation factors)
leave a grayscale image unchanged and severities 4-5 (which add saturation, i.e. an HSV hue-0 red
tint, as in CIFAR-10-C) darken it by 7 % and 14 %.

Random draws come from ``np.random.default_rng([seed, index of the corruption, severity])``; the
batch is processed in chunks of about 8 M values, drawing from that generator in order, so the
output is a function of (images, name, severity, seed). An image's random draws depend on the batch
it is in (its position and the batch size), never on the other images' values.
"""

from __future__ import annotations

import difflib
import functools
import io
import math
from collections.abc import Callable, Iterable, Iterator

import numpy as np
from scipy import ndimage

from ..errors import InputError
from .checks import check_seed

__all__ = [
    "CIFAR10C_PARAMS",
    "CORRUPTIONS",
    "GROUPS",
    "MAX_SIZE",
    "MIN_SIZE",
    "SEVERITIES",
    "check_corruption_name",
    "check_severity",
    "corrupt",
    "corrupt_all",
    "corruption_group",
]

CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "gaussian_blur",
    "snow", "frost", "fog", "spatter",
    "brightness", "contrast", "saturate",
    "elastic_transform", "pixelate", "jpeg_compression",
)

# Group names as in the MetaRepair paper (Sec. 5.1.1): "Noise", "Blur", "Weather", "Image property"
# and "Digital error" -- written here in snake case.
GROUPS: dict[str, tuple[str, ...]] = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "gaussian_blur"),
    "weather": ("snow", "frost", "fog", "spatter"),
    "image_property": ("brightness", "contrast", "saturate"),
    "digital_error": ("elastic_transform", "pixelate", "jpeg_compression"),
}

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
MIN_SIZE, MAX_SIZE = 28, 64

# The CIFAR-10-C parameter table, one entry per severity 1..5. Lengths are pixels of a 32x32 image.
CIFAR10C_PARAMS: dict[str, tuple] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # noise standard deviation
    "shot_noise": (500, 250, 100, 75, 50),  # photons per unit intensity (Poisson rate)
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),  # fraction of salt-and-pepper values
    "speckle_noise": (0.06, 0.10, 0.12, 0.16, 0.20),  # multiplicative noise standard deviation
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1)),  # disk radius, anti-alias sigma
    "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),  # sigma, max shift, iterations
    "motion_blur": ((6, 1.0), (6, 1.5), (6, 2.0), (8, 2.0), (9, 2.5)),  # kernel radius, sigma (angle in +-45 deg)
    "zoom_blur": (1.06, 1.11, 1.16, 1.21, 1.26),  # zoom factors 1.00, 1.01, ... below this bound
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),  # sigma
    # snow: mean, std of the flake field, flake zoom, threshold, blur radius, blur sigma, image weight
    "snow": ((0.1, 0.2, 1.0, 0.6, 8, 3, 0.95), (0.1, 0.2, 1.0, 0.5, 10, 4, 0.9),
             (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
             (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)),
    "frost": ((1.0, 0.2), (1.0, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),  # image weight, frost weight
    "fog": ((0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75)),  # fog strength, octave decay
    # spatter: mean, std of the liquid field, its blur sigma, threshold, intensity / mud sigma, mud?
    "spatter": ((0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0), (0.65, 0.3, 1.0, 0.69, 0.5, 0),
                (0.65, 0.1, 0.7, 0.69, 0.6, 1), (0.65, 0.1, 0.5, 0.68, 0.6, 1)),
    "brightness": (0.05, 0.10, 0.15, 0.20, 0.30),  # added to HSV value
    "contrast": (0.75, 0.50, 0.40, 0.30, 0.15),  # factor on the deviation from the channel mean
    "saturate": ((0.3, 0.0), (0.1, 0.0), (1.5, 0.0), (2.0, 0.1), (2.5, 0.2)),  # HSV saturation * a + b
    # elastic: displacement scale, displacement smoothness, affine jitter -- fractions of the image size
    "elastic_transform": ((0.0, 0.0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05),
                          (0.1, 0.03, 0.03)),
    "pixelate": (0.95, 0.90, 0.85, 0.75, 0.65),  # fraction of the side length kept
    "jpeg_compression": (80, 65, 58, 50, 40),  # JPEG quality
}

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_CHUNK_VALUES = 1 << 23  # values per processing chunk (~32 MB of float32)


# --------------------------------------------------------------------------------------------------
# validation


def check_corruption_name(name) -> str:
    """``name`` if it is a corruption of the suite, else an error that suggests the nearest one."""
    if isinstance(name, str) and name in _FUNCS:
        return name
    valid = ", ".join(CORRUPTIONS)
    hint = ""
    if isinstance(name, str):
        key = name.lower().replace("-", "_").replace(" ", "_")
        close = difflib.get_close_matches(key, CORRUPTIONS, n=1, cutoff=0.5)
        if close:
            hint = f" Did you mean {close[0]!r}?"
    raise InputError(f"unknown corruption {name!r}.{hint} Valid names: {valid}")


def check_severity(severity) -> int:
    """A corruption severity, an integer 1-5."""
    if isinstance(severity, (bool, np.bool_)) or not isinstance(severity, (int, np.integer)) or not 1 <= severity <= 5:
        raise InputError(f"corruption severity must be an integer from 1 to 5, got {severity!r}")
    return int(severity)


def _check_images(images) -> tuple[np.ndarray, bool]:
    """Return (float32 array (N, C, H, W), whether the input was (N, H, W))."""
    if hasattr(images, "detach") and hasattr(images, "cpu"):  # a torch tensor
        images = images.detach().cpu().numpy()
    x = np.asarray(images)
    if x.dtype.kind != "f":
        raise InputError(
            f"images must be floating point in [0, 1], got dtype {x.dtype}; "
            "convert with images.astype(np.float32) / 255 for 8-bit images"
        )
    squeeze = x.ndim == 3
    if squeeze:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise InputError(
            "images must have shape (N, C, H, W) with C = 1 or 3, or (N, H, W) for grayscale; "
            f"got {tuple(np.shape(images))}"
        )
    h, w = x.shape[2:]
    if not (MIN_SIZE <= h <= MAX_SIZE and MIN_SIZE <= w <= MAX_SIZE):
        raise InputError(
            f"images are {h}x{w} pixels; the corruption suite supports {MIN_SIZE} to {MAX_SIZE} pixels per side "
            f"(the CIFAR-10-C parameter table is for small images); resize the images into that range first"
        )
    x = x.astype(np.float32, copy=False)
    if x.size:
        lo, hi = float(np.min(x)), float(np.max(x))
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise InputError("images contain NaN or infinite values")
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise InputError(
                f"images must be in [0, 1], got values from {lo:g} to {hi:g}; scale them (e.g. / 255) first"
            )
    return x, squeeze


# --------------------------------------------------------------------------------------------------
# primitives shared by several corruptions (and by augment.py)


def _index(i: np.ndarray, n: int, mode: str) -> np.ndarray:
    """Map integer indices into range [0, n) for the border ``mode``."""
    if mode == "nearest":
        return np.clip(i, 0, n - 1)
    if mode not in ("reflect", "mirror", "wrap"):
        raise ValueError(mode)
    if mode != "wrap" and i.size and i.min() >= -n + 1 and i.max() <= 2 * n - 2:  # at most one reflection
        if mode == "reflect":  # half-sample symmetric: d c b a | a b c d | d c b a
            i = np.where(i < 0, -1 - i, i)
            return np.where(i >= n, 2 * n - 1 - i, i)
        i = np.abs(i)  # whole-sample symmetric: d c b | a b c d | c b a
        return np.where(i >= n, 2 * n - 2 - i, i)
    if mode == "reflect":
        i = np.mod(i, 2 * n)
        return np.where(i >= n, 2 * n - 1 - i, i)
    if mode == "mirror":
        if n == 1:
            return np.zeros_like(i)
        i = np.mod(i, 2 * n - 2)
        return np.where(i >= n, 2 * n - 2 - i, i)
    return np.mod(i, n)


def _gather(x: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """x (N, C, H, W); rows, cols integer arrays (N, H', W') already in range -> (N, C, H', W')."""
    n, c, h, w = x.shape
    flat = rows.astype(np.int32) * np.int32(w) + cols.astype(np.int32)
    out = np.take_along_axis(x.reshape(n, c, h * w), flat.reshape(n, 1, -1), axis=2)
    return out.reshape(n, c, *rows.shape[1:])


def sample_bilinear(x: np.ndarray, sy: np.ndarray, sx: np.ndarray, mode: str = "constant") -> np.ndarray:
    """Bilinear resampling: ``out[n, c, i, j] = x[n, c, sy[n, i, j], sx[n, i, j]]``.

    ``sy``/``sx`` are source row/column coordinates (pixel centres at integers), broadcastable to
    ``(N, H, W)``. ``mode``: ``"constant"`` (zero outside, per neighbour, like ``grid_sample`` with
    zero padding), ``"nearest"``, ``"reflect"`` or ``"mirror"`` (the neighbours' indices reflected
    as in ``scipy.ndimage``).
    """
    n, c, h, w = x.shape
    sy = np.broadcast_to(np.asarray(sy, dtype=np.float32), (n, h, w))
    sx = np.broadcast_to(np.asarray(sx, dtype=np.float32), (n, h, w))
    y0f = np.floor(sy)
    x0f = np.floor(sx)
    wy = (sy - y0f)[:, None]
    wx = (sx - x0f)[:, None]
    # keep the indices in a safe range before the integer conversion (coordinates may be huge)
    big = 1 << 24
    y0 = np.clip(y0f, -big, big).astype(np.int32)
    x0 = np.clip(x0f, -big, big).astype(np.int32)
    if mode in ("constant", "nearest"):
        # constant: a one-pixel zero frame makes every out-of-range neighbour read 0
        f = 1 if mode == "constant" else 0
        src = np.pad(x, ((0, 0), (0, 0), (f, f), (f, f))) if f else x
        hh, ww = h + 2 * f, w + 2 * f
        r0, r1 = np.clip(y0 + np.int32(f), 0, hh - 1), np.clip(y0 + np.int32(f + 1), 0, hh - 1)
        c0, c1 = np.clip(x0 + np.int32(f), 0, ww - 1), np.clip(x0 + np.int32(f + 1), 0, ww - 1)
    elif mode in ("reflect", "mirror"):
        top, bottom = max(0, -int(y0.min())), max(0, int(y0.max()) + 2 - h)
        left, right = max(0, -int(x0.min())), max(0, int(x0.max()) + 2 - w)
        if max(top, bottom, left, right) < min(h, w):  # one reflection: pad just as far as needed
            pad_mode = "symmetric" if mode == "reflect" else "reflect"  # numpy's names for the two
            src = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), mode=pad_mode)
            hh, ww = h + top + bottom, w + left + right
            r0, c0 = y0 + np.int32(top), x0 + np.int32(left)
            r1, c1 = r0 + np.int32(1), c0 + np.int32(1)
        else:
            src, hh, ww = x, h, w
            r0, r1 = _index(y0, h, mode), _index(y0 + 1, h, mode)
            c0, c1 = _index(x0, w, mode), _index(x0 + 1, w, mode)
    else:
        raise ValueError(f"unknown sampling mode {mode!r}")
    flat = src.reshape(n, c, hh * ww)
    r0, r1 = r0 * np.int32(ww), r1 * np.int32(ww)

    def tap(r, q):
        return np.take_along_axis(flat, (r + q).reshape(n, 1, h * w), axis=2).reshape(n, c, h, w)

    top_row = tap(r0, c0) * (1 - wx) + tap(r0, c1) * wx
    bottom_row = tap(r1, c0) * (1 - wx) + tap(r1, c1) * wx
    return top_row * (1 - wy) + bottom_row * wy


@functools.lru_cache(maxsize=64)
def _gauss_matrix(n: int, sigma: float, truncate: float = 3.0, mode: str = "reflect") -> np.ndarray:
    """(n x n) matrix of a 1-D Gaussian filter: ``G @ v`` equals ``gaussian_filter1d(v, sigma)``."""
    eye = np.eye(n)
    return ndimage.gaussian_filter1d(eye, sigma, axis=0, mode=mode, truncate=truncate).astype(np.float32)


def _gauss_blur(x: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """Gaussian blur over the last two axes of a batch (the other axes untouched)."""
    if sigma <= 0:
        return x
    sig = (0.0,) * (x.ndim - 2) + (sigma, sigma)
    return ndimage.gaussian_filter(x, sigma=sig, mode=mode, truncate=truncate)


def _to_gray(rgb: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) -> (N, 1, H, W) luminance."""
    return np.tensordot(_LUMA, rgb, axes=([0], [1]))[:, None].astype(np.float32)


def _colour(fn):
    """Run an RGB-defined corruption on grayscale images as equal-channel RGB, returning luminance."""

    @functools.wraps(fn)
    def wrapper(x, sev, rng, scale):
        if x.shape[1] == 3:
            return fn(x, sev, rng, scale)
        return _to_gray(fn(np.repeat(x, 3, axis=1), sev, rng, scale))

    return wrapper


def _axis_operator_zoom(n: int, z: float) -> np.ndarray:
    """(n x n) bilinear interpolation matrix zooming by ``z >= 1`` about the centre (a central crop upscaled)."""
    c = (n - 1) / 2.0
    src = c + (np.arange(n) - c) / z
    lo = np.clip(np.floor(src).astype(int), 0, n - 1)
    hi = np.clip(lo + 1, 0, n - 1)
    f = src - np.floor(src)
    m = np.zeros((n, n))
    np.add.at(m, (np.arange(n), lo), 1 - f)
    np.add.at(m, (np.arange(n), hi), f)
    return m


def _axis_operator_pixelate(n: int, m: int) -> np.ndarray:
    """(n x n): area-average from n to m cells, then nearest back to n (Pillow's BOX down and up)."""
    down = np.zeros((m, n))
    for j in range(m):  # output cell j covers input interval [j n/m, (j+1) n/m)
        a, b = j * n / m, (j + 1) * n / m
        for i in range(math.floor(a), min(n, math.ceil(b))):
            down[j, i] = min(b, i + 1) - max(a, i)
        down[j] /= down[j].sum()
    up_src = np.minimum(((np.arange(n) + 0.5) * m / n).astype(int), m - 1)
    up = np.zeros((n, m))
    up[np.arange(n), up_src] = 1.0
    return up @ down


def _apply_separable(x: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """out[..., i, j] = sum_{k, l} rows[i, k] x[..., k, l] cols[j, l] for a batch (..., H, W)."""
    return np.matmul(np.matmul(rows.astype(np.float32), x), cols.T.astype(np.float32))


@functools.lru_cache(maxsize=64)
def _zoom_blur_operator(h: int, w: int, zmax: float) -> np.ndarray:
    """Dense (H W x H W) operator: mean of the image and its central zooms 1.00, 1.01, ... < zmax."""
    zooms = np.arange(1.0, zmax, 0.01)
    op = np.eye(h * w)
    for z in zooms:
        op += np.kron(_axis_operator_zoom(h, z), _axis_operator_zoom(w, z))
    op /= len(zooms) + 1
    return op.astype(np.float32)


def _motion_blur(x: np.ndarray, radius: float, sigma: float, angles_deg: np.ndarray) -> np.ndarray:
    """One-sided Gaussian line blur (ImageMagick's -motion-blur) with a per-image angle.

    Tap ``i = 0 .. 2 ceil(radius)`` samples the image ``i`` pixels along the angle (rounded to whole
    pixels, edge pixels repeated) with weight ``exp(-i^2 / (2 sigma^2))``. Each tap is a whole-pixel
    shift per image; images sharing a shift are processed together as slices of an edge-padded copy.
    """
    n, _, h, w = x.shape
    taps = np.arange(2 * math.ceil(radius) + 1)
    wts = np.exp(-(taps**2) / (2.0 * sigma**2))
    keep = wts >= 1e-3 * wts.sum()
    taps, wts = taps[keep], wts[keep] / wts[keep].sum()
    theta = np.deg2rad(angles_deg)
    cos, sin = np.cos(theta), np.sin(theta)
    pad = int(taps.max())
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="edge") if pad else x
    out = np.zeros_like(x)
    side = 2 * pad + 1
    for t, wt in zip(taps, wts):
        dx = np.rint(t * cos).astype(np.intp)
        dy = np.rint(t * sin).astype(np.intp)
        key = (dy + pad) * side + (dx + pad)
        order = np.argsort(key, kind="stable")
        bounds = np.flatnonzero(np.diff(key[order])) + 1
        for grp in np.split(order, bounds):
            oy, ox = pad + dy[grp[0]], pad + dx[grp[0]]
            window = padded[:, :, oy : oy + h, ox : ox + w]
            if len(grp) == n:
                out += np.float32(wt) * window
            else:
                out[grp] += np.float32(wt) * window[grp]
    return out


def _value_noise(rng: np.random.Generator, n: int, size: int, decay: float) -> np.ndarray:
    """(n, size, size) periodic multi-octave value noise in [0, 1] (a stand-in for plasma fractals).

    Octave ``k`` is a ``2^k``-cell periodic grid of uniform values scaled by ``decay**(-2 (k - 1))``
    (the diamond-square amplitude law), upsampled to ``size`` (a power of two) with smoothstep
    interpolation.
    """
    total = np.zeros((n, size, size), dtype=np.float32)
    k = 1
    while 2**k <= size:
        g = 2**k
        grid = rng.uniform(-1.0, 1.0, size=(n, g, g)).astype(np.float32) * np.float32(decay ** (-2.0 * (k - 1)))
        up = _periodic_upsample_matrix(size, g)
        total += _apply_separable(grid, up, up)
        k += 1
    lo = total.min(axis=(1, 2), keepdims=True)
    hi = total.max(axis=(1, 2), keepdims=True)
    return (total - lo) / np.maximum(hi - lo, 1e-12)


@functools.lru_cache(maxsize=32)
def _periodic_upsample_matrix(size: int, g: int) -> np.ndarray:
    pos = np.arange(size) * g / size
    lo = np.floor(pos).astype(int)
    f = pos - lo
    f = f * f * (3 - 2 * f)  # smoothstep weights: no creases along the coarse grid lines
    m = np.zeros((size, g))
    np.add.at(m, (np.arange(size), lo % g), 1 - f)
    np.add.at(m, (np.arange(size), (lo + 1) % g), f)
    return m.astype(np.float32)


# --------------------------------------------------------------------------------------------------
# the corruptions: fn(x (N, C, H, W) float32, severity, rng, scale) -> array (clipped by the caller)


def _p(name: str, sev: int):
    return CIFAR10C_PARAMS[name][sev - 1]


def gaussian_noise(x, sev, rng, scale):
    """Additive Gaussian noise with standard deviation c."""
    return x + np.float32(_p("gaussian_noise", sev)) * rng.standard_normal(x.shape, dtype=np.float32)


def shot_noise(x, sev, rng, scale):
    """Poisson (photon) noise: Poisson(c x) / c."""
    c = _p("shot_noise", sev)
    return (rng.poisson(x * np.float32(c)) / c).astype(np.float32)


def impulse_noise(x, sev, rng, scale):
    """Salt-and-pepper noise: a fraction c of the values (per channel) set to 0 or 1, half each."""
    c = _p("impulse_noise", sev)
    u = rng.random(x.shape, dtype=np.float32)
    out = x.copy()
    out[u < c / 2] = 0.0
    out[(u >= c / 2) & (u < c)] = 1.0
    return out


def speckle_noise(x, sev, rng, scale):
    """Multiplicative Gaussian noise: x + x N(0, c^2)."""
    return x * (1.0 + np.float32(_p("speckle_noise", sev)) * rng.standard_normal(x.shape, dtype=np.float32))


@functools.lru_cache(maxsize=64)
def _defocus_kernel(radius: float, alias_sigma: float) -> np.ndarray:
    r = math.floor(radius) + 1
    ax = np.arange(-r, r + 1)
    disk = ((ax[:, None] ** 2 + ax[None, :] ** 2) <= radius**2).astype(np.float64)
    disk /= disk.sum()
    g = np.exp(-(np.arange(-1, 2) ** 2) / (2 * alias_sigma**2))
    g /= g.sum()
    k = np.zeros((2 * r + 3, 2 * r + 3))
    for a in range(3):  # anti-alias the disk with a 3x3 Gaussian
        for b in range(3):
            k[a : a + 2 * r + 1, b : b + 2 * r + 1] += g[a] * g[b] * disk
    return (k / k.sum()).astype(np.float32)


def defocus_blur(x, sev, rng, scale):
    """Convolution with an anti-aliased disk of radius r (edges mirrored)."""
    radius, alias = _p("defocus_blur", sev)
    k = _defocus_kernel(round(radius * scale, 4), alias)
    return ndimage.correlate(x, k[None, None], mode="mirror")


def glass_blur(x, sev, rng, scale):
    """Blur, jitter, blur: frosted glass.

    Each jitter iteration replaces every interior pixel (rows and columns ``delta + 1 .. size -
    delta``) by the pixel at a random offset in ``[-delta, delta)`` on each axis, all at once. That
    is exactly what the reference's bottom-right-to-top-left "swap" loop computes on RGB images
    (its swap of two numpy views degenerates to a copy from a not-yet-visited neighbour).
    """
    sigma, delta, iters = _p("glass_blur", sev)
    sigma *= scale
    delta = max(1, round(delta * scale))
    x = _gauss_blur(x, sigma)
    n, _, h, w = x.shape
    ii = np.arange(h, dtype=np.int16)[None, :, None]
    jj = np.arange(w, dtype=np.int16)[None, None, :]
    inner = ((ii > delta) & (ii <= h - delta)) & ((jj > delta) & (jj <= w - delta))
    for _ in range(iters):
        off = rng.integers(-delta, delta, size=(2, n, h, w), dtype=np.int16) * inner
        x = _gather(x, ii + off[0], jj + off[1])
    return _gauss_blur(x, sigma)


def motion_blur(x, sev, rng, scale):
    """One-sided Gaussian line blur along a random angle in [-45, 45] degrees per image."""
    radius, sigma = _p("motion_blur", sev)
    angles = rng.uniform(-45.0, 45.0, size=x.shape[0])
    return _motion_blur(x, radius * scale, sigma * scale, angles)


def zoom_blur(x, sev, rng, scale):
    """Mean of the image and its central zooms by 1.00, 1.01, ... up to the severity's bound."""
    n, c, h, w = x.shape
    zmax = float(_p("zoom_blur", sev))
    if h * w <= 1024:  # one dense (H W x H W) operator: a single matrix product for the batch
        op = _zoom_blur_operator(h, w, zmax)
        return (x.reshape(n * c, h * w) @ op.T).reshape(n, c, h, w)
    zooms = np.arange(1.0, zmax, 0.01)
    out = x.copy()
    for z in zooms:
        out += _apply_separable(x, _axis_operator_zoom(h, z), _axis_operator_zoom(w, z))
    return out / np.float32(len(zooms) + 1)


def gaussian_blur(x, sev, rng, scale):
    """Gaussian blur with standard deviation sigma (edges repeated)."""
    return _gauss_blur(x, _p("gaussian_blur", sev) * scale)


def snow(x, sev, rng, scale):
    """Snowflakes: a thresholded, zoomed noise field streaked by a near-vertical motion blur (and its
    180-degree rotation) over a whitened image."""
    loc, std, zoom, thresh, radius, sigma, keep = _p("snow", sev)
    n, _, h, w = x.shape
    flakes = rng.normal(loc, std, size=(n, 1, h, w)).astype(np.float32)
    if zoom > 1:
        flakes = _apply_separable(flakes, _axis_operator_zoom(h, zoom), _axis_operator_zoom(w, zoom))
    flakes[flakes < thresh] = 0.0
    np.clip(flakes, 0.0, 1.0, out=flakes)
    angles = rng.uniform(-135.0, -45.0, size=n)
    flakes = _motion_blur(flakes, radius * scale, sigma * scale, angles)
    gray = x if x.shape[1] == 1 else _to_gray(x)
    x = keep * x + (1 - keep) * np.maximum(x, gray * 1.5 + 0.5)
    return x + flakes + flakes[:, :, ::-1, ::-1]


@functools.lru_cache(maxsize=1)
def _frost_bank(n_textures: int = 6, size: int = 160) -> np.ndarray:
    """Procedural frost textures (n, 3, size, size) in [0, 1], from a fixed seed.

    Each is fractal haze plus ice needles (random directions and lengths) with side branches at
    +-60 degrees, lightly blurred and tinted pale blue.
    """
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(20190301)
    bank = np.empty((n_textures, 3, size, size), dtype=np.float32)
    haze = _value_noise(rng, n_textures, 256, 1.6)[:, :size, :size]
    for t in range(n_textures):
        canvas = Image.new("F", (size, size), 0.0)
        draw = ImageDraw.Draw(canvas)
        for _ in range(int(rng.integers(110, 150))):
            x0, y0 = rng.uniform(-10, size + 10, size=2)
            ang = rng.uniform(0, np.pi)
            length = rng.uniform(6, 45)
            val = float(rng.uniform(0.35, 1.0))
            x1, y1 = x0 + length * np.cos(ang), y0 + length * np.sin(ang)
            draw.line([(x0, y0), (x1, y1)], fill=val, width=1)
            for _ in range(int(length // 4)):  # dendritic side branches
                f = rng.uniform(0.1, 0.95)
                bx, by = x0 + f * (x1 - x0), y0 + f * (y1 - y0)
                b_ang = ang + rng.choice([-1, 1]) * np.pi / 3
                bl = rng.uniform(1.5, 0.35 * length)
                draw.line([(bx, by), (bx + bl * np.cos(b_ang), by + bl * np.sin(b_ang))], fill=0.8 * val, width=1)
        needles = np.asarray(canvas, dtype=np.float32)
        needles = np.maximum(needles, ndimage.gaussian_filter(needles, 0.8) * 1.5)
        tex = 0.45 * haze[t] + 0.25 + 0.9 * needles
        tex = ndimage.gaussian_filter(tex, 0.4)
        tex = np.clip(tex, 0.0, 1.0)
        for ch, tint in enumerate((0.80, 0.90, 1.0)):
            bank[t, ch] = tint * tex
    bank.setflags(write=False)
    return bank


@_colour
def frost(x, sev, rng, scale):
    """A random crop of a frost texture blended over the image: a x + b frost."""
    a, b = _p("frost", sev)
    bank = _frost_bank()
    n, _, h, w = x.shape
    nt, _, size, _ = bank.shape
    idx = rng.integers(0, nt, size=n)
    oy = rng.integers(0, size - h + 1, size=n)
    ox = rng.integers(0, size - w + 1, size=n)
    crop = bank[
        idx[:, None, None, None],
        np.arange(3)[None, :, None, None],
        (oy[:, None, None, None] + np.arange(h)[None, None, :, None]),
        (ox[:, None, None, None] + np.arange(w)[None, None, None, :]),
    ]
    return np.float32(a) * x + np.float32(b) * crop


def fog(x, sev, rng, scale):
    """Fractal fog: (x + c fog) max / (max + c), with fog fractal noise in [0, 1]."""
    strength, decay = _p("fog", sev)
    n, _, h, w = x.shape
    size = 1 << math.ceil(math.log2(max(h, w)))
    layer = _value_noise(rng, n, size, decay)[:, None, :h, :w]
    peak = x.max(axis=(1, 2, 3), keepdims=True)
    return (x + np.float32(strength) * layer) * peak / (peak + np.float32(strength))


_WATER = np.array([175, 238, 238], dtype=np.float32)[None, :, None, None] / 255.0  # pale turquoise
_MUD = np.array([63, 42, 20], dtype=np.float32)[None, :, None, None] / 255.0  # mud brown
_EMBOSS = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], dtype=np.float32)


@_colour
def spatter(x, sev, rng, scale):
    """Water drops (severities 1-3: pale, embossed, added) or mud splashes (4-5: opaque brown)."""
    loc, std, sigma, thresh, inten, mud = _p("spatter", sev)
    n, _, h, w = x.shape
    liquid = rng.normal(loc, std, size=(n, 1, h, w)).astype(np.float32)
    liquid = _gauss_blur(liquid, sigma * scale)
    liquid[liquid < thresh] = 0.0
    if not mud:
        height = _gauss_blur((liquid > 0).astype(np.float32), 1.0 * scale)
        relief = np.clip(ndimage.correlate(height, _EMBOSS[None, None], mode="nearest"), 0.0, None)
        relief = ndimage.uniform_filter(relief, size=(1, 1, 3, 3), mode="nearest")
        m = liquid * relief
        m /= np.maximum(m.max(axis=(1, 2, 3), keepdims=True), 1e-6)
        return x + np.float32(inten) * m * _WATER
    m = _gauss_blur((liquid > thresh).astype(np.float32), inten * scale)
    m[m < 0.8] = 0.0
    return x * (1.0 - m) + _MUD * m


def brightness(x, sev, rng, scale):
    """HSV value + c (hue and saturation kept): each pixel scaled by min(V + c, 1) / V."""
    c = np.float32(_p("brightness", sev))
    if x.shape[1] == 1:
        return x + c
    v = x.max(axis=1, keepdims=True)
    v_new = np.minimum(v + c, 1.0)
    ratio = np.divide(v_new, v, out=np.zeros_like(v), where=v > 0)
    return np.where(v > 0, x * ratio, v_new)


def contrast(x, sev, rng, scale):
    """Deviation from each channel's mean scaled by c."""
    c = np.float32(_p("contrast", sev))
    mean = x.mean(axis=(2, 3), keepdims=True)
    return (x - mean) * c + mean


def saturate(x, sev, rng, scale):
    """HSV saturation S -> clip(a S + b) with hue and value kept (achromatic pixels have hue 0)."""
    a, b = _p("saturate", sev)
    if x.shape[1] == 1:  # equal-channel RGB: S = 0, hue 0 -> (v, v (1 - b), v (1 - b)), as luminance
        s_new = min(max(b, 0.0), 1.0)
        return x * np.float32(_LUMA[0] + (1.0 - s_new) * (_LUMA[1] + _LUMA[2]))
    v = x.max(axis=1, keepdims=True)
    mn = x.min(axis=1, keepdims=True)
    chroma = v - mn
    s = np.divide(chroma, v, out=np.zeros_like(v), where=v > 0)
    s_new = np.clip(s * np.float32(a) + np.float32(b), 0.0, 1.0)
    # chromatic pixels: every channel keeps its hue fraction (v - ch) / (v - min)
    frac = np.divide(v - x, chroma, out=np.zeros_like(x), where=chroma > 0)
    out = v - frac * (s_new * v)
    # achromatic pixels (hue 0 = red in HSV): (v, v (1 - s'), v (1 - s'))
    grey = np.concatenate([v, v * (1 - s_new), v * (1 - s_new)], axis=1)
    return np.where(chroma > 0, out, grey)


def elastic_transform(x, sev, rng, scale):
    """A random affine jitter of three control points, then a smooth random displacement field;
    both applied in one bilinear resampling with reflected borders."""
    alpha, smooth, jitter = _p("elastic_transform", sev)
    n, _, h, w = x.shape
    size = min(h, w)
    alpha, smooth, jitter = alpha * size, smooth * size, jitter * size
    centre = np.array([w // 2, h // 2], dtype=np.float64)  # (x, y)
    sq = size // 3
    src = np.array([centre + sq, [centre[0] + sq, centre[1] - sq], centre - sq])  # (3, 2)
    dst = src[None] + rng.uniform(-jitter, jitter, size=(n, 3, 2))
    src_h = np.concatenate([src, np.ones((3, 1))], axis=1)  # (3, 3)
    m = np.linalg.solve(src_h[None], dst).transpose(0, 2, 1)  # forward affine (n, 2, 3): dst = A p + t
    a_inv = np.linalg.inv(m[:, :, :2])
    # source = A^-1 (p + d(p) - t) = A^-1 (p + d(p)) + b, with b = -A^-1 t
    b = -np.einsum("nij,nj->ni", a_inv, m[:, :, 2])

    def f32(v):
        return v.astype(np.float32)[:, None, None]

    px = np.arange(w, dtype=np.float32)[None, None, :]
    py = np.arange(h, dtype=np.float32)[None, :, None]
    if alpha > 0:
        field = rng.uniform(-1.0, 1.0, size=(2, n, h, w)).astype(np.float32)
        # Gaussian smoothing (reflected edges, truncated at 3 sigma) as two small matrix products
        field = _apply_separable(field, _gauss_matrix(h, smooth), _gauss_matrix(w, smooth))
        field *= np.float32(alpha)
        px = px + field[0]
        py = py + field[1]
    sx = f32(a_inv[:, 0, 0]) * px + f32(a_inv[:, 0, 1]) * py + f32(b[:, 0])
    sy = f32(a_inv[:, 1, 0]) * px + f32(a_inv[:, 1, 1]) * py + f32(b[:, 1])
    return sample_bilinear(x, sy, sx, mode="reflect")


def pixelate(x, sev, rng, scale):
    """Downsample to a fraction c of the side (area average) and back (nearest)."""
    c = _p("pixelate", sev)
    _, _, h, w = x.shape
    return _apply_separable(
        x, _axis_operator_pixelate(h, max(1, int(h * c))), _axis_operator_pixelate(w, max(1, int(w * c)))
    )


def jpeg_compression(x, sev, rng, scale):
    """JPEG encode and decode with Pillow at quality q (the 8-bit rounding included).

    Grayscale batches are encoded as one mosaic whose tiles are the images edge-padded to multiples
    of 8 (JPEG's block size), which gives exactly the per-image result (8x8 blocks never straddle
    two images and the encoder pads an image's edge by repetition too) at a fraction of the cost.
    Colour images are encoded one by one: chroma upsampling would mix neighbouring tiles.
    """
    from PIL import Image

    quality = int(_p("jpeg_compression", sev))
    u8 = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
    n, c, h, w = x.shape

    def roundtrip(arr: np.ndarray) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        return np.asarray(Image.open(buf), dtype=np.float32)

    if c == 1:
        th, tw = -(-h // 8) * 8, -(-w // 8) * 8
        cols = max(1, min(n, 8192 // tw))  # mosaic at most 8192 px wide
        out = np.empty((n, 1, h, w), dtype=np.float32)
        for start in range(0, n, cols * cols):
            part = u8[start : start + cols * cols, 0]
            m = len(part)
            rows = -(-m // cols)
            tiles = np.zeros((rows * cols, th, tw), dtype=np.uint8)
            tiles[:m] = np.pad(part, ((0, 0), (0, th - h), (0, tw - w)), mode="edge")
            mosaic = tiles.reshape(rows, cols, th, tw).transpose(0, 2, 1, 3).reshape(rows * th, cols * tw)
            dec = roundtrip(mosaic).reshape(rows, th, cols, tw).transpose(0, 2, 1, 3).reshape(rows * cols, th, tw)
            out[start : start + m, 0] = dec[:m, :h, :w]
        return out / np.float32(255.0)
    out = np.empty(x.shape, dtype=np.float32)
    for i in range(n):
        out[i] = roundtrip(u8[i].transpose(1, 2, 0)).transpose(2, 0, 1)
    return out / np.float32(255.0)


_FUNCS: dict[str, Callable] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "speckle_noise": speckle_noise,
    "defocus_blur": defocus_blur,
    "glass_blur": glass_blur,
    "motion_blur": motion_blur,
    "zoom_blur": zoom_blur,
    "gaussian_blur": gaussian_blur,
    "snow": snow,
    "frost": frost,
    "fog": fog,
    "spatter": spatter,
    "brightness": brightness,
    "contrast": contrast,
    "saturate": saturate,
    "elastic_transform": elastic_transform,
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
}
assert tuple(_FUNCS) == CORRUPTIONS
assert sorted(sum(GROUPS.values(), ())) == sorted(CORRUPTIONS)


# --------------------------------------------------------------------------------------------------
# public API


def corruption_group(name: str) -> str:
    """The MetaRepair group of a corruption: ``noise``, ``blur``, ``weather``, ``image_property`` or
    ``digital_error``."""
    name = check_corruption_name(name)
    return next(g for g, members in GROUPS.items() if name in members)


def corrupt(images, name: str, severity: int, *, seed: int = 0) -> np.ndarray:
    """Apply corruption ``name`` at ``severity`` (1-5) to a batch of images.

    ``images``: float values in ``[0, 1]``, shape ``(N, C, H, W)`` with ``C`` in {1, 3} or ``(N, H, W)``
    (grayscale; the result then has the same shape), ``28 <= H, W <= 64``. Returns a new float32
    array in ``[0, 1]`` of the input's shape. The same ``(images, name, severity, seed)`` always
    gives the same output; another seed gives other noise. Raises ``InputError`` for an unknown
    name (listing the valid ones and the closest match), a severity outside 1-5, or images of an
    unsupported shape, size, type or range.
    """
    name = check_corruption_name(name)
    sev = check_severity(severity)
    seed = check_seed(seed)
    x, squeeze = _check_images(images)
    n, c, h, w = x.shape
    out = np.empty_like(x)
    if n:
        rng = np.random.default_rng([seed, CORRUPTIONS.index(name), sev])
        fn = _FUNCS[name]
        scale = max(1.0, min(h, w) / 32.0)
        step = max(1, _CHUNK_VALUES // (c * h * w))
        for start in range(0, n, step):
            res = fn(x[start : start + step], sev, rng, scale)
            np.clip(res, 0.0, 1.0, out=out[start : start + step])
    return out[:, 0] if squeeze else out


def corrupt_all(
    images,
    names: Iterable[str] = CORRUPTIONS,
    severities: Iterable[int] = SEVERITIES,
    seed: int = 0,
    progress: Callable[[int, int, str, int], None] | None = None,
) -> Iterator[tuple[str, int, np.ndarray]]:
    """An iterator of ``(name, severity, corrupt(images, name, severity, seed=seed))`` for every pair,
    names outermost, in the order given.

    Lazy, so a builder can write each corrupted set out before the next is made (the full MNIST
    test set is 10k x 19 x 5 = 950k images, 3 GB of float32). Names, severities, seed and images
    are validated when ``corrupt_all`` is called, before any work starts. ``progress``, if given,
    is called after each pair as ``progress(done, total, name, severity)``. For a dictionary:
    ``{(n, s): a for n, s, a in corrupt_all(x)}``.
    """
    names = tuple(check_corruption_name(nm) for nm in names)
    severities = tuple(check_severity(s) for s in severities)
    seed = check_seed(seed)
    x, squeeze = _check_images(images)
    if squeeze:
        x = x[:, 0]
    return _corrupt_all(x, names, severities, seed, progress)


def _corrupt_all(x, names, severities, seed, progress):
    total = len(names) * len(severities)
    done = 0
    for nm in names:
        for sev in severities:
            result = corrupt(x, nm, sev, seed=seed)
            done += 1
            if progress is not None:
                progress(done, total, nm, sev)
            yield nm, sev, result
