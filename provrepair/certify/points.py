"""Independent certification of a point repair set.

The check re-evaluates the network itself and never looks at what a repairer claims (this module
imports nothing from :mod:`provrepair.repair`):

1. a float64 copy of the network is run on every point; for every constraint row of the spec
   (``A y <= b``, see :meth:`provrepair.specs.PointSpec.output_constraints`) the slack
   ``b - A y`` is computed, and a point passes when its smallest slack is ``> margin``;
2. a float32 copy (the model as a user runs it) is run on the float32-rounded inputs and every
   slack must be ``> 0``; for labelled points the float32 argmax must also equal the label. The
   float32 pass runs twice, in batches and one point at a time, and both must pass: float32
   reductions are ordered differently for different batch sizes (BLAS kernels pick their blocking by
   shape), so a point certified with a margin below the rounding error can hold in a batch of 512
   and fail alone, which is how a user classifies one input.

The network is certified on the set when both hold for every point.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InputError, SpecError
from ..specs.points import PointSpec

__all__ = ["DEFAULT_BATCH_SIZE", "PointCertificate", "certify_points"]

#: Points evaluated per forward pass.
DEFAULT_BATCH_SIZE = 512


def _plain_float(v: float) -> float | None:
    """A JSON-safe float: NaN becomes None, infinities stay (json writes them as Infinity)."""
    v = float(v)
    return None if math.isnan(v) else v


@dataclass
class PointCertificate:
    """Outcome of :func:`certify_points`.

    ``certified``: every point passes in float64 (slack > ``margin``) and in float32 (slack > 0,
    argmax = label) both in batches and alone. ``margins``: per point, the smallest float64 slack
    ``b - A y`` over its rows (``+inf`` for a point without rows, NaN when the network produced NaN).
    ``min_margin``: the smallest of them. ``failed``: points failing the float64 check;
    ``float32_failed``: points failing the float32 check; ``float32_margins``: per point, the
    smaller float32 slack of the batched and the one-at-a-time pass.
    """

    certified: bool
    n_points: int
    n_passed: int
    min_margin: float
    margins: np.ndarray
    failed: np.ndarray
    float32_agrees: bool
    float32_failed: np.ndarray
    margin: float = 0.0
    float32_margins: np.ndarray = field(default_factory=lambda: np.zeros(0))
    n_constraints: int = 0
    method: str = "exact-points"

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python view for JSON reports (lists of ints/floats; NaN as None)."""
        return {
            "method": self.method,
            "certified": bool(self.certified),
            "n_points": int(self.n_points),
            "n_passed": int(self.n_passed),
            "n_constraints": int(self.n_constraints),
            "required_margin": float(self.margin),
            "min_margin": _plain_float(self.min_margin),
            "margins": [_plain_float(v) for v in self.margins],
            "failed": [int(i) for i in self.failed],
            "float32_agrees": bool(self.float32_agrees),
            "float32_failed": [int(i) for i in self.float32_failed],
            "float32_min_margin": _plain_float(self.float32_margins.min()) if self.float32_margins.size else None,
        }

    def summary(self) -> str:
        verdict = "CERTIFIED" if self.certified else "NOT certified"
        text = (
            f"{verdict}: {self.n_passed}/{self.n_points} points hold in float64 with margin > {self.margin:g} "
            f"(smallest slack {self.min_margin:.3g})"
        )
        if not self.float32_agrees:
            text += f"; float32 model fails on {len(self.float32_failed)} point(s)"
        return text


def forward_outputs(net: nn.Module, x: np.ndarray, dtype: torch.dtype, batch_size: int) -> np.ndarray:
    outs = []
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            xb = torch.tensor(x[start : start + batch_size], dtype=dtype)  # a copy: spec arrays are read-only
            try:
                yb = net(xb)
            except RuntimeError as exc:
                raise SpecError(
                    f"the network cannot evaluate repair-set inputs of shape {tuple(x.shape[1:])} ({exc}); "
                    "check that the repair set was made for this model's input layout"
                ) from None
            outs.append(yb.detach().reshape(yb.shape[0], -1).to(torch.float64).cpu().numpy())
    return np.concatenate(outs, axis=0)


def network_copy(net: nn.Module, dtype: torch.dtype) -> nn.Module:
    twin = copy.deepcopy(net)
    twin = twin.to(dtype)
    twin.eval()
    return twin


