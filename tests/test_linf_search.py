"""The L∞ bound searched in one dimension (repair/linf_search.py) gives the LP optimum that the
epigraph rows give, and its lower bounds are valid."""

from __future__ import annotations

import math

import numpy as np
import pytest

from provrepair.repair.linf_search import Probe, minimise
from test_aprnn import _random_mlp, _repair, _wrong_points


def _convex(pieces, s_min, n=10.0):
    """f(s) = n s + max_j (a_j + b_j s) for s >= s_min (infeasible below), with a subgradient."""
    calls = []

    def evaluate(s):
        calls.append(s)
        if s < s_min:
            return "infeasible", None
        vals = [a + b * s for a, b in pieces]
        j = int(np.argmax(vals))
        f = n * s + vals[j]
        return "optimal", Probe(s, f, n + pieces[j][1], s, None)

    def true_min(s_max):
        grid = np.concatenate([[s_min, s_max], [(a2 - a1) / (b1 - b2) for (a1, b1) in pieces for (a2, b2) in pieces
                                               if b1 != b2]])
        grid = grid[(grid >= s_min) & (grid <= s_max)]
        return min(n * s + max(a + b * s for a, b in pieces) for s in grid)

    return evaluate, calls, true_min


@pytest.mark.parametrize("s_min", [0.0, 0.02, 0.35])
@pytest.mark.parametrize("start", [3.0, 0.05, 0.4])
def test_search_finds_the_minimum_of_a_piecewise_linear_convex_function(s_min, start):
    pieces = [(1.0 / (k + 1), -30.0 * (1 - k / 12)) for k in range(12)]  # L1*(s): falling, convex
    evaluate, calls, true_min = _convex(pieces, s_min)
    search = minimise(evaluate, start, 3.0, rel_tol=1e-9)
    best = true_min(3.0)
    assert search.status == "optimal"
    assert search.best.f == pytest.approx(best, rel=1e-8)
    assert search.lower_bound <= best + 1e-12  # a valid bound: never above the optimum
    assert len(calls) < 40


def test_search_reports_an_lp_infeasible_at_every_bound():
    evaluate, calls, _ = _convex([(0.0, -1.0)], s_min=5.0)
    search = minimise(evaluate, 3.0, 3.0)
    assert search.status == "infeasible" and search.best is None and math.isinf(search.lower_bound)


def test_search_stops_on_a_failing_solve():
    search = minimise(lambda s: ("time_limit", None), 1.0, 3.0)
    assert search.status == "time_limit" and search.best is None


@pytest.mark.parametrize("layer", [0, 1, 2])
@pytest.mark.parametrize("objective", ["linf+l1", "linf"])
def test_bound_search_gives_the_epigraph_lps_optimum(layer, objective):
    net = _random_mlp(5, sizes=(6, 16, 16, 10))
    spec = _wrong_points(net, 30, 6, 6)
    searched = _repair(net, spec, layer=layer, objective=objective, linf="search")
    rows = _repair(net, spec, layer=layer, objective=objective, linf="rows")
    assert searched.status == rows.status
    if rows.status != "certified":
        return
    assert searched.solver["objective"] == pytest.approx(rows.solver["objective"], rel=1e-6)
    assert any(r.get("linf_probes", 0) > 1 for r in searched.lp["rounds"])  # the search ran
    assert searched.lp["final"]["rows"] < rows.lp["final"]["rows"]  # without the epigraph rows


def test_an_unknown_linf_mode_is_refused():
    from provrepair.errors import ProvRepairError
    from provrepair.repair.options import PointRepairOptions

    with pytest.raises(ProvRepairError, match="linf"):
        PointRepairOptions(linf="bisect").validate()


@pytest.mark.parametrize("layer, searched", [(0, False), (1, True), (2, False)])
def test_auto_searches_only_where_no_pattern_after_the_layer_needs_rows(layer, searched):
    # layer 1 feeds the output layer through the ReLU on u (a bound): the MLP case the search wins;
    # layer 0 has a ReLU after u that needs rows; layer 2 is the last layer
    net = _random_mlp(5, sizes=(6, 16, 16, 10))
    res = _repair(net, _wrong_points(net, 30, 6, 6), layer=layer)
    assert any("linf_probes" in r for r in res.lp["rounds"]) == searched


