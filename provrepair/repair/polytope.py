"""Provable repair of V-polytopes and boxes: shift LPs, then the assert LP (or MILP).

An affine function on a convex set takes its extreme values at the vertices, so if the repaired
network is affine on a polytope, output constraints that hold at its vertices hold everywhere in
it. The network is made affine on each polytope one ReLU layer at a time:

* **shift** (affine layers before the repair layer ``k``): layer ``j`` gets new weights and bias
  so that at every vertex of a polytope each neuron of the following ReLU has the sign it has at
  the polytope's centroid (a vertex that several polytopes share and whose patterns disagree is
  held at zero). That is the point-repair LP on the network cut after that ReLU, with no output
  rows; layers whose pattern is already constant on every polytope need no LP.
* **assert** (layer ``k``): the point-repair LP over all vertices, with every later ReLU held to
  its polytope's centroid pattern and the output property imposed at every vertex. A property
  that needs one of several rows to hold (a disjunction, e.g. ACAS Xu's "COC is not the maximal
  score") picks one row per polytope with a binary, which makes the assert a MILP.

Boxes become their corners. The repairer does not certify: ``provrepair.repair`` hands the result
to the certification engine, which checks every region without trusting these LPs.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import InputError, SpecError, UnsupportedLayerError
from ..models import affine_index_to_module_index, affine_layers
from ..specs.regions import Box, HPolytope, OutputProperty, Region, VPolytope
from .aprnn import PointRepairOptions, repair_points

__all__ = ["PolytopeRepairOptions", "PolytopeRepairOutcome", "repair_polytopes", "region_vertices"]

#: A box with more free inputs than this has too many corners to repair as a V-polytope.
MAX_BOX_CORNERS = 4096


@dataclass
class PolytopeRepairOptions(PointRepairOptions):
    shift_start: int = 0  # first affine layer a shift LP may change; earlier ones must already be affine
    shift_delta_bound: float | None = None  # delta bound of the shift LPs (default: delta_bound)


@dataclass
class PolytopeRepairOutcome:
    status: str  # optimal, infeasible, time_limit, error
    model: nn.Sequential | None
    layer: int
    message: str
    stages: list[dict] = field(default_factory=list)  # per LP: name, layer, status, size, seconds
    delta: dict = field(default_factory=dict)
    solver: dict = field(default_factory=dict)
    vertices: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("model")
        return d


def region_vertices(region: Region, max_corners: int = MAX_BOX_CORNERS) -> np.ndarray:
    """The vertices of a region as an array (k, *input_shape)."""
    if isinstance(region, VPolytope):
        return np.asarray(region.vertices, dtype=np.float64)
    if isinstance(region, Box):
        free = int(np.count_nonzero(region.upper > region.lower))
        if 2 ** free > max_corners:
            raise SpecError(f"a box with {free} free inputs has 2^{free} corners, more than {max_corners}; "
                            "repair smaller boxes, or give V-polytopes")
        return np.asarray(region.corners(max_corners), dtype=np.float64).reshape(-1, *region.input_shape)
    if isinstance(region, HPolytope):
        raise SpecError("H-polytopes cannot be repaired directly (their vertices are not listed); "
                        "give boxes or V-polytopes")
    raise SpecError(f"cannot repair a region of kind {type(region).__name__}")


def _required_rows(prop: OutputProperty):
    """Rows ``A y <= b`` (strict, via the margin) and the groups of which one row must hold.

    Unsafe disjunct ``G y <= h`` is excluded iff some row ``G_r y > h_r`` holds: a single row is a
    plain constraint, several rows form a group (one binary per row)."""
    A, b, groups = [], [], []
    for G, h in prop.disjuncts:
        if G.shape[0] == 0:
            raise SpecError("an unsafe disjunct without rows makes every output unsafe; it cannot be repaired")
        start = len(A)
        A.extend(-G)
        b.extend(-h)
        if G.shape[0] > 1:
            groups.append(np.arange(start, start + G.shape[0]))
    return np.asarray(A), np.asarray(b), groups


def _forward_to(net: nn.Sequential, stop: int, x: np.ndarray) -> np.ndarray:
    """float64 output of modules [0, stop) flattened per input."""
    with torch.no_grad():
        y = copy.deepcopy(net[:stop]).double()(torch.as_tensor(x, dtype=torch.float64)) if stop > 0 \
            else torch.as_tensor(x, dtype=torch.float64)
    return y.reshape(x.shape[0], -1).numpy()


def _patterns(pre_vert: np.ndarray, pre_cent: np.ndarray, owner: np.ndarray, twins: list[np.ndarray]):
    """Each vertex's sign per neuron: its polytope's centroid sign, or 0 where twin vertices of
    polytopes with different signs meet."""
    sign = np.where(pre_cent > 0, 1, -1).astype(np.int8)[owner]
    for group in twins:
        s = sign[group]
        clash = (s != s[0]).any(0)
        if clash.any():
            sign[np.ix_(group, np.flatnonzero(clash))] = 0
    return sign


def _holds(pre: np.ndarray, sign: np.ndarray) -> np.ndarray:
    """Per vertex and neuron: does the pre-activation have the sign it is held to."""
    return np.where(sign > 0, pre >= 0, np.where(sign < 0, pre <= 0, pre == 0))


def repair_polytopes(net: nn.Sequential, regions: Sequence[Region], properties: Sequence[OutputProperty],
                     layer: int, options: PolytopeRepairOptions | None = None,
                     progress: Callable[[str], None] | None = None) -> PolytopeRepairOutcome:
    """Repair ``net`` so that every region satisfies its property; affine ``layer`` is the assert layer.

    The input network is not modified.
    """
    opts = options or PolytopeRepairOptions()
    opts.validate()
    say = progress or (lambda msg: None)
    mods = list(net)
    for i, m in enumerate(mods):
        if isinstance(m, (nn.MaxPool2d,)):
            raise UnsupportedLayerError(
                f"polytope repair needs a network that is affine per ReLU pattern; module {i} is a MaxPool2d. "
                "Repair points instead, or replace MaxPool2d by a strided convolution")
    n_aff = len(affine_layers(net))
    if not -n_aff <= layer < n_aff:
        raise InputError(f"layer {layer} is out of range: the network has {n_aff} affine layers (0..{n_aff - 1})")
    layer = layer % n_aff
    if not 0 <= opts.shift_start <= layer:
        raise InputError(f"shift_start must be in 0..{layer} (the assert layer), got {opts.shift_start}")
    verts = [region_vertices(r) for r in regions]
    V = np.concatenate(verts)
    owner = np.repeat(np.arange(len(verts)), [len(v) for v in verts])
    centroids = np.stack([v.mean(0) for v in verts])
    # identical vertices of different polytopes (e.g. boxes that partition a region)
    _, inverse, counts = np.unique(V.reshape(len(V), -1), axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    twins = [np.flatnonzero(inverse == u) for u in np.flatnonzero(counts > 1)]
    twins = [g for g in twins if len(set(owner[g])) > 1]
    say(f"{len(verts)} regions, {len(V)} vertices ({len(twins)} shared)")

    stages: list[dict] = []
    current = copy.deepcopy(net).eval()
    base = {f.name: getattr(opts, f.name) for f in fields(PointRepairOptions)}
    shift_opts = PointRepairOptions(**{**base, "later_biases": False,
                                       "delta_bound": opts.shift_delta_bound or opts.delta_bound})
    outcome_status, message = "optimal", "repaired"
    for j in range(layer):
        m = affine_index_to_module_index(current, j)
        relu = m + 1
        if relu >= len(mods) or not isinstance(mods[relu], nn.ReLU):
            continue
        pre_v = _forward_to(current, relu, V)
        pre_c = _forward_to(current, relu, centroids)
        sign = _patterns(pre_v, pre_c, owner, twins)
        ok = _holds(pre_v, sign)
        if ok.all():
            stages.append({"stage": "shift", "layer": j, "status": "not needed", "seconds": 0.0})
            continue
        bad_regions = sorted(set(owner[~ok.all(1)].tolist()))
        if j < opts.shift_start:
            raise SpecError(f"the activation pattern after affine layer {j} is not constant on region(s) "
                            f"{bad_regions[:10]}, but shift_start={opts.shift_start} forbids changing that layer; "
                            f"lower shift_start to {j} or below")
        t0 = time.perf_counter()
        cut = nn.Sequential(*list(current)[: relu + 1]).eval()
        n_out = pre_v.shape[1]
        shape = _forward_shape(current, relu, V[:1])
        res = repair_points(cut, V, np.zeros((0, n_out)), np.zeros(0), np.zeros(0, dtype=np.int64), j, shift_opts,
                            patterns={relu: sign.reshape(len(V), *shape)})
        info = {"stage": "shift", "layer": j, "status": res.status, "size": res.lp_size,
                "seconds": time.perf_counter() - t0, "regions_needing_shift": len(bad_regions),
                "delta": res.delta}
        stages.append(info)
        say(f"shift layer {j}: {res.status} ({len(bad_regions)} regions not yet affine) in {info['seconds']:.2f} s")
        if res.status != "optimal":
            culprit = _culprit(cut, V, owner, sign, bad_regions, j, shift_opts, relu) if res.status == "infeasible" \
                else None
            who = f"; region {culprit} alone cannot be made affine there" if culprit is not None else ""
            return PolytopeRepairOutcome(
                status=res.status, model=None, layer=layer, stages=stages, vertices=len(V),
                message=f"shift LP at affine layer {j} is {res.status}{who}: {res.message} "
                        "(try a larger --delta-bound, smaller regions, or an earlier assert layer)")
        current[m] = res.model[m]
    # assert
    k_mod = affine_index_to_module_index(current, layer)
    patterns = {}
    for i in range(k_mod + 1, len(mods)):
        if isinstance(mods[i], nn.ReLU):
            pre_v = _forward_to(current, i, V)
            pre_c = _forward_to(current, i, centroids)
            patterns[i] = _patterns(pre_v, pre_c, owner, twins).reshape(len(V), *_forward_shape(current, i, V[:1]))
    A_rows, b_rows, p_rows, groups = [], [], [], []
    for r, (verts_r, prop) in enumerate(zip(verts, properties)):
        A, b, grp = _required_rows(prop)
        for v in np.flatnonzero(owner == r):
            base = sum(len(a) for a in A_rows)
            A_rows.append(A)
            b_rows.append(b)
            p_rows.append(np.full(len(A), v))
            groups.extend(g + base for g in grp)
    A, b, pidx = np.concatenate(A_rows), np.concatenate(b_rows), np.concatenate(p_rows)
    t0 = time.perf_counter()
    res = repair_points(current, V, A, b, pidx, layer, opts, progress=progress, patterns=patterns,
                        disjunctions=groups or None)
    stages.append({"stage": "assert", "layer": layer, "status": res.status, "size": res.lp_size,
                   "binaries": int(sum(len(g) for g in groups)), "rounds": len(res.rounds),
                   "seconds": time.perf_counter() - t0, "delta": res.delta})
    say(f"assert layer {layer}: {res.status} in {stages[-1]['seconds']:.2f} s")
    if res.status != "optimal":
        outcome_status = res.status
        message = f"assert {'MILP' if groups else 'LP'} at affine layer {layer} is {res.status}: {res.message}"
        return PolytopeRepairOutcome(status=outcome_status, model=None, layer=layer, message=message, stages=stages,
                                     solver=res.solver, vertices=len(V))
    return PolytopeRepairOutcome(status="optimal", model=res.model, layer=layer, message=message, stages=stages,
                                 delta=_total_delta(net, res.model), solver=res.solver, vertices=len(V))


def _forward_shape(net: nn.Sequential, stop: int, x: np.ndarray) -> tuple[int, ...]:
    with torch.no_grad():
        return tuple(net[:stop](torch.as_tensor(x, dtype=torch.float32)).shape[1:])


def _culprit(cut, V, owner, sign, bad_regions, j, opts, relu) -> int | None:
    """The first region whose shift LP is infeasible on its own (at most 20 tried)."""
    shape = _forward_shape(cut, relu, V[:1])
    for r in bad_regions[:20]:
        idx = np.flatnonzero(owner == r)
        res = repair_points(cut, V[idx], np.zeros((0, sign.shape[1])), np.zeros(0), np.zeros(0, dtype=np.int64), j,
                            opts, patterns={relu: sign[idx].reshape(len(idx), *shape)})
        if res.status == "infeasible":
            return int(r)
    return None


def _total_delta(before: nn.Sequential, after: nn.Sequential) -> dict:
    """Norms of the parameter change over the whole network (shift and assert together)."""
    d = np.concatenate([(a.detach().double() - b.detach().double()).reshape(-1).numpy()
                        for a, b in zip(after.parameters(), before.parameters())])
    a = np.abs(d)
    return {"linf": float(a.max(initial=0.0)), "l1": float(a.sum()), "l0": int((a > 1e-9).sum()), "count": int(a.size)}
