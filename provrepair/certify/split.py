"""Input splitting: branch and bound over sub-boxes of a low-dimensional input region.

CROWN bounds of a wide box are loose because many ReLUs are unstable on it; halving the box
along the input that contributes most to the bound (its width times the magnitude of its CROWN
coefficient, the "smear" of ReluVal) makes them tighter. Sub-boxes are processed in batches: each
batch's centres are tried as counterexamples, the bounds decide what they can, and the rest are
split again. Sub-boxes still open at ``max_depth`` go to the complete MILP check, so the search is
complete whenever it finishes within its time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .bounds import BoundPropagator, InputSet, as_tensor
from .points import forward_outputs

__all__ = ["DEFAULT_MAX_DEPTH", "DEFAULT_SPLIT_BATCH", "SplitOutcome", "split_search"]

DEFAULT_MAX_DEPTH = 40
DEFAULT_SPLIT_BATCH = 1024


@dataclass
class SplitOutcome:
    status: str  # certified | violated | unknown
    x: np.ndarray | None = None
    y: np.ndarray | None = None
    reason: str = ""
    stats: dict = field(default_factory=dict)  # boxes, max_depth, milp_leaves


def split_search(prop: BoundPropagator, net64: nn.Module, lower, upper, G, h, *, deadline: float,
                 tol: float, h_rows=None, max_depth: int = DEFAULT_MAX_DEPTH, batch: int = DEFAULT_SPLIT_BATCH,
                 leaf_check: Callable | None = None) -> SplitOutcome:
    """Decide whether some input of the box [lower, upper] (and ``A x <= b`` if ``h_rows``) reaches
    ``G y <= h``. ``leaf_check(lo, hi) -> (status, x, y)`` decides a box at ``max_depth``."""
    shape = prop.input_shape
    lo = as_tensor(lower, prop.device).reshape(1, *shape)
    hi = as_tensor(upper, prop.device).reshape(1, *shape)
    depth = torch.zeros(1, dtype=torch.long)
    G_t = as_tensor(G, prop.device)
    h_t = as_tensor(h, prop.device)
    A_t = b_t = None
    if h_rows is not None:
        A_t = as_tensor(h_rows[0], prop.device)
        b_t = as_tensor(h_rows[1], prop.device)
    stats = {"boxes": 0, "max_depth": 0, "milp_leaves": 0}
    queue = [(lo, hi, depth)]
    while queue:
        if time.perf_counter() > deadline:
            return SplitOutcome("unknown", reason="time limit reached while splitting the input region", stats=stats)
        lo, hi, depth = _take(queue, batch)
        stats["boxes"] += lo.shape[0]
        stats["max_depth"] = max(stats["max_depth"], int(depth.max()))
        # 1. the centres as counterexamples
        centre = (lo + hi) / 2
        inside = torch.ones(lo.shape[0], dtype=torch.bool, device=lo.device)
        if A_t is not None:
            inside = (centre.reshape(lo.shape[0], -1) @ A_t.T <= b_t).all(1)
        y = torch.as_tensor(forward_outputs(net64, centre.cpu().numpy(), torch.float64, 4096))
        hit = ((y @ G_t.cpu().T) <= h_t.cpu()).all(1) & inside.cpu()
        if bool(hit.any()):
            i = int(hit.nonzero()[0])
            return SplitOutcome("violated", x=centre[i].cpu().numpy(), y=y[i].numpy(),
                                reason="the centre of a sub-box reaches the unsafe set", stats=stats)
        # 2. bounds
        nb = prop.bounds(InputSet(lo, hi), G_t, method="crown")
        margin = (nb.lower - h_t).amax(1)
        open_ = margin <= tol
        if A_t is not None:  # sub-boxes entirely outside A x <= b are decided too
            c, r = centre.reshape(lo.shape[0], -1), ((hi - lo) / 2).reshape(lo.shape[0], -1)
            outside = ((c @ A_t.T - r @ A_t.abs().T) > b_t).any(1)
            open_ &= ~outside
        if not bool(open_.any()):
            continue
        lo, hi, depth = lo[open_], hi[open_], depth[open_]
        coeff = nb.coefficients[open_]
        # 3. leaves at max depth go to the complete check
        deep = depth >= max_depth
        if bool(deep.any()):
            if leaf_check is None:
                return SplitOutcome("unknown", reason=f"sub-boxes remain open at depth {max_depth}", stats=stats)
            for j in deep.nonzero().flatten().tolist():
                stats["milp_leaves"] += 1
                status, x, yv = leaf_check(lo[j:j + 1], hi[j:j + 1])
                if status == "violated":
                    return SplitOutcome("violated", x=x, y=yv, reason="found by the MILP on a sub-box", stats=stats)
                if status != "certified":
                    return SplitOutcome("unknown", reason=f"the MILP on a sub-box was inconclusive ({status})",
                                        stats=stats)
            keep = ~deep
            lo, hi, depth, coeff = lo[keep], hi[keep], depth[keep], coeff[keep]
            if lo.shape[0] == 0:
                continue
        # 4. split along the input with the largest smear
        width = (hi - lo).reshape(lo.shape[0], -1)
        smear = width * coeff.abs().amax(1).reshape(lo.shape[0], -1)
        smear = torch.where(width > 0, smear + 1e-12 * width, torch.full_like(smear, -1.0))
        dim = smear.argmax(1)
        rows = torch.arange(lo.shape[0], device=lo.device)
        mid = (lo.reshape(lo.shape[0], -1)[rows, dim] + hi.reshape(lo.shape[0], -1)[rows, dim]) / 2
        left_hi = hi.reshape(lo.shape[0], -1).clone()
        left_hi[rows, dim] = mid
        right_lo = lo.reshape(lo.shape[0], -1).clone()
        right_lo[rows, dim] = mid
        queue.append((torch.cat([lo, right_lo.reshape(lo.shape)]), torch.cat([left_hi.reshape(hi.shape), hi]),
                      torch.cat([depth + 1, depth + 1])))
    return SplitOutcome("certified", reason="every sub-box is certified by CROWN bounds or the MILP", stats=stats)


def _take(queue: list, batch: int):
    """Up to ``batch`` boxes from the end of the queue (depth first keeps the queue short)."""
    lo, hi, depth = queue.pop()
    if lo.shape[0] > batch:
        queue.append((lo[batch:], hi[batch:], depth[batch:]))
        return lo[:batch], hi[:batch], depth[:batch]
    return lo, hi, depth
