"""An independent complete check of a box against an output property (issue 21).

It shares nothing with the repairer and nothing with the rest of the certification engine: the
network is read as plain float64 matrices (``Normalize`` folded into the first ``Linear``), and

1. the box is split (branch and bound on the input), thousands of sub-boxes per step in batched
   float64 torch, with linear bounds written here: every hidden layer's interval from interval
   arithmetic and a back-substitution (DeepPoly/CROWN style) through the ReLU relaxations below
   it, intersected with the parent box's intervals; then the property's rows back-substituted
   the same way (no code shared with ``bounds.py``/``forward.py``/``split.py``). The property
   rows' back-substitution also concretises its partial sum on each layer's ReLU-output intervals
   and keeps the best bound (for the hidden neurons it costs a third more time per sub-box and
   saves a few percent of the sub-boxes: not done). A sub-box that these bounds (default lower
   ReLU slopes 0 or 1) leave open gets a few projected gradient steps on per-row lower slopes ``alpha`` in [0, 1] and on
   the weights of a convex combination of the property's rows (the alpha-CROWN idea, written
   here), while that closes enough sub-boxes to pay. It is bisected along the input of largest
   width x |coefficient| of its least unsafe row;
2. a sub-box whose bounds leave at most ``LEAF_UNSTABLE`` ReLUs unstable, or that reaches
   ``MAX_DEPTH``, is decided by an exact MILP (big-M from this module's own bounds) solved by
   ``scipy.optimize.milp`` (HiGHS) with the unsafe set widened by ``UNSAFE_SLACK`` (so an
   infeasible program proves the real set unreachable despite solver tolerances);
3. every counterexample (a sub-box's centre or the corner its bound points at, or a MILP
   solution moved into its sub-box) is re-validated by a plain float64 forward pass before it
   counts.

So the verdict ``certified`` rests on float64 interval arithmetic and one MILP solver; a bug in
CROWN or in the repairer's hulls cannot make it wrong. Only boxes and fully connected ReLU
networks (``Linear``/``ReLU``/``Flatten``/``Normalize``) are supported; anything else is refused.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import torch
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
LEAF_UNSTABLE = 0
MAX_DEPTH = 40
#: A leaf MILP gets at most this many seconds; one that runs out (or whose solution does not
#: re-validate) is split again, down to ``HARD_DEPTH``.
LEAF_SECONDS = 5.0
HARD_DEPTH = 60
#: Projected gradient steps on the lower ReLU slopes (and the rows' weights) of a sub-box that the
#: default slopes leave undecided, before it is split (0: default slopes only); their step size.
ALPHA_STEPS = 8
ALPHA_LR = 0.2
#: After this many sub-boxes given optimised slopes, they are kept only while they close at least
#: this share of the sub-boxes they are given.
ALPHA_TRIAL = 256
ALPHA_PAYS = 0.1
#: A sub-box is split along its widest input (relative to the region) instead of its largest
#: smear when the smear's input is this many times narrower.
NARROW = 64.0
#: From this depth on, a sub-box whose smear input is not its widest is split along whichever of
#: the two bounds its halves better (both tried).
TRY_DEPTH = 6
BATCH = 4096
#: Near the deadline a batch shrinks to what the time left allows, down to this many sub-boxes.
MIN_BATCH = 64
#: Every concretised bound is widened by this times its magnitude (the sum of the absolute values of
#: its terms): float64's accumulated rounding for these sizes is orders of magnitude below it.
ROUNDING = 1e-9

_F = npt.NDArray[np.float64]
#: The network's affine layers as float64 tensors (W, b), ReLU between them.
_Net: TypeAlias = list[tuple[torch.Tensor, torch.Tensor]]


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


def _tensors(layers: list[tuple[_F, _F]]) -> _Net:
    """Per layer: ``W`` and ``b`` as float64 tensors."""
    return [(torch.as_tensor(W, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)) for W, b in layers]


def _pad(mag: torch.Tensor) -> torch.Tensor:
    """The outward margin that covers float64 rounding in a sum of terms of total magnitude ``mag``."""
    return ROUNDING * (1.0 + mag)


def _relax(l: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ReLU relaxation ``alpha z <= relu(z) <= s z + t`` on ``[l, u]`` (any shape): exact for a
    stable neuron; for an unstable one the chord above and slope 0 or 1 below (whichever is tighter)."""
    dead, unstable = u <= 0, (l < 0) & (u > 0)
    s = torch.where(unstable, u / torch.where(unstable, u - l, torch.ones_like(u)), (~dead).to(u.dtype))
    t = torch.where(unstable, -s * l, torch.zeros_like(u))
    alpha = torch.where(unstable, (u > -l).to(u.dtype), (~dead).to(u.dtype))
    return alpha, s, t