def _model_input_shape(net: nn.Module) -> tuple[int, ...] | None:
    meta = getattr(net, "provrepair_meta", None)
    shape = getattr(meta, "input_shape", None)
    return None if shape is None else tuple(int(s) for s in shape)


def _row_slack(A: np.ndarray, b: np.ndarray, rows_point: np.ndarray, y: np.ndarray) -> np.ndarray:
    slack: np.ndarray = b - np.einsum("rj,rj->r", A, y[rows_point])  # numpy types einsum's result as Any
    return slack


def _point_min(values: np.ndarray, rows_point: np.ndarray, n: int) -> np.ndarray:
    out = np.full(n, np.inf)
    with np.errstate(invalid="ignore"):
        np.minimum.at(out, rows_point, values)  # propagates NaN
    return out


def _float32_check(y32: np.ndarray, spec: PointSpec, A: np.ndarray, b: np.ndarray, rows_point: np.ndarray,
                   n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per point: the smallest float32 slack and whether the point passes (slack > 0, argmax = label,
    finite outputs)."""
    # float32 outputs are exactly representable in float64; A is usually +-1 so the slack is exact
    margins32 = _point_min(_row_slack(A, b, rows_point, y32), rows_point, n)
    ok32 = margins32 > 0.0
    if spec.labels is not None:
        labelled = spec.labels >= 0
        argmax_ok = np.argmax(y32, axis=1) == spec.labels
        ok32 &= np.where(labelled, argmax_ok, True)
    ok32 &= np.isfinite(y32).all(axis=1)
    return margins32, ok32


def certify_points(
    net: nn.Module,
    spec: PointSpec,
    *,
    margin: float = 0.0,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> PointCertificate:
    """Check every point of ``spec`` on ``net`` exactly (float64, then float32 as deployed).

    ``net`` is not modified (copies are evaluated in eval mode). Inputs are reshaped to
    ``net.provrepair_meta.input_shape`` when that is known. A point passes when every one of its
    rows has float64 slack ``b - A y > margin``; the float32 model must also satisfy every row
    (slack > 0) and, for labelled points, predict the label, in batches of ``batch_size`` and one
    point at a time (float32 results depend on the batch size).
    """
    if not isinstance(spec, PointSpec):
        raise InputError(f"certify_points needs a PointSpec, got {type(spec).__name__}; build one with PointSpec.load")
    margin = float(margin)
    if not math.isfinite(margin) or margin < 0:
        raise InputError(f"the certification margin must be a finite number >= 0, got {margin}")
    if int(batch_size) < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    batch_size = int(batch_size)

    input_shape = _model_input_shape(net)
    # finiteness / emptiness / size first, so no forward pass sees bad inputs
    spec = spec.validate(input_shape, None)
    n = spec.n_points

    x64 = spec.inputs
    y64 = forward_outputs(network_copy(net, torch.float64), x64, torch.float64, batch_size)
    n_outputs = y64.shape[1]
    spec = spec.validate(input_shape, n_outputs)
    A, b, rows_point = spec.output_constraints(n_outputs)

    slack64 = _row_slack(A, b, rows_point, y64)
    margins = _point_min(slack64, rows_point, n)
    passed = margins > margin  # NaN -> False
    failed = np.flatnonzero(~passed)

    x32 = x64.astype(np.float32)
    net32 = network_copy(net, torch.float32)
    margins32 = np.full(n, np.inf)
    ok32 = np.ones(n, dtype=bool)
    for size in sorted({batch_size, 1}, reverse=True):  # in batches, then each point alone
        y32 = forward_outputs(net32, x32, torch.float32, size)
        m32, o32 = _float32_check(y32, spec, A, b, rows_point, n)
        margins32 = np.minimum(margins32, m32)  # propagates NaN
        ok32 &= o32
    float32_failed = np.flatnonzero(~ok32)

    finite_margins = margins[~np.isnan(margins)]
    if np.isnan(margins).any():
        min_margin = float("nan")
    else:
        min_margin = float(finite_margins.min()) if finite_margins.size else float("inf")

    return PointCertificate(
        certified=bool(failed.size == 0 and float32_failed.size == 0),
        n_points=n,
        n_passed=int(passed.sum()),
        min_margin=min_margin,
        margins=margins,
        failed=failed.astype(np.int64),
        float32_agrees=bool(float32_failed.size == 0),
        float32_failed=float32_failed.astype(np.int64),
        margin=margin,
        float32_margins=margins32,
        n_constraints=int(A.shape[0]),
    )
