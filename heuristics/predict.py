"""Drawdown prediction per candidate layer: a probe repair on a few of the points, scored on
reference inputs (never the user's test set).

What the repair costs elsewhere depends on where it is made, and no statistic of the repair set's
representations predicts it well (benchmarks/layer_selection.py: the paper's scorers, calibrated,
miss by about as much as the spread between layers). The probe measures it instead: at each
candidate, repair a subset of the points (``probe_indices``; a handful, so each LP is a small fraction
of the real one) and count how much accuracy the probed network loses on reference inputs the network
classifies (``reference_inputs``: validation images of a shipped dataset that fits the model, or inputs
the caller gives). The repair of all N points moves the weights further than the probe's m points
did; the probe's loss is scaled by ``(N / m) ** PROBE_EXPONENT`` to predict it.

The repair itself is a function argument (``heuristics`` imports nothing from ``provrepair.repair``):
``probe_fn(layer, rows, indices, time_limit)`` returns the repaired network, or None where the probe
found none (infeasible, over its time limit).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from provrepair.models import affine_layers
from provrepair.models.inference import accuracy

__all__ = ["PROBE_EXPONENT", "TIE_PP", "linear_drawdowns", "order_by_prediction", "predict_drawdowns", "probe_indices",
           "probe_time_limit", "reference_inputs"]

#: A probe repairs this share of the points (at least ``PROBE_MIN_POINTS``, at most all of them).
PROBE_SHARE = 0.2
PROBE_MIN_POINTS = 2
#: A probe may take this share of its candidate's predicted repair time (at least ``PROBE_MIN_SECONDS``);
#: one that runs out predicts nothing and its candidate goes last.
PROBE_TIME_SHARE = 0.4
PROBE_MIN_SECONDS = 4.0
#: Predicted drawdown = probe drawdown * (N / m) ** PROBE_EXPONENT (fitted by benchmarks/layer_selection.py).
PROBE_EXPONENT = 1.0
#: Candidates predicted within this many pp of the best are tried fastest first.
TIE_PP = 0.4
#: Reference inputs: at most this many, and a shipped dataset counts only where the network
#: classifies at least this share of them right (it is then the data the network was made for).
REFERENCE_POINTS = 2000
#: Which dataset is the network's is decided on this many of its images.
REFERENCE_CHECK = 300
MIN_REFERENCE_ACCURACY = 0.8

ProbeFn = Callable[[int, Any, np.ndarray, float], Any]


def probe_indices(labels: np.ndarray | None, n_points: int, share: float = PROBE_SHARE,
                  minimum: int = PROBE_MIN_POINTS) -> np.ndarray:
    """Which points a probe repairs: ``max(minimum, ceil(share * N))`` of them (all when fewer),
    taken round-robin over the labels (in order of first appearance) so that every class the repair
    set asks for is in the probe; deterministic."""
    m = min(n_points, max(minimum, int(math.ceil(share * n_points))))
    if labels is None:
        return np.arange(m)
    labels = np.asarray(labels).reshape(-1)
    groups = [np.flatnonzero(labels == c) for c in dict.fromkeys(labels.tolist())]
    order = [int(g[i]) for i in range(max(len(g) for g in groups)) for g in groups if i < len(g)]
    return np.array(sorted(order[:m]))


def probe_time_limit(predicted_seconds: float) -> float:
    """Seconds a probe may take at a candidate whose full repair is predicted ``predicted_seconds``."""
    return max(PROBE_MIN_SECONDS, PROBE_TIME_SHARE * float(predicted_seconds))


def reference_inputs(net: nn.Module, input_shape: tuple | None, n: int = REFERENCE_POINTS
                     ) -> tuple[np.ndarray, np.ndarray, str] | None:
    """Up to ``n`` validation images (held out of the training split, never the test set) of the
    shipped dataset that fits the model's input and that the network classifies best, if it gets
    at least ``MIN_REFERENCE_ACCURACY`` of them right; else None."""
    from provrepair.data import load_dataset
    from provrepair.data.datasets import DATASETS, dataset_info
    from provrepair.errors import ProvRepairError

    if input_shape is None:
        return None
    best = None
    for name in DATASETS:
        info = dataset_info(name)
        if not info["available"] or int(np.prod(info["shape"])) != int(np.prod(input_shape)):
            continue  # not loaded: loading digits imports scikit-learn (5 s)
        try:
            x, y = load_dataset(name, "val")
        except ProvRepairError:  # a dataset that is not installed is no reference
            continue
        if int(np.prod(x.shape[1:])) != int(np.prod(input_shape)):
            continue
        x, y = x[:n].reshape((-1, *input_shape)), y[:n]
        acc = accuracy(net, x[:REFERENCE_CHECK], y[:REFERENCE_CHECK])
        if acc >= MIN_REFERENCE_ACCURACY and (best is None or acc > best[3]):
            best = (x, y, f"{name}:val: {len(y)} images", acc)
    return None if best is None else best[:3]


def predict_drawdowns(probe_fn: ProbeFn, net: nn.Module, plan: list[dict], labels: np.ndarray | None,
                      n_points: int, reference: tuple[np.ndarray, np.ndarray]) -> list[dict]:
    """Per candidate of ``plan`` (``select.candidate_plan``): the probe's status, seconds and measured
    drawdown on ``reference`` (pp), and the drawdown predicted for the repair of all points."""
    idx = probe_indices(labels, n_points)
    scale = (n_points / len(idx)) ** PROBE_EXPONENT
    rx, ry = reference
    before = accuracy(net, rx, ry)
    out = []
    for c in plan:
        t0 = time.perf_counter()
        model = probe_fn(c["layer"], c.get("rows"), idx, probe_time_limit(c["seconds"]))
        entry = {"layer": c["layer"], "rows": c.get("rows"), "predicted_seconds": c["seconds"],
                 "probe_points": len(idx), "probe_drawdown_pp": None, "predicted_drawdown_pp": None}
        if model is not None:
            entry["probe_drawdown_pp"] = 100.0 * (before - accuracy(model, rx, ry))
            entry["predicted_drawdown_pp"] = entry["probe_drawdown_pp"] * scale
        entry["probe_seconds"] = time.perf_counter() - t0
        out.append(entry)
    return out


def order_by_prediction(predictions: list[dict], tie_pp: float = TIE_PP) -> list[int]:
    """Layers, best first: those predicted within ``tie_pp`` of the smallest drawdown, fastest first;
    then the other predicted ones by drawdown; then those the probe could not repair, fastest first."""
    known = [p for p in predictions if p["predicted_drawdown_pp"] is not None]
    unknown = sorted((p for p in predictions if p["predicted_drawdown_pp"] is None),
                     key=lambda p: (p["predicted_seconds"], -p["layer"]))
    if not known:
        return [p["layer"] for p in unknown]
    best = min(p["predicted_drawdown_pp"] for p in known)
    near = sorted((p for p in known if p["predicted_drawdown_pp"] <= best + tie_pp),
                  key=lambda p: (p["predicted_seconds"], -p["layer"]))
    far = sorted((p for p in known if p["predicted_drawdown_pp"] > best + tie_pp),
                 key=lambda p: (p["predicted_drawdown_pp"], p["predicted_seconds"]))
    return [p["layer"] for p in near + far + unknown]


# --------------------------------------------------------------------------------------------
# the linear predictor: no LP, a least-change repair of the network linearised at the points

#: Rows whose linearised slack is below this enter the least-squares system (the LP's margin).
LINEAR_MARGIN = 1e-3
#: Active-set rounds: rows the previous solution leaves violated enter the next one.
LINEAR_ROUNDS = 4
#: Predicted drawdown = LINEAR_SCALE * the drawdown of the linearised repair on the reference inputs.
LINEAR_SCALE = 1.0
#: Which change is scored: ``l2`` (the least-squares one) or ``linf`` (its signs, all of one size,
#: scaled until the violated rows hold: the shape of the LP's L-inf-led optimum, where most changed
#: parameters sit at the bound).
LINEAR_NORM = "linf"


def _lost(net: nn.Module, k: int, dw: np.ndarray, db: np.ndarray, shape: tuple, ref: dict, before: float) -> float:
    """Accuracy lost on the reference inputs (pp) when affine layer ``k`` changes by ``-dw``, ``-db``:
    only the modules from layer ``k`` on run, on their stored inputs ``ref["inputs"][k]``."""
    mi = affine_layers(net)[k]
    tail = copy.deepcopy(net[mi:]).eval()
    with torch.no_grad():
        tail[0].weight -= torch.as_tensor(dw.reshape(shape), dtype=tail[0].weight.dtype)
        tail[0].bias -= torch.as_tensor(db, dtype=tail[0].bias.dtype)
        pred = tail(ref["inputs"][k]).argmax(1).numpy()
    return 100.0 * (before - float(np.mean(pred == ref["labels"])))


def _layer_inputs(net: nn.Module, x: np.ndarray, layers: list[int]) -> dict[int, Any]:
    """The input of each affine layer in ``layers`` for the inputs ``x`` (one forward pass)."""
    want = {affine_layers(net)[k]: k for k in layers}
    out, h = {}, torch.as_tensor(np.asarray(x), dtype=torch.float32)
    with torch.no_grad():
        for i, m in enumerate(net):
            if i in want:
                out[want[i]] = h
            h = m(h)
    return out


def _spread(Gw: np.ndarray, Gb: np.ndarray, lam: np.ndarray, dw: np.ndarray, db: np.ndarray, cols: np.ndarray,
            rows: np.ndarray, slack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The least-squares change's signs, every entry of one size ``s``: the smallest ``s`` that lifts
    every row the least-squares change lifts (rows the signs cannot lift are left out)."""
    sw, sb = np.sign(dw[cols]).astype(np.float32), np.sign(db[rows]).astype(np.float32)
    # a change -dw moves the slacks by -Gw @ dw (G = d slack / d theta): the gain per unit of s
    gain = -(Gw @ sw + Gb @ sb).astype(np.float64)
    need = LINEAR_MARGIN - slack
    lift = (lam != 0) & (need > 0) & (gain > 0)
    size = float(need[lift] @ gain[lift] / (gain[lift] @ gain[lift])) if lift.any() else 0.0
    out_w, out_b = np.zeros_like(dw), np.zeros_like(db)
    out_w[cols], out_b[rows] = size * sw, size * sb
    return out_w, out_b


