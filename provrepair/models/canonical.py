"""Turning any supported PyTorch module into the canonical network: a flat float32 Sequential.

Every later stage walks ``net`` as a list of layers, so the shape of the network is fixed here
once: nested Sequentials flattened, eval-mode no-ops dropped, BatchNorm folded, every module
checked against the table of supported layers.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import nn

from ..errors import InputError, ModelFormatError, UnsupportedLayerError
from .batchnorm import batchnorm_as_affine, fold_batchnorm
from .front import FrozenFront
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


def _leaf_ok(position: int, name: str, m: nn.Module) -> bool:
    """Whether ``m`` may stand in the piecewise-linear back (supported, folded or dropped)."""
    if type(m) in DROPPED_TYPES or type(m) in BATCHNORM_TYPES:
        return True
    try:
        _check_leaf(position, name, m)
    except UnsupportedLayerError:
        return False
    return True


def _where(position: int, name: str, m: nn.Module) -> str:
    return f"{type(m).__name__} at position {position}" + (f" ('{name}')" if name else "")


def _auto_cut(leaves: list[tuple[str, nn.Module]]) -> int:
    """Right after the last module that cannot stand in the back (0 when every module can)."""
    bad = [i for i, (name, m) in enumerate(leaves) if not _leaf_ok(i, name, m)]
    return bad[-1] + 1 if bad else 0


def _resolve_cut(cut: Any, leaves: list[tuple[str, nn.Module]]) -> int:
    """The position of the first module of the back for ``cut`` (None = no cut, 'auto', int, name)."""
    if cut is None:
        return 0
    if isinstance(cut, str) and cut == "auto":
        return _auto_cut(leaves)
    if isinstance(cut, bool):
        raise InputError(f"cut must be 'auto', a module position or a module name, got {cut!r}")
    if isinstance(cut, int):
        if not 0 <= cut <= len(leaves):
            raise InputError(f"cut={cut} is outside the model: its modules are at positions 0 to {len(leaves) - 1} "
                             f"(cut=p freezes positions 0..p-1 as the front); give a position in 0..{len(leaves)}")
        return cut
    if isinstance(cut, str):
        for i, (name, _) in enumerate(leaves):
            if name == cut or name.startswith(cut + "."):
                return i
        names = ", ".join(repr(n) for n, _ in leaves[:12])
        raise InputError(f"cut={cut!r}: no module of that name; the model's modules are {names}"
                         f"{', ...' if len(leaves) > 12 else ''} (or give cut='auto' or a position)")
    raise InputError(f"cut must be 'auto', a module position or a module name, got {type(cut).__name__}")


def _infer_front_shape(front_leaves: list[nn.Module]) -> tuple[int, ...] | None:
    for m in front_leaves:
        if type(m) in DROPPED_TYPES:
            continue
        if isinstance(m, nn.Linear):
            return (m.in_features,)
        return None
    return None


def _cut_hint(leaves: list[tuple[str, nn.Module]], position: int) -> str:
    """What to say after refusing the module at ``position`` in a network without a cut."""
    after = _auto_cut(leaves)
    if after >= len(leaves):
        last = leaves[-1][1]
        if len(leaves) == 1 and len(list(last.children())) > 0:
            return (" To repair a model whose forward() is custom code, give its parts explicitly: "
                    "provrepair.models.with_front(front_module, back_sequential)")
        return (f" Nothing after {_where(len(leaves) - 1, leaves[-1][0], last)} could be repaired (the model ends "
                "with a module that is not piecewise linear); remove it from the exported model, e.g. a final softmax")
    return (f" To repair the layers after it, freeze everything before the cut as a front (point repair only): "
            f"load with cut={after} (CLI --cut {after}, or cut='auto' / --cut auto), which puts the cut right after "
            f"{_where(after - 1, *leaves[after - 1])}")


def normalize_model(module: nn.Module, *, input_shape: tuple[int, ...] | None = None,
                    cut: int | str | None = None) -> nn.Sequential:
    """The canonical form of ``module``: a flat ``nn.Sequential`` of supported layers.

    Works on a deep copy (``module`` is left as it is). Nested Sequentials are flattened,
    Identity/Dropout dropped, BatchNorm folded into the Linear/Conv2d right before it (or, when
    there is none, turned into a diagonal affine layer of its own, with a warning because that adds
    an affine layer). The result is float32, in eval mode, and carries a ``ModelMeta``; when the
    input shape is known a dummy forward checks that the layers fit together.

    ``cut`` splits the model into a frozen front and a piecewise-linear back (``FrozenFront``):
    ``'auto'`` right after the last module that is not supported (GELU, LayerNorm, attention, a
    custom block), an integer position ``p`` in the flattened module list (positions ``0..p-1``
    become the front), or the name of the module where the back begins. None (the default) uses
    the cut recorded in the model's metadata (``extra['cut']``), else no cut: every module must be
    supported. A cut that leaves an unsupported module in the back is refused with a message naming
    that module and the position the cut would need.
    """
    if not isinstance(module, nn.Module):
        raise InputError(f"expected a torch.nn.Module, got {type(module).__name__}; load the model first")
    old_meta = getattr(module, "provrepair_meta", None)
    leaves = _flatten(copy.deepcopy(module))
    start, front = _split(leaves, cut, old_meta)
    layers = _back_layers(leaves, start, front)
    net = nn.Sequential(*layers).float().eval()
    if isinstance(old_meta, ModelMeta):
        meta = copy.deepcopy(old_meta)
    else:
        meta = ModelMeta(format="torch", source=None, input_shape=None, extra={})
    if front is not None and front.cut is not None:
        meta.extra["cut"] = front.cut
    elif front is None:
        meta.extra.pop("cut", None)
    if input_shape is not None:
        meta.input_shape = tuple(int(d) for d in input_shape)
    elif meta.input_shape is None:
        meta.input_shape = infer_input_shape(net)
    set_meta(net, meta)
    if meta.input_shape is not None:
        check_input_shape(net, meta.input_shape)
    return net


def _split(leaves: list[tuple[str, nn.Module]], cut: Any, old_meta: Any) -> tuple[int, FrozenFront | None]:
    """Where the back begins (a leaf position) and the frozen front before it (None: no front)."""
    has_front = bool(leaves) and isinstance(leaves[0][1], FrozenFront)
    if cut is None and isinstance(old_meta, ModelMeta) and not has_front:
        cut = old_meta.extra.get("cut")
    if has_front and cut not in (None, "auto"):
        raise InputError("the model already has a frozen front (it was cut before); load it without cut=, or cut "
                         "the original model instead")
    if has_front:
        front = leaves[0][1]
        assert isinstance(front, FrozenFront)
        return 1, front
    start = _resolve_cut(cut, leaves)
    if not leaves:
        raise ModelFormatError("the model has no layers; check the model file")
    if start >= len(leaves):
        raise UnsupportedLayerError(
            f"cut at position {start} leaves no modules to repair: the model ends at position {len(leaves) - 1} "
            f"({_where(len(leaves) - 1, *leaves[-1])}).{_cut_hint(leaves, len(leaves) - 1)}")
    if start == 0:
        return 0, None
    front_leaves = [m for _, m in leaves[:start]]
    bad = [i for i, (name, m) in enumerate(leaves[:start]) if not _leaf_ok(i, name, m)]
    return start, FrozenFront(
        nn.Sequential(*front_leaves), cut=start, last_nonlinear=_where(bad[-1], *leaves[bad[-1]]) if bad else None,
        piecewise_linear=not bad, input_shape=_infer_front_shape(front_leaves))


def _back_layers(leaves: list[tuple[str, nn.Module]], start: int, front: FrozenFront | None) -> list[nn.Module]:
    """The canonical layers: the front (if any), then the back's leaves checked, folded and dropped."""
    layers: list[nn.Module] = [front] if front is not None else []
    for position, (name, m) in enumerate(leaves[start:], start):
        if isinstance(m, FrozenFront):
            raise UnsupportedLayerError(f"a FrozenFront may only be the first module; found one at position {position}")
        if type(m) in DROPPED_TYPES:
            continue
        if type(m) in BATCHNORM_TYPES:
            _fold_or_append(layers, position, m)
            continue
        if start > 0 and not _leaf_ok(position, name, m):
            raise _left_in_back(leaves, start, position)
        try:
            layers.append(_check_leaf(position, name, m))
        except UnsupportedLayerError as exc:
            raise UnsupportedLayerError(str(exc) + "." + _cut_hint(leaves, position)) from None
    if not layers or (front is not None and len(layers) == 1):
        raise ModelFormatError("the model has no layers left after dropping Identity/Dropout; check the model file")
    return layers


