"""A frozen front: any modules before the cut, run as one opaque function ``x -> h``.

Point repair at affine layer ``k`` needs the layers before ``k`` only as a function that maps each
repair point to a constant feature vector; only the layers from ``k`` on must be piecewise linear.
So a canonical network may begin with one :class:`FrozenFront` (position 0) that holds whatever
came before the cut (GELU, LayerNorm, attention, an ONNX graph run by onnxruntime), followed by
the *back*: supported layers only. ``affine_layers`` and the repairers see only the back, so
``--layer`` counts the affine layers of the back.

What can be certified through a front:

* points: yes, through any front (the front is part of the forward pass that the exact point
  check runs, in float64 and float32);
* regions: only when every module of the front is itself in the supported table (then the
  certificate is computed on the unfrozen network, ``unfreeze``); otherwise the bound engine cannot
  bound the front and :func:`refuse_regions` raises ``UnsupportedLayerError`` (exit 2).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import UnsupportedLayerError

__all__ = ["FrozenFront", "front_of", "has_front", "refuse_regions", "unfreeze"]


class FrozenFront(nn.Module):
    """The modules before the cut, frozen: always in eval mode, no gradients into its parameters.

    ``module``: what runs (an ``nn.Sequential`` of the original modules, any ``nn.Module``, or an
    ONNX front). ``cut``: the position of the first module of the back in the original model's
    flattened module list (None when the front was given whole, e.g. by ``with_front``).
    ``last_nonlinear``: the last module of the front that is not in the supported table, as text
    ("GELU at position 1 ('1')"), or None when every module of the front is supported
    (``piecewise_linear`` is then True and regions can still be certified through it).
    ``input_shape``: one sample's shape when the front's first module says it.

    It behaves like any module under ``.double()``, ``deepcopy`` and ``torch.save``.
    """

    def __init__(self, module: nn.Module, *, cut: int | None = None, last_nonlinear: str | None = None,
                 piecewise_linear: bool = False, input_shape: tuple[int, ...] | None = None,
                 description: str = ""):
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"FrozenFront wraps an nn.Module, got {type(module).__name__}")
        self.module = module
        self.cut = cut
        self.last_nonlinear = last_nonlinear
        self.piecewise_linear = bool(piecewise_linear)
        self.input_shape = tuple(int(d) for d in input_shape) if input_shape is not None else None
        self.description = description or _describe(module)
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.module.eval()
        self.training = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def train(self, mode: bool = True) -> FrozenFront:
        # frozen: the front stays in eval mode (dropout off, normalisation statistics fixed) even
        # when the back is fine-tuned
        self.training = False
        self.module.eval()
        return self

    def where(self) -> str:
        """The front in words, for messages: what it ends with and where the back begins."""
        ends = f", ends with {self.last_nonlinear}" if self.last_nonlinear else ""
        cut = f"; the back begins at position {self.cut}" if self.cut is not None else ""
        return f"frozen front ({self.description}{ends}{cut})"

    def extra_repr(self) -> str:
        cut = f"cut={self.cut}, " if self.cut is not None else ""
        return f"{cut}piecewise_linear={self.piecewise_linear}"


def _describe(module: nn.Module) -> str:
    if isinstance(module, nn.Sequential):
        names = [type(m).__name__ for m in module]
        shown = ", ".join(names[:6]) + (f", ... ({len(names)} modules)" if len(names) > 6 else "")
        return shown or "empty"
    return type(module).__name__


def front_of(net: nn.Module) -> FrozenFront | None:
    """The network's frozen front (its first module), or None."""
    if isinstance(net, nn.Sequential) and len(net) > 0 and isinstance(net[0], FrozenFront):
        return net[0]
    return None


def has_front(net: nn.Module) -> bool:
    return front_of(net) is not None


def unfreeze(net: nn.Sequential) -> nn.Sequential:
    """The network with a piecewise-linear front spliced back in (a canonical network without a
    front); the network itself when it has no front. Raises for a front that is not piecewise linear."""
    front = front_of(net)
    if front is None:
        return net
    refuse_regions(net, "unfreeze the front")
    from .canonical import normalize_model
    from .meta import get_meta

    inner = list(front.module) if isinstance(front.module, nn.Sequential) else [front.module]
    meta = get_meta(net)
    whole = nn.Sequential(*inner, *list(net)[1:])
    return normalize_model(whole, input_shape=meta.input_shape, cut=0)


def refuse_regions(net: nn.Module, what: str = "certify or repair input regions") -> None:
    """Raise ``UnsupportedLayerError`` when ``net`` has a front the bound engine cannot handle.

    Region certificates come from bound propagation through every layer; a front with a GELU,
    LayerNorm or attention (or one run by onnxruntime) has no sound bounds here, so a region result
    through it would be a guess. Points are checked exactly through any front.
    """
    front = front_of(net)
    if front is None or front.piecewise_linear:
        return
    raise UnsupportedLayerError(
        f"cannot {what} through the network's {front.where()}: bound propagation (the region engine) "
        "handles only Linear, Conv2d, ReLU, Flatten, pooling and Normalize, so no region can be certified "
        "through this front. Check points instead (--points: exact, through any front), or use a network "
        "whose layers before the repaired one are all piecewise linear"
    )


def front_info(net: nn.Module) -> dict[str, Any] | None:
    """A JSON-able summary of the front (for reports and ``info``), or None."""
    front = front_of(net)
    if front is None:
        return None
    return {"cut": front.cut, "modules": front.description, "last_nonlinear": front.last_nonlinear,
            "piecewise_linear": front.piecewise_linear, "runs_in": getattr(front.module, "runtime", "torch")}
