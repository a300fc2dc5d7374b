"""Provable point repair at one layer (APRNN-style LP), solved by constraint generation.

The LP (DESIGN.md, "Provable point repair"): new weights and bias for affine layer ``k``, new
biases for every later affine layer, every later ReLU held to its original pattern at each
point, the output spec with margin ``eps``, deltas bounded by ``±B``, objective
``‖δ‖∞ + ‖δ‖₁/|δ|``. Each point's layer-``k`` pre-activation is an auxiliary vector ``u_p``;
deeper quantities are dense pulled-back rows over ``u_p`` and the later bias deltas.

Almost all activation-pattern rows are slack at the optimum, so by default they are generated
lazily: solve with the output rows (the ReLU acting on ``u`` is a variable bound), evaluate every
pattern on the LP's own linear model at the solution, add the violated rows, re-solve warm,
repeat. When no pattern is violated the solution is feasible for the full LP and optimal for a
relaxation of it, hence optimal for the full LP: the same answer as building every row up front.

Exact reductions keep the LP small without changing its optimum: weights whose input is zero at
every repair point are left out (they cannot affect any row; the L1 term still counts them), a
unit the ReLU on ``u`` switches off needs no ``u`` column, and rows are built equilibrated.
With ``linf="search"`` (and by default where no pattern after layer ``k`` needs rows) the L∞ term
has no epigraph rows: its bound ``s`` is a parameter searched in one dimension, each probe an L1 LP
whose delta columns are bounded by ``s`` (``linf_search``; within 1e-7 of the optimum, proved by
the probes' dual bounds).

A point may carry *generators*: it then stands for the zonotope ``c + sum_i s_i g_i``, ``s`` in
[-1, 1]^n (a box: its centre and half-widths). With the network affine on the zonotope up to
layer ``k`` and every later ReLU held to one pattern on it, every row is affine in ``s``, so
``row <= hi`` on the whole zonotope is ``row(c) + sum_i |row(c + g_i) - row(c)| <= hi``: one
row plus ``2n`` rows for the absolute values instead of ``2^n`` corner rows. Each generator gets
``u`` columns for its image at layer ``k``, linear in the deltas.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from provrepair import solvers

from ..errors import InputError
from ..models import affine_index_to_module_index, affine_layers, is_head, layer_inputs, patterns_after
from .linf_search import REL_TOL, ROUND_REL_TOL, BoundSearch
from .options import PointRepairOptions
from .suffix import Rows, Suffix


@dataclass
class PointRepairOutcome:
    """What the LP repairer found. Certification is someone else's job (``provrepair.certify``)."""

    status: str  # solvers status of the final LP: optimal, infeasible, time_limit, error
    model: nn.Sequential | None
    objective: float | None
    layer: int  # affine index
    lp_size: dict  # final LP: variables, rows, nonzeros
    full_lp_size: dict  # variables and rows of the LP with every pattern row, for comparison
    rounds: list[dict] = field(default_factory=list)
    build_time: float = 0.0
    solve_time: float = 0.0
    check_time: float = 0.0
    solver: dict = field(default_factory=dict)
    delta: dict = field(default_factory=dict)  # norms of the parameter change
    message: str = ""
    soft_broken: int | None = None  # soft points (``soft=``) whose rows the repair breaks; None: none given

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("model")
        return d


class _Layout:
    """Column layout. Each parameter delta is split, δ = p - q with p, q in [0, B], so that the
    L1 term needs no rows and an unchanged parameter sits at a bound (non-basic) in the simplex.
    Deltas are indexed [ΔW, Δb_k, Δb_j (later)]; ``pcol``/``qcol`` give each one's p and q column
    (-1: not in the LP yet). Columns: p (every delta), q (same order), s (the L∞ bound), u; with
    ``lazy_weights`` the ΔW columns are left out and appended in pairs as they are generated."""

    def __init__(self, n_w: int, n_bk: int, later: dict[int, int], n_points: int, n_k: int,
                 lazy_weights: bool = False, active: np.ndarray | None = None):
        self.n_w, self.n_bk = n_w, n_bk
        self.bias_offset: dict[int, int] = {}
        off = n_w + n_bk
        for j, n in later.items():
            self.bias_offset[j] = off
            off += n
        self.n_delta = off
        first = n_w if lazy_weights else 0  # deltas with columns from the start: [first, n_delta)
        n0 = off - first
        self.pcol = np.full(off, -1, dtype=np.int64)
        self.qcol = np.full(off, -1, dtype=np.int64)
        self.pcol[first:] = np.arange(n0)
        self.qcol[first:] = n0 + np.arange(n0)
        self.n_initial = n0
        self.s = 2 * n0
        self.u0 = self.s + 1
        self.n_k = n_k
        # u columns of each point (its first one; -1: an inactive point has none until it enters)
        act = np.arange(n_points) if active is None else np.flatnonzero(active[:n_points])
        self.ustart = np.full(n_points, -1, dtype=np.int64)
        self.ustart[act] = self.u0 + np.arange(act.size) * n_k
        self.n_vars = self.u0 + act.size * n_k

    def u_col(self, point: np.ndarray) -> np.ndarray:
        """(E, n_k) column indices of u for each row's point."""
        return self.ustart[point][:, None] + np.arange(self.n_k)[None, :]

    @staticmethod
    def delta(d):
        """How a row names delta ``d`` for ``matrix`` (negative: apart from every LP column)."""
        return -1 - d

    def matrix(self, cols: np.ndarray, vals: np.ndarray) -> sp.csr_matrix:
        """CSR rows from per-row (cols, vals) of equal length, in which delta columns (named by
        ``delta``) stand for δ and are expanded to +p and -q (dropped while not in the LP);
        other entries are LP columns; zero values are dropped."""
        m = cols.shape[0]
        is_delta = cols < 0
        d = np.where(is_delta, -1 - cols, 0)
        cols2 = np.concatenate([np.where(is_delta, self.pcol[d], cols), np.where(is_delta, self.qcol[d], -1)], 1)
        vals2 = np.concatenate([vals, -vals], 1)
        keep = (cols2 >= 0) & (vals2 != 0)
        indptr = np.concatenate([[0], np.cumsum(keep.sum(1))])
        return sp.csr_matrix((vals2[keep], cols2[keep], indptr), shape=(m, self.n_vars))


def repair_points(net: nn.Sequential, inputs: np.ndarray, A: np.ndarray, b: np.ndarray, point_index: np.ndarray,
                  layer: int, options: PointRepairOptions | None = None,
                  progress: Callable[[str], None] | None = None, *, patterns: dict | None = None,
                  disjunctions: Sequence[np.ndarray] | None = None,
                  generators: Sequence[np.ndarray | None] | None = None,
                  soft: tuple[np.ndarray, float] | None = None) -> PointRepairOutcome:
    """Repair ``net`` at affine ``layer`` so that ``A[r] @ net(inputs[point_index[r]]) <= b[r] - margin``.

    ``inputs`` has the model's input shape per point; rows (A, b, point_index) come from
    ``PointSpec.output_constraints``. The input network is not modified.

    ``patterns`` holds ReLUs after the layer to given signs per point instead of the points' own
    (see ``Suffix``). ``disjunctions`` are groups of row indices of which at least one row must
    hold: each grouped row gets a binary and a big-M that the delta bound justifies, which makes
    the LP a MILP.

    ``generators`` (per point: None or an array (n, *input shape)) makes a point the zonotope
    around it (see the module docstring); the caller guarantees that the layers before ``k`` are
    affine on it (the polytope repair's shift LPs do). Every row of such a point, patterns
    included, then holds on the whole zonotope. Not combinable with ``disjunctions``.

    ``soft = (points, weight)``: the output rows of these plain points may be broken, each point by
    a slack ``t_p >= 0`` shared by its rows at cost ``weight`` per unit (on the scale of the L∞
    term): kept decisions then pull on the repair without ever making it infeasible.
    """
    opts = options or PointRepairOptions()
    opts.validate()
    say = progress or (lambda msg: None)
    t_start = time.perf_counter()
    lp = PointLP(net, inputs, layer, opts, patterns=patterns, generators=generators,
                 disjunctive=bool(disjunctions), soft=soft)
    lp.build(A, b, point_index, disjunctions)
    build_time = time.perf_counter() - t_start
    backend = lp.backend
    say(f"LP built: {backend.n_vars} variables, {backend.n_rows} rows, {backend.nnz} nonzeros")
    deadline = None if opts.time_limit is None else t_start + opts.time_limit
    return outcome_of(lp, generate_constraints(lp, deadline, say, build_time))


