"""Issue 21: the independent complete check and whole-property repair (tiny networks, CPU, seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from provrepair.certify import certify_regions
from provrepair.certify.complete import affine_chain, certify_box_complete
from provrepair.errors import UnsupportedLayerError
from provrepair.models import normalize_model
from provrepair.specs import RegionSpec
from provrepair.specs.regions import Box, OutputProperty


def _mlp(seed: int, d: int = 3, width: int = 12, depth: int = 3, out: int = 3) -> nn.Sequential:
    torch.manual_seed(seed)
    mods: list[nn.Module] = []
    w = d
    for _ in range(depth):
        mods += [nn.Linear(w, width), nn.ReLU()]
        w = width
    mods.append(nn.Linear(w, out))
    return normalize_model(nn.Sequential(*mods).double().float())


def _sampled_violation(net, box: Box, prop: OutputProperty, n: int = 4000) -> bool:
    x = box.sample(n, np.random.default_rng(0))
    with torch.no_grad():
        y = net.double()(torch.as_tensor(x)).numpy()
    net.float()
    return bool((prop.violated(y) >= 0).any())


@pytest.mark.parametrize("seed", range(12))
def test_complete_check_agrees_with_the_engine_and_sampling(seed, one_torch_thread):
    net = _mlp(seed)
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


def test_complete_check_reaches_milp_leaves_and_reports_them(one_torch_thread):
    net = _mlp(3, width=16)
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
        certify_box_complete(_mlp(0), VPolytope(np.eye(3)), OutputProperty.label(0, 3))
