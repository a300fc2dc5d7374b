"""Frozen front + piecewise-linear back (issue 22), on tiny models: cuts, refusals, repair and
certification of points through a front, regions refused, save/load, state_dict via --arch, the
ONNX front run by onnxruntime."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

import provrepair
from provrepair.cli import main
from provrepair.errors import InputError, UnsupportedLayerError
from provrepair.models import (
    FrozenFront,
    affine_layers,
    front_of,
    get_meta,
    load_model,
    normalize_model,
    save_model,
    summary_text,
    unfreeze,
    with_front,
)
from provrepair.specs import PointSpec, RegionSpec
from provrepair.zoo.architectures import gelu_mlp, tiny_vit

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _gelu(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return gelu_mlp(6, 8, 3)


def _flipped_points(net: nn.Module, n: int = 8, shape=(6,), seed: int = 0) -> PointSpec:
    x = np.random.RandomState(seed).rand(n, *shape).astype(np.float32)
    with torch.no_grad():
        pred = net(torch.from_numpy(x)).argmax(1).numpy()
    return PointSpec.from_arrays(x, (pred + 1) % int(net(torch.from_numpy(x[:1])).shape[1]))


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


# ----------------------------------------------------------------------------------- cutting


def test_no_cut_refuses_gelu_and_says_where_the_cut_goes():
    m = nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(UnsupportedLayerError) as info:
        normalize_model(m)
    msg = str(info.value)
    assert "GELU" in msg and "layer 1" in msg and "cut=2" in msg and "--cut" in msg


def test_auto_cut_puts_everything_up_to_the_last_gelu_in_the_front():
    net = normalize_model(_gelu(), cut="auto")
    front = front_of(net)
    assert isinstance(front, FrozenFront) and front.cut == 2 and not front.piecewise_linear
    assert "GELU at position 1" in front.last_nonlinear
    assert [type(m) for m in net][1:] == [nn.Linear, nn.ReLU, nn.Linear]
    assert affine_layers(net) == [1, 3]  # --layer counts the back: 0 and 1
    assert get_meta(net).input_shape == (6,) and get_meta(net).extra["cut"] == 2
    x = torch.rand(5, 6)
    torch.testing.assert_close(net(x), _gelu()(x))
    assert "frozen front" in summary_text(net)


@pytest.mark.parametrize("cut", [0, 1])
def test_cut_before_the_gelu_is_refused_naming_it(cut):
    with pytest.raises(UnsupportedLayerError) as info:
        normalize_model(_gelu(), cut=cut)
    msg = str(info.value)
    assert "GELU" in msg and "position 1" in msg and "cut=2" in msg


def test_cut_later_than_needed_and_by_name():
    net = normalize_model(_gelu(), cut=3)  # Linear(8,8) frozen too: the back is ReLU, Linear
    assert len(affine_layers(net)) == 1
    named = normalize_model(_gelu(), cut="2")
    assert front_of(named).cut == 2
    with pytest.raises(InputError, match="no module of that name"):
        normalize_model(_gelu(), cut="head")
    with pytest.raises(InputError, match="outside the model"):
        normalize_model(_gelu(), cut=9)


def test_layers_before_the_front_are_refused_naming_the_gelu():
    net = normalize_model(_gelu(), cut="auto")
    spec = _flipped_points(net)
    with pytest.raises(InputError) as info:
        provrepair.repair(net, spec, layer=2)
    assert "GELU at position 1" in str(info.value) and "cannot be repaired" in str(info.value)
    with pytest.raises(InputError, match="GELU"):
        provrepair.repair(net, spec, layer=-3)


def test_frozen_front_stays_frozen_under_train_double_and_deepcopy():
    net = normalize_model(nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.GELU(), nn.Linear(4, 2)), cut="auto")
    net.train()
    assert not front_of(net).training and not any(p.requires_grad for p in front_of(net).parameters())
    x = torch.rand(3, 4)
    torch.testing.assert_close(net(x), net(x))  # dropout in the front stays off
    d = copy.deepcopy(net).double()
    assert d(x.double()).dtype == torch.float64
    torch.testing.assert_close(d(x.double()).float(), net.eval()(x), rtol=1e-5, atol=1e-6)


def test_custom_model_with_front():
    class Features(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(5, 7), nn.LayerNorm(7)

        def forward(self, x):
            return torch.tanh(self.b(self.a(x)))

    torch.manual_seed(0)
    net = with_front(Features(), nn.Sequential(nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 3)), input_shape=(5,))
    assert len(affine_layers(net)) == 2 and front_of(net).cut is None
    spec = _flipped_points(net, shape=(5,))
    assert provrepair.repair(net, spec, layer=0).certified
    with pytest.raises(UnsupportedLayerError, match="piecewise linear"):
        with_front(Features(), nn.Sequential(nn.Linear(7, 3), nn.Tanh()))


# ------------------------------------------------------------------------- repair and certify


@pytest.mark.parametrize("layer", [0, 1, "auto"])
def test_points_repair_and_certify_through_the_front(layer):
    net = normalize_model(_gelu(), cut="auto")
    spec = _flipped_points(net)
    result = provrepair.repair(net, spec, layer=layer)
    assert result.certified, result.message
    assert isinstance(result.model[0], FrozenFront)
    x = torch.rand(4, 6)
    torch.testing.assert_close(result.model[0](x), net[0](x))  # the front is unchanged
    assert provrepair.certify(result.model, spec).certified


def test_regions_through_an_unsupported_front_are_refused():
    net = normalize_model(_gelu(), cut="auto")
    spec = RegionSpec.boxes(np.zeros((1, 6)), np.full((1, 6), 0.1), labels=[0])
    with pytest.raises(UnsupportedLayerError, match="frozen front"):
        provrepair.certify(net, spec)
    with pytest.raises(UnsupportedLayerError, match="frozen front"):
        provrepair.repair(net, spec, layer=0)


def test_region_repairer_itself_refuses_an_unsupported_front(monkeypatch):
    """The protocol's region repairer (not only api.repair) refuses before any LP is built."""
    from provrepair.repair import provable
    from provrepair.repair.options import PolytopeRepairOptions

    def no_lp(*args, **kwargs):
        raise AssertionError("the region LP must not run through an unsupported front")

    monkeypatch.setattr(provable, "repair_polytopes", no_lp)
    net = normalize_model(_gelu(), cut="auto")
    spec = RegionSpec.boxes(np.zeros((1, 6)), np.full((1, 6), 0.1), labels=[0])
    with pytest.raises(UnsupportedLayerError, match="cannot repair input regions through the network's frozen front"):
        provable.RegionRepairer().run(net, spec, PolytopeRepairOptions(layer=0))


