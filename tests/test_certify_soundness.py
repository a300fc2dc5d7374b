"""Soundness of the certification verdicts (issue 20): a MILP counterexample counts only once it
lies exactly in the region; a float32 point certificate holds in batches and one point at a time;
a failed point certificate names the check that failed."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from provrepair import solvers
from provrepair.certify import certify_points, certify_regions
from provrepair.certify.bounds import BoundPropagator, InputSet
from provrepair.certify.milp import CERTIFIED, UNKNOWN, VIOLATED, complete_check
from provrepair.models import ModelMeta, set_meta
from provrepair.repair import provable
from provrepair.repair.options import PointRepairOptions
from provrepair.repair.protocol import NOT_CERTIFIED
from provrepair.repair.registry import get_repairer
from provrepair.specs import HPolytope, OutputProperty, PointSpec, RegionSpec, VPolytope
from provrepair.solvers.base import FEASIBLE, SolveResult

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------- defect 1: MILP counterexamples

TRIANGLE = np.array([[1.0, 1.0], [2.0, 1.0], [1.0, 2.0]])  # x0 + x1 <= 3 on it, = 3 on one edge
SAFE_BY = 5e-10  # the unsafe set y0 >= 3 + SAFE_BY: below the bounds' tolerance, so the MILP decides


def _sum_net():
    """y0 = relu(x0 + x1), y1 = 0: the largest y0 on TRIANGLE is exactly 3."""
    net = nn.Sequential(nn.Linear(2, 1), nn.ReLU(), nn.Linear(1, 2)).double().eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 1.0]]))
        net[0].bias.zero_()
        net[2].weight.copy_(torch.tensor([[1.0], [0.0]]))
        net[2].bias.zero_()
    return net


G_UNSAFE, H_UNSAFE = np.array([[-1.0, 0.0]]), np.array([-(3.0 + SAFE_BY)])


def _tolerant_solver(monkeypatch, head):
    """Every solve reports a feasible point whose first variables are ``head``: what a solver that
    meets the region's rows only within its feasibility tolerance (1e-7) returns."""
    real = solvers.create

    def create(*args, **kw):
        backend = real(*args, **kw)

        def solve():
            x = np.zeros(backend.n_vars)
            x[: len(head)] = head
            return SolveResult(FEASIBLE, 0.0, x, 0.0, backend.name, backend.version, {})

        backend.solve = solve
        return backend

    monkeypatch.setattr(solvers, "create", create)


def _barycentric(x):
    """The weights of x in TRIANGLE (exact for this affine basis up to rounding)."""
    M = np.vstack([TRIANGLE.T, np.ones(3)])
    return np.linalg.solve(M, np.r_[x, 1.0])


@pytest.mark.parametrize("weights", [
    [0.0, 0.5 * (1 + 1e-7), 0.5 * (1 + 1e-7)],  # sum 1 + 1e-7: x just beyond the edge x0 + x1 = 3
    [-1e-7, 0.5, 0.5 + 1e-7],  # a weight -1e-7
], ids=["sum", "negative"])
def test_a_milp_point_outside_a_v_polytope_is_not_a_counterexample(monkeypatch, weights):
    net = _sum_net()
    prop = BoundPropagator(net, (2,))
    inp = InputSet.polytopes([TRIANGLE])
    pre = prop.bounds(inp, G_UNSAFE, method="crown").pre
    raw = TRIANGLE.T @ np.asarray(weights)
    assert raw.sum() > 3.0 + SAFE_BY  # the solver's own point is outside and unsafe
    _tolerant_solver(monkeypatch, weights)
    out = complete_check(net, prop, inp, pre, G_UNSAFE, H_UNSAFE)
    assert out.status == UNKNOWN, (out.status, out.counterexample)
    assert "region" in out.reason


def test_the_whole_ladder_does_not_call_a_safe_v_polytope_violated(monkeypatch):
    net = _sum_net().float()
    spec = RegionSpec([VPolytope(TRIANGLE)], [OutputProperty.unsafe([(G_UNSAFE, H_UNSAFE)])])
    _tolerant_solver(monkeypatch, [0.0, 0.5 * (1 + 1e-7), 0.5 * (1 + 1e-7)])
    (verdict,) = certify_regions(net, spec, method="milp").verdicts
    assert verdict.status != VIOLATED, verdict.to_dict()


def test_a_true_v_polytope_counterexample_is_inside_and_unsafe():
    net = _sum_net()
    prop = BoundPropagator(net, (2,))
    inp = InputSet.polytopes([TRIANGLE])
    h = np.array([-2.9])
    out = complete_check(net, prop, inp, prop.bounds(inp, G_UNSAFE, method="crown").pre, G_UNSAFE, h)
    assert out.status == VIOLATED
    lam = _barycentric(out.counterexample)
    assert np.all(lam >= -1e-15) and abs(lam.sum() - 1) < 1e-15
    assert out.output[0] >= 2.9
    safe = complete_check(net, prop, inp, prop.bounds(inp, G_UNSAFE, method="crown").pre, G_UNSAFE, H_UNSAFE)
    assert safe.status in (CERTIFIED, UNKNOWN)  # never violated


