"""Repair-set analysis: how diverse and how concentrated a repair set is, and how big an LP its
provable point repair will be at each affine layer.

Everything here is computed from the network and the spec alone; nothing is imported from
``provrepair.repair`` (the LP size is predicted by reproducing the formulation of
``DESIGN.md`` -- "Provable point repair" -- by counting, not by building it).

The report is plain Python data (dicts, lists, ints, floats, strings) so the CLI can write it as
JSON unchanged.

Only point specs are analysed for now. The structure is meant to extend to polytope specs:
:func:`_point_cloud` is the single place that turns a spec into the points whose diversity and
concentration are measured (for a V-polytope spec it would return the vertices, and the report would
gain a vertex count); :func:`analyze` dispatches on the spec type.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from provrepair.errors import InputError
from provrepair.models import affine_index_to_module_index, affine_layers, is_head, layer_inputs
from provrepair.specs import PointSpec

from .scorers import representations

__all__ = [
    "RANK_RTOL_FACTOR",
    "GUROBI_RESTRICTED_LIMIT",
    "SLOW_SECONDS",
    "TIMING_MEASUREMENTS",
    "analyze_points",
    "predict_lp_size",
    "estimate_seconds",
    "analyze",
    "format_analysis",
]

#: Singular values of the centred point matrix count towards the affine dimension when they exceed
#: ``RANK_RTOL_FACTOR * max(N, D) * machine_eps * largest_singular_value`` (numpy's ``matrix_rank``
#: default), with an absolute floor of ``machine_eps`` so that identical points give dimension 0.
RANK_RTOL_FACTOR = 1.0
#: pip ``gurobipy`` ships a size-limited licence: at most this many variables and this many rows.
GUROBI_RESTRICTED_LIMIT = 2000
#: A layer whose estimated solve time exceeds this many seconds gets a warning.
SLOW_SECONDS = 300.0
#: Measurements of the real point repairer (HiGHS, 2 cores): (first-round nonzeros, total seconds).
#: ``--layer auto`` keeps a layer when ``estimate_seconds`` of its predicted LP fits the time limit
#: (heuristics.select). Refresh with ``python benchmarks/point_repair.py --calibrate`` after a full
#: benchmark run on a quiet machine; the last five were measured on a busy one (load ~2). Size
#: alone misses how many rounds a layer needs: ERAN 9x100 layer 2 (758k nonzeros, 5 rounds) took
#: 56.3 s, six times this fit, and is left out of it.
TIMING_MEASUREMENTS = (
    (145_000, 1.2),
    (657_000, 4.8),
    (1_020_000, 4.5),
    (1_160_000, 12.9),
    (663_000, 15.0),  # MLP layer 1, 50 points
    (38_500, 0.17),  # zoo mnist_cnn fc2 (layer 3), 50 fog failures
    (1_725_681, 30.5),  # zoo mnist_cnn fc1 (layer 2), 16 of 64 rows, 50 fog failures
    (885_204, 11.9),  # zoo MLP layer 1, 100 fog failures (u substituted, L-inf searched)
    (3_552_708, 20.4),  # zoo mnist_cnn fc1 whole, 50 fog failures (the same)
    (4_687_710, 111.1),  # zoo fashion_cnn fc1 whole, 50 fog failures (the same)
)
# Points are pushed through the network in chunks of this many (bounds the memory of conv patches).
_CHUNK = 32


# --------------------------------------------------------------------------------------------------
# points: size, diversity, concentration
# --------------------------------------------------------------------------------------------------

def _point_cloud(spec) -> np.ndarray:
    """The (N, D) float64 points whose spread and hull are measured."""
    if isinstance(spec, PointSpec):
        x = np.array(spec.inputs, dtype=np.float64)
        return x.reshape(x.shape[0], -1)
    raise InputError(f"repair-set analysis supports point specs only, got {type(spec).__name__}")


def _balance(labels: np.ndarray) -> float:
    """Normalised entropy of the label histogram: H / log(#classes present); 1.0 with one class."""
    _, counts = np.unique(labels, return_counts=True)
    if counts.size <= 1:
        return 1.0
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum() / math.log(counts.size))


def _spread(x: np.ndarray) -> float:
    """Mean Euclidean distance of the rows of ``x`` to their centroid."""
    x = x.reshape(x.shape[0], -1)
    return float(np.linalg.norm(x - x.mean(axis=0), axis=1).mean())


