"""HiGHS backend (the default: open source, ships as the ``highspy`` wheel)."""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager

import numpy as np
import scipy.sparse as sp

from provrepair.errors import SolverUnavailableError

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
    import highspy
except ImportError:  # pragma: no cover
    highspy = None

@contextmanager
def _stdout_silenced(enabled: bool):
    if not enabled:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


_METHODS = {"auto": "choose", "simplex": "simplex", "ipm": "ipm", "pdlp": "pdlp"}


def _status_name(status) -> str:
    ms = highspy.HighsModelStatus
    mapping = {
        ms.kOptimal: OPTIMAL,
        ms.kInfeasible: INFEASIBLE,
        ms.kUnbounded: UNBOUNDED,
        ms.kUnboundedOrInfeasible: INFEASIBLE,
        ms.kTimeLimit: TIME_LIMIT,
        ms.kIterationLimit: TIME_LIMIT,
        ms.kSolutionLimit: FEASIBLE,
    }
    return mapping.get(status, ERROR)


class HighsBackend(Backend):
    name = "highs"

    def __init__(self, options: SolverOptions | None = None):
        if highspy is None:
            raise SolverUnavailableError("HiGHS is not installed: run `pip install highspy`")
        super().__init__(options)
        o = self.options
        with _stdout_silenced(not o.verbose):  # HiGHS prints a banner when constructed
            self._h = highspy.Highs()
        h = self._h
        h.setOptionValue("output_flag", bool(o.verbose))
        if o.method not in _METHODS:
            raise ValueError(f"unknown HiGHS method {o.method!r}; use one of {sorted(_METHODS)}")
        h.setOptionValue("solver", _METHODS[o.method])
        self._apply_time_limit(o.time_limit)
        if o.threads is not None:
            # HiGHS runs one scheduler per process; a different thread count in a later solve
            # is refused ("solver returned error") unless the scheduler is reset first.
            highspy.Highs.resetGlobalScheduler(True)
            h.setOptionValue("threads", int(o.threads))
        if o.solution_limit is not None:
            h.setOptionValue("mip_max_improving_sols", int(o.solution_limit))
        for key, value in {**self.hint_options(), **o.extra}.items():
            h.setOptionValue(key, value)
        self._integer = False

    def hint_options(self) -> dict:
        # A prescaled LP gains nothing from HiGHS's simplex scaling, which only costs time: 14.0 s
        # instead of 17-18 s on the 100-point benchmark. ``_retry`` turns it back on after a failure.
        return {"simplex_scale_strategy": 0} if self.options.prescaled else {}

    @property
    def version(self) -> str:
        return f"{self._h.versionMajor()}.{self._h.versionMinor()}.{self._h.versionPatch()}"

    def _apply_time_limit(self, seconds):
        # HiGHS compares time_limit with its run clock, which counts every solve of this model so
        # far: a re-solve given ``seconds`` must be limited at the clock's reading plus them (else
        # the later rounds of constraint generation stop at once, "time limit").
        h = self._h
        h.setOptionValue("time_limit", float("inf") if seconds is None else h.getRunTime() + float(seconds))

    def _add_vars(self, lb, ub, cost, integer):
        h = self._h
        n = lb.size
        start = h.getNumCol()
        h.addVars(n, np.clip(lb, -highspy.kHighsInf, None), np.clip(ub, None, highspy.kHighsInf))
        idx = np.arange(start, start + n, dtype=np.int32)
        if np.any(cost):
            h.changeColsCost(n, idx, cost)
        if integer:
            self._integer = True
            h.changeColsIntegrality(n, idx, np.full(n, highspy.HighsVarType.kInteger))

    can_add_columns = True

    def _add_cols(self, A: sp.csc_matrix, lb, ub, cost):
        inf = highspy.kHighsInf
        self._h.addCols(A.shape[1], cost, np.clip(lb, -inf, None), np.clip(ub, None, inf), A.nnz,
                        A.indptr.astype(np.int32), A.indices.astype(np.int32), A.data)

    can_change_bounds = True

    def set_bounds(self, cols, lb, ub):
        cols = np.asarray(cols, dtype=np.int32)
        inf = highspy.kHighsInf
        self._h.changeColsBounds(cols.size, cols, np.clip(np.asarray(lb, dtype=np.float64), -inf, None),
                                 np.clip(np.asarray(ub, dtype=np.float64), None, inf))

    def basis(self):
        b = self._h.getBasis()
        return b if b.valid else None

    def set_basis(self, basis):
        if basis is not None:
            self._h.setBasis(basis)

    def column_duals(self):
        return self._duals("col_dual")

    def row_duals(self):
        return self._duals("row_dual")

    def _duals(self, name: str):
        sol = self._h.getSolution()
        return np.asarray(getattr(sol, name), dtype=np.float64) if sol.dual_valid else None

    def _add_rows(self, A: sp.csr_matrix, lo, hi):
        inf = highspy.kHighsInf
        self._h.addRows(A.shape[0], np.clip(lo, -inf, None), np.clip(hi, None, inf), A.nnz,
                        A.indptr.astype(np.int32), A.indices.astype(np.int32), A.data)

    def solve(self, retry: bool = True) -> SolveResult:
        h = self._h
        t0 = time.perf_counter()
        h.run()
        status = h.getModelStatus()
        retried = 0
        while retry and _status_name(status) == ERROR and not self._integer and retried < len(_RETRIES):
            if not self._retry(_RETRIES[retried], time.perf_counter() - t0):
                break
            retried += 1
            status = h.getModelStatus()
        elapsed = time.perf_counter() - t0
        name = _status_name(status)
        info = h.getInfo()
        x = obj = None
        if name in (OPTIMAL, FEASIBLE):
            x = np.asarray(h.getSolution().col_value, dtype=np.float64)
            obj = float(info.objective_function_value)
        iterations = int(info.simplex_iteration_count) + int(info.ipm_iteration_count)
        return SolveResult(status=name, objective=obj, x=x, solve_time=elapsed, solver=self.name,
                           version=self.version, options=self.settings(), iterations=iterations,
                           message=h.modelStatusToString(status) + (
                               f" (re-solved after a numerical failure: {_RETRIES[retried - 1][0]})" if retried else ""))

    def _retry(self, step: tuple[str, dict], spent: float) -> bool:
        """A re-solve from scratch after HiGHS's simplex gave up on a badly scaled LP ("excessive
        dual values": status Unknown, Not Set or Solve error), with HiGHS's own scaling, the costs
        brought to O(1) and the options of ``step``; False when no time is left for it."""
        h = self._h
        limit = self.options.time_limit
        if limit is not None and spent >= limit:
            return False
        cost = float(np.abs(np.asarray(h.getLp().col_cost_)).max(initial=0.0))
        changes = {"simplex_scale_strategy": 1, **step[1]}  # 1: HiGHS's default scaling
        if cost > 1.0:
            changes["user_objective_scale"] = -round(np.log2(cost))
        before = {key: _option(h, key) for key in changes}
        h.clearSolver()
        for key, value in changes.items():
            h.setOptionValue(key, value)
        self._apply_time_limit(None if limit is None else limit - spent)
        h.run()
        for key, value in before.items():  # later solves of this model run as the user asked
            h.setOptionValue(key, value)
        self._apply_time_limit(limit)
        return True


def _option(h, key: str):
    value = h.getOptionValue(key)
    return value[1] if isinstance(value, tuple) else value  # highspy >= 1.8 returns (status, value)


# The re-solves tried in turn after a numerical failure of an LP. Measured on ACAS Xu N2,9 shift
# LPs (35k columns, 52k rows): the scaled dual simplex turned one "Solve error" into a solution;
# on another only the primal simplex finished (31 s; the IPM, with or without crossover, and PDLP
# did not).
_RETRIES: tuple[tuple[str, dict], ...] = (
    ("dual simplex, rescaled", {"solver": "simplex", "simplex_strategy": 1}),
    ("primal simplex", {"solver": "simplex", "simplex_strategy": 4}),
)
