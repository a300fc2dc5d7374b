"""Repair whole VNN-LIB properties (issue 21): partition, repair the parts, certify the whole region.

A property's input region (an ACAS Xu property is one box) is usually far too wide for one
activation pattern or one tight interval hull, and most of it already holds. So:

1. **Before**: the independent complete check (``certify.complete``) on each target's whole
   region, with a short budget, then the engine where it ends unknown: a target that holds needs
   no repair (a no-op), and is guarded during the others' repair like a property to preserve.
2. **Partition**: each target's region is bisected adaptively (widest input first); a part that
   CROWN (with falsification) certifies on the original network is left alone, a part that is
   violated or undecided is split again, down to ``split_depth``; what is still open there is a
   *repair part*.
3. **Repair**: every repair part of every target, in one interval-hull LP at the last affine layer
   (``hull="interval"``), each part as ``2^hull_split`` pieces with a hull each (a tighter union),
   keeping the decision (argmin or argmax of the outputs) of ``keep_samples`` points sampled in the
   domain (except where a repair part's property fails: those must change), and the property at
   guard points in the parts CROWN certified.
   Kept points are soft rows (``keep_soft``): where the hulls leave a point no room, the LP breaks
   it rather than fail, and breaks as few as it must. A disjunctive property takes one row per
   piece, never one that contradicts another piece's (``polytope.fix_disjuncts``).
4. **After**: every target on its *whole* region by the independent complete check (splitting with
   its own symbolic bounds down to exact MILP leaves, from the repaired weights alone; it never
   sees the LP's hulls), and every property to preserve by the certification engine. A part that
   the repair broke (a counterexample there) joins the repair parts and the repair runs again from
   the original network (``rounds``).
5. **Fidelity**: the share of ``fidelity_samples`` uniform samples of the domain whose decision
   changed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..certify import certify_regions
from ..certify.complete import certify_box_complete
from ..errors import SpecError
from ..models import affine_layers
from ..specs import PointSpec, RegionSpec
from ..specs.regions import Box, OutputProperty

__all__ = ["PropertyRepairOptions", "PropertyRepairResult", "Target", "repair_properties"]

CERTIFIED, VIOLATED, UNKNOWN = "certified", "violated", "unknown"
#: Result statuses (the CLI maps them to exit codes: holds/certified 0, the others 1).
HOLDS, REPAIRED, NOT_CERTIFIED, INFEASIBLE = "already holds", "certified", "not_certified", "infeasible"


@dataclass
class PropertyRepairOptions:
    split_depth: int = 10  # bisections of a target's region at most (parts of 1/2^depth of it)
    max_open: int = 256  # a target's partition stops before a level with more open parts than this
    max_parts: int = 4096  # repair parts at most (a cap on the LP)
    delta_bound: float = 10.0
    margin: float = 1e-3
    keep_samples: int = 3000  # domain points whose decision the LP keeps (keep_points; 0: none)
    # LPs solved again, each keeping the decisions the previous one changed on a pool, while more than
    # refine_above of the pool changed. Off by default for time: one refinement took ACAS Xu N2,2 from
    # 1.37 % to 0.55 % of changed advisories and N3,1 from 2.49 % to 1.75 %, at 70 s more each
    keep_refine: int = 0
    refine_above: float = 0.01
    keep_pool: int = 20_000  # points sampled (as keep points are) to find those changed decisions
    keep_add: int = 1500  # changed points added per refinement at most
    # cost per unit of output slack of a kept (keep or guard) point's rows, on the scale of the L∞
    # change: the LP breaks as few of them as it must instead of failing (None: hard rows, dropped
    # when the LP is infeasible with them)
    keep_soft: float | None = 10.0
    # each repair part enters the LP as 2^hull_split pieces, each with its own hull: the union of the
    # pieces' hulls hugs the activations the part reaches far closer than the part's one hull, and a
    # row held on a loose hull moves the decision far outside the part (ACAS Xu N2,2: 6 % of the
    # domain's advisories with one hull per part)
    hull_split: int = 2
    # fewer splits where the parts would make more pieces than this (N2,9: 996 pieces, a 414k-row LP of 232 s)
    max_pieces: int = 768
    guard_samples: int = 2000  # points of the parts CROWN certified, held to the property by the LP (0: none)
    preserve_guard_samples: int = 500  # points of each region of a property to preserve, held to it (0: none)
    decision: str = "argmin"  # the network's decision: argmin (ACAS Xu's advisory) or argmax (a class)
    domain: Box | None = None  # where keep and fidelity samples come from (default: the regions' bounding box)
    before_timeout: float = 10.0  # independent check of each target before any repair
    before_engine_timeout: float = 80.0  # the engine, where that check ends unknown (0: none)
    certify_timeout: float = 120.0  # independent check of each target after the repair
    preserve_timeout: float = 60.0  # each property to preserve (the independent check, then the engine)
    engine_timeout: float = 5.0  # the engine's second opinion on each repaired target (0: none)
    rounds: int = 3  # repairs, each adding the parts the previous one broke
    fidelity_samples: int = 100_000
    time_limit: float = 600.0  # seconds per LP
    solver: str = "highs"
    threads: int | None = 1
    seed: int = 0

    def validate(self) -> None:
        if self.decision not in ("argmin", "argmax"):
            raise SpecError(f"decision must be argmin or argmax, got {self.decision!r}")
        if self.split_depth < 0 or self.rounds < 1 or self.keep_samples < 0 or self.hull_split < 0:
            raise SpecError("split_depth, keep_samples and hull_split must be >= 0 and rounds >= 1")


@dataclass
class Target:
    """A named property: its regions (boxes) and their unsafe outputs."""

    name: str
    spec: RegionSpec


@dataclass
class PropertyRepairResult:
    status: str  # already holds | certified | not_certified | infeasible
    model: nn.Module | None  # the repaired network (None for a no-op or a failed repair)
    message: str
    properties: list[dict[str, Any]] = field(default_factory=list)  # per property: role, before, after
    parts: dict[str, Any] = field(default_factory=dict)
    lp: list[dict[str, Any]] = field(default_factory=list)  # per round: stages, sizes, status
    delta: dict[str, Any] = field(default_factory=dict)
    layer: int | None = None
    keep: dict[str, Any] = field(default_factory=dict)
    fidelity: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    failed_part: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.status in (HOLDS, REPAIRED)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("model")
        return d


Say = Callable[[str], None]


def _boxes(t: Target) -> list[tuple[Box, OutputProperty]]:
    out = []
    for region, prop in t.spec:
        if not isinstance(region, Box):
            raise SpecError(f"property {t.name}: its input region is a {type(region).__name__}; property repair "
                            "partitions boxes only (give the input bounds one variable at a time)")
        out.append((region, prop))
    return out


def _bisect(box: Box, scale: np.ndarray) -> tuple[Box, Box]:
    lo, hi = box.lower.reshape(-1), box.upper.reshape(-1)
    d = int(np.argmax((hi - lo) / scale))
    mid = (lo[d] + hi[d]) / 2
    hi1, lo2 = hi.copy(), lo.copy()
    hi1[d], lo2[d] = mid, mid
    shape = box.input_shape
    return Box(lo.reshape(shape), hi1.reshape(shape)), Box(lo2.reshape(shape), hi.reshape(shape))


def _split(box: Box, times: int, scale: np.ndarray) -> list[Box]:
    """``box`` bisected ``times`` times over (2^times pieces), widest input first."""
    pieces = [box]
    for _ in range(times):
        pieces = [half for b in pieces for half in _bisect(b, scale)]
    return pieces


def partition(net: nn.Module, region: Box, prop: OutputProperty, depth: int, scale: np.ndarray,
              say: Say, max_open: int = 256) -> tuple[list[Box], list[Box], dict[str, int]]:
    """Bisect ``region`` level by level; parts that CROWN certifies on ``net`` are done. Returns
    (parts still open at ``depth``, or at the last level that leaves at most ``max_open`` open:
    the repair parts, the certified parts, counts). The cap matters where CROWN certifies
    nothing at any affordable depth (ACAS Xu φ8: a disjunction), so every level doubles the LP."""
    level, done, counts = [region], [], {"certify_calls": 0, "depth": 0}
    prev: tuple[list[Box], list[Box]] | None = None  # the previous level's (open, certified)
    open_: list[Box] = []
    for k in range(depth + 1):
        # no counterexample search: a violated part is split like an undecided one
        cert = certify_regions(net, RegionSpec(tuple(level), tuple([prop] * len(level))), method="crown",
                               attack=False)
        counts["certify_calls"] += 1
        open_ = [b for b, v in zip(level, cert.verdicts) if v.status != CERTIFIED]
        if prev is not None and len(open_) > max_open:  # too many: the previous level's parts
            open_, done = prev
            break
        done = done + [b for b, v in zip(level, cert.verdicts) if v.status == CERTIFIED]
        prev = (open_, done)
        counts["depth"] = k
        if not open_ or k == depth:
            break
        level = [half for b in open_ for half in _bisect(b, scale)]
    counts.update(open=len(open_), certified=len(done))
    say(f"  partition to depth {counts['depth']}: {len(done)} parts certified by CROWN, {len(open_)} to repair")
    return open_, done, counts


def _decide(net: nn.Module, x: np.ndarray, rule: str) -> np.ndarray:
    if len(x) == 0:  # e.g. the refinement pool when a target (N1,9's phi7) covers the whole domain
        return np.zeros(0, dtype=np.int64)
    with torch.no_grad():
        y = net(torch.as_tensor(x, dtype=torch.float32))
    y = y.reshape(len(x), -1)
    return (y.argmin(1) if rule == "argmin" else y.argmax(1)).numpy()


def keep_points(net: nn.Module, domain: Box, parts: Sequence[tuple[Box, OutputProperty]], n: int, rule: str,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` points sampled in ``domain``, each held to its current decision: (inputs, A (n, rows,
    outputs), b (n, rows)) with ``A y <= b`` required. A point inside a repair part whose
    property its output breaks must change and is not sampled; one whose output meets it is:
    a part can be most of the domain (N1,9's φ7 is the whole of it), and its decisions there
    are no less the network's than anywhere else."""
    pts = domain.sample(4 * n, rng)
    return decision_rows(net, pts[_may_keep(net, pts, parts)][:n], rule)


