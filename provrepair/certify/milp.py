"""Complete check of one region against one unsafe output set, as a mixed-integer program.

The network is encoded on the region exactly: every affine map is composed into the linear
expression of the next nonlinear layer's input; a ReLU that the bounds show stable is the identity
or zero, an unstable one gets a continuous output ``z`` and a binary ``a`` with big-M rows taken
from its sound bounds ``l < 0 < u``::

    z >= x,  z <= u a,  z <= x - l (1 - a),  0 <= z <= u

and a MaxPool window whose maximiser the bounds cannot fix gets one binary per candidate input.
The unsafe set ``G y <= h`` is reachable iff the program with ``G y - h <= t, t <= 0`` is feasible;
the solver stops at its first solution (minimising ``t`` pushes it into the unsafe set's interior),
and the solution is moved exactly into the region (the solver meets its rows only within a
tolerance) and re-validated by a plain float64 forward pass before it is reported as a
counterexample. Infeasible means certified; anything else is ``unknown``.

The solver decides feasibility only up to its tolerances, so an unsafe set reached by less than
them can be reported infeasible (the soundness fuzz found one reached by 5.7e-8 on a sub-box of
width 3e-5). The program therefore asks for the unsafe set widened by ``UNSAFE_SLACK``, well
above HiGHS's and Gurobi's feasibility tolerances (1e-7 and 1e-6 by default, relative to the
scaled rows): its infeasibility proves the real set unreachable, and a solution still has to
re-validate against the real ``G y <= h``, or the verdict is ``unknown``.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import torch
from torch import nn
from torch.types import Device

from provrepair import solvers
from provrepair.solvers.base import FEASIBLE, INFEASIBLE, OPTIMAL, TIME_LIMIT, Backend

from ..errors import SolverError
from .bounds import (
    AFFINE,
    MAXPOOL,
    RELU,
    AffineOp,
    BoundPropagator,
    InputSet,
    MaxPoolOp,
)
from .forward import ForwardBounds
from .points import forward_outputs, network_copy

__all__ = ["CERTIFIED", "UNKNOWN", "VIOLATED", "MilpOutcome", "affine_matrix", "complete_check"]

CERTIFIED, VIOLATED, UNKNOWN = "certified", "violated", "unknown"
#: How far the MILP widens the unsafe set ``G y <= h`` (see the module docstring).
UNSAFE_SLACK = 1e-5


@dataclass
class MilpOutcome:
    status: str  # certified | violated | unknown
    counterexample: np.ndarray | None = None  # an input of the region (model input shape)
    output: np.ndarray | None = None  # the network's float64 output there
    reason: str = ""
    seconds: float = 0.0
    size: dict[str, int] = field(default_factory=dict)  # variables, binaries, rows, nonzeros
    solver: dict[str, str] = field(default_factory=dict)  # name, version, status


def affine_matrix(op: AffineOp, in_shape: tuple[int, ...], out_shape: tuple[int, ...],
                  device: Device) -> tuple[sp.csr_matrix, np.ndarray]:
    """The map of an affine operator of a ``BoundPropagator`` on flattened tensors as ``(L, c)``
    with ``y = L x + c``."""
    return op.matrix(in_shape, out_shape, device)


def _widen(M: sp.csr_matrix, n_cols: int) -> sp.csr_matrix:
    return sp.csr_matrix((M.data, M.indices, M.indptr), shape=(M.shape[0], n_cols))


class _Encoding:
    """The network on one region, built into a solver backend as expressions ``M v + c``."""

    def __init__(self, prop: BoundPropagator, inp: InputSet, pre: dict[int, tuple[torch.Tensor, torch.Tensor]],
                 backend: Backend, h_rows: tuple[np.ndarray, np.ndarray] | None = None):
        self.b = backend
        self.binaries = 0
        device = prop.device
        self.weights: np.ndarray | None = None  # the indices of lambda for a V-polytope
        if inp.vertices is not None:  # x = V^T lambda, lambda in the simplex
            V = inp.vertices[0].reshape(inp.vertices.shape[1], -1).cpu().numpy()
            lam = backend.add_variables(V.shape[0], lb=0.0, ub=1.0)
            self.weights = lam
            backend.add_rows(sp.csr_matrix(np.ones((1, lam.size))), lo=1.0, hi=1.0)
            M, c = sp.csr_matrix(V.T), np.zeros(V.shape[1])
        else:
            lo = inp.lower[0].reshape(-1).cpu().numpy()
            hi = inp.upper[0].reshape(-1).cpu().numpy()
            x = backend.add_variables(lo.size, lb=lo, ub=hi)
            M, c = sp.identity(x.size, format="csr"), np.zeros(x.size)
            if h_rows is not None:
                A, rhs = h_rows
                backend.add_rows(sp.csr_matrix(A), hi=rhs)
        self.input_expr = (M.copy(), c.copy())
        for i, op in enumerate(prop.ops):
            if op.kind == AFFINE:
                L, bias = op.matrix(prop.shapes[i], prop.shapes[i + 1], device)
                M, c = sp.csr_matrix(L @ _widen(M, backend.n_vars)), L @ c + bias
            elif op.kind == RELU:
                lo, hi = (t[0].reshape(-1).cpu().numpy() for t in pre[i])
                M, c = self._relu(_widen(M, backend.n_vars), c, lo, hi)
            elif op.kind == MAXPOOL:
                lo, hi = (t[0].cpu().numpy() for t in pre[i])
                M, c = self._maxpool(op, _widen(M, backend.n_vars), c, lo, hi)
            else:  # pragma: no cover - BoundPropagator only compiles the types above
                raise SolverError(f"module {i} cannot be encoded")
        self.output = (_widen(M, backend.n_vars), c)

    def _relu(self, M: sp.csr_matrix, c: np.ndarray, lo: np.ndarray,
              hi: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
        active, unstable = lo >= 0, (lo < 0) & (hi > 0)
        keep = sp.diags(active.astype(np.float64), format="csr")
        idx = np.flatnonzero(unstable)
        M_out, c_out = keep @ M, np.where(active, c, 0.0)
        if idx.size == 0:
            return M_out, c_out
        k = idx.size
        z = self.b.add_variables(k, lb=0.0, ub=hi[idx])
        a = self.b.add_variables(k, lb=0.0, ub=1.0, integer=True)
        self.binaries += k
        n = self.b.n_vars
        Mu = _widen(M[idx], n)
        Z = sp.csr_matrix((np.ones(k), (np.arange(k), z)), shape=(k, n))
        Aa = sp.csr_matrix((np.ones(k), (np.arange(k), a)), shape=(k, n))
        l, u = lo[idx], hi[idx]
        self.b.add_rows(Z - Mu, lo=c[idx])  # z >= x
        self.b.add_rows(Z - sp.diags(u) @ Aa, hi=0.0)  # z <= u a
        self.b.add_rows(Z - Mu - sp.diags(l) @ Aa, hi=c[idx] - l)  # z <= x - l (1 - a)
        M_out = _widen(M_out, n) + sp.csr_matrix((np.ones(k), (idx, z)), shape=(M.shape[0], n))
        return sp.csr_matrix(M_out), c_out

    def _maxpool(self, op: MaxPoolOp, M: sp.csr_matrix, c: np.ndarray, lo: np.ndarray,
                 hi: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
        """One output per window: the dominant input's expression, or a new variable with binaries."""
        C = lo.shape[0]
        hw = op.hw
        index = op.index.cpu().numpy()  # (K, L), hw = padding
        n_windows = index.shape[1]
        lo_f, hi_f = lo.reshape(C, hw), hi.reshape(C, hw)
        rows_M, out_c = [], np.zeros(C * n_windows)
        for ch in range(C):
            for w in range(n_windows):
                cand = index[:, w][index[:, w] < hw]
                best = cand[np.argmax(lo_f[ch, cand])]
                cand = cand[hi_f[ch, cand] >= lo_f[ch, best]]  # the others can never be the maximum
                out = ch * n_windows + w
                if cand.size == 1:
                    rows_M.append(M[ch * hw + cand[0]])
                    out_c[out] = c[ch * hw + cand[0]]
                    continue
                src = ch * hw + cand
                umax = hi_f[ch, cand].max()
                z = self.b.add_variables(1, lb=lo_f[ch, cand].max(), ub=umax)[0]
                a = self.b.add_variables(cand.size, lb=0.0, ub=1.0, integer=True)
                self.binaries += cand.size
                n = self.b.n_vars
                Mc = _widen(M[src], n)
                k = cand.size
                Z = sp.csr_matrix((np.ones(k), (np.arange(k), np.full(k, z))), shape=(k, n))
                Aa = sp.csr_matrix((np.ones(k), (np.arange(k), a)), shape=(k, n))
                big = umax - lo_f[ch, cand]
                self.b.add_rows(Z - Mc, lo=c[src])  # z >= x_k
                self.b.add_rows(Z - Mc + sp.diags(big) @ Aa, hi=c[src] + big)  # z <= x_k when a_k = 1
                self.b.add_rows(sp.csr_matrix((np.ones(k), (np.zeros(k), a)), shape=(1, n)), lo=1.0, hi=1.0)
                rows_M.append(sp.csr_matrix(([1.0], ([0], [z])), shape=(1, n)))
        n = self.b.n_vars
        return sp.vstack([_widen(r, n) for r in rows_M], format="csr"), out_c

    def input_value(self, v: np.ndarray) -> np.ndarray:
        M, c = self.input_expr
        x: np.ndarray = _widen(M, v.size) @ v + c  # scipy is untyped: its product is Any
        return x


