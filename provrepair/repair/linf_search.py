"""The L∞ bound of the repair LP as a parameter, searched in one dimension.

The APRNN objective ``‖δ‖_∞ + ‖δ‖_1 / n`` is usually an epigraph: a column ``s`` and one row
``|δ_i| <= s`` per parameter. Those rows make HiGHS's simplex crawl: on the zoo MLP's layer 1
(9,500 weights, 100 points) one solve takes ~25 s where the L1 LP alone takes ~2 s, and the L∞
term alone ~275 s, because the optimum holds thousands of deltas at the bound (degenerate).

With ``s`` fixed, the bound is a column bound (``p_i, q_i <= s``) and the LP is an L1 LP:
``f(s) = n·s + L1*(s)`` is convex and piecewise linear in ``s``, and the duals of the bounds at
each solve give a subgradient ``g = n + Σ reduced costs of the columns at the bound``. The same
dual is feasible for every ``s`` (``s`` only enters bounds), so each probe's tangent is a rigorous
lower bound on ``f``: the search below stops when the best probe is within ``rel_tol`` of the
lower envelope, i.e. its objective is provably within ``rel_tol`` of the LP optimum. Each probe is
a warm dual-simplex re-solve after a bound change.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from provrepair.solvers.base import ERROR


@dataclass
class Probe:
    s: float
    f: float  # the LP objective at bound s (includes the n·s term)
    g: float  # a subgradient of f at s
    peak: float  # the largest |δ| of the solution (<= s)
    result: Any  # the solve behind it


@dataclass
class Search:
    """The probes of one search and what it concluded."""

    probes: list[Probe]
    best: Probe | None
    lower_bound: float  # of the optimum over every s the LP allows
    status: str  # "optimal" (within rel_tol), "infeasible" (even at s_max), "stopped" (a probe failed
    # numerically after others: the best so far, ``lower_bound`` says how good), or the failing status
    lo: float = 0.0  # every s <= lo is infeasible


#: Probes one search may spend before it settles for the best so far.
MAX_PROBES = 60
#: The search's relative tolerance for the answer, and for a round of constraint generation that
#: will add rows anyway (its solution only picks the rows; the last round is searched to REL_TOL).
REL_TOL = 1e-7
ROUND_REL_TOL = 1e-4
#: A probe that fails numerically gets HiGHS's cold re-solves for at most this many times the
#: longest probe of the search so far.
RETRY_BUDGET = 3.0


def minimise(evaluate: Callable[[float], tuple[str, Probe | None]], s_start: float, s_max: float,
             rel_tol: float = REL_TOL, curvature: float | None = None, resume: Search | None = None) -> Search:
    """Minimise the convex ``f`` over ``s`` in (0, s_max].

    ``curvature`` (how fast the slope grows with ``s`` near the optimum, e.g. from the last
    search) turns the first probe's slope into a Newton step. ``resume``: an earlier search of
    the same ``f`` (to a looser tolerance), whose probes and infeasible bound still hold.

    ``evaluate(s)`` returns ``(status, probe)``: status "optimal" with its probe, or
    "infeasible" (every smaller ``s`` is infeasible too), or another status that ends the search.
    """
    probes: list[Probe] = [] if resume is None else list(resume.probes)
    lo = 0.0 if resume is None else resume.lo  # every s <= lo is infeasible
    k = len(probes)  # evaluations so far (infeasible ones of a resumed search aside)
    while True:
        best = _best(probes)
        bound = _lower_bound(probes, lo)
        if best is not None and (best.f - bound <= rel_tol * abs(best.f) or len(probes) >= MAX_PROBES):
            return Search(probes, best, bound, "optimal", lo)
        s = min(s_start, s_max) if k == 0 else _next(probes, lo, s_max, curvature, k)
        if best is not None and any(abs(p.s - s) <= 1e-12 * s for p in probes):  # no step left to take
            return Search(probes, best, bound, "optimal", lo)
        k += 1
        status, probe = evaluate(s)
        if status == "infeasible":
            if s >= s_max:
                return Search(probes, None, math.inf, "infeasible", lo)
            lo = max(lo, s)
        elif status != "optimal" or probe is None:
            if status == ERROR and probes:  # settle for the best probe; the bound says how far it may be
                return Search(probes, best, bound, "stopped", lo)
            return Search(probes, best, -math.inf, status, lo)
        else:
            probes.append(probe)


def _best(probes: list[Probe]) -> Probe | None:
    return min(probes, key=lambda p: p.f) if probes else None


def _split(probes: list[Probe]) -> tuple[Probe | None, Probe | None]:
    """The rightmost probe with a negative slope and the leftmost with a nonnegative one."""
    left = [p for p in probes if p.g < 0]
    right = [p for p in probes if p.g >= 0]
    return (max(left, key=lambda p: p.s) if left else None,
            min(right, key=lambda p: p.s) if right else None)


def _lower_bound(probes: list[Probe], lo: float) -> float:
    """min over s > lo of the largest tangent: the optimum is at least this."""
    left, right = _split(probes)
    if right is None:  # every tangent falls to the right; f is finite at s_max only
        return -math.inf
    if right.g == 0:
        return right.f
    if left is None:
        return right.f - right.g * (right.s - lo)
    s = _crossing(left, right)
    return left.f + left.g * (s - left.s)


def _crossing(left: Probe, right: Probe) -> float:
    return (right.f - left.f + left.g * left.s - right.g * right.s) / (left.g - right.g)


def _next(probes: list[Probe], lo: float, s_max: float, curvature: float | None, k: int) -> float:
    """Once the optimum is bracketed, Kelley's step and the slope's secant in turn: Kelley's lands
    on a kink of few pieces at once, the secant closes in on the slope's root where the pieces
    are many (a probe at 5-10 s on a CNN's layer: Kelley's alone crept up one side). Before
    that, a step towards the root of the slope (the secant of the two probes nearest it, or a
    Newton step with ``curvature``), at least ``_ratio(k)`` after ``k`` evaluations (5 %, 20 %,
    80 %, then halving/doubling: a search that starts at the last round's bound is usually near
    the optimum, the first one far from it), and never past the infeasible ``lo``."""
    left, right = _split(probes)
    if left is not None and right is not None:
        if k % 2 or right.g <= left.g:
            return _crossing(left, right)
        width = right.s - left.s
        root = left.s - left.g * width / (right.g - left.g)
        return min(max(root, left.s + 0.1 * width), right.s - 0.1 * width)
    if right is not None and right.peak < right.s * (1 - 1e-9):  # its solution is feasible at its own peak
        return right.peak
    r = _ratio(k)
    if right is None:  # all probes infeasible or sloping down: the optimum lies to the right
        base = lo if left is None else max(lo, left.s)
        root = None if left is None else _slope_root(probes, left, curvature)
        return min(s_max, 2.0 * base, max(base * r, root if root is not None else 0.0))
    root = _slope_root(probes, right, curvature)
    s = max(right.s / 2.0, min(right.s / r, root if root is not None else math.inf))
    return max(s, math.sqrt(lo * right.s)) if lo > 0 else s


def _slope_root(probes: list[Probe], last: Probe, curvature: float | None) -> float | None:
    """Where the slope would reach zero: by the secant through the two probes nearest the
    optimum on one side, else by ``curvature``; None without either."""
    side = sorted((p for p in probes if (p.g < 0) == (last.g < 0) and p is not last),
                  key=lambda p: abs(p.s - last.s))
    root = None
    if side and abs(side[0].g - last.g) > 1e-9 * abs(last.g):
        other = side[0]
        root = last.s - last.g * (last.s - other.s) / (last.g - other.g)
    elif curvature and curvature > 0:
        root = last.s - last.g / curvature
    if root is None or (root - last.s) * last.g >= 0:  # the root lies against the slope: no step
        return None
    return root


def _ratio(k: int) -> float:
    return min(2.0, 1.0 + 0.05 * 4.0 ** max(k - 1, 0))


def _curvature(probes: list[Probe]) -> float | None:
    """The slope's growth across the final bracket (None if the search did not bracket)."""
    left, right = _split(probes)
    if left is None or right is None or right.s <= left.s:
        return None
    return (right.g - left.g) / (right.s - left.s)


