"""Tests of provrepair.models: loaders against hand-computed forward passes, BatchNorm folding,
ONNX import/export, save/load round trips, refusals with useful messages, and the real assets."""

from __future__ import annotations

import time
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from torch import nn

from provrepair.errors import InputError, ModelFormatError, UnsupportedLayerError
from provrepair.models import (
    ModelMeta,
    Normalize,
    affine_layers,
    describe,
    fold_batchnorm,
    get_meta,
    load_model,
    normalize_model,
    num_outputs,
    save_model,
    summary_text,
)

# --------------------------------------------------------------------------- fixture helpers

ERAN_2_3_2 = """ReLU
[[1.0, 2.0], [-1.0, 1.0], [0.5, -2.0]]
[0.0, 1.0, -1.0]
Affine
[[1.0, -1.0, 2.0], [0.0, 1.0, 1.0]]
[0.5, -0.5]
"""

# 2-2-2 with normalisation: x_norm = (x - [1, 2]) / [2, 4]; output scaling 3 * y + 0.5 (meta only).
NNET_2_2_2 = """// a tiny test network
// second comment line
2,2,2,2,
2,2,2,
0,
-10.0,-20.0,
10.0,20.0,
1.0,2.0,0.5,
2.0,4.0,3.0,
1.0,-1.0,
2.0,1.0,
0.5,
-1.0,
1.0,1.0,
-1.0,2.0,
0.0,
1.0,
"""


def _out(net: nn.Module, x) -> np.ndarray:
    with torch.no_grad():
        return net(torch.as_tensor(np.asarray(x), dtype=torch.float32)).numpy()


