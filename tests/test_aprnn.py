"""Provable point repair: optimum on hand-solved networks, equivalence of the lazy and full LPs,
infeasibility as an answer, conv layers, and agreement between HiGHS and Gurobi."""

import copy
import importlib.util

import numpy as np
import pytest
import torch
from torch import nn

import provrepair
from provrepair import solvers
from provrepair.certify import certify_points
from provrepair.errors import InputError, SolverLicenseError
from provrepair.specs import PointSpec

EPS = 1e-3


def _linear(w, b):
    lin = nn.Linear(len(w[0]), len(w))
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(w, dtype=torch.float32))
        lin.bias.copy_(torch.tensor(b, dtype=torch.float32))
    return lin


def _hidden_net():
    # x -> (x, -0.1x) -> ReLU -> (h0, 10 h1): at x = 1 the output is (1, 0): class 0.
    return nn.Sequential(_linear([[1.0], [-0.1]], [0.0, 0.0]), nn.ReLU(),
                         _linear([[1.0, 0.0], [0.0, 10.0]], [0.0, 0.0])).eval()


def _repair(net, spec, layer, **kw):
    return provrepair.repair(net, spec, layer=layer, **kw)


def test_single_layer_optimum_matches_hand_solution():
    # y = I x, x = (1, 0), label 1: y1 - y0 >= 1 + eps must come from the four live parameters
    # (dW00, dW10, db0, db1); the L∞ + L1/6 optimum splits it evenly: objective 5(1+eps)/12.
    net = nn.Sequential(_linear([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])).eval()
    spec = PointSpec.from_arrays(np.array([[1.0, 0.0]]), labels=np.array([1]))
    res = _repair(net, spec, layer=0)
    assert res.certified
    assert res.solver["objective"] == pytest.approx(5 * (1 + EPS) / 12, rel=1e-7)
    W = res.model[0].weight.detach().double().numpy()
    b = res.model[0].bias.detach().double().numpy()
    q = (1 + EPS) / 4
    np.testing.assert_allclose(W, [[1 - q, 0.0], [q, 1.0]], atol=1e-6)
    np.testing.assert_allclose(b, [-q, q], atol=1e-6)
    assert res.delta["count"] == 6 and res.delta["l0"] == 4


@pytest.mark.parametrize("objective,expected", [("linf", (1 + EPS) / 4), ("l1", (1 + EPS) / 6)])
def test_other_objectives_on_the_hand_solved_network(objective, expected):
    # L∞ alone: spread evenly over the 4 live parameters; L1 (mean over all 6): one parameter
    # may carry everything.
    net = nn.Sequential(_linear([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])).eval()
    spec = PointSpec.from_arrays(np.array([[1.0, 0.0]]), labels=np.array([1]))
    res = _repair(net, spec, layer=0, objective=objective)
    assert res.certified
    assert res.solver["objective"] == pytest.approx(expected, rel=1e-7)


def test_hidden_layer_optimum_and_fixed_pattern():
    # Repair at layer 0 with later biases. Pattern fixed: unit 1 stays off, so y1 = db1 and
    # y0 = 1 + dW0 + db0 + db2_0: four parameters share 1 + eps again.
    net = _hidden_net()
    spec = PointSpec.from_arrays(np.array([[1.0]]), labels=np.array([1]))
    res = _repair(net, spec, layer=0)
    assert res.certified
    assert res.solver["objective"] == pytest.approx(5 * (1 + EPS) / 12, rel=1e-7)
    with torch.no_grad():
        hidden = res.model[:2](torch.tensor([[1.0]]))
    assert hidden[0, 1].item() == 0.0  # the off unit was not switched on
    assert net[0].weight[0, 0].item() == 1.0  # the input model is untouched


def test_infeasible_within_bounds_is_reported_not_raised():
    net = nn.Sequential(_linear([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])).eval()
    spec = PointSpec.from_arrays(np.array([[1.0, 0.0]]), labels=np.array([1]))
    res = _repair(net, spec, layer=0, delta_bound=0.1)  # at most 0.4 of the needed 1.001
    assert res.status == "infeasible" and not res.certified
    assert res.model is None and "delta bound" in res.message


