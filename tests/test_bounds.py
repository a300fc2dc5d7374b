"""Bound propagation (provrepair.certify.bounds): soundness of IBP and CROWN on random small
networks and regions, CROWN never looser than IBP, sound intermediate bounds, and exact cases."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from provrepair.certify import bounds as bounds_mod
from provrepair.certify.bounds import BoundPropagator, InputSet, _ReLU
from provrepair.errors import InputError, UnsupportedLayerError
from provrepair.models import Normalize

TOL = 1e-9
HYP = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- helpers


def _forward_pre(net64: nn.Sequential, x: torch.Tensor):
    """Outputs (flattened) and the input of every ReLU/MaxPool module, keyed by module index."""
    pre = {}
    h = x
    with torch.no_grad():
        for i, m in enumerate(net64):
            if isinstance(m, (nn.ReLU, nn.MaxPool2d)):
                pre[i] = h.clone()
            h = m(h)
    return h.reshape(h.shape[0], -1), pre


def _mlp(seed, n_in, widths, n_out, normalize):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    layers = []
    if normalize:
        layers.append(Normalize(rng.normal(size=n_in), rng.uniform(0.3, 2.0, size=n_in)))
    d = n_in
    for w in widths:
        layers += [nn.Linear(d, w), nn.ReLU()]
        d = w
    layers.append(nn.Linear(d, n_out))
    return nn.Sequential(*layers).eval()


def _conv(seed, size, kernel, stride, padding, tail, normalize):
    """Conv -> (ReLU) -> MaxPool (possibly overlapping, padded) -> AvgPool/AdaptiveAvgPool/MaxPool -> Flatten -> MLP."""
    torch.manual_seed(seed)
    layers = []
    if normalize:
        layers.append(Normalize(torch.tensor([0.2, -0.1]).reshape(2, 1, 1), torch.tensor([0.5, 1.5]).reshape(2, 1, 1)))
    layers += [nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(kernel, stride=stride, padding=padding)]
    if tail == "avg":
        layers += [nn.Conv2d(3, 2, 2), nn.ReLU(), nn.AvgPool2d(2, stride=1, padding=1)]
    elif tail == "adaptive":
        layers += [nn.Conv2d(3, 2, 2), nn.ReLU(), nn.AdaptiveAvgPool2d(2)]
    else:
        layers += [nn.Conv2d(3, 2, 2), nn.MaxPool2d(2, stride=1)]
    layers.append(nn.Flatten())
    n = nn.Sequential(*layers)(torch.zeros(1, 2, size, size)).shape[1]
    layers += [nn.Linear(n, 5), nn.ReLU(), nn.Linear(5, 3)]
    return nn.Sequential(*layers).eval()


def _region(rng, shape, kind, batch=2, n_samples=200):
    """An InputSet of ``batch`` regions and, per region, sampled inputs (n, *shape) inside it."""
    if kind == "box":
        c = rng.normal(size=(batch, *shape))
        r = rng.uniform(0.0, 0.7, size=(batch, *shape))
        r[0].flat[0] = 0.0  # a degenerate coordinate
        inp = InputSet.box(c - r, c + r)
        u = rng.uniform(size=(batch, n_samples, *shape))
        u[:, :4] = rng.integers(0, 2, size=(batch, 4, *shape))  # corners
        xs = c[:, None] - r[:, None] + 2 * r[:, None] * u
        return inp, xs
    k = int(rng.integers(1, 6))
    verts = [rng.normal(size=(1, *shape)) + 0.5 * rng.normal(size=(k if b == 0 else max(1, k - 1), *shape))
             for b in range(batch)]  # different vertex counts (padding)
    inp = InputSet.polytopes(verts)
    xs = []
    for v in verts:
        w = rng.dirichlet(np.ones(len(v)), size=n_samples - len(v))
        xs.append(np.concatenate([v, np.einsum("sk,k...->s...", w, v)]))
    return inp, np.stack(xs)


def _check_sound(net: nn.Sequential, shape, inp: InputSet, xs: np.ndarray, C: np.ndarray):
    net64 = copy.deepcopy(net).double()
    prop = BoundPropagator(net, shape)
    nonlinear = {i for i, m in enumerate(net) if isinstance(m, (nn.ReLU, nn.MaxPool2d))}
    res = {}
    for method in ("ibp", "crown"):
        nb = prop.bounds(inp, C, method=method)
        assert nb.method == method
        assert set(nb.pre) == nonlinear
        res[method] = nb
        for b in range(inp.batch):
            y, pre = _forward_pre(net64, torch.from_numpy(xs[b]))
            cy = y @ torch.from_numpy(C[b]).T
            assert (cy >= nb.lower[b] - TOL).all(), f"{method}: a sample is below the lower bound"
            assert (cy <= nb.upper[b] + TOL).all(), f"{method}: a sample is above the upper bound"
            for i, p in pre.items():
                lo, hi = nb.pre[i][0][b], nb.pre[i][1][b]
                assert lo.shape == p.shape[1:]
                assert (p >= lo - TOL).all() and (p <= hi + TOL).all(), f"{method}: module {i}'s input escapes pre"
    ibp, crown = res["ibp"], res["crown"]
    # the intersection with the interval bound may round differently by an ulp, nothing more
    assert (crown.lower >= ibp.lower - 1e-12).all(), "CROWN lower bound looser than IBP"
    assert (crown.upper <= ibp.upper + 1e-12).all(), "CROWN upper bound looser than IBP"
    assert crown.coefficients is not None and crown.coefficients.shape == (inp.batch, C.shape[1], *shape)
    return res


# ----------------------------------------------------------------------------- soundness


@HYP
@given(seed=st.integers(0, 2**31 - 1), n_in=st.integers(1, 4),
       widths=st.lists(st.integers(1, 6), min_size=1, max_size=3), normalize=st.booleans(),
       kind=st.sampled_from(["box", "poly"]), m=st.integers(1, 4))
def test_mlp_bounds_contain_every_sampled_output(seed, n_in, widths, normalize, kind, m):
    net = _mlp(seed, n_in, widths, 3, normalize)
    rng = np.random.default_rng(seed)
    inp, xs = _region(rng, (n_in,), kind)
    C = rng.normal(size=(inp.batch, m, 3))
    _check_sound(net, (n_in,), inp, xs, C)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), size=st.integers(7, 8), kernel=st.integers(2, 3),
       stride=st.integers(1, 2), pad=st.integers(0, 1), tail=st.sampled_from(["avg", "adaptive", "max"]),
       normalize=st.booleans(), kind=st.sampled_from(["box", "poly"]))
def test_conv_bounds_contain_every_sampled_output(seed, size, kernel, stride, pad, tail, normalize, kind):
    net = _conv(seed, size, kernel, stride, pad, tail, normalize)
    shape = (2, size, size)
    rng = np.random.default_rng(seed)
    inp, xs = _region(rng, shape, kind, n_samples=120)
    C = rng.normal(size=(inp.batch, 4, 3))
    _check_sound(net, shape, inp, xs, C)


def test_overlapping_padded_maxpool_and_stacked_nonlinear_layers():
    """MaxPool windows that overlap (stride 1 < kernel 3, padding 1), a ReLU right after a MaxPool,
    and a MaxPool right after a MaxPool: sound, with CROWN tighter than IBP somewhere."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(3, stride=1, padding=1), nn.ReLU(),
                        nn.MaxPool2d(2, stride=1), nn.Flatten(), nn.Linear(2 * 4 * 4, 6), nn.ReLU(),
                        nn.Linear(6, 2)).eval()
    rng = np.random.default_rng(3)
    inp, xs = _region(rng, (1, 7, 7), "box", n_samples=300)
    res = _check_sound(net, (1, 7, 7), inp, xs, rng.normal(size=(2, 3, 2)))
    assert ((res["crown"].upper - res["crown"].lower) < (res["ibp"].upper - res["ibp"].lower) - 1e-6).any()


