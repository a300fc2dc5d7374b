"""Soundness fuzz of region certification: random near-boundary verdicts against an exact reference.

Why: a verifier's bugs hide at the decision boundary, where bounds, solver tolerances and rounding
all matter. Each case is a tiny network (an MLP, or a CNN with max/avg pooling), a region (a box or
a V-polytope) and an unsafe-output property whose threshold is set from the exact optimum so that
the region is safe or unsafe by a margin ``delta`` drawn log-uniformly from [1e-9, 1e-3].

The reference never imports ``provrepair.certify``:

* an exact MILP (plain big-M on HiGHS through ``highspy``, big-M from interval arithmetic computed
  here) gives ``min_x max_r (G_r f(x) - h_r)`` over the region for each unsafe disjunct, with its
  dual bound and a minimiser;
* the minimiser, moved into the region (box: clipped; polytope: its weights renormalised), is
  evaluated by a plain float64 forward pass. The threshold is shifted from that value, so an
  "unsafe" case carries a concrete witness that violates by ``delta``, and a "safe" case is safe
  by at least ``delta - (value - dual bound)`` (``delta`` is raised to 4x that gap when needed);
* random points of the region (and its corners or vertices) evaluated the same way.

Then ``provrepair.certify`` (method auto on most cases, ibp or crown on some) is judged:

* false certified: "certified" while the witness, a sample, or the MILP shows a violation;
* false violated: "violated" with a counterexample that is missing, not inside the region (boxes:
  exactly; polytopes: NNLS membership residual above 1e-12) or not violating in float64. (A valid
  counterexample is a proof; if the MILP's bound disagrees, the case is flagged as a reference error.)

    python benchmarks/soundness_fuzz.py                 # 10,000 cases -> results/soundness_fuzz.json
    python benchmarks/soundness_fuzz.py --quick         # a few hundred cases
    python benchmarks/soundness_fuzz.py --group 17      # re-run one network's cases (reproduce)
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import highspy
import numpy as np
import scipy
import torch
import torch.nn.functional as F
from scipy.optimize import nnls
from torch import nn

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "soundness_fuzz.json"

CASES_PER_NET = 8
DELTA_RANGE = (1e-9, 1e-3)
METHOD_WEIGHTS = {"auto": 0.7, "ibp": 0.15, "crown": 0.15}
#: A witness or counterexample must violate by more than this (float64 rounding of tiny nets: ~1e-15).
VIOLATION_TOL = 1e-12
#: A polytope counterexample farther than this from the hull (NNLS residual, inf-norm) is outside.
MEMBERSHIP_TOL = 1e-12
SAMPLES = 256
PRODUCT_TIMEOUT = 10.0
MILP_TIME_LIMIT = 60.0


# ====================================================================== networks
def _dense(rng, n_in, n_out, gain):
    w = (rng.standard_normal((n_out, n_in)) * gain / math.sqrt(n_in)).astype(np.float32)
    b = (rng.standard_normal(n_out) * 0.3).astype(np.float32)
    return w, b


def _set(layer, w, b):
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(w).reshape(layer.weight.shape))
        layer.bias.copy_(torch.from_numpy(b))
    return layer


def make_net(rng: np.random.Generator, kind: str) -> tuple[nn.Sequential, tuple[int, ...]]:
    """A tiny float32 network of only the layers the product supports; weights drawn by numpy so the
    case depends on the seed alone."""
    gain = rng.uniform(1.0, 2.0)
    n_out = int(rng.integers(2, 5))
    if kind == "mlp":
        d = int(rng.integers(2, 7))
        widths = [d] + [int(rng.integers(4, 17)) for _ in range(2)] + [n_out]
        layers: list[nn.Module] = []
        for i in range(3):
            layers.append(_set(nn.Linear(widths[i], widths[i + 1]), *_dense(rng, widths[i], widths[i + 1], gain)))
            if i < 2:
                layers.append(nn.ReLU())
        return nn.Sequential(*layers).eval(), (d,)
    side = int(rng.choice([4, 6]))
    c1 = int(rng.integers(2, 4))
    k = 3 if side == 6 else int(rng.choice([2, 3]))
    pad = int(rng.integers(0, 2))
    conv = nn.Conv2d(1, c1, k, padding=pad)
    _set(conv, *_dense(rng, k * k, c1, gain))  # the weight drawn flat, (c1, k*k)
    s = side + 2 * pad - k + 1
    pool = (nn.MaxPool2d(2) if rng.random() < 0.6 else nn.AvgPool2d(2)) if s >= 2 else None
    layers = [conv]
    if pool is not None and rng.random() < 0.3:
        layers += [pool, nn.ReLU()]  # pooling before the activation
    else:
        layers += [nn.ReLU()] + ([pool] if pool is not None else [])
    s = s // 2 if pool is not None else s
    ch = c1
    if s >= 3 and rng.random() < 0.4:
        conv2 = nn.Conv2d(c1, 2, 2, stride=int(rng.integers(1, 3)))
        _set(conv2, *_dense(rng, c1 * 4, 2, gain))
        layers += [conv2, nn.ReLU()]
        s = (s - 2) // conv2.stride[0] + 1
        ch = 2
    hidden = int(rng.integers(4, 13))
    flat = ch * s * s
    layers += [nn.Flatten(), _set(nn.Linear(flat, hidden), *_dense(rng, flat, hidden, gain)), nn.ReLU(),
               _set(nn.Linear(hidden, n_out), *_dense(rng, hidden, n_out, gain))]
    return nn.Sequential(*layers).eval(), (1, side, side)


# ====================================================================== reference network (float64, numpy)
@dataclass
class RefNet:
    """The network as float64 operators on flat vectors: ('affine', W, b), ('relu',), ('max', groups)."""

    ops: list
    n_in: int
    n_out: int

    @classmethod
    def of(cls, net: nn.Sequential, input_shape: tuple[int, ...]) -> RefNet:
        shape, ops = tuple(input_shape), []
        n_in = math.prod(shape)
        for m in net:
            n = math.prod(shape)
            if isinstance(m, nn.Linear):
                ops.append(("affine", m.weight.detach().double().numpy(), m.bias.detach().double().numpy()))
                shape = (m.out_features,)
            elif isinstance(m, nn.Conv2d):
                basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
                out = F.conv2d(basis, m.weight.detach().double(), None, m.stride, m.padding, m.dilation, m.groups)
                shape = tuple(out.shape[1:])
                b = np.repeat(m.bias.detach().double().numpy(), shape[1] * shape[2])
                ops.append(("affine", out.reshape(n, -1).T.numpy().copy(), b))
            elif isinstance(m, nn.AvgPool2d):
                out = m(torch.eye(n, dtype=torch.float64).reshape(n, *shape))
                shape = tuple(out.shape[1:])
                ops.append(("affine", out.reshape(n, -1).T.numpy().copy(), np.zeros(math.prod(shape))))
            elif isinstance(m, nn.MaxPool2d):
                k, st = m.kernel_size, m.stride
                assert m.padding == 0 and m.dilation == 1 and not m.ceil_mode and isinstance(k, int) and isinstance(st, int)
                c, hh, ww = shape
                ho, wo = (hh - k) // st + 1, (ww - k) // st + 1
                groups = np.array([[ci * hh * ww + (i * st + a) * ww + (j * st + b) for a in range(k) for b in range(k)]
                                   for ci in range(c) for i in range(ho) for j in range(wo)])
                ops.append(("max", groups))
                shape = (c, ho, wo)
            elif isinstance(m, nn.ReLU):
                ops.append(("relu",))
            elif isinstance(m, nn.Flatten):
                shape = (n,)
            else:
                raise TypeError(f"the reference does not model {type(m).__name__}")
        ref = cls(ops, n_in, math.prod(shape))
        # the extraction must reproduce torch's own float64 forward pass
        X = np.random.default_rng(0).standard_normal((8, n_in))
        with torch.no_grad():
            want = net.double()(torch.from_numpy(X).reshape(8, *input_shape)).numpy()
        net.float()
        assert np.abs(ref.forward(X) - want).max() <= 1e-9 * (1 + np.abs(want).max())
        return ref

    def forward(self, X: np.ndarray) -> np.ndarray:
        """A plain float64 forward pass of flat inputs (n, n_in)."""
        Y = np.asarray(X, dtype=np.float64).reshape(-1, self.n_in)
        for op in self.ops:
            if op[0] == "affine":
                Y = Y @ op[1].T + op[2]
            elif op[0] == "relu":
                Y = np.maximum(Y, 0.0)
            else:
                Y = Y[:, op[1]].max(axis=2)
        return Y

    def intervals(self, lo: np.ndarray, hi: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Interval bounds of each operator's input, widened so that rounding cannot make them unsound."""
        out = []
        for op in self.ops:
            out.append((lo, hi))
            if op[0] == "affine":
                mid, rad = (lo + hi) / 2, (hi - lo) / 2
                c, r = op[1] @ mid + op[2], np.abs(op[1]) @ rad
                pad = 1e-9 * (1 + np.abs(c) + r)
                lo, hi = c - r - pad, c + r + pad
            elif op[0] == "relu":
                lo, hi = np.maximum(lo, 0.0), np.maximum(hi, 0.0)
            else:
                lo, hi = lo[op[1]].max(axis=1), hi[op[1]].max(axis=1)
        out.append((lo, hi))
        return out


