"""An ONNX graph split at a cut: the front run by onnxruntime, the back converted to torch layers.

``load_model(path.onnx, cut="auto")`` walks back from the graph output along a chain of ops the
importer converts (Gemm, MatMul + Add, Relu, Conv, pooling, Flatten, ...); the tensor where that
chain begins is the cut. The nodes before it become an ONNX model of their own that
:class:`OnnxFront` runs with onnxruntime (an optional extra: ``pip install provrepair[onnx]``); the
chain becomes the piecewise-linear back exactly as a fully supported graph would.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from ..errors import InputError, ModelFormatError, UnsupportedLayerError

__all__ = ["OnnxFront", "split_onnx", "auto_cut_tensor"]

#: Ops that may stand in the back (the importer's ops; Sub/Div/Mul only normalise the input).
BACK_OPS = {"Gemm", "MatMul", "Add", "Relu", "Flatten", "Reshape", "Conv", "AveragePool", "MaxPool",
            "GlobalAveragePool", "BatchNormalization", "Identity", "Dropout"}
#: Ops a back may begin with (a back that begins with a bias Add would cut a Linear in two).
_FIRST_OPS = {"Gemm", "MatMul", "Conv", "Relu", "Flatten", "Reshape", "AveragePool", "MaxPool", "GlobalAveragePool"}


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise InputError("running an ONNX front needs onnxruntime, an optional extra: pip install onnxruntime "
                         "(or pip install 'provrepair[onnx]')") from None
    return onnxruntime


def _double_tensor(t: onnx.TensorProto) -> None:
    if t.data_type == onnx.TensorProto.FLOAT:
        arr = numpy_helper.to_array(t).astype(np.float64)
        t.CopyFrom(numpy_helper.from_array(arr, t.name))


#: Ops whose inputs and outputs are all float tensors, so a float64 graph may run them in float32
#: between two Casts when onnxruntime has no float64 kernel for them (its CPU Conv and Erf).
_CAST_WRAPPABLE = {"Conv", "ConvTranspose", "Erf", "Gelu", "Tanh", "Sigmoid", "Softplus", "LayerNormalization",
                   "Softmax", "Gemm", "MatMul", "Pow", "Sqrt", "ReduceMean", "Div", "Mul", "Add", "Sub"}


#: Ops that onnxruntime expands into a function body containing the key op.
_EXPANDS_TO = {"Erf": "Gelu"}


def _wrap_in_float32(model: onnx.ModelProto, op: str) -> None:
    """Run every ``op`` node of a float64 graph in float32: Cast its inputs down, its outputs up."""
    g = model.graph
    nodes = []
    for k, node in enumerate(g.node):
        if node.op_type != op:
            nodes.append(node)
            continue
        tag = f"_f32_{k}"
        for i, name in enumerate(node.input):
            if name:
                nodes.append(helper.make_node("Cast", [name], [name + tag], to=onnx.TensorProto.FLOAT))
                node.input[i] = name + tag
        outs = list(node.output)
        for i, name in enumerate(outs):
            node.output[i] = name + tag + "_out"
        nodes.append(node)
        for name in outs:
            nodes.append(helper.make_node("Cast", [name + tag + "_out"], [name], to=onnx.TensorProto.DOUBLE))
    del g.node[:]
    g.node.extend(nodes)


def to_double(model_bytes: bytes) -> bytes:
    """The same ONNX graph computing in float64: float initializers, constants, casts and value types
    turned to double (the ops a transformer exports, MatMul, Softmax, LayerNormalization, Erf, ...,
    have float64 kernels in onnxruntime's CPU provider)."""
    m = onnx.load_from_string(model_bytes)
    g = m.graph
    for t in g.initializer:
        _double_tensor(t)
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    for node in g.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                _double_tensor(a.t)
            elif node.op_type == "Cast" and a.name == "to" and a.i == onnx.TensorProto.FLOAT:
                a.i = onnx.TensorProto.DOUBLE
            elif a.type == onnx.AttributeProto.FLOAT and node.op_type == "Constant" and a.name == "value_float":
                pass  # value_float is float32 by definition; rare in exported graphs
    return m.SerializeToString()


class OnnxFront(nn.Module):
    """An ONNX model (one input, one output) run by onnxruntime on CPU, as a torch module.

    Float32 inputs run the graph as exported. Float64 inputs (the repair LP and the exact point
    check run the network in float64) run a float64 copy of the graph (``to_double``), as a torch
    front would under ``.double()``, so the LP sees the same features either way; if onnxruntime
    has no float64 kernel for some op, they run in float32 and the output is cast back. The
    sessions are rebuilt after ``deepcopy``/``torch.save`` from the stored model bytes.
    """

    runtime = "onnxruntime"

    def __init__(self, model_bytes: bytes, input_name: str, output_name: str):
        super().__init__()
        self.model_bytes = bytes(model_bytes)
        self.input_name, self.output_name = input_name, output_name
        self._session: Any = None
        self._session64: Any = None  # False once float64 is known not to run

    @staticmethod
    def _open(model_bytes: bytes, optimize: bool = True):
        ort = _ort()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        if not optimize:  # keep the Casts around float32-only ops (the optimiser would fold them away)
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])

    def _sess(self):
        if self._session is None:
            self._session = self._open(self.model_bytes)
        return self._session

    def _sess64(self):
        if self._session64 is None:
            self._session64 = False
            model = onnx.load_from_string(to_double(self.model_bytes))
            wrapped: set[str] = set()
            for _ in range(len(_CAST_WRAPPABLE)):
                try:
                    self._session64 = self._open(model.SerializeToString(), optimize=False)
                    self.float32_ops = sorted(wrapped)
                    break
                except Exception as exc:  # no float64 kernel for some op: run that op in float32
                    found = re.search(r"implementation for (\w+)\(", str(exc))
                    op = found.group(1) if found else None
                    if op is not None and op not in {n.op_type for n in model.graph.node}:
                        op = _EXPANDS_TO.get(op)  # an op of a function body (opset 20's Gelu runs Erf)
                    if op is None or op not in _CAST_WRAPPABLE or op in wrapped:
                        break
                    wrapped.add(op)
                    _wrap_in_float32(model, op)
        return self._session64 or None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sess = self._sess64() if x.dtype == torch.float64 else None
        if sess is not None:
            try:
                arr = x.detach().to("cpu").contiguous().numpy()
                (out,) = sess.run([self.output_name], {self.input_name: arr})
                return torch.from_numpy(np.ascontiguousarray(out)).to(dtype=x.dtype, device=x.device)
            except Exception:
                self._session64 = False
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (out,) = self._sess().run([self.output_name], {self.input_name: arr})
        return torch.from_numpy(np.ascontiguousarray(out)).to(dtype=x.dtype, device=x.device)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_session"] = None
        state["_session64"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._session = None
        self._session64 = None

    def extra_repr(self) -> str:
        return f"onnxruntime, {len(self.model_bytes):,} bytes, {self.input_name!r} -> {self.output_name!r}"


def _consts(graph: onnx.GraphProto) -> set[str]:
    names = {t.name for t in graph.initializer}
    names.update(o for n in graph.node if n.op_type == "Constant" for o in n.output)
    return names


def _back_chain(model: onnx.ModelProto) -> tuple[str, list[onnx.NodeProto]]:
    """The longest chain of back ops ending at the graph output, and the tensor where it begins."""
    g = model.graph
    consts = _consts(g)
    producers = {o: n for n in g.node for o in n.output}
    t = g.output[0].name
    chain: list[onnx.NodeProto] = []
    while t in producers:
        node = producers[t]
        data = [i for i in node.input if i and i not in consts]
        if node.op_type not in BACK_OPS or len(data) != 1 or node.domain not in ("", "ai.onnx"):
            break
        chain.insert(0, node)
        t = data[0]
    return t, chain


def auto_cut_tensor(model: onnx.ModelProto) -> str | None:
    """The tensor right after the last op that the back cannot hold, or None when no back exists."""
    t, chain = _back_chain(model)
    while chain and chain[0].op_type not in _FIRST_OPS:
        t = chain[0].output[0]
        chain = chain[1:]
    return t if chain else None


def _node_index(model: onnx.ModelProto, tensor: str) -> int | None:
    for i, n in enumerate(model.graph.node):
        if tensor in n.output:
            return i
    return None


def _back_model(model: onnx.ModelProto, cut: str) -> onnx.ModelProto:
    """The nodes from ``cut`` to the output as a model of their own (input: the cut tensor)."""
    g = model.graph
    t, chain = _back_chain(model)
    names = [t] + [n.output[0] for n in chain]
    if cut not in names:
        raise UnsupportedLayerError(
            f"cut tensor {cut!r}: the nodes from it to the graph output are not a chain of ops the back can hold "
            f"({', '.join(sorted(BACK_OPS))}); the back may begin at one of {', '.join(repr(n) for n in names[:-1])}")
    chain = chain[names.index(cut):]
    used = {i for n in chain for i in n.input}
    consts = [n for n in g.node if n.op_type == "Constant" and n.output[0] in used]
    inits = [init for init in g.initializer if init.name in used]
    graph = helper.make_graph(consts + chain, "back", [helper.make_tensor_value_info(cut, onnx.TensorProto.FLOAT, None)],
                              [g.output[0]], initializer=inits)
    return helper.make_model(graph, opset_imports=list(model.opset_import))


def _front_model(model: onnx.ModelProto, input_name: str, tensor: str) -> onnx.ModelProto:
    """The nodes that ``tensor`` depends on, in graph order, as a model with output ``tensor``."""
    g = model.graph
    producers = {o: n for n in g.node for o in n.output}
    needed: set[int] = set()
    index = {id(n): i for i, n in enumerate(g.node)}
    stack = [tensor]
    seen: set[str] = set()
    while stack:
        t = stack.pop()
        if t in seen or t not in producers:
            continue
        seen.add(t)
        node = producers[t]
        needed.add(index[id(node)])
        stack.extend(i for i in node.input if i)
        for a in node.attribute:  # subgraphs (If/Loop) read outer tensors too
            if a.type == onnx.AttributeProto.GRAPH:
                stack.extend(i for n in a.g.node for i in n.input if i)
    nodes = [g.node[i] for i in sorted(needed)]
    used = {i for n in nodes for i in n.input} | seen
    inits = [init for init in g.initializer if init.name in used]
    inputs = [i for i in g.input if i.name == input_name]
    if input_name not in used:
        raise ModelFormatError(f"the front up to tensor {tensor!r} does not read the graph input {input_name!r}")
    graph = helper.make_graph(nodes, "front", inputs, [helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None)],
                              initializer=inits)
    out = helper.make_model(graph, opset_imports=list(model.opset_import))
    out.ir_version = model.ir_version
    return out


