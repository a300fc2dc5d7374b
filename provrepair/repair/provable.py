"""The provable repairers behind the protocol: points (``aprnn``) and regions (``polytope``).

Each runs its LP repairer and then certifies the output with :mod:`provrepair.certify`, which
shares no code with the LP: a result is called certified only when that check passes. With
``layer="auto"`` the candidate layers are tried in order until one certifies.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable

from torch import nn

from provrepair.heuristics import select
from provrepair.heuristics.select import (
    DEFAULT_BUDGET_SECONDS,
    DEFAULT_HEURISTIC,
    PREDICTORS,
    attempt_seconds,
    candidate_layers,
    candidate_plan,
    pick_rows,
)

from ..certify import certify_points, certify_regions
from ..errors import InputError
from ..models import affine_layers, get_meta, load_model, normalize_model, num_outputs, refuse_regions, set_meta
from ..specs import PointSpec, RegionSpec
from .aprnn import repair_points
from .keep import KeepSet, keep_from_dataset, keep_summary, lazy_repair_points, repair_keeping, resolve_keep
from .options import PointRepairOptions, PolytopeRepairOptions
from .polytope import repair_polytopes
from .protocol import CERTIFIED, ERROR, INFEASIBLE, NOT_CERTIFIED, TIME_LIMIT, Progress, RepairResult, say

__all__ = ["PointRepairer", "RegionRepairer", "as_network", "prepare_points", "prepare_regions"]

_LP_STATUS = {"infeasible": INFEASIBLE, "time_limit": TIME_LIMIT}


def as_network(model: Any) -> nn.Sequential:
    """A model path or module as the canonical ``nn.Sequential`` (a canonical one is used as it is)."""
    if isinstance(model, (str, os.PathLike)):
        return load_model(model)
    if isinstance(model, nn.Module):
        if isinstance(model, nn.Sequential) and getattr(model, "provrepair_meta", None) is not None:
            return model
        return normalize_model(model)
    raise InputError(f"expected a model path or a torch.nn.Module, got {type(model).__name__}")


def prepare_points(net: nn.Module, spec: PointSpec) -> tuple[PointSpec, int]:
    """The spec reshaped to the model's input and validated against it, and the output count."""
    if not isinstance(spec, PointSpec):
        raise InputError(f"expected a PointSpec, got {type(spec).__name__}")
    shape = get_meta(net).input_shape or tuple(spec.inputs.shape[1:])
    n_out = num_outputs(net, tuple(shape))
    return spec.validate(tuple(shape), n_out), n_out


def prepare_regions(net: nn.Module, spec: RegionSpec) -> tuple[RegionSpec, int]:
    """The region spec validated against the model's input shape and output count."""
    shape = tuple(get_meta(net).input_shape or spec.input_shape)
    n_out = num_outputs(net, shape)
    return spec.validate(shape, n_out), n_out


def _check_layer(layer: Any) -> None:
    if layer != "auto" and (isinstance(layer, bool) or not isinstance(layer, int)):
        raise InputError(f"layer must be an affine layer index or 'auto', got {layer!r}")


def _record(options: Any) -> dict:
    """The options as JSON-able values (a keep-set is data, recorded by its size)."""
    out = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
    if out.get("keep") is not None:
        out["keep"] = f"{out['keep'].n_points} points"
    return out


def _rows_of(net: nn.Sequential, spec: PointSpec, k: int, plan: dict, options: PointRepairOptions
             ) -> PointRepairOptions:
    """``options`` with the row subset that ``plan`` gives layer ``k`` (none: the layer whole, or the
    caller's own rows)."""
    rows = plan.get(k, {}).get("rows")
    if rows is None or options.selected_rows() is not None:
        return options
    return dataclasses.replace(options, rows=",".join(map(str, pick_rows(net, spec, k, rows))))