# ====================================================================== the exact MILP (big-M, HiGHS)
class _Model:
    """Columns and rows of one MILP, passed to HiGHS in one go."""

    def __init__(self):
        self.lb, self.ub, self.cost, self.integer = [], [], [], []
        self.rows, self.cols, self.vals, self.rlo, self.rhi = [], [], [], [], []

    def var(self, lb, ub, cost=0.0, integer=False) -> int:
        self.lb.append(float(lb)), self.ub.append(float(ub)), self.cost.append(cost), self.integer.append(integer)
        return len(self.lb) - 1

    def row(self, idx, coef, lo, hi) -> None:
        r = len(self.rlo)
        for j, a in zip(idx, coef):
            if a != 0.0:
                self.rows.append(r), self.cols.append(int(j)), self.vals.append(float(a))
        self.rlo.append(float(lo)), self.rhi.append(float(hi))

    def solve(self, h: highspy.Highs) -> tuple[str, np.ndarray | None, float]:
        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = len(self.lb), len(self.rlo)
        lp.col_cost_, lp.col_lower_, lp.col_upper_ = np.array(self.cost), np.array(self.lb), np.array(self.ub)
        lp.row_lower_, lp.row_upper_ = np.array(self.rlo), np.array(self.rhi)
        order = np.lexsort((np.array(self.rows), np.array(self.cols)))
        cols = np.array(self.cols)[order]
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_ = np.searchsorted(cols, np.arange(lp.num_col_ + 1)).astype(np.int32)
        lp.a_matrix_.index_ = np.array(self.rows, dtype=np.int32)[order]
        lp.a_matrix_.value_ = np.array(self.vals)[order]
        lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = lp.num_col_, lp.num_row_
        lp.integrality_ = [highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous for i in self.integer]
        h.clearModel()
        h.passModel(lp)
        h.run()
        status = h.modelStatusToString(h.getModelStatus())
        if status != "Optimal":
            return status, None, -math.inf
        info = h.getInfo()  # without integer columns HiGHS solves an LP and leaves the MIP bound unset
        bound = info.mip_dual_bound if any(self.integer) else info.objective_function_value
        return status, np.array(h.getSolution().col_value), float(bound)