def _point_jacobians(net: nn.Module, inputs: np.ndarray, params: list) -> tuple[np.ndarray, list[np.ndarray]]:
    """Outputs ``(N, C)`` (float64) and, per parameter tensor, d output / d parameter ``(N, C, numel)``
    (float32)."""
    x = torch.tensor(np.asarray(inputs), dtype=torch.float32)
    outs, jacs = [], [[] for _ in params]
    with torch.enable_grad():
        for p_i in range(x.shape[0]):
            y = net(x[p_i:p_i + 1]).reshape(-1)
            outs.append(y.detach().double().numpy())
            rows: list[list[np.ndarray]] = [[] for _ in params]
            for c in range(y.shape[0]):
                grads = torch.autograd.grad(y[c], params, retain_graph=c + 1 < y.shape[0], allow_unused=True)
                for j, g in enumerate(grads):
                    rows[j].append(np.zeros(params[j].numel(), np.float32) if g is None else
                                   g.reshape(-1).float().numpy())
            for j in range(len(params)):
                jacs[j].append(np.stack(rows[j]))
    return np.stack(outs), [np.stack(j) for j in jacs]


def _least_change(K: np.ndarray, slack: np.ndarray) -> np.ndarray:
    """Multipliers of the smallest (L2) parameter change ``G.T @ lam`` that lifts every linearised
    slack to ``LINEAR_MARGIN`` (``K = G @ G.T``), by an active set: rows below the margin enter, the
    system is solved, repeat. Returns ``lam`` (zero outside the active rows)."""
    lam = np.zeros(len(slack))
    active = np.zeros(len(slack), dtype=bool)
    for _ in range(LINEAR_ROUNDS):
        new = (slack - K @ lam < LINEAR_MARGIN) & ~active
        if not new.any():
            break
        active |= new
        Ka = K[np.ix_(active, active)].copy()
        Ka[np.diag_indices_from(Ka)] += 1e-9 * max(float(np.trace(Ka)) / len(Ka), 1e-12)
        lam = np.zeros(len(slack))
        lam[active] = np.linalg.solve(Ka, slack[active] - LINEAR_MARGIN)
    return lam