def _back(net: _Net,
          relax: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], k: int, C: torch.Tensor, c: torch.Tensor,
          r: torch.Tensor, pre: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower bound over the boxes ``x = c + r e`` of ``C z_k`` (``C``: (1 or B, q, n_k); ``z_k`` the
    pre-activation of layer ``k``), by back-substitution through the relaxations ``relax[j] =
    (alpha, s, t)`` (each (B, n_j): ``alpha z <= relu(z) <= s z + t``) of the layers below; an
    ``alpha`` of shape (B, q, n_j) gives every row its own lower slopes. Given the intervals ``pre``
    of those layers, the partial sum is also concretised on every layer's ReLU outputs (interval
    arithmetic there): the best of these bounds is kept (a back-substitution can be looser than
    the interval of a layer it passes, e.g. a row ``v . relu(z) + b`` with ``v >= 0`` is ``>= b``).
    Returns the bound (B, q), widened to cover rounding, and its coefficients on ``x`` (B, q, d)."""
    W, b = net[k]
    const = C @ b
    mag = C.abs() @ b.abs()  # the sum of the absolute values of every term added so far, per row
    lam = C @ W
    best: torch.Tensor | None = None
    for j in range(k - 1, -1, -1):
        alpha, s, t = relax[j]  # (B, n_j) each; alpha may be (B, q, n_j): one lower slope per row
        lp = lam.clamp(min=0)
        if pre is not None:  # lam . relu(z_j) >= lam+ . relu(l_j) + lam- . relu(u_j)
            hl, hu = (pre[j][0].clamp(min=0).unsqueeze(-1), pre[j][1].clamp(min=0).unsqueeze(-1))
            here = const + (lp @ hl + (lam - lp) @ hu).squeeze(-1)
            here = here - _pad(mag + (lam.abs() @ hu).squeeze(-1))
            best = here if best is None else torch.maximum(best, here)
        # lam+ alpha + lam- s == lam s + lam+ (alpha - s); its row sums of |.|: lam+ (alpha + s) - lam s
        if alpha.dim() == 2:
            a = torch.stack([t, alpha + s], -1)  # (B, n, 2)
            P, N = lp @ a, lam @ torch.stack([t, s], -1)  # (B, q, 2): lam+ . t, |.| part; lam . t, lam . s
            lam = lam * s.unsqueeze(1) + lp * (alpha - s).unsqueeze(1)
        else:
            N = lam @ torch.stack([t, s], -1)
            P = torch.stack([(lp @ t.unsqueeze(-1)).squeeze(-1), (lp * (alpha + s.unsqueeze(1))).sum(-1)], -1)
            lam = lam * s.unsqueeze(1) + lp * (alpha - s.unsqueeze(1))
        tt = N[..., 0] - P[..., 0]  # lam- . t
        absrow = P[..., 1] - N[..., 1]  # sum_n |lam_new|
        W, b = net[j]
        q = lam.shape[1]
        flat = lam.reshape(-1, lam.shape[2])  # one matrix product for every box and row
        const = const + tt + (flat @ b).reshape(-1, q)
        mag = mag + tt.abs() + absrow * float(b.abs().max()) + (lp @ t.unsqueeze(-1)).squeeze(-1)
        lam = (flat @ W).reshape(-1, q, W.shape[1])
    lc = (lam @ c.unsqueeze(-1)).squeeze(-1)
    la = lam.abs()
    rad = (la @ r.unsqueeze(-1)).squeeze(-1)
    mag = mag + rad + (la @ c.abs().unsqueeze(-1)).squeeze(-1)
    const = const + lc
    low = const - rad - _pad(mag)
    return (low if best is None else torch.maximum(low, best)), lam


def _bounds(net: _Net, c: torch.Tensor, r: torch.Tensor,
            G: torch.Tensor, known: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
            ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Sound bounds over a batch of boxes ``x = c + r e``, ``e`` in ``[-1, 1]^d`` (``c``, ``r``: (B, d)).

    Layer by layer, every hidden neuron's pre-activation interval is the tighter of plain interval
    arithmetic from the layer below and a back-substitution (DeepPoly/CROWN style) of the neuron
    through the ReLU relaxations of all the layers below, down to the input; then the rows of
    ``G`` (the output property) are back-substituted the same way. All in batched float64 torch.
    ``known``: intervals already proven for these boxes (a parent box's), intersected in.

    Returns the lower bound of every row of ``G y`` per box (B, q), its coefficients on the input
    ``x`` (B, q, d) and every hidden layer's pre-activation interval ``[(l, u)]`` (each (B, n)).
    Every concretised bound is widened by ``ROUNDING`` times its magnitude."""
    pre: list[tuple[torch.Tensor, torch.Tensor]] = []
    relax: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for k in range(len(net) - 1):
        W, b = net[k]
        n = W.shape[0]
        if k:  # interval arithmetic from the layer below
            pl, pu = pre[-1]
            al, au = pl.clamp(min=0), pu.clamp(min=0)
        else:
            al, au = c - r, c + r
        mid, half = (au + al) / 2, (au - al) / 2
        centre, spread = mid @ W.T + b, half @ W.abs().T
        pad = _pad(spread + mid.abs() @ W.abs().T + b.abs())
        l, u = centre - spread - pad, centre + spread + pad
        if known is not None:
            l, u = torch.maximum(l, known[k][0]), torch.minimum(u, known[k][1])
        if k:  # back-substitute only the neurons the intervals leave unstable (any box's bound is sound),
            # not concretised on the layers below (ACAS Xu N3,9 phi1: 9,341 sub-boxes in 59 s; 9,137 in 78 s)
            unstable = (l < 0) & (u > 0)
            m = int(unstable.sum(1).max())
            if m:
                idx = torch.argsort((~unstable).to(torch.int8), dim=1, stable=True)[:, :m]  # (B, m)
                rows = torch.eye(n, dtype=torch.float64)[idx]  # (B, m, n)
                both, _ = _back(net, relax, k, torch.cat([rows, -rows], 1), c, r)
                l = l.scatter(1, idx, torch.maximum(l.gather(1, idx), both[:, :m]))
                u = u.scatter(1, idx, torch.minimum(u.gather(1, idx), -both[:, m:]))
        u = torch.maximum(u, l)
        pre.append((l, u))
        relax.append(_relax(l, u))
    low, lam = _back(net, relax, len(net) - 1, G.unsqueeze(0), c, r, pre)
    return low, lam, pre