def _random_mlp(seed, sizes=(6, 12, 12, 4)):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1]).eval()


def _wrong_points(net, n, seed, dim):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim))
    with torch.no_grad():
        pred = net(torch.tensor(x, dtype=torch.float32)).argmax(1).numpy()
    n_out = net[-1].out_features
    return PointSpec.from_arrays(x, labels=(pred + 1) % n_out)


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_lazy_rows_give_the_full_lp_optimum(layer):
    net = _random_mlp(0)
    spec = _wrong_points(net, 8, 1, 6)
    full = _repair(net, spec, layer=layer, strategy="full")
    lazy = _repair(net, spec, layer=layer, strategy="generate")
    assert full.status == lazy.status
    if full.status == "infeasible":
        return
    assert lazy.certified and full.certified
    assert lazy.solver["objective"] == pytest.approx(full.solver["objective"], rel=1e-6)
    assert lazy.lp["final"]["rows"] <= full.lp["final"]["rows"]


@pytest.mark.parametrize("layer", [1, 2])
def test_lazy_output_rows_give_the_full_lp_optimum(layer):
    # ten classes: each point's spec has nine rows, of which the LP starts with the tightest one
    # and takes the others only when a solution violates them; at the last layer u is substituted out
    net = _random_mlp(5, sizes=(6, 16, 16, 10))
    spec = _wrong_points(net, 40, 6, 6)
    full = _repair(net, spec, layer=layer, strategy="full", formulation="u")
    lazy = _repair(net, spec, layer=layer)
    assert full.certified and lazy.certified
    assert lazy.solver["objective"] == pytest.approx(full.solver["objective"], rel=1e-6)
    assert any(r.get("violated_outputs", 0) > 0 for r in lazy.lp["rounds"])  # rows were generated
    assert lazy.lp["final"]["rows"] < full.lp["final"]["rows"]
    assert lazy.lp["full"]["rows"] >= 40 * 9
    n_delta = {1: 16 * 16 + 16 + 10, 2: 16 * 10 + 10}[layer]
    # the last two layers' LPs (only the ReLU on u after the layer) have no u columns: p, q per
    # delta and the L-infinity bound only
    assert lazy.lp["final"]["variables"] == 2 * n_delta + 1


def test_repaired_model_is_certified_independently_and_patterns_hold():
    net = _random_mlp(3, sizes=(6, 12, 12, 12, 4))
    spec = _wrong_points(net, 10, 4, 6)
    res = _repair(net, spec, layer=1)
    assert res.certified
    cert = certify_points(res.model, spec)
    assert cert.certified and cert.min_margin >= EPS * 0.99
    # every ReLU after the repaired layer keeps its original pattern at every point (a unit
    # may end exactly at 0, where both sides of the ReLU agree)
    x = torch.tensor(spec.inputs)
    old, new = copy.deepcopy(net).double(), copy.deepcopy(res.model).double()
    with torch.no_grad():
        for upto in (3, 5):  # inputs of the ReLUs after layers 1 and 2
            before, after = old[:upto](x), new[:upto](x)
            assert torch.all(torch.where(before > 0, after >= -1e-7, after <= 1e-7))


def test_certificate_fails_for_a_wrong_point():
    net = _random_mlp(3)
    spec = _wrong_points(net, 4, 4, 6)
    cert = certify_points(net, spec)
    assert not cert.certified and len(cert.failed) == 4


def test_conv_layer_repair():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Conv2d(3, 2, 3, stride=2), nn.ReLU(), nn.Flatten(),
                        nn.Linear(2 * 2 * 2, 3)).eval()
    net = provrepair.models.normalize_model(net, input_shape=(1, 7, 7))
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(4, 1, 7, 7))
    with torch.no_grad():
        pred = net(torch.tensor(x, dtype=torch.float32)).argmax(1).numpy()
    spec = PointSpec.from_arrays(x, labels=(pred + 1) % 3)
    for layer in (0, 1, 2):
        full = _repair(net, spec, layer=layer, strategy="full")
        lazy = _repair(net, spec, layer=layer)
        assert full.status == lazy.status
        if lazy.status != "infeasible":
            assert lazy.certified
            assert lazy.solver["objective"] == pytest.approx(full.solver["objective"], rel=1e-6)


