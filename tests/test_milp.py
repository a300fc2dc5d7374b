"""The complete MILP check (provrepair.certify.milp.complete_check) against exhaustive grids on
1-D and 2-D toy regions: boxes, a conv net with MaxPool, a V-polytope and an H-polytope."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from provrepair.certify.bounds import BoundPropagator, InputSet
from provrepair.certify.milp import (
    CERTIFIED,
    UNKNOWN,
    VIOLATED,
    affine_matrix,
    complete_check,
)
from provrepair.models import Normalize

pytestmark = pytest.mark.usefixtures("one_torch_thread")


GRID_1D = np.linspace(-1.0, 1.0, 2001)[:, None]
_A = np.linspace(-1.0, 1.0, 301)
GRID_2D = np.stack(np.meshgrid(_A, _A, indexing="ij"), -1).reshape(-1, 2)
MARGIN = 0.05  # thresholds this fraction of the grid's range away from its minimum


def _mlp(seed, n_in, width=8, n_out=2):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, n_out)).eval()


def _outputs(net, X):
    with torch.no_grad():
        return copy.deepcopy(net).double()(torch.from_numpy(np.ascontiguousarray(X))).reshape(len(X), -1).numpy()


def _check_against_grid(net, shape, inp, grid_x, G, *, h_rows=None, inside=None, methods=("ibp", "crown")):
    """For thresholds just below and just above the grid's minimum of max_r (G y)_r: the MILP says
    certified / violated, and every counterexample is in the region and really unsafe."""
    s = (_outputs(net, grid_x) @ G.T).max(1)
    rng_ = s.max() - s.min()
    assert rng_ > 1e-3
    prop = BoundPropagator(net, shape)
    for method in methods:
        pre = prop.bounds(inp, G, method=method).pre
        for sign in (-1, 1):
            h = np.full(G.shape[0], s.min() + sign * MARGIN * rng_)
            out = complete_check(net, prop, inp, pre, G, h, h_rows=h_rows)
            expected = VIOLATED if (s <= h[0]).any() else CERTIFIED
            assert expected == (VIOLATED if sign > 0 else CERTIFIED)
            assert out.status == expected, (method, sign, out.reason)
            assert out.size["binaries"] >= 0 and out.solver["name"] == "highs"
            if out.status == CERTIFIED:
                assert out.counterexample is None
                continue
            x = out.counterexample
            assert x.shape == shape
            flat = x.reshape(-1)
            assert np.all(flat >= inp.lower[0].reshape(-1).numpy()) and np.all(flat <= inp.upper[0].reshape(-1).numpy())
            if h_rows is not None:
                assert np.all(h_rows[0] @ flat <= h_rows[1])
            if inside is not None:
                assert inside(flat[None])[0]
            y = _outputs(net, x[None])[0]
            assert np.all(G @ y <= h), "the counterexample does not violate when re-evaluated"
            np.testing.assert_allclose(out.output, y, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("G", [[[1.0, -1.0]], [[-1.0, 1.0]]], ids=["y0-y1", "y1-y0"])
def test_1d_box_matches_dense_grid(seed, G):
    net = _mlp(seed, 1)
    inp = InputSet.box([[-1.0]], [[1.0]])
    _check_against_grid(net, (1,), inp, GRID_1D, np.array(G))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_2d_box_matches_dense_grid(seed):
    net = _mlp(seed, 2)
    inp = InputSet.box([[-1.0, -1.0]], [[1.0, 1.0]])
    _check_against_grid(net, (2,), inp, GRID_2D, np.array([[1.0, -1.0]]))


def test_2d_conjunction_of_two_rows_matches_dense_grid():
    """An unsafe disjunct with two rows (both must hold) and three outputs, through a Normalize layer."""
    torch.manual_seed(7)
    net = nn.Sequential(Normalize([0.1, -0.2], [0.5, 2.0]), nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    inp = InputSet.box([[-1.0, -1.0]], [[1.0, 1.0]])
    _check_against_grid(net, (2,), inp, GRID_2D, np.array([[1.0, -1.0, 0.0], [1.0, 0.0, -1.0]]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_maxpool_conv_net_on_a_2d_slice_matches_dense_grid(seed):
    """A conv net with ReLU, an overlapping padded MaxPool and a plain MaxPool; the region fixes all
    pixels but two, so a 301x301 grid covers it."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 2, 2), nn.ReLU(), nn.MaxPool2d(2, stride=1, padding=1),
                        nn.MaxPool2d(2, stride=1), nn.Flatten(), nn.Linear(2 * 3 * 3, 6), nn.ReLU(),
                        nn.Linear(6, 2)).eval()
    base = np.random.default_rng(seed).uniform(size=(1, 4, 4))
    lo, hi = base.copy(), base.copy()
    lo[0, 0, 1] = lo[0, 1, 2] = 0.0
    hi[0, 0, 1] = hi[0, 1, 2] = 1.0
    X = np.repeat(base[None], len(GRID_2D), 0)
    X[:, 0, 0, 1] = (GRID_2D[:, 0] + 1) / 2
    X[:, 0, 1, 2] = (GRID_2D[:, 1] + 1) / 2
    inp = InputSet.box(lo[None], hi[None])
    _check_against_grid(net, (1, 4, 4), inp, X, np.array([[1.0, -1.0]]))


TRIANGLE = np.array([[-1.0, -1.0], [1.0, -0.5], [-0.2, 1.0]])