class _DenseEncoding:
    """The same program as ``_Encoding`` for a box (or box plus H-rows) on a Linear/ReLU network
    composed into dense layers (``forward.ForwardBounds``), built with a few numpy products instead
    of sparse products per layer: the split search hands the MILP hundreds of small sub-boxes, and
    building the sparse encoding cost more than solving it (ACAS Xu, about 30 ms against 20 ms).
    Columns: the inputs, then ``z`` and then ``a`` of every unstable ReLU."""

    def __init__(self, fwd: ForwardBounds, inp: InputSet, pre: dict[int, tuple[torch.Tensor, torch.Tensor]],
                 backend: Backend, h_rows: tuple[np.ndarray, np.ndarray] | None = None):
        self.b, self.weights = backend, None
        lo_in = inp.lower[0].reshape(-1).cpu().numpy()
        hi_in = inp.upper[0].reshape(-1).cpu().numpy()
        self.n_in = n_in = lo_in.size
        bounds = [tuple(t[0].reshape(-1).cpu().numpy() for t in pre[i]) for i in fwd.relu_ops]
        unstable = [np.flatnonzero((lo < 0) & (hi > 0)) for lo, hi in bounds]
        total = self.binaries = sum(u.size for u in unstable)
        n = n_in + 2 * total
        backend.add_variables(n_in, lb=lo_in, ub=hi_in)
        backend.add_variables(total, lb=0.0, ub=np.concatenate([np.zeros(0)] + [bounds[k][1][u]
                                                                              for k, u in enumerate(unstable)]))
        backend.add_variables(total, lb=0.0, ub=1.0, integer=True)
        if h_rows is not None:
            backend.add_rows(sp.csr_matrix(h_rows[0]), hi=h_rows[1])
        Wn, cn = _dense_layers(fwd)
        E, e = np.zeros((Wn[0].shape[0], n)), cn[0].copy()
        E[:, :n_in] = Wn[0]
        rows: list[np.ndarray] = []
        rlo: list[np.ndarray] = []
        rhi: list[np.ndarray] = []
        at = 0
        for k, idx in enumerate(unstable):
            lo, hi = bounds[k]
            active = lo >= 0
            P, p = E * active[:, None], np.where(active, e, 0.0)
            if idx.size:
                zc, ac = n_in + at + np.arange(idx.size), n_in + total + at + np.arange(idx.size)
                at += idx.size
                r = np.arange(idx.size)
                R1 = -E[idx]
                R1[r, zc] += 1.0  # z >= x
                R2 = np.zeros((idx.size, n))
                R2[r, zc], R2[r, ac] = 1.0, -hi[idx]  # z <= u a
                R3 = R1.copy()
                R3[r, ac] -= lo[idx]  # z <= x - l (1 - a)
                rows += [R1, R2, R3]
                none = np.full(idx.size, -np.inf)
                rlo += [e[idx], none, none]
                rhi += [-none, np.zeros(idx.size), e[idx] - lo[idx]]
                P[idx] = 0.0
                P[idx, zc] = 1.0
            E, e = Wn[k + 1] @ P, Wn[k + 1] @ p + cn[k + 1]
        if rows:
            backend.add_rows(sp.csr_matrix(np.concatenate(rows)), lo=np.concatenate(rlo), hi=np.concatenate(rhi))
        self.output = (sp.csr_matrix(E), e)

    def input_value(self, v: np.ndarray) -> np.ndarray:
        return np.asarray(v[: self.n_in], dtype=np.float64)


