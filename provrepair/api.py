"""The Python API: load, repair, certify.

``repair`` runs a repairer and then certifies its output with ``provrepair.certify``, which
shares no code with the repairer; a result is called certified only when that check passes.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from .certify import PointCertificate, certify_points
from .certify.regions import RegionCertificate, certify_regions
from .errors import InputError
from .models import affine_layers, get_meta, load_model, normalize_model, num_outputs, set_meta
from .repair.aprnn import PointRepairOptions, repair_points
from .repair.deeppatch import PatchedNet, StatisticalRepairResult, deeppatch, load_patched
from .repair.metarepair import MetaRepairResult, metarepair
from .repair.polytope import PolytopeRepairOptions, repair_polytopes
from .specs import PointSpec, RegionSpec

# Outcome names, also used as CLI exit-code keys.
CERTIFIED = "certified"
NOT_CERTIFIED = "not_certified"
INFEASIBLE = "infeasible"
TIME_LIMIT = "time_limit"
ERROR = "error"


@dataclass
class RepairResult:
    status: str
    model: nn.Sequential | None
    certificate: PointCertificate | RegionCertificate | None
    layer: int
    message: str
    lp: dict = field(default_factory=dict)  # size of the final LP, the full LP, rounds
    solver: dict = field(default_factory=dict)  # name, version, status, options, objective
    timings: dict = field(default_factory=dict)  # seconds: build, solve, check, certify, total
    delta: dict = field(default_factory=dict)  # norms of the parameter change
    options: dict = field(default_factory=dict)
    layer_selection: dict | None = None  # with layer="auto": heuristic, ranking, layers tried

    @property
    def certified(self) -> bool:
        return self.status == CERTIFIED

    def to_dict(self) -> dict:
        return {"status": self.status, "certified": self.certified, "layer": self.layer, "message": self.message,
                "certificate": self.certificate.to_dict() if self.certificate else None, "lp": self.lp,
                "solver": self.solver, "timings": self.timings, "delta": self.delta, "options": self.options,
                "layer_selection": self.layer_selection}


def _as_network(model) -> nn.Sequential:
    if isinstance(model, (str, os.PathLike)):
        return load_model(model)
    if isinstance(model, nn.Module):
        if isinstance(model, nn.Sequential) and getattr(model, "provrepair_meta", None) is not None:
            return model
        return normalize_model(model)
    raise InputError(f"expected a model path or a torch.nn.Module, got {type(model).__name__}")


def _prepare(net: nn.Sequential, spec: PointSpec) -> tuple[PointSpec, int]:
    """The spec reshaped to the model's input and validated against it, and the output count."""
    shape = get_meta(net).input_shape or tuple(spec.inputs.shape[1:])
    n_out = num_outputs(net, tuple(shape))
    return spec.validate(tuple(shape), n_out), n_out


def certify(model, spec: PointSpec | RegionSpec, *, margin: float = 0.0, method: str = "auto",
            timeout: float | None = None, solver: str = "highs", threads: int | None = None, device=None,
            progress: Callable[[str], None] | None = None) -> PointCertificate | RegionCertificate:
    """Certify ``model`` on ``spec``.

    Points are checked exactly (float64 and float32; ``margin`` applies), also for a DeepPatch
    model (its per-sample switch is part of its forward pass). Regions (boxes,
    polytopes, VNN-LIB properties) get a verdict each: certified, violated with a re-validated
    counterexample, or unknown with the reason; ``method`` is ibp, crown, milp or auto (the cheapest
    that decides) and ``timeout`` the complete check's budget per region in seconds.
    """
    net = model if isinstance(model, PatchedNet) else _as_network(model)
    if isinstance(spec, RegionSpec):
        if isinstance(net, PatchedNet):
            raise InputError("a DeepPatch model switches filters per sample, which bound propagation cannot "
                             "model; certify it on points (--points)")
        shape = get_meta(net).input_shape or spec.input_shape
        n_out = num_outputs(net, tuple(shape))
        spec = spec.validate(tuple(shape), n_out)
        return certify_regions(net, spec, method=method, timeout=timeout, solver=solver, threads=threads,
                               device=_device(device), progress=progress)
    if not isinstance(spec, PointSpec):
        raise InputError(f"expected a PointSpec or a RegionSpec, got {type(spec).__name__}")
    spec, _ = _prepare(net, spec)
    return certify_points(net, spec, margin=margin)


