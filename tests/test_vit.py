"""The zoo's transformer and GELU networks (issue 22): cards, the frozen front they load with, head
repair of corrupted-test failures, the ONNX export with its front run by onnxruntime."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import provrepair
from provrepair.cli import main
from provrepair.data import load_mnist
from provrepair.data.corruptions import corrupt
from provrepair.errors import InputError
from provrepair.models import FrozenFront, affine_layers, front_of, get_meta, load_model
from provrepair.specs import PointSpec
from provrepair.zoo import card, load_zoo, zoo_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MIN_ACCURACY = {"mnist_vit": 0.97, "fashion_vit": 0.88, "mnist_gelu_mlp": 0.97}


@pytest.mark.parametrize("name", sorted(MIN_ACCURACY))
def test_card_and_front(name):
    c = card(name)
    net = load_zoo(name)
    assert c["test_accuracy"] >= MIN_ACCURACY[name]
    assert c["train_time_s"] <= 15 * 60
    assert c["parameters"] == sum(p.numel() for p in net.parameters())
    assert zoo_path(name).stat().st_size < 4 * 1024 * 1024
    assert isinstance(net[0], FrozenFront) and c["frozen_front"]["cut"] == net[0].cut
    assert [type(m) for m in net][1:] == [nn.Linear, nn.ReLU, nn.Linear]
    assert len(affine_layers(net)) == 2
    assert get_meta(net).input_shape == tuple(c["input_shape"])


def test_gelu_mlp_refused_before_its_gelu(tmp_path, capsys):
    net = load_zoo("mnist_gelu_mlp")
    assert "GELU at position 1" in net[0].last_nonlinear
    x, y = load_mnist("test")
    spec = PointSpec.from_arrays(x[:5], y[:5])
    with pytest.raises(InputError, match="GELU at position 1"):
        provrepair.repair(net, spec, layer=-3)
    points = tmp_path / "p.npz"
    np.savez(points, points=x[:5], labels=y[:5])
    code = main(["repair", "mnist_gelu_mlp", "--cut", "1", "--points", str(points), "--layer", "0",
                 "--out", str(tmp_path / "o.pt")])
    err = capsys.readouterr().err
    assert code == 2 and "GELU at position 1" in err and "position 2" in err
    assert not (tmp_path / "o.pt").exists()


def _failures(net: nn.Module, n: int) -> PointSpec:
    x, y = load_mnist("test", flat=False)
    xc = corrupt(x[:600], "fog", 3, seed=0)
    with torch.no_grad():
        wrong = np.flatnonzero(net(torch.from_numpy(xc)).argmax(1).numpy() != y[:600])[:n]
    return PointSpec.from_arrays(xc[wrong], y[:600][wrong])


def test_vit_head_repair_of_fog_failures():
    net = load_zoo("mnist_vit")
    spec = _failures(net, 40)
    assert spec.n_points == 40
    result = provrepair.repair(net, spec, layer=-1)
    assert result.certified, result.message
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(result.model[0](x), net[0](x))  # the transformer front is untouched


@pytest.mark.slow
def test_zoo_vit_onnx_front_gives_the_torch_repair(tmp_path):
    pytest.importorskip("onnxruntime")
    raw = torch.load(zoo_path("mnist_vit"), weights_only=False).eval()
    path = tmp_path / "vit.onnx"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(raw, torch.rand(2, 1, 28, 28), str(path), dynamo=False, input_names=["x"],
                              output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    except Exception as exc:  # pragma: no cover - depends on the torch build's exporter
        pytest.skip(f"torch.onnx.export unavailable: {exc}")
    torch_net = load_zoo("mnist_vit")
    onnx_net = load_model(path, cut="auto")
    assert getattr(front_of(onnx_net).module, "runtime", "") == "onnxruntime"
    spec = _failures(torch_net, 100)
    a = provrepair.repair(torch_net, spec, layer=-1)
    b = provrepair.repair(onnx_net, spec, layer=-1)
    assert a.certified and b.certified
    x, _ = load_mnist("test", flat=False)
    xs = torch.from_numpy(np.concatenate([x[:500], spec.inputs.astype(np.float32)]))
    with torch.no_grad():
        assert float((a.model(xs) - b.model(xs)).abs().max()) <= 1e-5


@pytest.mark.parametrize("layer", [0, 1])
def test_gelu_mlp_repairable_after_its_gelu(layer):
    net = load_zoo("mnist_gelu_mlp")
    x, y = load_mnist("test")
    xc = corrupt(x[:400].reshape(-1, 1, 28, 28), "fog", 3, seed=0).reshape(-1, 784)
    with torch.no_grad():
        wrong = np.flatnonzero(net(torch.from_numpy(xc)).argmax(1).numpy() != y[:400])[:5]
    result = provrepair.repair(net, PointSpec.from_arrays(xc[wrong], y[:400][wrong]), layer=layer)
    assert result.certified, result.message
