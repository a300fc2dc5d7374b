"""The independent complete check's own bounds and search (issue 21; tiny networks, CPU, seconds).

Each test is one a wrong certificate would fail: bounds that miss a sampled value, a threshold
just beyond the exact minimum of a 1-input network that is not found violated, or one just short
of it that is not certified, or a verdict against the certification engine's or sampling's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from provrepair.certify import certify_regions, complete
from provrepair.certify.complete import affine_chain, certify_box_complete
from provrepair.errors import UnsupportedLayerError
from provrepair.models import normalize_model
from provrepair.specs import RegionSpec
from provrepair.specs.regions import Box, OutputProperty


def _net(seed: int, d: int, width: int = 16, depth: int = 4, out: int = 3) -> nn.Sequential:
    torch.manual_seed(seed)
    mods: list[nn.Module] = []
    w = d
    for _ in range(depth):
        mods += [nn.Linear(w, width), nn.ReLU()]
        w = width
    mods.append(nn.Linear(w, out))
    return normalize_model(nn.Sequential(*mods))


@pytest.mark.parametrize("seed", range(6))
def test_bounds_contain_every_sampled_value(seed, one_torch_thread):
    """Every hidden pre-activation and every property row of 2,000 sampled inputs per box lies
    within the batched bounds, with and without a parent's intervals intersected in."""
    net = _net(seed, d=4)
    layers = affine_chain(net)
    tens = complete._tensors(layers)
    rng = np.random.default_rng(seed)
    c = rng.uniform(-1, 1, (8, 4))
    r = rng.uniform(0.01, 0.5, (8, 4))
    G = rng.normal(size=(3, 3))
    with torch.no_grad():
        low, _, pre = complete._bounds(tens, torch.as_tensor(c), torch.as_tensor(r), torch.as_tensor(G))
        # the children of the left half along input 0, given the parent's intervals
        c2, r2 = c.copy(), r.copy()
        r2[:, 0] /= 2
        c2[:, 0] -= r2[:, 0]
        low2, _, pre2 = complete._bounds(tens, torch.as_tensor(c2), torch.as_tensor(r2), torch.as_tensor(G), pre)
    for cc, rr, lw, pr in ((c, r, low, pre), (c2, r2, low2, pre2)):
        for b in range(len(cc)):
            x = cc[b] + rr[b] * rng.uniform(-1, 1, (2000, 4))
            x = np.vstack([x, cc[b] - rr[b], cc[b] + rr[b]])  # two corners too
            h = x
            for k, (W, bias) in enumerate(layers):
                z = h @ W.T + bias
                if k < len(layers) - 1:
                    lk, uk = pr[k][0][b].numpy(), pr[k][1][b].numpy()
                    assert np.all(z >= lk - 1e-12) and np.all(z <= uk + 1e-12)
                    h = np.maximum(z, 0)
            assert np.all(z @ G.T >= lw[b].numpy() - 1e-12)


def _exact_min_1d(net, lo: float, hi: float, row: np.ndarray) -> tuple[float, float]:
    """min over [lo, hi] of row . y(x) for a 1-input network, within the returned error: a grid
    of 2,000,001 points and the network's Lipschitz bound (the product of the weights' norms)."""
    layers = affine_chain(net)
    xs = np.linspace(lo, hi, 2_000_001)[:, None]
    h = xs
    for k, (W, b) in enumerate(layers):
        h = h @ W.T + b
        if k < len(layers) - 1:
            h = np.maximum(h, 0)
    vals = h @ row
    lip = float(np.abs(row).sum()) * float(np.prod([np.linalg.norm(W, 2) for W, _ in layers]))
    return float(vals.min()), lip * (hi - lo) / 2_000_000 / 2


