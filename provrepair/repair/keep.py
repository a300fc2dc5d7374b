"""Keep-sets for point repair: inputs whose outputs the repair must not break, added lazily.

The LP repairs only what it is shown; nothing stops it from flipping the inputs the user did not
list (the demo's last-layer repair lost 12 pp of test accuracy that way). A keep point is an input
the network gets right that must stay right. Holding thousands of them in the LP would cost
thousands of points' rows, while almost all of them stay right anyway, so they enter by
constraint generation, as the activation-pattern rows do:

1. repair with the repair points and the keep points entered so far;
2. run every keep point through the candidate (float64); the ones whose output spec now fails
   ("flipped") enter, the worst first, at most ``keep_batch`` a round;
3. repeat until no keep point flips.

An entered keep point is an ordinary LP point (held to its own activation pattern) whose rows must
keep a share of the slack it had: ``min(keep_margin, slack / 2)``. A point that the LP never needed
is only checked, and it stays right at the end, or the loop would have entered it.

A repair set of more than ``LAZY_REPAIR_POINTS`` points enters the same way (its most violated
points first, the rest when the candidate misses them): an entering point adds rows (and u
columns) to one live LP, re-solved warm. A point outside the LP is only checked, not held to its
activation pattern, so the lazy LP may find a smaller change than APRNN's; the exact check after
the repair decides as always.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..certify.points import network_copy
from ..data import load_dataset
from ..data.datasets import DATASETS, SPLITS
from ..errors import InputError
from ..models import affine_index_to_module_index, affine_layers, get_meta
from ..models.inference import logits
from ..specs import PointSpec
from .aprnn import PointLP, PointRepairOutcome, generate_constraints, outcome_of
from .options import PointRepairOptions

__all__ = ["KeepReport", "KeepSet", "keep_from_dataset", "keep_summary", "lazy_repair_points", "repair_keeping",
           "resolve_keep"]


@dataclass
class KeepSet:
    """The keep points as LP rows: ``A y <= b - need`` must hold at ``inputs[point_index]``."""

    inputs: np.ndarray
    A: np.ndarray
    b: np.ndarray
    point_index: np.ndarray
    need: np.ndarray  # slack each row must keep
    source: str
    index: np.ndarray  # each point's index among the keep points as given
    dropped: int = 0  # points the network already got wrong (nothing to keep)

    @property
    def n_points(self) -> int:
        return int(self.inputs.shape[0])


@dataclass
class KeepReport:
    """What the keep-set cost and did (``RepairResult.lp["keep"]``)."""

    points: int
    source: str
    dropped: int
    margin: float
    flipped_without: int = 0  # keep points the first repair (without any of them) flipped
    entered: int = 0  # keep points that entered the LP
    binding: int = 0  # entered points whose rows are tight at the end: the ones the optimum needed
    kept: int = 0  # keep points right at the end
    repair_points_in_lp: int = 0  # a large repair set enters lazily too (LAZY_REPAIR_POINTS)
    entered_index: list[int] = field(default_factory=list)  # which (indices into the keep points as given)
    rounds: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def keep_from_dataset(net: nn.Module, text: str) -> PointSpec:
    """``DATASET:SPLIT:N``: the first N images of a shipped dataset that ``net`` classifies right."""
    parts = text.split(":") if isinstance(text, str) else []
    if len(parts) != 3 or not parts[2].strip().isdigit() or int(parts[2]) < 1:
        raise InputError(f"keep-from takes DATASET:SPLIT:N, e.g. mnist:train:2000, got {text!r} "
                         f"(datasets: {', '.join(DATASETS)}; splits: {', '.join(SPLITS)})")
    name, split, n = parts[0], parts[1], int(parts[2])
    x, y = load_dataset(name, split)
    shape = get_meta(net).input_shape
    if shape is not None:
        if int(np.prod(shape)) != int(np.prod(x.shape[1:])):
            raise InputError(f"keep-from {text}: {name} images have {int(np.prod(x.shape[1:]))} values, the model "
                             f"takes input shape {tuple(shape)}; keep points must be inputs of this model")
        x = x.reshape((x.shape[0], *shape))
    right: list[np.ndarray] = []
    found, chunk = 0, max(4 * n // 3, 256)
    for start in range(0, x.shape[0], chunk):
        part = np.flatnonzero(logits(net, x[start:start + chunk]).argmax(1) == y[start:start + chunk]) + start
        right.append(part)
        found += part.size
        if found >= n:
            break
    idx = np.concatenate(right)[:n]
    if idx.size < n:
        raise InputError(f"keep-from {text}: the model classifies only {idx.size} {name} {split} images right; "
                         "ask for fewer")
    return PointSpec.from_arrays(x[idx], labels=y[idx], source=f"{name}:{split}: first {n} classified right")


def resolve_keep(net: nn.Module, options: PointRepairOptions, repair: PointSpec, n_out: int) -> KeepSet | None:
    """The keep points of ``options`` (``keep`` and/or ``keep_from``) as rows, checked against the
    repair set: a keep point that is a repair point with another requirement is the user's error."""
    specs = [s for s in (options.keep,) if s is not None]
    if options.keep is not None and not isinstance(options.keep, PointSpec):
        raise InputError(f"keep must be a PointSpec (points with labels or output rows), got {type(options.keep).__name__}")
    if options.keep_from:
        specs.append(keep_from_dataset(net, options.keep_from))
    if not specs:
        return None
    shape = tuple(repair.inputs.shape[1:])
    xs, As, bs, pis, n = [], [], [], [], 0
    for part in specs:
        part = part.validate(shape, n_out)
        _check_conflicts(part, repair)
        A, b, pi = part.output_constraints(n_out)
        xs.append(np.asarray(part.inputs, dtype=np.float32))
        As.append(A)
        bs.append(b)
        pis.append(pi + n)
        n += xs[-1].shape[0]
    x, A, b, pi = np.concatenate(xs), np.concatenate(As), np.concatenate(bs), np.concatenate(pis)
    # float32, as the user runs the network: "right" is what the user sees
    slack = b - np.einsum("rj,rj->r", A, logits(net, x).astype(np.float64)[pi])
    bad = np.zeros(x.shape[0], dtype=bool)
    np.logical_or.at(bad, pi, slack <= 0)
    keep_pts = np.flatnonzero(~bad)
    remap = np.full(x.shape[0], -1)
    remap[keep_pts] = np.arange(keep_pts.size)
    rows = ~bad[pi]
    need = np.minimum(options.keep_margin, slack[rows] / 2)
    source = " + ".join(s.source or "keep points" for s in specs)
    return KeepSet(x[keep_pts], A[rows], b[rows], remap[pi[rows]], need, source, keep_pts,
                   dropped=int(bad.sum()))


