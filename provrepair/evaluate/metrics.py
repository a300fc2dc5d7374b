"""Repair metrics: efficacy, drawdown, generalization, locality, robustness.

``logits``, ``predictions`` and ``accuracy`` (the network as a user runs it) live in
:mod:`provrepair.models.inference` and are re-exported here.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..models.inference import DEFAULT_EVAL_BATCH, accuracy, logits, predictions

__all__ = ["predictions", "accuracy", "logits", "DEFAULT_EVAL_BATCH"]

# --------------------------------------------------------------------------------------------------
# Repair metrics. Each takes predictions/labels (numpy) or networks and returns plain floats/dicts,
# so a report can be written from them as they are. Fractions are in [0, 1]; "pp" values are
# percentage points.

#: DL2's constraint-accuracy tolerance: a class group's probability must be <= delta or >= 1 - delta.
DEFAULT_GROUP_DELTA = 0.05

__all__ += ["efficacy", "certified_efficacy", "drawdown", "generalization", "prediction_change",
            "parameter_change", "robustness_accuracy", "constraint_accuracy", "confusion_accuracy",
            "softmax", "DEFAULT_GROUP_DELTA"]


def _labels(y: Any) -> np.ndarray:
    return (y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)).reshape(-1).astype(np.int64)


def _paired(pred: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p, y = _labels(pred), _labels(labels)
    if p.shape != y.shape:
        raise InputError(f"got {p.shape[0]} predictions for {y.shape[0]} labels; give one label per prediction")
    return p, y


def efficacy(pred: Any, labels: Any) -> float:
    """Share of the repair set the repaired network classifies right (``pred == labels``); 0 points -> nan."""
    p, y = _paired(pred, labels)
    return float(np.mean(p == y)) if p.size else float("nan")


def certified_efficacy(certificate) -> float:
    """Share of the repair points that the independent point check certifies: the point passes in
    float64 with the certificate's margin *and* its float32 prediction is right."""
    n = int(certificate.n_points)
    if n == 0:
        return float("nan")
    bad = set(int(i) for i in certificate.failed) | set(int(i) for i in certificate.float32_failed)
    return (n - len(bad)) / n


def drawdown(accuracy_before: float, accuracy_after: float) -> float:
    """Clean test accuracy lost by the repair, in percentage points (negative: the repair helped)."""
    return 100.0 * (float(accuracy_before) - float(accuracy_after))


def generalization(pred: Any, labels: Any) -> float:
    """Accuracy on held-out failures of the same kind as the repair set (inputs the original network
    misclassifies and the repair never saw); the original network scores 0 by construction."""
    return efficacy(pred, labels)


def prediction_change(pred_before: Any, pred_after: Any) -> float:
    """Locality: share of (clean test) inputs whose predicted class the repair changed."""
    a, b = _paired(pred_before, pred_after)
    return float(np.mean(a != b)) if a.size else float("nan")


def _named_params(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().double().cpu() for k, v in net.state_dict().items() if v.is_floating_point()}


def parameter_change(before: nn.Module, after: nn.Module, *, tol: float = 0.0) -> dict[str, Any]:
    """Locality in parameter space: L0 (entries changed by more than ``tol``), L∞, L2 and L1 of the
    change over the parameters both networks share by name and shape, the changed tensors
    ("layers touched") and the parameters ``after`` adds (e.g. DeepPatch's replacement filters, counted
    as ``added``, not as changes)."""
    a, b = _named_params(before), _named_params(after)
    l0, linf, l2sq, l1, count = 0, 0.0, 0.0, 0.0, 0
    touched = []
    for name, t in a.items():
        u = b.get(name)
        if u is None or u.shape != t.shape:
            continue
        d = (u - t).abs()
        count += d.numel()
        changed = int((d > tol).sum())
        if changed:
            touched.append(name)
        l0 += changed
        linf = max(linf, float(d.max()) if d.numel() else 0.0)
        l2sq += float((d * d).sum())
        l1 += float(d.sum())
    added = sum(int(t.numel()) for k, t in b.items() if k not in a or a[k].shape != t.shape)
    return {"l0": l0, "linf": linf, "l2": math.sqrt(l2sq), "l1": l1, "count": count,
            "l0_fraction": l0 / count if count else 0.0, "touched": touched, "added": added}


def robustness_accuracy(net: nn.Module, sets: dict, labels: Any, *, batch_size: int = DEFAULT_EVAL_BATCH) -> dict:
    """Accuracy on each corrupted set: ``sets`` maps a name (e.g. ``"fog/3"``) to inputs that share
    ``labels``; returns ``{name: accuracy}`` in the order given."""
    return {name: accuracy(net, x, labels, batch_size=batch_size) for name, x in sets.items()}


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable)."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def constraint_accuracy(probs: Any, groups, *, delta: float = DEFAULT_GROUP_DELTA) -> float:
    """DL2's class-group constraint: a sample satisfies it when every group's probability mass is
    either at most ``delta`` or at least ``1 - delta`` (the network commits to one group); returns
    the share of samples that satisfy it. ``probs``: (N, classes) probabilities (use :func:`softmax`
    on logits); ``groups``: lists of class indices."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise InputError(f"probabilities must be (N, classes) with N > 0, got shape {p.shape}")
    if not 0 <= delta < 0.5:
        raise InputError(f"delta must lie in [0, 0.5), got {delta}")
    ok = np.ones(p.shape[0], dtype=bool)
    for g in groups:
        idx = np.asarray(list(g), dtype=np.int64)
        if idx.size == 0 or idx.min() < 0 or idx.max() >= p.shape[1]:
            raise InputError(f"class group {list(g)} is empty or names a class outside 0..{p.shape[1] - 1}")
        mass = p[:, idx].sum(axis=1)
        ok &= (mass <= delta) | (mass >= 1.0 - delta)
    return float(ok.mean())


def confusion_accuracy(pred: Any, labels: Any, *, classes: int | None = None) -> dict:
    """AIREPAIR's confusion accuracy: for each ordered class pair (i, j), the precision of "i" among
    the samples labelled i or j, ``TP / (TP + FP)`` with TP = labelled i and predicted i, FP =
    labelled j and predicted i. Pairs where nothing of either class is predicted i are left out.
    Returns ``{"pairs": {"i,j": precision}, "mean": ..., "min": ..., "worst": "i,j"}``."""
    p, y = _paired(pred, labels)
    k = int(classes if classes is not None else max(int(p.max(initial=0)), int(y.max(initial=0))) + 1)
    m = np.zeros((k, k), dtype=np.int64)  # m[label, prediction]
    np.add.at(m, (y, p), 1)
    pairs = {}
    for i in range(k):
        for j in range(k):
            if i == j:
                continue
            tp, fp = m[i, i], m[j, i]
            if tp + fp:
                pairs[f"{i},{j}"] = float(tp / (tp + fp))
    if not pairs:
        return {"pairs": {}, "mean": float("nan"), "min": float("nan"), "worst": None}
    worst = min(pairs, key=pairs.get)
    return {"pairs": pairs, "mean": float(np.mean(list(pairs.values()))), "min": pairs[worst], "worst": worst}
