"""LP/MILP backends behind one small interface (see ``provrepair.solvers.base.Backend``).

The repository keeps this package in its top-level folder ``solvers/``; it installs as
``provrepair.solvers``. It imports nothing from ``provrepair.repair``: it only knows sparse
matrices. The names of ``provrepair.solvers.base`` load on first use, so the CLI can read ``SOLVERS``/``METHODS`` without numpy/scipy.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

from provrepair.errors import InputError

from .names import METHODS, SOLVERS

if TYPE_CHECKING:
    from .base import Backend, SolverOptions

_BASE = ("ERROR", "FEASIBLE", "INFEASIBLE", "OPTIMAL", "TIME_LIMIT", "UNBOUNDED", "Backend", "SolveResult",
         "SolverOptions")


def __getattr__(name: str):
    if name in _BASE:
        value = getattr(importlib.import_module(".base", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'solvers' has no attribute {name!r}")


def create(name: str = "highs", options: SolverOptions | None = None, **kw) -> Backend:
    """A fresh, empty problem on backend ``name``; keyword arguments fill ``SolverOptions``."""
    from .base import SolverOptions
    if options is None:
        options = SolverOptions(**kw)
    elif kw:
        raise TypeError("pass either options or keyword options, not both")
    key = name.lower()
    if key == "highs":
        from .highs import HighsBackend
        return HighsBackend(options)
    if key == "gurobi":
        from .gurobi import GurobiBackend
        return GurobiBackend(options)
    raise InputError(f"unknown solver {name!r}; choose one of: {', '.join(SOLVERS)}")


def available() -> list[str]:
    """Backends whose Python package imports here."""
    return [n for n, mod in (("highs", "highspy"), ("gurobi", "gurobipy")) if importlib.util.find_spec(mod)]


__all__ = [*_BASE, "METHODS", "SOLVERS", "available", "create"]