def _check_conflicts(keep: PointSpec, repair: PointSpec) -> None:
    """A keep point equal to a repair point must ask for the same label."""
    if keep.labels is None or repair.labels is None:
        return
    kx = np.asarray(keep.inputs, dtype=np.float32).reshape(keep.inputs.shape[0], -1)
    rx = np.asarray(repair.inputs, dtype=np.float32).reshape(repair.inputs.shape[0], -1)
    index = {row.tobytes(): i for i, row in enumerate(rx)}
    clashes = [(k, index[row.tobytes()]) for k, row in enumerate(kx)
               if row.tobytes() in index and keep.labels[k] != repair.labels[index[row.tobytes()]]]
    if clashes:
        shown = "; ".join(f"keep point {k} is repair point {r} with label {keep.labels[k]} instead of "
                          f"{repair.labels[r]}" for k, r in clashes[:5])
        raise InputError(f"{len(clashes)} keep point(s) contradict the repair set: {shown}. Remove them from the "
                         "keep-set or fix the labels")


def repair_keeping(net: nn.Sequential, inputs: np.ndarray, A: np.ndarray, b: np.ndarray, point_index: np.ndarray,
                   layer: int, options: PointRepairOptions, keep: KeepSet | None,
                   progress: Callable[[str], None] | None = None) -> tuple[PointRepairOutcome, KeepReport]:
    """``repair_points`` with the keep points entered lazily (module docstring). A repair set of more
    than ``LAZY_REPAIR_POINTS`` points enters the same way: the most violated first, the others only
    when the candidate misses them (10,000 points at a ViT's head: most rows never bind)."""
    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    keep = keep if keep is not None else _no_keep(inputs, A.shape[1])
    report = KeepReport(points=keep.n_points, source=keep.source, dropped=keep.dropped, margin=options.keep_margin)
    entered = np.zeros(keep.n_points, dtype=bool)
    # the layers before ``layer`` do not change: their float64 images are computed once
    k = affine_index_to_module_index(net, layer)
    feats = _outputs64(net[:k], keep.inputs) if k > 0 else keep.inputs.astype(np.float64)
    h = _outputs64(net[:k], inputs) if k > 0 else inputs.astype(np.float64)
    pending = _first_repair_points(net[k:], h, A, b, point_index)
    lp = _Live(net, k, h, A, b, point_index, layer, options, keep, feats, t0, progress, ~pending)
    if options.objective == "outputs":  # the first keep points measure the output change: in from the start
        entered[:min(options.objective_points, keep.n_points)] = True
        lp.measure_outputs(np.flatnonzero(entered), feats)
    totals = {"build": 0.0, "solve": 0.0, "check": 0.0}
    picked, missed = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    while True:
        outcome = lp.solve(picked, missed)
        for key, attr in (("build", "build_time"), ("solve", "solve_time"), ("check", "check_time")):
            totals[key] += getattr(outcome, attr)
        step = {"entered": int(entered.sum()), "repair_points": int((~pending).sum()), "status": outcome.status,
                "lp": outcome.lp_size}
        report.rounds.append(step)
        if outcome.model is None:
            if entered.any() and outcome.status == "infeasible":
                outcome.message = (f"no repair at layer {layer} fixes the repair set and keeps the {int(entered.sum())} "
                                   "keep points it would flip (the repair set alone is repairable there): try a "
                                   "smaller --keep-margin, another layer or a larger --delta-bound")
            break
        suffix = outcome.model[k:]
        missed = _missed(suffix, h, A, b, point_index, pending, options.margin)[:options.keep_batch]
        slack = _row_slack(suffix, feats, keep.A, keep.b, keep.point_index)
        flipped = _flipped(slack, keep, entered)
        step["flipped"], step["missed"] = int(flipped.size), int(missed.size)
        if len(report.rounds) == 1:
            report.flipped_without = int(flipped.size)
        if flipped.size == 0 and missed.size == 0:
            _finish(report, slack, keep, entered)
            break
        picked = flipped[:options.keep_batch]
        near = _near(slack, keep, entered, flipped)[:options.keep_batch - picked.size] if KEEP_NEAR else picked[:0]
        step["near"] = int(near.size)
        picked = np.concatenate([picked, near])
        say(f"{picked.size} keep points ({flipped.size} flipped, {near.size} near it) and {missed.size} missed "
            "repair points enter the LP")
        entered[picked] = True
        pending[missed] = False
    report.entered = int(entered.sum())
    report.entered_index = keep.index[entered].tolist()
    report.repair_points_in_lp = int((~pending).sum())
    outcome.build_time, outcome.solve_time, outcome.check_time = totals["build"], totals["solve"], totals["check"]
    return outcome, report