def _optimised(net: _Net, pre: list[tuple[torch.Tensor, torch.Tensor]], c: torch.Tensor, r: torch.Tensor,
               G: torch.Tensor, h: torch.Tensor, steps: int) -> torch.Tensor:
    """Safety margins of the boxes ``x = c + r e`` against the disjunct ``G y <= h``, with optimised
    lower ReLU slopes: per box and per row, every unstable ReLU's lower bound ``alpha z`` may take any
    ``alpha`` in [0, 1] (``relu(z) >= alpha z`` on the whole real line), so the slopes are improved by
    ``steps`` projected gradient (Adam) steps on the rows' bounds, the hidden intervals ``pre`` (from
    ``_bounds``) held fixed. With more than one row, a last row ``w . (G y - h)`` with weights ``w > 0``
    (a softmax, starting at the mean) is optimised too: it is positive where no output meets every row.

    Returns the best margin met per box and row, (B, q) or (B, q + 1): every one is a sound lower bound
    of ``G_i y - h_i`` (or of ``w . (G y - h)`` for its ``w``), each evaluated with slopes in [0, 1]."""
    B, q = c.shape[0], G.shape[0]
    rows = q + 1 if q > 1 else q
    relax = [_relax(l, u) for l, u in pre]
    free = [t > 0 for _, _, t in relax]  # the unstable neurons (t = -s l > 0): the only ones with a choice
    alphas = [a.unsqueeze(1).expand(B, rows, -1).clone().requires_grad_(True) for a, _, _ in relax]
    logits = torch.zeros(B, q, dtype=torch.float64, requires_grad=q > 1)
    params = alphas + ([logits] if q > 1 else [])
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
    Gb = G.unsqueeze(0).expand(B, q, G.shape[1])
    best = torch.full((B, rows), -torch.inf, dtype=torch.float64)
    for it in range(steps + 1):
        with torch.enable_grad():
            C, thr = Gb, h.unsqueeze(0).expand(B, q)
            if q > 1:
                w = torch.softmax(logits, 1)
                C = torch.cat([C, (w.unsqueeze(1) @ G)], 1)
                thr = torch.cat([thr, (w * h).sum(1, keepdim=True)], 1)
            rel = [(torch.where(m.unsqueeze(1), al, a.unsqueeze(1)), s, t)
                   for al, m, (a, s, t) in zip(alphas, free, relax)]
            low, _ = _back(net, rel, len(net) - 1, C, c, r, pre)
            margin = low - thr
        best = torch.maximum(best, margin.detach())
        if it == steps or bool((best.max(1).values > TOLERANCE).all()):
            break
        grads = torch.autograd.grad(margin.sum(), params)
        with torch.no_grad():
            _ascend(params, grads, moments, it + 1)
            for al in alphas:  # the projection onto [0, 1]
                al.clamp_(0.0, 1.0)
    return best


