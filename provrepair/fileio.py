"""Atomic output: a file is either the old one or the complete new one, never half written."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import InputError


@contextmanager
def atomic_path(path: str | os.PathLike, *, protect: tuple[str | os.PathLike, ...] = ()) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    ``protect`` lists input files that must never be overwritten (e.g. the model being repaired).
    """
    target = Path(path)
    for p in protect:
        if p is None:
            continue
        if Path(p).exists() and target.exists() and os.path.samefile(p, target):
            raise InputError(f"refusing to overwrite the input file {target}; choose another --out path")
    if target.exists() and target.is_dir():
        raise InputError(f"{target} is a directory; give a file path")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str, **kw) -> None:
    with atomic_path(path, **kw) as tmp:
        tmp.write_text(text)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def json_default(o: object) -> object:
    """``json.dumps(default=...)`` for the numbers and arrays results carry (numpy scalars and arrays,
    tuples and sets as lists); anything else as its text."""
    import numpy as np
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)