#: Keep points that a candidate leaves right but short of their ``need`` enter with the flipped ones
#: (only in a round that goes on anyway: the loop still ends when none flips and no repair point is missed).
KEEP_NEAR = True
#: A repair set larger than this enters the LP lazily, the most violated points first.
LAZY_REPAIR_POINTS = 1000


def lazy_repair_points(n_points: int) -> bool:
    """Whether a repair set of ``n_points`` enters the LP lazily (through :func:`repair_keeping`)."""
    return n_points > LAZY_REPAIR_POINTS


def _no_keep(inputs: np.ndarray, n_out: int) -> KeepSet:
    empty = np.zeros(0)
    return KeepSet(inputs[:0], np.zeros((0, n_out)), empty, empty.astype(np.int64), empty, "", empty.astype(np.int64))


def _row_slack(suffix: nn.Module, h: np.ndarray, A: np.ndarray, b: np.ndarray, point_index: np.ndarray) -> np.ndarray:
    """Slack ``b - A y`` of each row at a candidate, from its points' (unchanged) layer-k inputs ``h``."""
    if h.shape[0] == 0:
        return np.zeros(0)
    z = _outputs64(suffix, h).reshape(h.shape[0], -1)
    return b - np.einsum("rj,rj->r", A, z[point_index])