def _affine_dimension(x: np.ndarray) -> int:
    """Rank of the points minus their centroid (tolerance: see ``RANK_RTOL_FACTOR``)."""
    if x.shape[0] <= 1:
        return 0
    s = np.linalg.svd(x - x.mean(axis=0), compute_uv=False)
    eps = np.finfo(np.float64).eps
    tol = max(RANK_RTOL_FACTOR * max(x.shape) * eps * (s[0] if s.size else 0.0), eps)
    return int((s > tol).sum())


def _net64(net: nn.Module) -> nn.Sequential:
    net64 = copy.deepcopy(net).double().eval()
    return net64 if isinstance(net64, nn.Sequential) else nn.Sequential(net64)


def _relu_follows(net: nn.Sequential, i: int) -> bool:
    return i + 1 < len(net) and isinstance(net[i + 1], nn.ReLU)


def analyze_points(spec: PointSpec, net: nn.Module | None = None) -> dict[str, Any]:
    """Size, diversity and concentration of a point repair set.

    Returns ``{"size": {points, input_dim}, "diversity": {classes, balance, spread_input,
    spread_feature}, "concentration": {affine_dimension, points_to_span}}``.

    * ``classes``: distinct labels (points without a label, ``-1``, are ignored; ``None`` without
      labels); ``balance``: entropy of the label histogram over the classes present divided by
      ``log(classes)`` (1 = perfectly balanced; 1.0 by convention for a single class).
    * ``spread_input``: mean distance of the points to their centroid; ``spread_feature``: the same
      at each affine layer's output (after its ReLU if one follows), one entry per affine layer, or
      ``None`` without a network.
    * ``affine_dimension``: rank of the centred points (numerical tolerance: ``RANK_RTOL_FACTOR``);
      ``points_to_span``: ``affine_dimension + 1`` points span the set's affine hull.
    """
    x = _point_cloud(spec)
    n, d = x.shape
    labels = None if spec.labels is None else np.asarray(spec.labels)
    if labels is not None:
        labels = labels[labels >= 0]
    has_labels = labels is not None and labels.size > 0
    dim = _affine_dimension(x)
    return {
        "size": {"points": int(n), "input_dim": int(d)},
        "diversity": {
            "classes": int(np.unique(labels).size) if has_labels else None,
            "balance": _balance(labels) if has_labels else None,
            "spread_input": _spread(x),
            "spread_feature": None if net is None else [
                _spread(f) for f in representations(_net64(net), spec.inputs)],
        },
        "concentration": {"affine_dimension": dim, "points_to_span": dim + 1},
    }


# --------------------------------------------------------------------------------------------------
# LP size of the first round of point repair
# --------------------------------------------------------------------------------------------------