def test_default_spec_is_the_identity():
    net = _mlp(0, 3, [5], 4, False)
    prop = BoundPropagator(net, (3,))
    inp = InputSet.box(-np.ones((1, 3)), np.ones((1, 3)))
    for method in ("ibp", "crown"):
        a = prop.bounds(inp, method=method)
        b = prop.bounds(inp, np.eye(4), method=method)
        assert a.lower.shape == (1, 4)
        torch.testing.assert_close(a.lower, b.lower)
        torch.testing.assert_close(a.upper, b.upper)


def test_chunked_intermediate_bounds_match(monkeypatch):
    """The rows of an intermediate layer processed in chunks give the same bounds as in one go."""
    torch.manual_seed(1)
    net = _conv(1, 6, 3, 1, 1, "avg", True)
    rng = np.random.default_rng(1)
    inp, _ = _region(rng, (2, 6, 6), "box")
    C = rng.normal(size=(2, 3, 3))
    prop = BoundPropagator(net, (2, 6, 6))
    whole = prop.bounds(inp, C, method="crown")
    monkeypatch.setattr(bounds_mod, "MAX_COEFFICIENTS", 50)
    chunked = prop.bounds(inp, C, method="crown")
    torch.testing.assert_close(chunked.lower, whole.lower, rtol=0, atol=1e-10)
    torch.testing.assert_close(chunked.upper, whole.upper, rtol=0, atol=1e-10)
    for i in whole.pre:
        torch.testing.assert_close(chunked.pre[i][0], whole.pre[i][0], rtol=0, atol=1e-10)