def _ascend(params: list[torch.Tensor], grads: tuple[torch.Tensor, ...],
            moments: list[tuple[torch.Tensor, torch.Tensor]], step: int) -> None:
    """One Adam ascent step of size ``ALPHA_LR`` (Kingma & Ba, 2015: running means of the gradient
    and of its square, bias-corrected) on each of ``params``, in place."""
    b1, b2 = 0.9, 0.999
    for p, g, (m, v) in zip(params, grads, moments):
        m.mul_(b1).add_((1 - b1) * g)
        v.mul_(b2).add_((1 - b2) * g * g)
        p.add_(ALPHA_LR * (m / (1 - b1 ** step)) / ((v / (1 - b2 ** step)).sqrt() + 1e-12))


def _tighter(net: _Net, pre: list[tuple[torch.Tensor, torch.Tensor]], c: _F, r: _F, sel: npt.NDArray[np.int64],
             G: _F, h: _F, hb: _F, low: _F, steps: int, tally: list[int]) -> npt.NDArray[np.int64]:
    """The boxes ``sel`` (rows of ``c``, ``r``) that the default slopes leave open (``low``: their
    bounds of the rows of ``[G; mean]``, thresholds ``hb``) get ``_optimised`` slopes, their bounds
    in ``low`` raised in place (never lowered); returns those still open. ``tally`` (boxes tried,
    boxes closed) is updated; once ``ALPHA_TRIAL`` boxes were tried, the slopes are optimised only
    while they close at least ``ALPHA_PAYS`` of them (else their cost buys nothing: e.g. ACAS Xu
    N2,9's phi2, the same 213 sub-boxes in 1.7 s without them, 6.5 s with)."""
    if not sel.size or steps <= 0 or (tally[0] >= ALPHA_TRIAL and tally[1] < ALPHA_PAYS * tally[0]):
        return sel
    idx = torch.as_tensor(sel)
    margin = _optimised(net, [(l[idx], u[idx]) for l, u in pre], torch.as_tensor(c[sel]), torch.as_tensor(r[sel]),
                        torch.tensor(G), torch.tensor(h), steps).numpy()
    low[sel] = np.maximum(low[sel], margin + hb)
    left: npt.NDArray[np.int64] = sel[(low[sel] - hb).max(1) <= TOLERANCE]
    tally[0] += sel.size
    tally[1] += sel.size - left.size
    return left


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


