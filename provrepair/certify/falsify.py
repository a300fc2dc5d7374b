"""Cheap counterexample search before any bound is computed.

A violated region is decided by one input that reaches an unsafe set; looking for it costs a few
forward passes, while proving the opposite may cost a MILP. Candidates are the region's centre,
corners or vertices, random samples, and a short projected sign-gradient descent on
``max_r (G_r y - h_r)`` from the best samples (boxes and H-polytopes). Every point reported has
been evaluated by a plain float64 forward pass and lies in the region.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..specs.regions import Box, HPolytope, OutputProperty, Region, VPolytope
from .bounds import as_tensor
from .points import forward_outputs

__all__ = ["DEFAULT_PGD_STEPS", "DEFAULT_SAMPLES", "Counterexample", "falsify", "unsafe_loss"]

DEFAULT_SAMPLES = 256
#: Samples for regions with few free inputs, where unsafe pockets can be thin but samples are cheap
#: (ACAS Xu's φ8 on N2,9: about 4 in 10,000 points of its region violate it).
LOW_DIM_SAMPLES = 32768
LOW_DIM = 12
DEFAULT_PGD_STEPS = 20
#: Low-dimensional regions get a longer gradient search from more starts (the best samples and
#: random restarts): thin unsafe pockets such as ACAS Xu's φ7 on N1,9 are missed by sampling alone.
LOW_DIM_PGD_STEPS = 60
LOW_DIM_PGD_STARTS = 64
#: Corners of a box tried as candidates (a box over many inputs has too many).
MAX_CORNERS = 64
_PGD_STARTS = 8
#: The probability of each bound when samples are moved onto faces (``_on_faces``).
FACE_SHARE = 0.2


@dataclass
class Counterexample:
    x: np.ndarray  # model input shape
    y: np.ndarray  # float64 outputs
    disjunct: int  # the unsafe disjunct it reaches
    how: str  # centre/vertex/sample, or pgd


def _candidates(region: Region, n_samples: int, rng: np.random.Generator) -> np.ndarray:
    assert isinstance(region, (Box, VPolytope, HPolytope))  # the three region kinds (Region has no center/sample)
    pts = [region.center()[None]]
    if isinstance(region, VPolytope):
        pts.append(np.asarray(region.vertices))
    elif isinstance(region, Box):
        free = int(np.count_nonzero(region.upper > region.lower))
        if free <= 6:  # 2^6 = MAX_CORNERS
            pts.append(region.corners(MAX_CORNERS))
    if n_samples:
        s = region.sample(n_samples, rng)
        if len(s):
            pts.append(s)
        if isinstance(region, (Box, HPolytope)) and len(s):
            pts.append(_on_faces(region, s[: len(s) // 2], rng))
    x = np.concatenate([p.reshape(-1, *region.input_shape) for p in pts])
    if isinstance(region, HPolytope):
        x = x[np.asarray(region.contains(x), dtype=bool).reshape(-1)]
    return x


def _on_faces(region: Box | HPolytope, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Copies of samples with each input moved onto its lower or upper bound with probability
    ``FACE_SHARE`` each: unsafe pockets often touch the region's boundary (ACAS Xu phi7 on N1,9:
    none in 4M uniform samples but 3, and 1 in 1,500 of these samples)."""
    lo, hi = (np.asarray(v, dtype=np.float64).reshape(1, -1) for v in region.bounds())
    flat = x.reshape(x.shape[0], -1)
    u = rng.random(flat.shape)
    out = np.where(u < FACE_SHARE, lo, np.where(u > 1 - FACE_SHARE, hi, flat))
    return out.reshape(x.shape)


def _first_violation(prop: OutputProperty, x: np.ndarray, y: np.ndarray, how: str) -> Counterexample | None:
    hit = prop.violated(y)
    idx = np.flatnonzero(hit >= 0)
    if idx.size == 0:
        return None
    i = int(idx[0])
    return Counterexample(x=x[i].copy(), y=y[i].copy(), disjunct=int(hit[i]), how=how)


def unsafe_loss(v: torch.Tensor) -> torch.Tensor:
    """What the gradient search minimises for rows ``v = G y - h`` (B, R): the sum of the rows'
    excess plus a small share of the worst. ``max_r v_r`` alone moves only the worst row and
    oscillates between rows of a conjunction; on ACAS Xu phi2 (N5,3), whose unsafe pocket is
    reached by 1.4e-5, 4,096 starts of 100 steps found it with the sum and not with the max."""
    return v.clamp(min=0).sum(1) + 1e-3 * v.amax(1)


def _pgd(net64: nn.Module, region: Region, G: np.ndarray, h: np.ndarray, starts: np.ndarray,
         steps: int) -> np.ndarray:
    lo, hi = (as_tensor(v) for v in region.bounds())
    G_t, h_t = as_tensor(G), as_tensor(h)
    x = as_tensor(starts)
    step0 = (hi - lo) / 8
    found = []
    for k in range(steps):
        x.requires_grad_(True)
        y = net64(x).reshape(x.shape[0], -1)
        (grad,) = torch.autograd.grad(unsafe_loss(y @ G_t.T - h_t).sum(), x)
        with torch.no_grad():
            x = torch.minimum(torch.maximum(x - step0 * (1 - k / steps) * grad.sign(), lo), hi)
        found.append(x.detach().clone())
    return torch.cat(found).numpy()


def falsify(net64: nn.Module, region: Region, prop: OutputProperty, *, samples: int = DEFAULT_SAMPLES,
            pgd_steps: int = DEFAULT_PGD_STEPS, seed: int = 0,
            low_dim_samples: int = LOW_DIM_SAMPLES) -> Counterexample | None:
    """An input of ``region`` whose output is unsafe for ``prop``, or None if none was found."""
    rng = np.random.default_rng(seed)
    lo, hi = region.bounds()
    if samples and int(np.count_nonzero(hi > lo)) <= LOW_DIM:
        samples = max(samples, low_dim_samples)
    x = _candidates(region, samples, rng)
    if len(x) == 0:
        return None
    y = forward_outputs(net64, x, torch.float64, 1024)
    cex = _first_violation(prop, x, y, "sample")
    if cex is not None or pgd_steps <= 0 or isinstance(region, VPolytope):
        return cex
    low_dim = int(np.count_nonzero(hi > lo)) <= LOW_DIM
    n_starts = LOW_DIM_PGD_STARTS if low_dim else _PGD_STARTS
    if low_dim:
        pgd_steps = max(pgd_steps, LOW_DIM_PGD_STEPS)
    for G, h in prop.disjuncts:
        if G.shape[0] == 0:
            continue
        score = (y @ G.T - h).max(1)
        order = np.argsort(score)
        best = order[: n_starts // 2]
        restarts = rng.choice(order[n_starts // 2:], size=min(n_starts - best.size, max(0, order.size - best.size)),
                              replace=False) if low_dim else order[:0]
        starts = x[np.concatenate([best, restarts])] if low_dim else x[order[:n_starts]]
        xs = _pgd(net64, region, G, h, starts, pgd_steps)
        if isinstance(region, HPolytope):
            xs = xs[np.asarray(region.contains(xs), dtype=bool).reshape(-1)]
            if len(xs) == 0:
                continue
        ys = forward_outputs(net64, xs, torch.float64, 1024)
        cex = _first_violation(prop, xs, ys, "pgd")
        if cex is not None:
            return cex
    return None