def _device(device):
    """``auto`` is the GPU when one is present; None is the CPU."""
    if device in (None, "cpu"):
        return None
    import torch
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else None
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {device!r} was asked for but no CUDA GPU is available; use --device cpu or auto")
    return device


def repair(model, spec: PointSpec | RegionSpec, *, layer: int | str, options: PointRepairOptions | None = None,
           progress: Callable[[str], None] | None = None, heuristic: str | None = None,
           **option_kw) -> RepairResult:
    """Repair ``model`` at affine ``layer`` so every point of ``spec`` meets its output spec.

    ``layer="auto"`` ranks the candidate layers with ``heuristic`` (default: the one the
    layer-selection benchmark found best) and tries them in order until one certifies.
    Keyword options fill ``PointRepairOptions`` (delta_bound, margin, objective, solver, ...).
    Regions take ``keep=PointSpec``: points whose outputs the repair must keep (locality).
    The input model is never modified.
    """
    if isinstance(spec, RegionSpec):
        return _repair_regions(model, spec, layer=layer, options=options, progress=progress, **option_kw)
    if option_kw.get("keep") is not None:
        raise InputError("keep applies to region repair; for points, add the points to keep to the spec itself")
    option_kw.pop("keep", None)
    if options is None:
        options = PointRepairOptions(**option_kw)
    elif option_kw:
        options = dataclasses.replace(options, **option_kw)
    net = _as_network(model)
    spec, n_out = _prepare(net, spec)
    if layer != "auto":
        if not isinstance(layer, int):
            raise InputError(f"layer must be an affine layer index or 'auto', got {layer!r}")
        return _repair_at(net, spec, n_out, layer, options, progress)
    from heuristics.select import DEFAULT_HEURISTIC, rank_layers
    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    heuristic = heuristic or DEFAULT_HEURISTIC
    ranking = rank_layers(net, spec, heuristic=heuristic)
    say(f"layer auto ({heuristic}): trying layers {ranking} in this order")
    tried = []
    result = None
    for k in ranking:
        result = _repair_at(net, spec, n_out, k, options, progress)
        tried.append({"layer": k, "status": result.status, "seconds": result.timings["total"]})
        if result.certified:
            break
        say(f"layer {k}: {result.status}; falling back to the next candidate")
    result.layer_selection = {"heuristic": heuristic, "ranking": ranking, "tried": tried,
                              "chosen": result.layer if result.certified else None,
                              "seconds": time.perf_counter() - t0}
    result.timings["total"] = time.perf_counter() - t0
    return result


