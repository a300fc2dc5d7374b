"""The LP polish of the certified pipelines, on tiny networks."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import provrepair
from provrepair.errors import InputError
from provrepair.models import ModelMeta, set_meta
from provrepair.repair.deeppatch import PatchedNet
from provrepair.repair.pipeline import polish
from provrepair.specs import PointSpec


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _mlp(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    set_meta(net, ModelMeta(input_shape=(4,)))
    return net


def _cnn(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(4 * 6 * 6, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    set_meta(net, ModelMeta(input_shape=(1, 6, 6)))
    return net


def _wrong_points(net, shape, n=6, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, *shape)).astype(np.float32)
    with torch.no_grad():
        pred = net(torch.as_tensor(x)).argmax(1).numpy()
    x = x[:n]
    return x, (pred[:n] + 1) % 3  # every point labelled with a class the network does not predict


def test_polish_certifies_a_statistical_stage_at_the_last_layer():
    net = _mlp()
    x, y = _wrong_points(net, (4,))
    spec = PointSpec.from_arrays(x, labels=y)
    snapshot = copy.deepcopy(net.state_dict())
    result = polish(net, spec)
    assert not result.before.certified and result.before.n_passed == 0
    assert result.certified and result.after.certified and result.after.n_passed == len(y)
    assert result.layer == 2  # the last affine layer sufficed
    for k, v in net.state_dict().items():  # the input network is untouched
        assert torch.equal(v, snapshot[k])
    changed = [k for k, v in result.model.state_dict().items() if not torch.equal(v, snapshot[k])]
    assert changed and all(k.startswith("4.") for k in changed)
    assert provrepair.certify(result.model, spec).certified


def test_polish_of_a_certified_network_changes_nothing():
    net = _mlp()
    x = np.random.default_rng(2).normal(size=(5, 4)).astype(np.float32)
    with torch.no_grad():
        y = net(torch.as_tensor(x)).argmax(1).numpy()
    result = polish(net, PointSpec.from_arrays(x, labels=y))
    assert result.certified and result.layer is None and result.model is net


def test_polish_of_a_deeppatch_network_keeps_its_routing():
    base = _cnn()
    patched = PatchedNet(copy.deepcopy(base), {0: [1, 2], 2: [0]}, boundary=0.3, variant="gamma", seed=3).eval()
    x, y = _wrong_points(patched, (1, 6, 6), n=5)
    spec = PointSpec.from_arrays(x, labels=y)
    with torch.no_grad():
        routed = patched.uses_replacement(torch.as_tensor(x)).clone()
    result = polish(patched, spec)
    assert result.certified and result.after.n_passed == 5
    assert isinstance(result.model, PatchedNet)
    with torch.no_grad():
        assert torch.equal(result.model.uses_replacement(torch.as_tensor(x)), routed)
    for name in ("repl_weight", "repl_bias"):
        for k, p in getattr(patched, name).items():
            assert torch.equal(getattr(result.model, name)[k], p)
    # only dense layers after the last patched conv changed
    changed = [k for k, v in result.model.base.state_dict().items() if not torch.equal(v, patched.base.state_dict()[k])]
    assert changed and all(int(k.split(".")[0]) > 2 for k in changed)


def test_polish_refuses_bad_arguments():
    net = _mlp()
    x, y = _wrong_points(net, (4,), n=2)
    with pytest.raises(InputError, match="max_layers"):
        polish(net, PointSpec.from_arrays(x, labels=y), max_layers=0)
