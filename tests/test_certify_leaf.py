"""Issue 20, the last ACAS Xu instances: the dense MILP encoding of sub-boxes, the complete check
of sub-boxes with few unstable ReLUs, single-row disjuncts split together, the split rule that
does not halve an input far narrower than the box's widest, and face samples in the falsifier."""

from __future__ import annotations

import copy
import time

import numpy as np
import pytest
import torch
from torch import nn

from provrepair.certify import milp, split
from provrepair.certify.bounds import BoundPropagator, InputSet
from provrepair.certify.falsify import falsify
from provrepair.certify.regions import _relu_pre
from provrepair.specs import OutputProperty
from provrepair.specs.regions import Box

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _mlp(seed: int, n_in: int = 3, width: int = 10, n_out: int = 3) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, n_out)).eval()


def _forward(net: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return copy.deepcopy(net).double()(torch.as_tensor(x, dtype=torch.float64)).numpy()


def _tight(net: nn.Module, G: np.ndarray, lo: np.ndarray, hi: np.ndarray, rng: np.random.Generator,
           shift: float) -> np.ndarray:
    """h at the sampled minimum of each row of G y, moved by ``shift`` (> 0: some samples are unsafe)."""
    y = _forward(net, lo + rng.uniform(0, 1, (2000, lo.size)) * (hi - lo))
    return (y @ G.T).min(0) + shift


@pytest.mark.parametrize("seed", range(12))
def test_dense_encoding_decides_as_the_sparse_one(seed):
    """Same status on boxes near the boundary of the spec, and a counterexample of the dense
    encoding lies in the box and reaches the unsafe set in a float64 forward pass."""
    net = _mlp(seed)
    prop = BoundPropagator(net, (3,))
    rng = np.random.default_rng(seed)
    lo = rng.uniform(-1, 0, 3)
    hi = lo + rng.uniform(0.2, 1, 3)
    G = np.array([[1.0, -1.0, 0.0], [1.0, 0.0, -1.0]])
    h = _tight(net, G, lo, hi, rng, rng.uniform(-0.2, 0.05))
    inp = InputSet.box(lo[None], hi[None])
    pre = prop.bounds(inp, G, method="crown").pre
    assert milp._forward_of(prop) is not None  # the dense path is taken
    dense = milp.complete_check(net, prop, inp, pre, G, h)
    milp._DENSE[prop] = None  # the sparse encoding for the same propagator
    sparse = milp.complete_check(net, prop, inp, pre, G, h)
    assert dense.status == sparse.status != milp.UNKNOWN
    if dense.status == milp.VIOLATED:
        x = np.asarray(dense.counterexample).reshape(-1)
        assert np.all(x >= lo) and np.all(x <= hi)
        assert np.all(G @ _forward(net, x[None])[0] <= h)


def _leaf(net: nn.Module, prop: BoundPropagator, parts: list[tuple[np.ndarray, np.ndarray]]) -> split.LeafCheck:
    def check(lo: torch.Tensor, hi: torch.Tensor, known: list | None, seconds: float = 60.0) -> tuple:
        sub = InputSet(lo, hi)
        for G, h in parts:
            pre = prop.bounds(sub, G, method="crown").pre if known is None else _relu_pre(prop, known)
            out = milp.complete_check(net, prop, sub, pre, G, h, time_limit=seconds)
            if out.status != milp.CERTIFIED:
                return out.status, out.counterexample, out.output
        return milp.CERTIFIED, None, None
    return check


def test_few_unstable_relus_go_to_the_milp(monkeypatch):
    """With a depth budget too small for the bounds alone, the split search stays unknown; sending
    boxes with few unstable ReLUs to the MILP decides it, and agrees with the MILP on the whole box."""
    net = _mlp(3, n_in=2, width=16)
    prop = BoundPropagator(net, (2,))
    net64 = copy.deepcopy(net).double()
    lo, hi = -np.ones(2), np.ones(2)
    G = np.array([[1.0, -1.0, 0.0]])
    whole = InputSet.box(lo[None], hi[None])
    pre = prop.bounds(whole, G, method="crown").pre
    for shift in (1e-3, 1e-2, 3e-2, 1e-1):  # the tightest threshold the MILP proves safe
        h = _tight(net, G, lo, hi, np.random.default_rng(0), -shift)
        if milp.complete_check(net, prop, whole, pre, G, h).status == milp.CERTIFIED:
            break
    else:
        pytest.fail("no threshold is safe")
    kw = dict(deadline=time.perf_counter() + 60, tol=1e-9, max_depth=2)
    assert split.split_search(prop, net64, lo, hi, G, h, **kw).status == "unknown"
    monkeypatch.setattr(split, "LEAF_MIN_DEPTH", 1)
    monkeypatch.setattr(split, "LEAF_UNSTABLE", 64)
    out = split.split_search(prop, net64, lo, hi, G, h, leaf_check=_leaf(net, prop, [(G, h)]), **kw)
    assert out.status == "certified" and out.stats["milp_leaves"] >= 1


@pytest.mark.parametrize("seed", range(6))
def test_single_row_disjuncts_split_together_agree_with_the_milp(seed, monkeypatch):
    """The union of single-row disjuncts is violated iff one of them is (exact MILP on the whole
    box), and a counterexample reaches one of the rows inside the box."""
    monkeypatch.setattr(split, "LEAF_MIN_DEPTH", 2)
    net = _mlp(seed, n_in=2, width=10, n_out=4)
    prop = BoundPropagator(net, (2,))
    net64 = copy.deepcopy(net).double()
    rng = np.random.default_rng(seed)
    lo, hi = -np.ones(2), np.ones(2)
    G = np.array([[1.0, -1.0, 0.0, 0.0], [1.0, 0.0, -1.0, 0.0], [1.0, 0.0, 0.0, -1.0]])
    h = _tight(net, G, lo, hi, rng, rng.uniform(-0.05, 0.01))
    whole = InputSet.box(lo[None], hi[None])
    parts = [(G[r:r + 1], h[r:r + 1]) for r in range(3)]
    exact = [milp.complete_check(net, prop, whole, prop.bounds(whole, g, method="crown").pre, g, v).status
             for g, v in parts]
    assert milp.UNKNOWN not in exact
    out = split.split_search(prop, net64, lo, hi, G, h, deadline=time.perf_counter() + 60, tol=1e-9,
                             leaf_check=_leaf(net, prop, parts), any_row=True)
    assert out.status == ("violated" if milp.VIOLATED in exact else "certified"), out.reason
    if out.status == "violated":
        x = np.asarray(out.x).reshape(-1)
        assert np.all(x >= lo) and np.all(x <= hi)
        assert np.any(G @ _forward(net, x[None])[0] <= h)


def test_split_does_not_halve_an_input_far_narrower_than_the_widest():
    """Halving input 0 gains most, but the box is already 1e-4 of the region wide there: the
    split goes to input 1 (its halves are indices 2 and 3)."""
    lo = torch.zeros(1, 2, dtype=torch.float64)
    hi = torch.tensor([[1e-4, 1.0]], dtype=torch.float64)
    dims = torch.tensor([[0, 1]])
    c_margin = torch.tensor([-0.5, -0.5, -0.9, -0.9], dtype=torch.float64)
    c_open = torch.ones(4, dtype=torch.bool)
    chosen = split._choose_split(c_margin, c_open, lo, hi, dims, torch.tensor([-1.0], dtype=torch.float64),
                                 torch.ones(2, dtype=torch.float64))
    assert chosen.tolist() == [2, 3]
    wide = torch.tensor([[0.5, 1.0]], dtype=torch.float64)
    chosen = split._choose_split(c_margin, c_open, lo, wide, dims, torch.tensor([-1.0], dtype=torch.float64),
                                 torch.ones(2, dtype=torch.float64))
    assert chosen.tolist() == [0, 1]


def test_falsifier_tries_samples_on_the_faces():
    """The unsafe set is met only within 1e-9 of the face x0 = -1: no uniform sample gets there,
    face samples do (no gradient steps; 8 inputs, so the corners are not tried), and the
    counterexample lies in the box."""
    lin = nn.Linear(8, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(8)[:1])
        lin.bias.zero_()
    net64 = nn.Sequential(lin).double().eval()
    box = Box(-np.ones(8), np.ones(8))
    prop = OutputProperty(((np.array([[1.0]]), np.array([-1.0 + 1e-9])),), 1)
    cex = falsify(net64, box, prop, pgd_steps=0, seed=1)
    assert cex is not None
    assert np.all(cex.x >= -1) and np.all(cex.x <= 1) and cex.y[0] <= -1.0 + 1e-9


def test_leaf_policy_learns_the_threshold_from_milp_times():
    """Fast decided MILPs raise the unstable-ReLU threshold one by one up to its cap; a slow or
    undecided one lowers it below that leaf's count, never below the base."""
    policy = split._LeafPolicy()
    base = split.LEAF_UNSTABLE
    for _ in range(100):
        policy.update(policy.threshold, split.LEAF_FAST / 10, decided=True)
    assert policy.threshold == split.LEAF_MAX_UNSTABLE
    policy.update(base + 6, split.LEAF_TRY_SECONDS, decided=False)
    assert policy.threshold == base + 5
    policy.update(base + 1, 0.0, decided=False)
    assert policy.threshold == base
    assert policy.seconds(base) == split.LEAF_SECONDS and policy.seconds(base + 1) == split.LEAF_TRY_SECONDS


@pytest.mark.parametrize("seed", range(6))
def test_undecided_leaves_are_split_again_and_the_verdict_matches_the_milp(seed, monkeypatch):
    """A leaf whose MILP runs out of time (here: every other one) is split again, not reported
    unknown; the verdict still agrees with the exact MILP on the whole box, and with or without
    the slope steps before the MILP."""
    monkeypatch.setattr(split, "LEAF_MIN_DEPTH", 1)
    monkeypatch.setattr(split, "LEAF_UNSTABLE", 64)
    net = _mlp(seed + 20, n_in=2, width=12)
    prop = BoundPropagator(net, (2,))
    net64 = copy.deepcopy(net).double()
    rng = np.random.default_rng(seed)
    lo, hi = -np.ones(2), np.ones(2)
    G = np.array([[1.0, -1.0, 0.0], [1.0, 0.0, -1.0]])
    h = _tight(net, G, lo, hi, rng, rng.uniform(-0.01, 0.002))
    whole = InputSet.box(lo[None], hi[None])
    exact = milp.complete_check(net, prop, whole, prop.bounds(whole, G, method="crown").pre, G, h).status
    assert exact != milp.UNKNOWN
    check, calls = _leaf(net, prop, [(G, h)]), [0]

    def flaky(lo_t, hi_t, known, seconds):
        calls[0] += 1
        return ("unknown", None, None) if calls[0] % 2 else check(lo_t, hi_t, known, seconds)

    for steps in (0, split.LEAF_ALPHA_STEPS):
        monkeypatch.setattr(split, "LEAF_ALPHA_STEPS", steps)
        out = split.split_search(prop, net64, lo, hi, G, h, deadline=time.perf_counter() + 60, tol=1e-9,
                                 leaf_check=flaky)
        assert out.status == ("violated" if exact == milp.VIOLATED else "certified"), out.reason
        if out.status == "violated":
            x = np.asarray(out.x).reshape(-1)
            assert np.all(x >= lo) and np.all(x <= hi) and np.all(G @ _forward(net, x[None])[0] <= h)
    assert calls[0] >= 2  # the leaves were reached, and one was split again


@pytest.mark.parametrize("seed", range(3))
def test_tighten_is_sound_and_never_looser_than_the_split_bound(seed):
    """The leaf bound with many slope steps on inherited intervals is at least the default
    slopes' and never above the sampled truth (conjunction and union of rows)."""
    from provrepair.certify.forward import ForwardBounds

    net = _mlp(seed, n_in=3, width=14)
    fwd = ForwardBounds(BoundPropagator(net, (3,)))
    rng = np.random.default_rng(seed)
    lo = rng.uniform(-1, 0.7, (32, 3))
    hi = lo + rng.uniform(0, 0.3, (32, 3))
    lo_t, hi_t = torch.tensor(lo), torch.tensor(hi)
    G = torch.tensor([[1.0, -1.0, 0.0], [1.0, 0.0, -1.0]], dtype=torch.float64)
    h = torch.tensor(rng.normal(size=2) - 0.5)
    x = lo[:, None] + (hi - lo)[:, None] * rng.uniform(size=(32, 300, 3))
    v = _forward(net, x.reshape(-1, 3)).reshape(32, 300, -1) @ G.numpy().T - h.numpy()
    for any_row, truth in ((False, v.max(2).min(1)), (True, v.min(2).min(1))):
        base, _, pre = fwd.bounds(lo_t, hi_t, G, h, tol=1e9, steps=0, any_row=any_row)
        tight = fwd.tighten(lo_t, hi_t, G, h, pre, tol=1e9, steps=40, any_row=any_row)
        assert torch.all(tight >= base - 1e-9)
        assert np.all(tight.numpy() <= truth + 1e-9)