def split_onnx(path: Path, model: onnx.ModelProto, cut: str, input_shape: tuple[int, ...] | None):
    """``(front module, back modules, cut tensor, last front node text)`` for ``cut`` ('auto' or a tensor name)."""
    from .onnx_io import import_chain

    g = model.graph
    inits = {t.name for t in g.initializer}
    data_inputs = [i.name for i in g.input if i.name not in inits]
    if len(data_inputs) != 1 or len(g.output) != 1:
        raise UnsupportedLayerError(f"{path}: a split ONNX graph needs one input and one output; it has "
                                    f"{len(data_inputs)} inputs and {len(g.output)} outputs")
    tensor = auto_cut_tensor(model) if cut == "auto" else cut
    if tensor is None:
        raise UnsupportedLayerError(f"{path}: the graph does not end with a piecewise-linear chain (e.g. Gemm, Relu, "
                                    "Gemm) that could be repaired; no cut leaves a back")
    if tensor == data_inputs[0]:
        return None, None, tensor, None  # nothing to freeze: the whole graph is the back
    back = _back_model(model, tensor)
    try:
        back_modules = import_chain(path, back, None)
    except UnsupportedLayerError as exc:
        raise UnsupportedLayerError(f"the back after cut tensor {tensor!r} cannot be converted: {exc}") from None
    front_model = _front_model(model, data_inputs[0], tensor)
    front = OnnxFront(front_model.SerializeToString(), data_inputs[0], tensor)
    idx = _node_index(model, tensor)
    last = (f"op {g.node[idx].op_type} at node {idx}" + (f" ({g.node[idx].name!r})" if g.node[idx].name else "")
            if idx is not None else f"tensor {tensor!r}")
    return front, back_modules, tensor, last