def _smear_dims(lo: _F, hi: _F, slack: _F, Lg: _F, scale: _F) -> npt.NDArray[np.int64]:
    """Per sub-box, the input of largest width x |coefficient| of its least unsafe row (``slack``:
    bound minus threshold per row; ``Lg``: the rows' input coefficients), unless that input is
    already ``NARROW`` times narrower (relative to the region, ``scale``) than the widest: then the
    widest (the smear alone could split one input forever while another stays wide)."""
    rows = np.arange(lo.shape[0])
    best = slack.argmax(1)
    coeff = np.abs(Lg[rows, best, :])
    width = hi - lo
    smear = np.where(width > 0, width * (coeff + 1e-12), -1.0).argmax(1)
    rel = width / scale
    widest = rel.argmax(1)
    out: npt.NDArray[np.int64] = np.where(rel[rows, smear] * NARROW < rel[rows, widest], widest, smear)
    return out


def _bisect(lo: _F, hi: _F, dims: npt.NDArray[np.int64]) -> tuple[_F, _F]:
    """Both halves of every sub-box along its input ``dims`` (left halves first)."""
    rows = np.arange(lo.shape[0])
    mid = (lo[rows, dims] + hi[rows, dims]) / 2
    lhi, rlo = hi.copy(), lo.copy()
    lhi[rows, dims], rlo[rows, dims] = mid, mid
    return np.concatenate([lo, rlo]), np.concatenate([lhi, hi])


def _best_dims(tensors: _Net, lo: _F, hi: _F,
               known: list[tuple[_F, _F]], Gt: torch.Tensor, hb: _F, cands: npt.NDArray[np.int64],
               ) -> npt.NDArray[np.int64]:
    """Per sub-box, the one of its candidate inputs ``cands`` (S, k) whose bisection gives the best
    worse half (the larger of the two halves' smaller safety margins), found by bounding both
    halves along each candidate."""
    S, k = cands.shape
    rows = np.arange(S)
    c, r = (lo + hi) / 2, (hi - lo) / 2
    cc, rr = np.repeat(c[None], 2 * k, 0), np.repeat(r[None], 2 * k, 0)  # (2k, S, d)
    for j in range(k):
        dj = cands[:, j]
        half = r[rows, dj] / 2
        rr[j, rows, dj] = rr[k + j, rows, dj] = half
        cc[j, rows, dj] = c[rows, dj] - half
        cc[k + j, rows, dj] = c[rows, dj] + half
    kt = [(torch.as_tensor(np.tile(l, (2 * k, 1))), torch.as_tensor(np.tile(u, (2 * k, 1)))) for l, u in known]
    with torch.no_grad():
        low, _, _ = _bounds(tensors, torch.as_tensor(cc.reshape(-1, lo.shape[1])),
                            torch.as_tensor(rr.reshape(-1, lo.shape[1])), Gt, kt)
    margin = (low.numpy() - hb).max(1).reshape(2 * k, S)
    score = np.minimum(margin[:k], margin[k:])  # (k, S)
    out: npt.NDArray[np.int64] = cands[rows, score.argmax(0)]
    return out


def _first_violation(layers: list[tuple[_F, _F]], prop: OutputProperty, x: _F, lo: _F, hi: _F) -> int:
    """The first of the points ``x`` (rows) that lies in its box ``[lo, hi]`` and whose float64
    output reaches an unsafe disjunct; -1 if none."""
    inside = np.all((x >= lo) & (x <= hi), axis=1)
    bad = (prop.violated(_forward(layers, x)) >= 0) & inside
    return int(np.flatnonzero(bad)[0]) if bad.any() else -1


def _halve(tensors: _Net, lo: _F, hi: _F, depth: npt.NDArray[np.int64], pre: list[tuple[_F, _F]],
           s: npt.NDArray[np.int64], slack: _F, Lg: _F, Gt: torch.Tensor, hb: _F,
           scale: _F) -> tuple[_F, _F, npt.NDArray[np.int64], list[tuple[_F, _F]]]:
    """Both halves of the boxes ``s``, as a queue entry (their parents' intervals handed down), split
    along the smear or the widest input (relative to the region): whichever bounds its halves better."""
    dims = _smear_dims(lo[s], hi[s], slack[s], Lg[s], scale)
    widest = ((hi[s] - lo[s]) / scale).argmax(1)
    two = np.flatnonzero((widest != dims) & (depth[s] >= TRY_DEPTH))
    if two.size:
        t = s[two]
        dims[two] = _best_dims(tensors, lo[t], hi[t], [(l[t], u[t]) for l, u in pre], Gt, hb,
                               np.stack([dims[two], widest[two]], 1))
    return (*_bisect(lo[s], hi[s], dims), np.tile(depth[s] + 1, 2),
            [(np.tile(l[s], (2, 1)), np.tile(u[s], (2, 1))) for l, u in pre])