def predict_lp_size(net: nn.Module, spec: PointSpec, layer: int, rows: int | None = None,
                    formulation: str = "u") -> dict[str, int]:
    """Predicted size of the FIRST-round LP of provable point repair at affine layer ``layer``.

    An estimate by counting, following the formulation in DESIGN.md ("Provable point repair").
    Later rounds add rows for activation patterns that the first solution broke, so the final LP
    is somewhat larger. With ``N`` points, ``h_p`` the input of layer ``k`` (for a Conv2d its
    unfolded patches: ``fan_in = C_in*kh*kw`` at each of ``H_out*W_out`` positions):

    * ``live``: columns of ``W_k`` whose input is nonzero at some point (and position);
    * ``n_delta = n_rows*live + n_rows + sum of the bias sizes of every later affine layer``
      (``n_rows``: outputs/channels of layer ``k``);
    * ``variables = 2*n_delta + 1 + N*n_k`` (δ split as p - q, the L∞ bound, the vectors ``u_p``;
      ``n_k``: size of layer ``k``'s output);
    * ``rows = n_delta + N*n_k + R`` (L∞ rows, one row per point and unit of layer ``k``, and the
      ``R`` output rows of ``spec.output_constraints``: ``n_out - 1`` per labelled point);
    * ``nonzeros = 3*n_delta + sum over unit rows of (2*nnz(h_p at that position) + [active] + 2)
      + R * 2 * (n_k_active_avg + later bias sizes)``, where a unit is active when no ReLU follows
      layer ``k`` or its original pre-activation is > 0, and ``n_k_active_avg`` is the mean number of
      active units per point.

    ``rows`` (a count) predicts a repair restricted to that many rows of ``W_k`` (``--rows``/``--channels``):
    only their deltas and unit rows count (the other units' ``u`` are fixed columns).

    ``formulation`` "auto" follows the repairer's default (``PointRepairOptions.formulation``): a conv
    layer's ``u`` is substituted out, leaving ``2*n_delta + 1`` variables, ``n_delta + R`` rows,
    output rows dense over the deltas, and rows for its ReLU (counted all, though they come lazily);
    so is the last layer's and the last hidden one's (``models.is_head``), starting from one output row per
    point over the weights that point reaches.

    ``variables`` and ``rows`` are exact for the first round; ``nonzeros`` is an upper-leaning
    estimate (the output rows' ``u`` coefficients are not split into p/q, and zero coefficients of the
    masked later products are dropped by the builder): checked 5-20 % above the real count on small
    MLP and conv nets.
    """
    affine = affine_layers(net)
    mi = affine_index_to_module_index(net, layer)
    layer = affine.index(mi)
    net64 = _net64(net)
    layer_k = net64[mi]
    if isinstance(layer_k, nn.Conv2d) and layer_k.groups != 1:
        raise InputError(f"affine layer {layer} is a grouped convolution, which point repair does not support")
    relu = _relu_follows(net64, mi)
    later_bias = sum(int(net64[j].weight.shape[0]) for j in affine[layer + 1:])
    n_all = int(layer_k.weight.shape[0])
    n_rows = n_all if rows is None else max(1, min(int(rows), n_all))

    x = np.array(spec.inputs, dtype=np.float64)  # writable copy for torch
    n_points = x.shape[0]
    live, patch_nnz, positions, active, n_k, n_out = _layer_counts(net64, mi, x, relu)
    R = int(spec.output_constraints(n_out)[0].shape[0])

    n_delta = n_rows * live + n_rows + later_bias
    if formulation == "auto" and positions == 1 and is_head(net64, mi):
        # u substituted out at the last layer or the last hidden one (the repairer's auto): one
        # output row per point to start (the others come lazily), over the weights of the point's
        # active units and nonzero inputs; at the last layer one L∞ row per delta, which the
        # layer before it searches instead
        last = not later_bias
        units = 2.0 if last else (active / max(1, n_points)) * n_rows / n_all  # a label row: two units at the last
        per_row = 2.0 * units * (patch_nnz / max(1, n_points) + 1)
        linf_rows = n_delta if last else 0
        return {"variables": int(2 * n_delta + 1), "rows": int(n_points + linf_rows),
                "nonzeros": int(round(n_points * (per_row + 2 * later_bias) + 3 * linf_rows))}
    if formulation != "u" and (formulation == "substituted" or positions > 1):
        # counted as if every row of the ReLU on u came in (they come lazily, but the first rounds
        # of a conv layer break tens of thousands of them): each as wide as a patch, twice (p, q)
        relu_rows = n_points * n_k * n_rows // n_all if relu else 0
        per_row = 2.0 * (patch_nnz / max(1, n_points * positions) + 1.0)
        return {"variables": int(2 * n_delta + 1), "rows": int(n_delta + R + relu_rows),
                "nonzeros": int(3 * n_delta + 2 * R * n_delta + relu_rows * per_row)}
    units = n_points * n_k
    sel_units = units * n_rows // n_all
    variables = 2 * n_delta + 1 + units
    rows = n_delta + sel_units + R
    unit_nnz = 2 * n_rows * patch_nnz + (active + 2 * units) * n_rows // n_all
    out_nnz = 2.0 * R * (active / n_points + later_bias)
    nonzeros = 3 * n_delta + unit_nnz + int(round(out_nnz))
    return {"variables": int(variables), "rows": int(rows), "nonzeros": int(nonzeros)}


def _layer_counts(net64: nn.Sequential, mi: int, x: np.ndarray, relu: bool) -> tuple[int, int, int, int, int, int]:
    """What the LP size depends on, counted over the points ``x``: live input columns of module
    ``mi``, nonzeros of its (unfolded) inputs summed over points and positions, positions, active
    (point, unit) pairs, units of its output and outputs of the network."""
    layer_k = net64[mi]
    live_mask = None
    patch_nnz = 0     # sum over points and positions of nnz(h_p at that position)
    positions = 1
    active = 0        # active (point, unit) pairs of layer k
    n_k = n_out = 0
    with torch.no_grad():
        for start in range(0, x.shape[0], _CHUNK):
            h = torch.as_tensor(x[start:start + _CHUNK], dtype=torch.float64)
            h = net64[:mi](h) if mi > 0 else h
            nz = layer_inputs(layer_k, h) != 0
            positions = int(nz.shape[1])
            live_chunk = nz.any(dim=0).any(dim=0)
            live_mask = live_chunk if live_mask is None else live_mask | live_chunk
            patch_nnz += int(nz.sum())
            u = layer_k(h)
            n_k = int(u[0].numel())
            active += int((u > 0).sum()) if relu else int(u.numel())
            n_out = int(net64[mi:](h)[0].numel())
    live = int(live_mask.sum())
    return live, patch_nnz, positions, active, n_k, n_out