def _highs() -> highspy.Highs:
    # HiGHS runs one scheduler per process and refuses another thread count later ("Not Set")
    # unless it is reset: the product may have started it with its own count
    highspy.Highs.resetGlobalScheduler(True)
    h = highspy.Highs()
    # Tolerances 1e-9: at 1e-10 HiGHS 1.16 returned wrong "Optimal" minima (seed 0: group 168 case 4 with
    # presolve on, group 14 case 6 with it off; points of the region 0.05-0.08 below the claimed bound),
    # at the defaults the bound can be 1e-6 off. Heuristics off: they only cost time on these tiny MILPs.
    for k, v in {"output_flag": False, "threads": 1, "random_seed": 0, "mip_rel_gap": 0.0, "mip_abs_gap": 1e-13,
                 "primal_feasibility_tolerance": 1e-9, "dual_feasibility_tolerance": 1e-9,
                 "mip_feasibility_tolerance": 1e-9, "mip_heuristic_effort": 0.0,
                 "time_limit": MILP_TIME_LIMIT}.items():
        h.setOptionValue(k, v)
    return h


@dataclass
class Optimum:
    value: float  # the margin at the witness (float64 forward pass): an upper bound on the minimum
    bound: float  # HiGHS's dual bound: a lower bound on the minimum (up to its tolerances)
    x: np.ndarray  # the witness, inside the region
    status: str