def test_a_resumed_search_keeps_its_probes_and_tightens_the_answer():
    # a loose round's search, then the same LP searched on to a tight tolerance: no probe is repeated
    pieces = [(2.0 / t, -1.0 / t ** 2) for t in np.geomspace(0.01, 3.0, 400)]  # tangents of 1/s: smooth-ish
    evaluate, calls, true_min = _convex(pieces, 0.02)
    loose = minimise(evaluate, 3.0, 3.0, rel_tol=1e-2)
    first = list(calls)
    tight = minimise(evaluate, 3.0, 3.0, rel_tol=1e-9, resume=loose)
    assert tight.best.f == pytest.approx(true_min(3.0), rel=1e-8) and tight.lo == pytest.approx(loose.lo)
    assert loose.best.f - true_min(3.0) > 1e-9 * true_min(3.0)  # the loose search did stop early
    assert not set(calls[len(first):]) & set(first)
    done = minimise(evaluate, 3.0, 3.0, rel_tol=1e-2, resume=loose)  # already within tolerance: no solve
    assert len(calls) == len(first) + len(tight.probes) - len(loose.probes) and done.best is loose.best


def test_a_numerical_failure_after_some_probes_settles_for_the_best_with_a_valid_bound():
    pieces = [(1.0 / (k + 1), -30.0 * (1 - k / 12)) for k in range(12)]
    evaluate, calls, true_min = _convex(pieces, 0.0)
    failing = lambda s: ("error", None) if len(calls) >= 4 else evaluate(s)  # noqa: E731
    search = minimise(failing, 3.0, 3.0, rel_tol=1e-9)
    assert search.status == "stopped" and search.best is not None and len(search.probes) == 4
    assert search.lower_bound <= true_min(3.0) + 1e-12


class _FlakyBackend:
    """A one-column stand-in for the HiGHS model: f(s) = cost·s + L1*(s) from ``pieces``; a warm
    solve at a bound in ``bad`` fails numerically ("error") however often it is retried from a basis."""

    def __init__(self, pieces, bad, cost=10.0):
        self.pieces, self.bad, self.cost, self.ub, self.solves = pieces, bad, cost, None, []

    def set_bounds(self, cols, lb, ub):
        if cols[0] == 0:
            self.ub = float(ub[0])

    def set_time_limit(self, seconds):
        pass

    def basis(self):
        return "basis"

    def set_basis(self, basis):
        pass

    def solve(self, retry=True):
        from provrepair.solvers.base import SolveResult

        s = self.ub
        self.solves.append((s, retry))
        if any(abs(s - b) < 1e-12 for b in self.bad) and not retry:
            return SolveResult(status="error", objective=None, x=None, solve_time=0.01, solver="fake",
                               version="0", options={})
        vals = [a + b * s for a, b in self.pieces]
        self.slope = self.pieces[int(np.argmax(vals))][1]
        return SolveResult(status="optimal", objective=self.cost * s + max(vals), x=np.array([s, s]),
                           solve_time=0.01, solver="fake", version="0", options={})

    def column_duals(self):
        return np.array([self.slope, 0.0])


def test_a_probe_that_fails_numerically_is_retried_a_hair_to_the_side_before_the_cold_resolve():
    from provrepair.repair.linf_search import BoundSearch

    pieces = [(1.0 / (k + 1), -30.0 * (1 - k / 12)) for k in range(12)]
    backend = _FlakyBackend(pieces, bad=[3.0 / 7])
    search = BoundSearch(backend, 1, backend.cost, 3.0, lambda: np.array([0]))
    spent: list = []
    assert search._evaluate(3.0, None, spent)[0] == "optimal"  # the search's first solve may go cold
    status, probe = search._evaluate(3.0 / 7, None, spent)
    assert status == "optimal" and probe.s == pytest.approx(3.0 / 7 * 1.001)  # moved, not cold-solved
    assert [r for _, r in backend.solves] == [True, False, False, False]  # warm, from the basis, to the side
    backend.bad = [0.5, 0.5005]  # failing on both sides of the hair: HiGHS's cold re-solve, last
    status, probe = search._evaluate(0.5, None, spent)
    assert status == "optimal" and probe.s == 0.5 and [r for _, r in backend.solves[-4:]] == [False] * 3 + [True]