def _try_layers(ranking: list[int], attempt: Callable[..., RepairResult], selection: dict,
                progress: Progress | None, t0: float, retry: float | None = None) -> RepairResult:
    """``attempt`` each layer in order until one certifies (layer auto), and record
    what was tried in ``result.layer_selection`` (``t0``: when the choice began). With ``retry`` (the
    budget, seconds) the first pass is ``attempt(k, first=True)`` (a capped time) and the layers that
    ran out of it are tried again, in order, while the budget lasts."""
    tried: list[dict] = []

    def run(layers: list[int], **kw: bool) -> RepairResult | None:
        result = None
        for k in layers:
            result = attempt(k, **kw)
            tried.append({"layer": k, "status": result.status, "seconds": result.timings["total"]})
            if result.certified:
                break
            say(progress)(f"layer {k}: {result.status}; falling back to the next candidate")
        return result

    result = run(ranking) if retry is None else run(ranking, first=True)
    if retry is not None and result is not None and not result.certified and time.perf_counter() - t0 < retry - 1.0:
        # the second pass: the layers that ran out of their first slice, with what is left
        result = run([t["layer"] for t in tried if t["status"] == TIME_LIMIT], first=False) or result
    assert result is not None
    result.layer_selection = {**selection, "ranking": ranking, "tried": tried,
                              "chosen": result.layer if result.certified else None,
                              "seconds": time.perf_counter() - t0}
    result.timings["total"] = time.perf_counter() - t0
    return result


