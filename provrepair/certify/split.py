"""Input splitting: branch and bound over sub-boxes of a low-dimensional input region.

CROWN bounds of a wide box are loose because many ReLUs are unstable on it; halving the box makes
them tighter, but which input to halve decides how many boxes the proof needs. The output
coefficient of an input (the "smear" of ReluVal) misses inputs that mostly untangle hidden
neurons: on ACAS Xu phi1 (N1,4, N5,5) bisecting by smear did not finish in 60 s, while bounding
both halves along every input and keeping the split whose worse half is safest finished in
under 2 s (about 10x the bounds per box, 100x fewer boxes). Open boxes are processed in
batches: the centres of their halves are tried as counterexamples, the bounds decide what they
can, and the rest are split again. Sub-boxes still open at ``max_depth``, or deep enough with few
unstable ReLUs (``LEAF_UNSTABLE``), go to the complete MILP check, so the search is complete
whenever it finishes within its time. Single-row unsafe disjuncts may be searched together
(``any_row``): a box is closed when every row's bound excludes it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeAlias

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from .bounds import BoundPropagator, InputSet, as_tensor
from .falsify import unsafe_loss
from .forward import ALPHA_STEPS, ForwardBounds, Interval

__all__ = ["DEFAULT_MAX_DEPTH", "DEFAULT_SPLIT_BATCH", "SplitOutcome", "split_search"]

DEFAULT_MAX_DEPTH = 40
DEFAULT_SPLIT_BATCH = 1024
#: Sub-boxes per step when forward linear bounds make each one cheap.
FAST_SPLIT_BATCH = 2048
#: torch threads while splitting (see ``split_search``).
SPLIT_THREADS = 1
#: A step takes at most this share of the time left (its size from the last step's time per box).
STEP_SHARE = 0.25
MIN_SPLIT_BATCH = 8
#: Between splits, sign-gradient steps from the centres of this many least safe open boxes.
PGD_BOXES = 64
PGD_BOX_STEPS = 8
#: Levels between hidden-layer CROWN recomputations of a sub-box (see ``_fast_bounds``).
REFRESH_EVERY = 1
#: A split must improve the box's margin by this share of it, or the relatively widest input is halved.
MIN_GAIN = 1e-3
#: Inputs narrower than this share of the box's relatively widest one are not halved.
MIN_REL_WIDTH = 2.0**-8
#: A sub-box with at most this many unstable ReLUs (and at least ``LEAF_MIN_DEPTH`` deep) goes to
#: the complete check: a MILP with that few binaries is fast and exact, while the bounds of a box
#: near a tight spec's boundary need many more halvings (ACAS Xu phi2 on N3,3).
LEAF_UNSTABLE = 24
LEAF_MIN_DEPTH = 10
#: Above ``LEAF_UNSTABLE`` the leaf threshold adapts to the instance (see ``_LeafPolicy``) up to
#: this many unstable ReLUs: a MILP with 28-32 binaries took 15 ms on ACAS Xu phi6 (N1,1) but
#: 0.2-1.9 s on phi2 (N4,2), so a fixed threshold is either too timid or too costly.
LEAF_MAX_UNSTABLE = 40
#: Seconds a leaf's MILP may take before the leaf is split again instead (above ``LEAF_UNSTABLE``
#: unstable ReLUs; at most that many: ``LEAF_SECONDS``); a MILP faster than ``LEAF_FAST`` raises
#: the threshold by one, a slower one lowers it below the leaf's count.
LEAF_TRY_SECONDS = 0.25
LEAF_SECONDS = 2.0
LEAF_FAST = 0.05
#: Slope steps on a leaf before its MILP (see ``_settle_leaves``).
LEAF_ALPHA_STEPS = 40
#: Inputs whose halving is tried (and bounded) per box before choosing the split, ranked by relative
#: width plus relative smear: all five of ACAS Xu's for a single-row unsafe set (phi1 on N4,6 took
#: 2.6 s with five, over 80 s with three), three for several rows (phi6 on N1,1, second region: 9 s
#: with three, unknown at 40 s with five; phi2 on N4,2: 66 s with three, 6.6e-6 of the region
#: still open at 30 s with five, 5.5e-6 at 100 s with two), where the split whose worse half gains
#: most is greedy and kept halving inputs that paid off for one level only.
TRY_DIMS = 5
TRY_DIMS_ROWS = 3

#: An input array: numpy-like or a tensor (``bounds.as_tensor`` turns it into float64).
_Array: TypeAlias = npt.ArrayLike | torch.Tensor
#: ``leaf_check(lo, hi, pre, seconds) -> (status, x, y)``: the complete check of one sub-box (lo, hi:
#: (1, *input_shape)) within ``seconds``; ``pre``: sound intervals of the ReLU inputs on it ((1, N_k)
#: each, layer by layer), or None.
LeafCheck: TypeAlias = Callable[[torch.Tensor, torch.Tensor, list[Interval] | None, float],
                                tuple[str, np.ndarray | None, np.ndarray | None]]
#: Bounded open sub-boxes in the queue: lower, upper, depth, their packed hidden intervals (handed
#: down to their halves), the bound of the unsafe set's margin and its input coefficients.
_Boxes: TypeAlias = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]
#: ``unsafe(x) -> (hit, y)``: which inputs the float64 forward pass puts in the unsafe set, and their outputs.
_Unsafe: TypeAlias = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class SplitOutcome:
    status: str  # certified | violated | unknown
    x: np.ndarray | None = None
    y: np.ndarray | None = None
    reason: str = ""
    stats: dict[str, int] = field(default_factory=dict)  # boxes, max_depth, milp_leaves


def split_search(prop: BoundPropagator, net64: nn.Module, lower: _Array, upper: _Array, G: _Array, h: _Array, *,
                 deadline: float, tol: float, h_rows: tuple[np.ndarray, np.ndarray] | None = None,
                 max_depth: int = DEFAULT_MAX_DEPTH, batch: int = DEFAULT_SPLIT_BATCH,
                 leaf_check: LeafCheck | None = None, any_row: bool = False) -> SplitOutcome:
    """Decide whether some input of the box [lower, upper] (and ``A x <= b`` if ``h_rows``) reaches
    ``G y <= h`` (with ``any_row``: some row ``G_r y <= h_r``, a disjunction of single rows, whose
    sub-boxes share their hidden bounds). ``leaf_check(lo, hi, pre, seconds) -> (status, x, y)``
    decides a box at ``max_depth`` or with few unstable ReLUs; one it leaves undecided above
    ``max_depth`` is split again.

    Runs on one torch thread: its many small batched products gain nothing from a second thread
    and lose up to 5x when the cores are shared (measured on ACAS Xu, 2 busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(SPLIT_THREADS)
    try:
        return _split_search(prop, net64, lower, upper, G, h, deadline=deadline, tol=tol, h_rows=h_rows,
                             max_depth=max_depth, batch=batch, leaf_check=leaf_check, any_row=any_row)
    finally:
        torch.set_num_threads(threads)


def _split_search(prop: BoundPropagator, net64: nn.Module, lower: _Array, upper: _Array, G: _Array, h: _Array, *,
                  deadline: float, tol: float, h_rows: tuple[np.ndarray, np.ndarray] | None, max_depth: int,
                  batch: int, leaf_check: LeafCheck | None, any_row: bool) -> SplitOutcome:
    shape = prop.input_shape
    lo = as_tensor(lower, prop.device).reshape(1, *shape)
    hi = as_tensor(upper, prop.device).reshape(1, *shape)
    region_lo, region_hi = lo[0].clone(), hi[0].clone()
    G_t = as_tensor(G, prop.device)
    h_t = as_tensor(h, prop.device)
    A_t: torch.Tensor | None = None if h_rows is None else as_tensor(h_rows[0], prop.device)
    b_t: torch.Tensor | None = None if h_rows is None else as_tensor(h_rows[1], prop.device)
    fwd = ForwardBounds(prop) if ForwardBounds.supports(prop) else None
    stats = {"boxes": 0, "max_depth": 0, "milp_leaves": 0}

    oracle = _Oracle(net64, G_t, h_t, A_t, b_t, stats, any_row)
    unsafe, centres = oracle.unsafe, oracle.centres

    # the root box, bounded once; the queue holds bounded boxes that are still open
    depth = torch.zeros(1, dtype=torch.long, device=prop.device)
    found = centres(lo, hi)
    if found is not None:
        return found
    margin, coeff, pre, open_ = _box_bounds(prop, fwd, lo, hi, depth, None, G_t, h_t, tol, A_t, b_t, any_row)
    stats["boxes"] += 1
    queue: list[_Boxes] = []
    if bool(open_.any()):
        queue.append((lo, hi, depth, pre, margin, coeff))
    per_box: float | None = None  # seconds per bounded child of the last step
    policy = _LeafPolicy()
    region_width = (region_hi - region_lo).reshape(-1)
    tries = _candidate_count(region_width, TRY_DIMS if G_t.shape[0] == 1 else TRY_DIMS_ROWS)
    while queue:
        if time.perf_counter() > deadline:
            return SplitOutcome("unknown", reason="time limit reached while splitting the input region", stats=stats)
        # as many boxes as fit a share of the time left, so one step cannot overrun the deadline
        size = max(1, (batch if fwd is None else FAST_SPLIT_BATCH) // (2 * tries))
        left = deadline - time.perf_counter()
        if per_box is not None and left < float("inf"):
            size = max(1, min(size, int(STEP_SHARE * left / max(per_box * 2 * tries, 1e-9))))
        step_t0 = time.perf_counter()
        lo, hi, depth, packed, margin, coeff = _take(queue, size)
        stats["max_depth"] = max(stats["max_depth"], int(depth.max()))
        # 1. leaves at max depth, or with few unstable ReLUs, go to the complete check
        deep, leaf_pre = _leaves(fwd, packed, depth, max_depth, leaf_check is not None, policy.threshold)
        if bool(deep.any()):
            done, keep = _settle_leaves(fwd, lo, hi, depth, deep, leaf_pre, G_t, h_t, tol, any_row, leaf_check,
                                        max_depth, deadline, stats, policy)
            if done is not None:
                return done
            lo, hi, depth, margin, coeff = lo[keep], hi[keep], depth[keep], margin[keep], coeff[keep]
            packed = None if packed is None else packed[keep]
            if lo.shape[0] == 0:
                continue
        # 2. a short gradient search from the least safe open boxes (between splits)
        cex = _pgd_boxes(net64, lo, hi, margin, region_lo, region_hi, unsafe, G_t, h_t, any_row=any_row)
        if cex is not None:
            return SplitOutcome("violated", x=cex[0], y=cex[1], reason="a gradient search inside a sub-box reaches "
                                "the unsafe set", stats=stats)
        # 3. both halves along each candidate input; their centres as counterexamples; their bounds
        dims = _candidates(lo, hi, coeff, region_width, tries)
        k = dims.shape[1]
        c_lo, c_hi = _halves(lo, hi, dims)  # (2 k n): [left, right] per candidate, box-major
        found = centres(c_lo, c_hi)
        if found is not None:
            return found
        c_depth = (depth + 1).repeat_interleave(2 * k)
        c_packed = None if packed is None else packed.repeat_interleave(2 * k, 0)
        c_margin, c_coeff, c_pre, c_open = _box_bounds(prop, fwd, c_lo, c_hi, c_depth, c_packed, G_t, h_t, tol,
                                                      A_t, b_t, any_row)
        stats["boxes"] += c_lo.shape[0]
        per_box = (time.perf_counter() - step_t0) / c_lo.shape[0]
        chosen = _choose_split(c_margin, c_open, lo, hi, dims, margin, region_width)
        if chosen.numel() == 0:
            continue
        # least safe boxes first, at the end of the (depth-first) queue
        order = chosen[torch.argsort(c_margin[chosen])]
        queue.append((c_lo[order], c_hi[order], c_depth[order], None if c_pre is None else c_pre[order],
                      c_margin[order], c_coeff[order]))
    return SplitOutcome("certified", reason="every sub-box is certified by CROWN bounds or the MILP", stats=stats)


class _Oracle:
    """The float64 forward pass as judge: which inputs reach the unsafe set (inside the region's
    H-rows, if any), and the first sub-box centre that does."""

    def __init__(self, net64: nn.Module, G_t: torch.Tensor, h_t: torch.Tensor, A_t: torch.Tensor | None,
                 b_t: torch.Tensor | None, stats: dict[str, int], any_row: bool = False):
        self.net64, self.G_t, self.h_t, self.A_t, self.b_t, self.stats = net64, G_t, h_t, A_t, b_t, stats
        self.any_row = any_row

    def inside(self, x: torch.Tensor) -> torch.Tensor:
        if self.A_t is None or self.b_t is None:  # both or neither
            return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        return (x.reshape(x.shape[0], -1) @ self.A_t.T <= self.b_t).all(1)

    def unsafe(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs among ``x`` (all in the region's box) that the float64 forward pass puts in the unsafe set."""
        with torch.no_grad():
            y = self.net64(x).reshape(x.shape[0], -1)
        met = (y @ self.G_t.T) <= self.h_t
        return (met.any(1) if self.any_row else met.all(1)) & self.inside(x), y

    def centres(self, lo: torch.Tensor, hi: torch.Tensor) -> SplitOutcome | None:
        centre = (lo + hi) / 2
        hit, y = self.unsafe(centre)
        if bool(hit.any()):
            i = int(hit.nonzero()[0])
            return SplitOutcome("violated", x=centre[i].cpu().numpy(), y=y[i].cpu().numpy(),
                                reason="the centre of a sub-box reaches the unsafe set", stats=self.stats)
        return None


def _box_bounds(prop: BoundPropagator, fwd: ForwardBounds | None, lo: torch.Tensor, hi: torch.Tensor,
                depth: torch.Tensor, packed: torch.Tensor | None, G_t: torch.Tensor, h_t: torch.Tensor, tol: float,
                A_t: torch.Tensor | None,
                b_t: torch.Tensor | None,
                any_row: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Per sub-box: the bound on the unsafe set's margin, the input coefficients (for the split),
    the hidden intervals to hand down, and whether the box is still open (not certified, and not
    entirely outside the H-polytope ``A x <= b``)."""
    if fwd is None:
        nb = prop.bounds(InputSet(lo, hi), G_t, method="crown")
        assert nb.coefficients is not None  # CROWN keeps them
        rows = nb.lower - h_t
        margin, coeff, pre = rows.amin(1) if any_row else rows.amax(1), nb.coefficients.abs().amax(1), None
    else:
        margin, coeff, pre = _fast_bounds(fwd, lo, hi, depth, G_t, h_t, tol, packed, any_row)
    open_ = margin <= tol
    if A_t is not None and b_t is not None:  # both or neither
        c, r = ((lo + hi) / 2).reshape(lo.shape[0], -1), ((hi - lo) / 2).reshape(lo.shape[0], -1)
        open_ &= ~((c @ A_t.T - r @ A_t.abs().T) > b_t).any(1)
    return margin, coeff, pre, open_


def _leaves(fwd: ForwardBounds | None, packed: torch.Tensor | None, depth: torch.Tensor, max_depth: int,
            can_check: bool, threshold: int = LEAF_UNSTABLE) -> tuple[torch.Tensor, list[Interval] | None]:
    """Which boxes go to the complete check (at ``max_depth``, or deep enough with at most
    ``threshold`` unstable ReLUs), and the boxes' hidden intervals when they are known."""
    deep = depth >= max_depth
    if packed is None or fwd is None or not can_check:
        return deep, None
    pre = _unpack(packed, [w.shape[0] for w in fwd.W[:-1]])
    return deep | ((_unstable(pre) <= threshold) & (depth >= LEAF_MIN_DEPTH)), pre


class _LeafPolicy:
    """The unstable-ReLU count up to which a sub-box goes to the MILP, learnt on the instance: how
    hard a MILP of a given size is differs by orders of magnitude between instances, while the
    split's cost per box does not. A leaf above ``LEAF_UNSTABLE`` gets ``LEAF_TRY_SECONDS``; a
    fast MILP raises the threshold by one (up to ``LEAF_MAX_UNSTABLE``), a slow or unfinished one
    lowers it below the leaf's count (not below ``LEAF_UNSTABLE``)."""

    def __init__(self) -> None:
        self.threshold = LEAF_UNSTABLE

    @staticmethod
    def seconds(unstable: int) -> float:
        return LEAF_TRY_SECONDS if unstable > LEAF_UNSTABLE else LEAF_SECONDS

    def update(self, unstable: int, seconds: float, decided: bool) -> None:
        if decided and seconds < LEAF_FAST:
            if unstable >= self.threshold - 1:
                self.threshold = min(LEAF_MAX_UNSTABLE, self.threshold + 1)
        elif unstable > LEAF_UNSTABLE and (not decided or seconds > LEAF_TRY_SECONDS / 2):
            self.threshold = max(LEAF_UNSTABLE, min(self.threshold, unstable - 1))


def _unstable(pre: list[Interval]) -> torch.Tensor:
    """Unstable ReLUs per box."""
    return sum((((a < 0) & (b > 0)).sum(1) for a, b in pre), torch.zeros(pre[0][0].shape[0], dtype=torch.long,
                                                                          device=pre[0][0].device))


def _settle_leaves(fwd: ForwardBounds | None, lo: torch.Tensor, hi: torch.Tensor, depth: torch.Tensor,
                   deep: torch.Tensor, pre: list[Interval] | None, G_t: torch.Tensor, h_t: torch.Tensor, tol: float,
                   any_row: bool, leaf_check: LeafCheck | None, max_depth: int, deadline: float,
                   stats: dict[str, int], policy: _LeafPolicy) -> tuple[SplitOutcome | None, torch.Tensor]:
    """The leaves ``deep`` of a step: first bounded again with ``LEAF_ALPHA_STEPS`` slope steps (a
    MILP costs 10-200 ms, the steps well under 1 ms per box: on ACAS Xu phi2 (N4,2) they closed a
    quarter of the leaves), then the complete check. Returns an outcome that ends the search, or None and
    which boxes of the step stay open to be split (the non-leaves and the leaves to split again)."""
    idx = deep.nonzero().flatten()
    sub_pre = None if pre is None else [(a[idx], b[idx]) for a, b in pre]
    if fwd is not None and sub_pre is not None and LEAF_ALPHA_STEPS > 0:
        margin = fwd.tighten(lo[idx], hi[idx], G_t, h_t, sub_pre, tol=tol, steps=LEAF_ALPHA_STEPS, any_row=any_row)
        stats["alpha_closed"] = stats.get("alpha_closed", 0) + int((margin > tol).sum())
        idx = idx[margin <= tol]
        sub_pre = [(a[margin <= tol], b[margin <= tol]) for a, b in sub_pre]
    keep = ~deep
    if idx.numel() == 0:
        return None, keep
    done, again = _check_leaves(lo[idx], hi[idx], sub_pre, depth[idx], leaf_check, max_depth, deadline, stats,
                                policy)
    keep[idx[again]] = True
    return done, keep


def _check_leaves(lo: torch.Tensor, hi: torch.Tensor, pre: list[Interval] | None, depth: torch.Tensor,
                  leaf_check: LeafCheck | None, max_depth: int, deadline: float, stats: dict[str, int],
                  policy: _LeafPolicy | None = None) -> tuple[SplitOutcome | None, torch.Tensor]:
    """The complete check of the leaves: an outcome when one of them decides (a counterexample) or
    stops the search (unknown), else None and which leaves to split again (undecided in their
    time and shallower than ``max_depth``); every other leaf is certified."""
    again = torch.zeros(lo.shape[0], dtype=torch.bool, device=lo.device)
    if leaf_check is None:
        return SplitOutcome("unknown", reason=f"sub-boxes remain open at depth {max_depth}", stats=stats), again
    policy = policy or _LeafPolicy()
    counts = _unstable(pre).tolist() if pre is not None else [LEAF_UNSTABLE] * lo.shape[0]
    for j in range(lo.shape[0]):
        left = deadline - time.perf_counter()
        if left <= 0:
            return SplitOutcome("unknown", reason="time limit reached in the MILP on sub-boxes", stats=stats), again
        stats["milp_leaves"] += 1
        splittable = int(depth[j]) < max_depth
        t0 = time.perf_counter()
        status, x, yv = leaf_check(lo[j:j + 1], hi[j:j + 1], None if pre is None else
                                   [(a[j:j + 1], b[j:j + 1]) for a, b in pre],
                                   min(left, policy.seconds(counts[j])) if splittable else left)
        policy.update(counts[j], time.perf_counter() - t0, status in ("certified", "violated"))
        if status == "violated":
            return SplitOutcome("violated", x=x, y=yv, reason="found by the MILP on a sub-box", stats=stats), again
        if status != "certified":
            if not splittable or time.perf_counter() > deadline:
                return SplitOutcome("unknown", reason=f"the MILP on a sub-box was inconclusive ({status})",
                                    stats=stats), again
            again[j] = True  # too slow, or a solution only within the solver's slack: look closer
    return None, again


def _choose_split(c_margin: torch.Tensor, c_open: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                  dims: torch.Tensor, margin: torch.Tensor, region_width: torch.Tensor) -> torch.Tensor:
    """Indices (into the halves of ``_halves``) of the open halves of each box's chosen split: the
    split whose worse half is the safest (ReLU-aware: both halves were bounded, so an input that
    untangles hidden neurons wins even when its coefficient in the output bound is small); a box
    with no improving split halves its relatively widest input."""
    n, k = dims.shape
    score = torch.where(c_open, c_margin, torch.full_like(c_margin, float("inf"))).reshape(n, k, 2).amin(2)
    width = (hi - lo).reshape(n, -1).gather(1, dims)
    rel = width / region_width.clamp(min=1e-300)[dims]
    # an input much narrower (relative to the region) than the box's widest is not halved again:
    # a split that gains a rounding error's worth would otherwise win for ever (ACAS Xu phi2 on
    # N3,3 halved one input 25 times, to 3e-8, and never another that was still as wide as the region)
    narrow = rel < rel.amax(1, keepdim=True) * MIN_REL_WIDTH
    score = torch.where((width > 0) & ~narrow, score, torch.full_like(score, -float("inf")))
    pick = score.argmax(1)
    stuck = score.amax(1) <= margin + MIN_GAIN * margin.abs()
    if bool(stuck.any()):
        pick = torch.where(stuck, rel.argmax(1), pick)
    chosen = (torch.arange(n, device=lo.device) * k + pick).repeat_interleave(2) * 2 + torch.arange(
        2, device=lo.device).repeat(n)
    return chosen[c_open[chosen]]


def _candidate_count(region_width: torch.Tensor, most: int = TRY_DIMS) -> int:
    return max(1, min(most, int((region_width > 0).sum())))


def _candidates(lo: torch.Tensor, hi: torch.Tensor, coeff: torch.Tensor, region_width: torch.Tensor,
                k: int) -> torch.Tensor:
    """(n, k) inputs to try halving per box: all free inputs when there are at most ``TRY_DIMS``,
    else those ranked highest by relative width plus relative smear (width x |coefficient|)."""
    n = lo.shape[0]
    width = (hi - lo).reshape(n, -1)
    rel = width / region_width.clamp(min=1e-300)
    smear = width * coeff.abs().reshape(n, -1)
    score = rel / rel.amax(1, keepdim=True).clamp(min=1e-300) + smear / smear.amax(1, keepdim=True).clamp(min=1e-300)
    score = torch.where(region_width > 0, score, torch.full_like(score, -1.0))
    return torch.topk(score, k, dim=1).indices


def _halves(lo: torch.Tensor, hi: torch.Tensor, dims: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both halves of every box along each of its candidate inputs, ordered box, candidate, then
    (lower half, upper half): (2 k n, *input_shape) lower and upper corners."""
    n, k = dims.shape
    shape = lo.shape[1:]
    flo = lo.reshape(n, 1, -1).expand(n, k, -1)
    fhi = hi.reshape(n, 1, -1).expand(n, k, -1)
    idx = dims.unsqueeze(2)
    mid = (flo.gather(2, idx) + fhi.gather(2, idx)) / 2
    left_hi = fhi.scatter(2, idx, mid)
    right_lo = flo.scatter(2, idx, mid)
    c_lo = torch.stack([flo, right_lo], 2).reshape(2 * k * n, *shape)
    c_hi = torch.stack([left_hi, fhi], 2).reshape(2 * k * n, *shape)
    return c_lo, c_hi


def _pack(pre: list[Interval]) -> torch.Tensor:
    """The hidden intervals of a batch as one (B, 2 * neurons) tensor, layer by layer."""
    return torch.cat([t for pair in pre for t in pair], 1)


def _unpack(packed: torch.Tensor, widths: list[int]) -> list[Interval]:
    out: list[Interval] = []
    at = 0
    for n in widths:
        out.append((packed[:, at:at + n], packed[:, at + n:at + 2 * n]))
        at += 2 * n
    return out


def _fast_bounds(fwd: ForwardBounds, lo: torch.Tensor, hi: torch.Tensor, depth: torch.Tensor, G_t: torch.Tensor,
                 h_t: torch.Tensor, tol: float,
                 packed: torch.Tensor | None, any_row: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lean CROWN (``forward.ForwardBounds``) with the hidden intervals inherited from the parent
    box; hidden CROWN is recomputed every ``REFRESH_EVERY`` levels (a box that the bounds cannot
    decide is split anyway, and its children start from these intervals)."""
    widths = [w.shape[0] for w in fwd.W[:-1]]
    inherited = None if packed is None else _unpack(packed, widths)
    # optimised slopes pay off on conjunctions (row weights and slopes) and on unions of rows (each
    # open row's slopes alone); on one row they never changed a decision (phi1 on N4,9 and N5,8:
    # the same sub-boxes with 0 or 8 steps) and cost up to half the time
    steps = ALPHA_STEPS if G_t.shape[0] > 1 else 0
    margin, coeff, pre = fwd.bounds(lo, hi, G_t, h_t, inherited, tol=tol, steps=steps,
                                    refresh=depth % REFRESH_EVERY == 0, any_row=any_row)
    return margin, coeff, _pack(pre)


def _pgd_boxes(net64: nn.Module, lo: torch.Tensor, hi: torch.Tensor, margin: torch.Tensor, region_lo: torch.Tensor,
               region_hi: torch.Tensor, unsafe: _Unsafe, G_t: torch.Tensor, h_t: torch.Tensor, *,
               starts: int = PGD_BOXES, steps: int = PGD_BOX_STEPS,
               any_row: bool = False) -> tuple[np.ndarray, np.ndarray] | None:
    """Projected sign-gradient descent on ``max_r (G_r y - h_r)`` inside the least safe boxes; a
    hit is returned only after the plain float64 forward pass confirms it (x, y as numpy)."""
    k = min(starts, lo.shape[0])
    order = torch.argsort(margin)[:k]
    blo, bhi = lo[order], hi[order]
    # half from the centres, half from random points of the same boxes (restarts)
    x = (blo + bhi) / 2
    half = k // 2
    if half:
        gen = torch.Generator(device=lo.device).manual_seed(int(lo.shape[0]))
        u = torch.rand(x[:half].shape, generator=gen, dtype=x.dtype, device=lo.device)
        x = torch.cat([x[: k - half], blo[k - half:] + u * (bhi[k - half:] - blo[k - half:])])
    step0 = (bhi - blo) / 4
    for t in range(steps):
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            y = net64(x).reshape(k, -1)
            v = y @ G_t.T - h_t
            (grad,) = torch.autograd.grad((v.amin(1) if any_row else unsafe_loss(v)).sum(), x)
        with torch.no_grad():
            x = torch.minimum(torch.maximum(x - step0 * (1 - t / steps) * grad.sign(), blo), bhi)
            x = torch.minimum(torch.maximum(x, region_lo), region_hi)
    hit, y = unsafe(x.detach())
    if bool(hit.any()):
        i = int(hit.nonzero()[0])
        return x[i].detach().cpu().numpy(), y[i].cpu().numpy()
    return None


def _take(queue: list[_Boxes], batch: int) -> _Boxes:
    """Up to ``batch`` boxes from the end of the queue (depth first keeps the queue short), drawn
    from as many queued groups as it takes to fill the batch: a step costs about the same for 8
    boxes as for 200, and the groups near the boundary of a tight spec are small."""
    parts: list[_Boxes] = []
    got = 0
    while queue and got < batch:
        item = queue.pop()
        n = item[0].shape[0]
        if n > batch - got:
            cut = batch - got
            queue.append(tuple(None if t is None else t[cut:] for t in item))  # type: ignore[arg-type]
            item = tuple(None if t is None else t[:cut] for t in item)  # type: ignore[assignment]
            n = cut
        parts.append(item)
        got += n
    if len(parts) == 1:
        return parts[0]
    return tuple(None if parts[0][i] is None else torch.cat([p[i] for p in parts])  # type: ignore[misc]
                 for i in range(len(parts[0])))  # type: ignore[return-value]
