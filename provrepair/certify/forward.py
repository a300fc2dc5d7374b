"""Lean CROWN for input splitting on Linear/ReLU networks with few inputs.

Input splitting bounds thousands of sub-boxes, so the cost per box matters more than generality.
This version composes the network into dense ``(W_k, c_k)`` layers with ReLUs between them, and
for a batch of boxes:

* takes hidden intervals *inherited* from the parent box (sound: the parent contains the child)
  and intersects them with the child's own interval and CROWN bounds, so a child is never looser
  than its parent, and neurons that are stable already need no backward pass;
* computes the CROWN bounds of a hidden layer only for the neurons unstable in some box of the
  batch, with each ReLU's relaxation built once per layer;
* bounds the spec with one backward pass whose lower ReLU slopes ``a in [0, 1]`` (any value is
  sound: ``relu(z) >= a z``) and the weights ``lam`` of a convex combination of the spec's rows
  (if ``sum_r lam_r (G_r y - h_r) > 0`` on the box, no point meets every row) are improved by a
  few projected gradient steps (alpha-CROWN style), only on the boxes still undecided.

Soundness is with respect to real arithmetic, evaluated in float64 (as ``bounds``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

import numpy.typing as npt
import torch

from .bounds import AFFINE, DTYPE, RELU, BoundPropagator, as_tensor

__all__ = ["FORWARD_MAX_INPUTS", "FORWARD_MAX_WIDTH", "ForwardBounds"]

#: Lean CROWN is used while the input is narrow and every layer fits a dense matrix.
FORWARD_MAX_INPUTS = 16
FORWARD_MAX_WIDTH = 4096
#: Gradient steps on the spec's lower slopes and row weights, and their step size.
ALPHA_STEPS = 8
ALPHA_LR = 0.2
#: Groups of boxes (by their count of unstable neurons) per hidden-layer CROWN pass, and the
#: fewest boxes per group: on 2,000 ACAS Xu sub-boxes of mixed sizes one hidden pass took 8.3 s in
#: one group (every box padded to the largest count), 2.7 s in 8.
CROWN_GROUPS = 8
CROWN_GROUP_MIN = 64

#: Sound bounds (lo, hi) of one ReLU layer's inputs, each (B, N_k).
Interval: TypeAlias = tuple[torch.Tensor, torch.Tensor]
#: A ReLU layer's relaxation: default lower slope, upper slope, upper intercept, unstable mask.
Relaxation: TypeAlias = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class ForwardBounds:
    """Bounds of ``G y - h`` over many boxes at once for a Linear/ReLU network with few inputs."""

    def __init__(self, prop: BoundPropagator):
        self.prop = prop
        dev = prop.device
        self.relu_ops: list[int] = []  # op index of each ReLU, in order
        layers: list[list[torch.Tensor]] = []  # [W, c] per affine block
        n_in = int(torch.tensor(prop.input_shape).prod())
        W = torch.eye(n_in, dtype=DTYPE, device=dev)
        c = torch.zeros(n_in, dtype=DTYPE, device=dev)
        for i, op in enumerate(prop.ops):
            if op.kind == AFFINE:
                L, off = op.matrix(prop.shapes[i], prop.shapes[i + 1], dev)
                L = torch.as_tensor(L.toarray(), dtype=DTYPE, device=dev)
                W, c = L @ W, L @ c + torch.as_tensor(off, dtype=DTYPE, device=dev)
            else:
                layers.append([W, c])
                self.relu_ops.append(i)
                n = W.shape[0]
                W, c = torch.eye(n, dtype=DTYPE, device=dev), torch.zeros(n, dtype=DTYPE, device=dev)
        layers.append([W, c])
        self.W = [w for w, _ in layers]
        self.c = [b for _, b in layers]

    @staticmethod
    def supports(prop: BoundPropagator) -> bool:
        if int(torch.tensor(prop.input_shape).prod()) > FORWARD_MAX_INPUTS:
            return False
        for i, op in enumerate(prop.ops):
            if op.kind not in (AFFINE, RELU) or int(torch.tensor(prop.shapes[i + 1]).prod()) > FORWARD_MAX_WIDTH:
                return False
        return True

    @staticmethod
    def _relax(lo: torch.Tensor, hi: torch.Tensor) -> Relaxation:
        """Per neuron: default lower slope a, upper slope s and intercept t; and the unstable mask."""
        active, unstable = lo >= 0, (lo < 0) & (hi > 0)
        denom = torch.where(unstable, hi - lo, torch.ones_like(lo))
        s = torch.where(unstable, hi / denom, active.to(DTYPE))
        t = torch.where(unstable, -s * lo, torch.zeros_like(lo))
        a = torch.where(unstable, (hi >= -lo).to(DTYPE), active.to(DTYPE))
        return a, s, t, unstable

    def _back(self, lam: torch.Tensor, bias: torch.Tensor, k: int, relax: Sequence[Relaxation], c: torch.Tensor,
              r: torch.Tensor, alphas: Sequence[torch.Tensor | None] | None = None,
              premultiplied: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower bound over each box of ``lam . z + bias`` where z is the input of ReLU layer ``k``
        (``k = len(relax)`` for the output); lam (B, R, N_k). ``premultiplied``: ``(lam, bias)``
        are ``lam W_k, bias + lam c_k`` already (rows of a layer's own matrix: no product needed;
        only for ``k > 0``)."""
        for j in range(k - 1, -1, -1):
            if not (premultiplied and j == k - 1):
                bias = bias + lam @ self.c[j + 1]
                lam = lam @ self.W[j + 1]
            a, s, t, _ = relax[j]
            alpha = alphas[j] if alphas is not None else None
            if alpha is not None:
                a = alpha
            neg = lam.clamp(max=0)
            bias = bias + (neg @ t.unsqueeze(2)).squeeze(2)
            lam = lam * torch.where(lam >= 0, a.unsqueeze(1), s.unsqueeze(1))
        bias = bias + lam @ self.c[0]
        lam = lam @ self.W[0]
        return bias + (lam @ c.unsqueeze(2)).squeeze(2) - (lam.abs() @ r.unsqueeze(2)).squeeze(2), lam

    @torch.no_grad()
    def hidden(self, lower: npt.ArrayLike | torch.Tensor, upper: npt.ArrayLike | torch.Tensor,
               inherited: Sequence[Interval] | None = None,
               crown: bool = True) -> tuple[list[Interval], list[Relaxation]]:
        """Sound intervals (lo, hi) of every ReLU input, and their relaxations; ``crown=False``
        keeps the inherited and interval bounds only (no backward pass: cheap)."""
        lower, upper = as_tensor(lower, self.prop.device), as_tensor(upper, self.prop.device)
        b = lower.shape[0]
        lo_in, hi_in = lower.reshape(b, -1), upper.reshape(b, -1)
        c, r = (lo_in + hi_in) / 2, (hi_in - lo_in) / 2
        pre: list[Interval] = []
        relax: list[Relaxation] = []
        for k in range(len(self.relu_ops)):
            W, cb = self.W[k], self.c[k]
            if k == 0:
                mid, rad = c @ W.T + cb, r @ W.abs().T  # exact over the box
            else:
                plo, phi = pre[-1]
                plo, phi = plo.clamp(min=0), phi.clamp(min=0)
                mid, rad = (plo + phi) / 2 @ W.T + cb, (phi - plo) / 2 @ W.abs().T
            lo, hi = mid - rad, mid + rad
            if inherited is not None:
                lo, hi = torch.maximum(lo, inherited[k][0]), torch.minimum(hi, inherited[k][1])
            if k > 0 and crown:
                lo, hi = self._crown_layer(k, lo, hi, relax, c, r)
            lo = torch.minimum(lo, hi)  # equal bounds stay ordered despite rounding
            pre.append((lo, hi))
            relax.append(self._relax(lo, hi))
        return pre, relax

    def _crown_layer(self, k: int, lo: torch.Tensor, hi: torch.Tensor, relax: Sequence[Relaxation], c: torch.Tensor,
                     r: torch.Tensor) -> Interval:
        """The interval bounds (lo, hi) of ReLU layer ``k``'s inputs tightened by CROWN for each
        box's own unstable neurons (not the batch's union: as boxes shrink, few neurons per box
        stay unstable). The rows are padded to the largest count of a group, so the boxes are
        grouped by their count (up to ``CROWN_GROUPS`` groups of equal size) to pad less."""
        W, cb = self.W[k], self.c[k]
        want = (lo < 0) & (hi > 0)
        cnt = want.sum(1)
        if int(cnt.max()) == 0:
            return lo, hi
        order = torch.argsort(cnt)
        lo, hi = lo.clone(), hi.clone()
        for part in torch.tensor_split(order, max(1, min(CROWN_GROUPS, order.numel() // CROWN_GROUP_MIN))):
            m = int(cnt[part].max())
            if m == 0:
                continue
            idx = torch.sort(want[part].to(torch.int8), dim=1, descending=True, stable=True).indices[:, :m]
            valid = torch.arange(m, device=lo.device).unsqueeze(0) < cnt[part].unsqueeze(1)
            w_rows, c_rows = W[idx], cb[idx]
            bound, _ = self._back(torch.cat([w_rows, -w_rows], 1), torch.cat([c_rows, -c_rows], 1), k,
                                  [tuple(t[part] for t in rl) for rl in relax],  # type: ignore[misc]
                                  c[part], r[part], premultiplied=True)
            lo_p, hi_p = lo[part], hi[part]
            lo_sel, hi_sel = lo_p.gather(1, idx), hi_p.gather(1, idx)
            lo_sel = torch.where(valid, torch.maximum(lo_sel, bound[:, :m]), lo_sel)
            hi_sel = torch.where(valid, torch.minimum(hi_sel, -bound[:, m:]), hi_sel)
            lo[part], hi[part] = lo_p.scatter(1, idx, lo_sel), hi_p.scatter(1, idx, hi_sel)
        return lo, hi

    def bounds(self, lower: npt.ArrayLike | torch.Tensor, upper: npt.ArrayLike | torch.Tensor,
               G: npt.ArrayLike | torch.Tensor, h: npt.ArrayLike | torch.Tensor,
               inherited: Sequence[Interval] | None = None, *, tol: float = 0.0, steps: int = ALPHA_STEPS,
               refresh: torch.Tensor | None = None,
               any_row: bool = False) -> tuple[torch.Tensor, torch.Tensor, list[Interval]]:
        """Per box: a lower bound of ``max_r (G_r y - h_r)``'s certificate (> tol means the box
        cannot reach ``G y <= h``), the input coefficients of the bound (B, n) for choosing a split,
        and the hidden intervals (to hand down to sub-boxes). With inherited intervals, a cheap
        pass without hidden CROWN runs first; only the boxes it leaves open and ``refresh``
        (a mask, default all) selects get their hidden intervals recomputed by CROWN. ``any_row``:
        the unsafe set is the union of the rows (``G_r y <= h_r`` for some r), so the certificate
        is the smallest row bound (each open row's slopes optimised on their own)."""
        lo, hi, G_t, h_t = (as_tensor(v, self.prop.device) for v in (lower, upper, G, h))
        if inherited is None:
            return self._bounds(lo, hi, G_t, h_t, None, tol, steps, True, any_row)
        margin, coeff, pre = self._bounds(lo, hi, G_t, h_t, inherited, tol, steps, False, any_row)
        redo = margin <= tol
        if refresh is not None:
            redo &= refresh
        if bool(redo.any()):
            idx = redo.nonzero().flatten()
            m2, c2, p2 = self._bounds(lo[idx], hi[idx], G_t, h_t, [(a[idx], b[idx]) for a, b in pre], tol, steps,
                                      True, any_row)
            margin, coeff = margin.clone(), coeff.clone()
            margin[idx], coeff[idx] = m2, c2
            pre = [(a.index_put((idx,), a2), b.index_put((idx,), b2)) for (a, b), (a2, b2) in zip(pre, p2)]
        return margin, coeff, pre

    def tighten(self, lower: torch.Tensor, upper: torch.Tensor, G: torch.Tensor, h: torch.Tensor,
                pre: Sequence[Interval], *, tol: float, steps: int, any_row: bool = False) -> torch.Tensor:
        """The certificate of ``bounds`` on boxes whose hidden intervals ``pre`` are already sound
        (no hidden CROWN pass), with ``steps`` slope steps: worth many more steps than a split
        step, on boxes that would otherwise go to the MILP."""
        margin, _, _ = self._bounds(lower, upper, G, h, pre, tol, steps, False, any_row)
        return margin

    def _bounds(self, lower: torch.Tensor, upper: torch.Tensor, G: torch.Tensor, h: torch.Tensor,
                inherited: Sequence[Interval] | None, tol: float, steps: int,
                crown: bool, any_row: bool = False) -> tuple[torch.Tensor, torch.Tensor, list[Interval]]:
        b = lower.shape[0]
        lo_in, hi_in = lower.reshape(b, -1), upper.reshape(b, -1)
        c, r = (lo_in + hi_in) / 2, (hi_in - lo_in) / 2
        pre, relax = self.hidden(lower, upper, inherited, crown)
        k = len(relax)
        with torch.no_grad():  # each row alone, default slopes
            Gb = G.unsqueeze(0).expand(b, *G.shape)
            rows_lb, lam_in = self._back(Gb, -h.unsqueeze(0).expand(b, -1), k, relax, c, r)
            best, arg = rows_lb.min(1) if any_row else rows_lb.max(1)
            coeff = lam_in[torch.arange(b), arg]
        open_ = best <= tol
        if steps <= 0 or not bool(open_.any()):
            return best, coeff, pre
        best = best.clone()
        if any_row:  # each (box, row) pair still open gets its own slopes: a box closes when every row does
            box, row = (rows_lb <= tol).nonzero(as_tuple=True)
            keep = open_[box]
            box, row = box[keep], row[keep]
            if box.numel():
                got = self._optimise(k, relax, c, r, box, G[row].unsqueeze(1), h[row].unsqueeze(1),
                                     torch.zeros_like(row), rows_lb[box, row], steps, tol)
                rows_lb = rows_lb.index_put((box, row), torch.maximum(rows_lb[box, row], got))
                best = rows_lb.amin(1)
        else:
            idx = open_.nonzero().flatten()
            best[idx] = self._optimise(k, relax, c, r, idx, G.unsqueeze(0).expand(idx.numel(), *G.shape),
                                       h.unsqueeze(0).expand(idx.numel(), -1), arg[idx], best[idx], steps, tol)
        # the split direction keeps the default slopes' coefficients: on ACAS Xu φ1 the optimised
        # ones chose worse inputs to halve (N2,4: 1807 sub-boxes instead of 275)
        return best, coeff, pre

    def _optimise(self, k: int, relax: Sequence[Relaxation], c: torch.Tensor, r: torch.Tensor, idx: torch.Tensor,
                  G: torch.Tensor, h: torch.Tensor, arg: torch.Tensor, start: torch.Tensor, steps: int,
                  tol: float) -> torch.Tensor:
        """Lower bounds of ``sum_r lam_r (G_r y - h_r)`` for items ``idx`` (boxes, repeated when
        one box has several items; ``G`` (P, R, n_out), ``h`` (P, R) per item) improved by Adam
        steps on the lower slopes of the unstable ReLUs and on the row weights ``lam`` (softmax,
        starting at row ``arg``); never below ``start``. Any slope in [0, 1] and any convex
        combination give a sound bound, so the best one met is kept."""
        sub_relax = [(a[idx], s[idx], t[idx], u[idx]) for a, s, t, u in relax]
        cs, rs = c[idx], r[idx]
        alpha = [rl[0].clone().requires_grad_(True) for rl in sub_relax]
        logits = torch.zeros(idx.numel(), G.shape[1], dtype=DTYPE, device=G.device)
        logits[torch.arange(idx.numel()), arg] = 2.0
        logits.requires_grad_(G.shape[1] > 1)
        params = alpha + ([logits] if G.shape[1] > 1 else [])
        moments = [(torch.zeros_like(q), torch.zeros_like(q)) for q in params]
        got = start.clone()
        for it in range(steps):
            with torch.enable_grad():
                w = torch.softmax(logits, 1)
                lam = w.unsqueeze(1) @ G
                bias = -(w * h).sum(1, keepdim=True)
                lb, _ = self._back(lam, bias, k, sub_relax, cs, rs, alphas=alpha)
                lb = lb[:, 0]
                (-lb.sum()).backward()  # type: ignore[no-untyped-call]  # torch's Tensor.backward is unannotated
            with torch.no_grad():
                got = torch.where(lb > got, lb.detach(), got)
                _adam_step(params, moments, it + 1)
                for j, al in enumerate(alpha):  # project: a in [0, 1], stable neurons keep theirs
                    al.clamp_(0.0, 1.0)
                    al.copy_(torch.where(sub_relax[j][3], al, sub_relax[j][0]))
                if bool((got > tol).all()):
                    break
        return got


def _adam_step(params: Sequence[torch.Tensor], moments: Sequence[tuple[torch.Tensor, torch.Tensor]], step: int,
               beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8) -> None:
    """One Adam ascent step on tensors whose ``grad`` holds the gradient of the loss to minimise
    (torch.optim would import torch._dynamo, seconds of start-up, on its first use)."""
    for q, (m, v) in zip(params, moments):
        if q.grad is None:
            continue
        g = q.grad
        m.mul_(beta1).add_(g, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        mh, vh = m / (1 - beta1**step), v / (1 - beta2**step)
        q.sub_(ALPHA_LR * mh / (vh.sqrt() + eps))
        q.grad = None