class PointRepairer:
    """APRNN point repair: the LP at one affine layer, then the exact point check."""

    name = "aprnn"
    kind = "provable"
    Options = PointRepairOptions

    def run(self, model: Any, target: PointSpec, options: PointRepairOptions | None = None,
            progress: Progress | None = None) -> RepairResult:
        options = options or PointRepairOptions()
        options.validate()
        _check_layer(options.layer)
        net = as_network(model)
        spec, n_out = prepare_points(net, target)
        keep = resolve_keep(net, options, spec, n_out)
        if options.objective == "outputs" and keep is None:
            raise InputError("objective outputs minimises the output change at keep points: give a keep-set "
                             "(keep=, --keep FILE or --keep-from DATASET:SPLIT:N)")
        if keep is not None:
            say(progress)(f"keep-set: {keep.n_points} points ({keep.source})"
                          + (f"; {keep.dropped} the model already gets wrong are left out" if keep.dropped else ""))
        if options.layer != "auto":
            return self._at(net, spec, n_out, options.layer, options, progress, keep)
        t0 = time.perf_counter()
        heuristic = options.heuristic or DEFAULT_HEURISTIC
        # candidates: the layers predicted to finish within the time limit, whole or with a row subset
        plan = {c["layer"]: c for c in candidate_plan(net, spec, time_limit=options.time_limit)}
        if not plan:
            candidate_layers(net, spec, time_limit=options.time_limit)  # raises, saying what to do
        selection = {"heuristic": heuristic, "plan": list(plan.values())}
        ranking = self._rank(net, spec, n_out, plan, options, keep, selection)
        say(progress)(f"layer auto ({selection.get('ranked_by', heuristic)}): trying layers {ranking} in this order")

        budget = DEFAULT_BUDGET_SECONDS if options.time_limit is None else options.time_limit

        def attempt(k: int, first: bool = False) -> RepairResult:
            # the budget covers every layer tried, so a slow first choice cannot run unbounded; on the
            # first pass a layer gets a few times its predicted seconds, so a mispredicted one cannot
            # eat the budget of the others
            left = max(1.0, budget - (time.perf_counter() - t0))
            limit = min(left, attempt_seconds(plan[k]["seconds"])) if first and k in plan else left
            opts = dataclasses.replace(options, time_limit=limit)
            sub = _rows_of(net, spec, k, plan, opts)
            if sub is not opts:
                say(progress)(f"layer {k}: too slow whole; repairing {plan[k]['rows']} of its rows")
            return self._at(net, spec, n_out, k, sub, progress, keep)

        return _try_layers(ranking, attempt, selection, progress, t0, retry=budget)

    def _rank(self, net: nn.Sequential, spec: PointSpec, n_out: int, plan: dict, options: PointRepairOptions,
              keep: KeepSet | None, selection: dict) -> list[int]:
        """The candidates of ``plan``, best first, by ``selection["heuristic"]``; the probe's
        predictions (or its fallback) go into ``selection``."""
        if selection["heuristic"] not in PREDICTORS:
            return select.rank_layers(net, spec, heuristic=selection["heuristic"], candidates=sorted(plan))

        def probe(k: int, rows: Any, idx: Any, limit: float) -> nn.Module | None:
            opts = _rows_of(net, spec, k, plan, dataclasses.replace(options, time_limit=limit))
            res = self._at(net, spec.subset(idx), n_out, k, opts, None, keep)
            return res.model if res.certified else None

        ranking, info = select.rank_by_prediction(net, spec, list(plan.values()), heuristic=selection["heuristic"],
                                                  probe_fn=probe, input_shape=get_meta(net).input_shape)
        selection.update(info)
        return ranking

    def _at(self, net: nn.Sequential, spec: PointSpec, n_out: int, layer: int, options: PointRepairOptions,
            progress: Progress | None, keep: KeepSet | None = None) -> RepairResult:
        t0 = time.perf_counter()
        A, b, point_index = spec.output_constraints(n_out)
        kept = None
        if keep is None and not lazy_repair_points(spec.n_points):
            outcome = repair_points(net, spec.inputs, A, b, point_index, layer, options, progress=progress)
        else:
            outcome, kept = repair_keeping(net, spec.inputs, A, b, point_index, layer, options, keep, progress)
        certificate, t_cert = None, 0.0
        if outcome.model is not None:
            set_meta(outcome.model, get_meta(net))
            t1 = time.perf_counter()
            certificate = certify_points(outcome.model, spec)
            t_cert = time.perf_counter() - t1
            status = CERTIFIED if certificate.certified else NOT_CERTIFIED
            failing = [f"{k} point(s) fail the {check}" for k, check in (
                (certificate.n_points - certificate.n_passed, f"float64 check (slack > {certificate.margin:g})"),
                (len(certificate.float32_failed), "float32 check (the model as run, in batches and one at a time)"),
            ) if k]
            message = ("every repair point is certified" if certificate.certified else
                       f"the independent check did not certify the LP repair: {' and '.join(failing)}; "
                       "try a larger --margin")
        else:
            status, message = _LP_STATUS.get(outcome.status, ERROR), outcome.message
        timings = {"build": outcome.build_time, "solve": outcome.solve_time, "check": outcome.check_time,
                   "certify": t_cert, "total": time.perf_counter() - t0}
        lp = {"final": outcome.lp_size, "full": outcome.full_lp_size, "rounds": outcome.rounds}
        if kept is not None:
            lp["repair_points_in_lp"] = kept.repair_points_in_lp
        if kept is not None and keep is not None:
            lp["keep"] = kept.to_dict()
            if outcome.model is not None:
                message += f"; {keep_summary(kept)}"
        return RepairResult(status, outcome.model, method=self.name, message=message, certificate=certificate,
                            layer=outcome.layer, lp=lp, solver=dict(outcome.solver, objective=outcome.objective),
                            timings=timings, delta=outcome.delta, options=_record(options))