def test_ibp_is_per_region_in_a_batch():
    net = _mlp(2, 3, [6, 6], 2, True)
    rng = np.random.default_rng(2)
    c, r = rng.normal(size=(5, 3)), rng.uniform(0, 1, size=(5, 3))
    prop = BoundPropagator(net, (3,))
    batch = prop.bounds(InputSet.box(c - r, c + r), method="ibp")
    for b in range(5):
        one = prop.bounds(InputSet.box(c[b:b + 1] - r[b:b + 1], c[b:b + 1] + r[b:b + 1]), method="ibp")
        torch.testing.assert_close(one.lower[0], batch.lower[b], rtol=0, atol=1e-12)
        torch.testing.assert_close(one.upper[0], batch.upper[b], rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- exact cases


def _linear_net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(Normalize([0.5, -1.0, 2.0], [2.0, 0.5, 4.0]), nn.Linear(3, 4), nn.Flatten(),
                         nn.Linear(4, 3)).eval()


def _affine_of(net):
    """The network as y = W x + b in float64, by hand."""
    norm, l1, _, l2 = net
    s = 1.0 / norm.std.double().numpy()
    t = -norm.mean.double().numpy() * s
    W1, b1 = l1.weight.detach().double().numpy(), l1.bias.detach().double().numpy()
    W2, b2 = l2.weight.detach().double().numpy(), l2.bias.detach().double().numpy()
    return W2 @ W1 @ np.diag(s), W2 @ (W1 @ t + b1) + b2


def test_crown_is_exact_for_a_linear_network_on_a_box():
    net = _linear_net(0)
    W, b = _affine_of(net)
    C = np.array([[1.0, -1.0, 0.0], [0.0, 2.0, 1.0], [0.5, 0.5, -3.0]])
    lo, hi = np.array([[-1.0, 0.0, 2.0]]), np.array([[1.0, 0.5, 2.0]])
    A, a0 = C @ W, C @ b
    c, r = (lo + hi)[0] / 2, (hi - lo)[0] / 2
    exact_lo, exact_hi = A @ c - np.abs(A) @ r + a0, A @ c + np.abs(A) @ r + a0
    prop = BoundPropagator(net, (3,))
    crown = prop.bounds(InputSet.box(lo, hi), C, method="crown")
    np.testing.assert_allclose(crown.lower[0].numpy(), exact_lo, rtol=0, atol=1e-9)
    np.testing.assert_allclose(crown.upper[0].numpy(), exact_hi, rtol=0, atol=1e-9)
    # the exact values are attained at corners of the box
    corners = np.array([[x, y, 2.0] for x in (-1.0, 1.0) for y in (0.0, 0.5)])
    vals = (corners @ W.T + b) @ C.T
    np.testing.assert_allclose(vals.min(0), exact_lo, atol=1e-9)
    np.testing.assert_allclose(vals.max(0), exact_hi, atol=1e-9)
    # IBP folds C through the affine layers after the last ReLU, so on a linear network it is exact too
    ibp = prop.bounds(InputSet.box(lo, hi), C, method="ibp")
    np.testing.assert_allclose(ibp.lower[0].numpy(), exact_lo, rtol=0, atol=1e-9)
    np.testing.assert_allclose(ibp.upper[0].numpy(), exact_hi, rtol=0, atol=1e-9)


def test_the_spec_is_folded_into_the_last_layer_before_the_interval():
    # two identical outputs: C = [1, -1] gives exactly 0, while the outputs' own interval gives a
    # width; a last-layer repair over interval hulls relies on the folded bound
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2)).double()
    with torch.no_grad():
        net[2].weight[1] = net[2].weight[0]
        net[2].bias[1] = net[2].bias[0]
    prop = BoundPropagator(net, (2,))
    box = InputSet.box(np.array([[-1.0, -1.0]]), np.array([[1.0, 1.0]]))
    for method in ("ibp", "crown"):
        diff = prop.bounds(box, np.array([[1.0, -1.0]]), method=method)
        assert diff.lower.item() == pytest.approx(0.0, abs=1e-12)
        assert diff.upper.item() == pytest.approx(0.0, abs=1e-12)
        out = prop.bounds(box, method=method)
        assert (out.upper - out.lower).min().item() > 0.1  # the outputs themselves do vary


