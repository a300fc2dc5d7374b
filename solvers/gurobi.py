"""Gurobi backend (optional). pip's gurobipy carries a size-limited licence (2,000 variables and
2,000 constraints); larger models raise ``SolverLicenseError`` pointing to HiGHS."""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp

from provrepair.errors import SolverError, SolverLicenseError, SolverUnavailableError

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

try:  # pragma: no cover - import guard
    import gurobipy as gp
except ImportError:  # pragma: no cover
    gp = None

_METHODS = {"auto": -1, "simplex": 1, "ipm": 2, "pdlp": 6}
_LICENSE_ERRNO = 10010  # "Model too large for size-limited license"


class GurobiBackend(Backend):
    name = "gurobi"

    def __init__(self, options: SolverOptions | None = None):
        if gp is None:
            raise SolverUnavailableError("Gurobi is not installed: run `pip install gurobipy`, or use --solver highs")
        super().__init__(options)
        o = self.options
        try:
            self._env = gp.Env(empty=True)
            self._env.setParam("OutputFlag", 1 if o.verbose else 0)
            self._env.start()
        except gp.GurobiError as exc:  # pragma: no cover - depends on the licence present
            raise SolverUnavailableError(f"Gurobi could not start ({exc}); use --solver highs") from exc
        self._m = gp.Model(env=self._env)
        m = self._m
        if o.method not in _METHODS:
            raise ValueError(f"unknown Gurobi method {o.method!r}; use one of {sorted(_METHODS)}")
        m.Params.Method = _METHODS[o.method]
        self._apply_time_limit(o.time_limit)
        if o.threads is not None:
            m.Params.Threads = int(o.threads)
        if o.solution_limit is not None:
            m.Params.SolutionLimit = int(o.solution_limit)
        # ``prescaled`` needs no setting here: Gurobi's scaling was never measured to cost time on
        # these LPs, so Gurobi keeps its default (``hint_options`` stays empty).
        for key, value in o.extra.items():
            m.setParam(key, value)
        self._vars: list = []

    @property
    def version(self) -> str:
        return ".".join(str(v) for v in gp.gurobi.version())

    def _apply_time_limit(self, seconds):
        self._m.Params.TimeLimit = gp.GRB.INFINITY if seconds is None else float(seconds)

    def _add_vars(self, lb, ub, cost, integer):
        vtype = gp.GRB.INTEGER if integer else gp.GRB.CONTINUOUS
        lb = np.where(np.isinf(lb), -gp.GRB.INFINITY, lb)
        ub = np.where(np.isinf(ub), gp.GRB.INFINITY, ub)
        self._vars.append(self._m.addMVar(lb.size, lb=lb, ub=ub, obj=cost, vtype=vtype))

    def _x(self):
        return gp.MVar.fromlist([v for block in self._vars for v in block.tolist()]) if len(self._vars) > 1 \
            else self._vars[0]

    def _add_rows(self, A: sp.csr_matrix, lo, hi):
        A = sp.csr_matrix((A.data, A.indices, A.indptr), shape=(A.shape[0], self.n_vars))
        x = self._x()
        eq = lo == hi
        upper = np.isfinite(hi) & ~eq
        lower = np.isfinite(lo) & ~eq
        for mask, sense, rhs in ((eq, "=", hi), (upper, "<", hi), (lower, ">", lo)):
            if mask.any():
                self._m.addMConstr(A[mask], x, sense, rhs[mask])

    def solve(self, retry: bool = True) -> SolveResult:
        m = self._m
        t0 = time.perf_counter()
        try:
            m.optimize()
        except gp.GurobiError as exc:
            if getattr(exc, "errno", None) == _LICENSE_ERRNO or "size-limited" in str(exc):
                raise SolverLicenseError(
                    f"Gurobi's licence is too small for this problem ({self.n_vars} variables, {self.n_rows} "
                    "rows; pip's gurobipy allows 2,000 of each): use --solver highs, or a full Gurobi licence"
                ) from exc
            raise SolverError(f"Gurobi failed: {exc}; try --solver highs") from exc
        elapsed = time.perf_counter() - t0
        S = gp.GRB.Status
        mapping = {S.OPTIMAL: OPTIMAL, S.INFEASIBLE: INFEASIBLE, S.INF_OR_UNBD: INFEASIBLE,
                   S.UNBOUNDED: UNBOUNDED, S.TIME_LIMIT: TIME_LIMIT, S.SOLUTION_LIMIT: FEASIBLE}
        name = mapping.get(m.Status, ERROR)
        x = obj = None
        if name in (OPTIMAL, FEASIBLE):
            x = np.concatenate([block.X for block in self._vars]) if self._vars else np.zeros(0)
            obj = float(m.ObjVal)
        return SolveResult(status=name, objective=obj, x=x, solve_time=elapsed, solver=self.name,
                           version=self.version, options=self.settings(),
                           iterations=int(m.IterCount + m.BarIterCount), message=f"gurobi status {m.Status}")