def _milp_leaves(layers: list[tuple[_F, _F]], prop: OutputProperty, lo: _F, hi: _F, pre: list[tuple[_F, _F]],
                 G: _F, h: _F, leaves: npt.NDArray[np.int64], depth: npt.NDArray[np.int64], deadline: float,
                 stats: dict[str, int], split: list[int]) -> tuple[str, str, _F | None, _F | None] | None:
    """Decide the sub-boxes ``leaves`` by exact MILP: (status, reason, x, y) when one decides the
    search (a re-validated counterexample, or unknown), else None; a leaf whose MILP is inconclusive
    above ``HARD_DEPTH`` is appended to ``split`` to be looked at closer."""
    for i in leaves.tolist():
        stats["milp_leaves"] += 1
        left = deadline - time.perf_counter()
        if left <= 0:
            return "unknown", "time limit reached in the MILP leaves", None, None
        status, x = _milp(layers, lo[i], hi[i], [(l[i], u[i]) for l, u in pre], G, h, min(left, LEAF_SECONDS))
        if status == "infeasible":
            continue
        if status == "feasible" and x is not None:
            x = np.clip(x, lo[i], hi[i])
            yx = _forward(layers, x[None])[0]
            if prop.violated(yx[None])[0] >= 0:
                return ("violated", "an exact MILP solution on a sub-box, re-validated by a float64 forward pass",
                        x, yx)
        if depth[i] < HARD_DEPTH:  # a solution within the solver's slack only, or a slow MILP: look closer
            split.append(i)
            continue
        return "unknown", f"the MILP on a sub-box at depth {int(depth[i])} was inconclusive ({status})", None, None
    return None


_Entry: TypeAlias = tuple[_F, _F, npt.NDArray[np.int64], list[tuple[_F, _F]] | None]


def _batch_size(now: float, pace: list[float], deadline: float, batch: int) -> int:
    """At most ``batch``, and no more sub-boxes than the time left allows at the pace of the last
    batch (``pace``: when it started, its size), down to ``MIN_BATCH``: the deadline is checked
    between batches only (a batch of 4,096 ACAS Xu sub-boxes took up to 30 s on busy cores)."""
    per_box = (now - pace[0]) / pace[1] if pace[1] else 0.0
    return batch if per_box <= 0 else int(min(batch, max(MIN_BATCH, (deadline - now) / per_box)))


def _take(queue: list[_Entry], n: int) -> _Entry:
    """The last entry of ``queue``, its first ``n`` sub-boxes only (the rest put back)."""
    lo, hi, depth, known = queue.pop()
    if lo.shape[0] > n:
        queue.append((lo[n:], hi[n:], depth[n:], None if known is None else [(l[n:], u[n:]) for l, u in known]))
        lo, hi, depth = lo[:n], hi[:n], depth[:n]
        known = None if known is None else [(l[:n], u[:n]) for l, u in known]
    return lo, hi, depth, known