def milp_minimum(ref: RefNet, region, disjuncts: list, highs: highspy.Highs) -> Optimum:
    """``min over the region of min_d max_r (G_dr f(x) - h_dr)`` (the property's margin) by one big-M MILP."""
    m = _Model()
    n = ref.n_in
    if region[0] == "box":
        lo, hi = region[1], region[2]
        x = [m.var(lo[i], hi[i]) for i in range(n)]
    else:
        V = region[1]
        lo, hi = V.min(axis=0), V.max(axis=0)
        lam = [m.var(0.0, 1.0) for _ in range(V.shape[0])]
        m.row(lam, np.ones(len(lam)), 1.0, 1.0)
        x = [m.var(lo[i] - 1e-9 * (1 + abs(lo[i])), hi[i] + 1e-9 * (1 + abs(hi[i]))) for i in range(n)]
        for i in range(n):
            m.row([x[i]] + lam, np.concatenate([[1.0], -V[:, i]]), 0.0, 0.0)
    bounds = ref.intervals(lo, hi)
    cur = x
    for k, op in enumerate(ref.ops):
        olo, ohi = bounds[k + 1]
        if op[0] == "affine":
            W, b = op[1], op[2]
            nxt = [m.var(olo[j], ohi[j]) for j in range(W.shape[0])]
            for j in range(W.shape[0]):
                nz = np.flatnonzero(W[j])
                m.row([nxt[j]] + [cur[i] for i in nz], np.concatenate([[1.0], -W[j, nz]]), b[j], b[j])
        elif op[0] == "relu":
            ilo, ihi = bounds[k]
            nxt = []
            for j, v in enumerate(cur):
                if ihi[j] <= 0:
                    nxt.append(m.var(0.0, 0.0))
                elif ilo[j] >= 0:
                    nxt.append(v)
                else:
                    a, d = m.var(0.0, ihi[j]), m.var(0.0, 1.0, integer=True)
                    m.row([a, v], [1.0, -1.0], 0.0, math.inf)  # a >= z
                    m.row([a, d], [1.0, -ihi[j]], -math.inf, 0.0)  # a <= u d
                    m.row([a, v, d], [1.0, -1.0, -ilo[j]], -math.inf, -ilo[j])  # a <= z - l (1 - d)
                    nxt.append(a)
        else:
            ilo, ihi = bounds[k]
            nxt = []
            for j, grp in enumerate(op[1]):
                top = ilo[grp].max()
                cand = [i for i in grp if ihi[i] >= top]  # inputs that can be the maximum
                if len(cand) == 1:
                    nxt.append(cur[cand[0]])
                    continue
                y = m.var(olo[j], ohi[j])
                umax = ihi[grp].max()
                for i in grp:
                    m.row([y, cur[i]], [1.0, -1.0], 0.0, math.inf)  # y >= z_i
                ds = [m.var(0.0, 1.0, integer=True) for _ in cand]
                m.row(ds, np.ones(len(ds)), 1.0, 1.0)
                for i, d in zip(cand, ds):  # y <= z_i + (umax - l_i)(1 - d_i)
                    M = umax - ilo[i]
                    m.row([y, cur[i], d], [1.0, -1.0, M], -math.inf, M)
                nxt.append(y)
        cur = nxt
    # t >= max_r (G_r y - h_r) for the disjunct a selector picks; the others are relaxed by big-M
    ylo, yhi = bounds[-1]
    rows = [(d, G[r], h0[r]) for d, (G, h0) in enumerate(disjuncts) for r in range(G.shape[0])]
    rlo = [float(np.sum(np.minimum(g * ylo, g * yhi)) - c) for _, g, c in rows]
    rhi = [float(np.sum(np.maximum(g * ylo, g * yhi)) - c) for _, g, c in rows]
    tlo = min(max(v for (d2, _, _), v in zip(rows, rlo) if d2 == d) for d in range(len(disjuncts)))
    tlo -= 1e-6 * (1 + abs(tlo))
    t = m.var(tlo, max(rhi) + 1e-6 * (1 + abs(max(rhi))), cost=1.0)
    sel = [m.var(0.0, 1.0, integer=True) for _ in disjuncts] if len(disjuncts) > 1 else None
    if sel:
        m.row(sel, np.ones(len(sel)), 1.0, 1.0)
    for (d, g, c), hi_r in zip(rows, rhi):
        if sel is None:  # t >= g y - c
            m.row([t] + cur, np.concatenate([[1.0], -g]), -c, math.inf)
        else:  # t >= g y - c - M (1 - s_d)
            M = hi_r - tlo + 1e-6 * (1 + abs(hi_r - tlo))
            m.row([t, sel[d]] + cur, np.concatenate([[1.0, -M], -g]), -c - M, math.inf)
    status, sol, bound = m.solve(highs)
    if sol is None:
        return Optimum(math.nan, bound, np.full(n, np.nan), status)
    if region[0] == "box":
        xw = np.clip(sol[x], region[1], region[2])
    else:
        w = np.clip(sol[lam], 0.0, None)
        xw = (w / w.sum()) @ region[1]
    return Optimum(float(region_margin(ref, disjuncts, xw[None])[0]), bound, xw, status)


