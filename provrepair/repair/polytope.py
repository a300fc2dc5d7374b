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

A box with a conjunctive property is encoded by its centre and one generator per free input
(``box_encoding="auto"``, from 3 free inputs on): the rows then hold on the whole box through
absolute-value rows (see ``repair.aprnn``), ``2n + 1`` rows per constraint instead of ``2^n``, and
exactly the same optimum as its corners. Other boxes become their corners.

``hull="interval"`` replaces all of this at the last affine layer: each region becomes the box
that CROWN bounds give at that layer's input, and the assert holds on the whole box, so no shift
LP is needed (see ``_repair_interval``). The repairer does not
certify: ``provrepair.repair`` hands the result to the certification engine, which checks every
region without trusting these LPs.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..certify.bounds import BoundPropagator, InputSet
from ..errors import InputError, SpecError, UnsupportedLayerError
from ..models import affine_index_to_module_index, affine_layers
from ..specs.regions import Box, HPolytope, OutputProperty, Region, VPolytope
from .aprnn import delta_norms, repair_points
from .options import PointRepairOptions, PolytopeRepairOptions

__all__ = ["PolytopeRepairOptions", "PolytopeRepairOutcome", "fix_disjuncts", "repair_polytopes", "region_vertices"]

#: A box with more free inputs than this has too many corners to repair as a V-polytope.
MAX_BOX_CORNERS = 4096
#: From this many free inputs on, ``auto`` encodes a box by its generators (2^3 corners > 3 generators).
MIN_GENERATOR_DIMS = 3


@dataclass
class PolytopeRepairOutcome:
    status: str  # optimal, infeasible, time_limit, error
    model: nn.Sequential | None
    layer: int
    message: str
    stages: list[dict] = field(default_factory=list)  # per LP: name, layer, status, size, seconds
    delta: dict = field(default_factory=dict)
    solver: dict = field(default_factory=dict)
    disjunctions: str = "none"  # none (conjunctive properties), fixed (one row chosen per region) or milp
    vertices: int = 0  # LP points: corners of corner-encoded regions plus centres of generator-encoded boxes
    generators: int = 0  # generators of the generator-encoded boxes

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


def _box_generators(box: Box) -> tuple[np.ndarray, np.ndarray]:
    """Centre and generators (one per free input, its half-width along that input) of a box."""
    lo, hi = np.asarray(box.lower, dtype=np.float64), np.asarray(box.upper, dtype=np.float64)
    free = np.flatnonzero((hi > lo).ravel())
    gens = np.zeros((free.size, lo.size))
    gens[np.arange(free.size), free] = (hi - lo).ravel()[free] / 2
    return ((lo + hi) / 2).reshape(box.input_shape), gens.reshape(free.size, *box.input_shape)


def _uses_generators(region: Region, prop: OutputProperty, encoding: str) -> bool:
    if not isinstance(region, Box):
        return False
    free = int(np.count_nonzero(region.upper > region.lower))
    disjunctive = not prop.is_conjunctive
    if encoding == "generators" and disjunctive:
        raise SpecError("a box whose property is a disjunction cannot be encoded by generators (each corner "
                        "may satisfy a different disjunct); use box_encoding='corners' or 'auto'")
    if encoding == "auto":
        return free >= MIN_GENERATOR_DIMS and not disjunctive
    return encoding == "generators" and free > 0


