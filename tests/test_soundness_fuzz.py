"""A fast slice of benchmarks/soundness_fuzz.py: near-boundary regions against an independent MILP.

Why in the unit suite: a false "certified" or "violated" is the one defect a verifier must never
ship; the full 10,000-case run is a benchmark, this slice catches regressions on every test run.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "soundness_fuzz.py"
GROUPS = range(40)  # 8 cases each: 320 cases, about 20-30 s on one core


@pytest.fixture(scope="module")
def fuzz():
    spec = importlib.util.spec_from_file_location("soundness_fuzz", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["soundness_fuzz"] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


def test_reference_forward_matches_torch(fuzz):
    """The reference's own network extraction (dense conv, pooling groups) is the float64 torch net."""
    rng = np.random.default_rng(5)
    for kind in ("mlp", "cnn", "cnn", "cnn"):
        net, shape = fuzz.make_net(rng, kind)
        ref = fuzz.RefNet.of(net, shape)
        X = rng.standard_normal((16, ref.n_in))
        with torch.no_grad():
            want = net.double()(torch.from_numpy(X).reshape(16, *shape)).numpy()
        assert np.abs(ref.forward(X) - want).max() < 1e-12


def test_reference_milp_is_exact_on_a_designed_case(fuzz):
    """The MILP's witness and dual bound bracket the minimum tightly, so margins of 1e-9 are meaningful."""
    highs = fuzz._highs()
    _, _, _, cases = fuzz.make_group(3, 0, highs)
    for c in cases:
        assert c.ref_status == "Optimal"
        assert c.ref_upper - c.ref_lower <= max(1e-8, 0.25 * c.delta)
        assert (c.ref_upper < 0) == (c.designed == "unsafe")


def test_polytope_membership_check(fuzz):
    V = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert fuzz.polytope_residual(V, np.array([0.25, 0.25]))[0] < 1e-15
    res, sep = fuzz.polytope_residual(V, np.array([0.5 + 6e-8, 0.5]))
    assert res > fuzz.MEMBERSHIP_TOL and sep > 0


def test_fuzz_slice_has_no_false_verdicts(fuzz):
    torch.set_num_threads(1)
    records = fuzz.run_groups(0, GROUPS)
    summary = fuzz.summarise(records)["total"]
    bad = [f"group={r['group']} case={r['case']} {r['net']}/{r['region']} delta={r['delta']:.3g}: {r['false']}"
           for r in records if r["false"]]
    assert summary["cases"] == 8 * len(GROUPS)
    assert summary["false_certified"] == 0 and summary["false_violated"] == 0, "\n".join(bad)
    assert not [r for r in records if "reference_inconsistent" in r]


def test_a_violation_below_the_solver_tolerance_is_never_certified(fuzz):
    """Seed 0, group 132, case 1 of the full fuzz: a box unsafe by 5.7e-8 whose MILP on a tiny
    sub-box HiGHS called infeasible, so the split search said certified. Regression for the
    widened unsafe set in certify/milp.py."""
    import provrepair

    net, ref, shape, cases = fuzz.make_group(0, 132, fuzz._highs())
    case = cases[1]
    assert case.designed == "unsafe" and case.ref_upper <= 0  # the reference's witness violates
    for method in ("auto", "milp"):
        verdict = provrepair.certify(net, fuzz._spec([case], shape), method=method, timeout=20).verdicts[0]
        assert verdict.status != "certified", (method, verdict.reason)
