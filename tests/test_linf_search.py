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