def _row_gradients(A: np.ndarray, point: np.ndarray, jac: np.ndarray) -> np.ndarray:
    """d slack_r / d theta for every spec row: ``-A_r @ J_point(r)`` (float32, ``(R, P)``)."""
    G = np.empty((len(point), jac.shape[2]), dtype=np.float32)
    for p in np.unique(point):
        r = point == p
        G[r] = A[r].astype(np.float32) @ jac[p]
    return -G


def linear_drawdowns(net: nn.Module, spec, plan: list[dict], reference: tuple[np.ndarray, np.ndarray],
                     rows_of: Callable[[int, int], Any]) -> list[dict]:
    """Per candidate of ``plan``: the drawdown on ``reference`` (pp) of the least-change repair of
    the network linearised at the repair points (weights and bias of the layer, or of its rows
    ``rows_of(layer, count)``), times ``LINEAR_SCALE``. Seconds, not minutes: no LP is solved."""
    work = copy.deepcopy(net).eval()
    mods = [work[i] for i in affine_layers(work)]
    layers = sorted({c["layer"] for c in plan})
    params = [t for k in layers for t in (mods[k].weight, mods[k].bias)]
    for t in params:
        t.requires_grad_(True)
    t0 = time.perf_counter()
    y, jac = _point_jacobians(work, spec.inputs, params)
    A, b, point = spec.output_constraints(y.shape[1])
    slack = b - np.einsum("rc,rc->r", A, y[point])
    before = accuracy(net, *reference)
    ref = {"inputs": _layer_inputs(net, reference[0], layers), "labels": np.asarray(reference[1]).reshape(-1)}
    shared = (time.perf_counter() - t0) / len(plan)
    out = []
    for c in plan:
        t1 = time.perf_counter()
        k = c["layer"]
        jw, jb = jac[2 * layers.index(k)], jac[2 * layers.index(k) + 1]
        shape = tuple(mods[k].weight.shape)
        rows = np.arange(shape[0]) if c.get("rows") is None else np.asarray(rows_of(k, c["rows"]))
        cols = (np.arange(int(np.prod(shape))).reshape(shape[0], -1)[rows]).reshape(-1)
        Gw = _row_gradients(A, point, jw if c.get("rows") is None else jw[:, :, cols])
        Gb = _row_gradients(A, point, jb[:, :, rows])
        lam = _least_change((Gw @ Gw.T).astype(np.float64) + (Gb @ Gb.T).astype(np.float64), slack)
        dw, db = np.zeros(int(np.prod(shape))), np.zeros(shape[0])
        lam32 = lam.astype(np.float32)
        dw[cols], db[rows] = Gw.T @ lam32, Gb.T @ lam32
        lost = {"l2": _lost(net, k, dw, db, shape, ref, before)}
        dw, db = _spread(Gw, Gb, lam, dw, db, cols, rows, slack)
        lost["linf"] = _lost(net, k, dw, db, shape, ref, before)
        out.append({"layer": k, "rows": c.get("rows"), "predicted_seconds": c["seconds"],
                    "linear_drawdown_pp": lost[LINEAR_NORM], "predicted_drawdown_pp": LINEAR_SCALE * lost[LINEAR_NORM],
                    "l2_drawdown_pp": lost["l2"], "linf_drawdown_pp": lost["linf"],
                    "delta_l2": float(np.sqrt(np.sum(dw ** 2) + np.sum(db ** 2))),
                    "delta_linf": float(max(np.abs(dw).max(), np.abs(db).max())),
                    "seconds": time.perf_counter() - t1 + shared})
    return out
