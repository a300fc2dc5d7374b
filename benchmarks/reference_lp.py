"""Baseline for the point-repair benchmark: the same LP in APRNN's own encoding.

An auxiliary variable for every pre-activation of every layer from ``k`` on, per point, tied by
one equality row per neuron; three variables per parameter (δ = δ⁺ - δ⁻, the norms read δ⁺ + δ⁻);
every activation-pattern row built up front. It means the same thing as
``provrepair.repair.aprnn`` (same optimum); only the encoding and the solution strategy differ.
Fully connected ReLU networks only: that is all the benchmark needs.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from provrepair import solvers


def reference_point_repair(net: nn.Sequential, x: np.ndarray, labels: np.ndarray, layer: int, *,
                           delta_bound: float = 3.0, margin: float = 1e-3, method: str = "ipm",
                           time_limit: float | None = None) -> dict:
    if not all(isinstance(m, (nn.Linear, nn.ReLU)) for m in net):
        raise ValueError("the reference encoding takes Linear/ReLU networks only")
    t0 = time.perf_counter()
    net64 = list(copy.deepcopy(net).double())
    lin = [i for i, m in enumerate(net64) if isinstance(m, nn.Linear)]
    k = lin[layer]
    with torch.no_grad():
        h = torch.tensor(x, dtype=torch.float64)
        for m in net64[:k]:
            h = m(h)
        pres = []  # original pre-activations of layers k.. (for the patterns)
        z = h
        for j in lin[layer:]:
            z = net64[j](z)
            pres.append(z.numpy().copy())
            z = torch.relu(z)
    h = h.numpy()
    W = [net64[j].weight.detach().numpy() for j in lin[layer:]]
    b = [net64[j].bias.detach().numpy() for j in lin[layer:]]
    N = x.shape[0]
    sizes = [w.shape[0] for w in W]
    n_in = W[0].shape[1]
    # parameter deltas: ΔW_k (sizes[0] x n_in), Δb_k, Δb_j (later)
    n_delta = sizes[0] * n_in + sum(sizes)
    col = 0
    d0, col = col, col + n_delta           # δ
    dp0, col = col, col + n_delta          # δ⁺
    dm0, col = col, col + n_delta          # δ⁻
    s_col, col = col, col + 1
    z0 = []                                 # per layer: first column of z[p, neuron]
    for n in sizes:
        z0.append(col)
        col += N * n
    n_vars = col
    bias_off = [sizes[0] * n_in + sum(sizes[:i]) for i in range(len(sizes))]

    rows, cols, vals, lo, hi = [], [], [], [], []
    r = 0

    def add(rr, cc, vv):
        rows.append(np.asarray(rr))
        cols.append(np.asarray(cc))
        vals.append(np.asarray(vv, dtype=np.float64))

    # δ - δ⁺ + δ⁻ = 0 ; δ⁺ - s <= 0 ; δ⁻ - s <= 0
    d = np.arange(n_delta)
    add(np.repeat(r + d, 3), np.stack([d0 + d, dp0 + d, dm0 + d], 1).ravel(), np.tile([1.0, -1.0, 1.0], n_delta))
    lo.append(np.zeros(n_delta)); hi.append(np.zeros(n_delta)); r += n_delta
    for base in (dp0, dm0):
        add(np.repeat(r + d, 2), np.stack([base + d, np.full(n_delta, s_col)], 1).ravel(), np.tile([1.0, -1.0], n_delta))
        lo.append(np.full(n_delta, -np.inf)); hi.append(np.zeros(n_delta)); r += n_delta
    # layer k: z_k - ΔW h - Δb_k = W h + b
    n0 = sizes[0]
    P, I = np.meshgrid(np.arange(N), np.arange(n0), indexing="ij")
    P, I = P.ravel(), I.ravel()
    m = P.size
    rr = np.arange(r, r + m)
    add(rr, z0[0] + P * n0 + I, np.ones(m))
    add(np.repeat(rr, n_in), d0 + (I[:, None] * n_in + np.arange(n_in)).ravel(), -h[P].ravel())
    add(rr, d0 + bias_off[0] + I, -np.ones(m))
    rhs = (h @ W[0].T + b[0])[P, I]
    lo.append(rhs); hi.append(rhs); r += m
    # later layers: z_j - W_j D_{j-1} z_{j-1} - Δb_j = b_j
    for li in range(1, len(sizes)):
        nj, nprev = sizes[li], sizes[li - 1]
        mask = pres[li - 1] > 0  # (N, nprev)
        P, J = np.meshgrid(np.arange(N), np.arange(nj), indexing="ij")
        P, J = P.ravel(), J.ravel()
        m = P.size
        rr = np.arange(r, r + m)
        add(rr, z0[li] + P * nj + J, np.ones(m))
        coef = -(W[li][J] * mask[P])  # (m, nprev)
        add(np.repeat(rr, nprev), (z0[li - 1] + P[:, None] * nprev + np.arange(nprev)).ravel(), coef.ravel())
        add(rr, d0 + bias_off[li] + J, -np.ones(m))
        lo.append(b[li][J]); hi.append(b[li][J]); r += m
    # output: z_L[label] - z_L[c] >= margin
    nL = sizes[-1]
    P, C = np.meshgrid(np.arange(N), np.arange(nL), indexing="ij")
    keep = C != labels[P]
    P, C = P[keep], C[keep]
    m = P.size
    rr = np.arange(r, r + m)
    add(rr, z0[-1] + P * nL + labels[P], np.ones(m))
    add(rr, z0[-1] + P * nL + C, -np.ones(m))
    lo.append(np.full(m, margin)); hi.append(np.full(m, np.inf)); r += m

    A = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(r, n_vars))
    # bounds: deltas, and the activation pattern of every hidden layer as bounds on z
    lb = np.full(n_vars, -np.inf)
    ub = np.full(n_vars, np.inf)
    lb[d0:d0 + n_delta], ub[d0:d0 + n_delta] = -delta_bound, delta_bound
    lb[dp0:dm0 + n_delta], ub[dp0:dm0 + n_delta] = 0.0, delta_bound
    lb[s_col], ub[s_col] = 0.0, delta_bound
    for li in range(len(sizes) - 1):
        act = (pres[li] > 0).ravel()
        sl = slice(z0[li], z0[li] + N * sizes[li])
        lbl, ubl = lb[sl], ub[sl]
        lbl[act] = 0.0
        ubl[~act] = 0.0
    cost = np.zeros(n_vars)
    cost[dp0:dm0 + n_delta] = 1.0 / n_delta
    cost[s_col] = 1.0
    backend = solvers.create("highs", method=method, time_limit=time_limit,
                             extra={} if method != "ipm" else {"run_crossover": "off"})
    backend.add_variables(n_vars, lb, ub, cost)
    backend.add_rows(A, np.concatenate(lo), np.concatenate(hi))
    build = time.perf_counter() - t0
    res = backend.solve()
    return {"status": res.status, "objective": res.objective, "build_time": build, "solve_time": res.solve_time,
            "total_time": time.perf_counter() - t0, "lp": backend.size(), "solver": res.to_dict()}