def test_crown_on_a_vpolytope_is_exact_for_a_linear_network():
    net = _linear_net(1)
    W, b = _affine_of(net)
    V = np.array([[0.0, 0.0, 0.0], [1.0, 0.2, -0.5], [-0.3, 1.0, 0.4], [0.5, -0.7, 1.0]])
    C = np.array([[1.0, 0.0, -1.0], [-2.0, 1.0, 0.5]])
    vals = (V @ W.T + b) @ C.T
    prop = BoundPropagator(net, (3,))
    inp = InputSet.polytopes([V])
    crown = prop.bounds(inp, C, method="crown")
    np.testing.assert_allclose(crown.lower[0].numpy(), vals.min(0), rtol=0, atol=1e-9)
    np.testing.assert_allclose(crown.upper[0].numpy(), vals.max(0), rtol=0, atol=1e-9)
    ibp = prop.bounds(inp, C, method="ibp")  # IBP only sees the bounding box
    assert (ibp.lower[0].numpy() < vals.min(0) - 1e-6).any()


def test_crown_is_exact_through_stable_relus():
    """All ReLUs active on the region: the network is linear there, and CROWN is exact."""
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)).eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 2.0], [0.5, -1.0], [2.0, 1.0]]))
        net[0].bias.copy_(torch.tensor([1.0, 5.0, 1.0]))
        net[2].weight.copy_(torch.tensor([[1.0, -1.0, -1.0]]))
        net[2].bias.zero_()
    # y = (x0 + 2 x1 + 1) - (0.5 x0 - x1 + 5) - (2 x0 + x1 + 1) = -1.5 x0 + 2 x1 - 5 on [0,1]^2
    prop = BoundPropagator(net, (2,))
    inp = InputSet.box([[0.0, 0.0]], [[1.0, 1.0]])
    crown = prop.bounds(inp, method="crown")
    assert crown.lower.item() == pytest.approx(-6.5, abs=1e-12)
    assert crown.upper.item() == pytest.approx(-3.0, abs=1e-12)
    ibp = prop.bounds(inp, method="ibp")
    assert ibp.lower.item() < -6.5 - 1e-6


