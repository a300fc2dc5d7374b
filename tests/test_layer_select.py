"""Brute-force layer selection and --layer auto with fallback."""

import copy

import numpy as np
import pytest
import torch
from provrepair.heuristics import predict, select
from provrepair.heuristics.brute_force import CandidateOutcome, best_layer, brute_force
from torch import nn

import provrepair
import provrepair.api as api
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


# --- the probe: drawdown predicted per candidate by a small repair (heuristics/predict.py) ---



def test_probe_indices_cover_every_label_and_are_deterministic():
    labels = np.array([3, 3, 3, 3, 1, 1, 7, 3, 3, 3])
    idx = predict.probe_indices(labels, 10)
    assert len(idx) == 2 and set(labels[idx]) == {1, 3}
    assert np.array_equal(idx, predict.probe_indices(labels, 10))
    assert np.array_equal(predict.probe_indices(labels[:2], 2), [0, 1])  # fewer than the minimum: all
    assert len(predict.probe_indices(None, 40)) == 8


def test_order_by_prediction_ties_go_fastest_and_unknown_last():
    preds = [{"layer": 0, "predicted_drawdown_pp": None, "predicted_seconds": 1.0},
             {"layer": 1, "predicted_drawdown_pp": 0.50, "predicted_seconds": 9.0},
             {"layer": 2, "predicted_drawdown_pp": 0.60, "predicted_seconds": 2.0},
             {"layer": 3, "predicted_drawdown_pp": 4.00, "predicted_seconds": 0.1},
             {"layer": 4, "predicted_drawdown_pp": None, "predicted_seconds": 0.5}]
    assert predict.order_by_prediction(preds) == [2, 1, 3, 4, 0]
    assert predict.order_by_prediction(preds, tie_pp=0.0) == [1, 2, 3, 4, 0]


def test_predict_drawdowns_scales_the_probe_and_keeps_failures_unknown():
    net, spec, (vx, vy) = _net_and_spec(2, n=12)
    broken = copy.deepcopy(net)
    with torch.no_grad():
        broken[-1].bias += torch.tensor([50.0, 0.0, 0.0])  # predicts class 0 everywhere
    seen = []

    def probe_fn(layer, rows, idx, limit):
        seen.append((layer, len(idx), limit))
        return {0: None, 1: net, 2: broken}[layer]

    plan = [{"layer": k, "rows": None, "seconds": s} for k, s in ((0, 20.0), (1, 1.0), (2, 0.1))]
    preds = predict.predict_drawdowns(probe_fn, net, plan, spec.labels, 12, (vx, vy))
    assert [s[1] for s in seen] == [3, 3, 3]
    assert seen[0][2] == pytest.approx(8.0) and seen[2][2] == predict.PROBE_MIN_SECONDS
    assert preds[0]["predicted_drawdown_pp"] is None and preds[1]["predicted_drawdown_pp"] == 0.0
    lost = 100 * (1 - np.mean(vy == 0))
    assert preds[2]["probe_drawdown_pp"] == pytest.approx(lost)
    assert preds[2]["predicted_drawdown_pp"] == pytest.approx(lost * (12 / 3) ** predict.PROBE_EXPONENT)
    assert predict.order_by_prediction(preds) == [1, 2, 0]


def test_reference_inputs_need_a_dataset_that_fits_the_model():
    net, _, _ = _net_and_spec(0)
    assert predict.reference_inputs(net, (4,)) is None
    assert predict.reference_inputs(net, None) is None


def test_rank_by_probe_repairs_subsets_and_predicts_every_candidate():
    net, spec, (vx, vy) = _net_and_spec(3, n=9)
    plan = [{"layer": k, "rows": None, "seconds": 1.0} for k in (0, 1, 2)]

    def probe_fn(layer, rows, idx, limit):
        res = provrepair.repair(net, spec.subset(idx), layer=layer, time_limit=limit)
        return res.model if res.certified else None

    ranking, info = select.rank_by_prediction(net, spec, plan, heuristic="probe", probe_fn=probe_fn, input_shape=(4,),
                                               reference=(vx, vy))
    assert sorted(ranking) == [0, 1, 2] and info["ranked_by"] == "probe" and info["reference"] == "given"
    assert len(info["predictions"]) == 3
    known = [p for p in info["predictions"] if p["predicted_drawdown_pp"] is not None]
    assert known and ranking[0] == predict.order_by_prediction(info["predictions"])[0]


def test_auto_linear_falls_back_to_a_scorer_without_reference_inputs():
    net, spec, _ = _net_and_spec(4)
    res = provrepair.repair(net, spec, layer="auto", heuristic="linear")
    sel = res.layer_selection
    assert sel["heuristic"] == "linear" and res.certified
    assert sel["ranked_by"] == select.FALLBACK_HEURISTIC and sel["reference"] is None