def _seeded_bn(bn: nn.modules.batchnorm._BatchNorm, seed: int) -> nn.Module:
    """Non-trivial running statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    n = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(n, generator=g))
        bn.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
        bn.weight.copy_(torch.randn(n, generator=g))
        bn.bias.copy_(torch.randn(n, generator=g))
    return bn


def _conv_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        _seeded_bn(nn.BatchNorm2d(3), seed + 1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(3, 2, 3, stride=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(2, 4),
    ).eval()


def _mlp(seed: int = 0, normalize: bool = True) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [Normalize(torch.tensor([0.5, -1.0, 2.0]), torch.tensor([2.0, 0.5, 4.0]))] if normalize else []
    layers += [nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2)]
    return nn.Sequential(*layers).eval()


def _init(name: str, arr) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name)


# --------------------------------------------------------------------------- ERAN


def test_eran_forward_matches_hand_computation(tmp_path):
    p = tmp_path / "net.tf"
    p.write_text(ERAN_2_3_2)
    net = load_model(p)
    assert [type(m) for m in net] == [nn.Linear, nn.ReLU, nn.Linear]
    # z1 = [1+4, -1+2+1, 0.5-4-1] = [5, 2, -4.5] -> relu [5, 2, 0]; y = [5-2+0.5, 2-0.5]
    np.testing.assert_allclose(_out(net, [[1.0, 2.0]]), [[3.5, 1.5]])
    meta = get_meta(net)
    assert meta.format == "eran" and meta.input_shape == (2,) and meta.source == str(p)
    assert affine_layers(net) == [0, 2]


def test_eran_normalize_header(tmp_path):
    p = tmp_path / "net.eran"
    p.write_text("Normalize mean=[1.0, 0.0] std=[2.0, 1.0]\n" + ERAN_2_3_2)
    net = load_model(p)
    assert isinstance(net[0], Normalize)
    np.testing.assert_allclose(_out(net, [[3.0, 2.0]]), [[3.5, 1.5]])  # normalises to (1, 2)


def test_eran_trailing_relu_dropped_with_warning(tmp_path):
    p = tmp_path / "net.tf"
    p.write_text(ERAN_2_3_2.replace("Affine", "ReLU"))
    with pytest.warns(UserWarning, match="dropped the ReLU"):
        net = load_model(p)
    assert type(net[-1]) is nn.Linear
    # x = (0, 0): h = relu([0, 1, -1]) = [0, 1, 0]; y = [-1 + 0.5, 1 - 0.5]: a negative logit survives
    np.testing.assert_allclose(_out(net, [[0.0, 0.0]]), [[-0.5, 0.5]])


def test_eran_malformed_reports_line(tmp_path):
    p = tmp_path / "bad.tf"
    p.write_text(ERAN_2_3_2.replace("[0.0, 1.0, -1.0]", "[0.0, oops, -1.0]"))
    with pytest.raises(ModelFormatError, match="line 3"):
        load_model(p)
    p.write_text(ERAN_2_3_2.replace("[0.0, 1.0, -1.0]", "[0.0, 1.0]"))
    with pytest.raises(ModelFormatError, match="line 3"):
        load_model(p)
    p.write_text(ERAN_2_3_2 + "ReLU\n")
    with pytest.raises(ModelFormatError, match="line 7.*incomplete"):
        load_model(p)


def test_eran_sigmoid_refused(tmp_path):
    p = tmp_path / "sig.tf"
    p.write_text(ERAN_2_3_2.replace("ReLU", "Sigmoid"))
    with pytest.raises(UnsupportedLayerError, match="Sigmoid.*line 1|line 1.*Sigmoid"):
        load_model(p)


# --------------------------------------------------------------------------- .nnet


def test_nnet_forward_matches_hand_computation(tmp_path):
    p = tmp_path / "acas.nnet"
    p.write_text(NNET_2_2_2)
    net = load_model(p)
    assert [type(m) for m in net] == [Normalize, nn.Linear, nn.ReLU, nn.Linear]
    # x = (3, 6) -> normalised (1, 1); h = relu([1-1+0.5, 2+1-1]) = [0.5, 2]; y = [2.5, -0.5+4+1]
    np.testing.assert_allclose(_out(net, [[3.0, 6.0]]), [[2.5, 4.5]])
    extra = get_meta(net).extra
    assert extra["input_min"] == [-10.0, -20.0] and extra["input_max"] == [10.0, 20.0]
    assert extra["input_mean"] == [1.0, 2.0] and extra["input_range"] == [2.0, 4.0]
    assert extra["output_mean"] == [0.5] and extra["output_range"] == [3.0]
    assert get_meta(net).input_shape == (2,)


def test_nnet_malformed_reports_line(tmp_path):
    p = tmp_path / "bad.nnet"
    p.write_text(NNET_2_2_2.replace("2.0,1.0,\n0.5", "2.0,\n0.5"))
    with pytest.raises(ModelFormatError, match="line 11"):
        load_model(p)
    p.write_text("\n".join(NNET_2_2_2.splitlines()[:12]) + "\n")
    with pytest.raises(ModelFormatError, match="ends before"):
        load_model(p)


# --------------------------------------------------------------------------- BatchNorm folding


def test_fold_batchnorm_linear_and_conv():
    torch.manual_seed(0)
    lin, bn1 = nn.Linear(4, 3), _seeded_bn(nn.BatchNorm1d(3), 1).eval()
    folded = fold_batchnorm(lin, bn1)
    x = torch.randn(16, 4)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), bn1(lin(x)), rtol=1e-5, atol=1e-5)
    conv, bn2 = nn.Conv2d(2, 3, 3, padding=1, bias=False), _seeded_bn(nn.BatchNorm2d(3), 2).eval()
    folded = fold_batchnorm(conv, bn2)
    x = torch.randn(4, 2, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), bn2(conv(x)), rtol=1e-5, atol=1e-5)


def test_normalize_model_folds_and_flattens():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Sequential(nn.Linear(4, 6), _seeded_bn(nn.BatchNorm1d(6), 3), nn.ReLU(inplace=True)),
        nn.Dropout(0.5),
        nn.Identity(),
        nn.Linear(6, 2),
    ).eval()
    net = normalize_model(model)
    assert [type(m) for m in net] == [nn.Linear, nn.ReLU, nn.Linear]
    assert not net[1].inplace
    x = torch.randn(8, 4)
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(x), rtol=1e-5, atol=1e-5)
    assert get_meta(net).input_shape == (4,)
    assert model[0][1].__class__ is nn.BatchNorm1d  # the input module is left untouched


def test_batchnorm_without_affine_layer_becomes_its_own():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), _seeded_bn(nn.BatchNorm1d(4), 5), nn.Linear(4, 2)).eval()
    with pytest.warns(UserWarning, match="affine layer of its own"):
        net = normalize_model(model)
    assert len(affine_layers(net)) == 3
    x = torch.randn(5, 3)
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(x), rtol=1e-5, atol=1e-5)


def test_conv_model_normalised_equivalently():
    model = _conv_model()
    net = normalize_model(model, input_shape=(1, 8, 8))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net)
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(x), rtol=1e-5, atol=1e-5)
    assert get_meta(net).input_shape == (1, 8, 8)
    assert num_outputs(net) == 4


# --------------------------------------------------------------------------- unsupported layers


@pytest.mark.parametrize("bad", [nn.Tanh(), nn.LSTM(3, 3)])
def test_unsupported_layer_named(bad):
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), bad, nn.Linear(3, 2))
    with pytest.raises(UnsupportedLayerError) as info:
        normalize_model(model)
    msg = str(info.value)
    assert "layer 2" in msg and type(bad).__name__ in msg
    assert "Supported layers" in msg and "Conv2d" in msg and "MaxPool2d" in msg


def test_custom_module_refused():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            return self.fc(x)

    with pytest.raises(UnsupportedLayerError, match="Net.*nn.Sequential"):
        normalize_model(Net())


def test_wrong_input_shape_is_input_error():
    with pytest.raises(InputError, match="does not fit"):
        normalize_model(_mlp(), input_shape=(4,))


# --------------------------------------------------------------------------- ONNX import


def _handmade_onnx(path, seed: int = 0):
    """conv+bn+relu+maxpool+gap-free pool+flatten+linear, with Sub/Div input normalisation and MatMul+Add."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(2, 1, 3, 3)).astype(np.float32)
    b1 = rng.normal(size=2).astype(np.float32)
    scale, bias = rng.normal(size=2).astype(np.float32), rng.normal(size=2).astype(np.float32)
    mean, var = rng.normal(size=2).astype(np.float32), rng.uniform(0.5, 2, size=2).astype(np.float32)
    w2 = rng.normal(size=(8, 3)).astype(np.float32)  # MatMul layout (in, out)
    b2 = rng.normal(size=3).astype(np.float32)
    nodes = [
        helper.make_node("Sub", ["x", "mu"], ["n0"]),
        helper.make_node("Div", ["n0", "sigma"], ["n1"]),
        helper.make_node("Conv", ["n1", "w1", "b1"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["bn"], epsilon=1e-3),
        helper.make_node("Relu", ["bn"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("AveragePool", ["p"], ["a"], kernel_shape=[2, 2], strides=[1, 1]),
        helper.make_node("Dropout", ["a"], ["d"]),
        helper.make_node("Flatten", ["d"], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "w2"], ["m"]),
        helper.make_node("Add", ["m", "b2"], ["y"]),
    ]
    inits = [
        _init("mu", [[[[0.25]]]]), _init("sigma", [[[[0.5]]]]), _init("w1", w1), _init("b1", b1),
        _init("scale", scale), _init("bias", bias), _init("mean", mean), _init("var", var),
        _init("w2", w2), _init("b2", b2),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        initializer=inits,
    )
    # opset 15: onnx's reference evaluator runs opset-9..13 BatchNormalization with batch statistics
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return model


def test_onnx_import_handmade_graph(tmp_path):
    p = tmp_path / "m.onnx"
    model = _handmade_onnx(p)
    net = load_model(p)
    assert get_meta(net).input_shape == (1, 6, 6) and get_meta(net).format == "onnx"
    assert [type(m) for m in net] == [Normalize, nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten, nn.Linear]
    x = np.random.default_rng(1).uniform(size=(4, 1, 6, 6)).astype(np.float32)
    (expected,) = ReferenceEvaluator(model).run(None, {"x": x})
    np.testing.assert_allclose(_out(net, x), expected, rtol=1e-4, atol=1e-4)


def test_onnx_import_torch_exported(tmp_path):
    """A model exported by torch's own (TorchScript) exporter, where this torch still has it."""
    model = _conv_model(3)
    p = tmp_path / "t.onnx"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.zeros(1, 1, 8, 8),), str(p), dynamo=False)
    except Exception as exc:  # pragma: no cover - depends on the installed torch
        pytest.skip(f"torch.onnx.export (TorchScript exporter) unavailable: {exc}")
    net = load_model(p)
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(x), rtol=1e-4, atol=1e-4)


