"""Kyle Julian's ``.nnet`` format (ACAS Xu networks).

The input normalisation becomes a leading ``Normalize`` layer so that the network takes inputs in
physical units, which is how ACAS Xu properties are stated. The input domain (min/max) and the
output scaling (``y * range + mean``) are not part of the network's function as provrepair uses it;
they are kept in the metadata so that saving writes them back unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ModelFormatError
from ..fileio import atomic_path
from .layers import Normalize
from .meta import ModelMeta, get_meta, set_meta

#: Written as the input domain when a network has none recorded (the largest float32: "unbounded").
_UNBOUNDED = float(np.finfo(np.float32).max)


def _err(path: Path, lineno: int, what: str) -> ModelFormatError:
    return ModelFormatError(f"{path}: line {lineno}: {what}; fix the file or re-export it in .nnet format")


def _values(path: Path, lineno: int, line: str, expect: int | None, what: str) -> list[float]:
    parts = [p.strip() for p in line.split(",")]
    if parts and parts[-1] == "":
        parts = parts[:-1]
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        raise _err(path, lineno, f"the {what} line has a value that is not a number") from None
    if expect is not None and len(vals) != expect:
        raise _err(path, lineno, f"expected {expect} values for the {what}, found {len(vals)}")
    return vals


def load_nnet(path: str | Path) -> nn.Sequential:
    """Read a ``.nnet`` network: Normalize(input_mean, input_range), then Linear/ReLU, no ReLU at the end."""
    path = Path(path)
    try:
        raw = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise ModelFormatError(f"{path} is not a text file; a .nnet network is plain text") from None
    lines = [(i + 1, ln) for i, ln in enumerate(raw) if ln.strip() and not ln.lstrip().startswith("//")]
    it = iter(lines)

    def take(what: str) -> tuple[int, str]:
        try:
            return next(it)
        except StopIteration:
            last = lines[-1][0] if lines else 0
            raise _err(path, last, f"the file ends before the {what}") from None

    lineno, line = take("header line numLayers,inputSize,outputSize,maxLayerSize")
    head = _values(path, lineno, line, None, "header (numLayers,inputSize,outputSize,maxLayerSize)")
    if len(head) < 3 or any(v != int(v) or v <= 0 for v in head[:3]):
        raise _err(path, lineno, "expected the header numLayers,inputSize,outputSize,maxLayerSize as positive integers")
    n_layers, n_in, n_out = (int(v) for v in head[:3])
    lineno, line = take("layer sizes")
    sizes_f = _values(path, lineno, line, n_layers + 1, "layer sizes")
    if any(v != int(v) or v <= 0 for v in sizes_f):
        raise _err(path, lineno, "layer sizes must be positive integers")
    sizes = [int(v) for v in sizes_f]
    if sizes[0] != n_in or sizes[-1] != n_out:
        raise _err(path, lineno, f"layer sizes start with {sizes[0]} and end with {sizes[-1]}, but the header says {n_in} inputs and {n_out} outputs")
    take("flag line")  # historically 'symmetric'; unused
    extra: dict[str, list[float]] = {}
    for key, count in (("input_min", n_in), ("input_max", n_in), ("mean", n_in + 1), ("range", n_in + 1)):
        lineno, line = take(f"{key} line")
        vals = _values(path, lineno, line, count, key.replace("_", " "))
        if key in ("mean", "range"):
            extra[f"input_{key}"], extra[f"output_{key}"] = vals[:n_in], [vals[n_in]]
        else:
            extra[key] = vals
        if key == "range" and any(v == 0 for v in vals[:n_in]):
            raise _err(path, lineno, "an input range is 0, which would divide by zero in the normalisation")

    modules: list[nn.Module] = [Normalize(extra["input_mean"], extra["input_range"])]
    for k in range(n_layers):
        rows, cols = sizes[k + 1], sizes[k]
        w = np.empty((rows, cols), dtype=np.float64)
        for r in range(rows):
            lineno, line = take(f"weights of layer {k}")
            w[r] = _values(path, lineno, line, cols, f"weight row {r} of layer {k}")
        b = np.empty(rows, dtype=np.float64)
        for r in range(rows):
            lineno, line = take(f"biases of layer {k}")
            b[r] = _values(path, lineno, line, 1, f"bias {r} of layer {k}")[0]
        lin = nn.Linear(cols, rows)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w))
            lin.bias.copy_(torch.from_numpy(b))
        modules.append(lin)
        if k < n_layers - 1:
            modules.append(nn.ReLU())
    rest = next(it, None)
    if rest is not None:
        raise _err(path, rest[0], f"unexpected content after the last layer (the header promises {n_layers} layers)")
    net = nn.Sequential(*modules).float().eval()
    return set_meta(net, ModelMeta(format="nnet", source=str(path), input_shape=(n_in,), extra=extra))


def _fmt(values) -> str:
    return ",".join(repr(float(v)) for v in np.asarray(values, dtype=np.float64).ravel()) + ","


def _stored(extra: dict, key: str, n: int, current: np.ndarray | None, default: float) -> np.ndarray:
    """The metadata's float64 values if present and (for the normalisation) still what the network uses."""
    vals = extra.get(key)
    if vals is not None and len(vals) == n:
        arr = np.asarray(vals, dtype=np.float64)
        if current is None or np.array_equal(arr.astype(np.float32), current.astype(np.float32)):
            return arr
    if current is not None:
        return current.astype(np.float64)
    return np.full(n, default, dtype=np.float64)


