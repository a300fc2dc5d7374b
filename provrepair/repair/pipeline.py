"""Certified pipelines: a statistical stage, then the LP point repair as a *polish*.

A statistical repairer (fine-tuning, DeepPatch, MetaRepair) improves a network on a whole kind of
failure but proves nothing. :func:`polish` takes its output and the repair set and makes every
repair point hold provably:

1. certify the stage's network on the repair set (the independent point check);
2. if some point fails, repair the *last* affine layer with the LP (new weights and bias of that
   layer, nothing before it changes), falling back to the layer before it when the LP is infeasible
   (``max_layers``); the LP's objective keeps the change as small as it can, so the stage's gains
   elsewhere are kept;
3. certify the polished network again, with the same independent check.

It works on any network whose polished layers sit in a plain ``nn.Sequential``: a canonical network,
or a DeepPatch :class:`~provrepair.repair.deeppatch.PatchedNet` (its replacement filters are conv
layers before the polished dense layers, and its per-sample switch is decided at the first patched
conv, so neither changes). The LP sees each point's exact input to the polished layer, taken from the
stage's own forward pass (per-sample routing included), in float64.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..errors import InputError

__all__ = ["PolishResult", "polish"]

#: How many of the last affine layers the polish may try, from the last one backwards.
DEFAULT_MAX_LAYERS = 2


@dataclass
class PolishResult:
    """``status``: ``certified`` (every repair point certified after the polish, or already before
    it), or the last LP outcome (``infeasible``, ``not_certified``, ...). ``model``: the polished
    network (the stage's own network when no polish was needed; ``None`` when it failed).
    ``before`` / ``after``: the independent certificates of the stage's and the polished network.
    ``layer``: the affine layer the LP changed (None when nothing was changed)."""

    status: str
    model: nn.Module | None
    before: Any
    after: Any | None
    layer: int | None
    tried: list = field(default_factory=list)
    repair: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    @property
    def certified(self) -> bool:
        return self.status == "certified"

    def to_dict(self) -> dict:
        return {"status": self.status, "certified": self.certified, "layer": self.layer, "tried": self.tried,
                "before": self.before.to_dict() if self.before is not None else None,
                "after": self.after.to_dict() if self.after is not None else None,
                "repair": self.repair, "timings": self.timings}


def _sequential(model: nn.Module) -> tuple[nn.Sequential, int]:
    """The ``nn.Sequential`` holding the layers to polish and the first module index the polish may
    touch (after every DeepPatch replacement filter)."""
    from ..repair.deeppatch import PatchedNet
    if isinstance(model, PatchedNet):
        return model.base, max(model.patched_layers) + 1
    if isinstance(model, nn.Sequential):
        return model, 0
    raise InputError(f"the polish works on a canonical nn.Sequential or a DeepPatch PatchedNet, got "
                     f"{type(model).__name__}")


def _layer_inputs(model: nn.Module, base: nn.Sequential, m: int, x: np.ndarray) -> np.ndarray:
    """Input of module ``m`` of ``base`` for every sample of ``x``, from a float64 copy of ``model``."""
    from ..certify.points import network_copy
    twin = network_copy(model, torch.float64)
    twin_base, _ = _sequential(twin)
    seen: list[torch.Tensor] = []
    hook = twin_base[m].register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    try:
        with torch.no_grad():
            twin(torch.tensor(np.asarray(x), dtype=torch.float64))
    finally:
        hook.remove()
    if len(seen) != 1:
        raise RuntimeError(f"module {m} ran {len(seen)} times in one forward pass; cannot read its inputs")
    return seen[0].cpu().numpy()


def polish(model: nn.Module, spec, *, max_layers: int = DEFAULT_MAX_LAYERS, options=None,
           progress: Callable[[str], None] | None = None) -> PolishResult:
    """Make every point of ``spec`` (a :class:`~provrepair.specs.PointSpec`) hold on ``model``
    provably, by the LP point repair at the last affine layer (then the one before, up to
    ``max_layers``). ``options``: :class:`~provrepair.repair.aprnn.PointRepairOptions`. The input
    model is never modified."""
    from ..api import certify, repair
    from ..models import ModelMeta, affine_layers, get_meta, set_meta
    from .aprnn import PointRepairOptions

    if isinstance(max_layers, bool) or not isinstance(max_layers, int) or max_layers < 1:
        raise InputError(f"max_layers must be a positive integer, got {max_layers!r}")
    say = progress or (lambda msg: None)
    options = options or PointRepairOptions()
    t0 = time.perf_counter()
    base, first = _sequential(model)
    before = certify(model, spec)
    timings = {"certify_before": time.perf_counter() - t0}
    if before.certified:
        timings["total"] = time.perf_counter() - t0
        return PolishResult("certified", model, before, before, None, [], {"message": "no polish needed"}, timings)
    aff = affine_layers(base)
    candidates = [k for k in range(len(aff) - 1, -1, -1) if aff[k] >= first][:max_layers]
    if not candidates:
        raise InputError("the network has no affine layer after its patched convolutions; the LP polish "
                         "needs a dense layer at the end")
    tried, status, last = [], "error", {}
    for k in candidates:
        m = aff[k]
        t1 = time.perf_counter()
        feats = _layer_inputs(model, base, m, spec.inputs)
        suffix = copy.deepcopy(nn.Sequential(*list(base)[m:])).float().eval()
        set_meta(suffix, ModelMeta(format="torch", input_shape=tuple(feats.shape[1:])))
        feat_spec = dataclasses.replace(spec, inputs=feats, source="polish features")
        say(f"polish: LP repair at affine layer {k} on {feats.shape[0]} points")
        result = repair(suffix, feat_spec, layer=0, options=options)
        entry = {"layer": k, "status": result.status, "seconds": time.perf_counter() - t1}
        last = {k2: v for k2, v in result.to_dict().items() if k2 != "certificate"}
        if result.model is None:
            tried.append(entry)
            status = result.status
            continue
        polished = copy.deepcopy(model)
        pbase, _ = _sequential(polished)
        with torch.no_grad():
            for j, module in enumerate(result.model):
                target = pbase[m + j]
                for name, p in module.named_parameters(recurse=False):
                    getattr(target, name).copy_(p.detach().to(getattr(target, name).dtype))
        set_meta(polished, get_meta(model))
        after = certify(polished, spec)
        entry["certified"] = bool(after.certified)
        tried.append(entry)
        if after.certified:
            timings["polish"] = time.perf_counter() - t1
            timings["total"] = time.perf_counter() - t0
            return PolishResult("certified", polished, before, after, k, tried, last, timings)
        status = "not_certified"
    timings["total"] = time.perf_counter() - t0
    return PolishResult(status, None, before, None, None, tried, last, timings)
