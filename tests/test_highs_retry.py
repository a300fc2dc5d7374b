"""HiGHS's simplex sometimes gives up on a badly scaled LP (status Unknown / Solve error); the
backend re-solves from scratch with HiGHS's scaling and O(1) costs, first with the dual then with
the primal simplex, before reporting an error, and leaves the user's options as they were."""

import numpy as np
import pytest

from provrepair import solvers

highspy = pytest.importorskip("highspy")


class _Fails:
    """A Highs stand-in whose first ``fail`` runs end in a numerical failure; the rest is the real
    solver. ``at_run[i]`` holds the options set before run i + 1."""

    def __init__(self, real, fail: int = 1):
        self._real = real
        self.fail = fail
        self.runs = 0
        self.options = {}
        self.at_run = []

    def run(self):
        self.at_run.append(dict(self.options))
        self.runs += 1
        return self._real.run()

    def getModelStatus(self):
        if self.runs <= self.fail:
            return highspy.HighsModelStatus.kSolveError
        return self._real.getModelStatus()

    def setOptionValue(self, key, value):
        self.options[key] = value
        return self._real.setOptionValue(key, value)

    def __getattr__(self, name):
        return getattr(self._real, name)


def _small_lp(**kw):
    # min 1000 x + y  s.t.  x + y >= 1,  0 <= x, y <= 10  ->  x = 0, y = 1
    b = solvers.create("highs", **kw)
    b.add_variables(1, lb=0.0, ub=10.0, cost=1000.0)
    b.add_variables(1, lb=0.0, ub=10.0, cost=1.0)
    b.add_rows(np.array([[1.0, 1.0]]), lo=1.0)
    return b


def test_a_numerical_failure_is_re_solved_once_with_scaled_costs():
    b = _small_lp(extra={"simplex_scale_strategy": 0})
    b._h = _Fails(b._h)
    res = b.solve()
    assert res.status == "optimal"
    np.testing.assert_allclose(res.x, [0.0, 1.0], atol=1e-9)
    assert res.objective == pytest.approx(1.0)  # reported in the LP's own units
    assert "re-solved after a numerical failure: dual simplex" in res.message
    assert b._h.runs == 2
    retry = b._h.at_run[1]
    assert retry["simplex_scale_strategy"] == 1 and retry["simplex_strategy"] == 1
    assert retry["user_objective_scale"] == -10  # 1000 -> about 1
    # afterwards the model runs with the options the user gave
    assert b._h.options["simplex_scale_strategy"] == 0 and b._h.options["user_objective_scale"] == 0


def test_a_second_failure_falls_back_to_the_primal_simplex():
    b = _small_lp()
    b._h = _Fails(b._h, fail=2)
    res = b.solve()
    assert res.status == "optimal" and "primal simplex" in res.message
    assert b._h.runs == 3 and b._h.at_run[2]["simplex_strategy"] == 4
    np.testing.assert_allclose(res.x, [0.0, 1.0], atol=1e-9)


def test_an_lp_that_keeps_failing_is_reported_as_an_error():
    b = _small_lp()
    b._h = _Fails(b._h, fail=10)
    res = b.solve()
    assert res.status == "error" and res.x is None
    assert b._h.runs == 3  # the first solve and the two re-solves, no more


def test_a_clean_solve_runs_once():
    b = _small_lp()
    b._h = _Fails(b._h, fail=0)
    res = b.solve()
    assert res.status == "optimal" and "re-solved" not in res.message
    assert b._h.runs == 1 and "user_objective_scale" not in b._h.options
