"""HiGHS's simplex sometimes gives up on a badly scaled LP (status Unknown / Solve error); the
backend re-solves once from scratch with HiGHS's scaling and O(1) costs before reporting an error."""

import numpy as np
import pytest

import solvers

highspy = pytest.importorskip("highspy")


class _FailsOnce:
    """A Highs stand-in whose first run ends in a numerical failure; the rest is the real solver."""

    def __init__(self, real, fail: bool = True):
        self._real = real
        self.fail = fail
        self.runs = 0
        self.options = {}

    def run(self):
        self.runs += 1
        return self._real.run()

    def getModelStatus(self):
        if self.fail and self.runs == 1:
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
    b._h = _FailsOnce(b._h)
    res = b.solve()
    assert res.status == "optimal"
    np.testing.assert_allclose(res.x, [0.0, 1.0], atol=1e-9)
    assert res.objective == pytest.approx(1.0)  # reported in the LP's own units
    assert "re-solved after a numerical failure" in res.message
    assert b._h.runs == 2
    assert b._h.options["simplex_scale_strategy"] == 1
    assert b._h.options["user_objective_scale"] == -10  # 1000 -> about 1


def test_a_clean_solve_runs_once():
    b = _small_lp()
    b._h = _FailsOnce(b._h, fail=False)
    res = b.solve()
    assert res.status == "optimal" and "re-solved" not in res.message
    assert b._h.runs == 1 and "user_objective_scale" not in b._h.options