def _fold_or_append(layers: list[nn.Module], position: int, m: nn.Module) -> None:
    prev = layers[-1] if layers else None
    if (type(prev) is nn.Linear and type(m) is nn.BatchNorm1d) or (type(prev) is nn.Conv2d and type(m) is nn.BatchNorm2d):
        layers[-1] = fold_batchnorm(prev, m)
        return
    after = type(prev).__name__ if prev is not None else "the input"
    warnings.warn(
        f"layer {position} ({type(m).__name__}) follows {after}, not a Linear/Conv2d, so it "
        "became an affine layer of its own; the affine layer numbering counts it",
        UserWarning,
        stacklevel=4,
    )
    layers.append(batchnorm_as_affine(m))


def _left_in_back(leaves: list[tuple[str, nn.Module]], start: int, position: int) -> UnsupportedLayerError:
    name, m = leaves[position]
    need = _auto_cut(leaves)
    where = (f"the cut would have to be at position {need} or later (right after "
             f"{_where(need - 1, *leaves[need - 1])}; cut={need}, --cut {need}, or cut='auto')"
             if need < len(leaves) else "no cut leaves a piecewise-linear back (the model ends with such a module)")
    return UnsupportedLayerError(
        f"cut at position {start} leaves {_where(position, name, m)} in the back, which the repair LP needs "
        f"piecewise linear (every module from the cut on must be one of: {SUPPORTED_TEXT}); {where}")