def test_a_milp_point_outside_an_h_polytope_is_moved_inside_before_it_counts(monkeypatch):
    """Box [0, 2]^2 with x0 + x1 <= 3: the solver's (1.5, 1.5 + 1e-7) is outside both the row and,
    for the second input, nothing else; whatever is reported must satisfy the region exactly."""
    net = _sum_net()
    region = HPolytope(np.array([[1.0, 1.0]]), np.array([3.0]), np.zeros(2), np.full(2, 2.0))
    prop = BoundPropagator(net, (2,))
    inp = InputSet(torch.zeros(1, 2, dtype=torch.float64), torch.full((1, 2), 2.0, dtype=torch.float64))
    pre = prop.bounds(inp, G_UNSAFE, method="crown").pre
    _tolerant_solver(monkeypatch, [1.5, 1.5 + 1e-7])
    out = complete_check(net, prop, inp, pre, G_UNSAFE, H_UNSAFE, h_rows=(region.A, region.b),
                         interior=np.array([1.0, 1.0]))
    assert out.status != VIOLATED or region.contains(out.counterexample)
    assert out.status == UNKNOWN


# ------------------------------------------------------------- defect 2: float32 and the batch


def _float32_net(n_in=256):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(n_in, 16), nn.ReLU(), nn.Linear(16, 2)).eval()


def test_a_point_that_fails_in_float32_alone_is_not_certified():
    """A real model and a real point whose float32 output is below a bound in a batch of 512 and
    above it alone (BLAS orders the sums differently); the float64 output is below it too."""
    net = _float32_net()
    x = torch.randn(512, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        batched = net(x)[:, 0].double()
        alone = torch.cat([net(x[i:i + 1]) for i in range(len(x))])[:, 0].double()
        exact = copy.deepcopy(net).double()(x.double())[:, 0]
    worse_alone = torch.nonzero(alone > torch.maximum(batched, exact)).flatten()
    if worse_alone.numel() == 0:
        pytest.skip("this BLAS gives the same float32 sums in a batch and alone")
    i = int(worse_alone[0])
    bound = float((torch.maximum(batched[i], exact[i]) + alone[i]) / 2)  # y0 <= bound
    A, b = np.zeros((len(x), 1, 2)), np.ones((len(x), 1))  # 0 <= 1 for every other point
    A[i, 0, 0], b[i, 0] = 1.0, bound
    spec = PointSpec.from_arrays(x.double().numpy(), A=A, b=b)
    cert = certify_points(net, spec, batch_size=512)
    assert cert.n_passed == spec.n_points  # float64 holds ...
    assert not cert.certified and list(cert.float32_failed) == [i]  # ... but the model run alone fails
    assert cert.float32_margins[i] < 0


class _BatchSensitive(nn.Module):
    """Rounds its first output one float32 ulp up when it sees a single point: a stand-in for a
    kernel whose rounding depends on the batch size."""

    def forward(self, x):
        if x.dtype == torch.float32 and x.shape[0] == 1:
            x = x.clone()
            x[:, 0] = torch.nextafter(x[:, 0], torch.full_like(x[:, 0], np.inf))
        return x


def test_the_float32_check_runs_each_point_alone_as_well():
    net = nn.Sequential(nn.Linear(2, 2), _BatchSensitive()).eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(2))
        net[0].bias.zero_()
    # y = x; the label 1 needs y0 < y1, which holds (barely) in a batch and fails alone
    x1 = float(np.float32(0.5))
    x0 = float(np.nextafter(np.float32(x1), np.float32(0)))
    spec = PointSpec.from_arrays(np.array([[x0, x1], [0.0, 1.0]]), labels=np.array([1, 1]))
    cert = certify_points(net, spec)
    assert cert.n_passed == 2
    assert not cert.certified and list(cert.float32_failed) == [0]


# ------------------------------------------------------------- defect 3: the failure message


def _repair_problem():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    set_meta(net, ModelMeta(input_shape=(4,)))
    x = np.random.default_rng(0).normal(size=(5, 4))
    with torch.no_grad():
        pred = net(torch.tensor(x, dtype=torch.float32)).argmax(1).numpy()
    return net, PointSpec.from_arrays(x, labels=(pred + 1) % 3)


@pytest.mark.parametrize("fail64, fail32", [(0, 2), (1, 0), (1, 3)])
def test_a_not_certified_point_repair_names_the_failing_checks(monkeypatch, fail64, fail32):
    real = provable.certify_points

    def certify(model, spec, **kw):  # the real certificate, with the chosen checks failing
        cert = real(model, spec, **kw)
        cert.n_passed = cert.n_points - fail64
        cert.failed = np.arange(fail64)
        cert.float32_failed = np.arange(fail32)
        cert.float32_agrees = fail32 == 0
        cert.certified = False
        return cert

    monkeypatch.setattr(provable, "certify_points", certify)
    net, spec = _repair_problem()
    result = get_repairer("aprnn").run(net, spec, PointRepairOptions(layer=-1))
    assert result.status == NOT_CERTIFIED
    msg = result.message
    assert "0 point" not in msg
    assert (f"{fail64} point(s) fail the float64 check" in msg) == bool(fail64)
    assert (f"{fail32} point(s) fail the float32 check" in msg) == bool(fail32)