# ====================================================================== regions and properties
def make_region(rng: np.random.Generator, net_kind: str, n: int) -> tuple:
    """('box', lo, hi) or ('poly', V): small, so most ReLUs are stable and the MILP stays tiny."""
    cnn = net_kind == "cnn"
    centre = rng.uniform(0.0, 1.0, n) if cnn else rng.standard_normal(n)
    if rng.random() < 0.5:
        if cnn and rng.random() < 0.5:  # a patch of a few free pixels
            rad = np.zeros(n)
            rad[rng.choice(n, int(rng.integers(2, 7)), replace=False)] = 10 ** rng.uniform(-2, -0.5)
        else:
            rad = 10 ** rng.uniform(*((-2.3, -1) if cnn else (-1.7, -0.3)), size=n)
            if not cnn and rng.random() < 0.2:
                rad[rng.random(n) < 0.5] = 0.0  # some coordinates fixed
        return ("box", centre - rad, centre + rad)
    k = int(rng.integers(2, 6 if cnn else 7))
    scale = 10 ** rng.uniform(*((-2.3, -1.1) if cnn else (-1.7, -0.4)))
    V = centre + scale * rng.standard_normal((k, n))
    if rng.random() < 0.2:  # a redundant vertex inside the hull
        V = np.vstack([V, rng.dirichlet(np.ones(k)) @ V])
    return ("poly", V)


def make_property(rng: np.random.Generator, n_out: int, y_centre: np.ndarray) -> tuple[str, list]:
    """Unshifted unsafe disjuncts [(G, h0)]: the threshold shift is set later from the optimum."""
    kind = str(rng.choice(["label", "halfspaces", "polyhedron"], p=[0.5, 0.25, 0.25]))
    if kind == "label":
        c = int(np.argmax(y_centre))
        ds = []
        for j in range(n_out):
            if j != c:
                G = np.zeros((1, n_out))
                G[0, c], G[0, j] = 1.0, -1.0
                ds.append((G, np.zeros(1)))
        return kind, ds
    if kind == "halfspaces":
        return kind, [(rng.standard_normal((1, n_out)), np.zeros(1)) for _ in range(int(rng.integers(1, 3)))]
    r = int(rng.integers(2, 4))
    return kind, [(rng.standard_normal((r, n_out)), 0.5 * rng.standard_normal(r))]


def region_margin(ref: RefNet, disjuncts: list, X: np.ndarray) -> np.ndarray:
    """The property's margin at each point: min over disjuncts of max over rows of G y - h (<= 0: unsafe)."""
    Y = ref.forward(X)
    return np.min([np.max(Y @ G.T - h, axis=1) for G, h in disjuncts], axis=0)


def sample_region(rng: np.random.Generator, region: tuple, n: int) -> np.ndarray:
    if region[0] == "box":
        lo, hi = region[1], region[2]
        X = lo + rng.random((n, lo.size)) * (hi - lo)
        free = np.flatnonzero(hi > lo)
        if free.size <= 6:  # every corner
            bits = (np.arange(2 ** free.size)[:, None] >> np.arange(free.size)) & 1
            C = np.tile(lo, (bits.shape[0], 1))
            C[:, free] = np.where(bits == 1, hi[free], lo[free])
            X = np.vstack([X, C])
        return X
    V = region[1]
    return np.vstack([V, rng.dirichlet(np.full(V.shape[0], 0.5), n) @ V])