def _in_triangle(P, tol=1e-9):
    T = np.array([TRIANGLE[1] - TRIANGLE[0], TRIANGLE[2] - TRIANGLE[0]]).T
    lam = np.linalg.solve(T, (P - TRIANGLE[0]).T).T
    return (lam >= -tol).all(1) & (lam.sum(1) <= 1 + tol)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_triangle_vpolytope_matches_dense_grid(seed):
    net = _mlp(seed, 2, n_out=3)
    grid = GRID_2D[_in_triangle(GRID_2D, tol=0.0)]
    inp = InputSet.polytopes([TRIANGLE])
    _check_against_grid(net, (2,), inp, grid, np.array([[1.0, -1.0, 0.0], [1.0, 0.0, -1.0]]),
                        inside=_in_triangle)


HROW = (np.array([[1.0, 0.5]]), np.array([0.25]))  # x0 + x1/2 <= 1/4, exactly representable


# seed 10: the solver's counterexample lies on the facet A x = b (regression: it used to be
# rejected by rounding and the violated region reported unknown)
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 10])
def test_hpolytope_box_plus_row_matches_dense_grid(seed):
    net = _mlp(seed, 2)
    A, b = HROW
    grid = GRID_2D[(GRID_2D @ A.T <= b).all(1)]
    inp = InputSet.box([[-1.0, -1.0]], [[1.0, 1.0]])
    _check_against_grid(net, (2,), inp, grid, np.array([[1.0, -1.0]]), h_rows=HROW, methods=("crown",))


def test_hpolytope_counterexample_on_the_input_facet_is_reported():
    net = nn.Sequential(nn.Linear(2, 1)).eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0]]))
        net[0].bias.zero_()
    prop = BoundPropagator(net, (2,))
    inp = InputSet.box([[0.0, -1.0]], [[1.0, 1.0]])
    A, b = np.array([[1.0, 0.7]]), np.array([0.3])
    G, h = np.array([[-1.0]]), np.array([-0.999])  # unsafe: y = x0 >= 0.999, e.g. at x = (0.9995, -1)
    assert 0.9995 + 0.7 * -1.0 <= 0.3 and 0.9995 >= 0.999  # a real counterexample exists
    out = complete_check(net, prop, inp, prop.bounds(inp, G).pre, G, h, h_rows=(A, b))
    assert out.status == VIOLATED, out.reason


def test_empty_hpolytope_is_certified():
    net = _mlp(0, 2)
    prop = BoundPropagator(net, (2,))
    inp = InputSet.box([[-1.0, -1.0]], [[1.0, 1.0]])
    A, b = np.array([[1.0, 1.0]]), np.array([-3.0])  # no point of the box satisfies it
    G, h = np.array([[0.0, 0.0]]), np.array([1.0])  # every output is unsafe
    out = complete_check(net, prop, inp, prop.bounds(inp, G).pre, G, h, h_rows=(A, b))
    assert out.status == CERTIFIED and out.counterexample is None
    out = complete_check(net, prop, inp, prop.bounds(inp, G).pre, G, h)  # without the row: violated
    assert out.status == VIOLATED


def test_binaries_only_for_unstable_relus():
    net = _mlp(4, 2)
    prop = BoundPropagator(net, (2,))
    G = np.array([[1.0, -1.0]])
    for r in (1.0, 0.2, 0.0):
        inp = InputSet.box([[0.3 - r, -0.1 - r]], [[0.3 + r, -0.1 + r]])
        pre = prop.bounds(inp, G).pre
        unstable = sum(int(((lo < 0) & (hi > 0)).sum()) for lo, hi in pre.values())
        out = complete_check(net, prop, inp, pre, G, [-100.0])
        assert out.size["binaries"] == unstable
        assert out.status == CERTIFIED or out.status == VIOLATED
    assert unstable == 0  # a point region: everything stable


@pytest.mark.parametrize("make", [
    lambda: (nn.Conv2d(2, 3, 3, stride=2, padding=1), (2, 5, 5)),
    lambda: (nn.AvgPool2d(3, stride=1, padding=1), (2, 4, 4)),
    lambda: (nn.AdaptiveAvgPool2d(2), (2, 5, 5)),
    lambda: (nn.Linear(4, 3), (4,)),
    lambda: (Normalize(torch.tensor([0.5, -1.0]).reshape(2, 1, 1), torch.tensor([2.0, 0.25]).reshape(2, 1, 1)), (2, 3, 3)),
    lambda: (nn.Flatten(), (2, 3, 3)),
], ids=["conv", "avgpool", "adaptive", "linear", "normalize", "flatten"])
def test_affine_matrix_reproduces_each_layer(make):
    torch.manual_seed(0)
    layer, shape = make()
    prop = BoundPropagator(nn.Sequential(layer).eval(), shape)
    op = prop.ops[0]
    L, c = affine_matrix(op, prop.shapes[0], prop.shapes[1], prop.device)
    x = torch.randn(3, *shape, dtype=torch.float64)
    with torch.no_grad():
        want = copy.deepcopy(layer).double()(x).reshape(3, -1).numpy()
    got = (L @ x.reshape(3, -1).numpy().T).T + c
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_unknown_outcome_carries_a_reason(monkeypatch):
    """A solver that stops at its time limit gives 'unknown' with the reason, never a verdict."""
    from provrepair import solvers
    from provrepair.solvers.base import TIME_LIMIT

    real_create = solvers.create

    def create(*a, **kw):
        backend = real_create(*a, **kw)
        solve = backend.solve

        def timed_out():
            res = solve()
            res.status, res.x = TIME_LIMIT, None
            return res
        backend.solve = timed_out
        return backend

    monkeypatch.setattr(solvers, "create", create)
    net = _mlp(0, 2)
    prop = BoundPropagator(net, (2,))
    inp = InputSet.box([[-1.0, -1.0]], [[1.0, 1.0]])
    G = np.array([[1.0, -1.0]])
    out = complete_check(net, prop, inp, prop.bounds(inp, G).pre, G, [0.0])
    assert out.status == UNKNOWN and out.reason == "time limit reached" and out.counterexample is None
