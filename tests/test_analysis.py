"""Repair-set analysis on hand-made repair sets whose numbers are known."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from provrepair.heuristics.analysis import (
    GUROBI_RESTRICTED_LIMIT,
    TIMING_MEASUREMENTS,
    analyze,
    analyze_points,
    estimate_seconds,
    format_analysis,
    predict_lp_size,
)
from provrepair.specs import PointSpec


def _spec(x, labels=None):
    x = np.asarray(x, dtype=np.float64)
    return PointSpec.from_arrays(x, np.zeros(len(x), dtype=np.int64) if labels is None else labels)


def _set(layer, W, b):
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(W, dtype=torch.float32))
        layer.bias.copy_(torch.tensor(b, dtype=torch.float32))


@pytest.fixture
def mlp():
    """3-4-4-2 with ReLUs; weights chosen so the activation patterns are known by hand."""
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    _set(net[0], [[1, 0, 0], [0, 1, 0], [-1, 0, 0], [0, 0, 1]], [0] * 4)
    _set(net[2], np.eye(4), [0] * 4)
    _set(net[4], [[1, 0, 0, 0], [0, 1, 0, 0]], [0, 0])
    return net.eval()


@pytest.fixture
def mlp_spec():
    # input feature 2 is zero at both points
    return _spec([[1, 2, 0], [-1, 1, 0]], [0, 1])


def test_line_in_5d_has_affine_dimension_1():
    t = np.linspace(-2, 3, 7)[:, None]
    x = np.array([1.0, -2, 0.5, 3, 0]) + t * np.array([0.3, 1, -1, 2, 0.7])
    rep = analyze_points(_spec(x))
    assert rep["size"] == {"points": 7, "input_dim": 5}
    assert rep["concentration"] == {"affine_dimension": 1, "points_to_span": 2}


def test_triangle_and_degenerate_sets():
    tri = analyze_points(_spec([[0, 0, 0], [1, 0, 0], [0, 1, 0]]))
    assert tri["concentration"]["affine_dimension"] == 2
    assert tri["concentration"]["points_to_span"] == 3
    same = analyze_points(_spec([[1.5, 2.0]] * 4))
    assert same["concentration"]["affine_dimension"] == 0
    one = analyze_points(_spec([[1.0, 2.0, 3.0]]))
    assert one["concentration"] == {"affine_dimension": 0, "points_to_span": 1}
    assert one["diversity"]["spread_input"] == 0.0


def test_balance_and_classes():
    even = analyze_points(_spec(np.zeros((4, 2)), [0, 0, 1, 1]))["diversity"]
    assert even["classes"] == 2 and even["balance"] == pytest.approx(1.0)
    skew = analyze_points(_spec(np.zeros((4, 2)), [0, 0, 0, 1]))["diversity"]
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(2)
    assert skew["classes"] == 2 and skew["balance"] == pytest.approx(h, rel=1e-12)
    single = analyze_points(_spec(np.zeros((3, 2)), [4, 4, 4]))["diversity"]
    assert single["classes"] == 1 and single["balance"] == 1.0
    # explicit constraints only: no labels to count
    none = analyze_points(PointSpec.from_arrays(np.zeros((2, 2)), A=[[1.0, -1.0]], b=[0.0]))["diversity"]
    assert none["classes"] is None and none["balance"] is None


def test_spread_of_symmetric_points():
    rep = analyze_points(_spec([[3, 4], [-3, -4]]))
    assert rep["diversity"]["spread_input"] == pytest.approx(5.0)
    cross = analyze_points(_spec([[1, 0], [-1, 0], [0, 2], [0, -2]]))
    assert cross["diversity"]["spread_input"] == pytest.approx(1.5)
    assert cross["diversity"]["spread_feature"] is None


def test_spread_feature_after_relu(mlp, mlp_spec):
    sf = analyze_points(mlp_spec, mlp)["diversity"]["spread_feature"]
    # layer 0 (after ReLU): [1,2,0,0] and [0,1,1,0]; layer 1 the same (identity); layer 2: [1,2], [0,1]
    assert sf == pytest.approx([math.sqrt(3) / 2, math.sqrt(3) / 2, math.sqrt(2) / 2])


def test_predict_lp_size_mlp_by_hand(mlp, mlp_spec):
    # layer 0: live = 2 (feature 2 is zero), n_delta = 4*2 + 4 + (4 + 2) = 18, N*n_k = 8, R = 2*(2-1) = 2
    # pre-activations [1,2,-1,0], [-1,1,1,0]: 4 active units; nnz(h) = 2 + 2
    # nonzeros = 3*18 + (2*4*4 + 4 + 2*8) + 2*2*(4/2 + 6) = 54 + 52 + 32
    assert predict_lp_size(mlp, mlp_spec, 0) == {"variables": 2 * 18 + 1 + 8, "rows": 18 + 8 + 2,
                                                  "nonzeros": 138}
    # layer 1: inputs [1,2,0,0], [0,1,1,0]: live = 3, n_delta = 4*3 + 4 + 2 = 18; 4 active units
    # nonzeros = 54 + (2*4*4 + 4 + 16) + 2*2*(2 + 2) = 122
    assert predict_lp_size(mlp, mlp_spec, 1) == {"variables": 45, "rows": 28, "nonzeros": 122}
    # last layer (no ReLU: every unit counts as active): live = 3, n_delta = 2*3 + 2 = 8, N*n_k = 4
    # nonzeros = 3*8 + (2*2*4 + 4 + 2*4) + 2*2*(4/2 + 0) = 24 + 28 + 8
    assert predict_lp_size(mlp, mlp_spec, 2) == {"variables": 2 * 8 + 1 + 4, "rows": 8 + 4 + 2, "nonzeros": 60}
    assert predict_lp_size(mlp, mlp_spec, -1) == predict_lp_size(mlp, mlp_spec, 2)


def test_predict_lp_size_conv_variables():
    net = nn.Sequential(nn.Conv2d(1, 2, 2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2)).eval()
    # only pixel (2,2) is nonzero: of the 4 patch features only the bottom-right one is ever nonzero
    x = np.zeros((2, 1, 3, 3))
    x[0, 0, 2, 2], x[1, 0, 2, 2] = 1.0, -2.0
    size = predict_lp_size(net, _spec(x, [0, 1]), 0)
    n_delta = 2 * 1 + 2 + 2          # n_rows*live + n_rows + later bias
    n_k = 2 * 2 * 2                  # channels * H_out * W_out
    assert size["variables"] == 2 * n_delta + 1 + 2 * n_k
    assert size["rows"] == n_delta + 2 * n_k + 2
    dense = predict_lp_size(net, _spec(np.ones((2, 1, 3, 3)), [0, 1]), 0)
    assert dense["variables"] == 2 * (2 * 4 + 2 + 2) + 1 + 2 * n_k
    rep = analyze(_spec(x, [0, 1]), net)   # image-shaped inputs go through the conv net unflattened
    assert len(rep["diversity"]["spread_feature"]) == 2 and len(rep["layers"]) == 2


def test_restricted_licence_flag_and_warnings(mlp, mlp_spec):
    small = analyze(mlp_spec, mlp)
    assert [r["layer"] for r in small["layers"]] == [0, 1, 2]
    assert all(r["gurobi_restricted_ok"] for r in small["layers"])
    assert small["warnings"] == []
    json.dumps(small)  # plain data for --report

    torch.manual_seed(0)
    big = nn.Sequential(nn.Linear(60, 40), nn.ReLU(), nn.Linear(40, 3)).eval()
    spec = _spec(np.random.default_rng(0).normal(size=(5, 60)), [0, 1, 2, 0, 1])
    rep = analyze(spec, big)
    first, last = rep["layers"]
    assert first["variables"] > GUROBI_RESTRICTED_LIMIT and not first["gurobi_restricted_ok"]
    assert last["gurobi_restricted_ok"]
    assert any(w.startswith("layer 0:") and "--solver highs" in w for w in rep["warnings"])
    assert not any(w.startswith("layer 1:") for w in rep["warnings"])
    text = format_analysis(rep)
    assert "too big" in text and "--solver highs" in text and "affine dimension" in text


def test_estimate_seconds_order_of_magnitude():
    for nnz, t in TIMING_MEASUREMENTS:
        assert t / 5 < estimate_seconds(nnz) < t * 5
    assert estimate_seconds({"nonzeros": 2_000_000}) > estimate_seconds(100_000) > 0


def test_format_without_network():
    text = format_analysis(analyze(_spec([[0, 0], [1, 1]], [0, 1])))
    assert "points" in text and "balance" in text and "Predicted" not in text


@pytest.mark.parametrize("layer", [1, 2])
def test_auto_prediction_follows_the_substituted_head(layer):
    # an MLP's last two layers: u substituted out, one output row per point to start
    from test_aprnn import _random_mlp, _repair, _wrong_points

    net = _random_mlp(5, sizes=(6, 16, 16, 10))
    spec = _wrong_points(net, 30, 6, 6)
    size = predict_lp_size(net, spec, layer, formulation="auto")
    first = _repair(net, spec, layer=layer).lp["rounds"][0]
    assert (size["variables"], size["rows"]) == (first["variables"], first["rows"])
    assert first["nonzeros"] <= size["nonzeros"] <= 1.5 * first["nonzeros"]
    assert predict_lp_size(net, spec, layer, formulation="u")["rows"] > 2 * size["rows"]
