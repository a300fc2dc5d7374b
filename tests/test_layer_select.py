"""Brute-force layer selection and --layer auto with fallback."""

import numpy as np
import pytest
import torch
from torch import nn

import provrepair
import provrepair.api as api
from provrepair.heuristics.brute_force import CandidateOutcome, best_layer, brute_force
from provrepair.specs import PointSpec


def _net_and_spec(seed=0, n=5):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    with torch.no_grad():
        pred = net(torch.tensor(x, dtype=torch.float32)).argmax(1).numpy()
    val = rng.normal(size=(200, 4)).astype(np.float32)
    with torch.no_grad():
        val_y = net(torch.tensor(val)).argmax(1).numpy()
    return net, PointSpec.from_arrays(x, labels=(pred + 1) % 3), (val, val_y)


def test_brute_force_serial_and_parallel_agree():
    net, spec, val = _net_and_spec()
    serial = brute_force(api.repair, net, spec, [0, 1, 2], validation=val)
    parallel = brute_force(api.repair, net, spec, [0, 1, 2], validation=val, workers=2)
    assert [o.layer for o in serial] == [0, 1, 2] == [o.layer for o in parallel]
    for a, b in zip(serial, parallel):
        assert a.status == b.status, (a.message, b.message)
        if a.usable:
            assert a.objective == pytest.approx(b.objective, rel=1e-6)
            assert a.drawdown_pp == pytest.approx(b.drawdown_pp, abs=1e-9)
            assert a.drawdown_pp >= -100 and a.drawdown_pp <= 100


def test_best_layer_prefers_smallest_drawdown_then_speed():
    outs = [CandidateOutcome(0, "certified", 1.0, 5.0), CandidateOutcome(1, "infeasible", None, 1.0),
            CandidateOutcome(2, "certified", 0.2, 9.0), CandidateOutcome(3, "certified", 0.2, 2.0)]
    assert best_layer(outs).layer == 3
    assert best_layer([CandidateOutcome(0, "infeasible", None, 1.0)]) is None


def test_unsupported_candidate_is_an_outcome_not_a_crash():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True), nn.Flatten(),
                        nn.Linear(2 * 3 * 3, 3)).eval()  # max-pools are supported (issue 18); ceil_mode is not
    net = provrepair.models.normalize_model(net, input_shape=(1, 8, 8))
    x = np.random.default_rng(0).uniform(size=(2, 1, 8, 8))
    spec = PointSpec.from_arrays(x, labels=np.array([0, 1]))
    out = brute_force(api.repair, net, spec, [0])
    assert out[0].status == "error" and "MaxPool2d" in out[0].message


def test_auto_falls_back_when_the_first_choice_fails(monkeypatch):
    net, spec, _ = _net_and_spec(1)
    from provrepair.repair.provable import PointRepairer
    real = PointRepairer._at
    calls = []

    def fake(self, net_, spec_, n_out, layer, options, progress, keep=None):
        calls.append(layer)
        res = real(self, net_, spec_, n_out, layer, options, progress, keep)
        if layer == 2:  # pretend the top-ranked layer is infeasible
            res.status, res.model = "infeasible", None
        return res

    monkeypatch.setattr(PointRepairer, "_at", fake)
    monkeypatch.setattr("provrepair.heuristics.select.rank_layers", lambda *a, **k: [2, 1, 0])
    res = provrepair.repair(net, spec, layer="auto")
    assert calls[:2] == [2, 1]
    assert res.certified and res.layer == 1
    sel = res.layer_selection
    assert sel["ranking"] == [2, 1, 0] and sel["chosen"] == 1
    assert [t["status"] for t in sel["tried"]] == ["infeasible", "certified"]


def test_auto_ranks_real_candidates_and_certifies():
    net, spec, _ = _net_and_spec(2)
    res = provrepair.repair(net, spec, layer="auto")
    assert res.layer_selection["ranking"]
    if res.certified:
        assert res.layer == res.layer_selection["chosen"]