#: The lean dense form of each propagator that has one (None: it has not), and its layers in numpy.
_DENSE: weakref.WeakKeyDictionary[BoundPropagator, ForwardBounds | None] = weakref.WeakKeyDictionary()
_LAYERS: weakref.WeakKeyDictionary[ForwardBounds, tuple[list[np.ndarray], list[np.ndarray]]] = \
    weakref.WeakKeyDictionary()


def _forward_of(prop: BoundPropagator) -> ForwardBounds | None:
    if prop not in _DENSE:
        _DENSE[prop] = ForwardBounds(prop) if ForwardBounds.supports(prop) else None
    return _DENSE[prop]


def _dense_layers(fwd: ForwardBounds) -> tuple[list[np.ndarray], list[np.ndarray]]:
    if fwd not in _LAYERS:
        _LAYERS[fwd] = ([w.cpu().numpy() for w in fwd.W], [c.cpu().numpy() for c in fwd.c])
    return _LAYERS[fwd]


def _into_hpolytope(x: np.ndarray, A: np.ndarray, b: np.ndarray, interior: np.ndarray | None) -> np.ndarray | None:
    """Move a point that the solver left a rounding error outside ``A x <= b`` towards an interior
    point, just far enough; None if that is not possible."""
    if np.all(A @ x <= b):
        return x
    if interior is None:
        return None
    c = interior.reshape(-1)
    ax, ac = A @ x, A @ c
    out = ax > b
    if np.any(ac[out] >= b[out]):
        return None
    t = float(np.max((ax[out] - b[out]) / (ax[out] - ac[out])))
    for step in (t, t * (1 + 1e-9) + 1e-15, min(1.0, 2 * t + 1e-12)):
        y: np.ndarray = x + step * (c - x)  # numpy types arithmetic on dtype[Any] arrays as Any
        if np.all(A @ y <= b):
            return y
    return None


