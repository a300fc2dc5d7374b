"""Independent point certification and the float32 evaluation helpers."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import provrepair.certify.points as cert_mod
from provrepair.certify import PointCertificate, certify_points
from provrepair.errors import InputError, SpecError
from provrepair.evaluate.metrics import accuracy, logits, predictions
from provrepair.specs import PointSpec


def _small_net() -> nn.Sequential:
    """2 -> 3 -> 2 ReLU net with exactly representable weights.

    x=(2,0): hidden (2,0,2), output (3, 0.25).   x=(0,1): hidden (0,1,1), output (0.5, 1.25).
    """
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        net[0].bias.zero_()
        net[2].weight.copy_(torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.0]]))
        net[2].bias.copy_(torch.tensor([0.0, 0.25]))
    return net


X = np.array([[2.0, 0.0], [0.0, 1.0]])


def test_known_margins_and_one_failure():
    net = _small_net()
    net.train()
    cert = certify_points(net, PointSpec.from_arrays(X, labels=[0, 0]))
    assert isinstance(cert, PointCertificate)
    assert cert.method == "exact-points"
    np.testing.assert_array_equal(cert.margins, [2.75, -0.75])
    assert cert.min_margin == -0.75
    assert cert.certified is False
    assert cert.n_points == 2 and cert.n_passed == 1
    assert cert.failed.tolist() == [1]
    assert cert.float32_failed.tolist() == [1]  # the float32 model misclassifies it too
    # the caller's network is untouched
    assert net.training and net[0].weight.dtype == torch.float32


def test_all_pass_and_strict_margin():
    spec = PointSpec.from_arrays(X, labels=[0, 1])
    cert = certify_points(_small_net(), spec)
    assert cert.certified and cert.float32_agrees
    assert cert.min_margin == 0.75 and cert.failed.size == 0
    strict = certify_points(_small_net(), spec, margin=0.75)  # slack must exceed the margin
    assert not strict.certified and strict.failed.tolist() == [1]
    assert strict.float32_agrees  # the float32 check only needs slack > 0
    with pytest.raises(InputError, match="margin"):
        certify_points(_small_net(), spec, margin=-1.0)


def test_explicit_constraints():
    # point 0: y0 <= 4 (slack 1) and -y1 <= 0 (slack 0.25); point 1: y1 - y0 <= 1 (slack 0.25)
    A = np.array([[[1.0, 0.0], [0.0, -1.0]], [[-1.0, 1.0], [0.0, 0.0]]])
    b = np.array([[4.0, 0.0], [1.0, 1.0]])
    cert = certify_points(_small_net(), PointSpec.from_arrays(X, A=A, b=b))
    np.testing.assert_array_equal(cert.margins, [0.25, 0.25])
    assert cert.certified and cert.n_constraints == 4


def test_float32_disagreement():
    net = nn.Sequential(nn.Linear(1, 2))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].bias.copy_(torch.tensor([0.0, 1e-9]))  # 1 + 1e-9 rounds to 1 in float32
    cert = certify_points(net, PointSpec.from_arrays([[1.0]], labels=[1]))
    assert cert.failed.size == 0 and cert.n_passed == 1
    assert cert.min_margin == pytest.approx(1e-9, rel=1e-6)
    assert cert.float32_agrees is False
    assert cert.float32_failed.tolist() == [0]
    assert cert.certified is False


def test_reshapes_to_model_input_shape_and_rejects_bad_specs():
    net = nn.Sequential(nn.Flatten(), *_small_net())
    net.provrepair_meta = SimpleNamespace(input_shape=(1, 2))
    cert = certify_points(net, PointSpec.from_arrays(X, labels=[0, 1]))
    assert cert.certified
    with pytest.raises(SpecError, match=r"label 5 .*\[0, 1\]"):
        certify_points(net, PointSpec.from_arrays(X, labels=[0, 5]))
    with pytest.raises(SpecError, match=r"\(3,\).*\(1, 2\)"):
        certify_points(net, PointSpec.from_arrays(np.zeros((1, 3)), labels=[0]))
    with pytest.raises(SpecError, match="NaN"):
        certify_points(net, PointSpec.from_arrays([[np.nan, 0.0]], labels=[0]))


def test_nan_output_fails_and_to_dict_is_json():
    net = _small_net()
    with torch.no_grad():
        net[2].bias[1] = float("nan")
    cert = certify_points(net, PointSpec.from_arrays(X, labels=[0, 0]))
    assert not cert.certified and cert.failed.tolist() == [0, 1]
    d = cert.to_dict()
    text = json.dumps(d, allow_nan=False)
    assert json.loads(text)["min_margin"] is None
    good = certify_points(_small_net(), PointSpec.from_arrays(X, labels=[0, 1])).to_dict()
    assert good["certified"] is True and good["margins"] == [2.75, 0.75] and good["failed"] == []
    assert isinstance(good["min_margin"], float)


def test_batching_matches_single_batch():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 4))
    x = np.random.default_rng(1).normal(size=(37, 5))
    labels = predictions(net, x)
    a = certify_points(net, PointSpec.from_arrays(x, labels=labels), batch_size=4)
    b = certify_points(net, PointSpec.from_arrays(x, labels=labels), batch_size=1000)
    np.testing.assert_allclose(a.margins, b.margins, rtol=0, atol=1e-14)  # BLAS blocking may differ
    assert a.n_passed == b.n_passed


def test_certify_does_not_import_repair():
    tree = ast.parse(Path(cert_mod.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert "repair" not in (node.module or "").split("."), node.module
        if isinstance(node, ast.Import):
            assert all("provrepair.repair" not in a.name for a in node.names)


# --------------------------------------------------------------------------- metrics
def test_accuracy_and_predictions():
    net = _small_net().double()
    net.train()
    assert predictions(net, X).tolist() == [0, 1]
    assert accuracy(net, X, [0, 0]) == 0.5
    assert accuracy(net, torch.tensor(X), torch.tensor([0, 1]), batch_size=1) == 1.0
    assert net.training and net[0].weight.dtype == torch.float64  # caller's net untouched
    out = logits(_small_net(), X)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[3.0, 0.25], [0.5, 1.25]])
    with pytest.raises(InputError, match="one label per sample"):
        accuracy(net, X, [0])