@pytest.mark.parametrize("l,u,lower,upper", [
    (-1.0, 3.0, 1.0, 0.75),  # u >= -l: lower slope 1
    (-3.0, 1.0, 0.0, 0.25),  # u < -l: lower slope 0
    (-2.0, 2.0, 1.0, 0.5),  # tie u == -l: slope 1
    (-0.5, 0.25, 0.0, 1 / 3),
    (0.5, 2.0, 1.0, 1.0),  # stable active
    (0.0, 2.0, 1.0, 1.0),  # l = 0 is active
    (-2.0, -0.5, 0.0, 0.0),  # stable inactive
    (-2.0, 0.0, 0.0, 0.0),  # u = 0 is inactive
])
def test_relu_relaxation_matches_the_definition(l, u, lower, upper):
    a, s, t = _ReLU.relax(torch.tensor([l], dtype=torch.float64), torch.tensor([u], dtype=torch.float64))
    assert a.item() == lower
    assert s.item() == pytest.approx(upper, abs=1e-15)
    if l < 0 < u:  # the chord through (l, 0) and (u, u)
        assert s.item() * l + t.item() == pytest.approx(0.0, abs=1e-15)
        assert s.item() * u + t.item() == pytest.approx(u, abs=1e-15)
    else:
        assert t.item() == 0.0


def test_maxpool_window_bounds_are_exact_on_a_single_window():
    """max over a box of max(x) is max(u); its min is max(l): both attained, so CROWN is exact."""
    net = nn.Sequential(nn.MaxPool2d(2), nn.Flatten()).eval()
    lo = np.array([0.0, 0.5, -1.0, 0.2]).reshape(1, 1, 2, 2)
    hi = np.array([1.0, 2.0, 0.0, 0.3]).reshape(1, 1, 2, 2)
    prop = BoundPropagator(net, (1, 2, 2))
    for method in ("ibp", "crown"):
        nb = prop.bounds(InputSet.box(lo, hi), np.array([[1.0], [-1.0]]), method=method)
        np.testing.assert_allclose(nb.lower[0].numpy(), [0.5, -2.0])
        np.testing.assert_allclose(nb.upper[0].numpy(), [2.0, -0.5])


def test_maxpool_dominant_input_passes_its_linear_bound_through():
    """x1 dominates its window: CROWN keeps max = x1 exactly, so x1 - max(...) is bounded by 0."""
    net = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2, 1)).eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[[[1.0]]], [[[-1.0]]]]))
        net[3].weight.copy_(torch.tensor([[1.0, 0.0]]))
        net[3].bias.zero_()
    lo = np.array([5.0, 0.0, 0.0, 0.0]).reshape(1, 1, 2, 2)
    hi = np.array([6.0, 1.0, 1.0, 1.0]).reshape(1, 1, 2, 2)
    prop = BoundPropagator(net, (1, 2, 2))
    nb = prop.bounds(InputSet.box(lo, hi), method="crown")
    assert nb.lower.item() == pytest.approx(5.0) and nb.upper.item() == pytest.approx(6.0)


# ----------------------------------------------------------------------------- errors


def test_unsupported_layers_and_bad_inputs_raise():
    with pytest.raises(UnsupportedLayerError, match="Tanh"):
        BoundPropagator(nn.Sequential(nn.Linear(2, 2), nn.Tanh()), (2,))
    with pytest.raises(UnsupportedLayerError, match="ceil_mode"):
        BoundPropagator(nn.Sequential(nn.MaxPool2d(2, ceil_mode=True)), (1, 5, 5))
    with pytest.raises(InputError, match="input shape"):
        BoundPropagator(nn.Sequential(nn.ReLU()))
    with pytest.raises(InputError, match="lower > upper"):
        InputSet.box([[0.0, 1.0]], [[1.0, 0.5]])
    with pytest.raises(InputError):
        InputSet.polytopes([])
    prop = BoundPropagator(_mlp(0, 2, [3], 2, False), (2,))
    inp = InputSet.box([[0.0, 0.0]], [[1.0, 1.0]])
    with pytest.raises(InputError, match="shape"):
        prop.bounds(InputSet.box([[0.0, 0.0, 0.0]], [[1.0, 1.0, 1.0]]))
    with pytest.raises(InputError, match="spec matrix"):
        prop.bounds(inp, np.ones((1, 3)))
    with pytest.raises(InputError, match="unknown bound method"):
        prop.bounds(inp, method="deeppoly")