def _fit_timing() -> tuple[float, float]:
    """Least squares of log t = log a + b log nnz over ``TIMING_MEASUREMENTS``."""
    nnz, t = np.array(TIMING_MEASUREMENTS, dtype=np.float64).T
    b, log_a = np.polyfit(np.log(nnz), np.log(t), 1)
    return float(math.exp(log_a)), float(b)


_TIME_A, _TIME_B = _fit_timing()


def estimate_seconds(size) -> float:
    """Crude solve-time estimate ``a * nonzeros**b`` (HiGHS, 2 cores).

    ``size`` is a :func:`predict_lp_size` dict or a nonzero count. ``a`` and ``b`` are a
    least-squares fit in log space to ``TIMING_MEASUREMENTS``, which scatter by a factor of about 3
    around it (LP difficulty is not a function of size alone): order of magnitude only.
    """
    nnz = float(size["nonzeros"] if isinstance(size, dict) else size)
    return float(_TIME_A * max(nnz, 1.0) ** _TIME_B)


# --------------------------------------------------------------------------------------------------
# the whole report
# --------------------------------------------------------------------------------------------------

def analyze(spec, net: nn.Module | None = None) -> dict[str, Any]:
    """:func:`analyze_points`, plus with a network ``layers`` (one entry per affine layer: its
    predicted first-round LP size, estimated seconds and whether it fits the restricted Gurobi
    licence) and ``warnings`` (a list of strings; empty without a network)."""
    if not isinstance(spec, PointSpec):
        raise InputError(f"repair-set analysis supports point specs only, got {type(spec).__name__}")
    report = analyze_points(spec, net)
    report["kind"] = "points"
    warnings: list[str] = []
    if net is not None:
        layers = []
        for k in range(len(affine_layers(net))):
            size = predict_lp_size(net, spec, k)
            secs = estimate_seconds(size)
            ok = size["variables"] <= GUROBI_RESTRICTED_LIMIT and size["rows"] <= GUROBI_RESTRICTED_LIMIT
            layers.append({"layer": k, **size, "seconds": secs, "gurobi_restricted_ok": ok})
            if not ok:
                warnings.append(f"layer {k}: predicted LP ({size['variables']:,} variables, {size['rows']:,} rows) "
                                f"exceeds the restricted Gurobi licence ({GUROBI_RESTRICTED_LIMIT:,} of each); "
                                "use --solver highs")
            if secs > SLOW_SECONDS:
                warnings.append(f"layer {k}: predicted LP has {size['nonzeros']:,} nonzeros (roughly {secs:,.0f} s); "
                                "repair fewer points or choose a later layer")
        report["layers"] = layers
    report["warnings"] = warnings
    return report


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v)


def format_analysis(report: dict[str, Any]) -> str:
    """A readable text rendering of :func:`analyze`'s report, for the CLI."""
    size, div, conc = report["size"], report["diversity"], report["concentration"]
    lines = [
        "Repair set",
        f"  points            {_fmt(size['points'])}",
        f"  input dimension   {_fmt(size['input_dim'])}",
        f"  classes           {_fmt(div['classes'])}",
        f"  balance           {_fmt(div['balance'])}  (1 = balanced)",
        f"  spread (input)    {_fmt(div['spread_input'])}",
    ]
    if div.get("spread_feature") is not None:
        lines.append("  spread (layers)   " + ", ".join(f"{k}: {_fmt(s)}" for k, s in enumerate(div["spread_feature"])))
    lines += [
        f"  affine dimension  {_fmt(conc['affine_dimension'])}",
        f"  points to span    {_fmt(conc['points_to_span'])}",
    ]
    if report.get("layers"):
        header = ("layer", "variables", "rows", "nonzeros", "est. s", "gurobi (restricted)")
        body = [(str(r["layer"]), _fmt(r["variables"]), _fmt(r["rows"]), _fmt(r["nonzeros"]),
                 f"{r['seconds']:.2g}", "ok" if r["gurobi_restricted_ok"] else "too big") for r in report["layers"]]
        widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
        lines += ["", "Predicted first-round LP per affine layer (time: order of magnitude only)",
                  "  " + "  ".join(h.rjust(w) for h, w in zip(header, widths))]
        lines += ["  " + "  ".join(c.rjust(w) for c, w in zip(b, widths)) for b in body]
    if report.get("warnings"):
        lines += ["", "Warnings"] + [f"  - {w}" for w in report["warnings"]]
    return "\n".join(lines)
