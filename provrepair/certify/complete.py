"""An independent complete check of a box against an output property (issue 21).

It shares nothing with the repairer and nothing with the rest of the certification engine: the
network is read as plain float64 matrices (``Normalize`` folded into the first ``Linear``), and

1. the box is split (branch and bound on the input) with DeepPoly linear bounds written here
   (plain numpy back-substitution through the triangle relaxation of every ReLU, each layer's
   bounds from the layers below it; no code shared with ``bounds.py``/``forward.py``);
2. a sub-box whose bounds leave few ReLUs unstable, or that reaches ``MAX_DEPTH``, is decided by
   an exact MILP (big-M from this module's own bounds) solved by ``scipy.optimize.milp`` (HiGHS)
   with the unsafe set widened by ``UNSAFE_SLACK`` (so an infeasible program proves the real set
   unreachable despite solver tolerances);
3. every counterexample (a sub-box centre, or a MILP solution moved into its sub-box) is
   re-validated by a plain float64 forward pass before it counts.

So the verdict ``certified`` rests on float64 interval arithmetic and one MILP solver; a bug in
CROWN or in the repairer's hulls cannot make it wrong. Only boxes and fully connected ReLU
networks (``Linear``/``ReLU``/``Flatten``/``Normalize``) are supported; anything else is refused.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, milp
from torch import nn

from ..errors import UnsupportedLayerError
from ..specs.regions import Box, OutputProperty, Region

__all__ = ["COMPLETE_METHOD", "CompleteVerdict", "affine_chain", "certify_box_complete"]

#: The name this check reports as ``decided_by``.
COMPLETE_METHOD = "split+milp (independent)"
#: How far the MILP widens the unsafe set ``G y <= h`` (above HiGHS's feasibility tolerance).
UNSAFE_SLACK = 1e-5
#: A bound must clear the unsafe threshold by more than this (float64 rounding stays far below).
TOLERANCE = 1e-7
#: A sub-box with at most this many unstable ReLUs goes to the MILP instead of being split.
LEAF_UNSTABLE = 16
MAX_DEPTH = 16
#: A leaf MILP gets at most this many seconds; one that runs out (or whose solution does not
#: re-validate) is split again, down to ``HARD_DEPTH``.
LEAF_SECONDS = 5.0
HARD_DEPTH = 40
#: Every this many levels a sub-box is split along its widest input instead of its largest smear.
ALTERNATE = 4
BATCH = 512

_F = npt.NDArray[np.float64]


@dataclass
class CompleteVerdict:
    status: str  # certified | violated | unknown
    decided_by: str
    reason: str
    seconds: float = 0.0
    counterexample: _F | None = None
    output: _F | None = None
    stats: dict[str, int] = field(default_factory=dict)  # boxes, milp_leaves, max_depth

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "decided_by": self.decided_by, "reason": self.reason,
                "seconds": self.seconds, "stats": self.stats,
                "counterexample": None if self.counterexample is None else self.counterexample.tolist()}


def affine_chain(net: nn.Module) -> list[tuple[_F, _F]]:
    """The network as float64 ``(W, b)`` pairs with a ReLU between consecutive pairs."""
    from ..models.layers import Normalize

    layers: list[tuple[_F, _F]] = []
    relu_after: list[bool] = []
    pre: tuple[_F, _F] | None = None  # a pending input normalisation x -> (x - mean) / std
    for i, m in enumerate(net.children() if isinstance(net, nn.Sequential) else [net]):
        if isinstance(m, (nn.Flatten, nn.Identity, nn.Dropout)):
            continue
        if isinstance(m, Normalize) and not layers and pre is None:
            mean_t, std_t = m.get_buffer("mean"), m.get_buffer("std")
            pre = (mean_t.detach().double().numpy().reshape(-1), std_t.detach().double().numpy().reshape(-1))
        elif isinstance(m, nn.Linear):
            if layers and not relu_after[-1]:
                raise UnsupportedLayerError(f"module {i}: two Linear layers without a ReLU between them; the "
                                            "independent complete check supports Linear/ReLU chains only")
            W = m.weight.detach().double().numpy().copy()
            b = (m.bias.detach().double().numpy().copy() if m.bias is not None else np.zeros(W.shape[0]))
            if pre is not None and not layers:
                mean, std = pre
                W = W / std[None, :] if std.size > 1 else W / float(std.reshape(-1)[0])
                mean_full = np.broadcast_to(mean, (W.shape[1],))
                b = b - W @ mean_full
            layers.append((W, b))
            relu_after.append(False)
        elif isinstance(m, nn.ReLU) and layers and not relu_after[-1]:
            relu_after[-1] = True
        else:
            raise UnsupportedLayerError(
                f"module {i} ({type(m).__name__}): the independent complete check supports fully connected ReLU "
                "networks (Normalize, Flatten, Linear, ReLU) only; use provrepair.certify_regions for this network")
    if not layers or relu_after[-1]:
        raise UnsupportedLayerError("the independent complete check needs a network that ends in a Linear layer")
    return layers


def _forward(layers: list[tuple[_F, _F]], x: _F) -> _F:
    h = x
    for i, (W, b) in enumerate(layers):
        h = h @ W.T + b
        if i < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return h


def _conc(L: _F, c: _F, lo: _F, hi: _F, lower: bool) -> _F:
    """min (``lower``) or max over the boxes of ``L x + c`` (L: (B, r, d), c: (B, r))."""
    pos, neg = np.maximum(L, 0), np.minimum(L, 0)
    a, b = (lo, hi) if lower else (hi, lo)
    out: _F = np.einsum("brd,bd->br", pos, a) + np.einsum("brd,bd->br", neg, b) + c
    return out


def _back(layers: list[tuple[_F, _F]], relax: list[tuple[_F, _F, _F]], top: int, C: _F, lo: _F, hi: _F,
          lower: bool) -> tuple[_F, _F]:
    """Back-substitution (DeepPoly) of ``C z_top`` (C: (B, r, n_top), z_top the pre-activation of
    layer ``top``) through the relaxed ReLUs ``relax[j] = (alpha, s, t)`` (``alpha z <= relu(z)
    <= s z + t``) down to the input; returns the bound per box and row, and its input coefficients."""
    L = C
    c = np.zeros(C.shape[:2])
    for j in range(top, -1, -1):
        W, b = layers[j]
        c = c + L @ b
        L = L @ W  # coefficients on the input of layer j: a_{j-1}, or x when j == 0
        if j == 0:
            break
        alpha, s, t = relax[j - 1]
        pos, neg = np.maximum(L, 0), np.minimum(L, 0)
        if lower:  # positive coefficients take the lower relaxation, negative ones the upper
            c = c + np.einsum("brn,bn->br", neg, t)
            L = pos * alpha[:, None, :] + neg * s[:, None, :]
        else:
            c = c + np.einsum("brn,bn->br", pos, t)
            L = pos * s[:, None, :] + neg * alpha[:, None, :]
    return _conc(L, c, lo, hi, lower), L


def _symbolic(layers: list[tuple[_F, _F]], lo: _F, hi: _F, G: _F) -> tuple[_F, _F, list[tuple[_F, _F]]]:
    """Back-substituted linear bounds over a batch of boxes ``(B, d)``: the lower bound of every row
    of ``G y`` per box ``(B, r)``, its input coefficients ``(B, r, d)``, and every hidden layer's
    pre-activation bounds ``[(l, u)]`` (each ``(B, n)``), each layer's bounds from the exact
    back-substitution through the ReLUs below it (DeepPoly's triangle relaxation)."""
    B = lo.shape[0]
    relax: list[tuple[_F, _F, _F]] = []
    pre: list[tuple[_F, _F]] = []
    for k in range(len(layers) - 1):
        n = layers[k][0].shape[0]
        eye = np.broadcast_to(np.eye(n), (B, n, n))
        low, _ = _back(layers, relax, k, eye, lo, hi, True)
        up, _ = _back(layers, relax, k, eye, lo, hi, False)
        pad = 1e-9 * (1.0 + np.abs(low) + np.abs(up))  # covers float64 rounding in the sums
        low, up = np.minimum(low - pad, up + pad), up + pad
        pre.append((low, up))
        dead, unstable = up <= 0, (low < 0) & (up > 0)
        s = np.where(unstable, up / np.where(unstable, up - low, 1.0), np.where(dead, 0.0, 1.0))
        t = np.where(unstable, -s * low, 0.0)
        alpha = np.where(dead, 0.0, np.where(unstable, (up > -low).astype(np.float64), 1.0))
        relax.append((alpha, s, t))
    C = np.broadcast_to(G, (B, *G.shape))
    lower, Lg = _back(layers, relax, len(layers) - 1, C, lo, hi, True)
    return lower - 1e-9 * (1.0 + np.abs(lower)), Lg, pre


def _milp(layers: list[tuple[_F, _F]], lo: _F, hi: _F, pre: list[tuple[_F, _F]], G: _F, h: _F,
          time_limit: float) -> tuple[str, _F | None]:
    """Exact MILP of one sub-box: is ``G y <= h + UNSAFE_SLACK`` reachable? Returns
    (infeasible | feasible | unknown, the input of a solution)."""
    d = lo.size
    # variables: x (d), then per hidden layer: z (pre-activation, n), r (ReLU output, n), a (binary, n)
    n_h = [W.shape[0] for W, _ in layers[:-1]]
    offs, at = [], d
    for n in n_h:
        offs.append(at)
        at += 3 * n
    nv = at
    lb = np.full(nv, -np.inf)
    ub = np.full(nv, np.inf)
    lb[:d], ub[:d] = lo, hi
    integrality = np.zeros(nv)
    rows: list[sp.spmatrix] = []
    rlo: list[_F] = []
    rhi: list[_F] = []
    prev = np.arange(d)  # columns of the previous layer's output
    for k, n in enumerate(n_h):
        W, b = layers[k]
        z, r, a = offs[k] + np.arange(n), offs[k] + n + np.arange(n), offs[k] + 2 * n + np.arange(n)
        l, u = pre[k]
        lb[z], ub[z] = l, u
        lb[r], ub[r] = np.maximum(l, 0), np.maximum(u, 0)
        lb[a], ub[a] = 0, 1
        # z = W prev + b
        M = sp.lil_matrix((n, nv))
        M[:, prev] = W
        M[np.arange(n), z] = -1.0
        rows.append(M.tocsr())
        rlo.append(-b)
        rhi.append(-b)
        act, dead = l >= 0, u <= 0
        unst = ~act & ~dead
        # stable neurons: r = z (active) or r = 0 (dead, via its bounds), a fixed
        ub[a[dead]] = 0
        lb[a[act]] = 1
        idx = np.flatnonzero(act)
        if idx.size:
            E = sp.csr_matrix((np.r_[np.ones(idx.size), -np.ones(idx.size)],
                               (np.r_[np.arange(idx.size), np.arange(idx.size)], np.r_[r[idx], z[idx]])),
                              shape=(idx.size, nv))
            rows.append(E)
            rlo.append(np.zeros(idx.size))
            rhi.append(np.zeros(idx.size))
        ui = np.flatnonzero(unst)
        if ui.size:
            m = ui.size
            e = np.arange(m)
            integrality[a[ui]] = 1
            # r - z >= 0 ; r - u a <= 0 ; r - z - l a <= -l
            R1 = sp.csr_matrix((np.r_[np.ones(m), -np.ones(m)], (np.r_[e, e], np.r_[r[ui], z[ui]])), shape=(m, nv))
            R2 = sp.csr_matrix((np.r_[np.ones(m), -u[ui]], (np.r_[e, e], np.r_[r[ui], a[ui]])), shape=(m, nv))
            R3 = sp.csr_matrix((np.r_[np.ones(m), -np.ones(m), -l[ui]], (np.r_[e, e, e], np.r_[r[ui], z[ui], a[ui]])),
                               shape=(m, nv))
            rows += [R1, R2, R3]
            rlo += [np.zeros(m), np.full(m, -np.inf), np.full(m, -np.inf)]
            rhi += [np.full(m, np.inf), np.zeros(m), -l[ui]]
        prev = r
    W, b = layers[-1]
    GW, Gb = G @ W, G @ b
    M = sp.lil_matrix((G.shape[0], nv))
    M[:, prev] = GW
    rows.append(M.tocsr())
    rlo.append(np.full(G.shape[0], -np.inf))
    rhi.append(h - Gb + UNSAFE_SLACK)
    A = sp.vstack(rows).tocsr()
    res = milp(np.zeros(nv), constraints=LinearConstraint(A, np.concatenate(rlo), np.concatenate(rhi)),
               integrality=integrality, bounds=Bounds(lb, ub),
               options={"time_limit": max(0.05, time_limit), "presolve": True})
    if res.status == 2:
        return "infeasible", None
    if res.x is not None and res.status in (0, 1):
        return "feasible", np.asarray(res.x[:d], dtype=np.float64)
    return "unknown", None


def _bisect(s: npt.NDArray[np.int64], lo: _F, hi: _F, depth: npt.NDArray[np.int64], slack: _F, Lg: _F,
            scale: _F) -> tuple[_F, _F, npt.NDArray[np.int64]]:
    """Both halves of the sub-boxes ``s``: bisected along the input of largest width x
    |coefficient| of the least safe row (``slack``: bound minus threshold per row), and every
    ALTERNATE-th level along the widest input relative to the region (``scale``): the smear alone
    can split one input forever while another stays wide."""
    rows = np.arange(s.size)
    best = slack[s].argmax(1)
    coeff = np.abs(Lg[s, best, :])
    width = hi[s] - lo[s]
    smear = np.where(width > 0, width * (coeff + 1e-12), -1.0).argmax(1)
    widest = (width / scale).argmax(1)
    dim = np.where(depth[s] % ALTERNATE == ALTERNATE - 1, widest, smear)
    mid = (lo[s, dim] + hi[s, dim]) / 2
    lhi, rlo = hi[s].copy(), lo[s].copy()
    lhi[rows, dim], rlo[rows, dim] = mid, mid
    return (np.concatenate([lo[s], rlo]), np.concatenate([lhi, hi[s]]),
            np.concatenate([depth[s] + 1, depth[s] + 1]))


def certify_box_complete(net: nn.Module, region: Region, prop: OutputProperty, *, timeout: float = 60.0,
                         leaf_unstable: int = LEAF_UNSTABLE, max_depth: int = MAX_DEPTH,
                         batch: int = BATCH) -> CompleteVerdict:
    """Decide whether some input of the box ``region`` reaches an unsafe disjunct of ``prop``
    (see the module docstring). ``timeout``: seconds for the whole search (then ``unknown``)."""
    t0 = time.perf_counter()
    deadline = t0 + timeout
    if not isinstance(region, Box):
        raise UnsupportedLayerError(f"the independent complete check takes boxes, got a {type(region).__name__}")
    layers = affine_chain(net)
    lo0 = np.asarray(region.lower, dtype=np.float64).reshape(-1)
    hi0 = np.asarray(region.upper, dtype=np.float64).reshape(-1)
    scale = np.where(hi0 > lo0, hi0 - lo0, 1.0)
    stats = {"boxes": 0, "milp_leaves": 0, "max_depth": 0}
    used_milp = False

    def done(status: str, reason: str, x: _F | None = None, y: _F | None = None) -> CompleteVerdict:
        how = COMPLETE_METHOD if used_milp else "split (independent DeepPoly bounds)"
        return CompleteVerdict(status, how if status != "unknown" else "", reason, time.perf_counter() - t0,
                               x, y, stats)

    for G, h in prop.disjuncts:
        G = np.asarray(G, dtype=np.float64)
        h = np.asarray(h, dtype=np.float64)
        # the disjunct G y <= h is out of reach where some row, or the rows' mean, is bounded
        # above h: mean(G y - h) > 0 forces a row > 0 (it helps where no one row wins everywhere)
        Gb, hb = (np.vstack([G, G.mean(0)]), np.append(h, h.mean())) if G.shape[0] > 1 else (G, h)
        queue = [(lo0[None], hi0[None], np.zeros(1, dtype=np.int64))]
        while queue:
            if time.perf_counter() > deadline:
                return done("unknown", f"time limit ({timeout:g} s) reached after {stats['boxes']} sub-boxes")
            lo, hi, depth = queue.pop()
            if lo.shape[0] > batch:
                queue.append((lo[batch:], hi[batch:], depth[batch:]))
                lo, hi, depth = lo[:batch], hi[:batch], depth[:batch]
            stats["boxes"] += lo.shape[0]
            stats["max_depth"] = max(stats["max_depth"], int(depth.max()))
            centre = (lo + hi) / 2
            y = _forward(layers, centre)
            bad = prop.violated(y) >= 0
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                return done("violated", "a sub-box centre reaches the unsafe set (float64 forward pass)",
                            centre[i], y[i])
            low, Lg, pre = _symbolic(layers, lo, hi, Gb)
            margin = (low - hb).max(1)
            open_ = margin <= TOLERANCE
            if not open_.any():
                continue
            sel = np.flatnonzero(open_)
            unstable = sum(((l[sel] < 0) & (u[sel] > 0)).sum(1) for l, u in pre)
            leaf = (unstable <= leaf_unstable) | (depth[sel] >= max_depth)
            split: list[int] = []
            for j, i in enumerate(sel.tolist()):
                if not leaf[j]:
                    split.append(int(i))
                    continue
                used_milp = True
                stats["milp_leaves"] += 1
                left = deadline - time.perf_counter()
                if left <= 0:
                    return done("unknown", f"time limit ({timeout:g} s) reached in the MILP leaves")
                status, x = _milp(layers, lo[i], hi[i], [(l[i], u[i]) for l, u in pre], G, h, min(left, LEAF_SECONDS))
                if status == "infeasible":
                    continue
                if status == "feasible" and x is not None:
                    x = np.clip(x, lo[i], hi[i])
                    yx = _forward(layers, x[None])[0]
                    if prop.violated(yx[None])[0] >= 0:
                        return done("violated", "an exact MILP solution on a sub-box, re-validated by a float64 "
                                    "forward pass", x, yx)
                if depth[i] < HARD_DEPTH:  # a solution within the solver's slack only, or a slow MILP: look closer
                    split.append(int(i))
                    continue
                return done("unknown", f"the MILP on a sub-box at depth {int(depth[i])} was inconclusive ({status})")
            if not split:
                continue
            queue.append(_bisect(np.asarray(split), lo, hi, depth, low - hb, Lg, scale))
    return done("certified", "no unsafe disjunct is reachable: every sub-box is excluded by DeepPoly bounds "
                + ("or an exact MILP" if used_milp else ""))
