"""The repairer marks its LP ``prescaled``; each backend decides what that means. HiGHS turns
its simplex scaling off (and back on for a re-solve after a numerical failure), and results
record both the hint and the setting it became."""

import numpy as np
import pytest

from provrepair import solvers

highspy = pytest.importorskip("highspy")


def _option(h, key):
    value = h.getOptionValue(key)
    return value[1] if isinstance(value, tuple) else value


def _solve(**kw):
    b = solvers.create("highs", **kw)
    b.add_variables(2, lb=0.0, ub=10.0, cost=[1.0, 2.0])
    b.add_rows(np.array([[1.0, 1.0]]), lo=1.0)
    return b, b.solve()


def test_prescaled_turns_highs_scaling_off_and_is_recorded():
    b, res = _solve(prescaled=True)
    assert res.optimal and _option(b._h, "simplex_scale_strategy") == 0
    assert res.options["prescaled"] is True and res.options["simplex_scale_strategy"] == 0


def test_without_the_hint_highs_keeps_its_scaling():
    b, res = _solve()
    assert _option(b._h, "simplex_scale_strategy") != 0
    assert res.options["prescaled"] is False and "simplex_scale_strategy" not in res.options


def test_extra_options_override_the_hint():
    b, res = _solve(prescaled=True, extra={"simplex_scale_strategy": 2})
    assert _option(b._h, "simplex_scale_strategy") == 2 and res.options["simplex_scale_strategy"] == 2


def test_the_point_repairer_names_no_solver_setting():
    import inspect

    from provrepair.repair import aprnn, polytope
    for mod in (aprnn, polytope):
        src = inspect.getsource(mod)
        assert "simplex_scale_strategy" not in src and '"highs"' not in src


class _FailsOnce:
    """The real Highs, except that the first run ends in a numerical failure."""

    def __init__(self, real):
        self._real, self.runs, self.scaling = real, 0, []

    def run(self):
        self.runs += 1
        self.scaling.append(_option(self._real, "simplex_scale_strategy"))
        return self._real.run()

    def getModelStatus(self):
        return highspy.HighsModelStatus.kSolveError if self.runs == 1 else self._real.getModelStatus()

    def __getattr__(self, name):
        return getattr(self._real, name)


def test_the_retry_restores_scaling_for_one_solve_only():
    b = solvers.create("highs", prescaled=True)
    b.add_variables(2, lb=0.0, ub=10.0, cost=[1.0, 2.0])
    b.add_rows(np.array([[1.0, 1.0]]), lo=1.0)
    b._h = _FailsOnce(b._h)
    res = b.solve()
    assert res.optimal and "re-solved" in res.message
    assert b._h.scaling == [0, 1] and _option(b._h, "simplex_scale_strategy") == 0
