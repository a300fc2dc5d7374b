"""Each repair metric against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from provrepair.errors import InputError
from provrepair.evaluate import metrics as M
from provrepair.evaluate.measure import measure


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_efficacy_and_generalization():
    assert M.efficacy([1, 2, 3, 4], [1, 0, 3, 0]) == 0.5
    assert M.generalization(np.array([7, 7, 7]), np.array([7, 7, 1])) == pytest.approx(2 / 3)
    assert math.isnan(M.efficacy([], []))
    with pytest.raises(InputError, match="one label per prediction"):
        M.efficacy([1, 2], [1])


def test_drawdown_in_percentage_points():
    assert M.drawdown(0.99, 0.95) == pytest.approx(4.0)
    assert M.drawdown(0.90, 0.92) == pytest.approx(-2.0)


def test_prediction_change():
    assert M.prediction_change([0, 1, 2, 3, 4], [0, 1, 0, 3, 0]) == pytest.approx(0.4)


def test_parameter_change_hand_values():
    a = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    b = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        b[0].weight[0, 0] += 3.0
        b[0].weight[1, 1] -= 4.0
        b[2].bias[0] += 0.5
    pc = M.parameter_change(a, b)
    assert pc["l0"] == 3 and pc["count"] == 4 + 2 + 2 + 1
    assert pc["linf"] == pytest.approx(4.0)
    assert pc["l2"] == pytest.approx(math.sqrt(9 + 16 + 0.25), rel=1e-6)
    assert pc["l1"] == pytest.approx(7.5, rel=1e-6)
    assert pc["touched"] == ["0.weight", "2.bias"]
    assert pc["added"] == 0


def test_robustness_accuracy_per_set():
    net = nn.Sequential(nn.Linear(1, 2, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[-1.0], [1.0]]))  # class 1 iff x > 0
    y = np.array([1, 1, 0, 0])
    sets = {"a/1": np.array([[1.0], [2.0], [-1.0], [-2.0]]), "a/2": np.array([[1.0], [-2.0], [1.0], [-2.0]])}
    assert M.robustness_accuracy(net, sets, y) == {"a/1": 1.0, "a/2": 0.5}


def test_softmax_and_constraint_accuracy_by_hand():
    p = M.softmax(np.log(np.array([[0.97, 0.02, 0.01], [0.5, 0.3, 0.2], [0.01, 0.49, 0.5]])))
    np.testing.assert_allclose(p[0], [0.97, 0.02, 0.01])
    # groups {0} and {1, 2}: row 0 commits (0.97 / 0.03), row 1 does not (0.5 / 0.5), row 2 commits (0.01 / 0.99)
    assert M.constraint_accuracy(p, [[0], [1, 2]], delta=0.05) == pytest.approx(2 / 3)
    # singleton groups: only row 0 has one class at >= 0.95
    assert M.constraint_accuracy(p, [[0], [1], [2]], delta=0.05) == pytest.approx(1 / 3)
    with pytest.raises(InputError, match="class group"):
        M.constraint_accuracy(p, [[0, 5]])


def test_confusion_accuracy_pair_precision_by_hand():
    # labels / predictions of 6 samples over 3 classes
    y = [0, 0, 0, 1, 1, 2]
    pred = [0, 0, 1, 0, 1, 2]
    out = M.confusion_accuracy(pred, y, classes=3)
    # pair (0,1): predicted 0 among labels {0,1}: samples 0,1 (label 0), 3 (label 1) -> TP 2, FP 1
    assert out["pairs"]["0,1"] == pytest.approx(2 / 3)
    # pair (1,0): predicted 1 among labels {0,1}: sample 2 (label 0), 4 (label 1) -> 1 / 2
    assert out["pairs"]["1,0"] == pytest.approx(0.5)
    assert out["pairs"]["0,2"] == 1.0 and out["pairs"]["2,0"] == 1.0 and out["pairs"]["2,1"] == 1.0
    assert out["min"] == pytest.approx(0.5) and out["worst"] == "1,0"
    assert out["mean"] == pytest.approx(np.mean(list(out["pairs"].values())))


def test_certified_efficacy_counts_float32_failures_too():
    class Cert:
        n_points = 4
        failed = np.array([1])
        float32_failed = np.array([1, 3])
    assert M.certified_efficacy(Cert()) == 0.5


def test_measure_records_time_and_memory():
    timings = {}
    with measure(timings, "stage"):
        block = np.ones(20 * 2**20 // 8)  # 20 MiB
        block.sum()
    rec = timings["stage"]
    assert rec["seconds"] >= 0 and rec["peak_rss_mb"] > 0 and rec["rss_increase_mb"] >= 0