def _worst(slack: np.ndarray, point_index: np.ndarray, n: int) -> np.ndarray:
    """Each point's smallest row slack (inf for a point without rows)."""
    worst = np.full(n, np.inf)
    np.minimum.at(worst, point_index, slack)
    return worst


def _first_repair_points(suffix: nn.Module, h: np.ndarray, A, b, point_index) -> np.ndarray:
    """Which repair points wait outside the LP at first (all in for a set of ``LAZY_REPAIR_POINTS``)."""
    n = h.shape[0]
    pending = np.zeros(n, dtype=bool)
    if n > LAZY_REPAIR_POINTS:
        worst = _worst(_row_slack(suffix, h, A, b, point_index), point_index, n)
        pending[np.argsort(worst, kind="stable")[LAZY_REPAIR_POINTS:]] = True
    return pending


def _missed(suffix: nn.Module, h: np.ndarray, A, b, point_index, pending: np.ndarray, margin: float) -> np.ndarray:
    """Repair points outside the LP whose rows the candidate misses (slack below the margin), worst first."""
    if not pending.any():
        return np.zeros(0, dtype=np.int64)
    pts = np.flatnonzero(pending)
    rows = np.flatnonzero(pending[point_index])
    remap = np.full(h.shape[0], -1)
    remap[pts] = np.arange(pts.size)
    slack = _row_slack(suffix, h[pts], A[rows], b[rows], remap[point_index[rows]])
    worst = _worst(slack, point_index[rows], h.shape[0])
    out = np.flatnonzero(pending & (worst < margin))
    return out[np.argsort(worst[out], kind="stable")]


#: Where the repair layer has at most this many weights (a CNN's last layer), u is substituted
#: out: an entering keep point then adds rows only. Wider Linear layers keep u (substituted, their
#: output rows would be dense over every weight), and an entering point adds its u columns too.
SUBSTITUTE_MAX_WEIGHTS = 2_000


