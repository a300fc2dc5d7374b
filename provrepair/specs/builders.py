"""Builders of realistic repair regions: rotation hulls, segments, pixel boxes.

A point repair fixes the images it is given; these builders turn one image into a *region* of
inputs that a provable polytope repair (``provrepair.repair`` with a :class:`RegionSpec`) then
fixes everywhere:

* :func:`rotation_hull`: the convex hull of an image rotated by a few angles (a V-polytope whose
  vertices are the rotations). It contains every vertex exactly and, between them, blends of
  neighbouring rotations: the standard stand-in for "all rotations in this range", which is not
  convex itself. :func:`rotations` gives the rotated images alone, e.g. at finer steps to measure
  how a repair generalizes to rotations that are not vertices.
* :func:`segment`: the line between two inputs, e.g. a clean image and its corrupted copy, so the
  repair covers every degree of the corruption between them.
* :func:`pixel_box`: an L-infinity box over a few chosen pixels, the others fixed; a box with
  ``d`` free coordinates has ``2**d`` corners, which is what the repair's LP size grows with.

Images are ``(C, H, W)``, ``(H, W)``, or flat with ``shape=`` giving one of those; results keep the
layout of the image given (flat in, flat out), and :meth:`RegionSpec.validate` reshapes to the
model's input shape anyway. Bad input raises :class:`~provrepair.errors.SpecError`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import SpecError
from .regions import Box, VPolytope

__all__ = ["DEFAULT_ANGLES", "ROTATION_MODES", "pixel_box", "rotation_hull", "rotations", "segment"]

#: 7 rotations from -30 to 30 degrees, 10 degrees apart (the APRNN MNIST polytope experiment).
DEFAULT_ANGLES = np.linspace(-30.0, 30.0, 7)

#: scipy fill modes for the corners a rotation brings in (bilinear: none overshoots the image's range).
ROTATION_MODES = ("constant", "nearest", "reflect", "mirror", "grid-wrap", "wrap")


# ---------------------------------------------------------------------- helpers
def _image(image: Any, shape: Sequence[int] | None, what: str = "image") -> tuple[np.ndarray, tuple[int, ...]]:
    """The image as float64 ``(C, H, W)`` or ``(H, W)`` and the layout it was given in."""
    try:
        x = np.array(image, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise SpecError(f"{what} must be an array of numbers ({exc})") from None
    given = tuple(x.shape)
    if shape is not None:
        try:
            shape = tuple(int(s) for s in shape)
        except (TypeError, ValueError):
            raise SpecError(f"shape must be a tuple of integers such as (1, 28, 28), got {shape!r}") from None
        if len(shape) not in (2, 3) or min(shape) < 1:
            raise SpecError(f"shape {shape} is not an image shape; give (C, H, W) or (H, W)")
        if x.size != math.prod(shape):
            raise SpecError(f"{what} has {x.size} values but shape={shape} needs {math.prod(shape)}")
        x = x.reshape(shape)
    elif x.ndim not in (2, 3):
        raise SpecError(f"{what} has shape {given}; give (C, H, W) or (H, W), or a flat image with shape=(C, H, W)")
    if x.size == 0:
        raise SpecError(f"{what} is empty (shape {given})")
    if not np.isfinite(x).all():
        raise SpecError(f"{what} contains NaN or infinite values; give finite pixel values")
    return x, given


def _clip_range(clip: tuple[float, float] | None) -> tuple[float, float] | None:
    if clip is None:
        return None
    try:
        lo, hi = (float(v) for v in clip)
    except (TypeError, ValueError):
        raise SpecError(f"clip must be a pair (lo, hi) of numbers or None, got {clip!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise SpecError(f"clip=({lo}, {hi}) is not a valid range; give finite lo <= hi, e.g. (0, 1) for pixels")
    return lo, hi


def _angles(angles: Any) -> np.ndarray:
    try:
        a = np.array(angles, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise SpecError(f"angles must be numbers (degrees), got {angles!r}") from None
    if a.size == 0:
        raise SpecError("give at least one angle (degrees)")
    if not np.isfinite(a).all():
        raise SpecError(f"angles must be finite degrees, got {a.tolist()}")
    return a


# ---------------------------------------------------------------------- rotations
def rotations(image: Any, angles: Any = DEFAULT_ANGLES, *, shape: Sequence[int] | None = None,
              clip: tuple[float, float] | None = (0.0, 1.0), mode: str = "constant") -> np.ndarray:
    """The image rotated by each angle (degrees, scipy's sense: positive turns counter-clockwise
    as displayed), about its centre, on the last two axes: ``(len(angles), *image layout)``.

    Bilinear (``order=1``) so that no value leaves the range of the image and the black (0)
    background it rotates in; the canvas keeps its size (corners that rotate out are lost). A
    multiple of 360 degrees returns the image itself, bit for bit. ``clip`` (default ``(0, 1)``)
    bounds the values; None keeps them as interpolated. ``mode`` is scipy's fill for the corners
    that rotate in: ``"constant"`` (black, right for clean MNIST) or ``"nearest"`` (repeat the
    border, e.g. for an image whose background is not black, such as a fogged one).
    """
    from scipy.ndimage import rotate

    x, given = _image(image, shape)
    a = _angles(angles)
    rng = _clip_range(clip)
    if mode not in ROTATION_MODES:
        raise SpecError(f"unknown rotation fill mode {mode!r}; choose one of {', '.join(ROTATION_MODES)}")
    out = np.empty((a.size,) + x.shape)
    for i, angle in enumerate(a):
        if float(angle) % 360.0 == 0.0:
            out[i] = x
        else:
            out[i] = rotate(x, float(angle), axes=(x.ndim - 1, x.ndim - 2), reshape=False, order=1,
                            mode=mode, cval=0.0, prefilter=False)
    if rng is not None:
        np.clip(out, rng[0], rng[1], out=out)
    return out.reshape((a.size,) + given)


def rotation_hull(image: Any, angles: Any = DEFAULT_ANGLES, *, shape: Sequence[int] | None = None,
                  clip: tuple[float, float] | None = (0.0, 1.0), mode: str = "constant") -> VPolytope:
    """The convex hull of the image's rotations by ``angles`` (default 7 from -30 to 30 degrees).

    Repairing this V-polytope makes the network right on every rotation at those angles and on
    every convex blend of them; rotations between the angles are not in it in general (check them
    with :func:`rotations` at finer steps). See :func:`rotations` for the conventions.
    """
    a = _angles(angles)
    if a.size < 2:
        raise SpecError(f"a rotation hull needs at least two angles (got {a.tolist()}); with one angle, "
                        "repair the rotated image as a point")
    return VPolytope(rotations(image, a, shape=shape, clip=clip, mode=mode))


# ---------------------------------------------------------------------- segments
def segment(a: Any, b: Any) -> VPolytope:
    """The segment from input ``a`` to input ``b`` (e.g. a clean image and its corrupted copy).

    Both must have the same shape (any layout the model accepts). Equal endpoints give a
    one-point polytope, which is allowed.
    """
    try:
        x = np.array(a, dtype=np.float64)
        y = np.array(b, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise SpecError(f"segment endpoints must be arrays of numbers ({exc})") from None
    if x.shape != y.shape:
        raise SpecError(f"segment endpoints have shapes {x.shape} and {y.shape}; give two inputs of the same shape")
    if x.size == 0 or x.ndim == 0:
        raise SpecError(f"segment endpoints have shape {x.shape}; give inputs with at least one value")
    for name, v in (("a", x), ("b", y)):
        if not np.isfinite(v).all():
            raise SpecError(f"segment endpoint {name} contains NaN or infinite values; give finite inputs")
    return VPolytope(np.stack([x, y]))


# ---------------------------------------------------------------------- pixel boxes
def _pixel_indices(pixels: Any, plane: tuple[int, int] | None, size: int) -> np.ndarray:
    """Flat indices into the pixel plane (H*W), or into the vector when ``plane`` is None."""
    try:
        p = np.array(pixels)
    except (TypeError, ValueError):
        raise SpecError(f"pixels must be flat indices or (row, col) pairs, got {pixels!r}") from None
    if p.size == 0:
        raise SpecError("give at least one pixel (flat indices or (row, col) pairs)")
    if p.dtype.kind not in "iu":
        if p.dtype.kind == "f" and np.isfinite(p).all() and (p == np.round(p)).all():
            p = p.astype(np.int64)
        else:
            raise SpecError(f"pixels must be integers (flat indices or (row, col) pairs), got dtype {p.dtype}")
    if p.ndim == 2 and p.shape[1] == 2:
        if plane is None:
            raise SpecError("(row, col) pixels need an image shape; give the image as (C, H, W) or (H, W), "
                            "or pass shape=")
        h, w = plane
        bad = (p[:, 0] < 0) | (p[:, 0] >= h) | (p[:, 1] < 0) | (p[:, 1] >= w)
        if bad.any():
            r, c = p[np.flatnonzero(bad)[0]]
            raise SpecError(f"pixel ({r}, {c}) is outside the {h}x{w} image; rows are 0..{h - 1}, columns 0..{w - 1}")
        flat: np.ndarray = p[:, 0] * w + p[:, 1]
    elif p.ndim == 1:
        n = size if plane is None else plane[0] * plane[1]
        bad = (p < 0) | (p >= n)
        if bad.any():
            raise SpecError(f"pixel index {int(p[np.flatnonzero(bad)[0]])} is out of range; flat indices are 0..{n - 1}")
        flat = p.astype(np.int64)
    else:
        raise SpecError(f"pixels have shape {p.shape}; give flat indices (n,) or (row, col) pairs (n, 2)")
    uniq, counts = np.unique(flat, return_counts=True)
    if (counts > 1).any():
        raise SpecError(f"pixel {int(uniq[np.flatnonzero(counts > 1)[0]])} (flat index) is listed twice; "
                        "list each pixel once")
    return flat.astype(np.int64)


def pixel_box(image: Any, pixels: Any, radius: float, *, shape: Sequence[int] | None = None,
              clip: tuple[float, float] | None = (0.0, 1.0)) -> Box:
    """The L-infinity box of ``radius`` around ``image`` over the chosen ``pixels`` only.

    ``pixels``: flat indices into the ``H x W`` pixel plane (row-major), or ``(row, col)`` pairs; a
    pixel of a multi-channel image frees all its channels. For a flat image without ``shape`` the
    indices address the vector. Every other coordinate is fixed (``lower == upper``), so the box
    has ``2**(pixels x channels)`` corners, not ``2**dim``. The box is intersected with ``clip``
    (default ``(0, 1)``), which keeps it inside the inputs the network is meant for.
    """
    try:
        r = float(radius)
    except (TypeError, ValueError):
        raise SpecError(f"radius must be a number, got {radius!r}") from None
    if not math.isfinite(r) or r < 0:
        raise SpecError(f"radius must be finite and >= 0, got {radius!r}")
    rng = _clip_range(clip)
    try:
        raw = np.array(image, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise SpecError(f"image must be an array of numbers ({exc})") from None
    if shape is None and raw.ndim == 1:
        if raw.size == 0 or not np.isfinite(raw).all():
            raise SpecError("image must be a non-empty array of finite numbers")
        x, given, plane = raw, raw.shape, None
    else:
        x, given = _image(raw, shape)
        plane = x.shape[-2:]
    flat = _pixel_indices(pixels, plane, x.size)
    lower, upper = x.copy(), x.copy()
    if plane is None:
        lower[flat] -= r
        upper[flat] += r
    else:
        lv = lower.reshape(-1, plane[0] * plane[1])  # views: (channels, H*W)
        uv = upper.reshape(-1, plane[0] * plane[1])
        lv[:, flat] -= r
        uv[:, flat] += r
    if rng is not None:
        outside = (x < rng[0]) | (x > rng[1])
        if outside.any():
            v = float(x.reshape(-1)[np.flatnonzero(outside.reshape(-1))[0]])
            raise SpecError(f"the image has the value {v!r} outside clip={rng}; rescale the image or pass clip=None")
        lower = np.maximum(lower, rng[0])
        upper = np.minimum(upper, rng[1])
    return Box(lower.reshape(given), upper.reshape(given))