def polytope_residual(V: np.ndarray, x: np.ndarray) -> tuple[float, float]:
    """How far ``x`` is from conv(V): (residual of the best convex weights NNLS finds, inf-norm;
    a lower bound on the Euclidean distance from the separating direction, 0 when none separates)."""
    scale = 1.0 + np.abs(V).max()
    A = np.vstack([V.T, scale * np.ones(V.shape[0])])
    lam, _ = nnls(A, np.concatenate([x, [scale]]), maxiter=50 * V.shape[0])
    lam = lam / lam.sum() if lam.sum() > 0 else np.full(V.shape[0], 1.0 / V.shape[0])
    d = x - lam @ V
    res = float(np.abs(d).max())
    nd = float(np.linalg.norm(d))
    sep = float((d @ x - (V @ d).max()) / nd) if nd > 0 else 0.0
    return res, max(sep, 0.0)


# ====================================================================== cases
@dataclass
class Case:
    group: int
    index: int  # within the group
    net_kind: str
    region: tuple
    prop_kind: str
    disjuncts: list  # shifted: [(G, h)]
    designed: str  # safe | unsafe
    delta: float
    method: str
    ref_upper: float  # margin at the witness: >= the true minimum margin
    ref_lower: float  # the MILP's dual bound on the minimum margin
    witness: np.ndarray
    ref_seconds: float
    delta_raised: bool = False
    ref_status: str = "Optimal"
    extra: dict = field(default_factory=dict)


def make_group(seed: int, group: int, highs: highspy.Highs) -> tuple[nn.Sequential, RefNet, tuple, list[Case]]:
    """One network and its CASES_PER_NET cases, all from ``default_rng([seed, group])``."""
    rng = np.random.default_rng([seed, group])
    net_kind = "mlp" if group % 2 == 0 else "cnn"
    net, shape = make_net(rng, net_kind)
    ref = RefNet.of(net, shape)
    cases = []
    for i in range(CASES_PER_NET):
        t0 = time.perf_counter()
        region = make_region(rng, net_kind, ref.n_in)
        centre = (region[1] + region[2]) / 2 if region[0] == "box" else region[1].mean(axis=0)
        prop_kind, ds = make_property(rng, ref.n_out, ref.forward(centre[None])[0])
        designed = "safe" if rng.random() < 0.5 else "unsafe"
        delta = float(10 ** rng.uniform(math.log10(DELTA_RANGE[0]), math.log10(DELTA_RANGE[1])))
        method = str(rng.choice(list(METHOD_WEIGHTS), p=list(METHOD_WEIGHTS.values())))
        opt = milp_minimum(ref, region, ds, highs)
        value, bound = opt.value, opt.bound
        raised = False
        if designed == "safe" and 4 * (value - bound) > delta:
            delta, raised = 4 * (value - bound), True
        s = value - delta if designed == "safe" else value + delta
        shifted = [(G, h0 + s) for G, h0 in ds]
        witness = opt.x
        upper = float(region_margin(ref, shifted, witness[None])[0])
        cases.append(Case(group, i, net_kind, region, prop_kind, shifted, designed, delta, method, upper,
                          bound - s, witness, time.perf_counter() - t0, raised, opt.status))
    return net, ref, shape, cases


def _spec(cases: list[Case], shape: tuple[int, ...]):
    from provrepair.specs import OutputProperty, RegionSpec
    from provrepair.specs.regions import Box, VPolytope

    regions = [Box(c.region[1].reshape(shape), c.region[2].reshape(shape)) if c.region[0] == "box"
               else VPolytope(c.region[1].reshape((-1,) + shape)) for c in cases]
    props = [OutputProperty.unsafe(c.disjuncts) for c in cases]
    return RegionSpec(tuple(regions), tuple(props))