class BoundSearch:
    """The search on a live backend: ``s`` is a fixed column (cost ``cost_s``), the delta columns
    ``delta_cols()`` (p and q) are bounded by ``min(s, cap)``, and no L∞ row exists.
    ``solve(time_left)`` runs one search and leaves the backend at its best probe."""

    def __init__(self, backend, s_col: int, cost_s: float, cap: float, delta_cols: Callable[[], Any]):
        self.backend, self.s_col, self.cost_s, self.cap = backend, int(s_col), float(cost_s), float(cap)
        self.delta_cols = delta_cols
        self.s = self.cap  # the bound the backend holds now; the next search starts here
        self.last: Search | None = None
        self.curvature: float | None = None

    def bound(self) -> float:
        """The upper bound of a delta column at the current ``s`` (columns added later get it too)."""
        return min(self.s, self.cap)

    def _evaluate(self, s: float, deadline: float | None, spent: list) -> tuple[str, Probe | None]:
        start = self.backend.basis()
        cols = self.delta_cols()
        res = self._solve_at(s, cols, deadline, spent, retry=self.last is None and not spent)
        if res.status == ERROR:
            # a numerical failure on a warm probe (HiGHS: "Unknown" near the feasibility edge): once
            # more from the basis before it, then a hair to the side, then HiGHS's cold re-solves,
            # on a budget where the search has a probe to settle for (they once took >200 s on the
            # zoo MLP's layer 0), else as long as the deadline allows (nothing else can go on)
            budget = any(r.optimal for r in spent)
            beside = s * (1 + 1e-3) if s * (1 + 1e-3) <= self.cap else s * (1 - 1e-3)
            for s_try, retry in ((s, False), (beside, False), (s, True)):
                self.backend.set_basis(start)
                res = self._solve_at(s_try, cols, deadline, spent, retry, budget)
                if res.status != ERROR:
                    s = s_try
                    break
        if not res.optimal:
            # HiGHS re-solves slowly from the basis that proved infeasibility (once >300 s where the
            # basis before it took 1 s): the next probe starts from the basis this one started from
            self.backend.set_basis(start)
            return res.status, None
        g = self.cost_s
        rc = self.backend.column_duals()
        if s < self.cap and rc is not None:  # at-upper columns have reduced cost <= 0, the others >= 0 or 0
            g += float(np.minimum(rc[cols], 0.0).sum())
        return "optimal", Probe(s, float(res.objective), g, float(res.x[cols].max(initial=0.0)), res)

    def _solve_at(self, s: float, cols, deadline: float | None, spent: list, retry: bool, budget: bool = False):
        """One solve with the delta columns ``cols`` bounded by ``min(s, cap)``; ``budget``: within
        ``RETRY_BUDGET`` times the longest probe so far (at least a second)."""
        self.s = s
        self.backend.set_bounds(cols, np.zeros(cols.size), np.full(cols.size, self.bound()))
        self.backend.set_bounds(np.array([self.s_col]), np.array([s]), np.array([s]))
        limit = None if deadline is None else max(deadline - time.perf_counter(), 1e-3)
        if budget:
            cap = max(1.0, RETRY_BUDGET * max((r.solve_time for r in spent), default=0.0))
            limit = cap if limit is None else min(limit, cap)
        self.backend.set_time_limit(limit)
        res = self.backend.solve(retry=retry)
        spent.append(res)
        if budget and res.status not in ("optimal", "infeasible", ERROR):
            res = dataclasses.replace(res, status=ERROR)  # the budget ran out: still the numerical failure
        return res

    def solve(self, time_left: float | None = None, rel_tol: float = REL_TOL, resume: bool = False):
        """One search from the current ``s`` (``resume``: carrying on the last one, the LP being
        unchanged since); returns the best probe's solve result (``solve_time`` and
        ``iterations`` summed over this call's probes)."""
        deadline = None if time_left is None else time.perf_counter() + time_left
        spent: list = []
        search = self.last = minimise(lambda s: self._evaluate(s, deadline, spent), self.s, self.cap, rel_tol,
                                      self.curvature, self.last if resume else None)
        self.curvature = _curvature(search.probes) or self.curvature
        if search.status in ("optimal", "stopped") and search.best is not None:
            final = search.best.result
            if search.best.s != self.s:  # put the backend back at the best probe (warm: no pivots)
                self._evaluate(search.best.s, deadline, spent)
                final = spent[-1] if spent[-1].optimal else final
        else:
            final = spent[-1]
        return dataclasses.replace(final, solve_time=sum(r.solve_time for r in spent),
                                   iterations=sum(r.iterations or 0 for r in spent))

    def summary(self) -> dict:
        """The last search, for a round's record: probes, the bound it settled on, its gap."""
        if self.last is None:
            return {}
        best = self.last.best
        gap = None if best is None or not math.isfinite(self.last.lower_bound) else best.f - self.last.lower_bound
        return {"linf_probes": len(self.last.probes), "linf_bound": None if best is None else best.s,
                "linf_gap": gap}
