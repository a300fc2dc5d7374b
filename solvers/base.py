"""The one small interface every LP/MILP backend implements.

Problems are built incrementally (variable blocks, then constraint blocks as sparse
matrices) so that a repairer can add rows after a solve and re-solve warm, which is
what constraint generation needs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

# Status names shared by every backend.
OPTIMAL = "optimal"
INFEASIBLE = "infeasible"
UNBOUNDED = "unbounded"
TIME_LIMIT = "time_limit"
FEASIBLE = "feasible"  # a MILP stopped at its solution limit: a feasible point, optimality not proven
ERROR = "error"


@dataclass
class SolverOptions:
    """Options every backend understands; ``extra`` is passed to the backend verbatim.

    Hints such as ``prescaled`` describe the problem, not a solver setting: each backend turns
    them into its own settings (``Backend.hint_options``), so a caller never names one.
    """

    time_limit: float | None = None
    threads: int | None = None
    method: str = "auto"  # auto | simplex | ipm | pdlp (where the backend has it)
    verbose: bool = False
    solution_limit: int | None = None  # MILP: stop after this many improving solutions
    # rows are built equilibrated (largest coefficient about 1) and costs are O(1): the backend may
    # skip its own scaling
    prescaled: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"time_limit": self.time_limit, "threads": self.threads, "method": self.method,
                "verbose": self.verbose, "solution_limit": self.solution_limit, "prescaled": self.prescaled, **self.extra}


@dataclass
class SolveResult:
    status: str
    objective: float | None
    x: np.ndarray | None
    solve_time: float
    solver: str
    version: str
    options: dict[str, Any]
    iterations: int | None = None
    message: str = ""

    @property
    def optimal(self) -> bool:
        return self.status == OPTIMAL

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "objective": self.objective, "solve_time": self.solve_time,
                "solver": self.solver, "version": self.version, "options": self.options,
                "iterations": self.iterations, "message": self.message}


class Backend(ABC):
    """A live LP/MILP model: minimise ``c @ x`` s.t. ``lo <= A x <= hi``, ``lb <= x <= ub``."""

    name: str = ""

    def __init__(self, options: SolverOptions | None = None):
        self.options = options or SolverOptions()
        self.n_vars = 0
        self.n_rows = 0
        self.nnz = 0

    def add_variables(self, n: int, lb=-np.inf, ub=np.inf, cost=0.0, integer=False) -> np.ndarray:
        """Add ``n`` variables; returns their column indices."""
        lb = _broadcast(lb, n)
        ub = _broadcast(ub, n)
        cost = _broadcast(cost, n)
        start = self.n_vars
        self._add_vars(lb, ub, cost, bool(integer))
        self.n_vars += n
        return np.arange(start, start + n)

    def add_rows(self, A, lo=-np.inf, hi=np.inf) -> np.ndarray:
        """Add rows ``lo <= A x <= hi``; ``A`` has at most ``n_vars`` columns. Returns row indices."""
        A = sp.csr_matrix(A, dtype=np.float64)
        m = A.shape[0]
        if A.shape[1] > self.n_vars:
            raise ValueError(f"constraint block has {A.shape[1]} columns but only {self.n_vars} variables exist")
        if m == 0:
            return np.arange(self.n_rows, self.n_rows)
        A.sum_duplicates()
        A.eliminate_zeros()
        lo = _broadcast(lo, m)
        hi = _broadcast(hi, m)
        start = self.n_rows
        self._add_rows(A, lo, hi)
        self.n_rows += m
        self.nnz += A.nnz
        return np.arange(start, start + m)

    def add_columns(self, A, lb=0.0, ub=np.inf, cost=0.0) -> np.ndarray:
        """Add continuous variables with their coefficients ``A`` (``n_rows`` x n) in the rows that
        exist (column generation). Returns their indices. Backends without it raise
        NotImplementedError (check ``can_add_columns``)."""
        A = sp.csc_matrix(A, dtype=np.float64)
        n = A.shape[1]
        if A.shape[0] != self.n_rows:
            raise ValueError(f"column block has {A.shape[0]} rows but the model has {self.n_rows}")
        A.sum_duplicates()
        A.eliminate_zeros()
        start = self.n_vars
        self._add_cols(A, _broadcast(lb, n), _broadcast(ub, n), _broadcast(cost, n))
        self.n_vars += n
        self.nnz += A.nnz
        return np.arange(start, start + n)

    can_add_columns = False

    def _add_cols(self, A: sp.csc_matrix, lb: np.ndarray, ub: np.ndarray, cost: np.ndarray) -> None:
        raise NotImplementedError(f"{self.name} cannot add columns to a model")

    can_change_bounds = False

    def set_bounds(self, cols: np.ndarray, lb: np.ndarray, ub: np.ndarray) -> None:
        """Change the bounds of columns ``cols`` (the next solve starts warm from the last basis)."""
        raise NotImplementedError(f"{self.name} cannot change bounds of a model")

    def basis(self) -> Any:
        """The current simplex basis (None where the backend has none to give), for ``set_basis``."""
        return None

    def set_basis(self, basis: Any) -> None:
        """Start the next solve from ``basis`` (a ``basis()`` of this model with the same rows)."""

    def column_duals(self) -> np.ndarray | None:
        """Reduced costs of the columns at the last optimal LP solve, or None."""
        return None

    def row_duals(self) -> np.ndarray | None:
        """Dual values of the rows at the last optimal LP solve (min c x: reduced cost of column
        ``j`` is ``c_j - A[:, j] @ duals``), or None where the backend does not give them."""
        return None

    @abstractmethod
    def _add_vars(self, lb: np.ndarray, ub: np.ndarray, cost: np.ndarray, integer: bool) -> None: ...

    @abstractmethod
    def _add_rows(self, A: sp.csr_matrix, lo: np.ndarray, hi: np.ndarray) -> None: ...

    def set_time_limit(self, seconds: float | None) -> None:
        """Limit the next solves (constraint generation spends one budget over many rounds)."""
        self.options.time_limit = seconds
        self._apply_time_limit(seconds)

    @abstractmethod
    def _apply_time_limit(self, seconds: float | None) -> None: ...

    @abstractmethod
    def solve(self, retry: bool = True) -> SolveResult:
        """Solve (warm from the previous solve where the backend can). ``retry=False``: return a
        numerical failure as it is, without the backend's cold re-solves (a caller with a
        cheaper way out, e.g. another basis, takes it)."""

    @property
    @abstractmethod
    def version(self) -> str: ...

    def hint_options(self) -> dict[str, Any]:
        """The backend's own settings for the hints in ``options``; ``extra`` overrides them."""
        return {}

    def settings(self) -> dict[str, Any]:
        """The options as this backend runs them, for results: the common ones, the hints'
        translation (where ``extra`` does not override it), then ``extra``."""
        hinted = {k: v for k, v in self.hint_options().items() if k not in self.options.extra}
        return {**self.options.to_dict(), **hinted}

    def size(self) -> dict[str, int]:
        return {"variables": self.n_vars, "rows": self.n_rows, "nonzeros": self.nnz}


def _broadcast(v, n: int) -> np.ndarray:
    arr = np.asarray(v, dtype=np.float64)
    if arr.ndim == 0:
        return np.full(n, float(arr))
    if arr.shape != (n,):
        raise ValueError(f"expected {n} values, got shape {arr.shape}")
    return np.ascontiguousarray(arr)