@pytest.mark.parametrize("seed", range(4))
def test_thresholds_either_side_of_the_exact_minimum(seed, one_torch_thread):
    """Unsafe: ``y0 - y1 <= t``. Just above the exact minimum it is reachable (violated, the
    counterexample re-validated inside the box); just below, it is not (certified)."""
    net = _net(seed, d=1, width=12, depth=3)
    row = np.array([1.0, -1.0, 0.0])
    m, err = _exact_min_1d(net, -1.0, 1.0, row)
    box = Box(np.array([-1.0]), np.array([1.0]))
    hit = OutputProperty.unsafe([(row[None], np.array([m + 1e-4]))])
    v = certify_box_complete(net, box, hit, timeout=30)
    assert v.status == "violated"
    assert box.contains(v.counterexample)
    y = complete._forward(affine_chain(net), v.counterexample[None])
    assert hit.violated(y)[0] >= 0
    miss = OutputProperty.unsafe([(row[None], np.array([m - err - 1e-4]))])
    v = certify_box_complete(net, box, miss, timeout=30)
    assert v.status == "certified" and v.decided_by


def test_two_input_tight_threshold_split_agrees_with_one_exact_milp(one_torch_thread):
    """On a 2-input box, the split search and one exact MILP of the whole box (max_depth=0)
    agree either side of the sampled minimum."""
    net = _net(7, d=2, width=16, depth=3)
    box = Box(np.array([-1.0, -0.5]), np.array([0.5, 1.0]))
    row = np.array([0.0, 1.0, -1.0])
    x = box.sample(200_000, np.random.default_rng(0))
    y = complete._forward(affine_chain(net), x)
    m = float((y @ row).min())
    for t in (m + 1e-3, m - 0.05):
        prop = OutputProperty.unsafe([(row[None], np.array([t]))])
        split = certify_box_complete(net, box, prop, timeout=30)
        exact = certify_box_complete(net, box, prop, timeout=30, max_depth=0)
        assert split.status == exact.status == ("violated" if t > m else "certified")


def test_a_wide_five_input_box_is_decided_by_splitting(one_torch_thread):
    """A wide 5-input box is decided through thousands of sub-boxes in batches (stats count them)."""
    net = _net(3, d=5, width=24, depth=4)
    box = Box(np.full(5, -1.0), np.full(5, 1.0))
    row = np.array([1.0, -1.0, 0.0])
    x = box.sample(100_000, np.random.default_rng(2))
    m = float((complete._forward(affine_chain(net), x) @ row).min())
    prop = OutputProperty.unsafe([(row[None], np.array([m - 0.2]))])
    v = certify_box_complete(net, box, prop, timeout=60)
    assert v.status == "certified"
    assert v.stats["boxes"] > 1


def _sampled_violation(net, box: Box, prop: OutputProperty, n: int = 4000) -> bool:
    x = box.sample(n, np.random.default_rng(0))
    with torch.no_grad():
        y = net.double()(torch.as_tensor(x)).numpy()
    net.float()
    return bool((prop.violated(y) >= 0).any())


@pytest.mark.parametrize("seed", range(12))
def test_complete_check_agrees_with_the_engine_and_sampling(seed, one_torch_thread):
    net = _net(seed, d=3, width=12, depth=3)
    rng = np.random.default_rng(seed)
    c = rng.uniform(-1, 1, 3)
    r = rng.uniform(0.05, 0.6, 3)
    box = Box(c - r, c + r)
    label = int(rng.integers(3))
    prop = OutputProperty.label(label, 3) if seed % 2 else OutputProperty.unsafe(
        [(np.eye(3)[[label]] - np.eye(3)[[(label + 1) % 3]], np.array([0.0])),
         (np.eye(3)[[label]] - np.eye(3)[[(label + 2) % 3]], np.array([-0.1]))])
    v = certify_box_complete(net, box, prop, timeout=30)
    ref = certify_regions(net, RegionSpec((box,), (prop,)), method="auto", timeout=30).verdicts[0]
    assert v.status in ("certified", "violated")
    if ref.status != "unknown":
        assert v.status == ref.status
    if _sampled_violation(net, box, prop):
        assert v.status == "violated"
    if v.status == "violated":  # re-validated inside the box
        assert box.contains(v.counterexample)
        with torch.no_grad():
            y = net.double()(torch.as_tensor(v.counterexample[None])).numpy()
        net.float()
        assert prop.violated(y)[0] >= 0
    else:
        assert v.decided_by


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("offset, expected", [(-0.02, "certified"), (0.02, "violated")])
def test_the_leaf_threshold_changes_the_route_not_the_verdict(seed, offset, expected, one_torch_thread):
    # a threshold just either side of what the box reaches: split down to stable boxes (0, the
    # default), MILPs on boxes with a dozen unstable ReLUs, or one MILP on the whole box: one verdict
    net = _net(seed, d=3, width=16, depth=3)
    box = Box(np.full(3, -1.0), np.full(3, 1.0))
    G = np.array([[1.0, -1.0, 0.0]])
    with torch.no_grad():
        gap = (net(torch.as_tensor(box.sample(20000, np.random.default_rng(seed)), dtype=torch.float32)).numpy()
               @ G.T).min()
    prop = OutputProperty.unsafe([(G, np.array([gap + offset]))])
    verdicts = {k: certify_box_complete(net, box, prop, timeout=30, leaf_unstable=k)
                for k in (0, 12, 10_000)}
    assert {v.status for v in verdicts.values()} == {expected}
    if expected == "certified":  # the whole box to one MILP instead of dozens of sub-boxes
        assert verdicts[10_000].stats["milp_leaves"] == 1 and verdicts[0].stats["boxes"] > 10