def _may_keep(net: nn.Module, x: np.ndarray, parts: Sequence[tuple[Box, OutputProperty]]) -> np.ndarray:
    """Per point: inside no part whose property ``net``'s output there breaks."""
    with torch.no_grad():
        y = net(torch.as_tensor(x, dtype=torch.float32)).double().reshape(len(x), -1).numpy()
    ok, flat = np.ones(len(x), dtype=bool), x.reshape(len(x), -1)
    for box, prop in parts:
        inside = np.all((flat >= box.lower.reshape(-1)) & (flat <= box.upper.reshape(-1)), axis=1)
        ok[inside] &= prop.holds(y[inside])
    return ok


def decision_rows(net: nn.Module, pts: np.ndarray, rule: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The points ``pts``, each held to ``net``'s decision there: (inputs, A, b), ``A y <= b``."""
    if not len(pts):
        return pts, np.zeros((0, 0, 0)), np.zeros((0, 0))
    dec = _decide(net, pts, rule)
    n_out = int(torch.as_tensor(net(torch.as_tensor(pts[:1], dtype=torch.float32))).reshape(-1).numel())
    A = np.zeros((len(pts), n_out - 1, n_out))
    sign = 1.0 if rule == "argmin" else -1.0  # argmin: y_dec - y_j <= 0
    for i, a in enumerate(dec):
        others = [j for j in range(n_out) if j != a]
        A[i, np.arange(n_out - 1), a] = sign
        A[i, np.arange(n_out - 1), others] = -sign
    return pts, A, np.zeros((len(pts), n_out - 1))


def guard_points(net: nn.Module, certified: Sequence[tuple[str, Box, OutputProperty]], n: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` points sampled (by volume) in the parts that held before the repair, each held to its
    property: per unsafe disjunct the one row ``G_r y > h_r`` it satisfies by the most (a row the
    original network meets there, so the LP need not move it). Returns (inputs, A, b) with
    ``A y <= b`` required, one row per disjunct."""
    vol = np.array([float(np.prod(np.maximum(b.upper - b.lower, 0))) for _, b, _ in certified])
    pick = rng.choice(len(certified), size=n, p=vol / vol.sum()) if vol.sum() > 0 else rng.integers(len(certified), size=n)
    xs, As, bs = [], [], []
    for i in np.unique(pick):
        _, box, prop = certified[i]
        x = box.sample(int((pick == i).sum()), rng)
        with torch.no_grad():
            y = net(torch.as_tensor(x, dtype=torch.float32)).double().reshape(len(x), -1).numpy()
        rows_A, rows_b = [], []
        for G, h in prop.disjuncts:
            r = (y @ G.T - h).argmax(1)  # the row furthest on the safe side at each point
            rows_A.append(-G[r])
            rows_b.append(-h[r])
        xs.append(x)
        As.append(np.stack(rows_A, 1))
        bs.append(np.stack(rows_b, 1))
    return np.concatenate(xs), As, bs


def _merge_points(keep, guard, shape) -> PointSpec | None:
    """Keep points and guard points as one PointSpec (rows padded by repeating a point's first row)."""
    parts = []
    if keep is not None:
        parts.append(keep)
    if guard is not None:
        x, As, bs = guard
        width = max(a.shape[1] for a in As)
        pad = [(np.concatenate([a] + [a[:, :1]] * (width - a.shape[1]), 1),
                np.concatenate([c] + [c[:, :1]] * (width - c.shape[1]), 1)) for a, c in zip(As, bs)]
        parts.append((x, np.concatenate([a for a, _ in pad]), np.concatenate([c for _, c in pad])))
    if not parts:
        return None
    width = max(a.shape[1] for _, a, _ in parts)
    fixed = [(x, np.concatenate([a] + [a[:, :1]] * (width - a.shape[1]), 1),
              np.concatenate([c] + [c[:, :1]] * (width - c.shape[1]), 1)) for x, a, c in parts]
    return PointSpec.from_arrays(np.concatenate([x.reshape(len(x), *shape) for x, _, _ in fixed]),
                                 A=np.concatenate([a for _, a, _ in fixed]), b=np.concatenate([c for _, _, c in fixed]),
                                 source="property repair: keep and guard points")


def _domain(targets: Sequence[Target], preserve: Sequence[Target], given: Box | None) -> Box:
    if given is not None:
        return given
    boxes = [b for t in list(targets) + list(preserve) for b, _ in _boxes(t)]
    lo = np.min([b.lower for b in boxes], axis=0)
    hi = np.max([b.upper for b in boxes], axis=0)
    return Box(lo, hi)


def _complete(net: nn.Module, t: Target, timeout: float) -> dict[str, Any]:
    """The independent complete check of every region of ``t``: one record for the property."""
    t0, status, how, stats, cex, reasons = time.perf_counter(), CERTIFIED, set(), {}, None, []
    for region, prop in _boxes(t):
        v = certify_box_complete(net, region, prop, timeout=max(1.0, timeout - (time.perf_counter() - t0)))
        for k, n in v.stats.items():
            stats[k] = max(stats.get(k, 0), n) if k == "max_depth" else stats.get(k, 0) + n
        reasons.append(v.reason)
        if v.status != CERTIFIED:
            status, cex = v.status, v.counterexample
            break
        how.add(v.decided_by)
    return {"status": status, "decided_by": " + ".join(sorted(how)) if status == CERTIFIED else
            ("" if status == UNKNOWN else "split+milp (independent)"), "seconds": time.perf_counter() - t0,
            "stats": stats, "reason": reasons[-1] if reasons else "",
            "counterexample": None if cex is None else np.asarray(cex).reshape(-1).tolist()}


def _before(net: nn.Module, t: Target, opts: PropertyRepairOptions) -> dict[str, Any]:
    """Does ``t`` hold before any repair? The independent check, then, where its short budget ends
    unknown, the engine (sound as well; nothing is imposed yet, so the repairer's hulls play no
    part). A target left unknown is repaired for nothing and the repair can break what held: ACAS
    Xu N3,3 phi2 holds (the engine: 29 s), was unknown at 10 s, and its repair broke phi9."""
    rec = _complete(net, t, opts.before_timeout)
    if rec["status"] != UNKNOWN or opts.before_engine_timeout <= 0:
        return rec
    eng = _engine(net, t, opts.before_engine_timeout)
    if eng["status"] == UNKNOWN:
        return dict(rec, engine=eng)
    return dict(eng, decided_by=f"engine: {eng['decided_by']}", seconds=rec["seconds"] + eng["seconds"],
                independent=rec)


def _engine(net: nn.Module, t: Target, timeout: float) -> dict[str, Any]:
    cert = certify_regions(net, t.spec, method="auto", timeout=timeout)
    bad = [v for v in cert.verdicts if v.status != CERTIFIED]
    v = bad[0] if bad else cert.verdicts[0]
    return {"status": v.status, "decided_by": ", ".join(sorted({u.method for u in cert.verdicts})) if not bad
            else v.method, "seconds": cert.seconds, "reason": v.reason,
            "counterexample": None if v.counterexample is None else v.counterexample.reshape(-1).tolist()}


def _part_record(name: str, box: Box) -> dict[str, Any]:
    return {"property": name, "lower": box.lower.reshape(-1).tolist(), "upper": box.upper.reshape(-1).tolist()}


def repair_properties(net: nn.Sequential, targets: Sequence[Target], preserve: Sequence[Target] = (),
                      options: PropertyRepairOptions | None = None,
                      progress: Say | None = None) -> PropertyRepairResult:
    """Repair ``net`` so that every target property holds on its whole region and every property
    of ``preserve`` still holds (see the module docstring). Specs must be validated against ``net``."""
    opts = options or PropertyRepairOptions()
    opts.validate()
    say = progress or (lambda m: None)
    t_all = time.perf_counter()
    domain = _domain(targets, preserve, opts.domain)
    scale = np.maximum(domain.upper - domain.lower, 1e-12).reshape(-1)
    records: dict[str, dict[str, Any]] = {}
    todo: list[Target] = []
    for t in targets:
        _boxes(t)
        before = _before(net, t, opts)
        records[t.name] = {"property": t.name, "role": "repair", "before": before}
        say(f"{t.name} before the repair: {before['status']} ({before['seconds']:.1f} s, "
            f"{before['decided_by'] or 'undecided'})")
        if before["status"] != CERTIFIED:
            todo.append(t)
    # a target that held is guarded like a property to preserve: repairing the others can break it (N1,7 phi2)
    to_repair = {u.name for u in todo}
    guarded = list(preserve) + [t for t in targets if t.name not in to_repair]
    timings = {"before": time.perf_counter() - t_all}
    if not todo:
        how = "; ".join(f"{n}: {r['before']['decided_by']}" for n, r in records.items())
        return PropertyRepairResult(HOLDS, None, f"every target property already holds on its whole region ({how}); "
                                    "nothing to repair",
                                    properties=list(records.values()), timings=dict(timings, total=timings["before"]))
    # partition
    t0 = time.perf_counter()
    parts: list[tuple[str, Box, OutputProperty]] = []
    certified_parts: list[tuple[str, Box, OutputProperty]] = []
    counts: dict[str, Any] = {}
    for t in todo:
        say(f"{t.name}: partitioning its region")
        for region, prop in _boxes(t):
            open_, done, c = partition(net, region, prop, opts.split_depth, scale, say, opts.max_open)
            parts += [(t.name, b, prop) for b in open_]
            certified_parts += [(t.name, b, prop) for b in done]
            counts[t.name] = {k: counts.get(t.name, {}).get(k, 0) + v for k, v in c.items()}
    if len(parts) > opts.max_parts:
        raise SpecError(f"{len(parts)} repair parts exceed max_parts={opts.max_parts}; lower split_depth or raise "
                        "max_parts")
    timings["partition"] = time.perf_counter() - t0
    n_aff = len(affine_layers(net))
    held = [(t.name, b, p) for t in guarded for b, p in _boxes(t)]  # regions that must keep holding
    result = PropertyRepairResult(NOT_CERTIFIED, None, "", layer=n_aff - 1, timings=timings)
    rng = np.random.default_rng(opts.seed)
    for rnd in range(opts.rounds):
        result.parts = {"repair": len(parts), "certified_by_crown_before": len(certified_parts), "per_property": counts,
                        "split_depth": opts.split_depth, "max_open": opts.max_open}
        model = _repair_round(net, parts, opts, domain, rng, result, say, _still_certified(certified_parts, parts),
                              held)
        if model is None:
            break
        broken = _after(model, targets, preserve, opts, records, result, say)
        if not broken:
            result.status, result.model = REPAIRED, model
            result.message = (f"every target property is certified on its whole region ({', '.join(t.name for t in todo)}"
                              f" repaired over {len(parts)} parts)"
                              + (f"; {len(preserve)} preserved properties still certified" if preserve else ""))
            break
        violated = [n for n in broken if records[n]["after"]["status"] == VIOLATED]
        more = _parts_to_add(model, violated, certified_parts, parts, todo, guarded, opts, scale, say, records)
        if not more or rnd == opts.rounds - 1:
            result.model = model
            result.message = ("not certified: " + "; ".join(f"{name}: {records[name]['after']['status']} "
                                                           f"({records[name]['after'].get('reason', '')})"
                                                           for name in broken))
            break
        say(f"round {rnd + 1}: the repair broke {len(more)} part(s) of {', '.join(broken)}; repairing again with them")
        parts += more
    if result.model is not None:  # certified or not: what the repair cost is measured either way
        result.fidelity = fidelity(net, result.model, domain, opts.fidelity_samples, opts.decision, opts.seed)
    result.properties = list(records.values())
    result.timings["total"] = time.perf_counter() - t_all
    return result


def repair(net: nn.Module, spec: RegionSpec, *, layer: int, progress: Say | None = None, **kw: Any):
    """The region repairer (``provable.RegionRepairer``) with ``PolytopeRepairOptions`` fields as keywords."""
    from .options import PolytopeRepairOptions
    from .provable import RegionRepairer

    return RegionRepairer().run(net, spec, PolytopeRepairOptions(layer=layer, **kw), progress)


def _repair_round(net, parts, opts: PropertyRepairOptions, domain: Box, rng, result: PropertyRepairResult,
                  say, certified=(), held=()) -> nn.Module | None:
    """One interval-hull LP over ``parts``; records it in ``result.lp``; the model, or None on failure."""
    t0 = time.perf_counter()
    regions = [(b, p) for _, b, p in parts]
    keep = keep_points(net, domain, regions, opts.keep_samples, opts.decision, rng) if opts.keep_samples else None
    if keep is not None and not len(keep[0]):  # the network breaks the properties on the whole domain
        keep = None
    guard = guard_points(net, certified, opts.guard_samples, rng) if opts.guard_samples and certified else None
    if opts.preserve_guard_samples:  # each preserved property's region too: a repair at the last layer is global
        for region in held:
            x, As, bs = guard_points(net, [region], opts.preserve_guard_samples, rng)
            guard = (x, As, bs) if guard is None else (np.concatenate([guard[0], x]), guard[1] + As, guard[2] + bs)
    result.keep = {"points": 0 if keep is None else len(keep[0]), "rule": opts.decision,
                   "sampled_in": "the domain, except where a repair part's property fails",
                   "guard_points": 0 if guard is None else len(guard[0])}
    sampled = keep
    keep = _merge_points(keep, guard, domain.input_shape)
    scale = np.maximum(domain.upper - domain.lower, 1e-12).reshape(-1)
    times = next((k for k in range(opts.hull_split, 0, -1) if len(parts) << k <= opts.max_pieces), 0)
    pieces = [(b, p) for _, box, p in parts for b in _split(box, times, scale)]
    spec = RegionSpec(tuple(b for b, _ in pieces), tuple(p for _, p in pieces))
    say(f"repair LP over {len(parts)} parts ({len(pieces)} pieces) at the last layer (interval hulls), "
        f"keeping {result.keep['points']} points")
    res = _hull_lp(net, spec, opts, say, keep)
    hard = opts.keep_soft is None  # soft kept points never make the LP infeasible: no retry without them
    if hard and res.status == "infeasible" and keep is not None and guard is not None and sampled is not None:
        say("  infeasible with the keep and guard points; again with the keep points only")
        result.lp.append({"parts": len(parts), "status": res.status, "keep_points": len(keep.inputs),
                          "note": "infeasible with the keep and guard points", "seconds": time.perf_counter() - t0})
        keep = _merge_points(sampled, None, domain.input_shape)
        result.keep.update(guard_points=0, guard_dropped="the LP was infeasible with them")
        res = _hull_lp(net, spec, opts, say, keep)
    if hard and res.status == "infeasible" and keep is not None:
        say("  infeasible with the keep points; again without them (fidelity is then measured, not held)")
        result.lp.append({"parts": len(parts), "status": res.status, "keep_points": len(keep.inputs),
                          "note": "infeasible with the keep points", "seconds": time.perf_counter() - t0})
        keep = None
        result.keep = {"points": 0, "dropped": "the LP was infeasible with them", "rule": opts.decision}
        res = _hull_lp(net, spec, opts, say)
    stage = next((s for s in res.lp.get("stages", []) if s["stage"] == "assert"), {})
    result.lp.append({"parts": len(parts), "pieces": len(pieces), "status": res.status, "size": stage.get("size"),
                      "lp_seconds": stage.get("seconds"), "seconds": time.perf_counter() - t0,
                      "parts_certified_by_crown": None if res.certificate is None else res.certificate.counts,
                      "kept": res.lp.get("kept"), "kept_broken": stage.get("kept_broken")})
    result.timings["repair"] = result.timings.get("repair", 0.0) + time.perf_counter() - t0
    say(f"  {res.status}: {res.message} ({time.perf_counter() - t0:.1f} s)")
    if res.model is None:
        result.status = INFEASIBLE if res.status == "infeasible" else NOT_CERTIFIED
        culprit = _culprit(net, parts, opts) if res.status == "infeasible" else None
        result.failed_part = culprit
        where = (f"; part {culprit['index']} of {culprit['property']} alone cannot be repaired "
                 f"(box {culprit['lower']} .. {culprit['upper']})") if culprit else \
            ("; no one of the first 20 parts is infeasible alone: the parts together are" if res.status == "infeasible"
             else "")
        result.message = f"the repair LP is {res.status}: {res.message}{where}"
        return None
    if keep is not None and opts.keep_refine:
        res = _refine(net, res, spec, keep, regions, opts, domain, rng, result, say)
    result.delta = res.delta
    return res.model


def _hull_lp(net: nn.Module, spec: RegionSpec, opts: PropertyRepairOptions, say: Say | None = None,
             keep: PointSpec | None = None, time_limit: float | None = None) -> Any:
    """The interval-hull LP at the last layer over ``spec``'s parts, uncertified (``certify_method
    'none'``: the caller runs the independent complete check on the whole region)."""
    return repair(net, spec, layer=-1, hull="interval", keep=keep, keep_soft=opts.keep_soft if keep else None,
                  delta_bound=opts.delta_bound, margin=opts.margin,
                  time_limit=opts.time_limit if time_limit is None else time_limit, solver=opts.solver,
                  threads=opts.threads, certify_method="none",
                  progress=None if say is None else (lambda m: say("    " + m)))


def _refine(net, res, spec: RegionSpec, keep: PointSpec, regions, opts: PropertyRepairOptions, domain: Box, rng,
            result: PropertyRepairResult, say):
    """Solve the LP again keeping, in addition, the decisions that the repair changed on a pool of
    ``keep_pool`` points sampled where they may keep it (``_may_keep`` on the parts ``regions``; up
    to ``keep_add`` each time, ``keep_refine`` times, while more than ``refine_above`` changed):
    the sampled keep points alone leave the rest of the domain free. An LP that fails, or changes
    no fewer pool decisions, leaves the previous repair in place."""
    first = next((s.get("seconds") or 0.0 for s in res.lp.get("stages", []) if s["stage"] == "assert"), 0.0)
    limit = min(opts.time_limit, max(15.0, 3 * first))  # an LP made infeasible by a changed point can be slow
    pool = domain.sample(2 * opts.keep_pool, rng)
    pool = pool[_may_keep(net, pool, regions)][:opts.keep_pool]
    before = _decide(net, pool, opts.decision)
    changed = np.flatnonzero(_decide(res.model, pool, opts.decision) != before)
    added = 0
    for _ in range(opts.keep_refine):
        if changed.size <= opts.refine_above * len(pool):
            break
        pick = changed[rng.permutation(changed.size)[:opts.keep_add]]
        x, A, b = decision_rows(net, pool[pick], opts.decision)
        n_out, N = A.shape[2], len(keep.inputs)
        KA, Kb, _ = keep.output_constraints(n_out)  # every kept point has the same number of rows
        width = KA.shape[0] // N
        KA, Kb = KA.reshape(N, width, n_out), Kb.reshape(N, width)
        if A.shape[1] < width:  # pad by repeating a point's first row, like the merged keep points
            A = np.concatenate([A] + [A[:, :1]] * (width - A.shape[1]), 1)
            b = np.concatenate([b] + [b[:, :1]] * (width - b.shape[1]), 1)
        more = PointSpec.from_arrays(np.concatenate([keep.inputs, x.reshape(len(x), *keep.inputs.shape[1:])]),
                                     A=np.concatenate([KA, A]), b=np.concatenate([Kb, b]),
                                     source="property repair: keep, guard and changed points")
        t0 = time.perf_counter()
        say(f"  {changed.size} of {len(pool)} pool decisions changed; again keeping {len(pick)} of them")
        again = _hull_lp(net, spec, opts, None, more, time_limit=limit)
        stage = next((s for s in again.lp.get("stages", []) if s["stage"] == "assert"), {})
        result.lp.append({"parts": len(regions), "status": again.status, "refine": len(pick), "size": stage.get("size"),
                          "lp_seconds": stage.get("seconds"), "seconds": time.perf_counter() - t0,
                          "kept": again.lp.get("kept")})
        result.timings["repair"] = result.timings.get("repair", 0.0) + time.perf_counter() - t0
        if again.model is None:
            say(f"  {again.status}: the previous repair is kept")
            break
        now = np.flatnonzero(_decide(again.model, pool, opts.decision) != before)
        result.lp[-1]["pool_changed"] = int(now.size)
        if now.size >= changed.size:  # the points it kept freed others: a refinement must pay
            say(f"  it changes {now.size} pool decisions, not fewer: the previous repair is kept")
            break
        res, keep, changed = again, more, now
        added += len(pick)
    result.keep["refined"] = {"pool": len(pool), "added": added, "pool_changed": int(changed.size)}
    return res


def _still_certified(certified_parts, parts):
    """The certified parts that are not (now) repair parts."""
    repaired = {(n, tuple(b.lower.reshape(-1)), tuple(b.upper.reshape(-1))) for n, b, _ in parts}
    return [c for c in certified_parts
            if (c[0], tuple(c[1].lower.reshape(-1)), tuple(c[1].upper.reshape(-1))) not in repaired]


def _culprit(net, parts, opts: PropertyRepairOptions, limit: int = 20) -> dict[str, Any] | None:
    """The first part (of at most ``limit``) whose LP alone, without keep points, is infeasible."""
    for i, (name, box, prop) in enumerate(parts[:limit]):
        res = _hull_lp(net, RegionSpec((box,), (prop,)), opts)
        if res.status == "infeasible":
            return dict(_part_record(name, box), index=i)
    return None


def _after(model, targets, preserve, opts: PropertyRepairOptions, records, result, say) -> list[str]:
    """Certify every target (independent check) and every property to preserve (the engine) on
    its whole region; the names of those not certified."""
    t0 = time.perf_counter()
    broken = []
    for t in targets:
        rec = _complete(model, t, opts.certify_timeout)
        if opts.engine_timeout > 0:  # a second opinion, reported beside it
            rec["engine"] = _engine(model, t, min(opts.engine_timeout, opts.preserve_timeout))
        records[t.name]["after"] = rec
        say(f"{t.name} after the repair, whole region: {rec['status']} by {rec['decided_by'] or '-'} "
            f"({rec['seconds']:.1f} s)")
        if rec["status"] != CERTIFIED:
            broken.append(t.name)
    for t in preserve:
        rec = _complete(model, t, opts.preserve_timeout)
        if rec["status"] == UNKNOWN:  # the independent check's budget ran out: the engine may decide it
            rec = dict(_engine(model, t, opts.preserve_timeout), independent=rec)
        records.setdefault(t.name, {"property": t.name, "role": "preserve"})["after"] = rec
        say(f"{t.name} (held before) after the repair: {rec['status']} by {rec['decided_by'] or '-'} "
            f"({rec['seconds']:.1f} s)")
        if rec["status"] != CERTIFIED:
            broken.append(t.name)
    result.timings["certify_after"] = result.timings.get("certify_after", 0.0) + time.perf_counter() - t0
    return broken


def _inside_any_each(x: np.ndarray, cands) -> np.ndarray:
    """Which of the candidate parts contain the point ``x``."""
    flat = x.reshape(-1)
    return np.array([bool(np.all((flat >= b.lower.reshape(-1)) & (flat <= b.upper.reshape(-1)))) for _, b, _ in cands])


def _parts_to_add(model, broken, certified_parts, parts, targets, preserve, opts, scale, say, records) -> list:
    """Parts to add to the repair after a round broke ``broken``: the certified parts (of the
    repaired ``targets``) that hold a counterexample, and the open parts, on the repaired model, of
    the region of a broken property of ``preserve`` (which includes the targets that held before)."""
    more = []
    by_name = {t.name: t for t in list(targets) + list(preserve)}
    repaired = {(n, tuple(b.lower.reshape(-1)), tuple(b.upper.reshape(-1))) for n, b, _ in parts}
    for name in broken:
        t = by_name[name]
        if any(name == u.name for u in targets):  # a repaired target: its parts that CROWN had certified
            cands = [(n, b, p) for n, b, p in certified_parts if n == name]
            # the certified parts that no longer hold: a counterexample in them (the independent
            # check's, or the falsifier's on the repaired model)
            if cands:
                cert = certify_regions(model, RegionSpec(tuple(b for _, b, _ in cands), tuple(p for _, _, p in cands)),
                                       method="ibp")
                cex = records[name]["after"].get("counterexample")
                hit = np.zeros(len(cands), dtype=bool) if cex is None else _inside_any_each(np.asarray(cex), cands)
                more += [c for c, v, h in zip(cands, cert.verdicts, hit) if v.status == VIOLATED or h]
        else:
            for region, prop in _boxes(t):
                open_, _, _ = partition(model, region, prop, opts.split_depth, scale, say, opts.max_open)
                more += [(name, b, prop) for b in open_]
    return [m for m in more if (m[0], tuple(m[1].lower.reshape(-1)), tuple(m[1].upper.reshape(-1))) not in repaired]


def fidelity(net: nn.Module, repaired: nn.Module, domain: Box, n: int, rule: str, seed: int = 0) -> dict[str, Any]:
    """The share of ``n`` uniform samples of ``domain`` whose decision changed."""
    pts = domain.sample(n, np.random.default_rng(seed + 12345))
    changed = _decide(net, pts, rule) != _decide(repaired, pts, rule)
    return {"samples": int(n), "changed": int(changed.sum()), "share": float(changed.mean()), "rule": rule}


def load_targets(net: nn.Module, paths: Sequence[str]) -> list[Target]:
    """VNN-LIB properties read and validated against ``net`` (a wrong input or output count is a
    ``SpecError``, before any work), each named by its file's stem."""
    from pathlib import Path

    from .provable import prepare_regions

    out = []
    for p in paths:
        spec, _ = prepare_regions(net, RegionSpec.load(p, kind="vnnlib"))
        out.append(Target(Path(p).stem, spec))
    return out


def domain_of(net: nn.Module, path: str | None) -> Box | None:
    """The bounding box of the regions of a VNN-LIB file (the sampling domain), or None."""
    if path is None:
        return None
    boxes = [b for t in load_targets(net, [path]) for b, _ in _boxes(t)]
    return Box(np.min([b.lower for b in boxes], axis=0), np.max([b.upper for b in boxes], axis=0))
