"""Inspecting a canonical network: affine-layer numbering, per-layer rows, the `info` table."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import InputError
from .front import FrozenFront, front_of
from .layers import AFFINE_TYPES, Normalize
from .meta import get_meta


def _layers(net: nn.Module) -> list[nn.Module]:
    return list(net) if isinstance(net, nn.Sequential) else [net]


def affine_layers(net: nn.Module) -> list[int]:
    """Module indices of the Linear/Conv2d layers; position ``k`` in this list is affine layer ``k``."""
    return [i for i, m in enumerate(_layers(net)) if type(m) in AFFINE_TYPES]


def patterns_after(net: nn.Module, mi: int) -> bool:
    """Whether a module after ``mi`` needs activation-pattern rows in a repair LP at ``mi``: a
    max-pool, or a ReLU other than the one acting directly on ``mi``'s output."""
    later = _layers(net)[mi + 1:]
    first = next((j for j, m in enumerate(later) if not isinstance(m, nn.Flatten)), None)
    return any(isinstance(m, nn.MaxPool2d) or (isinstance(m, nn.ReLU) and j != first) for j, m in enumerate(later))


def is_head(net: nn.Module, mi: int) -> bool:
    """Whether module ``mi`` is the last affine layer, or the last hidden one with nothing after it
    that needs pattern rows: where the point repair substitutes u out by default."""
    return not patterns_after(net, mi) and sum(type(m) in AFFINE_TYPES for m in _layers(net)[mi + 1:]) <= 1


def affine_index_to_module_index(net: nn.Module, k: int) -> int:
    """The module index of affine layer ``k`` (negative ``k`` counts from the end)."""
    idx = affine_layers(net)
    if not -len(idx) <= k < len(idx):
        front = front_of(net)
        if front is not None:
            before = front.last_nonlinear or "the front's last module"
            raise InputError(
                f"affine layer {k} does not exist: layers count the piecewise-linear back of the network, which has "
                f"{len(idx)} affine layers (Linear/Conv2d), numbered 0 to {len(idx) - 1}, after its {front.where()}. "
                f"Layers before or at {before} cannot be repaired: the repair LP needs every layer from the repaired "
                "one on to be piecewise linear; choose one of the back's layers"
            )
        raise InputError(
            f"affine layer {k} does not exist: the network has {len(idx)} affine layers "
            f"(Linear/Conv2d), numbered 0 to {len(idx) - 1}; choose one of those"
        )
    return idx[k]


def _detail(m: nn.Module) -> str:
    if isinstance(m, nn.Linear):
        return f"{m.in_features} -> {m.out_features}"
    if isinstance(m, nn.Conv2d):
        k = "x".join(str(v) for v in m.kernel_size)
        s = f"{m.in_channels} -> {m.out_channels}, kernel {k}"
        if m.stride != (1, 1):
            s += f", stride {m.stride[0] if m.stride[0] == m.stride[1] else m.stride}"
        if m.padding != (0, 0):
            s += f", pad {m.padding[0] if m.padding[0] == m.padding[1] else m.padding}"
        if m.groups != 1:
            s += f", groups {m.groups}"
        return s
    if isinstance(m, (nn.AvgPool2d, nn.MaxPool2d)):
        return f"kernel {m.kernel_size}, stride {m.stride}"
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return f"output {m.output_size}"
    if isinstance(m, Normalize):
        return f"mean/std shape {tuple(m.mean.shape)}"
    if isinstance(m, FrozenFront):
        ends = f"; ends with {m.last_nonlinear}" if m.last_nonlinear else "; piecewise linear"
        return f"frozen: {m.description}{ends} (not repaired; regions need a piecewise-linear front)"
    return ""


def output_shapes(net: nn.Module, input_shape: tuple[int, ...] | None = None) -> list[tuple[int, ...]] | None:
    """Each layer's output shape (without batch) from a zero-input forward, or None if the input shape is unknown."""
    shape = input_shape if input_shape is not None else get_meta(net).input_shape
    if shape is None:
        return None
    x = torch.zeros((1, *shape), dtype=torch.float32)
    shapes = []
    with torch.no_grad():
        for m in _layers(net):
            x = m(x)
            shapes.append(tuple(x.shape[1:]))
    return shapes


def describe(net: nn.Module, input_shape: tuple[int, ...] | None = None) -> list[dict[str, Any]]:
    """One row per module: index, affine index (or None), type, output shape (or None), params, detail."""
    layers = _layers(net)
    shapes = output_shapes(net, input_shape)
    rows = []
    k = 0
    for i, m in enumerate(layers):
        affine = None
        if type(m) in AFFINE_TYPES:
            affine, k = k, k + 1
        rows.append(
            {
                "index": i,
                "affine": affine,
                "type": type(m).__name__,
                "output_shape": shapes[i] if shapes is not None else None,
                "params": sum(p.numel() for p in m.parameters()),
                "detail": _detail(m),
            }
        )
    return rows


def output_shape(net: nn.Module, input_shape: tuple[int, ...] | None = None) -> tuple[int, ...] | None:
    """The network's output shape (without batch), or None when it cannot be determined."""
    shapes = output_shapes(net, input_shape)
    if shapes:
        return shapes[-1]
    # Without an input shape: after the last Linear only shape-keeping layers may follow.
    layers = _layers(net)
    for m in reversed(layers):
        if isinstance(m, nn.Linear):
            return (m.out_features,)
        if not isinstance(m, (nn.ReLU, Normalize)):
            return None
    return None


def num_outputs(net: nn.Module, input_shape: tuple[int, ...] | None = None) -> int:
    """Number of output values per sample (the number of classes for a classifier)."""
    shape = output_shape(net, input_shape)
    if shape is None:
        raise InputError(
            "cannot tell the number of outputs: the input shape is unknown and the network does not "
            "end in a Linear layer; give the input shape (e.g. --input-shape 3,32,32)"
        )
    n = 1
    for d in shape:
        n *= d
    return n


def _fmt_shape(shape: tuple[int, ...] | None) -> str:
    return "?" if shape is None else str(tuple(shape))


def summary_text(net: nn.Module, input_shape: tuple[int, ...] | None = None) -> str:
    """A plain-text table of ``describe(net)`` with a header and totals, for ``provrepair info``."""
    meta = get_meta(net)
    shape = input_shape if input_shape is not None else meta.input_shape
    rows = describe(net, shape)
    table = [["#", "affine", "type", "output", "params", "detail"]]
    for r in rows:
        table.append(
            [
                str(r["index"]),
                "" if r["affine"] is None else str(r["affine"]),
                r["type"],
                _fmt_shape(r["output_shape"]),
                f"{r['params']:,}",
                r["detail"],
            ]
        )
    widths = [max(len(row[c]) for row in table) for c in range(len(table[0]))]
    right = {0, 1, 4}

    def line(row: list[str]) -> str:
        cells = [row[c].rjust(widths[c]) if c in right else row[c].ljust(widths[c]) for c in range(len(row))]
        return "  ".join(cells).rstrip()

    total = sum(r["params"] for r in rows)
    n_affine = sum(1 for r in rows if r["affine"] is not None)
    head = [
        f"format: {meta.format}" + (f"  source: {meta.source}" if meta.source else ""),
        f"input shape: {_fmt_shape(shape)}",
    ]
    front = front_of(net)
    if front is not None:
        head.append(f"{front.where()}; affine layers count the back only")
    out = head + [line(table[0]), line(["-" * w for w in widths])] + [line(r) for r in table[1:]]
    out.append(f"{len(rows)} modules, {n_affine} affine layers, {total:,} parameters")
    return "\n".join(out)