def test_complete_check_reaches_milp_leaves_and_reports_them(one_torch_thread):
    net = _net(3, d=3, width=16, depth=3)
    box = Box(np.full(3, -1.0), np.full(3, 1.0))
    G = np.array([[1.0, -1.0, 0.0]])
    x = box.sample(20000, np.random.default_rng(1))
    with torch.no_grad():
        gap = (net(torch.as_tensor(x, dtype=torch.float32)).numpy() @ G.T).min()
    prop = OutputProperty.unsafe([(G, np.array([gap - 0.05]))])  # just below what the box reaches
    v = certify_box_complete(net, box, prop, timeout=30, max_depth=0)  # the whole box to the MILP at once
    ref = certify_regions(net, RegionSpec((box,), (prop,)), method="auto", timeout=30).verdicts[0]
    assert v.status == ref.status == "certified"
    assert v.stats["milp_leaves"] == 1 and "milp" in v.decided_by
    hit = OutputProperty.unsafe([(G, np.array([gap + 0.05]))])  # reached: the MILP's solution re-validates
    assert certify_box_complete(net, box, hit, timeout=30, max_depth=0).status == "violated"


def test_complete_check_refuses_what_it_cannot_read():
    net = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 2))
    with pytest.raises(UnsupportedLayerError, match="Tanh"):
        affine_chain(net)
    with pytest.raises(UnsupportedLayerError, match="boxes"):
        from provrepair.specs.regions import VPolytope
        certify_box_complete(_net(0, d=3, width=12, depth=3), VPolytope(np.eye(3)), OutputProperty.label(0, 3))


def _rows_and_bounds(seed: int, q: int, steps: int):
    """A 3-input network, 6 boxes, ``q`` random rows ``G y - h``: the default-slope margins of the
    rows (and of their mean when q > 1) and the optimised ones."""
    net = _net(seed, d=3, width=16, depth=3, out=4)
    layers = affine_chain(net)
    tens = complete._tensors(layers)
    rng = np.random.default_rng(seed)
    G, h = rng.normal(size=(q, 4)), rng.normal(size=q) * 0.1
    c, r = rng.uniform(-1, 1, (6, 3)), rng.uniform(0.05, 0.6, (6, 3))
    Gb, hb = (np.vstack([G, G.mean(0)]), np.append(h, h.mean())) if q > 1 else (G, h)
    ct, rt = torch.as_tensor(c), torch.as_tensor(r)
    with torch.no_grad():
        low, _, pre = complete._bounds(tens, ct, rt, torch.as_tensor(Gb))
    opt = complete._optimised(tens, pre, ct, rt, torch.as_tensor(G), torch.as_tensor(h), steps).numpy()
    return layers, G, h, c, r, low.numpy() - hb, opt


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("q", [1, 3])
def test_optimised_slopes_are_sound_and_never_looser(seed, q, one_torch_thread):
    """Optimised lower ReLU slopes (and row weights): every margin stays below the smallest value
    of its row over 3,000 sampled inputs per box (the weighted row below the largest row's), and
    never below the default slopes' margin (the search stops once every box is decided)."""
    layers, G, h, c, r, default, opt = _rows_and_bounds(seed, q, steps=20)
    assert opt.shape == default.shape
    assert np.all(opt >= default - 1e-9)
    rng = np.random.default_rng(seed + 100)
    for b in range(len(c)):
        x = np.vstack([c[b] + r[b] * rng.uniform(-1, 1, (3000, 3)), c[b] - r[b], c[b] + r[b]])
        rows = complete._forward(layers, x) @ G.T - h  # (n, q)
        assert np.all(opt[b, :q] <= rows.min(0) + 1e-12)
        if q > 1:  # some convex combination of the rows: never above the largest row
            assert opt[b, q] <= rows.max(1).min() + 1e-12


