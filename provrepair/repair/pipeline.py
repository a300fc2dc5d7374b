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
from typing import Any

import numpy as np
import torch
from torch import nn

from ..certify import certify_points
from ..certify.points import network_copy
from ..errors import InputError
from ..models import ModelMeta, affine_layers, get_meta, set_meta
from ..specs import PointSpec
from .deeppatch import PatchedNet, as_runnable
from .options import PolishOptions, build
from .protocol import CERTIFIED, NOT_CERTIFIED, Progress, RepairResult, say
from .provable import PointRepairer, prepare_points

__all__ = ["PolishRepairer", "polish"]


def _sequential(model: nn.Module) -> tuple[nn.Sequential, int]:
    """The ``nn.Sequential`` holding the layers to polish and the first module index the polish may
    touch (after every DeepPatch replacement filter)."""
    if isinstance(model, PatchedNet):
        return model.base, model.first_unpatched
    if isinstance(model, nn.Sequential):
        return model, 0
    raise InputError(f"the polish works on a canonical nn.Sequential or a DeepPatch PatchedNet, got "
                     f"{type(model).__name__}")


def _layer_inputs(model: nn.Module, base: nn.Sequential, m: int, x: np.ndarray) -> np.ndarray:
    """Input of module ``m`` of ``base`` for every sample of ``x``, from a float64 copy of ``model``."""
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


def _certify(model: nn.Module, spec: PointSpec):
    """The independent point check of ``model`` as the user runs it (a DeepPatch model with its switch)."""
    net = as_runnable(model)
    return certify_points(net, prepare_points(net, spec)[0])


def _copy_parameters(polished: nn.Module, m: int, suffix: nn.Sequential) -> None:
    """Write the repaired suffix's parameters into ``polished`` from its module ``m`` on."""
    pbase, _ = _sequential(polished)
    with torch.no_grad():
        for j, module in enumerate(suffix):
            target = pbase[m + j]
            for name, p in module.named_parameters(recurse=False):
                getattr(target, name).copy_(p.detach().to(getattr(target, name).dtype))


class PolishRepairer:
    """The certified pipelines' second stage (see the module docstring): ``run(model, spec, options)``
    makes every point of ``spec`` hold on ``model`` provably. The input model is never modified."""

    name = "polish"
    kind = "pipeline"
    Options = PolishOptions

    def run(self, model: nn.Module, target: PointSpec, options: PolishOptions | None = None,
            progress: Progress | None = None) -> RepairResult:
        options = options or PolishOptions()
        m_layers = options.max_layers
        if isinstance(m_layers, bool) or not isinstance(m_layers, int) or m_layers < 1:
            raise InputError(f"max_layers must be a positive integer, got {m_layers!r}")
        t0 = time.perf_counter()
        base, first = _sequential(model)
        before = _certify(model, target)
        timings = {"certify_before": time.perf_counter() - t0}
        result = RepairResult(CERTIFIED, model, method=self.name, certificate=before, before=before,
                              message="no polish needed", timings=timings, options=dataclasses.asdict(options),
                              details={"tried": []})
        if not before.certified:
            aff = affine_layers(base)
            candidates = [k for k in range(len(aff) - 1, -1, -1) if aff[k] >= first][:m_layers]
            if not candidates:
                raise InputError("the network has no affine layer after its patched convolutions; the LP polish "
                                 "needs a dense layer at the end")
            self._polish(model, base, aff, candidates, target, options, result, progress)
        timings["total"] = time.perf_counter() - t0
        return result

    def _polish(self, model: nn.Module, base: nn.Sequential, aff: list[int], candidates: list[int],
                spec: PointSpec, options: PolishOptions, result: RepairResult, progress: Progress | None) -> None:
        """Try the candidate layers, last first; fill ``result`` with the first certified polish (or
        with the last failure)."""
        result.status, result.model, result.certificate, result.message = "error", None, None, ""
        for k in candidates:
            m = aff[k]
            t1 = time.perf_counter()
            feats = _layer_inputs(model, base, m, spec.inputs)
            suffix = copy.deepcopy(nn.Sequential(*list(base)[m:])).float().eval()
            set_meta(suffix, ModelMeta(format="torch", input_shape=tuple(feats.shape[1:])))
            feat_spec = dataclasses.replace(spec, inputs=feats, source="polish features")
            say(progress)(f"polish: LP repair at affine layer {k} on {feats.shape[0]} points")
            lp = PointRepairer().run(suffix, feat_spec, build(PointRepairer.Options, _point_options(options), layer=0))
            entry = {"layer": k, "status": lp.status, "seconds": time.perf_counter() - t1}
            result.details["tried"].append(entry)
            result.details["repair"] = {k2: v for k2, v in lp.to_dict().items() if k2 != "certificate"}
            result.status, result.message = lp.status, lp.message
            if lp.model is None:
                continue
            polished = copy.deepcopy(model)
            _copy_parameters(polished, m, lp.model)
            set_meta(polished, get_meta(model))
            after = _certify(polished, spec)
            entry["certified"] = bool(after.certified)
            if after.certified:
                result.timings["polish"] = time.perf_counter() - t1
                result.status, result.model, result.certificate, result.layer = CERTIFIED, polished, after, k
                result.lp, result.solver, result.delta = lp.lp, lp.solver, lp.delta
                return
            result.status = NOT_CERTIFIED


def _point_options(options: PolishOptions):
    """The point-repair part of the polish options."""
    names = {f.name for f in dataclasses.fields(PointRepairer.Options)}
    return PointRepairer.Options(**{n: getattr(options, n) for n in names})


def polish(model: nn.Module, spec: PointSpec, *, max_layers: int = PolishOptions.max_layers, options: Any = None,
           progress: Progress | None = None) -> RepairResult:
    """:class:`PolishRepairer` with the point LP's ``options`` (a ``PointRepairOptions``) and ``max_layers``."""
    given = {} if options is None else {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
    opts = build(PolishOptions, **{**given, "max_layers": max_layers})
    return PolishRepairer().run(model, spec, opts, progress)