def test_neuron_subset_changes_only_those_rows():
    net = _random_mlp(5)
    spec = _wrong_points(net, 3, 6, 6)
    res = _repair(net, spec, layer=1, neurons=[0, 2, 4, 6, 8, 10], delta_bound=10.0)
    if res.status == "infeasible":
        pytest.skip("this draw needs more neurons")
    changed = (res.model[2].weight - net[2].weight).abs().sum(1) > 0
    assert not changed[[1, 3, 5, 7, 9, 11]].any()


def test_bad_layer_and_options():
    net = _random_mlp(0)
    spec = _wrong_points(net, 2, 1, 6)
    with pytest.raises(InputError, match="affine layer 7 does not exist"):
        _repair(net, spec, layer=7)
    with pytest.raises(InputError, match="unknown objective"):
        _repair(net, spec, layer=0, objective="l2")
    with pytest.raises(InputError, match="neurons"):
        _repair(net, spec, layer=0, neurons=[99])


def test_time_limit_is_reported():
    net = _random_mlp(0)
    spec = _wrong_points(net, 8, 1, 6)
    res = _repair(net, spec, layer=0, time_limit=1e-9)
    assert res.status == "time_limit" and res.model is None


gurobi = pytest.mark.skipif(importlib.util.find_spec("gurobipy") is None, reason="gurobipy is not installed")


@gurobi
def test_highs_and_gurobi_agree_on_a_small_repair():
    net = _random_mlp(7, sizes=(4, 8, 8, 3))
    spec = _wrong_points(net, 5, 2, 4)
    h = _repair(net, spec, layer=1, solver="highs")
    g = _repair(net, spec, layer=1, solver="gurobi")
    assert h.lp["final"]["variables"] < 2000 and h.lp["final"]["rows"] < 2000
    assert h.status == g.status == "certified"
    assert g.solver["name"] == "gurobi" and g.solver["version"]
    assert abs(h.solver["objective"] - g.solver["objective"]) <= 1e-6 * abs(h.solver["objective"])


@gurobi
def test_gurobi_size_limit_becomes_a_clear_error():
    b = solvers.create("gurobi")
    b.add_variables(2500, 0.0, 1.0, cost=-1.0)
    try:
        res = b.solve()
    except SolverLicenseError as exc:
        assert "--solver highs" in str(exc)
    else:
        pytest.skip(f"a full Gurobi licence is present (status {res.status})")


@pytest.mark.shared
def test_real_network_lazy_equals_full_and_certifies(bench_dir):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = provrepair.load_model(bench_dir / "mnist_relu_9_100.tf")
    spec = PointSpec.load(bench_dir / "mnist_fog8_points.npz", where={"group": 0}, limit=8)
    lazy = provrepair.repair(net, spec, layer=6)
    full = provrepair.repair(net, spec, layer=6, strategy="full")
    assert lazy.certified and full.certified
    assert lazy.solver["objective"] == pytest.approx(full.solver["objective"], rel=1e-6)
    assert lazy.lp["final"]["rows"] < full.lp["final"]["rows"]
    assert len(lazy.lp["rounds"]) >= 2  # patterns were violated and generated
    assert provrepair.certify(lazy.model, spec).certified


def test_api_names_are_both_functions_and_packages():
    import provrepair.certify.points as points_module
    import provrepair.repair.aprnn as aprnn_module
    assert callable(provrepair.repair) and callable(provrepair.certify)
    assert points_module.certify_points is provrepair.certify.certify_points
    assert aprnn_module.repair_points is provrepair.repair.aprnn.repair_points


def test_thread_count_can_change_between_solves_in_one_process():
    net = _random_mlp(0)
    spec = _wrong_points(net, 4, 1, 6)
    assert _repair(net, spec, layer=2).certified
    assert _repair(net, spec, layer=2, threads=1).certified
    assert _repair(net, spec, layer=2, threads=2).certified
