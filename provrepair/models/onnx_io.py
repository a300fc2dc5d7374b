"""ONNX import (sequential graphs of plain ops) and export (built node by node with onnx.helper).

Export is built by hand rather than with ``torch.onnx.export`` because the canonical network maps
one-to-one onto a handful of standard ops; doing it directly is deterministic, needs no tracing,
and does not depend on which exporter the installed torch ships (the new one needs onnxscript).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from ..errors import InputError, ModelFormatError, UnsupportedLayerError
from ..fileio import atomic_path
from .layers import Normalize
from .meta import ModelMeta, get_meta

META_KEY = "provrepair.meta"
OPSET = 13
IR_VERSION = 8  # the IR version that goes with opset 13, readable by older runtimes

SUPPORTED_OPS = (
    "Gemm, MatMul (+ Add as bias), Conv, Relu, Flatten (axis 1), Reshape to 2-D, AveragePool, "
    "GlobalAveragePool, MaxPool, BatchNormalization, Sub/Div/Add/Mul by a constant at the input "
    "(normalisation), Identity, Dropout, Constant"
)


# ----------------------------------------------------------------------------------------- import


def _tensor(a: np.ndarray) -> torch.Tensor:
    """A float32 tensor that owns a copy of ``a`` (ONNX arrays may be read-only views)."""
    return torch.tensor(np.asarray(a, dtype=np.float32))


class _Importer:
    """Walks the nodes in order, following the one data tensor from the graph input to its output."""

    def __init__(self, path: Path, model: onnx.ModelProto):
        self.path = path
        self.graph = model.graph
        self.consts: dict[str, np.ndarray] = {
            t.name: numpy_helper.to_array(t) for t in self.graph.initializer
        }
        self.modules: list[nn.Module] = []
        self.input_shape: tuple[int, ...] | None = None
        self.where = ""

    # errors -------------------------------------------------------------------------------------
    def fail(self, what: str) -> ModelFormatError:
        return ModelFormatError(f"{self.path}: {self.where}: {what}")

    def unsupported(self, what: str) -> UnsupportedLayerError:
        return UnsupportedLayerError(
            f"{self.path}: {self.where}: {what}. Supported ONNX ops: {SUPPORTED_OPS}. Re-export the network "
            "as a plain sequence of those ops (e.g. without softmax, with constant shapes)"
        )

    # helpers ------------------------------------------------------------------------------------
    def const(self, name: str, what: str) -> np.ndarray:
        if name not in self.consts:
            raise self.unsupported(f"its {what} ({name!r}) is computed at run time, not a constant initializer")
        return np.asarray(self.consts[name], dtype=np.float64)

    @staticmethod
    def attrs(node: onnx.NodeProto) -> dict:
        return {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def pads2d(self, a: dict) -> tuple[int, int]:
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto not in ("NOTSET", "VALID"):
            raise self.unsupported(f"auto_pad={auto}; re-export with explicit pads")
        pads = list(a.get("pads", [0, 0, 0, 0])) if auto == "NOTSET" else [0, 0, 0, 0]
        if len(pads) != 4:
            raise self.unsupported(f"pads {pads} are not those of a 2-D operation")
        if pads[0] != pads[2] or pads[1] != pads[3]:
            raise self.unsupported(f"asymmetric pads {pads}; only symmetric padding maps onto PyTorch layers")
        return int(pads[0]), int(pads[1])

    def pair(self, a: dict, key: str, default: int) -> tuple[int, int]:
        v = list(a.get(key, [default, default]))
        if len(v) != 2:
            raise self.unsupported(f"{key}={v}: only 2-D operations (two spatial dimensions) are supported")
        return int(v[0]), int(v[1])

    @staticmethod
    def squeeze_leading(c: np.ndarray) -> np.ndarray:
        # Leading 1s do not change broadcasting against a batch of samples; dropping them leaves
        # the shape of one sample (e.g. (1, C, 1, 1) -> (C, 1, 1)).
        while c.ndim > 0 and c.shape[0] == 1:
            c = c.reshape(c.shape[1:])
        return c

    def last(self) -> nn.Module | None:
        return self.modules[-1] if self.modules else None

    # op handlers --------------------------------------------------------------------------------
    def linear(self, w_out_in: np.ndarray, bias: np.ndarray | None) -> nn.Linear:
        out_f, in_f = w_out_in.shape
        lin = nn.Linear(in_f, out_f)
        b = np.zeros(out_f) if bias is None else np.broadcast_to(bias.reshape(-1) if bias.size == out_f else bias, (out_f,))
        with torch.no_grad():
            lin.weight.copy_(_tensor(w_out_in))
            lin.bias.copy_(_tensor(b))
        return lin

    def on_gemm(self, node, a):
        if a.get("transA", 0):
            raise self.unsupported("Gemm with transA=1")
        b = self.const(node.input[1], "weight B")
        if b.ndim != 2:
            raise self.fail(f"Gemm weight has shape {b.shape}, expected 2-D; the file is malformed")
        w = (b if a.get("transB", 0) else b.T) * float(a.get("alpha", 1.0))
        c = None
        if len(node.input) > 2 and node.input[2]:
            c = self.const(node.input[2], "bias C") * float(a.get("beta", 1.0))
            if c.size not in (1, w.shape[0]):
                raise self.unsupported(f"Gemm bias of shape {c.shape} is not one value per output")
        self.modules.append(self.linear(w, c))

    def on_matmul(self, node, a):
        b = self.const(node.input[1], "weight")
        if b.ndim != 2:
            raise self.unsupported(f"MatMul with a weight of shape {b.shape} (only 2-D weights form a Linear layer)")
        self.modules.append(self.linear(b.T, None))  # a following Add becomes its bias

    def on_conv(self, node, a):
        w = self.const(node.input[1], "weight")
        if w.ndim != 4:
            raise self.unsupported(f"Conv with a {w.ndim - 2}-D kernel; only 2-D convolutions are supported")
        group = int(a.get("group", 1))
        ph, pw = self.pads2d(a)
        conv = nn.Conv2d(
            w.shape[1] * group,
            w.shape[0],
            (w.shape[2], w.shape[3]),
            stride=self.pair(a, "strides", 1),
            padding=(ph, pw),
            dilation=self.pair(a, "dilations", 1),
            groups=group,
            bias=True,
        )
        if "kernel_shape" in a and tuple(a["kernel_shape"]) != (w.shape[2], w.shape[3]):
            raise self.fail(f"kernel_shape {list(a['kernel_shape'])} does not match the weight shape {w.shape}")
        bias = self.const(node.input[2], "bias") if len(node.input) > 2 and node.input[2] else np.zeros(w.shape[0])
        with torch.no_grad():
            conv.weight.copy_(_tensor(w))
            conv.bias.copy_(_tensor(bias.reshape(-1)))
        self.modules.append(conv)

    def on_batchnorm(self, node, a):
        if a.get("training_mode", 0) or sum(1 for o in node.output if o) > 1:
            raise self.unsupported("BatchNormalization in training mode; export the model in eval mode")
        scale, bias, mean, var = (self.const(node.input[i], k) for i, k in enumerate(("scale", "B", "mean", "var"), 1))
        prev = self.last()
        two_d = isinstance(prev, nn.Conv2d) or (not isinstance(prev, nn.Linear) and self.sample_rank() == 3)
        bn = (nn.BatchNorm2d if two_d else nn.BatchNorm1d)(scale.size, eps=float(a.get("epsilon", 1e-5)))
        with torch.no_grad():
            bn.weight.copy_(_tensor(scale.reshape(-1)))
            bn.bias.copy_(_tensor(bias.reshape(-1)))
            bn.running_mean.copy_(_tensor(mean.reshape(-1)))
            bn.running_var.copy_(_tensor(var.reshape(-1)))
        self.modules.append(bn.eval())

    def sample_rank(self) -> int | None:
        # The rank of one sample at the current point, when nothing but Normalize came before.
        if all(isinstance(m, Normalize) for m in self.modules) and self.input_shape is not None:
            return len(self.input_shape)
        return None

    def on_pool(self, node, a, op):
        ph, pw = self.pads2d(a)
        kernel = self.pair(a, "kernel_shape", 1)
        stride = self.pair(a, "strides", 1)
        ceil = bool(a.get("ceil_mode", 0))
        if op == "MaxPool":
            self.modules.append(nn.MaxPool2d(kernel, stride=stride, padding=(ph, pw), dilation=self.pair(a, "dilations", 1), ceil_mode=ceil))
        else:
            if self.pair(a, "dilations", 1) != (1, 1):
                raise self.unsupported("AveragePool with dilations")
            include = bool(a.get("count_include_pad", 0))
            self.modules.append(nn.AvgPool2d(kernel, stride=stride, padding=(ph, pw), ceil_mode=ceil, count_include_pad=include))

    def on_reshape(self, node, a):
        shape = self.const(node.input[1], "target shape").astype(np.int64).reshape(-1)
        if len(shape) == 2 and shape[0] in (-1, 0, 1) and (shape[1] == -1 or shape[1] > 0):
            self.modules.append(nn.Flatten())
            return
        raise self.unsupported(f"Reshape to {shape.tolist()}; only a reshape to (batch, features) is supported")

    def on_elementwise(self, node, op, data_pos):
        other = node.input[1 - data_pos]
        c = self.squeeze_leading(self.const(other, "constant operand"))
        prev = self.last()
        if op == "Add" and isinstance(prev, (nn.Linear, nn.Conv2d)):
            n = prev.out_features if isinstance(prev, nn.Linear) else prev.out_channels
            if isinstance(prev, nn.Linear):
                per_output = c.size in (1, n) and c.ndim <= 1
            else:  # a conv bias must be per channel: shape (C, 1, 1) once the batch dimension is gone
                per_output = c.size == 1 or (c.shape[0] == n and c.size == n)
            if per_output:
                with torch.no_grad():
                    prev.bias.add_(_tensor(np.broadcast_to(c.reshape(-1), (n,))))
                return
            raise self.unsupported(f"Add of a constant of shape {c.shape} that is not a per-output bias")
        if prev is not None and not isinstance(prev, Normalize):
            raise self.unsupported(f"{op} by a constant after {type(prev).__name__}; only the input may be normalised this way")
        if data_pos == 1 and op in ("Sub", "Div"):
            raise self.unsupported(f"{op} with the constant as first operand (constant {op.lower()} input)")
        if prev is None:
            mean, std = np.zeros(()), np.ones(())
        else:
            mean, std = prev.mean.double().numpy(), prev.std.double().numpy()
        if op == "Sub":
            mean = mean + c * std
        elif op == "Add":
            mean = mean - c * std
        elif op == "Div":
            std = std * c
        else:  # Mul
            if np.any(c == 0):
                raise self.unsupported("Mul by a constant containing 0 (not an invertible normalisation)")
            std = std / c
        norm = Normalize(mean, std)
        if prev is None:
            self.modules.append(norm)
        else:
            self.modules[-1] = norm

    # main loop ----------------------------------------------------------------------------------
    def run(self, input_shape) -> list[nn.Module]:
        g = self.graph
        data_inputs = [i for i in g.input if i.name not in self.consts]
        if len(data_inputs) != 1 or len(g.output) != 1:
            self.where = "graph"
            raise self.unsupported(
                f"the graph has {len(data_inputs)} inputs and {len(g.output)} outputs; only one input and one output are supported"
            )
        self.input_shape = input_shape
        current = data_inputs[0].name
        for i, node in enumerate(g.node):
            op = node.op_type
            self.where = f"node {i} ({node.name!r}, op {op})" if node.name else f"node {i} (op {op})"
            if node.domain not in ("", "ai.onnx"):
                raise self.unsupported(f"operator domain {node.domain!r}")
            if op == "Constant":
                a = self.attrs(node)
                for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
                    if key in a:
                        v = a[key]
                        self.consts[node.output[0]] = numpy_helper.to_array(v) if key == "value" else np.asarray(v)
                        break
                else:
                    raise self.unsupported("a Constant without a numeric value")
                continue
            inputs = [n for n in node.input if n]
            data = [k for k, n in enumerate(node.input) if n and n not in self.consts]
            if not data and op == "Identity":
                self.consts[node.output[0]] = self.consts[inputs[0]]
                continue
            if len(data) != 1 or node.input[data[0]] != current:
                raise self.unsupported(
                    "the graph is not a simple chain: this node does not take exactly the previous layer's output "
                    "(branches, skip connections and shape computations are not supported)"
                )
            a = self.attrs(node)
            pos = data[0]
            if op not in ("Sub", "Div", "Add", "Mul") and pos != 0:
                raise self.unsupported("the data tensor is not the first operand")
            if op == "Gemm":
                self.on_gemm(node, a)
            elif op == "MatMul":
                self.on_matmul(node, a)
            elif op in ("Sub", "Div", "Add", "Mul"):
                self.on_elementwise(node, op, pos)
            elif op == "Conv":
                self.on_conv(node, a)
            elif op == "Relu":
                self.modules.append(nn.ReLU())
            elif op == "Flatten":
                if a.get("axis", 1) != 1:
                    raise self.unsupported(f"Flatten with axis={a.get('axis')}; only axis=1 keeps the batch dimension")
                self.modules.append(nn.Flatten())
            elif op == "Reshape":
                self.on_reshape(node, a)
            elif op in ("AveragePool", "MaxPool"):
                self.on_pool(node, a, op)
            elif op == "GlobalAveragePool":
                self.modules.append(nn.AdaptiveAvgPool2d(1))
            elif op == "BatchNormalization":
                self.on_batchnorm(node, a)
            elif op in ("Identity", "Dropout"):
                pass
            else:
                raise self.unsupported(f"op {op} is not supported")
            current = node.output[0]
        self.where = "graph output"
        if current != g.output[0].name:
            raise self.unsupported(f"the graph output {g.output[0].name!r} is not the end of the chain of layers")
        if not self.modules:
            raise self.fail("the graph has no layers")
        return self.modules


def import_chain(path: Path, model: onnx.ModelProto, input_shape: tuple[int, ...] | None) -> list[nn.Module]:
    """The torch layers of a graph that is a simple chain of supported ops (raises otherwise)."""
    return _Importer(path, model).run(input_shape)


def _graph_input_shape(model: onnx.ModelProto, consts: set[str]) -> tuple[int, ...] | None:
    for inp in model.graph.input:
        if inp.name in consts:
            continue
        t = inp.type.tensor_type
        if not t.HasField("shape"):
            return None
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim][1:]
        if not dims or any(d is None or d <= 0 for d in dims):
            return None
        return tuple(dims)
    return None


def load_onnx(path: str | Path, input_shape: tuple[int, ...] | None = None, *,
              cut: str | None = None) -> tuple[nn.Sequential, ModelMeta]:
    """The layers of a sequential ONNX graph (BatchNorm not yet folded) and the model's metadata.

    ``cut`` ('auto' or the name of the tensor where the back begins) splits a graph whose ops are
    not all supported: the nodes before the cut run in onnxruntime as a ``FrozenFront``.
    """
    path = Path(path)
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf raises its own DecodeError; onnx may raise others
        raise ModelFormatError(f"{path}: not a valid ONNX file ({type(exc).__name__}: {exc}); re-export the model to ONNX") from None
    inits = {t.name for t in model.graph.initializer}
    shape = tuple(input_shape) if input_shape is not None else _graph_input_shape(model, inits)
    front = None
    if cut is not None and not isinstance(cut, str):
        raise InputError(f"cut= for an ONNX model is 'auto' or the name of the tensor where the back begins, got {cut!r}")
    if cut is None:
        try:
            modules = _Importer(path, model).run(shape)
        except UnsupportedLayerError as exc:
            from .onnx_front import auto_cut_tensor

            try:
                tensor = auto_cut_tensor(model)
            except Exception:  # the hint is a courtesy; the refusal stands without it
                tensor = None
            data_inputs = [i.name for i in model.graph.input if i.name not in inits]
            if tensor is None or tensor in data_inputs:
                raise
            raise UnsupportedLayerError(
                f"{exc}. To repair the piecewise-linear layers at the end of the graph, run the nodes before tensor "
                f"{tensor!r} in onnxruntime as a frozen front (point repair only): load with cut='auto' (CLI --cut "
                f"auto) or cut={tensor!r}; needs pip install onnxruntime") from None
    else:
        from .front import FrozenFront
        from .onnx_front import split_onnx

        onnx_front, back, tensor, last = split_onnx(path, model, cut, shape)
        if onnx_front is None:
            modules = _Importer(path, model).run(shape)
        else:
            front = FrozenFront(onnx_front, last_nonlinear=last, input_shape=shape,
                                description=f"ONNX nodes up to tensor {tensor!r}, run by onnxruntime")
            modules = [front, *back]
    extra: dict = {}
    for prop in model.metadata_props:
        if prop.key == META_KEY:
            try:
                stored = json.loads(prop.value)
                extra = dict(stored.get("extra", {}))
                if shape is None and stored.get("input_shape"):
                    shape = tuple(stored["input_shape"])
            except (ValueError, AttributeError, TypeError):
                pass  # metadata is a convenience; a damaged entry must not block loading
    extra.pop("cut", None)
    if front is not None:
        extra["cut"] = f"onnx:{cut}"  # informational: an ONNX front lives in the .pt file, not in the graph
    return nn.Sequential(*modules), ModelMeta(format="onnx", source=str(path), input_shape=shape, extra=extra)


# ----------------------------------------------------------------------------------------- export


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _export_input_dims(net: nn.Sequential, shape: tuple[int, ...] | None) -> list | None:
    if shape is not None:
        return ["N", *shape]
    for m in net:
        if isinstance(m, nn.Linear):
            return ["N", m.in_features]
        if isinstance(m, nn.Conv2d):
            return ["N", m.in_channels, "H", "W"]
        if not isinstance(m, Normalize):
            return None
    return None


class _Exporter:
    """The ONNX nodes of a canonical network, one method per layer kind (the mirror of ``_Importer``)."""

    def __init__(self, net: nn.Sequential):
        self.meta = get_meta(net)
        self.shapes = None
        if self.meta.input_shape is not None:
            from .summary import output_shapes

            self.shapes = output_shapes(net, self.meta.input_shape)
        self.nodes: list = []
        self.inits: list = []
        self.handlers = {
            Normalize: self.on_normalize, nn.Linear: self.on_linear, nn.Conv2d: self.on_conv, nn.ReLU: self.on_relu,
            nn.Flatten: self.on_flatten, nn.MaxPool2d: self.on_maxpool, nn.AvgPool2d: self.on_avgpool,
            nn.AdaptiveAvgPool2d: self.on_adaptive_avgpool,
        }

    def init(self, name: str, t: torch.Tensor) -> str:
        self.inits.append(numpy_helper.from_array(t.detach().cpu().float().numpy().copy(), name))
        return name

    def node(self, op: str, inputs: list[str], out: str, name: str, **attrs) -> None:
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))

    def layer(self, i: int, m: nn.Module, cur: str, out: str) -> None:
        kind = type(m)
        handler = self.handlers.get(kind)
        if handler is None or not _EXPORTABLE.get(kind, lambda _: True)(m):
            raise ModelFormatError(
                f"layer {i} ({kind.__name__}) cannot be written to ONNX by provrepair; normalise the network with "
                "normalize_model() first, or save it as .pt"
            )
        handler(i, m, cur, out)

    def on_normalize(self, i, m, cur, out):
        mid = f"x{i}_centred"
        self.node("Sub", [cur, self.init(f"l{i}.mean", m.mean)], mid, f"l{i}_sub")
        self.node("Div", [mid, self.init(f"l{i}.std", m.std)], out, f"l{i}_div")

    def on_linear(self, i, m, cur, out):
        b = m.bias if m.bias is not None else torch.zeros(m.out_features)
        self.node("Gemm", [cur, self.init(f"l{i}.weight", m.weight), self.init(f"l{i}.bias", b)], out, f"l{i}_gemm",
                  transB=1)

    def on_conv(self, i, m, cur, out):
        if isinstance(m.padding, str) or m.padding_mode != "zeros":
            raise ModelFormatError(f"layer {i} (Conv2d) uses padding {m.padding!r}/{m.padding_mode}; save it as .pt instead")
        b = m.bias if m.bias is not None else torch.zeros(m.out_channels)
        ph, pw = _pair(m.padding)
        self.node("Conv", [cur, self.init(f"l{i}.weight", m.weight), self.init(f"l{i}.bias", b)], out, f"l{i}_conv",
                  kernel_shape=list(_pair(m.kernel_size)), strides=list(_pair(m.stride)), pads=[ph, pw, ph, pw],
                  dilations=list(_pair(m.dilation)), group=int(m.groups))

    def on_relu(self, i, m, cur, out):
        self.node("Relu", [cur], out, f"l{i}_relu")

    def on_flatten(self, i, m, cur, out):
        self.node("Flatten", [cur], out, f"l{i}_flatten", axis=1)

    def on_maxpool(self, i, m, cur, out):
        ph, pw = _pair(m.padding)
        self.node("MaxPool", [cur], out, f"l{i}_maxpool", kernel_shape=list(_pair(m.kernel_size)),
                  strides=list(_pair(m.stride)), pads=[ph, pw, ph, pw], dilations=list(_pair(m.dilation)),
                  ceil_mode=int(m.ceil_mode))

    def on_avgpool(self, i, m, cur, out):
        ph, pw = _pair(m.padding)
        self.node("AveragePool", [cur], out, f"l{i}_avgpool", kernel_shape=list(_pair(m.kernel_size)),
                  strides=list(_pair(m.stride)), pads=[ph, pw, ph, pw], ceil_mode=int(m.ceil_mode),
                  count_include_pad=int(m.count_include_pad))

    def on_adaptive_avgpool(self, i, m, cur, out):
        """A plain AveragePool, which needs the input size known and divisible by the output size."""
        osz = m.output_size
        size = (osz, osz) if isinstance(osz, int) else tuple(osz)
        size = None if None in size else size
        if size == (1, 1):
            self.node("GlobalAveragePool", [cur], out, f"l{i}_gap")
            return
        in_hw = None
        if self.shapes is not None:
            in_hw = self.shapes[i - 1][-2:] if i > 0 else self.meta.input_shape[-2:]
        if size is None or in_hw is None or in_hw[0] % size[0] or in_hw[1] % size[1]:
            raise ModelFormatError(
                f"layer {i} (AdaptiveAvgPool2d to {m.output_size}) has no fixed ONNX equivalent without a known input "
                "size that the output size divides; save the network as .pt, or load it with input_shape=... first"
            )
        k = (in_hw[0] // size[0], in_hw[1] // size[1])
        self.node("AveragePool", [cur], out, f"l{i}_avgpool", kernel_shape=list(k), strides=list(k))


#: Layer kinds that ONNX can express only in some configurations (the others are refused).
_EXPORTABLE = {
    nn.Flatten: lambda m: m.start_dim == 1 and m.end_dim == -1,
    nn.MaxPool2d: lambda m: not m.return_indices,
    nn.AvgPool2d: lambda m: m.divisor_override is None,
}


def onnx_model(net: nn.Sequential) -> onnx.ModelProto:
    """The ONNX model (opset 13) of a canonical network; its metadata goes into ``metadata_props``."""
    ex = _Exporter(net)
    layers = list(net)
    cur = "input"
    for i, m in enumerate(layers):
        out = "output" if i == len(layers) - 1 else f"x{i}"
        ex.layer(i, m, cur, out)
        cur = out
    if not layers:
        raise ModelFormatError("the network has no layers to write")
    return _assemble(net, ex)


def _assemble(net: nn.Sequential, ex: _Exporter) -> onnx.ModelProto:
    """The checked model around the exported nodes, with the network's metadata."""
    meta = ex.meta
    dims = _export_input_dims(net, meta.input_shape)
    x = helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, dims)
    out_dims = ["N", *ex.shapes[-1]] if ex.shapes else None
    y = helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, out_dims)
    graph = helper.make_graph(ex.nodes, "provrepair", [x], [y], initializer=ex.inits)
    model = helper.make_model(graph, producer_name="provrepair", opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    payload = {"format": meta.format, "input_shape": list(meta.input_shape) if meta.input_shape else None, "extra": _jsonable(meta.extra)}
    helper.set_model_props(model, {META_KEY: json.dumps(payload, sort_keys=True)})
    onnx.checker.check_model(model)
    return model


def _jsonable(extra: dict) -> dict:
    out = {}
    for k, v in (extra or {}).items():
        try:
            json.dumps(v)
        except (TypeError, ValueError):
            continue  # keep what can be stored; the rest is specific to the in-memory object
        out[str(k)] = v
    return out


def save_onnx(net: nn.Sequential, path: str | Path, *, protect=()) -> None:
    data = onnx_model(net).SerializeToString()
    with atomic_path(path, protect=protect) as tmp:
        tmp.write_bytes(data)