def with_front(front: nn.Module, back: nn.Module, *, input_shape: tuple[int, ...] | None = None) -> nn.Sequential:
    """A canonical network from an explicit frozen ``front`` (any module, e.g. the feature
    extractor of a model whose ``forward`` is custom code) and a piecewise-linear ``back`` (an
    ``nn.Sequential`` of supported layers) that the repairers work on: ``back(front(x))``.

    ``--layer``/``layer=`` then count the affine layers of ``back``. Give ``input_shape`` (one
    sample, no batch) when the front's first module does not determine it.
    """
    if not isinstance(front, nn.Module) or not isinstance(back, nn.Module):
        raise InputError("with_front(front, back) takes two torch.nn.Module objects")
    if isinstance(front, FrozenFront):
        frozen = copy.deepcopy(front)
    else:
        inner = list(front) if type(front) is nn.Sequential else [front]
        leaves = _flatten(front) if type(front) is nn.Sequential else [("", front)]
        bad = [i for i, (name, m) in enumerate(leaves) if not _leaf_ok(i, name, m)]
        frozen = FrozenFront(copy.deepcopy(front), last_nonlinear=_where(bad[-1], *leaves[bad[-1]]) if bad else None,
                             piecewise_linear=not bad, input_shape=_infer_front_shape(inner))
    back_leaves = [m for _, m in _flatten(back)] if type(back) is nn.Sequential else [back]
    for position, (name, m) in enumerate(_flatten(back) if type(back) is nn.Sequential else [("", back)]):
        if not _leaf_ok(position, name, m):
            raise _unsupported(position, name, m, "the back given to with_front must be piecewise linear")
    shape = input_shape if input_shape is not None else frozen.input_shape
    whole = nn.Sequential(frozen, *back_leaves)
    set_meta(whole, ModelMeta(format="torch", source=None, input_shape=shape, extra={}))
    return normalize_model(whole, input_shape=shape)


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