def test_regions_through_a_piecewise_linear_front_are_certified_unfrozen():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    net = normalize_model(m, cut=2)
    assert front_of(net).piecewise_linear
    whole = unfreeze(net)
    assert front_of(whole) is None and len(affine_layers(whole)) == 3
    x = torch.rand(3, 2)
    torch.testing.assert_close(whole(x), net(x))
    with torch.no_grad():
        label = int(net(torch.full((1, 2), 0.5)).argmax())
    spec = RegionSpec.boxes(np.full((1, 2), 0.49), np.full((1, 2), 0.51), labels=[label])
    assert provrepair.certify(net, spec).certified  # bounds through the unfrozen, piecewise-linear front


def _cli_files(tmp_path):
    net = normalize_model(_gelu(), cut="auto")
    spec = _flipped_points(net)
    points = tmp_path / "points.npz"
    np.savez(points, points=spec.inputs, labels=spec.labels)
    model = tmp_path / "gelu.pt"
    torch.save(_gelu(), model)  # the factory records cut='auto' in the pickled module's metadata
    box = tmp_path / "box.json"
    box.write_text(json.dumps({"boxes": [{"lower": [0] * 6, "upper": [0.1] * 6, "label": 0}]}))
    return model, points, box


def test_cli_regions_through_the_front_exit_2_and_write_nothing(tmp_path, capsys):
    model, points, box = _cli_files(tmp_path)
    report, out = tmp_path / "report.json", tmp_path / "out.pt"
    code, _, err = _run(capsys, "certify", model, "--box", box, "--report", report)
    assert code == 2 and "frozen front" in err and "Traceback" not in err
    code, _, err = _run(capsys, "repair", model, "--box", box, "--layer", 0, "--out", out, "--report", report)
    assert code == 2 and "frozen front" in err
    assert not report.exists() and not out.exists()
    code, stdout, _ = _run(capsys, "certify", model, "--points", points)
    assert code == 1  # the points are wrong on purpose: checked exactly through the front, not refused