def test_linear_ranks_by_predicted_drawdown_on_mnist_validation_images():
    from provrepair.data import load_dataset
    from provrepair.zoo import load_zoo
    net = load_zoo("mnist_mlp")
    x, y = load_dataset("mnist", "test")
    x = x[:200].reshape(200, -1)
    with torch.no_grad():
        wrong = np.flatnonzero(net(torch.tensor(x)).argmax(1).numpy() != y[:200])[:3]
    spec = PointSpec.from_arrays(x[wrong], labels=y[wrong])
    plan = select.candidate_plan(net, spec, time_limit=60.0)
    ranking, info = select.rank_by_prediction(net, spec, plan, heuristic="linear", input_shape=(784,))
    assert info["ranked_by"] == "linear" and info["reference"].startswith("mnist:val")
    assert [p["layer"] for p in info["predictions"]] == [c["layer"] for c in plan]
    assert all(p["predicted_drawdown_pp"] is not None for p in info["predictions"])
    assert ranking == predict.order_by_prediction(info["predictions"])


def test_rank_layers_refuses_the_probe_and_unknown_names():
    net, spec, _ = _net_and_spec(0)
    with pytest.raises(provrepair.errors.InputError, match="rank_by_prediction"):
        select.rank_layers(net, spec, heuristic="probe", candidates=[0, 1, 2])
    with pytest.raises(provrepair.errors.InputError, match="probe"):
        select.rank_layers(net, spec, heuristic="nonsense", candidates=[0, 1, 2])


def test_least_change_lifts_every_linearised_slack_to_the_margin():
    rng = np.random.default_rng(0)
    G = rng.normal(size=(6, 40))
    slack = np.array([-1.0, 0.5, -0.2, 2.0, -3.0, 0.0])
    lam = predict._least_change(G @ G.T, slack)
    after = slack - G @ G.T @ lam
    assert np.all(after >= predict.LINEAR_MARGIN - 1e-6)
    assert np.allclose(after[slack < 0], predict.LINEAR_MARGIN, atol=1e-6)
    assert np.all(predict._least_change(G @ G.T, np.ones(6)) == 0)  # nothing to repair: no change


def test_linear_drawdowns_change_nothing_where_nothing_needs_repair():
    net, spec, (vx, vy) = _net_and_spec(5, n=6)
    with torch.no_grad():
        right = net(torch.tensor(spec.inputs, dtype=torch.float32)).argmax(1).numpy()
    plan = [{"layer": k, "rows": None, "seconds": 1.0} for k in (0, 1, 2)]
    ok = predict.linear_drawdowns(net, PointSpec.from_arrays(spec.inputs, labels=right), plan, (vx, vy), None)
    assert [p["predicted_drawdown_pp"] for p in ok] == [0.0, 0.0, 0.0] and all(p["delta_l2"] == 0 for p in ok)
    plan[1]["rows"] = 2
    moved = predict.linear_drawdowns(net, spec, plan, (vx, vy), lambda k, count: [0, 3][:count])
    assert all(p["delta_l2"] > 0 for p in moved) and [p["layer"] for p in moved] == [0, 1, 2]
    for p in moved:
        assert p["predicted_drawdown_pp"] == pytest.approx(predict.LINEAR_SCALE * p["linear_drawdown_pp"])
        assert -100 <= p["linear_drawdown_pp"] <= 100


def test_auto_retries_a_layer_that_ran_out_of_its_first_slice(monkeypatch):
    net, spec, _ = _net_and_spec(6)
    from provrepair.repair.provable import PointRepairer
    real = PointRepairer._at
    limits = []

    def fake(self, net_, spec_, n_out, layer, options, progress, keep=None):
        res = real(self, net_, spec_, n_out, layer, options, progress, keep)
        if spec_.n_points == spec.n_points:  # not a probe
            limits.append((layer, options.time_limit))
            if len(limits) <= 3:  # every layer runs out of its first, capped try
                res.status, res.model = "time_limit", None
        return res

    monkeypatch.setattr(PointRepairer, "_at", fake)
    res = provrepair.repair(net, spec, layer="auto", time_limit=100.0)
    sel = res.layer_selection
    assert [t["status"] for t in sel["tried"]][:3] == ["time_limit"] * 3 and res.certified
    assert sel["tried"][3]["layer"] == sel["ranking"][0]
    assert all(lim <= select.attempt_seconds(1e-3) + 1e-9 for _, lim in limits[:3]) and limits[3][1] > 80


def test_the_first_layer_is_planned_slower():
    net, spec, _ = _net_and_spec(0, n=5)
    from provrepair.heuristics.analysis import estimate_seconds, predict_lp_size
    plan = select.candidate_plan(net, spec, time_limit=1e6)
    first = estimate_seconds(predict_lp_size(net, spec, 0, formulation="auto"))
    assert plan[0]["seconds"] == pytest.approx(select.FIRST_LAYER_FACTOR * first)
    assert plan[1]["seconds"] == pytest.approx(estimate_seconds(predict_lp_size(net, spec, 1, formulation="auto")))