def test_onnx_import_other_op_forms(tmp_path):
    """Constant-node Mul normalisation, bias-free Conv + Add, GlobalAveragePool, Reshape, Gemm transB=0 with alpha/beta."""
    rng = np.random.default_rng(4)
    w = rng.normal(size=(3, 2, 3, 3)).astype(np.float32)
    cb = rng.normal(size=(1, 3, 1, 1)).astype(np.float32)
    g = rng.normal(size=(3, 2)).astype(np.float32)  # Gemm B with transB=0: (in, out)
    gc = rng.normal(size=(1, 2)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.array([[[4.0]], [[0.5]]], np.float32))),
        helper.make_node("Mul", ["x", "k"], ["s"]),
        helper.make_node("Conv", ["s", "w"], ["c"], pads=[0, 0, 0, 0], strides=[2, 2]),
        helper.make_node("Add", ["c", "cb"], ["cbias"]),
        helper.make_node("Relu", ["cbias"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["gp"]),
        helper.make_node("Reshape", ["gp", "shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "g", "gc"], ["y"], alpha=2.0, beta=0.5),
    ]
    inits = [_init("w", w), _init("cb", cb), _init("g", g), _init("gc", gc),
             numpy_helper.from_array(np.array([0, -1], np.int64), "shape")]
    graph = helper.make_graph(
        nodes, "g2",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 7, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    p = tmp_path / "g2.onnx"
    onnx.save(model, str(p))
    net = load_model(p)
    assert [type(m) for m in net] == [Normalize, nn.Conv2d, nn.ReLU, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear]
    assert get_meta(net).input_shape == (2, 7, 7)
    ref = ReferenceEvaluator(model)
    for seed in range(3):
        x = np.random.default_rng(seed).normal(size=(1, 2, 7, 7)).astype(np.float32)
        np.testing.assert_allclose(_out(net, x), ref.run(None, {"x": x})[0], rtol=1e-4, atol=1e-4)


def test_onnx_skip_connection_refused(tmp_path):
    nodes = [
        helper.make_node("Gemm", ["x", "w"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Add", ["r", "x"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "res",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        initializer=[_init("w", np.eye(2))],
    )
    p = tmp_path / "res.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(p))
    with pytest.raises(UnsupportedLayerError, match="node 2.*not a simple chain"):
        load_model(p)


def test_onnx_unsupported_op_named(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["h"], transB=1), helper.make_node("Softmax", ["h"], ["y"], name="probs")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        initializer=[_init("w", np.eye(2))],
    )
    p = tmp_path / "s.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(p))
    with pytest.raises(UnsupportedLayerError, match="node 1 .*probs.*Softmax"):
        load_model(p)


def test_onnx_corrupt_file(tmp_path):
    p = tmp_path / "c.onnx"
    p.write_bytes(b"\x00\x01 definitely not protobuf \xff" * 10)
    with pytest.raises(ModelFormatError, match="ONNX"):
        load_model(p)


# --------------------------------------------------------------------------- round trips


def _roundtrip(net, path, **kw):
    save_model(net, path)
    back = load_model(path, **kw)
    return back


def test_roundtrip_pt_keeps_meta(tmp_path):
    src = tmp_path / "a.nnet"
    src.write_text(NNET_2_2_2)
    net = load_model(src)
    back = _roundtrip(net, tmp_path / "a.pt")
    x = np.random.default_rng(0).normal(size=(7, 2)) * 5
    np.testing.assert_array_equal(_out(back, x), _out(net, x))
    meta = get_meta(back)
    assert meta.format == "pt" and meta.extra == get_meta(net).extra and meta.input_shape == (2,)


def test_roundtrip_pt_conv(tmp_path):
    net = normalize_model(_conv_model(), input_shape=(1, 8, 8))
    back = _roundtrip(net, tmp_path / "c.pth")
    x = torch.randn(2, 1, 8, 8)
    np.testing.assert_array_equal(_out(back, x), _out(net, x))
    assert get_meta(back).input_shape == (1, 8, 8)


def test_roundtrip_onnx_conv(tmp_path):
    net = normalize_model(
        nn.Sequential(Normalize(torch.tensor([0.5]).reshape(1, 1, 1), torch.tensor([0.25]).reshape(1, 1, 1)), *_conv_model(), nn.ReLU()),
        input_shape=(1, 8, 8),
    )
    p = tmp_path / "c.onnx"
    back = _roundtrip(net, p)
    assert [type(m) for m in back] == [type(m) for m in net]
    x = torch.randn(3, 1, 8, 8)
    np.testing.assert_array_equal(_out(back, x), _out(net, x))
    assert get_meta(back).input_shape == (1, 8, 8)
    (ref,) = ReferenceEvaluator(onnx.load(str(p))).run(None, {"input": x.numpy()})
    np.testing.assert_allclose(ref, _out(net, x), rtol=1e-4, atol=1e-4)
    assert p.read_bytes() == (save_model(net, tmp_path / "d.onnx") or (tmp_path / "d.onnx")).read_bytes()


def test_roundtrip_onnx_adaptive_pool(tmp_path):
    torch.manual_seed(0)
    net = normalize_model(
        nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)),
        input_shape=(2, 5, 5),
    )
    back = _roundtrip(net, tmp_path / "g.onnx")
    x = torch.randn(2, 2, 5, 5)
    np.testing.assert_array_equal(_out(back, x), _out(net, x))


def test_roundtrip_nnet(tmp_path):
    src = tmp_path / "a.nnet"
    src.write_text(NNET_2_2_2)
    net = load_model(src)
    back = _roundtrip(net, tmp_path / "b.nnet")
    x = np.random.default_rng(0).normal(size=(7, 2)) * 5
    np.testing.assert_array_equal(_out(back, x), _out(net, x))
    assert get_meta(back).extra == get_meta(net).extra
    # and a network built in memory (no stored min/max) writes and reloads too
    mlp = normalize_model(_mlp())
    back = _roundtrip(mlp, tmp_path / "c.nnet")
    x = np.random.default_rng(1).normal(size=(5, 3))
    np.testing.assert_array_equal(_out(back, x), _out(mlp, x))


def test_roundtrip_nnet_via_onnx_keeps_extra(tmp_path):
    src = tmp_path / "a.nnet"
    src.write_text(NNET_2_2_2)
    net = load_model(src)
    back = _roundtrip(net, tmp_path / "a.onnx")
    assert get_meta(back).extra == get_meta(net).extra


@pytest.mark.parametrize("suffix", [".tf", ".eran"])
def test_roundtrip_eran(tmp_path, suffix):
    mlp = normalize_model(_mlp())
    back = _roundtrip(mlp, tmp_path / f"m{suffix}")
    assert [type(m) for m in back] == [type(m) for m in mlp]
    x = np.random.default_rng(2).normal(size=(6, 3))
    np.testing.assert_array_equal(_out(back, x), _out(mlp, x))
    src = tmp_path / "small.tf"
    src.write_text(ERAN_2_3_2)
    net = load_model(src)
    back = _roundtrip(net, tmp_path / "small2.tf")
    np.testing.assert_array_equal(_out(back, [[1.0, 2.0]]), [[3.5, 1.5]])


def test_save_with_fmt_overrides_suffix(tmp_path):
    mlp = normalize_model(_mlp(normalize=False))
    p = tmp_path / "weights.txt"
    save_model(mlp, p, fmt="eran")
    assert p.read_text().startswith("ReLU\n[[")


def test_save_refuses_unfit_format(tmp_path):
    net = normalize_model(_conv_model(), input_shape=(1, 8, 8))
    for suffix in (".nnet", ".tf"):
        target = tmp_path / f"x{suffix}"
        with pytest.raises(ModelFormatError, match=r"\.onnx or \.pt"):
            save_model(net, target)
        assert not target.exists() and not list(tmp_path.glob(".*tmp"))
    relu_last = normalize_model(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    with pytest.raises(ModelFormatError, match=r"\.onnx or \.pt"):
        save_model(relu_last, tmp_path / "r.nnet")


def test_save_never_overwrites_protected_input(tmp_path):
    src = tmp_path / "a.tf"
    src.write_text(ERAN_2_3_2)
    net = load_model(src)
    with pytest.raises(InputError, match="refusing to overwrite"):
        save_model(net, src, protect=(src,))
    assert src.read_text() == ERAN_2_3_2


# --------------------------------------------------------------------------- PyTorch files and errors


def test_state_dict_needs_arch(tmp_path):
    mlp = _mlp(normalize=False)
    p = tmp_path / "w.pt"
    torch.save(mlp.state_dict(), p)
    with pytest.raises(ModelFormatError, match="arch="):
        load_model(p)
    net = load_model(p, arch=_mlp(seed=9, normalize=False))
    x = np.random.default_rng(0).normal(size=(3, 3))
    np.testing.assert_array_equal(_out(net, x), _out(mlp, x))
    with pytest.raises(ModelFormatError, match="do not fit"):
        load_model(p, arch=nn.Sequential(nn.Linear(3, 2)))


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(InputError, match="no such model file"):
        load_model(tmp_path / "nope.onnx")
    odd = tmp_path / "model.h5"
    odd.write_text("x")
    with pytest.raises(ModelFormatError, match=r"\.pt.*\.onnx.*\.nnet.*\.tf"):
        load_model(odd)
    with pytest.raises(ModelFormatError, match="suffix"):
        save_model(_mlp(), tmp_path / "m.h5")


def test_arch_only_for_pytorch_files(tmp_path):
    p = tmp_path / "a.tf"
    p.write_text(ERAN_2_3_2)
    with pytest.raises(InputError, match="arch= is only used"):
        load_model(p, arch=_mlp())


def test_normalize_rejects_zero_std():
    with pytest.raises(InputError, match="divide by zero"):
        Normalize([0.0, 1.0], [1.0, 0.0])


def test_not_a_torch_file(tmp_path):
    p = tmp_path / "junk.pt"
    p.write_bytes(b"garbage that is no pickle")
    with pytest.raises(ModelFormatError, match="not a readable PyTorch file"):
        load_model(p)


# --------------------------------------------------------------------------- inspection


def test_describe_and_summary():
    net = normalize_model(_conv_model(), input_shape=(1, 8, 8))
    rows = describe(net)
    assert [r["affine"] for r in rows] == [0, None, None, 1, None, None, None, 2]
    assert rows[0]["output_shape"] == (3, 8, 8) and rows[-1]["output_shape"] == (4,)
    assert rows[0]["params"] == 3 * 9 + 3
    text = summary_text(net)
    assert "Conv2d" in text and "(3, 8, 8)" in text and "3 affine layers" in text
    assert affine_layers(net) == [0, 3, 7]


def test_meta_default_inferred():
    mlp = nn.Sequential(nn.Linear(4, 2))
    assert get_meta(mlp) == ModelMeta(format="torch", source=None, input_shape=(4,), extra={})
    assert get_meta(nn.Sequential(nn.Conv2d(1, 2, 3))).input_shape is None
    assert num_outputs(mlp) == 2


# --------------------------------------------------------------------------- real benchmark assets


@pytest.mark.shared
def test_shared_mnist_9x100(bench_dir):
    with pytest.warns(UserWarning, match="dropped the ReLU"):
        net = load_model(bench_dir / "mnist_relu_9_100.tf")
    assert len(affine_layers(net)) == 9
    assert get_meta(net).input_shape == (784,) and num_outputs(net) == 10
    assert type(net[-1]) is nn.Linear
    data = np.load(bench_dir / "mnist_fog8_points.npz")
    pts, labels = data["points"][:: 40], data["labels"][:: 40]
    pred = _out(net, pts).argmax(1)
    assert np.all(labels == 8) and np.all(pred != 8)


@pytest.mark.shared
def test_shared_acas(bench_dir):
    net = load_model(bench_dir / "ACASXU_run2a_2_9_batch_2000.nnet")
    assert isinstance(net[0], Normalize)
    assert len(affine_layers(net)) == 7 and get_meta(net).input_shape == (5,) and num_outputs(net) == 5
    extra = get_meta(net).extra
    assert len(extra["input_min"]) == 5 and len(extra["output_range"]) == 1


@pytest.mark.shared
def test_shared_roundtrips(bench_dir, tmp_path):
    acas = load_model(bench_dir / "ACASXU_run2a_2_9_batch_2000.nnet")
    x = np.random.default_rng(0).uniform(0, 1000, size=(20, 5))
    for suffix in (".nnet", ".onnx", ".pt"):
        back = load_model(save_model(acas, tmp_path / f"acas{suffix}"))
        np.testing.assert_array_equal(_out(back, x), _out(acas, x))
        assert get_meta(back).extra == get_meta(acas).extra
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mnist = load_model(bench_dir / "mnist_relu_9_100.tf")
    save_model(mnist, tmp_path / "m.tf")
    start = time.perf_counter()
    back = load_model(tmp_path / "m.tf")
    assert time.perf_counter() - start < 2.0  # ~0.1 s on a 2-core machine; generous for a busy CI
    x = np.random.default_rng(1).uniform(size=(10, 784))
    np.testing.assert_array_equal(_out(back, x), _out(mnist, x))