def test_cli_points_repair_through_the_front_and_cut_refusal(tmp_path, capsys):
    model, points, _ = _cli_files(tmp_path)
    out = tmp_path / "fixed.pt"
    code, _, err = _run(capsys, "repair", model, "--cut", 1, "--points", points, "--layer", 0, "--out", out)
    assert code == 2 and "GELU at position 1" in err and not out.exists()
    code, _, err = _run(capsys, "repair", model, "--points", points, "--layer", 0, "--out", tmp_path / "fixed.onnx")
    assert code == 2 and ".pt" in err and not (tmp_path / "fixed.onnx").exists()
    code, stdout, _ = _run(capsys, "repair", model, "--points", points, "--layer", 1, "--out", out, "--quiet")
    assert code == 0, stdout
    back = load_model(out)
    assert isinstance(back[0], FrozenFront) and get_meta(back).extra["cut"] == 2
    code, _, _ = _run(capsys, "certify", out, "--points", points)
    assert code == 0


def test_cli_state_dict_with_arch(tmp_path, capsys, monkeypatch):
    model = tmp_path / "weights.pt"
    torch.save(_gelu().state_dict(), model)
    (tmp_path / "mynets.py").write_text(
        "from provrepair.zoo.architectures import gelu_mlp\n\ndef build():\n    return gelu_mlp(6, 8, 3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    _, points, _ = _cli_files(tmp_path)
    code, _, err = _run(capsys, "info", model)
    assert code == 2 and "--arch" in err
    code, stdout, _ = _run(capsys, "info", model, "--arch", "mynets:build")
    assert code == 0 and "FrozenFront" in stdout
    code, _, err = _run(capsys, "info", model, "--arch", "mynets:nope")
    assert code == 2 and "nope" in err
    net = load_model(model, arch="mynets:build")
    torch.testing.assert_close(net(torch.ones(1, 6)), _gelu()(torch.ones(1, 6)))


def test_save_load_round_trip_keeps_the_front(tmp_path):
    net = normalize_model(tiny_vit(), cut="auto")
    p = save_model(net, tmp_path / "vit.pt")
    back = load_model(p)
    assert isinstance(back[0], FrozenFront) and len(affine_layers(back)) == 2
    x = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(back(x), net(x))
    with pytest.raises(Exception, match=r"\.pt"):
        save_model(net, tmp_path / "vit.onnx")


def test_tiny_vit_head_repair():
    torch.manual_seed(0)
    net = normalize_model(tiny_vit(), cut="auto")
    spec = _flipped_points(net, n=12, shape=(1, 8, 8))
    for layer in (1, 0):
        result = provrepair.repair(net, spec, layer=layer)
        assert result.certified, result.message


# ------------------------------------------------------------------------------ ONNX front


def _export(model: nn.Module, path, shape):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.rand(2, *shape), str(path), dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})


def test_onnx_front_split_matches_torch(tmp_path):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    raw = tiny_vit().eval()
    path = tmp_path / "vit.onnx"
    try:
        _export(raw, path, (1, 8, 8))
    except Exception as exc:  # pragma: no cover - depends on the torch build's exporter
        pytest.skip(f"torch.onnx.export unavailable: {exc}")
    with pytest.raises(UnsupportedLayerError, match="cut='auto'"):
        load_model(path)
    onnx_net = load_model(path, cut="auto")
    torch_net = normalize_model(raw, cut="auto")
    assert getattr(front_of(onnx_net).module, "runtime", "") == "onnxruntime"
    x = torch.rand(5, 1, 8, 8)
    assert float((onnx_net(x) - torch_net(x)).abs().max().detach()) < 1e-5
    spec = _flipped_points(torch_net, n=10, shape=(1, 8, 8))
    a = provrepair.repair(torch_net, spec, layer=1)
    b = provrepair.repair(onnx_net, spec, layer=1)
    assert a.certified and b.certified
    assert float((a.model(x) - b.model(x)).abs().max().detach()) <= 1e-5
    saved = save_model(b.model, tmp_path / "fixed.pt")  # the ONNX front pickles as its model bytes
    torch.testing.assert_close(load_model(saved)(x), b.model(x))