class _Live:
    """One LP over the layers from ``k`` on. It holds every keep point's features from the start but
    rows (and u columns) only for the active ones: an entering point extends it, and the re-solve is
    warm."""

    def __init__(self, net, k, h, A, b, point_index, layer, options, keep: KeepSet, feats, t0, progress,
                 start: np.ndarray):
        self.net, self.k, self.keep, self.layer = net, k, keep, layer
        self.say = progress or (lambda msg: None)
        self.n_rep = h.shape[0]
        self.repair_rows = (A, b, point_index)
        formulation = options.formulation
        if formulation == "auto" and net[k].weight.numel() <= SUBSTITUTE_MAX_WEIGHTS:
            formulation = "substituted"
        opts = dataclasses.replace(options, formulation=formulation)
        self.deadline = None if options.time_limit is None else t0 + options.time_limit
        t1 = time.perf_counter()
        active = np.concatenate([start, np.zeros(keep.n_points, dtype=bool)])
        self.lp = PointLP(net[k:], np.concatenate([h, feats]), 0, opts, active=active)
        self.lp.layer = layer  # the LP runs on the layers from k on; its messages name the user's layer
        rows = start[point_index]
        self.lp.build(A[rows], b[rows], point_index[rows])
        self.build_time = time.perf_counter() - t1

    def enter(self, new: np.ndarray) -> None:
        keep = self.keep
        rows = np.flatnonzero(np.isin(keep.point_index, new))
        # the LP asks every row for ``margin`` of slack: a keep row's rhs already subtracts its own need
        margin = self.lp.opts.margin
        self.lp.add_points(keep.A[rows], keep.b[rows] - keep.need[rows] + margin, self.n_rep + keep.point_index[rows])

    def measure_outputs(self, points: np.ndarray, feats: np.ndarray) -> None:
        """Objective ``outputs``: keep points ``points`` enter, and their mean output change is minimised."""
        t1 = time.perf_counter()
        self.enter(points)
        self.lp.add_output_deviation(self.n_rep + points, _outputs64(self.net[self.k:], feats[points]), 1.0)
        self.build_time += time.perf_counter() - t1

    def solve(self, new: np.ndarray, missed: np.ndarray) -> PointRepairOutcome:
        t1 = time.perf_counter()
        if new.size:
            self.enter(new)
        if missed.size:
            A, b, point_index = self.repair_rows
            rows = np.flatnonzero(np.isin(point_index, missed))
            self.lp.add_points(A[rows], b[rows], point_index[rows])
        build = self.build_time + time.perf_counter() - t1
        self.build_time = 0.0
        outcome = outcome_of(self.lp, generate_constraints(self.lp, self.deadline, self.say, build))
        outcome.layer = self.layer if self.layer >= 0 else len(affine_layers(self.net)) + self.layer
        if outcome.model is not None:
            full = copy.deepcopy(self.net)
            for i, module in enumerate(outcome.model):
                full[self.k + i] = module
            outcome.model = full
        return outcome


def _outputs64(net: nn.Module, x: np.ndarray, batch: int = 1024) -> np.ndarray:
    """``net(x)`` in float64, in the shape the network gives (a prefix may end in feature maps)."""
    twin = network_copy(net, torch.float64)
    with torch.no_grad():
        if x.shape[0] == 0:
            return twin(torch.zeros((1, *x.shape[1:]), dtype=torch.float64)).numpy()[:0]
        parts = [twin(torch.tensor(x[i:i + batch], dtype=torch.float64)) for i in range(0, x.shape[0], batch)]
    return torch.cat(parts).numpy()


def _flipped(slack: np.ndarray, keep: KeepSet, entered: np.ndarray) -> np.ndarray:
    """Keep points not in the LP whose spec fails at the candidate, the worst first."""
    worst = _worst(slack, keep.point_index, keep.n_points)
    return _worst_first(np.flatnonzero((worst <= 0) & ~entered), worst)


def _near(slack: np.ndarray, keep: KeepSet, entered: np.ndarray, flipped: np.ndarray) -> np.ndarray:
    """Keep points outside the LP, right at the candidate but with a row below the slack they would
    keep in the LP (``need``), the closest to flipping first. They enter with the flipped ones: the
    next solve would otherwise flip many of them, one more round each time."""
    short = np.full(keep.n_points, np.inf)
    np.minimum.at(short, keep.point_index, slack - keep.need)
    short[flipped] = np.inf
    return _worst_first(np.flatnonzero((short < 0) & ~entered), _worst(slack, keep.point_index, keep.n_points))


def _worst_first(points: np.ndarray, worst: np.ndarray) -> np.ndarray:
    """``points`` ordered by their worst row slack, the closest to flipping (or most flipped) first."""
    return points[np.argsort(worst[points], kind="stable")]


def _finish(report: KeepReport, slack: np.ndarray, keep: KeepSet, entered: np.ndarray) -> None:
    report.kept = int((_worst(slack, keep.point_index, keep.n_points) > 0).sum())
    tight = np.zeros(keep.n_points, dtype=bool)
    np.logical_or.at(tight, keep.point_index, np.abs(slack - keep.need) <= 1e-6 * np.maximum(1.0, keep.need))
    report.binding = int((tight & entered).sum())


def keep_summary(report: KeepReport) -> str:
    return (f"keep-set: {report.kept} of {report.points} kept; {report.entered} entered the LP "
            f"({report.binding} binding); the repair alone would have flipped {report.flipped_without}")