class PointLP:
    """The repair LP of one call, kept live between solves.

    Constraint generation adds rows to a solved model and re-solves it warm, so the backend model,
    its column layout and the record of which pattern rows it already has travel together:
    ``build`` lays the LP out, ``add_patterns`` extends it, ``solve_round`` and ``check`` make
    one round. The constructor only traces the points through the network (no solver yet).
    """

    def __init__(self, net: nn.Sequential, inputs: np.ndarray, layer: int, opts: PointRepairOptions, *,
                 patterns: dict | None = None, generators: Sequence[np.ndarray | None] | None = None,
                 disjunctive: bool = False, active: np.ndarray | None = None,
                 soft: tuple[np.ndarray, float] | None = None):
        self.net, self.layer, self.opts, self.disjunctive = net, layer, opts, disjunctive
        self.held = patterns is not None  # the region repair's vertex LPs: every output row up front
        self.k = affine_index_to_module_index(net, layer)
        self.aff_index = affine_layers(net).index(self.k)
        net64 = copy.deepcopy(net).double().eval()
        for p in net64.parameters():
            p.requires_grad_(False)
        x = torch.tensor(np.array(inputs, dtype=np.float64))
        self.zono = _Zonotopes.build(x, generators)
        if self.zono is not None and disjunctive:
            raise InputError("points with generators cannot take part in disjunctive rows; give their corners instead")
        h = self._trace(net64, x, patterns)
        self.layer_k = net64[self.k]
        self.n_k = self.suffix.u0.shape[1]
        self.neurons = self._changing_neurons()
        self.u0, self.feats = self._layer_inputs(h)
        # points whose rows the LP holds; the others (keep points, repair/keep.py) enter by add_points
        self.active = np.ones(self.n_points, dtype=bool) if active is None else np.array(active, dtype=bool)
        self.soft = np.zeros(self.n_points, dtype=bool)  # points whose output rows have a slack column
        self.soft_weight = 0.0
        self.soft_cols = np.zeros(0, dtype=np.int64)
        self._lay_out()
        if soft is not None:
            self._set_soft(*soft)
        self.backend = None
        self.full_rows = 0
        # output rows generated lazily (``_lazy_outputs``): every row given, and which the LP has
        self.out_A = self.out_b = self.out_point = self.out_in = None
        self.y_last: np.ndarray | None = None  # outputs of the LP's own model at the last solution

    def _trace(self, net64: nn.Sequential, x: torch.Tensor, patterns: dict | None) -> torch.Tensor:
        """Layer-``k`` inputs of the points (generator points appended), and the suffix that holds
        them to their patterns: a generator point to its centre's."""
        zono, k = self.zono, self.k
        if zono is not None:
            x = torch.cat([x, zono.points(x)])
        self.n_points = x.shape[0]
        with torch.no_grad():
            h = net64[:k](x) if k > 0 else x
        if zono is not None:
            centre = Suffix(net64, k, h[:zono.n_centres], patterns)
            patterns = {i: zono.extend(sg.numpy()) for i, sg in centre.sign.items()}
            patterns.update({i: zono.extend(a.numpy()) for i, a in centre.argmax.items()})
        self.suffix = Suffix(net64, k, h, patterns)
        return h

    def _changing_neurons(self) -> np.ndarray:
        """The rows of ``W_k`` that may change (``opts.neurons``/``rows``/``channels``; default all)."""
        layer_k, opts = self.layer_k, self.opts
        n_rows_k = layer_k.weight.shape[0]
        chosen = opts.selected_rows()
        neurons = np.arange(n_rows_k) if chosen is None else np.asarray(chosen, dtype=np.int64)
        if neurons.size == 0 or neurons.min() < 0 or neurons.max() >= n_rows_k:
            name = next((n for n in ("rows", "channels") if getattr(opts, n) is not None), "neurons")
            unit = "channels" if isinstance(layer_k, nn.Conv2d) else "output neurons"
            raise InputError(f"{name}: affine layer {self.layer} has {n_rows_k} {unit} (indices 0..{n_rows_k - 1}), "
                             f"got {', '.join(str(int(v)) for v in neurons[neurons >= n_rows_k][:5])}")
        if isinstance(layer_k, nn.Conv2d) and layer_k.groups != 1:
            raise InputError("repairing a grouped convolution is not supported; choose another layer")
        return neurons

    def _layer_inputs(self, h: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """``u0`` and the layer-``k`` features (N, positions, fan_in) as the LP's points see them.

        A generator point's LP variable is the generator's image w_g = (W_k + ΔW_k) e_g, with
        e_g = h(c + g) - h(c) its image before layer k: no bias, and no near-copy of the
        centre's row (u_{c+g} - u_c would be a difference of two almost equal rows, which the
        simplex cannot factor when the generators are small next to the activations).
        """
        u0, zono, layer_k = self.suffix.u0.numpy(), self.zono, self.layer_k
        if zono is None:
            return u0, layer_inputs(layer_k, h).numpy()
        h_lp = h.clone()
        h_lp[zono.n_centres:] = h[zono.n_centres:] - h[torch.from_numpy(zono.owner)]
        with torch.no_grad():
            e = h_lp[zono.n_centres:]
            u0 = u0.copy()
            u0[zono.n_centres:] = (layer_k(e) - layer_k(torch.zeros_like(e))).reshape(len(e), -1).numpy()
        return u0, layer_inputs(layer_k, h_lp).numpy()

    def _lay_out(self) -> None:
        """Columns, objective scale and the pattern catalogue (per ReLU after k: the signs each
        point is held to, ``pre``, and which of those rows the LP has, ``kept``)."""
        opts, suffix, zono, n_sel = self.opts, self.suffix, self.zono, self.neurons.size
        # A weight whose input is zero at every repair point changes nothing the LP can see: leave it out.
        self.live = np.flatnonzero(np.abs(self.feats).max(axis=(0, 1)) > 0)
        self.later = {j: int(suffix.modules[j].bias.numel()) for j in suffix.later_affine} if opts.later_biases else {}
        # Weight columns are generated lazily (priced by the layer rows' duals) where the backend can
        # add columns; the full strategy, MILPs and zonotopes keep every column up front.
        self.substituted = self._substitute()
        self.lazy_weights = (opts.columns == "lazy" and opts.strategy != "full" and zono is None
                             and not self.disjunctive and not self.substituted and bool(self.active.all()))
        self.L = self._layout()
        # The L1 term is normalised by every parameter that may change, dropped ones included, so
        # the objective is the same as in the unreduced LP.
        self.n_params = n_sel * self.feats.shape[2] + n_sel + sum(self.later.values())
        self.scale = _objective_scale(opts, self.n_params)
        self.boxed = np.zeros(self.n_points, dtype=bool) if zono is None else zono.boxed(self.n_points)
        self.pre = {i: suffix.pattern(i) for i in suffix.pattern_modules}
        self.exists = {i: suffix.pattern_mask(i) for i in suffix.pattern_modules}  # max-pools: not every unit
        self.kept = {i: v & self.active[:, None] if opts.strategy == "full" else np.zeros_like(v)
                     for i, v in self.exists.items()}
        if zono is not None:  # generator points have no rows of their own: their centres' rows cover them
            for v in self.kept.values():
                v[zono.n_centres:] = False

    def _substitute(self) -> bool:
        """Whether ``u_p`` is substituted out (``opts.formulation``; auto: where it shrinks the LP).

        A row over u then names the deltas directly: coefficient ``Σ_q coef_u[c, q] h_p[q, i]`` on
        ΔW[c, i], ``Σ_q coef_u[c, q]`` on Δb[c]. A conv layer's ``u`` has one definition row per
        point, channel and position, each with the whole kernel (50 points at the zoo CNN's conv2:
        313k rows, 90 M nonzeros), while its deltas are few; substituted, every row is at most as
        wide as the kernel count, and the ReLU on u becomes lazy pattern rows. For a Linear layer
        the output rows would turn dense over every weight, so u stays, unless it is the last layer:
        an output row then names the units of its own classes only (a label row: two rows of W_k),
        and with output rows generated lazily (``_lazy_outputs``) the substituted LP has about one
        row per point instead of u's definition row per unit (MNIST ViT head, 1,000 points with a
        1,000-point keep-set: see ``benchmarks/results/transformer_repair.json``).
        """
        f = self.opts.formulation
        if f == "u" or self.zono is not None or self.disjunctive:
            return False
        if f == "substituted":
            return True
        # the last layer, or the one before it with only the ReLU on u between (an MLP's last hidden
        # layer): a label row then names every weight, but one or two per point bind
        return self.feats.shape[1] > _SUBSTITUTE_POSITIONS or (is_head(self.net, self.k) and self._lazy_outputs())

    def _layout(self) -> _Layout:
        n_sel = self.neurons.size
        n_points = 0 if self.substituted else self.n_points
        if self.substituted:
            self.suffix.relu_on_u = None  # the ReLU on u: pattern rows like any other
        return _Layout(n_sel * self.live.size, n_sel, self.later, n_points, self.n_k, self.lazy_weights, self.active)

    def build(self, A: np.ndarray, b: np.ndarray, point_index: np.ndarray,
              disjunctions: Sequence[np.ndarray] | None = None) -> None:
        """The LP up to the lazy pattern rows, plus those ``strategy`` wants up front."""
        opts, zono = self.opts, self.zono
        # Every row is built equilibrated and the costs are O(1), so the LP is prescaled, except where
        # generator rows mix a box's small generator images with ordinary activations: unscaled, the
        # simplex loses them (ACAS Xu boxes: "excessive dual values"), so the solver keeps its scaling.
        self.backend = solvers.create(opts.solver, time_limit=opts.time_limit, threads=opts.threads,
                                      method=opts.method, extra=dict(opts.solver_options), prescaled=zono is None)
        if self.lazy_weights and not self.backend.can_add_columns:
            self.lazy_weights = False
            self.L = self._layout()
        self._add_columns()
        self.search = self._bound_search()
        if self.search is None:
            _add_objective_rows(self.backend, self.L, opts)
        biased = np.ones(self.n_points, dtype=bool) if zono is None else np.arange(self.n_points) < zono.n_centres
        if not self.substituted:
            self.layer_rows = _add_layer_rows(self.backend, self.L, self.feats[:, :, self.live], self.neurons,
                                              self.suffix, self.boxed, self.u0, biased, np.flatnonzero(self.active))
        self._add_zonotope_relu_rows()
        if len(point_index):  # the polytope repair's shift LPs have pattern rows only
            self._add_output_rows(A, b, point_index, disjunctions)
        if self.lazy_weights:
            self._rank_weights()
            self.grow_weights()
        self.full_rows = (self.backend.n_rows + sum(int(v.sum()) for v in self.exists.values())
                          + (0 if self.out_in is None else int((~self.out_in).sum())))
        self.add_patterns(self.kept)

    def _bound_search(self) -> BoundSearch | None:
        """The L∞ term by a search over its bound (``linf_search``) instead of one row per delta,
        where the LP has that term, is an LP (not the disjunctive MILP) and is re-solved by a
        simplex that can change bounds warm."""
        opts, suffix = self.opts, self.suffix
        wanted = opts.linf == "search" or (opts.linf == "auto" and not patterns_after(self.net, self.k)
                                           and bool(suffix.later_affine))
        simplex = opts.method in ("auto", "simplex") and self.backend.can_change_bounds
        if not wanted or not simplex or opts.objective not in _LINF_OBJECTIVES or self.disjunctive:
            return None
        L = self.L
        return BoundSearch(self.backend, L.s, self.scale, opts.delta_bound,
                           lambda: np.concatenate([L.pcol[L.pcol >= 0], L.qcol[L.qcol >= 0]]))

    def _add_columns(self) -> None:
        """p, q and s (see ``_Layout``), then u of the active points (``_u_bounds``)."""
        opts, L, backend = self.opts, self.L, self.backend
        B = opts.delta_bound
        l1, linf = opts.objective in _L1_OBJECTIVES, opts.objective in _LINF_OBJECTIVES
        self.delta_cost = self.scale / self.n_params if l1 else 0.0
        backend.add_variables(2 * L.n_initial, 0.0, B, cost=self.delta_cost)  # p, q
        backend.add_variables(1, 0.0, B if linf else 0.0, cost=self.scale if linf else 0.0)  # s
        if self.substituted:
            return
        lb, ub = self._u_bounds(np.flatnonzero(self.active))
        backend.add_variables(lb.size, lb.ravel(), ub.ravel())

    def _u_bounds(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Bounds of the u columns of ``points``: free, except that a ReLU acting directly on u fixes
        its sign, and rows of W_k that may not change keep their original value."""
        n_k = self.n_k
        lb = np.full((points.size, n_k), -np.inf)
        ub = np.full((points.size, n_k), np.inf)
        boxed = self.boxed[points][:, None]
        if self.suffix.relu_on_u is not None:  # zonotope points get rows instead (_add_zonotope_relu_rows)
            sign = self.suffix.pattern(self.suffix.relu_on_u)[points]
            lb[(sign >= 0) & ~boxed] = 0.0
            ub[(sign <= 0) & ~boxed] = 0.0
        frozen = np.ones(self.layer_k.weight.shape[0], dtype=bool)
        frozen[self.neurons] = False
        if frozen.any():
            fz = np.repeat(frozen, n_k // self.layer_k.weight.shape[0])[None, :].repeat(points.size, 0)
            u0 = self.u0[points]
            lb[fz] = u0[fz]
            ub[fz] = u0[fz]
        return lb, ub

    def _add_zonotope_relu_rows(self) -> None:
        """The ReLU acting on u at a zonotope centre: rows over the zonotope (a plain point has bounds)."""
        zono, suffix, n_k = self.zono, self.suffix, self.n_k
        if zono is None or suffix.relu_on_u is None:
            return
        cen = np.flatnonzero(self.boxed[:zono.n_centres])
        sign = suffix.pattern(suffix.relu_on_u)[cen]
        P = np.repeat(cen, n_k)
        unit = np.tile(np.arange(n_k), cen.size)
        onehot = np.zeros((P.size, n_k))
        onehot[np.arange(P.size), unit] = 1.0
        sg = sign.ravel()
        self.add_rows(Rows(point=P, coef_u=onehot, coef_b={}, const=np.zeros(P.size)),
                      lo=np.where(sg >= 0, 0.0, -np.inf), hi=np.where(sg > 0, np.inf, 0.0))

    def _add_output_rows(self, A: np.ndarray, b: np.ndarray, point_index: np.ndarray, disjunctions) -> None:
        """The spec ``A y <= b - margin`` at its points; rows in a disjunction get binaries."""
        suffix, opts = self.suffix, self.opts
        if self._lazy_outputs() and not disjunctions:
            out = self._lazy_output_rows(A, b, point_index)
            self.output_pull = np.zeros((self.n_points, self.n_k))  # |d outputs / d u| per point (ranks weights)
            np.add.at(self.output_pull, out.point, np.abs(out.coef_u))
            return
        out, rhs = self._output_rows(A, b, point_index)
        grouped = np.zeros(len(rhs), dtype=bool)
        if disjunctions:
            grouped[np.concatenate([np.asarray(g, dtype=np.int64) for g in disjunctions])] = True
            _add_disjunctive_rows(self.backend, self.L, out, rhs, disjunctions, self.feats, suffix.u0.numpy(),
                                  opts.delta_bound)
        soft = ~grouped & self.soft[out.point]
        hard = np.flatnonzero(~grouped & ~soft)
        self.add_rows(_select_rows(out, hard), lo=-np.inf, hi=rhs[hard])
        if soft.any():
            self._add_soft_rows(_select_rows(out, np.flatnonzero(soft)), rhs[soft])
        self.output_pull = np.zeros((self.n_points, self.n_k))  # |d outputs / d u| per point (ranks weights)
        np.add.at(self.output_pull, out.point, np.abs(out.coef_u))

    def _lazy_outputs(self) -> bool:
        """Whether output rows are generated lazily: with constraint generation, at plain points
        without disjunctions. A point's spec has a row per other class, of which one or two bind
        (the runner-up); the others wait outside the LP and enter when a solution violates them.
        With every row satisfied, the relaxation's optimum is the full LP's. The region repair's
        LPs (points held to given ``patterns``, zonotopes, disjunctions) keep every row up front."""
        return (LAZY_OUTPUT_ROWS and self.opts.strategy != "full" and self.zono is None
                and not self.disjunctive and not self.held and not self.soft.any())

    def _lazy_output_rows(self, A: np.ndarray, b: np.ndarray, point_index: np.ndarray) -> Rows:
        """Store the points' output rows and enter those that must be in the LP at once."""
        return self._enter_outputs(self._first_outputs(self._store_outputs(A, b, point_index)))

    def _store_outputs(self, A: np.ndarray, b: np.ndarray, point_index: np.ndarray) -> np.ndarray:
        """Record output rows (none in the LP yet); returns their indices in the store."""
        A, b = np.asarray(A, dtype=np.float64), np.asarray(b, dtype=np.float64)
        point_index = np.asarray(point_index, dtype=np.int64)
        if self.out_A is None:
            self.out_A, self.out_b = A[:0], b[:0]
            self.out_point, self.out_in = point_index[:0], np.zeros(0, dtype=bool)
        start = self.out_b.size
        self.out_A, self.out_b = np.concatenate([self.out_A, A]), np.concatenate([self.out_b, b])
        self.out_point = np.concatenate([self.out_point, point_index])
        self.out_in = np.concatenate([self.out_in, np.zeros(b.size, dtype=bool)])
        return np.arange(start, start + b.size)

    def _output_slack(self, y: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Slack ``b - margin - A y`` of stored output rows ``idx`` at outputs ``y`` (points, outputs)."""
        return (self.out_b[idx] - self.opts.margin
                - np.einsum("rj,rj->r", self.out_A[idx], y[self.out_point[idx]]))

    def _first_outputs(self, idx: np.ndarray) -> np.ndarray:
        """Of stored rows ``idx``, those that enter at once: each point's tightest row at the
        original network, and every row violated there or at the last solution."""
        y0 = self.suffix.acts[len(self.suffix.modules)].reshape(self.n_points, -1).numpy()
        pts = self.out_point[idx]
        first = np.zeros(idx.size, dtype=bool)
        for y in (y0, self.y_last):
            if y is None:
                continue
            slack = self._output_slack(y, idx)
            worst = np.full(self.n_points, np.inf)
            np.minimum.at(worst, pts, slack)
            first |= (slack <= worst[pts]) & ((slack < 0) | (y is y0))
        return idx[first]

    def _enter_outputs(self, idx: np.ndarray) -> Rows:
        """Stored output rows ``idx`` into the LP (``A y <= b - margin``); returns their rows."""
        self.out_in[idx] = True
        out, rhs = self._output_rows(self.out_A[idx], self.out_b[idx], self.out_point[idx])
        self.add_rows(out, lo=-np.inf, hi=rhs)
        return out

    def violated_outputs(self) -> np.ndarray:
        """Stored output rows outside the LP that the last checked solution violates (``check``
        sets its outputs), at active points."""
        if self.out_in is None or self.y_last is None or self.out_in.all():
            return np.zeros(0, dtype=np.int64)
        idx = np.flatnonzero(~self.out_in & self.active[self.out_point])
        return idx[self._output_slack(self.y_last, idx) < 0]

    def add_outputs(self, idx: np.ndarray) -> None:
        """Extend the LP by stored output rows ``idx`` (``violated_outputs``)."""
        if idx.size:
            self._enter_outputs(idx)

    def _output_rows(self, A: np.ndarray, b: np.ndarray, point_index: np.ndarray) -> tuple[Rows, np.ndarray]:
        """The rows of ``A y <= b - margin`` over the LP's variables, and their right-hand sides."""
        out = self.suffix.pullback(len(self.suffix.modules), point_index, torch.as_tensor(A, dtype=torch.float64))
        return out, np.asarray(b, dtype=np.float64) - self.opts.margin - out.const

    def add_rows(self, rows: Rows, lo, hi) -> None:
        """Rows at plain points as they are; at zonotope centres over the whole zonotope."""
        lo, hi = np.broadcast_to(lo, rows.point.shape), np.broadcast_to(hi, rows.point.shape)
        zrows = self.boxed[rows.point]
        plain = np.flatnonzero(~zrows)
        if plain.size and self.substituted:
            for start in range(0, plain.size, self._substitute_batch()):
                sel = plain[start:start + self._substitute_batch()]
                block, shift, scale = self._delta_rows(_select_rows(rows, sel))
                self.backend.add_rows(block, lo=(lo[sel] - shift) * scale, hi=(hi[sel] - shift) * scale)
        elif plain.size:
            _add_affine_rows(self.backend, self.L, _select_rows(rows, plain), lo=lo[plain], hi=hi[plain])
        if zrows.any():
            sel = np.flatnonzero(zrows)
            _add_zonotope_rows(self.backend, self.L, _select_rows(rows, sel), self.zono, lo[sel], hi[sel])

    def _add_direct_patterns(self, i: int, p: np.ndarray, n: np.ndarray) -> None:
        """Pattern rows at a module whose input is u up to ReLUs (substituted LP), built sparse from
        the functional's one or two entries: a conv layer's ReLU and max-pool rows, by the
        ten thousand, without a dense row over u each."""
        suffix = self.suffix
        r, unit, val = suffix.functional_entries(i, p, n)
        for j in range(self.k + 1, i):  # ReLUs on the way zero what they hold inactive
            if j in suffix.sign:
                val = val * (suffix.sign[j].reshape(suffix.n_points, -1).numpy()[p[r], unit] > 0)
        positions = self.feats.shape[1]
        n_rows_k = self.layer_k.weight.shape[0]
        ch, q = unit // positions, unit % positions
        pos_of = np.full(n_rows_k, -1)
        pos_of[self.neurons] = np.arange(self.neurons.size)
        sel = pos_of[ch]
        shift = np.zeros(p.size)
        np.add.at(shift, r, val * self.u0[p[r], unit])
        live = sel >= 0  # frozen rows of W_k keep their u: constant
        self._add_sparse_delta_rows(r[live], sel[live], p[r[live]] * positions + q[live], val[live], p.size,
                                    shift, self.pre[i][p, n])

    def _add_sparse_delta_rows(self, r, sel, hq, val, E, shift, sign) -> None:
        """Rows ``Σ val · u[sel, q] (+ u0 part) <=> 0`` over the deltas: entry (r, sel, hq) stands for
        ``val · (ΔW[sel] h[hq] + Δb[sel])``; ``sign``: >0 the row is >= 0, <0 <= 0, 0 both."""
        L = self.L
        n_sel, n_live = self.neurons.size, self.live.size
        n_points, positions = self.feats.shape[:2]
        if not hasattr(self, "_h_flat"):
            self._delta_rows_init()
        M = sp.csr_matrix((val, (r * n_sel + sel, hq)), shape=(E * n_sel, n_points * positions))
        cw = (M @ self._h_flat).tocoo()
        W = sp.csr_matrix((cw.data, (cw.row // n_sel, (cw.row % n_sel) * n_live + cw.col)), shape=(E, L.n_w))
        Bk = sp.csr_matrix((val, (r, sel)), shape=(E, n_sel))
        D = sp.hstack([W, Bk, sp.csr_matrix((E, L.n_delta - L.n_w - n_sel))], format="csr")
        big = np.abs(D).max(axis=1).toarray().ravel()
        scale = np.where(big > 0, 1.0 / np.where(big > 0, big, 1.0), 1.0)
        lo = np.where(sign >= 0, -shift, -np.inf) * scale
        hi = np.where(sign > 0, np.inf, -shift) * scale
        self.backend.add_rows(sp.diags(scale) @ D @ self._pq, lo=lo, hi=hi)

    def _delta_rows_init(self) -> None:
        L = self.L
        n_points, positions = self.feats.shape[:2]
        self._h_flat = sp.csr_matrix(self.feats[:, :, self.live].reshape(n_points * positions, -1))
        pq = np.flatnonzero(L.pcol >= 0)
        self._pq = sp.csr_matrix((np.concatenate([np.ones(pq.size), -np.ones(pq.size)]),
                                  (np.concatenate([pq, pq]), np.concatenate([L.pcol[pq], L.qcol[pq]]))),
                                 shape=(L.n_delta, L.n_vars))

    def _substitute_batch(self) -> int:
        return max(1, _PATTERN_ELEMENTS // max(1, self.n_k))

    def _delta_rows(self, rows: Rows) -> tuple[sp.csr_matrix, np.ndarray]:
        """Rows over u rewritten over the deltas (``u_p = u0_p + ΔW h_p + Δb``), as a sparse block
        over the LP's columns (δ as p - q), and the shift ``coef_u @ u0_p`` that moves from the
        row's side to its bounds. Built sparse throughout: a pattern row touches one or two units."""
        n_points, positions = self.feats.shape[:2]
        E = rows.point.size
        L = self.L
        n_rows_k = self.layer_k.weight.shape[0]
        n_sel, n_live = self.neurons.size, self.live.size
        cu = rows.coef_u.reshape(E, n_rows_k, positions)[:, self.neurons, :]
        if not hasattr(self, "_h_flat"):
            self._delta_rows_init()
        e, sel, q = np.nonzero(cu)
        M = sp.csr_matrix((cu[e, sel, q], (e * n_sel + sel, rows.point[e] * positions + q)),
                          shape=(E * n_sel, n_points * positions))
        cw = (M @ self._h_flat).tocoo()  # (E * n_sel, live)
        blocks = [sp.csr_matrix((cw.data, (cw.row // n_sel, (cw.row % n_sel) * n_live + cw.col)), shape=(E, L.n_w)),
                  sp.csr_matrix(cu.sum(2))]
        for j in L.bias_offset:
            c = rows.coef_b.get(j)
            blocks.append(sp.csr_matrix(c) if c is not None else sp.csr_matrix((E, self.later[j])))
        D = sp.hstack(blocks, format="csr")
        shift = (rows.coef_u * self.u0[rows.point]).sum(1)
        big = np.abs(D).max(axis=1).toarray().ravel()
        scale = np.where(big > 0, 1.0 / np.where(big > 0, big, 1.0), 1.0)
        return sp.diags(scale) @ D @ self._pq, shift, scale

    def add_patterns(self, select: dict[int, np.ndarray]) -> None:
        """The pattern rows ``select`` marks (per ReLU: points x units), in batches of bounded memory."""
        for i, sel in select.items():
            pts, neu = np.nonzero(sel)
            if self.substituted and self.suffix.direct(i) and pts.size:
                self._add_direct_patterns(i, pts, neu)
                continue
            batch = max(1, min(_PATTERN_BATCH, _PATTERN_ELEMENTS // max(self.suffix.acts[i][0].numel(), self.n_k)))
            for lo_idx in range(0, pts.size, batch):
                p, n = pts[lo_idx:lo_idx + batch], neu[lo_idx:lo_idx + batch]
                rows = self.suffix.pullback(i, p, self.suffix.functional(i, p, n))
                sign = self.pre[i][p, n]
                # z = coef·vars + const;  active: z >= 0,  inactive: z <= 0,  held at zero: z = 0
                self.add_rows(rows, lo=np.where(sign >= 0, -rows.const, -np.inf),
                              hi=np.where(sign > 0, np.inf, -rows.const))

    def add_points(self, A: np.ndarray, b: np.ndarray, point_index: np.ndarray) -> None:
        """Activate the points of ``point_index`` with their output rows ``A y <= b - margin``: their
        pattern rows follow by constraint generation. With u, each brings its u columns and rows."""
        new = np.unique(point_index)
        new = new[~self.active[new]]
        if new.size and not self.substituted:  # their u columns and definition rows first
            lb, ub = self._u_bounds(new)
            cols = self.backend.add_variables(lb.size, lb.ravel(), ub.ravel())
            self.L.ustart[new] = np.asarray(cols).reshape(new.size, self.n_k)[:, 0]
            self.L.n_vars = self.backend.n_vars
            _add_layer_rows(self.backend, self.L, self.feats[:, :, self.live], self.neurons, self.suffix,
                            self.boxed, self.u0, np.ones(self.n_points, dtype=bool), new)
        self.active[new] = True
        if self._lazy_outputs():
            self._lazy_output_rows(A, b, point_index)
            return
        out, rhs = self._output_rows(A, b, point_index)
        self.add_rows(out, lo=-np.inf, hi=rhs)

    def _plain_block(self, rows: Rows) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
        """Rows at plain points as (block over every LP column, shift, scale): ``scale · (row - shift)``
        is ``block @ x``; extra columns can then be put beside it."""
        if self.substituted:
            block, shift, scale = self._delta_rows(rows)
        else:
            cols, vals = _row_cols(self.L, rows)
            scale = _row_scale(vals)
            block, shift = self.L.matrix(cols, vals * scale[:, None]), np.zeros(rows.point.size)
        pad = self.backend.n_vars - block.shape[1]
        return sp.hstack([block, sp.csr_matrix((block.shape[0], pad))], format="csr"), shift, scale

    def add_output_deviation(self, points: np.ndarray, z0: np.ndarray, weight: float) -> None:
        """Objective term ``weight · mean |z_p - z0_p|`` over the outputs of active ``points``: one
        column ``t >= |z_pj - z0_pj|`` (two rows) per output, at the same scale as the parameter terms."""
        n_out = z0.shape[1]
        P = np.repeat(points, n_out)
        eye = np.tile(np.eye(n_out), (points.size, 1))
        rows = self.suffix.pullback(len(self.suffix.modules), P, torch.as_tensor(eye, dtype=torch.float64))
        t = self.backend.add_variables(P.size, 0.0, np.inf, cost=self.scale * weight / P.size)
        block, shift, scale = self._plain_block(rows)
        target = (z0.ravel() - rows.const - shift) * scale  # block @ x must come within t of this
        T = sp.csr_matrix((scale, (np.arange(P.size), t)), shape=(P.size, self.backend.n_vars))
        self.backend.add_rows(block - T, hi=target)
        self.backend.add_rows(-block - T, hi=-target)
        self.L.n_vars = self.backend.n_vars

    def _set_soft(self, points: np.ndarray, weight: float) -> None:
        points = np.asarray(points, dtype=np.int64)
        if points.size and (points.min() < 0 or points.max() >= self.n_points):
            raise InputError(f"soft points must index the {self.n_points} points, got {points.min()}..{points.max()}")
        if not weight > 0:
            raise InputError(f"the weight of soft points must be positive, got {weight}")
        if self.boxed[points].any():
            raise InputError("soft rows apply to plain points, not to points with generators")
        self.soft[points] = True
        self.soft_weight = float(weight)

    def _add_soft_rows(self, rows: Rows, hi: np.ndarray) -> None:
        """``row <= hi + t_p``: one slack column ``t_p >= 0`` per soft point, shared by its rows."""
        pts, where = np.unique(rows.point, return_inverse=True)
        t = np.asarray(self.backend.add_variables(pts.size, 0.0, np.inf, cost=self.scale * self.soft_weight))
        self.L.n_vars = self.backend.n_vars
        self.soft_cols = np.concatenate([self.soft_cols, t])
        block, shift, scale = self._plain_block(rows)
        T = sp.csr_matrix((scale, (np.arange(where.size), t[where])), shape=(where.size, self.backend.n_vars))
        self.backend.add_rows(block - T, hi=(hi - shift) * scale)

    def soft_broken(self, x: np.ndarray, tol: float = 1e-7) -> int:
        """How many soft points the solution ``x`` lets break a row."""
        return int((np.asarray(x)[self.soft_cols] > tol).sum())

    def add_violated(self, violated: dict[int, np.ndarray]) -> None:
        """Extend the LP by the pattern rows a candidate violated."""
        self.kept = {i: self.kept[i] | violated[i] for i in self.suffix.pattern_modules}
        self.add_patterns(violated)

    def price(self) -> np.ndarray:
        """Weight deltas (indices) whose p or q column has a negative reduced cost at the last
        solve: ``cost ± g`` with ``g = Σ_rows dual · scale · h`` over the layer rows of that row of
        W_k (the only rows a weight enters; its L∞ row would be slack, dual 0). None priced out:
        the LP's optimum is the optimum with every weight column. Without duals: every column."""
        L = self.L
        if not self.lazy_weights:
            return np.zeros(0, dtype=np.int64)
        missing = L.pcol[:L.n_w] < 0
        if not missing.any():
            return np.zeros(0, dtype=np.int64)
        duals = self.backend.row_duals()
        if duals is None:
            return np.flatnonzero(missing)
        rows, scale = self.layer_rows
        n_points, positions = self.feats.shape[:2]
        w = (duals[rows] * scale).reshape(n_points, self.neurons.size, positions)
        g = np.einsum("psq,pqi->si", w, self.feats[:, :, self.live]).ravel()
        reduced = self.delta_cost - np.abs(g)
        tol = self.opts.price_tol * max(self.delta_cost, 1.0)
        out = np.flatnonzero(missing & (reduced < -tol))
        cap = max(1, int(np.ceil(self.opts.max_columns * L.n_w)))
        if out.size > cap:  # the most attractive first: early duals would bring in nearly every column
            out = out[np.argsort(reduced[out], kind="stable")[:cap]]
            out.sort()
        return out

    def _rank_weights(self) -> None:
        """Weight deltas, most promising first: by how strongly they move the output rows,
        Σ_p |d out / d u_p[row, position]| · |h_p[position, input]|. Only the start set and the
        growth after an infeasible round depend on it, never the optimum."""
        n_points, positions = self.feats.shape[:2]
        pull = getattr(self, "output_pull", np.zeros((n_points, self.n_k)))
        n_rows_k = self.layer_k.weight.shape[0]
        pull = pull.reshape(n_points, n_rows_k, positions)[:, self.neurons, :]
        score = np.einsum("psq,pqi->si", pull, np.abs(self.feats[:, :, self.live])).ravel()
        self.weight_order = np.argsort(-score, kind="stable")

    def grow_weights(self) -> bool:
        """Add the next best weight columns: the start set (``opts.start_columns`` of them), then
        as many as the LP has (doubling) after an infeasible round. False when none is left."""
        L = self.L
        missing = self.weight_order[L.pcol[self.weight_order] < 0]
        if missing.size == 0:
            return False
        have = self.weight_columns
        n = max(int(np.ceil(self.opts.start_columns * L.n_w)), have, 1)
        self.add_weight_columns(np.sort(missing[:n]))
        return True

    def add_weight_columns(self, d: np.ndarray) -> None:
        """p and q columns of weight deltas ``d`` (index ``sel * live + i``) in the layer rows of
        their row of W_k, and their L∞ rows."""
        if d.size == 0:
            return
        L, backend = self.L, self.backend
        rows, scale = self.layer_rows
        n_points, positions = self.feats.shape[:2]
        n_sel, n_live = self.neurons.size, self.live.size
        sel, i = d // n_live, self.live[d % n_live]
        # entries: -h[p, q, i] * scale for the layer row (p, sel, q), per column
        r = rows.reshape(n_points, n_sel, positions)[:, sel, :]  # (P, D, Q)
        v = -np.transpose(self.feats[:, :, i], (0, 2, 1)) * scale.reshape(n_points, n_sel, positions)[:, sel, :]
        r, v = np.transpose(r, (1, 0, 2)).reshape(d.size, -1), np.transpose(v, (1, 0, 2)).reshape(d.size, -1)
        keep = v != 0
        indptr = np.concatenate([[0], np.cumsum(keep.sum(1))])
        P = sp.csc_matrix((v[keep], r[keep], indptr), shape=(backend.n_rows, d.size))
        B = self.opts.delta_bound if self.search is None else self.search.bound()
        cp = backend.add_columns(P, 0.0, B, self.delta_cost)
        cq = backend.add_columns(-P, 0.0, B, self.delta_cost)
        L.pcol[d], L.qcol[d] = cp, cq
        L.n_vars = backend.n_vars
        if self.search is None:
            _add_objective_rows(backend, L, self.opts, d)

    @property
    def weight_columns(self) -> int:
        return int((self.L.pcol[:self.L.n_w] >= 0).sum())

    @property
    def pattern_rows(self) -> int:
        return int(sum(v.sum() for v in self.kept.values()))

    def solve_round(self, time_left: float | None = None, final: bool = True,
                    resume: bool = False) -> solvers.SolveResult:
        """Solve (warm after the first round) within ``time_left`` seconds, if given; ``final``
        False: a round that will add rows, whose L∞ bound search may stop at ``ROUND_REL_TOL``;
        ``resume``: the LP is unchanged since the last solve, whose search goes on."""
        if self.search is not None:
            return self.search.solve(time_left, REL_TOL if final else ROUND_REL_TOL, resume)
        if time_left is not None:
            self.backend.set_time_limit(time_left)
        return self.backend.solve()

    def check(self, x: np.ndarray) -> tuple[nn.Sequential, dict[int, np.ndarray]]:
        """The network the solution ``x`` stands for, and the pattern rows the LP lacks that it violates."""
        candidate = self.apply(x)
        signed, y = _pattern_slack(self.suffix, candidate, self.pre)
        if self.out_in is not None:
            self.y_last = y
        if self.zono is not None:
            signed = {i: self.zono.worst_slack(v) for i, v in signed.items()}
        tol = self.opts.pattern_tol
        violated = {i: (signed[i] < -tol) & ~self.kept[i] & self.active[:, None] for i in self.suffix.pattern_modules}
        return candidate, self._most_violated(violated, signed)

    def _most_violated(self, violated: dict, signed: dict) -> dict:
        """At most ``opts.max_pattern_rows`` of the violated rows, the most violated first (None: all;
        "auto": ``POINT_PATTERN_ROWS`` or a tenth of the LP's rows or columns, whichever is more). Fewer rows per
        round keep each re-solve small where the first rounds break tens of thousands of patterns;
        where the LP is huge, each round's re-solve costs more than its rows, so fewer rounds win.
        Convergence still needs a round that violates none."""
        cap = self.opts.max_pattern_rows
        if cap == "auto":
            cap = max(POINT_PATTERN_ROWS, int(PATTERN_GROWTH * max(self.backend.n_rows, self.backend.n_vars)))
        elif cap is None and self.substituted:
            cap = _SUBSTITUTED_MAX_PATTERN_ROWS
        total = sum(int(v.sum()) for v in violated.values())
        if cap is None or total <= cap:
            return violated
        vals = np.concatenate([signed[i][v] for i, v in violated.items()])
        cut = np.partition(vals, cap - 1)[cap - 1]
        return {i: v & (signed[i] <= cut) for i, v in violated.items()}

    def deltas(self, x: np.ndarray) -> np.ndarray:
        """δ = p - q for every delta column."""
        L = self.L
        xp = np.where(L.pcol >= 0, x[np.maximum(L.pcol, 0)], 0.0)
        return xp - np.where(L.qcol >= 0, x[np.maximum(L.qcol, 0)], 0.0)

    def apply(self, x: np.ndarray) -> nn.Sequential:
        """A copy of the network with the LP's deltas added (computed in float64, stored in its dtype)."""
        L, neurons, live = self.L, self.neurons, self.live
        out = copy.deepcopy(self.net)
        x = self.deltas(x)
        with torch.no_grad():
            lk = out[self.k]
            W = lk.weight.detach().double().reshape(lk.weight.shape[0], -1)
            dW = torch.zeros((neurons.size, W.shape[1]), dtype=torch.float64)
            dW[:, torch.from_numpy(live)] = torch.from_numpy(x[:L.n_w].reshape(neurons.size, live.size))
            W[torch.from_numpy(neurons)] += dW
            lk.weight.copy_(W.reshape(lk.weight.shape).to(lk.weight.dtype))
            bk = lk.bias.detach().double()
            bk[torch.from_numpy(neurons)] += torch.from_numpy(x[L.n_w:L.n_w + L.n_bk])
            lk.bias.copy_(bk.to(lk.bias.dtype))
            for j, n in self.later.items():
                off = L.bias_offset[j]
                bj = out[j].bias
                bj.copy_((bj.detach().double() + torch.from_numpy(x[off:off + n])).to(bj.dtype))
        return out


#: Output rows enter by constraint generation (``PointLP._lazy_outputs``): of the nine rows of a
#: ten-class label spec, one or two bind.
LAZY_OUTPUT_ROWS = True
#: Pattern rows pulled back at once: bounds the memory of the one-hot functionals.
_PATTERN_BATCH = 20000
#: ... and at most this many functional entries at once (a conv layer's maps are wide).
_PATTERN_ELEMENTS = 40_000_000
#: ``formulation="auto"`` substitutes u out where layer k has more output positions than this
#: (a conv layer; a Linear layer has one): see ``PointLP._substitute``.
_SUBSTITUTE_POSITIONS = 1
#: ``max_pattern_rows="auto"`` (point repair's default) adds at most the larger of these per round:
#: the most violated rows bring most of the others back with them, and a few hundred dense rows
#: re-solve warm in a fraction of the time of thousands, until the LP is so large that each re-solve
#: costs more than the rows it adds. One run each, 2-core machine at load 3-4: zoo CNN conv2 with 2
#: of 32 channels, 50 points: 7.8 s with 300, 15.2 s with 1,000, 43.1 s with every violated row
#: (12,685 rows in the LP, against about 3,300 with 300); ERAN 9x100 layers 2 and 3: 82.6 s and
#: 72.0 s with 300 or 1,000 against 164.4 s and 92.2 s with every row; layer 5 alike (25-30 s); its
#: layer 0 (89k rows) ran past 600 s in 7 rounds of 300, where every row (14k at once) took 493 s.
#: A tenth of the columns as well: with 300 or a tenth of the rows only, 9x100 layer 5 (21k columns,
#: 2,000 rows violated in round 0) took 17.3 s and the zoo MLP's layer 1 14.8 s on a quiet machine,
#: against 12.5 s and 11.9 s adding every row; a column-poor conv LP (729 columns) keeps 300.
POINT_PATTERN_ROWS = 300
PATTERN_GROWTH = 0.1
#: A substituted (conv-layer) LP adds at most this many pattern rows per round unless
#: ``max_pattern_rows`` says otherwise: the zoo CNN's conv1 broke 240k at its first round, whose
#: rows (23.8 M nonzeros) took 230 s and 2.5 GB to add.
_SUBSTITUTED_MAX_PATTERN_ROWS = 20000


@dataclass
class Generation:
    """What constraint generation did: its rounds, the last solve and the network it stands for."""

    rounds: list[dict] = field(default_factory=list)
    result: solvers.SolveResult | None = None
    candidate: nn.Sequential | None = None
    converged: bool = False  # the last solution violates no pattern: optimal for the full LP
    timed_out: bool = False
    build_time: float = 0.0
    solve_time: float = 0.0
    check_time: float = 0.0


def generate_constraints(lp: PointLP, deadline: float | None, say: Callable[[str], None],
                         build_time: float = 0.0) -> Generation:
    """Solve, check every pattern at the solution, add the violated rows, re-solve warm, until none
    is violated, the rounds run out or ``deadline`` (a ``perf_counter`` time) passes."""
    run = Generation(build_time=build_time)
    final = lp.search is None  # a round searched loosely that violates nothing is searched on tightly
    resume = False
    for rnd in range(lp.opts.max_rounds):
        time_left = None if deadline is None else deadline - time.perf_counter()
        if time_left is not None and time_left <= 0:
            run.timed_out = True
            break
        result = run.result = lp.solve_round(time_left, final, resume)
        run.solve_time += result.solve_time
        backend = lp.backend
        info = {"round": rnd, "status": result.status, "variables": backend.n_vars, "rows": backend.n_rows,
                **({} if lp.search is None else lp.search.summary()),
                "nonzeros": backend.nnz, "pattern_rows": lp.pattern_rows, "weight_columns": lp.weight_columns,
                "solve_time": result.solve_time,
                "objective": None if result.objective is None else result.objective / lp.scale}
        run.rounds.append(info)
        if result.status == "infeasible" and lp.lazy_weights and lp.grow_weights():
            say(f"round {rnd}: infeasible with {info['weight_columns']} weight columns; adding more")
            continue
        if not result.optimal:
            break
        t0 = time.perf_counter()
        run.candidate, violated = lp.check(result.x)
        n_viol = info["violated_patterns"] = sum(int(v.sum()) for v in violated.values())  # (capped)
        outputs = lp.violated_outputs()
        info["violated_outputs"] = int(outputs.size)
        priced = lp.price()
        info["priced_columns"] = int(priced.size)
        run.check_time += time.perf_counter() - t0
        say(f"round {rnd}: objective {info['objective']:.6g}, {n_viol} activation patterns violated"
            + (f", {outputs.size} output rows violated" if lp.out_in is not None else "")
            + (f", {priced.size} weight columns priced in" if lp.lazy_weights else ""))
        if n_viol == 0 and priced.size == 0 and outputs.size == 0:
            if not final:
                final = resume = True
                continue
            run.converged = True
            break
        t0 = time.perf_counter()
        lp.add_weight_columns(priced)
        lp.add_outputs(outputs)
        lp.add_violated(violated)
        run.build_time += time.perf_counter() - t0
        say(f"round {rnd + 1}: LP {backend.n_vars} variables, {backend.n_rows} rows, {backend.nnz} nonzeros")
    return run


def outcome_of(lp: PointLP, run: Generation) -> PointRepairOutcome:
    """The outcome of constraint generation on ``lp`` (its model: the network of the last solve)."""
    status = _final_status(run)
    ok = status == "optimal"
    backend = lp.backend
    return PointRepairOutcome(
        status=status, model=run.candidate if ok else None,
        objective=run.result.objective / lp.scale if ok else None,
        layer=lp.aff_index, lp_size=backend.size(),
        full_lp_size={"variables": backend.n_vars, "rows": lp.full_rows},
        rounds=run.rounds, build_time=run.build_time, solve_time=run.solve_time, check_time=run.check_time,
        solver={"name": backend.name, "version": backend.version, "status": status,
                "options": backend.settings()},
        delta=delta_norms(lp.deltas(run.result.x), lp.n_params) if ok else {},
        message=_message(status, run, lp.layer, lp.opts.delta_bound),
        soft_broken=lp.soft_broken(run.result.x) if ok and lp.soft.any() else None)


def _final_status(run: Generation) -> str:
    """The last solve's status, except that a solution with patterns still violated is no answer."""
    status = "error" if run.result is None else run.result.status
    if run.timed_out or (status == "optimal" and not run.converged):
        status = "time_limit"
    return status


def _message(status: str, run: Generation, layer: int, delta_bound: float) -> str:
    if status == "time_limit" and run.rounds and run.rounds[-1]["status"] == "optimal":
        return (f"constraint generation stopped after {len(run.rounds)} rounds with activation patterns still "
                "violated; raise --time-limit (or max_rounds)")
    result = run.result
    return {
        "optimal": "optimal repair found",
        "infeasible": f"no repair exists at layer {layer} within delta bound {delta_bound} "
                      "(try another layer, a larger --delta-bound, or a smaller margin)",
        "time_limit": "the solver ran out of time; raise --time-limit or try another layer",
    }.get(status, f"solver returned {status}" + (f" ({result.message})" if result is not None and result.message else ""))


#: Objectives with an L1 / an L∞ term over the parameter changes ("outputs" adds its own term to both).
_L1_OBJECTIVES = ("linf+l1", "l1", "outputs")
_LINF_OBJECTIVES = ("linf+l1", "linf", "outputs")


def _objective_scale(opts, n_params: int) -> float:
    """The LP minimises ``scale`` times the DESIGN's objective: with an L1 term, costs of 1 per
    parameter instead of 1/n_params. Same optimum; HiGHS's dual simplex took ~1.7x longer on
    the 100-point benchmark with the tiny costs."""
    return float(n_params) if opts.objective in _L1_OBJECTIVES else 1.0


def _add_objective_rows(backend, L: _Layout, opts, d: np.ndarray | None = None) -> None:
    """p_i + q_i - s <= 0: the L∞ epigraph (one row per parameter ``d``, default every one in the LP)."""
    if opts.objective not in _LINF_OBJECTIVES:
        return
    d = np.flatnonzero(L.pcol >= 0) if d is None else d
    n = d.size
    cols = np.stack([L.pcol[d], L.qcol[d], np.full(n, L.s)], 1)
    vals = np.tile([1.0, 1.0, -1.0], (n, 1))
    A = sp.csr_matrix((vals.ravel(), cols.ravel(), np.arange(0, 3 * n + 1, 3)), shape=(n, L.n_vars))
    backend.add_rows(A, hi=0.0)


def _add_layer_rows(backend, L: _Layout, feats: np.ndarray, neurons: np.ndarray, suffix: Suffix,
                    boxed: np.ndarray, u0: np.ndarray, biased: np.ndarray,
                    points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """u_p = W_k h_p + b_k + ΔW_k h_p + Δb_k for the rows of W_k that may change.

    Where a ReLU acts on u and the unit is off at p, u_p appears in no later row (the pattern
    zeroes it), so the equality collapses to ``ΔW_k h_p + Δb_k <= -u0_p``: no u column needed.
    Zonotope points keep every equality: their u values enter the generator rows; a generator
    point's row has no bias (``biased`` false): its u is the generator's image.
    Rows are ordered (point, row of W_k, position); returns their indices and scales (the
    weight columns generated later need both).
    """
    _, positions, fan_in = feats.shape
    n_sel = neurons.size
    P, S, Q = np.meshgrid(points, np.arange(n_sel), np.arange(positions), indexing="ij")
    P, S, Q = P.ravel(), S.ravel(), Q.ravel()
    m = P.size
    flat = neurons[S] * positions + Q
    rhs = u0[P, flat]
    off = np.zeros(m, dtype=bool) if suffix.relu_on_u is None else suffix.pattern(suffix.relu_on_u)[P, flat] < 0
    off &= ~boxed[P]
    u_cols = L.ustart[P] + flat
    w_cols = S[:, None] * fan_in + np.arange(fan_in)[None, :]
    cols = np.concatenate([u_cols[:, None], L.delta(w_cols), L.delta(L.n_w + S[:, None])], 1)
    vals = np.concatenate([np.where(off, 0.0, 1.0)[:, None], -feats[P, Q, :], -biased[P].astype(np.float64)[:, None]], 1)
    # on:  u - ΔW h - Δb = u0     off: -ΔW h - Δb >= u0  (i.e. ΔW h + Δb <= -u0)
    scale = _row_scale(vals)
    rows = backend.add_rows(L.matrix(cols, vals * scale[:, None]), lo=rhs * scale,
                            hi=np.where(off, np.inf, rhs) * scale)
    return rows, scale


def _add_affine_rows(backend, L: _Layout, rows: Rows, lo, hi) -> None:
    """Add ``lo <= coef_u @ u_p + Σ coef_b @ Δb <= hi`` (the constant is already in lo/hi)."""
    cols, vals = _row_cols(L, rows)
    scale = _row_scale(vals)
    backend.add_rows(L.matrix(cols, vals * scale[:, None]), lo=lo * scale, hi=hi * scale)


class _Zonotopes:
    """Bookkeeping of points with generators: centres are the first ``n_centres`` points, the
    generator points ``c + g`` follow, grouped by centre (``owner``, ``start``/``count``)."""

    def __init__(self, n_centres: int, gens: list[np.ndarray], owner: np.ndarray):
        self.n_centres = n_centres
        self.gens = gens  # per centre: (n_i, *shape), n_i may be 0
        self.owner = owner  # per generator point: its centre
        self.count = np.array([len(g) for g in gens], dtype=np.int64)
        self.start = n_centres + np.concatenate([[0], np.cumsum(self.count)[:-1]]).astype(np.int64)

    @classmethod
    def build(cls, x: torch.Tensor, generators) -> _Zonotopes | None:
        if generators is None:
            return None
        if len(generators) != x.shape[0]:
            raise InputError(f"generators: got {len(generators)} entries for {x.shape[0]} points")
        gens = []
        for p, g in enumerate(generators):
            g = np.zeros((0,) + tuple(x.shape[1:])) if g is None else np.asarray(g, dtype=np.float64)
            if g.ndim == len(x.shape[1:]):
                g = g[None]
            if tuple(g.shape[1:]) != tuple(x.shape[1:]) or not np.isfinite(g).all():
                raise InputError(f"generators of point {p} must be finite arrays (n, {', '.join(map(str, x.shape[1:]))})")
            gens.append(g)
        if not any(len(g) for g in gens):
            return None
        owner = np.repeat(np.arange(len(gens)), [len(g) for g in gens])
        return cls(x.shape[0], gens, owner)

    def points(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.as_tensor(np.concatenate([g for g in self.gens if len(g)]), dtype=x.dtype)
        return x[torch.from_numpy(self.owner)] + g

    def extend(self, per_centre: np.ndarray) -> np.ndarray:
        """Per-centre values repeated for the generator points."""
        return np.concatenate([per_centre, per_centre[self.owner]])

    def boxed(self, n_points: int) -> np.ndarray:
        out = np.zeros(n_points, dtype=bool)
        out[:self.n_centres] = self.count > 0
        out[self.n_centres:] = True
        return out

    def worst_slack(self, slack: np.ndarray) -> np.ndarray:
        """Per-point slack (points, units) of a sign row turned into its minimum over each
        zonotope. ``slack`` at a generator point is signed like its centre's; the row's
        variation along a generator is the difference, its minimum subtracts |difference|."""
        out = slack.copy()
        diff = np.abs(slack[self.n_centres:] - slack[self.owner])
        np.add.at(out, self.owner, -diff)
        out[self.n_centres:] = np.inf  # generator points have no rows of their own
        return out


def _add_zonotope_rows(backend, L: _Layout, rows: Rows, zono: _Zonotopes, lo, hi) -> None:
    """``lo <= row <= hi`` over each row's zonotope: ``row(c) - sum t >= lo``, ``row(c) + sum t <= hi``
    with ``t_g >= |row(c + g) - row(c)|``. Rows of points without generators keep t empty."""
    cnt = zono.count[rows.point]
    e = np.repeat(np.arange(rows.point.size), cnt)  # row of each t
    first = np.repeat(np.cumsum(cnt) - cnt, cnt)  # where each row's block of t starts
    g_pt = np.repeat(zono.start[rows.point], cnt) + np.arange(e.size) - first  # generator point of each t
    t = np.asarray(backend.add_variables(e.size, 0.0, np.inf), dtype=np.int64)
    n = backend.n_vars
    # t - coef_u @ w_g >= 0 and t + coef_u @ w_g >= 0, w_g the generator's image (its u column);
    # the row moves by coef_u @ w_g along the generator (bias terms do not move)
    cu = rows.coef_u[e]
    scale = _row_scale(np.concatenate([cu, np.ones((e.size, 1))], 1))
    cols = np.concatenate([t[:, None], L.u_col(g_pt)], 1)
    for s in (1.0, -1.0):
        vals = np.concatenate([np.ones((e.size, 1)), -s * cu], 1) * scale[:, None]
        backend.add_rows(_csr(cols, vals, n), lo=0.0)
    cols, vals = _row_cols(L, rows)
    main = L.matrix(cols, vals)
    main = sp.csr_matrix((main.data, main.indices, main.indptr), shape=(rows.point.size, n))
    T = sp.csr_matrix((np.ones(e.size), (e, t)), shape=(rows.point.size, n))
    rs = _row_scale(np.concatenate([vals, np.ones((rows.point.size, 1))], 1))
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    for bound, sign in ((hi, 1.0), (lo, -1.0)):
        keep = np.flatnonzero(np.isfinite(bound))
        if keep.size == 0:
            continue
        M = sp.diags(rs[keep]) @ (main[keep] + sign * T[keep])
        b = bound[keep] * rs[keep]
        backend.add_rows(M, hi=b) if sign > 0 else backend.add_rows(M, lo=b)


def _csr(cols: np.ndarray, vals: np.ndarray, n: int) -> sp.csr_matrix:
    keep = vals != 0
    indptr = np.concatenate([[0], np.cumsum(keep.sum(1))])
    return sp.csr_matrix((vals[keep], cols[keep], indptr), shape=(cols.shape[0], n))


def _select_rows(rows: Rows, idx: np.ndarray) -> Rows:
    return Rows(point=rows.point[idx], coef_u=rows.coef_u[idx], coef_b={j: c[idx] for j, c in rows.coef_b.items()},
                const=rows.const[idx])


def _add_disjunctive_rows(backend, L: _Layout, rows: Rows, rhs: np.ndarray, groups, feats: np.ndarray,
                          u0: np.ndarray, B: float) -> None:
    """``row_r <= rhs_r + M_r (1 - z_r)`` with binary ``z_r`` and ``sum_{r in g} z_r >= 1`` per group.

    ``M_r`` bounds how far row r can exceed rhs_r: each u moves at most B (|h|_1 + 1) from u0 (its
    weights and bias move by at most B) and each later bias delta at most B.
    """
    idx = np.concatenate([np.asarray(g, dtype=np.int64) for g in groups])
    sub = _select_rows(rows, idx)
    reach = B * (np.abs(feats).sum(2).max(1) + 1.0)  # per point
    top = (sub.coef_u * u0[sub.point]).sum(1) + np.abs(sub.coef_u).sum(1) * reach[sub.point]
    for j, cb in sub.coef_b.items():
        if j in L.bias_offset:
            top += np.abs(cb).sum(1) * B
    # the row's left side is at most top over the whole delta box
    big = np.maximum(top - rhs[idx], 0.0) + 1.0
    z = backend.add_variables(idx.size, 0.0, 1.0, integer=True)
    part = L.matrix(*_row_cols(L, sub))
    n = backend.n_vars
    part = sp.csr_matrix((part.data, part.indices, part.indptr), shape=(idx.size, n))
    Z = sp.csr_matrix((big, (np.arange(idx.size), z)), shape=(idx.size, n))
    scale = 1.0 / np.maximum(1.0, np.abs(part).max(axis=1).toarray().ravel())
    backend.add_rows(sp.diags(scale) @ (part + Z), hi=(rhs[idx] + big) * scale)
    start = 0
    owner_rows, owner_cols = [], []
    for g_i, g in enumerate(groups):
        owner_rows.extend([g_i] * len(g))
        owner_cols.extend(z[start:start + len(g)])
        start += len(g)
    S = sp.csr_matrix((np.ones(len(owner_cols)), (owner_rows, owner_cols)), shape=(len(groups), n))
    backend.add_rows(S, lo=1.0)


def _row_cols(L: _Layout, rows: Rows) -> tuple[np.ndarray, np.ndarray]:
    blocks_c = [L.u_col(rows.point)]
    blocks_v = [rows.coef_u]
    for j, cb in rows.coef_b.items():
        if j not in L.bias_offset:
            continue
        off = L.bias_offset[j]
        blocks_c.append(np.broadcast_to(L.delta(off + np.arange(cb.shape[1])), cb.shape))
        blocks_v.append(cb)
    return np.concatenate(blocks_c, 1), np.concatenate(blocks_v, 1)


def _row_scale(vals: np.ndarray) -> np.ndarray:
    """1 / the largest coefficient of each row: the LP is built equilibrated (it is ``prescaled``)."""
    m = np.abs(vals).max(axis=1)
    return np.where(m > 0, 1.0 / np.where(m > 0, m, 1.0), 1.0)


def _pattern_slack(suffix: Suffix, candidate: nn.Sequential,
                   pre: dict[int, np.ndarray]) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """Slack of every activation-pattern row at the candidate, on the LP's own (pattern-fixed)
    model: >= 0 where the pattern holds; and that model's outputs (points, outputs), which the
    lazy output rows are checked at. With no negative slack the LP model and the network
    coincide at every repair point."""
    now, y = suffix.run_fixed_pattern(copy.deepcopy(candidate).double().eval())
    return {i: np.where(pre[i] > 0, now[i], np.where(pre[i] < 0, -now[i], -np.abs(now[i]))) for i in now}, y


def delta_norms(delta: np.ndarray, count: int | None = None) -> dict:
    """Norms of a parameter change: the one definition every provable repair reports.

    ``count`` is how many parameters the repair may touch (default ``delta.size``); entries left
    out of ``delta`` are unchanged and add nothing to the norms.
    """
    a = np.abs(delta)
    return {"linf": float(a.max(initial=0.0)), "l1": float(a.sum()), "l0": int((a > 1e-9).sum()),
            "count": int(a.size if count is None else count)}

