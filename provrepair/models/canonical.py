"""Turning any supported PyTorch module into the canonical network: a flat float32 Sequential.

Every later stage walks ``net`` as a list of layers, so the shape of the network is fixed here
once: nested Sequentials flattened, eval-mode no-ops dropped, BatchNorm folded, every module
checked against the table of supported layers.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from ..errors import InputError, ModelFormatError, UnsupportedLayerError
from .batchnorm import batchnorm_as_affine, fold_batchnorm
from .layers import BATCHNORM_TYPES, DROPPED_TYPES, SUPPORTED_TEXT, SUPPORTED_TYPES
from .meta import ModelMeta, get_meta, infer_input_shape, set_meta


def _unsupported(position: int, name: str, module: nn.Module, why: str = "") -> UnsupportedLayerError:
    label = f"'{name}', " if name else ""
    reason = f" ({why})" if why else ""
    return UnsupportedLayerError(
        f"layer {position} ({label}{type(module).__name__}) is not supported{reason}. "
        f"Supported layers: {SUPPORTED_TEXT}. Replace the layer with supported ones "
        "(provrepair handles piecewise-linear feed-forward networks) or export the network "
        "as a plain sequence of those layers"
    )


def _flatten(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """(name, module) leaves of nested Sequentials, in forward order."""
    if type(module) is nn.Sequential:
        out: list[tuple[str, nn.Module]] = []
        for name, child in module.named_children():
            out.extend(_flatten(child, f"{prefix}.{name}" if prefix else name))
        return out
    return [(prefix, module)]


def _check_leaf(position: int, name: str, m: nn.Module) -> nn.Module:
    """Return the module as the canonical network keeps it, or raise for unsupported settings."""
    kind = type(m)
    if kind not in SUPPORTED_TYPES:
        if len(list(m.children())) > 0:
            why = "a custom container: provrepair cannot know in which order its forward() uses its children; rebuild it as an nn.Sequential"
            raise _unsupported(position, name, m, why)
        raise _unsupported(position, name, m)
    if kind is nn.ReLU and m.inplace:
        return nn.ReLU()  # in-place activations break the hooks later stages put on the network
    if kind is nn.Conv2d and m.padding_mode != "zeros":
        raise _unsupported(position, name, m, f"padding_mode={m.padding_mode!r}; only zero padding is supported")
    if kind is nn.Conv2d and isinstance(m.padding, str):
        raise _unsupported(position, name, m, f"padding={m.padding!r}; give the padding as numbers")
    if kind is nn.Flatten and (m.start_dim != 1 or m.end_dim != -1):
        raise _unsupported(position, name, m, "only Flatten(start_dim=1, end_dim=-1) is supported")
    if kind is nn.MaxPool2d and m.return_indices:
        raise _unsupported(position, name, m, "return_indices=True")
    return m


def normalize_model(module: nn.Module, *, input_shape: tuple[int, ...] | None = None) -> nn.Sequential:
    """The canonical form of ``module``: a flat ``nn.Sequential`` of supported layers.

    Works on a deep copy (``module`` is left as it is). Nested Sequentials are flattened,
    Identity/Dropout dropped, BatchNorm folded into the Linear/Conv2d right before it (or, when
    there is none, turned into a diagonal affine layer of its own, with a warning because that adds
    an affine layer). The result is float32, in eval mode, and carries a ``ModelMeta``; when the
    input shape is known a dummy forward checks that the layers fit together.
    """
    if not isinstance(module, nn.Module):
        raise InputError(f"expected a torch.nn.Module, got {type(module).__name__}; load the model first")
    old_meta = getattr(module, "provrepair_meta", None)
    work = copy.deepcopy(module)
    layers: list[nn.Module] = []
    for position, (name, m) in enumerate(_flatten(work)):
        if type(m) in DROPPED_TYPES:
            continue
        if type(m) in BATCHNORM_TYPES:
            prev = layers[-1] if layers else None
            if (type(prev) is nn.Linear and type(m) is nn.BatchNorm1d) or (
                type(prev) is nn.Conv2d and type(m) is nn.BatchNorm2d
            ):
                layers[-1] = fold_batchnorm(prev, m)
            else:
                after = type(prev).__name__ if prev is not None else "the input"
                warnings.warn(
                    f"layer {position} ({type(m).__name__}) follows {after}, not a Linear/Conv2d, so it "
                    "became an affine layer of its own; the affine layer numbering counts it",
                    UserWarning,
                    stacklevel=2,
                )
                layers.append(batchnorm_as_affine(m))
            continue
        layers.append(_check_leaf(position, name, m))
    if not layers:
        raise ModelFormatError("the model has no layers left after dropping Identity/Dropout; check the model file")

    net = nn.Sequential(*layers).float().eval()
    if isinstance(old_meta, ModelMeta):
        meta = copy.deepcopy(old_meta)
    else:
        meta = ModelMeta(format="torch", source=None, input_shape=None, extra={})
    if input_shape is not None:
        meta.input_shape = tuple(int(d) for d in input_shape)
    elif meta.input_shape is None:
        meta.input_shape = infer_input_shape(net)
    set_meta(net, meta)
    if meta.input_shape is not None:
        check_input_shape(net, meta.input_shape)
    return net


def check_input_shape(net: nn.Sequential, input_shape: tuple[int, ...]) -> torch.Size:
    """Run a zero sample through ``net``; return the output shape (without batch) or raise InputError."""
    if any(d <= 0 for d in input_shape):
        raise InputError(f"input shape {tuple(input_shape)} has a non-positive dimension; give one sample's shape, e.g. 1,28,28")
    x = torch.zeros((1, *input_shape), dtype=torch.float32)
    i = -1
    try:
        with torch.no_grad():
            for i, m in enumerate(net):
                x = m(x)
    except RuntimeError as exc:
        m = net[i]
        raise InputError(
            f"input shape {tuple(input_shape)} does not fit the network: layer {i} ({type(m).__name__}) "
            f"fails with: {str(exc).splitlines()[0]}. Give the shape of one sample without the batch "
            "dimension (e.g. --input-shape 1,28,28)"
        ) from None
    return x.shape[1:]


def get_input_shape(net: nn.Module) -> tuple[int, ...] | None:
    """One sample's shape from the network's metadata (None when unknown)."""
    return get_meta(net).input_shape