class _Points:
    """The LP points of a repair: the vertices of corner-encoded regions, then the centres of
    generator-encoded boxes (with their generators); ``owner`` is each point's region."""

    def __init__(self, regions, properties, encoding: str):
        corner, centre = [], []
        for r, (region, prop) in enumerate(zip(regions, properties)):
            (centre if _uses_generators(region, prop, encoding) else corner).append(r)
        verts = {r: region_vertices(regions[r]) for r in corner}
        boxes = {r: _box_generators(regions[r]) for r in centre}
        self.x = np.concatenate([verts[r] for r in corner] + [boxes[r][0][None] for r in centre])
        self.owner = np.concatenate([np.repeat(r, len(verts[r])) for r in corner] + [np.array([r]) for r in centre]
                                    ).astype(np.int64)
        self.n_corner = sum(len(v) for v in verts.values())
        self.gens = [None] * self.n_corner + [boxes[r][1] for r in centre]
        self.n_generators = sum(len(boxes[r][1]) for r in centre)
        cent = {**{r: v.mean(0) for r, v in verts.items()}, **{r: b[0] for r, b in boxes.items()}}
        self.centroids = np.stack([cent[r] for r in range(len(regions))])
        # identical vertices of different corner-encoded polytopes (e.g. boxes that partition a region)
        V = self.x[:self.n_corner].reshape(self.n_corner, int(np.prod(self.x.shape[1:])))
        _, inverse, counts = np.unique(V, axis=0, return_inverse=True, return_counts=True)
        inverse = inverse.reshape(-1)
        twins = [np.flatnonzero(inverse == u) for u in np.flatnonzero(counts > 1)]
        self.twins = [g for g in twins if len(set(self.owner[g])) > 1]

    def __len__(self) -> int:
        return len(self.x)

    def generators(self, idx=None):
        """The generators argument of ``repair_points`` (None when no box uses them)."""
        gens = self.gens if idx is None else [self.gens[i] for i in idx]
        return gens if any(g is not None for g in gens) else None

    def signs(self, net: nn.Sequential, stop: int) -> np.ndarray:
        """Each point's sign per neuron at the input of module ``stop``: its region's centroid sign
        (see ``_patterns``). Tried instead: the sign of the midrange over the region's points; on
        the MNIST rotation hulls it changed nothing (drawdown 7.94 vs 7.96 pp)."""
        return _patterns(_forward_to(net, stop, self.centroids), self.owner, self.twins)

    def ranges(self, net: nn.Sequential, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Lowest and highest value per neuron at the input of module ``stop`` over each point's
        zonotope (the point itself where it has none); exact while the network is affine there."""
        pre = _forward_to(net, stop, self.x)
        lo, hi = pre.copy(), pre.copy()
        box = [i for i, g in enumerate(self.gens) if g is not None and len(g)]
        if box:
            own = np.repeat(box, [len(self.gens[i]) for i in box])
            g_pre = _forward_to(net, stop, self.x[own] + np.concatenate([self.gens[i] for i in box]))
            d = np.abs(g_pre - pre[own])
            np.add.at(lo, own, -d)
            np.add.at(hi, own, d)
        return lo, hi


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
    x64 = torch.tensor(np.asarray(x, dtype=np.float64))  # a copy: x may be a read-only view
    with torch.no_grad():
        y = copy.deepcopy(net[:stop]).double()(x64) if stop > 0 else x64
    return y.reshape(x.shape[0], -1).numpy()


def _patterns(ref: np.ndarray, owner: np.ndarray, twins: list[np.ndarray]):
    """Each point's sign per neuron: its region's sign (of ``ref``, per region), or 0 where twin
    vertices of regions with different signs meet."""
    sign = np.where(ref > 0, 1, -1).astype(np.int8)[owner]
    for group in twins:
        s = sign[group]
        clash = (s != s[0]).any(0)
        if clash.any():
            sign[np.ix_(group, np.flatnonzero(clash))] = 0
    return sign


def _holds(lo: np.ndarray, hi: np.ndarray, sign: np.ndarray) -> np.ndarray:
    """Per point and neuron: does the pre-activation (in [lo, hi]) have the sign it is held to."""
    return np.where(sign > 0, lo >= 0, np.where(sign < 0, hi <= 0, (lo == 0) & (hi == 0)))


def repair_polytopes(net: nn.Sequential, regions: Sequence[Region], properties: Sequence[OutputProperty],
                     layer: int, options: PolytopeRepairOptions | None = None,
                     progress: Callable[[str], None] | None = None,
                     keep: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None) -> PolytopeRepairOutcome:
    """Repair ``net`` so that every region satisfies its property; affine ``layer`` is the assert layer.

    ``keep = (inputs, A, b, point_index)``: points whose output rows ``A y <= b`` (e.g. their
    current labels) the assert LP must keep, each at its own activation pattern. The regions pull
    the last layers hard; these rows are what holds the rest of the input space in place.
    The input network is not modified.
    """
    opts = options or PolytopeRepairOptions()
    opts.validate()
    say = progress or (lambda msg: None)
    if len(regions) != len(properties):
        raise InputError(f"{len(regions)} regions but {len(properties)} properties; give one property per region")
    for prop in properties:  # a disjunct without rows can never be repaired: say so before any LP
        _required_rows(prop)
    disjunctive = any(not p.is_conjunctive for p in properties)
    once = _repair_interval if opts.hull == "interval" else _repair_once
    if opts.hull == "interval" and opts.disjunctions == "milp" and disjunctive:
        raise InputError("hull='interval' cannot solve disjunctions as a MILP (an interval hull has no vertices to "
                         "branch on); use disjunctions='fix' or 'auto', or hull='exact'")
    if opts.disjunctions == "milp" or not disjunctive:
        out = once(net, regions, properties, layer, opts, say, keep)
        out.disjunctions = "milp" if disjunctive else "none"
        return out
    fixed, chosen = fix_disjuncts(net, regions, properties)
    say(f"disjunctions fixed to one row per region ({chosen} rows chosen); the assert is an LP")
    out = once(net, regions, fixed, layer, opts, say, keep)
    out.disjunctions = "fixed"
    assert_failed = out.status == "infeasible" and out.stages and out.stages[-1]["stage"] == "assert"
    if not (assert_failed and opts.disjunctions == "auto" and opts.hull == "exact"):
        return out
    say("the assert with fixed rows is infeasible; solving the disjunctions as a MILP")
    again = once(net, regions, properties, layer, opts, say, keep)
    again.stages = [dict(st, attempt="fixed disjuncts") for st in out.stages] + again.stages
    again.disjunctions = "milp"
    return again


def fix_disjuncts(net: nn.Sequential, regions: Sequence[Region], properties: Sequence[OutputProperty],
                  samples: int = 256) -> tuple[list[OutputProperty], int]:
    """Each region's property with every unsafe disjunct cut to one row ``G_r y > h_r``.

    Requiring one row excludes the whole disjunct ``G y <= h``, so the fixed property implies the
    original; it needs no binaries, so the assert is an LP and boxes can use their generators.
    A region takes the row that is furthest on the safe side at its worst point (vertices, or
    samples of a box with many corners), except that it never takes the opposite of a row another
    region already took, where it has another: at one layer, ``y_1 > y_0`` on some regions and
    ``y_0 > y_1`` on others can make the LP infeasible where both properties are satisfiable
    (ACAS Xu N1,7: φ2 is held by ``y_1 > y_0`` and φ4's best row is ``y_0 > y_1``; φ4 is also
    met by ``y_0 > y_2``). Regions with the clearest preference choose first."""
    picks = []  # (region, disjunct, rows G, h, worst-case excess per row)
    for i, (region, prop) in enumerate(zip(regions, properties)):
        if prop.is_conjunctive:
            continue
        try:
            pts = region_vertices(region, max_corners=1024)
        except SpecError:
            pts = np.asarray(region.sample(samples, rng=i), dtype=np.float64)
        y = _forward_to(net, len(net), pts.reshape(len(pts), *np.shape(pts)[1:]))
        for d, (G, h) in enumerate(prop.disjuncts):
            if G.shape[0] > 1:
                picks.append((i, d, G, h, (y @ G.T - h).min(0)))
    gap = [np.diff(np.sort(e)[-2:])[0] for *_, e in picks]
    taken: set[tuple[float, ...]] = set()  # directions of the rows chosen so far
    choice: dict[tuple[int, int], int] = {}
    for k in np.argsort(gap, kind="stable")[::-1]:
        i, d, G, h, excess = picks[k]
        dirs = [_direction(g) for g in G]
        ok = [r for r in np.argsort(excess)[::-1] if tuple(-v for v in dirs[r]) not in taken]
        r = int(ok[0]) if ok else int(np.argmax(excess))
        choice[(i, d)] = r
        taken.add(dirs[r])
    out = []
    for i, prop in enumerate(properties):
        if prop.is_conjunctive:
            out.append(prop)
            continue
        cut = [(G[r:r + 1], h[r:r + 1]) if (r := choice.get((i, d))) is not None else (G, h)
               for d, (G, h) in enumerate(prop.disjuncts)]
        out.append(OutputProperty.unsafe(cut))
    return out, len(choice)


def _direction(g: np.ndarray) -> tuple[float, ...]:
    """A row's direction, rounded so that a row and its negation compare exactly."""
    n = float(np.abs(g).max()) or 1.0
    return tuple(np.round(g / n, 9) + 0.0)


def _repair_once(net, regions, properties, layer, opts, say, keep) -> PolytopeRepairOutcome:
    """The exact hull: shift LPs until the network is affine on every region, then the assert."""
    layer = _assert_layer(net, layer, opts)
    pts = _Points(regions, properties, opts.box_encoding)
    say(f"{len(regions)} regions, {len(pts)} LP points ({pts.n_corner} corners, {len(pts.twins)} shared; "
        f"{len(pts) - pts.n_corner} box centres with {pts.n_generators} generators)")
    current = copy.deepcopy(net).eval()
    stages: list[dict] = []
    failed = _shift(current, pts, layer, opts, say, stages)
    if failed is not None:
        return failed
    return _assert(net, current, pts, properties, layer, opts, say, keep, stages)


def _assert_layer(net: nn.Sequential, layer: int, opts: PolytopeRepairOptions) -> int:
    """The assert layer as a non-negative affine index, once the network and options allow it."""
    for i, m in enumerate(net):
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
    return layer


def _shift(current: nn.Sequential, pts: _Points, layer: int, opts: PolytopeRepairOptions, say,
           stages: list[dict]) -> PolytopeRepairOutcome | None:
    """Make ``current`` affine on every region before affine ``layer``, one ReLU at a time (in
    place; each LP's stage appended to ``stages``). Returns the outcome when a shift LP fails."""
    base = {f.name: getattr(opts, f.name) for f in fields(PointRepairOptions)}
    shift_opts = PointRepairOptions(**{**base, "later_biases": False,
                                       "delta_bound": opts.shift_delta_bound or opts.delta_bound})
    for j in range(layer):
        m = affine_index_to_module_index(current, j)
        relu = m + 1
        if relu >= len(current) or not isinstance(current[relu], nn.ReLU):
            continue
        sign = pts.signs(current, relu)
        ok = _holds(*pts.ranges(current, relu), sign)
        if ok.all():
            stages.append({"stage": "shift", "layer": j, "status": "not needed", "seconds": 0.0})
            continue
        bad_regions = sorted(set(pts.owner[~ok.all(1)].tolist()))
        if j < opts.shift_start:
            raise SpecError(f"the activation pattern after affine layer {j} is not constant on region(s) "
                            f"{bad_regions[:10]}, but shift_start={opts.shift_start} forbids changing that layer; "
                            f"lower shift_start to {j} or below")
        target = _ShiftTarget(j, relu, nn.Sequential(*list(current)[: relu + 1]).eval(), sign, bad_regions)
        res = _shift_lp(target, pts, shift_opts, say, stages)
        if res.status != "optimal":
            return _shift_failure(target, pts, shift_opts, res, layer, stages)
        current[m] = res.model[m]
    return None


@dataclass
class _ShiftTarget:
    """One shift LP: affine layer ``j``, the ReLU after it, the network cut after that ReLU, the
    sign every LP point is held to there, and the regions on which it is not yet constant."""

    j: int
    relu: int
    cut: nn.Sequential
    sign: np.ndarray
    bad_regions: list[int]


def _shift_lp(t: _ShiftTarget, pts: _Points, shift_opts: PointRepairOptions, say, stages: list[dict]):
    """The LP that holds every point of ``pts`` to its region's sign after affine layer ``t.j``."""
    t0 = time.perf_counter()
    V = pts.x
    shape = _forward_shape(t.cut, t.relu, V[:1])
    res = repair_points(t.cut, V, np.zeros((0, t.sign.shape[1])), np.zeros(0), np.zeros(0, dtype=np.int64), t.j,
                        shift_opts, patterns={t.relu: t.sign.reshape(len(V), *shape)}, generators=pts.generators())
    info = {"stage": "shift", "layer": t.j, "status": res.status, "size": res.lp_size,
            "seconds": time.perf_counter() - t0, "regions_needing_shift": len(t.bad_regions), "delta": res.delta}
    stages.append(info)
    say(f"shift layer {t.j}: {res.status} ({len(t.bad_regions)} regions not yet affine) in {info['seconds']:.2f} s")
    return res


def _shift_failure(t: _ShiftTarget, pts: _Points, shift_opts: PointRepairOptions, res, layer: int,
                   stages: list[dict]) -> PolytopeRepairOutcome:
    """The outcome of a failed shift LP, naming a region that alone cannot be made affine."""
    j = t.j
    culprit = _culprit(t.cut, pts, t.sign, t.bad_regions, j, shift_opts, t.relu) if res.status == "infeasible" \
        else None
    who = f"; region {culprit} alone cannot be made affine there" if culprit is not None else ""
    return PolytopeRepairOutcome(
        status=res.status, model=None, layer=layer, stages=stages, vertices=len(pts),
        generators=pts.n_generators,
        message=f"shift LP at affine layer {j} is {res.status}{who}: "
                + (f"no change within delta bound {shift_opts.delta_bound} gives every region one "
                   "activation pattern there" if res.status == "infeasible" else res.message)
                + " (try a larger --delta-bound, smaller regions, an earlier assert layer, or "
                  "--hull interval at the last layer)")


def _assert(net, current, pts: _Points, properties, layer, opts, say, keep, stages) -> PolytopeRepairOutcome:
    """The assert LP (or MILP) at affine ``layer`` of ``current``, now affine on every region."""
    V = pts.x
    patterns = _assert_patterns(current, pts, layer)
    A, b, pidx, groups = _region_rows(properties, pts.owner)
    inputs, gens = V, pts.generators()
    if keep is not None:  # kept points: plain points at their own pattern, after the regions' points
        xk = _kept_inputs(keep, V.shape[1:])
        for i in patterns:
            own = np.where(_forward_to(current, i, xk) > 0, 1, -1).astype(np.int8)
            patterns[i] = np.concatenate([patterns[i], own.reshape(len(xk), *patterns[i].shape[1:])])
        inputs, gens, A, b, pidx = _with_kept(keep, xk, inputs, gens, A, b, pidx, say)
    t0 = time.perf_counter()
    res = repair_points(current, inputs, A, b, pidx, layer, opts, progress=say, patterns=patterns,
                        disjunctions=groups or None, generators=gens, soft=_soft(keep, len(V), opts))
    stages.append({"stage": "assert", "layer": layer, "status": res.status, "size": res.lp_size,
                   "kept_points": 0 if keep is None else len(keep[0]), "kept_broken": res.soft_broken,
                   "binaries": int(sum(len(g) for g in groups)), "rounds": len(res.rounds),
                   "seconds": time.perf_counter() - t0, "delta": res.delta})
    say(f"assert layer {layer}: {res.status} in {stages[-1]['seconds']:.2f} s")
    if res.status != "optimal":
        message = f"assert {'MILP' if groups else 'LP'} at affine layer {layer} is {res.status}: {res.message}"
        return PolytopeRepairOutcome(status=res.status, model=None, layer=layer, message=message, stages=stages,
                                     solver=res.solver, vertices=len(V), generators=pts.n_generators)
    return PolytopeRepairOutcome(status="optimal", model=res.model, layer=layer, message="repaired", stages=stages,
                                 delta=_total_delta(net, res.model), solver=res.solver, vertices=len(V),
                                 generators=pts.n_generators)


def _assert_patterns(current: nn.Sequential, pts: _Points, layer: int) -> dict[int, np.ndarray]:
    """Every ReLU after the assert layer, held at each point to its region's centroid sign."""
    V = pts.x
    k_mod = affine_index_to_module_index(current, layer)
    return {i: pts.signs(current, i).reshape(len(V), *_forward_shape(current, i, V[:1]))
            for i in range(k_mod + 1, len(current)) if isinstance(current[i], nn.ReLU)}


def _repair_interval(net, regions, properties, layer, opts, say, keep) -> PolytopeRepairOutcome:
    """The last affine layer repaired over each region's interval hull at its input: CROWN bounds
    of the penultimate activations over the region make a box there, encoded by its centre and
    one generator per varying neuron, and the assert LP holds every output row on that box.

    Sound without any activation pattern (the box contains every activation vector the region
    reaches), so no shift LP changes an earlier layer; the certification engine's bounds fold the
    spec into the last layer the same way, so what the LP guarantees, CROWN certifies. The price
    is the relaxation: rows must hold on the whole box. On ACAS Xu N2,9's φ2 cover (60 boxes) this
    is a 21k-row LP solved in 0.4 s with weight changes of 0.012, where the exact hull's shift LPs
    through five layers fail numerically."""
    n_aff = len(affine_layers(net))
    if not -n_aff <= layer < n_aff or layer % n_aff != n_aff - 1:
        raise InputError(f"hull='interval' repairs the last affine layer only (layer {n_aff - 1} or -1), got layer "
                         f"{layer}; use hull='exact' for an earlier layer")
    k_mod = affine_index_to_module_index(net, n_aff - 1)
    if any(isinstance(m, nn.ReLU) for m in list(net)[k_mod + 1:]):
        raise UnsupportedLayerError("hull='interval' needs a network whose last affine layer is not followed by a "
                                    "ReLU; use hull='exact'")
    tail = nn.Sequential(*list(net)[k_mod:]).eval()
    shape = tuple(regions[0].input_shape)
    centres, gens, feat_shape, stage = _interval_hulls(net, regions, k_mod, n_aff - 1)
    stages = [stage]
    say(f"interval hulls of {len(regions)} regions at the input of affine layer {n_aff - 1} "
        f"(mean width {stages[0]['mean_width']:.3g}) in {stages[0]['seconds']:.2f} s")
    A, b, pidx, _ = _region_rows(properties, np.arange(len(regions)))  # the caller fixed the disjunctions
    inputs, all_gens = centres, gens
    if keep is not None:
        hk = _forward_to(net, k_mod, _kept_inputs(keep, shape)).reshape(-1, *feat_shape)
        inputs, all_gens, A, b, pidx = _with_kept(keep, hk, inputs, all_gens, A, b, pidx, say)
    t1 = time.perf_counter()
    res = repair_points(tail, inputs, A, b, pidx, 0, opts, progress=say, generators=all_gens,
                        soft=_soft(keep, len(centres), opts))
    stages.append({"stage": "assert", "layer": n_aff - 1, "status": res.status, "size": res.lp_size,
                   "kept_points": 0 if keep is None else len(keep[0]), "kept_broken": res.soft_broken,
                   "binaries": 0, "rounds": len(res.rounds),
                   "seconds": time.perf_counter() - t1, "delta": res.delta})
    say(f"assert layer {n_aff - 1} over interval hulls: {res.status} in {stages[-1]['seconds']:.2f} s")
    n_gens = sum(len(g) for g in gens)
    if res.status != "optimal":
        why = (f"no change of that layer within delta bound {opts.delta_bound} holds every output row on every "
               "region's hull" + (" and at every kept point" if keep is not None else "")
               + " (the hulls over-approximate the regions: try smaller regions, a larger --delta-bound, "
               "or --hull exact)") if res.status == "infeasible" else res.message
        return PolytopeRepairOutcome(status=res.status, model=None, layer=n_aff - 1, stages=stages,
                                     message=f"assert LP over interval hulls at affine layer {n_aff - 1} is "
                                             f"{res.status}: {why}",
                                     solver=res.solver, vertices=len(regions), generators=n_gens)
    model = copy.deepcopy(net).eval()
    for i, m in enumerate(res.model):  # a fresh copy of the tail
        model[k_mod + i] = m
    return PolytopeRepairOutcome(status="optimal", model=model, layer=n_aff - 1, message="repaired", stages=stages,
                                 delta=_total_delta(net, model), solver=res.solver, vertices=len(regions),
                                 generators=n_gens)


def _interval_hulls(net: nn.Sequential, regions, k_mod: int, layer: int):
    """Each region's CROWN box at the input of module ``k_mod`` (affine ``layer``) as a centre and
    generators, the shape there, and the hull stage's record."""

    t0 = time.perf_counter()
    head = nn.Sequential(*list(net)[:k_mod]).eval()
    shape = tuple(regions[0].input_shape)
    if all(isinstance(r, Box) for r in regions):
        inp = InputSet.box(np.stack([r.lower for r in regions]), np.stack([r.upper for r in regions]))
    else:  # region_vertices refuses regions that are neither boxes nor V-polytopes
        inp = InputSet.polytopes([region_vertices(r) for r in regions])
    nb = BoundPropagator(head, shape).bounds(inp, method="crown")
    lo, hi = nb.lower.numpy(), nb.upper.numpy()
    feat_shape = _forward_shape(net, k_mod, np.zeros((1, *shape)))
    hulls = [_box_generators(Box(np.minimum(l, h).reshape(feat_shape), np.maximum(l, h).reshape(feat_shape)))
             for l, h in zip(lo, hi)]
    stage = {"stage": "hull", "layer": layer, "status": "optimal", "seconds": time.perf_counter() - t0,
             "mean_width": float(np.mean(hi - lo)) if hi.size else 0.0}
    return np.stack([c for c, _ in hulls]), [g for _, g in hulls], feat_shape, stage


def _region_rows(properties: Sequence[OutputProperty], owner: np.ndarray):
    """The assert's rows ``A y <= b`` at every LP point (``owner``: each point's region), the
    point of each row, and the groups of rows of which one must hold (see ``_required_rows``)."""
    A_rows, b_rows, p_rows, groups = [], [], [], []
    n_rows = 0
    for r, prop in enumerate(properties):
        A, b, grp = _required_rows(prop)
        for v in np.flatnonzero(owner == r):
            A_rows.append(A)
            b_rows.append(b)
            p_rows.append(np.full(len(A), v))
            groups.extend(g + n_rows for g in grp)
            n_rows += len(A)
    return np.concatenate(A_rows), np.concatenate(b_rows), np.concatenate(p_rows), groups


def _kept_inputs(keep, input_shape) -> np.ndarray:
    """The kept points' inputs, as a writable float64 copy (torch refuses read-only arrays)."""
    return np.array(keep[0], dtype=np.float64).reshape(-1, *input_shape)


def _with_kept(keep, kept_points, inputs, gens, A, b, pidx, say):
    """The assert's points and rows with the kept points (``kept_points``: their values where the
    LP's points live) and their rows appended after the regions' own."""
    _, Ak, bk, pk = keep
    say(f"assert keeps {len(Ak)} output rows at {len(kept_points)} points")
    return (np.concatenate([inputs, kept_points]), None if gens is None else gens + [None] * len(kept_points),
            np.concatenate([A, Ak]), np.concatenate([b, bk]),
            np.concatenate([pidx, np.asarray(pk, dtype=np.int64) + len(inputs)]))


def _soft(keep, n_regions: int, opts: PolytopeRepairOptions) -> tuple[np.ndarray, float] | None:
    """The kept points (after the regions' ``n_regions`` points) as soft points, where asked."""
    if keep is None or opts.keep_soft is None:
        return None
    return n_regions + np.arange(len(keep[0])), opts.keep_soft


def _forward_shape(net: nn.Sequential, stop: int, x: np.ndarray) -> tuple[int, ...]:
    with torch.no_grad():
        return tuple(net[:stop](torch.as_tensor(x, dtype=torch.float32)).shape[1:])


def _culprit(cut, pts: _Points, sign, bad_regions, j, opts, relu) -> int | None:
    """The first region whose shift LP is infeasible on its own (at most 20 tried)."""
    shape = _forward_shape(cut, relu, pts.x[:1])
    for r in bad_regions[:20]:
        idx = np.flatnonzero(pts.owner == r)
        res = repair_points(cut, pts.x[idx], np.zeros((0, sign.shape[1])), np.zeros(0), np.zeros(0, dtype=np.int64),
                            j, opts, patterns={relu: sign[idx].reshape(len(idx), *shape)},
                            generators=pts.generators(idx))
        if res.status == "infeasible":
            return int(r)
    return None


def _total_delta(before: nn.Sequential, after: nn.Sequential) -> dict:
    """Norms of the parameter change over the whole network (shift and assert together)."""
    return delta_norms(np.concatenate([(a.detach().double() - b.detach().double()).reshape(-1).numpy()
                                       for a, b in zip(after.parameters(), before.parameters())]))
