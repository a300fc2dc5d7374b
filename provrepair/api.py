"""The Python API: load, repair, certify.

``repair`` runs the provable repairer that fits the spec (points or regions) through the repairer
protocol; each certifies its output with ``provrepair.certify``, which shares no code with the
repairer, so a result is called certified only when that check passes.
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from .certify import PointCertificate, RegionCertificate, certify_points, certify_regions
from .errors import InputError
from .models import front_of, load_model, refuse_regions, unfreeze
from .repair.deeppatch import PatchedNet, as_runnable, deeppatch, load_patched
from .repair.metarepair import metarepair
from .repair.options import build
from .repair.pipeline import polish
from .repair.protocol import CERTIFIED, ERROR, INFEASIBLE, NOT_CERTIFIED, TIME_LIMIT, Progress, RepairResult
from .repair.provable import prepare_points, prepare_regions
from .repair.registry import get_repairer
from .repair.training import resolve_device
from .specs import PointSpec, RegionSpec

__all__ = ["repair", "certify", "deeppatch", "metarepair", "polish", "load_patched", "RepairResult", "CERTIFIED",
           "NOT_CERTIFIED", "INFEASIBLE", "TIME_LIMIT", "ERROR"]


def certify(model: Any, spec: PointSpec | RegionSpec, *, margin: float = 0.0, method: str = "auto",
            timeout: float | None = None, solver: str = "highs", threads: int | None = None, device: Any = None,
            progress: Progress | None = None) -> PointCertificate | RegionCertificate:
    """Certify ``model`` on ``spec``.

    Points are checked exactly (float64 and float32; ``margin`` applies), also for a DeepPatch
    model (its per-sample switch is part of its forward pass). Regions (boxes,
    polytopes, VNN-LIB properties) get a verdict each: certified, violated with a re-validated
    counterexample, or unknown with the reason; a model with a frozen front that is not piecewise
    linear (GELU, LayerNorm, attention, ONNX) is refused for regions (``UnsupportedLayerError``),
    never certified; ``method`` is ibp, crown, milp or auto (the cheapest
    that decides) and ``timeout`` the complete check's budget per region in seconds. ``device``:
    None/cpu, cuda or auto (the GPU when there is one) for the bound propagation.
    """
    net = as_runnable(model)
    if isinstance(spec, RegionSpec):
        if isinstance(net, PatchedNet):
            raise InputError("a DeepPatch model switches filters per sample, which bound propagation cannot "
                             "model; certify it on points (--points)")
        assert isinstance(net, nn.Sequential)  # as_runnable: any model but a PatchedNet is the canonical network
        # a front the bound engine cannot bound is refused (UnsupportedLayerError, exit 2); a
        # piecewise-linear front is certified through, spliced back into the network
        refuse_regions(net, "certify input regions")
        net = unfreeze(net)
        spec, _ = prepare_regions(net, spec)
        dev = None if device in (None, "cpu") else resolve_device(device)
        return certify_regions(net, spec, method=method, timeout=timeout, solver=solver, threads=threads,
                               device=None if dev is None or dev.type == "cpu" else dev, progress=progress)
    if not isinstance(spec, PointSpec):
        raise InputError(f"expected a PointSpec or a RegionSpec, got {type(spec).__name__}")
    spec, _ = prepare_points(net, spec)
    return certify_points(net, spec, margin=margin)


def _refuse_region_front(model: Any) -> Any:
    """The model (loaded when given as a path); refused when it has a frozen front: region repair
    numbers and shifts the layers of the whole network and certifies with bound propagation."""
    if isinstance(model, (str, os.PathLike)):
        model = load_model(model)
    front = front_of(model) if isinstance(model, nn.Module) else None
    if front is not None:
        refuse_regions(model, "repair input regions")
        raise InputError(f"region repair counts and shifts the layers of the whole network, but this one has a "
                         f"{front.where()}; load the model without cut= (its front is piecewise linear) to repair regions")
    return model


def repair(model: Any, spec: PointSpec | RegionSpec, *, layer: int | str, options: Any = None,
           progress: Progress | None = None, **option_kw: Any) -> RepairResult:
    """Repair ``model`` at affine ``layer`` so every point (or region) of ``spec`` meets its output spec.

    ``layer="auto"`` ranks the candidate layers (points: with ``heuristic``, default the one the
    layer-selection benchmark found best; regions: from the last layer back) and tries them in order
    until one certifies. Keyword options fill ``PointRepairOptions`` / ``PolytopeRepairOptions``
    (delta_bound, margin, objective, solver, ...; ``keep=PointSpec``: points whose outputs the
    repair must keep, and for points ``keep_from="mnist:train:2000"``). The input model is never modified.
    """
    if isinstance(spec, RegionSpec):
        model = _refuse_region_front(model)
        repairer = get_repairer("polytope")
    elif isinstance(spec, PointSpec):
        repairer = get_repairer("aprnn")
    else:
        raise InputError(f"expected a PointSpec or a RegionSpec, got {type(spec).__name__}")
    if option_kw.get("heuristic") is None:
        option_kw.pop("heuristic", None)
    return repairer.run(model, spec, build(repairer.Options, options, layer=layer, **option_kw), progress)