def judge(case: Case, ref: RefNet, verdict, rng: np.random.Generator) -> dict:
    """The product's verdict on one case against the witness, the MILP and sampling."""
    X = sample_region(rng, case.region, SAMPLES)
    sample_min = float(region_margin(ref, case.disjuncts, X).min())
    out = {"status": verdict.status, "decided_by": verdict.method, "seconds": verdict.seconds,
           "sample_min": sample_min, "false": None}
    if verdict.status == "certified":
        why = []
        if case.ref_upper < -VIOLATION_TOL:
            why.append(f"the reference witness violates by {-case.ref_upper:.3g}")
        if sample_min < -VIOLATION_TOL:
            why.append(f"a sample violates by {-sample_min:.3g}")
        if why:
            out["false"] = "certified: " + "; ".join(why)
    elif verdict.status == "violated":
        why = []
        x = verdict.counterexample
        if x is None:
            why.append("no counterexample")
        else:
            x = np.asarray(x, dtype=np.float64).reshape(-1)
            if case.region[0] == "box":
                out_by = float(max((case.region[1] - x).max(), (x - case.region[2]).max(), 0.0))
                if out_by > 0:
                    why.append(f"the counterexample is outside the box by {out_by:.3g}")
            else:
                res, sep = polytope_residual(case.region[1], x)
                out["cex_residual"] = res
                if res > MEMBERSHIP_TOL:
                    why.append(f"the counterexample is outside the polytope (residual {res:.3g}, "
                               f"separated by >= {sep:.3g})")
            mx = float(region_margin(ref, case.disjuncts, x[None])[0])
            out["cex_margin"] = mx
            if mx > VIOLATION_TOL:
                why.append(f"the counterexample does not violate (margin {mx:.3g})")
        if why:
            if case.ref_lower > VIOLATION_TOL:
                why.append(f"the MILP proves the region safe by {case.ref_lower:.3g}")
            out["false"] = "violated: " + "; ".join(why)
        elif case.ref_lower > VIOLATION_TOL:  # a re-validated counterexample is a proof: the reference erred
            out["reference_inconsistent"] = (f"a valid counterexample (margin {out['cex_margin']:.3g}) contradicts "
                                             f"the MILP bound {case.ref_lower:.6g}")
    # the reference itself: sampling must never beat the MILP's dual bound
    if sample_min < case.ref_lower - 1e-9 * (1 + abs(sample_min)):
        out["reference_inconsistent"] = f"a sample reaches {sample_min:.6g} below the MILP bound {case.ref_lower:.6g}"
    return out


def run_groups(seed: int, groups, progress=None) -> list[dict]:
    """Generate, reference and certify the cases of ``groups``; one record per case."""
    import provrepair

    highs = _highs()
    records = []
    for g in groups:
        net, ref, shape, cases = make_group(seed, g, highs)
        rng = np.random.default_rng([seed, g, 1])
        verdicts: dict[int, object] = {}
        for method in METHOD_WEIGHTS:
            sub = [c for c in cases if c.method == method and c.ref_status == "Optimal"]
            if sub:
                cert = provrepair.certify(net, _spec(sub, shape), method=method, timeout=PRODUCT_TIMEOUT)
                verdicts.update({c.index: v for c, v in zip(sub, cert.verdicts)})
        for c in cases:
            rec = {"seed": seed, "group": g, "case": c.index, "net": c.net_kind, "region": c.region[0],
                   "property": c.prop_kind, "designed": c.designed, "delta": c.delta, "method": c.method,
                   "ref_upper": c.ref_upper, "ref_lower": c.ref_lower, "ref_seconds": c.ref_seconds,
                   "delta_raised": c.delta_raised, "ref_status": c.ref_status}
            if c.index in verdicts:
                rec.update(judge(c, ref, verdicts[c.index], rng))
            else:
                rec.update({"status": "skipped", "false": None, "seconds": 0.0})
            records.append(rec)
        if progress:
            progress(g, records)
    return records


# ====================================================================== report
def summarise(records: list[dict]) -> dict:
    def block(rs):
        judged = [r for r in rs if r["status"] != "skipped"]
        return {
            "cases": len(judged),
            "designed_safe": sum(r["designed"] == "safe" for r in judged),
            "certified": sum(r["status"] == "certified" for r in judged),
            "violated": sum(r["status"] == "violated" for r in judged),
            "unknown": sum(r["status"] == "unknown" for r in judged),
            "false_certified": sum(bool(r["false"]) and r["false"].startswith("certified") for r in judged),
            "false_violated": sum(bool(r["false"]) and r["false"].startswith("violated") for r in judged),
            "product_seconds": round(sum(r["seconds"] for r in judged), 3),
            "reference_seconds": round(sum(r["ref_seconds"] for r in rs), 3),
        }

    out = {"total": block(records), "skipped_reference_failed": sum(r["status"] == "skipped" for r in records),
           "delta_raised": sum(r["delta_raised"] for r in records),
           "reference_inconsistent": sum("reference_inconsistent" in r for r in records)}
    for key in ("net", "region", "method", "property", "designed"):
        out[f"by_{key}"] = {v: block([r for r in records if r[key] == v]) for v in sorted({r[key] for r in records})}
    out["by_net_region"] = {f"{n}/{g}": block([r for r in records if r["net"] == n and r["region"] == g])
                            for n in ("mlp", "cnn") for g in ("box", "poly")}
    decades = {}
    for r in records:
        decades.setdefault(f"1e{math.floor(math.log10(r['delta']))}", []).append(r)
    out["by_delta_decade"] = {k: block(v) for k, v in sorted(decades.items(), key=lambda kv: float(kv[0]))}
    out["decided_by"] = {}
    for r in records:
        if r["status"] in ("certified", "violated"):
            out["decided_by"].setdefault(r["status"], {})
            m = r.get("decided_by") or "?"
            out["decided_by"][r["status"]][m] = out["decided_by"][r["status"]].get(m, 0) + 1
    return out


