"""Conventions shared by the point and region spec files, kept in one place so they cannot drift."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SpecError

__all__ = ["NO_LABEL", "NPZ_ERRORS", "read_json_document", "readonly"]

#: ``labels`` value of a point or region that has explicit constraints only (no label).
NO_LABEL = -1

#: What reading a damaged or foreign ``.npz`` raises; each is turned into one SpecError.
NPZ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError)


def readonly(a: np.ndarray) -> np.ndarray:
    """``a`` itself, frozen: specs are shared between stages, so nobody may modify their arrays."""
    a.flags.writeable = False
    return a


def read_json_document(p: Path, what: str) -> Any:
    """The parsed JSON of spec file ``p``; ``what`` ("repair set", "region spec") names it in errors."""
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SpecError(f"{p} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); fix the file") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise SpecError(f"cannot read the {what} {p} ({type(exc).__name__}: {exc}); it must be UTF-8 JSON") from None
