"""Conventions shared by the point and region spec files, kept in one place so they cannot drift."""

from __future__ import annotations

import zipfile

import numpy as np

__all__ = ["NO_LABEL", "NPZ_ERRORS", "readonly"]

#: ``labels`` value of a point or region that has explicit constraints only (no label).
NO_LABEL = -1

#: What reading a damaged or foreign ``.npz`` raises; each is turned into one SpecError.
NPZ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError)


def readonly(a: np.ndarray) -> np.ndarray:
    """``a`` itself, frozen: specs are shared between stages, so nobody may modify their arrays."""
    a.flags.writeable = False
    return a