def nnet_text(net: nn.Sequential) -> str:
    """The ``.nnet`` text of a network of an optional Normalize, then Linear layers with a ReLU between each two."""
    layers = list(net)
    meta = get_meta(net)
    norm = layers[0] if layers and isinstance(layers[0], Normalize) else None
    body = layers[1:] if norm is not None else layers
    hint = "save it as .onnx or .pt instead"
    linears = body[0::2]
    relus = body[1::2]
    if not linears or any(type(m) is not nn.Linear for m in linears) or any(type(m) is not nn.ReLU for m in relus) or len(relus) != len(linears) - 1:
        raise ModelFormatError(
            "the .nnet format only holds Linear layers with a ReLU between each two and none after the last "
            f"(plus a leading Normalize); this network is {[type(m).__name__ for m in layers]}; {hint}"
        )
    n_in = linears[0].in_features
    if norm is not None:
        mean, std = norm.mean.detach().numpy(), norm.std.detach().numpy()
        if mean.ndim > 1 or std.ndim > 1 or mean.size not in (1, n_in) or std.size not in (1, n_in):
            raise ModelFormatError(f"the .nnet format stores one normalisation value per input; this Normalize does not fit; {hint}")
        mean = np.broadcast_to(mean, (n_in,))
        std = np.broadcast_to(std, (n_in,))
    else:
        mean, std = np.zeros(n_in, dtype=np.float32), np.ones(n_in, dtype=np.float32)
    extra = meta.extra or {}
    in_mean = _stored(extra, "input_mean", n_in, mean, 0.0)
    in_range = _stored(extra, "input_range", n_in, std, 1.0)
    in_min = _stored(extra, "input_min", n_in, None, -_UNBOUNDED)
    in_max = _stored(extra, "input_max", n_in, None, _UNBOUNDED)
    out_mean = _stored(extra, "output_mean", 1, None, 0.0)
    out_range = _stored(extra, "output_range", 1, None, 1.0)

    sizes = [n_in] + [m.out_features for m in linears]
    out = [
        "// Neural network written by provrepair",
        f"{len(linears)},{n_in},{sizes[-1]},{max(sizes)},",
        ",".join(str(s) for s in sizes) + ",",
        "0,",
        _fmt(in_min),
        _fmt(in_max),
        _fmt(np.concatenate([in_mean, out_mean])),
        _fmt(np.concatenate([in_range, out_range])),
    ]
    for m in linears:
        w = m.weight.detach().numpy()
        b = m.bias.detach().numpy() if m.bias is not None else np.zeros(m.out_features, dtype=np.float32)
        out.extend(_fmt(row) for row in w)
        out.extend(_fmt([v]) for v in b)
    return "\n".join(out) + "\n"


def save_nnet(net: nn.Sequential, path: str | Path, *, protect=()) -> None:
    text = nnet_text(net)
    with atomic_path(path, protect=protect) as tmp:
        tmp.write_text(text)