class RegionRepairer:
    """Polytope/box repair (shift LPs, then the assert), then the certification engine on every region.

    ``layer="auto"`` tries the affine layers from the last one back and keeps the first whose repair
    certifies (a later layer needs more shift LPs but changes less of the network). ``keep``: points
    whose output spec the assert LP must keep; ``result.lp["kept"]`` says how many still pass."""

    name = "polytope"
    kind = "provable"
    Options = PolytopeRepairOptions

    def run(self, model: Any, target: RegionSpec, options: PolytopeRepairOptions | None = None,
            progress: Progress | None = None) -> RepairResult:
        options = options or PolytopeRepairOptions()
        options.validate()
        _check_layer(options.layer)
        if options.heuristic is not None:
            raise InputError("a heuristic ranks layers for point repair; for regions, layer auto tries the "
                             "layers from the last one back")
        if options.objective == "outputs":
            raise InputError("objective outputs applies to point repair with a keep-set; for regions use "
                             "linf+l1, l1 or linf")
        net = as_network(model)
        # regions are certified by bound propagation: a front it cannot bound is refused here, not after the LPs
        refuse_regions(net, "repair input regions")
        spec, n_out = prepare_regions(net, target)
        keep = self._keep(net, options, n_out)
        n_aff = len(affine_layers(net))
        if options.layer != "auto":
            return self._at(net, spec, keep, options.layer, options, progress)
        # an interval hull exists at the last layer only
        ranking = [n_aff - 1] if options.hull == "interval" else list(range(n_aff - 1, -1, -1))
        return _try_layers(ranking, lambda k: self._at(net, spec, keep, k, options, progress),
                           {"heuristic": "last-first"}, progress, time.perf_counter())

    @staticmethod
    def _keep(net: nn.Sequential, options: PolytopeRepairOptions, n_out: int) -> tuple | None:
        keep = options.keep
        if options.keep_from:
            if keep is not None:
                raise InputError("give the points to keep once: keep and keep_from were both given")
            keep = keep_from_dataset(net, options.keep_from)
        if keep is None:
            return None
        if not isinstance(keep, PointSpec):
            raise InputError(f"keep must be a PointSpec (points with labels or output rows), got {type(keep).__name__}")
        keep, _ = prepare_points(net, keep)
        return keep, (keep.inputs, *keep.output_constraints(n_out))

    def _at(self, net: nn.Sequential, spec: RegionSpec, keep: tuple | None, layer: int,
            options: PolytopeRepairOptions, progress: Progress | None) -> RepairResult:
        t0 = time.perf_counter()
        out = repair_polytopes(net, spec.regions, spec.properties, layer, options, progress=progress,
                               keep=keep[1] if keep else None)
        t_repair = time.perf_counter() - t0
        certificate, t_cert = None, 0.0
        if out.model is not None:
            set_meta(out.model, get_meta(net))
        if out.model is not None and options.certify_method == "none":  # the caller certifies it
            status, message = NOT_CERTIFIED, ("the LP is solved; not certified here (certify_method='none': "
                                              "certify the repaired model yourself)")
        elif out.model is not None:
            t1 = time.perf_counter()
            certificate = certify_regions(out.model, spec, method=options.certify_method,
                                          timeout=options.certify_timeout, solver=options.solver,
                                          threads=options.threads)
            t_cert = time.perf_counter() - t1
            c = certificate.counts
            status = CERTIFIED if certificate.certified else NOT_CERTIFIED
            message = ("every region is certified by the certification engine" if certificate.certified else
                       f"the repair did not certify: {c['violated']} regions violated, {c['unknown']} unknown "
                       "(try a larger --margin)")
        else:
            status, message = _LP_STATUS.get(out.status, ERROR), out.message
        size = {s["stage"] + str(s["layer"]): s.get("size") for s in out.stages if s.get("size")}
        lp = {"stages": out.stages, "final": size, "vertices": out.vertices, "generators": out.generators,
              "disjunctions": out.disjunctions}
        if keep is not None and out.model is not None:
            kept = certify_points(out.model, keep[0])
            lp["kept"] = {"points": kept.n_points, "passed": kept.n_passed}
        return RepairResult(status, out.model, method=self.name, message=message, certificate=certificate,
                            layer=out.layer, lp=lp, solver=out.solver, delta=out.delta, options=_record(options),
                            timings={"repair": t_repair, "certify": t_cert, "total": time.perf_counter() - t0})