def certify_box_complete(net: nn.Module, region: Region, prop: OutputProperty, *, timeout: float = 60.0,
                         leaf_unstable: int = LEAF_UNSTABLE, max_depth: int = MAX_DEPTH,
                         batch: int = BATCH, alpha_steps: int = ALPHA_STEPS) -> CompleteVerdict:
    """Decide whether some input of the box ``region`` reaches an unsafe disjunct of ``prop``
    (see the module docstring). ``timeout``: seconds for the whole search (then ``unknown``).
    A sub-box goes to the exact MILP when at most ``leaf_unstable`` of its ReLUs are unstable or
    at depth ``max_depth``; ``batch`` sub-boxes are bounded at once; a sub-box that the default
    ReLU slopes leave undecided gets ``alpha_steps`` steps of optimised slopes (0: none) first."""
    t0 = time.perf_counter()
    deadline = t0 + timeout
    if not isinstance(region, Box):
        raise UnsupportedLayerError(f"the independent complete check takes boxes, got a {type(region).__name__}")
    layers = affine_chain(net)
    tensors = _tensors(layers)
    lo0 = np.asarray(region.lower, dtype=np.float64).reshape(-1)
    hi0 = np.asarray(region.upper, dtype=np.float64).reshape(-1)
    scale = np.where(hi0 > lo0, hi0 - lo0, 1.0)
    stats = {"boxes": 0, "milp_leaves": 0, "max_depth": 0}
    used_milp = False

    def done(status: str, reason: str, x: _F | None = None, y: _F | None = None) -> CompleteVerdict:
        how = COMPLETE_METHOD if used_milp else "split (independent linear bounds)"
        return CompleteVerdict(status, how if status != "unknown" else "", reason, time.perf_counter() - t0,
                               x, y, stats)

    for G, h in prop.disjuncts:
        G = np.asarray(G, dtype=np.float64)
        h = np.asarray(h, dtype=np.float64)
        # the disjunct G y <= h is out of reach where some row, or the rows' mean, is bounded
        # above h: mean(G y - h) > 0 forces a row > 0 (it helps where no one row wins everywhere)
        Gb, hb = (np.vstack([G, G.mean(0)]), np.append(h, h.mean())) if G.shape[0] > 1 else (G, h)
        Gt = torch.tensor(Gb, dtype=torch.float64)
        tally = [0, 0]  # sub-boxes given optimised slopes, and closed by them
        queue: list[_Entry] = [
            (lo0[None], hi0[None], np.zeros(1, dtype=np.int64), None)]
        pace = [time.perf_counter(), 0.0]  # when the last batch started, and its size
        while queue:
            now = time.perf_counter()
            if now > deadline:
                return done("unknown", f"time limit ({timeout:g} s) reached after {stats['boxes']} sub-boxes")
            lo, hi, depth, known = _take(queue, _batch_size(now, pace, deadline, batch))  # known: parents' intervals
            pace = [now, float(lo.shape[0])]
            stats["boxes"] += lo.shape[0]
            stats["max_depth"] = max(stats["max_depth"], int(depth.max()))
            centre = (lo + hi) / 2
            if G.shape[0] == 0:  # every output is unsafe
                return done("violated", "the disjunct has no rows: every output is unsafe", centre[0],
                            _forward(layers, centre[:1])[0])
            with torch.no_grad():
                low_t, Lg_t, pre_t = _bounds(tensors, torch.as_tensor(centre), torch.as_tensor((hi - lo) / 2), Gt,
                                             None if known is None else
                                             [(torch.as_tensor(l), torch.as_tensor(u)) for l, u in known])
            low, Lg = low_t.numpy(), Lg_t.numpy()
            # candidates: each box's centre and the corner that minimises its rows' mean bound
            corner = np.where(Lg[:, -1, :] > 0, lo, hi)
            cand = np.concatenate([centre, corner])
            i = _first_violation(layers, prop, cand, np.concatenate([lo, lo]), np.concatenate([hi, hi]))
            if i >= 0:
                return done("violated", "a point of a sub-box reaches the unsafe set (float64 forward pass)",
                            cand[i], _forward(layers, cand[i:i + 1])[0])
            sel = np.flatnonzero((low - hb).max(1) <= TOLERANCE)
            # optimised slopes, only where the default ones leave a box open (and while they pay)
            sel = _tighter(tensors, pre_t, centre, (hi - lo) / 2, sel, G, h, hb, low, alpha_steps, tally)
            if not sel.size:
                continue
            pre = [(l.numpy(), u.numpy()) for l, u in pre_t]  # (B, n) each
            unstable = sum(((l[sel] < 0) & (u[sel] > 0)).sum(1) for l, u in pre)
            leaf = (unstable <= leaf_unstable) | (depth[sel] >= max_depth)
            split = list(sel[~leaf])
            if bool(leaf.any()):
                used_milp = True
                end = _milp_leaves(layers, prop, lo, hi, pre, G, h, sel[leaf], depth, deadline, stats, split)
                if end is not None:
                    return done(*end)
            if split:
                queue.append(_halve(tensors, lo, hi, depth, pre, np.asarray(split), low - hb, Lg, Gt, hb, scale))
    return done("certified", "no unsafe disjunct is reachable: every sub-box is excluded by linear bounds"
                + (" or an exact MILP" if used_milp else ""))