def _repair_regions(model, spec: RegionSpec, *, layer: int | str, options: PolytopeRepairOptions | None,
                    progress, certify_method: str = "auto", certify_timeout: float | None = None,
                    keep: PointSpec | None = None, **option_kw) -> RepairResult:
    """Polytope/box repair, then certification of every region by the certification engine.

    ``layer="auto"`` tries the affine layers from the last one back and keeps the first whose
    repair certifies (a later layer needs more shift LPs but changes less of the network).
    ``keep``: points (e.g. correctly classified training images with their labels) whose output
    spec the assert LP must keep; ``result.lp["kept"]`` says how many still pass afterwards."""
    if options is None:
        options = PolytopeRepairOptions(**option_kw)
    elif option_kw:
        options = dataclasses.replace(options, **option_kw)
    net = _as_network(model)
    shape = get_meta(net).input_shape or spec.input_shape
    spec = spec.validate(tuple(shape), num_outputs(net, tuple(shape)))
    keep_rows = None
    if keep is not None:
        if not isinstance(keep, PointSpec):
            raise InputError(f"keep must be a PointSpec (points with labels or output rows), got {type(keep).__name__}")
        keep, _ = _prepare(net, keep)
        keep_rows = (keep.inputs, *keep.output_constraints(num_outputs(net, tuple(shape))))
    n_aff = len(affine_layers(net))
    if layer == "auto":  # an interval hull exists at the last layer only
        ranking = [n_aff - 1] if options.hull == "interval" else list(range(n_aff - 1, -1, -1))
    elif isinstance(layer, int) and not isinstance(layer, bool):
        ranking = [layer]
    else:
        raise InputError(f"layer must be an affine layer index or 'auto', got {layer!r}")
    t_start = time.perf_counter()
    tried, result = [], None
    for k in ranking:
        t0 = time.perf_counter()
        out = repair_polytopes(net, spec.regions, spec.properties, k, options, progress=progress, keep=keep_rows)
        t_repair = time.perf_counter() - t0
        certificate = None
        t_cert = 0.0
        if out.model is not None:
            set_meta(out.model, get_meta(net))
            t1 = time.perf_counter()
            certificate = certify_regions(out.model, spec, method=certify_method, timeout=certify_timeout,
                                          solver=options.solver, threads=options.threads)
            t_cert = time.perf_counter() - t1
            c = certificate.counts
            status = CERTIFIED if certificate.certified else NOT_CERTIFIED
            message = ("every region is certified by the certification engine" if certificate.certified else
                       f"the repair did not certify: {c['violated']} regions violated, {c['unknown']} unknown "
                       "(try a larger --margin)")
        else:
            status = {"infeasible": INFEASIBLE, "time_limit": TIME_LIMIT}.get(out.status, ERROR)
            message = out.message
        size = {s["stage"] + str(s["layer"]): s.get("size") for s in out.stages if s.get("size")}
        lp = {"stages": out.stages, "final": size, "vertices": out.vertices, "generators": out.generators,
              "disjunctions": out.disjunctions}
        if keep is not None and out.model is not None:
            kept = certify_points(out.model, keep)
            lp["kept"] = {"points": kept.n_points, "passed": kept.n_passed}
        result = RepairResult(status=status, model=out.model, certificate=certificate, layer=out.layer,
                              message=message, lp=lp,
                              solver=out.solver, timings={"repair": t_repair, "certify": t_cert,
                                                          "total": time.perf_counter() - t0},
                              delta=out.delta, options=dataclasses.asdict(options))
        tried.append({"layer": k, "status": status, "seconds": result.timings["total"]})
        if result.certified:
            break
    if layer == "auto":
        result.layer_selection = {"heuristic": "last-first", "ranking": ranking, "tried": tried,
                                  "chosen": result.layer if result.certified else None,
                                  "seconds": time.perf_counter() - t_start}
        result.timings["total"] = time.perf_counter() - t_start
    return result


def _repair_at(net: nn.Sequential, spec: PointSpec, n_out: int, layer: int, options: PointRepairOptions,
               progress) -> RepairResult:
    t0 = time.perf_counter()
    A, b, point_index = spec.output_constraints(n_out)
    outcome = repair_points(net, spec.inputs, A, b, point_index, layer, options, progress=progress)
    certificate = None
    t_cert = 0.0
    if outcome.model is not None:
        set_meta(outcome.model, get_meta(net))
        t1 = time.perf_counter()
        certificate = certify_points(outcome.model, spec)
        t_cert = time.perf_counter() - t1
        status = CERTIFIED if certificate.certified else NOT_CERTIFIED
        message = ("every repair point is certified" if certificate.certified else
                   f"the LP repair did not certify: {certificate.n_points - certificate.n_passed} points fail the "
                   "independent check (try a larger --margin)")
    else:
        status = {"infeasible": INFEASIBLE, "time_limit": TIME_LIMIT}.get(outcome.status, ERROR)
        message = outcome.message
    timings = {"build": outcome.build_time, "solve": outcome.solve_time, "check": outcome.check_time,
               "certify": t_cert, "total": time.perf_counter() - t0}
    lp = {"final": outcome.lp_size, "full": outcome.full_lp_size, "rounds": outcome.rounds}
    solver = dict(outcome.solver, objective=outcome.objective)
    return RepairResult(status=status, model=outcome.model, certificate=certificate, layer=outcome.layer,
                        message=message, lp=lp, solver=solver, timings=timings, delta=outcome.delta,
                        options=dataclasses.asdict(options))