def table(summary: dict) -> str:
    cols = ["cases", "certified", "violated", "unknown", "false_certified", "false_violated", "product_seconds",
            "reference_seconds"]
    lines = [f"{'kind':<14}" + "".join(f"{c:>18}" for c in cols)]
    rows = [(k, v) for k, v in summary["by_net_region"].items()] + [(k, v) for k, v in summary["by_method"].items()]
    rows.append(("total", summary["total"]))
    for k, v in rows:
        lines.append(f"{k:<14}" + "".join(f"{v[c]:>18}" for c in cols))
    return "\n".join(lines)


def versions() -> dict:
    def ver(p):
        try:
            return importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "scipy": scipy.__version__, "highspy": ver("highspy"), "provrepair": ver("provrepair"),
            "machine": platform.machine(), "cpus": __import__("os").cpu_count()}


def write(out: Path, args, n_cases: int, groups: list, records: list[dict], wall: float, complete: bool) -> None:
    doc = {"benchmark": "soundness_fuzz", "seed": args.seed, "cases_requested": n_cases, "complete": complete,
           "groups_requested": len(groups), "groups_done": len({r["group"] for r in records}),
           "cases_per_net": CASES_PER_NET, "delta_range": DELTA_RANGE, "method_weights": METHOD_WEIGHTS,
           "violation_tol": VIOLATION_TOL, "membership_tol": MEMBERSHIP_TOL, "samples_per_case": SAMPLES,
           "product_timeout_s": PRODUCT_TIMEOUT, "wall_seconds": round(wall, 1), "versions": versions(),
           "summary": summarise(records),
           "flagged": [r for r in records if r["false"] or "reference_inconsistent" in r],
           "reproduce": "python benchmarks/soundness_fuzz.py --seed SEED --group GROUP"}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=10_000, help="number of region verdicts (default 10,000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a few hundred cases (320)")
    ap.add_argument("--group", type=int, action="append", help="only these network groups (reproduce a case)")
    ap.add_argument("--out", type=Path, default=None, help=f"JSON results (default {RESULTS}; none with --group)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    n_cases = 320 if args.quick else args.cases
    groups = args.group or list(range(math.ceil(n_cases / CASES_PER_NET)))
    t0 = time.perf_counter()

    def progress(g, records):
        if len(groups) > 20 and (groups.index(g) + 1) % max(1, len(groups) // 20) == 0:
            bad = sum(bool(r["false"]) for r in records)
            print(f"  {len(records)} cases, {time.perf_counter() - t0:.0f} s, {bad} false", flush=True)
            if out is not None:  # a run cut short still leaves its figures so far
                write(out, args, n_cases, groups, records, time.perf_counter() - t0, complete=False)

    out = args.out if args.out is not None else (None if args.group else RESULTS)
    records = run_groups(args.seed, groups, progress)
    wall = time.perf_counter() - t0
    summary = summarise(records)
    print(table(summary))
    for r in records:
        if r["false"] or "reference_inconsistent" in r:
            print(f"FLAG seed={r['seed']} group={r['group']} case={r['case']} {r['net']}/{r['region']} "
                  f"{r['designed']} delta={r['delta']:.3g} method={r['method']}: {r['false'] or r['reference_inconsistent']}")
    t = summary["total"]
    print(f"false certified: {t['false_certified']}   false violated: {t['false_violated']}   "
          f"unknown: {t['unknown']} of {t['cases']}   ({wall:.1f} s)")
    if out is not None:
        write(out, args, n_cases, groups, records, wall, complete=True)
        print(f"wrote {out}")
    return 0 if t["false_certified"] == 0 and t["false_violated"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