def _chebyshev_centre(A: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray | None:
    """The centre of the largest ball inside ``A x <= b`` within the box, or None if it is empty."""
    n = lo.size
    backend = solvers.create("highs")
    backend.add_variables(n, lb=lo, ub=hi)
    backend.add_variables(1, lb=0.0, ub=np.inf, cost=-1.0)  # the radius, maximised
    backend.add_rows(np.c_[A, np.linalg.norm(A, axis=1)], hi=b)
    res = backend.solve()
    # mypy cannot follow provrepair.solvers (installed from solvers/ by package-dir): res is Any to it
    centre: np.ndarray | None = res.x[:n] if res.status == OPTIMAL and res.x[n] > 0 else None
    return centre


def _into_region(enc: _Encoding | _DenseEncoding, v: np.ndarray, inp: InputSet, h_rows: tuple[np.ndarray, np.ndarray] | None,
                 interior: np.ndarray | None) -> np.ndarray | None:
    """The solver's input moved exactly into the region, or None.

    The solver meets the region's rows only within its feasibility tolerance, and on a region safe
    by less than that tolerance its point outside is unsafe while every point inside is safe. So a
    V-polytope's weights are projected onto the simplex (clipped to >= 0, renormalised) and
    ``x = V^T lambda`` is recomputed in float64; a box point is clipped; an H-polytope point is
    pulled towards ``interior`` until ``A x <= b`` holds in float64.
    """
    if inp.vertices is not None:
        lam = np.clip(np.asarray(v, dtype=np.float64)[enc.weights], 0.0, None)
        total = float(lam.sum())
        if not np.isfinite(total) or total <= 0.0:
            return None
        V = inp.vertices[0].reshape(inp.vertices.shape[1], -1).cpu().numpy().astype(np.float64)
        point: np.ndarray = V.T @ (lam / total)
        return point
    lo, hi = (t[0].reshape(-1).cpu().numpy() for t in (inp.lower, inp.upper))
    x: np.ndarray = np.clip(enc.input_value(v), lo, hi)
    if h_rows is None:
        return x
    A, b = np.asarray(h_rows[0]), np.asarray(h_rows[1])
    moved = _into_hpolytope(x, A, b, interior)
    if moved is None:
        return None
    x = np.clip(moved, lo, hi)  # the step towards the interior point may round past a face of the box
    return x if np.all(A @ x <= b) else None


def _validate(net64: nn.Module, x: np.ndarray | None, G: np.ndarray, h: np.ndarray,
              input_shape: tuple[int, ...]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """A forward pass at a point of the region: ``(x, y)`` if it reaches ``G y <= h``, else
    ``(None, y)`` (``(None, None)`` when no point of the region was given)."""
    if x is None:
        return None, None
    y = forward_outputs(net64, x.reshape(1, *input_shape), torch.float64, 1)[0]
    if np.all(G @ y <= h):
        return x.reshape(input_shape), y
    return None, y


def complete_check(net: nn.Module, prop: BoundPropagator, inp: InputSet,
                   pre: dict[int, tuple[torch.Tensor, torch.Tensor]], G: npt.ArrayLike, h: npt.ArrayLike, *,
                   h_rows: tuple[np.ndarray, np.ndarray] | None = None, solver: str = "highs",
                   time_limit: float | None = None, threads: int | None = None, net64: nn.Module | None = None,
                   interior: np.ndarray | None = None) -> MilpOutcome:
    """Decide whether any input of the (single) region ``inp`` reaches ``G y <= h``.

    ``pre`` are sound bounds of every ReLU/MaxPool input on this region (``NetworkBounds.pre``
    sliced to it); ``h_rows = (A, b)`` adds ``A x <= b`` to a box (an H-polytope), and
    ``interior`` (a point strictly inside it) lets a solver point on a facet be pulled inside.
    """
    t0 = time.perf_counter()
    G = np.atleast_2d(np.asarray(G, dtype=np.float64))
    h = np.atleast_1d(np.asarray(h, dtype=np.float64))
    net64 = net64 if net64 is not None else network_copy(net, torch.float64)
    if h_rows is not None and interior is None:
        interior = _chebyshev_centre(np.asarray(h_rows[0]), np.asarray(h_rows[1]),
                                     inp.lower[0].reshape(-1).cpu().numpy(), inp.upper[0].reshape(-1).cpu().numpy())
    outcome = MilpOutcome(status=UNKNOWN)
    for attempt in (1, None):  # first solution; then, if it fails re-validation, the deepest one
        backend = solvers.create(solver, time_limit=time_limit, threads=threads, solution_limit=attempt)
        fwd = _forward_of(prop) if inp.vertices is None else None
        enc: _Encoding | _DenseEncoding = (_Encoding(prop, inp, pre, backend, h_rows) if fwd is None else
                                           _DenseEncoding(fwd, inp, pre, backend, h_rows))
        My, cy = enc.output
        t = backend.add_variables(1, lb=-np.inf, ub=0.0, cost=1.0)[0]
        n = backend.n_vars
        T = sp.csr_matrix((np.ones(G.shape[0]), (np.arange(G.shape[0]), np.full(G.shape[0], t))), shape=(G.shape[0], n))
        backend.add_rows(sp.csr_matrix(G) @ _widen(My, n) - T, hi=h - G @ cy + UNSAFE_SLACK)
        outcome.size = dict(backend.size(), binaries=enc.binaries)
        res = backend.solve()
        outcome.solver = {"name": backend.name, "version": backend.version, "status": res.status}
        if time_limit is not None:
            time_limit = max(1e-3, time_limit - res.solve_time)
        if res.status == INFEASIBLE:
            outcome.status, outcome.reason = CERTIFIED, "the MILP is infeasible: no input reaches the unsafe set"
            break
        if res.status in (OPTIMAL, FEASIBLE) and res.x is not None:
            inside = _into_region(enc, res.x, inp, h_rows, interior)
            x, y = _validate(net64, inside, G, h, prop.input_shape)
            if x is not None:
                outcome.status, outcome.counterexample, outcome.output = VIOLATED, x, y
                outcome.reason = ("counterexample found by the MILP, moved exactly into the region and re-validated "
                                  "by a forward pass")
                break
            outcome.reason = ("the MILP's solution did not re-validate in a forward pass once moved exactly into "
                              "the region (it meets the region or the unsafe set only within the solver's "
                              "tolerance)" if inside is not None else
                              "the MILP's solution could not be moved exactly into the region")
            if attempt is None:
                break
            continue
        outcome.reason = {TIME_LIMIT: "time limit reached"}.get(res.status, f"solver status {res.status}")
        break
    outcome.seconds = time.perf_counter() - t0
    return outcome