@pytest.mark.parametrize("seed, q", [(3, 1), (7, 3)])
def test_optimised_slopes_decide_at_the_root_what_the_default_ones_split(seed, q, one_torch_thread):
    """A threshold between the default slopes' bound and the optimised one over the root box: with
    optimised slopes the check certifies it on the root box alone; with the default slopes only
    (``alpha_steps=0``) it has to split it, and certifies it as well."""
    net = _net(seed, d=3, width=16, depth=3, out=4)
    tens = complete._tensors(affine_chain(net))
    rng = np.random.default_rng(seed)
    G, h = rng.normal(size=(q, 4)), np.zeros(q)
    c, r = torch.zeros(1, 3, dtype=torch.float64), torch.full((1, 3), 0.5, dtype=torch.float64)
    Gb = np.vstack([G, G.mean(0)]) if q > 1 else G
    with torch.no_grad():
        low, _, pre = complete._bounds(tens, c, r, torch.as_tensor(Gb))
    d0 = float(low.max())
    d1 = float(complete._optimised(tens, pre, c, r, torch.as_tensor(G), torch.as_tensor(h),
                                   complete.ALPHA_STEPS).max())
    assert d1 > d0 + 1e-3  # this case: the optimised slopes gain
    prop = OutputProperty.unsafe([(G, h + (d0 + d1) / 2)])  # every margin shifted into the gap
    box = Box(np.full(3, -0.5), np.full(3, 0.5))
    fast = certify_box_complete(net, box, prop, timeout=60)
    slow = certify_box_complete(net, box, prop, timeout=60, alpha_steps=0)
    assert fast.status == slow.status == "certified"
    assert fast.stats["boxes"] == 1 < slow.stats["boxes"]
    assert not _sampled_violation(net, box, prop)


def test_a_row_that_no_relaxation_loses_is_certified_on_the_root_box(one_torch_thread):
    """``y1 - y0 = v . relu(z) + 0.001`` with ``v >= 0``: at least 0.001 on every input, which
    interval arithmetic on the last hidden layer shows at once, while the back-substitution
    through the relaxations below it (slopes default or optimised) is far looser on a wide box."""
    net = _net(5, d=4, width=24, depth=4, out=2)
    last = net[-1]
    with torch.no_grad():
        last.weight[1] = last.weight[0] + torch.rand(24)
        last.bias[1] = last.bias[0] + 1e-3
    box = Box(np.full(4, -3.0), np.full(4, 3.0))
    prop = OutputProperty.unsafe([(np.array([[-1.0, 1.0]]), np.array([0.0]))])  # y1 - y0 <= 0
    v = certify_box_complete(net, box, prop, timeout=60)
    assert v.status == "certified" and v.stats["boxes"] == 1
    tens = complete._tensors(affine_chain(net))
    c, r = torch.zeros(1, 4, dtype=torch.float64), torch.full((1, 4), 3.0, dtype=torch.float64)
    with torch.no_grad():
        _, _, pre = complete._bounds(tens, c, r, torch.tensor([[-1.0, 1.0]], dtype=torch.float64))
        relax = [complete._relax(l, u) for l, u in pre]
        plain, _ = complete._back(tens, relax, len(tens) - 1, torch.tensor([[[-1.0, 1.0]]], dtype=torch.float64), c, r)
        both, _ = complete._back(tens, relax, len(tens) - 1, torch.tensor([[[-1.0, 1.0]]], dtype=torch.float64), c, r, pre)
    assert float(plain) < 0 < 1e-3 - 1e-6 < float(both)
