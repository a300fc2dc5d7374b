"""Layer-selection scorers on tiny networks whose expected scores are known by construction."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from provrepair.heuristics import scorers as S
from provrepair.heuristics.scorers import NEEDS, SCORERS, rank, score_all
from provrepair.errors import InputError


def linear(w, b=None) -> nn.Linear:
    w = torch.tensor(w, dtype=torch.float32)
    lin = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(torch.zeros(w.shape[0]) if b is None else torch.tensor(b, dtype=torch.float32))
    return lin


I2 = np.eye(2).tolist()


def mlp(w0=I2, w1=I2, w2=I2, b0=None, b1=None, b2=None) -> nn.Sequential:
    """Linear-ReLU-Linear-ReLU-Linear, 2 units wide."""
    return nn.Sequential(linear(w0, b0), nn.ReLU(), linear(w1, b1), nn.ReLU(), linear(w2, b2))


def conv_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(2 * 2 * 2, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))


POS = np.array([[1.0, 2.0], [3.0, 1.0], [0.5, 0.5]])  # positive points: every ReLU passes them


def test_activation_magnitude_follows_scaled_layer():
    # reps: x, 10x, x (layer 2 scales back by 0.1) -> magnitudes m, 10m, m
    net = mlp(w1=(10 * np.eye(2)).tolist(), w2=(0.1 * np.eye(2)).tolist())
    s = S.activation_magnitude(net, POS)
    m = np.abs(POS).mean()
    np.testing.assert_allclose(s, [m, 10 * m, m], rtol=1e-6)
    assert rank(s)[0] == 1


def test_representation_is_after_relu():
    net = nn.Sequential(linear(I2), nn.ReLU(), linear(I2))
    s = S.activation_magnitude(net, -POS)  # ReLU zeroes layer 0; the last layer has no ReLU
    np.testing.assert_allclose(s, [0.0, 0.0])
    net = nn.Sequential(linear(I2), linear(I2))  # no ReLU: the affine output itself
    np.testing.assert_allclose(S.activation_magnitude(net, -POS), [np.abs(POS).mean()] * 2, rtol=1e-6)


def test_variance_exact_and_constant_layer():
    net = nn.Sequential(linear(I2))
    np.testing.assert_allclose(S.activation_variance(net, np.array([[0.0, 0.0], [2.0, 4.0]])), [2.5])
    # layer 1 has zero weights and bias (1, 2): its output, and everything after, is constant
    net = mlp(w1=np.zeros((2, 2)).tolist(), b1=[1.0, 2.0])
    v = S.activation_variance(net, POS)
    assert v[0] > 0 and v[1] == 0 and v[2] == 0
    sim = S.feature_similarity(net, POS)
    np.testing.assert_allclose(sim[1:], [1.0, 1.0], atol=1e-12)
    assert sim[0] < 1


def test_similarity_exact_values_and_zero_vectors():
    net = nn.Sequential(linear(I2))
    pts = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # cosines 0, 1/sqrt2, 1/sqrt2
    np.testing.assert_allclose(S.feature_similarity(net, pts), [math.sqrt(2) / 3], rtol=1e-6)
    np.testing.assert_allclose(S.feature_similarity(net, np.array([[0.0, 0.0], [1.0, 0.0]])), [0.0])
    np.testing.assert_allclose(S.feature_similarity(net, np.zeros((3, 2))), [1.0])
    np.testing.assert_allclose(S.feature_similarity(net, pts[:1]), [1.0])
    # dead ReLU layer: every point maps to the zero vector -> identical representations
    dead = mlp(w0=np.zeros((2, 2)).tolist(), b0=[-1.0, -1.0])
    assert S.feature_similarity(dead, POS)[0] == 1.0


def test_gradient_exact_value_and_normalisation():
    # W = 0, b = 0: softmax (.5, .5); label 0 -> dlogits (-.5, .5); x = (1, 1)
    # |gW|^2 = 4 * .25 = 1, |gb|^2 = .5 -> sqrt(1.5) / sqrt(6 params) = 0.5
    net = nn.Sequential(linear(np.zeros((2, 2)).tolist()))
    np.testing.assert_allclose(S.gradient_norm(net, np.array([[1.0, 1.0]]), labels=[0]), [0.5], rtol=1e-6)
    # summed over the repair set: two copies of the point double the gradient
    np.testing.assert_allclose(S.gradient_norm(net, np.ones((2, 2)), labels=np.array([0, 0])), [1.0], rtol=1e-6)


def test_gradient_zero_where_output_cannot_depend_on_layer():
    # layer 1 has zero weights: the output does not depend on layer 0's parameters
    net = mlp(w1=np.zeros((2, 2)).tolist(), b1=[1.0, 2.0])
    g = S.gradient_norm(net, POS, labels=[0, 1, 0])
    assert g[0] == 0 and g[1] > 0 and g[2] > 0
    assert rank(g)[-1] == 0
    # dead ReLU after layer 0: no gradient reaches layer 0's parameters
    dead = mlp(w0=np.zeros((2, 2)).tolist(), b0=[-1.0, -1.0])
    g = S.gradient_norm(dead, POS, labels=[0, 1, 0])
    assert g[0] == 0 and g[2] > 0


def test_gradient_leaves_network_untouched():
    net = mlp()
    for p in net.parameters():
        p.requires_grad_(False)
    net.train()
    before = [p.clone() for p in net.parameters()]
    S.gradient_norm(net, POS, labels=[0, 1, 1])
    S.activation_magnitude(net, POS)
    assert net.training
    for p, q in zip(net.parameters(), before):
        assert not p.requires_grad and p.grad is None and torch.equal(p, q)


def test_change_exact_values():
    net = mlp()
    np.testing.assert_array_equal(S.change(net, POS, pairs=POS.copy()), np.zeros(3))
    one = nn.Sequential(linear(I2), nn.ReLU())
    # original (1, 1) -> rep (1, 1); perturbed (1, -1) -> rep (1, 0): |diff| 1 / |orig| sqrt2
    s = S.change(one, np.array([[1.0, -1.0]]), pairs=np.array([[1.0, 1.0]]))
    np.testing.assert_allclose(s, [1 / math.sqrt(2)], rtol=1e-6)
    lin = nn.Sequential(linear(I2))
    s = S.change(lin, np.array([[2.0, 0.0], [0.0, 1.0]]), pairs=np.array([[1.0, 0.0], [0.0, 1.0]]))
    np.testing.assert_allclose(s, [0.5], rtol=1e-6)  # mean of 1 and 0


def test_position_scorers_mlp_and_conv():
    net = mlp()
    np.testing.assert_array_equal(S.penultimate(net, POS), [0, 1, 0])
    np.testing.assert_array_equal(S.first_dense(net, POS), [1, 0, 0])
    cnn = conv_net()
    np.testing.assert_array_equal(S.penultimate(cnn, None), [0, 0, 0, 1, 0])
    np.testing.assert_array_equal(S.first_dense(cnn, None), [0, 0, 1, 0, 0])
    single = nn.Sequential(linear(I2))
    np.testing.assert_array_equal(S.penultimate(single, None), [1])
    np.testing.assert_array_equal(S.first_dense(single, None), [1])
    conv_only = nn.Sequential(nn.Conv2d(1, 1, 3), nn.ReLU(), nn.Conv2d(1, 1, 3), nn.Flatten())
    np.testing.assert_array_equal(S.first_dense(conv_only, None), [0, 1])


def test_all_scorers_on_conv_net():
    cnn = conv_net()
    rng = np.random.default_rng(0)
    x = rng.random((4, 1, 6, 6)).astype(np.float32)
    out = score_all(cnn, x, labels=np.array([0, 1, 2, 0]), pairs=x + 0.01)
    assert set(out) == set(SCORERS)
    for name, s in out.items():
        assert s.shape == (5,) and np.all(np.isfinite(s)), name
    assert np.all(out["activation"] >= 0) and np.all(out["change"] > 0)


def test_rank_order_ties_candidates_nan():
    assert rank([1.0, 3.0, 3.0, 2.0]) == [2, 1, 3, 0]  # tie 1/2 goes to the later layer
    assert rank([1.0, 1.0, 1.0]) == [2, 1, 0]
    assert rank([1.0, 3.0, 3.0, 2.0], candidates=[0, 3, 0]) == [3, 0]
    assert rank([np.nan, 0.0, -1.0]) == [1, 2, 0]
    with pytest.raises(InputError):
        rank([1.0, 2.0], candidates=[2])


def test_score_all_skips_and_names():
    net = mlp()
    out = score_all(net, POS)
    assert set(out) == set(SCORERS) - set(NEEDS)
    out = score_all(net, POS, labels=[0, 1, 0], names=["gradient", "penultimate"])
    assert list(out) == ["gradient", "penultimate"]
    with pytest.raises(InputError):
        score_all(net, POS, names=["nope"])


def test_input_errors():
    net = mlp()
    with pytest.raises(InputError, match="labels"):
        S.gradient_norm(net, POS)
    with pytest.raises(InputError):
        S.gradient_norm(net, POS, labels=[0, 1])  # wrong count
    with pytest.raises(InputError):
        S.gradient_norm(net, POS, labels=[0, 1, 5])  # out of range
    with pytest.raises(InputError, match="original"):
        S.change(net, POS)
    with pytest.raises(InputError):
        S.change(net, POS, pairs=POS[:2])
    with pytest.raises(InputError):
        S.activation_magnitude(net, np.ones((3, 5)))  # wrong input width
    with pytest.raises(InputError):
        S.activation_magnitude(net, np.ones((0, 2)))


def test_registry_and_import_rule():
    assert list(SCORERS) == ["activation", "variance", "gradient", "change", "similarity",
                             "penultimate", "first_dense"]
    assert NEEDS == {"gradient": "labels", "change": "pairs"}
    tree = ast.parse(Path(S.__file__).read_text())
    mods = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    mods += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not any(m.startswith("provrepair.repair") for m in mods)
