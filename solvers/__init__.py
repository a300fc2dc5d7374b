"""LP/MILP backends behind one small interface (see ``solvers.base.Backend``).

``solvers`` imports nothing from ``provrepair.repair``: it only knows sparse matrices.
"""

from __future__ import annotations

from provrepair.errors import InputError

from .base import (
    ERROR,
    FEASIBLE,
    INFEASIBLE,
    OPTIMAL,
    TIME_LIMIT,
    UNBOUNDED,
    Backend,
    SolveResult,
    SolverOptions,
)

from .names import METHODS, SOLVERS


def create(name: str = "highs", options: SolverOptions | None = None, **kw) -> Backend:
    """A fresh, empty problem on backend ``name``; keyword arguments fill ``SolverOptions``."""
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
    import importlib.util
    return [n for n, mod in (("highs", "highspy"), ("gurobi", "gurobipy")) if importlib.util.find_spec(mod)]


__all__ = [
    "ERROR",
    "FEASIBLE",
    "INFEASIBLE",
    "METHODS",
    "OPTIMAL",
    "SOLVERS",
    "TIME_LIMIT",
    "UNBOUNDED",
    "Backend",
    "SolveResult",
    "SolverOptions",
    "available",
    "create",
]
