"""Argument checks shared by the data loaders, the corruptions and the repairers' options.

Kept free of numpy (``numbers`` knows numpy's integer types) so that the repairers' options, which
the CLI's ``--help`` builds its flags from, can use them without loading numpy.
"""

from __future__ import annotations

import numbers

from ..errors import InputError

__all__ = ["check_int", "check_seed"]


def check_int(value, what: str, *, lo: int = 1) -> int:
    """``value`` as an ``int`` of at least ``lo`` (a bool is refused: ``True`` is no count)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lo:
        kind = {0: "a non-negative integer", 1: "a positive integer"}.get(lo, f"an integer >= {lo}")
        raise InputError(f"{what} must be {kind}, got {value!r}")
    return int(value)


def check_seed(seed) -> int:
    """A random seed: a non-negative integer."""
    return check_int(seed, "seed", lo=0)
