"""Point repair sets: input points, each with the output it must produce.

A :class:`PointSpec` holds ``N`` input points and, for every point, what the network's output ``y``
must satisfy there. Two kinds of requirement exist and may be mixed:

* a **label** ``c``: the network must classify the point as ``c``, i.e. ``y_c > y_j`` for every
  ``j != c``. Internally this is the ``n_outputs - 1`` rows ``y_j - y_c <= 0``;
* explicit **linear output constraints** ``A y <= b`` (``A`` has one column per network output).

Either way every requirement is a row of ``A y <= b`` that must hold *strictly*: a repairer adds a
margin ``eps`` (``A y <= b - eps``) and the certifier requires a positive slack ``b - A y``.
:meth:`PointSpec.output_constraints` gives the unified row view ``(A, b, point_index)``.

File formats accepted by :meth:`PointSpec.load`
-----------------------------------------------

``.npz`` (``numpy.savez``)
    Inputs under the key ``inputs`` (or ``points``, or ``x``), shape ``(N, ...)``.
    Labels under ``labels`` (or ``y``), shape ``(N,)``, integers; and/or explicit constraints
    ``A`` with shape ``(N, m, n_outputs)`` and ``b`` with shape ``(N, m)`` (or one shared ``A``
    ``(m, n_outputs)`` and ``b`` ``(m,)`` for every point). Further 1-D integer arrays of length
    ``N`` (e.g. ``group``) can select points with ``where={"group": 0}``.

``.npy``
    Inputs only, shape ``(N, ...)``. The labels must be passed with ``labels=`` (an integer array,
    or the path of a ``.npy`` or whitespace-separated ``.txt`` file of integers).

``.json``
    ::

        {
          "points": [
            {"input": [0.0, 0.5, ...], "label": 3},
            {"input": [[0.1, 0.2], [0.3, 0.4]],
             "constraints": {"A": [[1, -1, 0], [0, -1, 1]], "b": [0, -0.5]}},
            {"input": [...], "label": 7, "group": 1}
          ]
        }

    ``input`` is a (possibly nested) list of numbers; all points must have the same shape.
    Each point has a ``label`` (integer), or ``constraints`` (``A``: a list of rows, each with one
    entry per network output; ``b``: one number per row), or both. The number of constraint rows
    may differ between points. Any other integer field (``group`` above) can be used with
    ``where=``. A bare list of such point objects is accepted too.

Loading options: ``labels=`` overrides the labels stored in the file; ``where={"key": value}``
keeps the points whose integer field ``key`` equals ``value`` (a list of values keeps any of them;
several keys must all match); ``limit=N`` then keeps the first ``N`` of those.

Specs are immutable: their arrays are read-only, and :meth:`subset` / :meth:`with_shape` return
new specs.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeAlias

import numpy as np

from ..errors import InputError, SpecError
from .common import NO_LABEL, NPZ_ERRORS, read_json_document, readonly

__all__ = ["PointSpec", "validate_point_spec", "INPUT_KEYS", "LABEL_KEYS"]

#: Keys looked up (in this order) for the inputs of an ``.npz`` repair set.
INPUT_KEYS = ("inputs", "points", "x")
#: Keys looked up (in this order) for the labels of an ``.npz`` repair set.
LABEL_KEYS = ("labels", "y")

#: ``(A, b, point of each row)`` of a spec's explicit constraint rows.
_Rows: TypeAlias = tuple[np.ndarray, np.ndarray, np.ndarray]
#: What a file reader returns: inputs, labels or None, constraint rows or None, the other fields.
_Read: TypeAlias = tuple[np.ndarray, np.ndarray | None, _Rows | None, dict[str, Any]]

def _as_float_array(value: Any, what: str) -> np.ndarray:
    try:
        arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise SpecError(
            f"{what} must be numbers in a rectangular array ({exc}); "
            "check that every point has the same shape and holds only numbers"
        ) from None
    return arr


def _as_int_array(value: Any, what: str) -> np.ndarray:
    """Integers from ints, bools or integral floats; anything else is a SpecError."""
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:  # pragma: no cover - ragged python lists
        raise SpecError(f"{what} must be an array of integers ({exc})") from None
    if arr.dtype.kind in "iub":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f":
        finite = np.isfinite(arr)
        if not finite.all():
            i = int(np.flatnonzero(~finite.ravel())[0])
            raise SpecError(f"{what} contain a non-finite value at index {i}; give integer class indices")
        if not np.all(arr == np.round(arr)):
            i = int(np.flatnonzero((arr != np.round(arr)).ravel())[0])
            raise SpecError(
                f"{what} must be integers, but index {i} is {arr.ravel()[i]!r}; "
                "give integer class indices (not probabilities or one-hot vectors)"
            )
        return arr.astype(np.int64)
    raise SpecError(f"{what} must be integers, got an array of dtype {arr.dtype}; give integer class indices")


def _label_rows(labels: np.ndarray, points: np.ndarray, n_outputs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows ``y_j - y_c <= 0`` (j != c) for every labelled point, grouped by point."""
    n_lab = labels.shape[0]
    k = n_outputs - 1
    if n_lab == 0 or k <= 0:
        return np.zeros((0, n_outputs)), np.zeros(0), np.zeros(0, dtype=np.int64)
    cols = np.arange(k)[None, :]
    others = cols + (cols >= labels[:, None])  # (n_lab, k): every j != c, increasing
    A = np.zeros((n_lab * k, n_outputs))
    rows = np.arange(n_lab * k)
    A[rows, others.ravel()] = 1.0
    A[rows, np.repeat(labels, k)] = -1.0
    return A, np.zeros(n_lab * k), np.repeat(points, k)


@dataclass(frozen=True, eq=False)
class PointSpec:
    """A repair set of points (see the module docstring for the meaning and file formats).

    Attributes
    ----------
    inputs:
        float64, shape ``(N, *input_shape)``.
    labels:
        int64 ``(N,)`` or ``None``. In a mixed spec a point with explicit constraints only has
        label ``-1``.
    constraint_A, constraint_b, constraint_point:
        explicit constraint rows (``(R, n_outputs)``, ``(R,)``, ``(R,)``; the point of each row),
        grouped by point; ``None`` when the spec has labels only.

    Build one with :meth:`from_arrays` or :meth:`load` rather than the raw constructor.
    """

    inputs: np.ndarray
    labels: np.ndarray | None = None
    constraint_A: np.ndarray | None = None
    constraint_b: np.ndarray | None = None
    constraint_point: np.ndarray | None = None
    source: str | None = field(default=None)

    def __post_init__(self) -> None:
        x = _as_float_array(self.inputs, "repair-set inputs")
        if x.ndim < 2:
            raise SpecError(
                f"repair-set inputs must have shape (N, ...) with one row per point, got shape {x.shape}; "
                "for a single point add a leading axis (x[None])"
            )
        n = x.shape[0]
        object.__setattr__(self, "inputs", readonly(x))

        if self.labels is not None:
            labels = _as_int_array(self.labels, "labels")
            if labels.ndim != 1:
                raise SpecError(
                    f"labels must be a 1-D array of class indices, got shape {labels.shape}; "
                    "convert one-hot labels with argmax"
                )
            if labels.shape[0] != n:
                raise SpecError(f"got {labels.shape[0]} labels for {n} input points; give exactly one label per point")
            object.__setattr__(self, "labels", readonly(labels.copy()))

        parts = (self.constraint_A, self.constraint_b, self.constraint_point)
        if any(p is not None for p in parts):
            if any(p is None for p in parts):
                raise SpecError("explicit constraints need A, b and the point of each row together")
            A = _as_float_array(self.constraint_A, "constraint matrix A")
            b = _as_float_array(self.constraint_b, "constraint bounds b").reshape(-1)
            pi = _as_int_array(self.constraint_point, "constraint point indices").reshape(-1)
            if A.ndim != 2 or A.shape[0] != b.shape[0] or pi.shape[0] != b.shape[0]:
                raise SpecError(
                    f"constraint rows disagree in number: A {A.shape}, b {b.shape}, points {pi.shape}; "
                    "give one b entry per row of A"
                )
            if pi.size and (pi.min() < 0 or pi.max() >= n):
                raise SpecError(f"a constraint row refers to point {int(pi.max())} but there are {n} points")
            order = np.argsort(pi, kind="stable")
            object.__setattr__(self, "constraint_A", readonly(A[order]))
            object.__setattr__(self, "constraint_b", readonly(b[order]))
            object.__setattr__(self, "constraint_point", readonly(pi[order]))

        covered = np.zeros(n, dtype=bool)
        if self.labels is not None:
            if np.any(self.labels < NO_LABEL):
                i = int(np.flatnonzero(self.labels < NO_LABEL)[0])
                raise SpecError(f"label {int(self.labels[i])} at point {i} is negative; labels are class indices >= 0")
            covered |= self.labels >= 0
        if self.constraint_point is not None:
            covered[self.constraint_point] = True
        if n and not covered.all():
            i = int(np.flatnonzero(~covered)[0])
            raise SpecError(
                f"point {i} has neither a label nor output constraints; give every point a label or constraints"
            )

    # ------------------------------------------------------------------ basic views
    @property
    def n_points(self) -> int:
        return int(self.inputs.shape[0])

    def __len__(self) -> int:
        return self.n_points

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input point (without the batch axis)."""
        return tuple(int(s) for s in self.inputs.shape[1:])

    @property
    def has_labels(self) -> bool:
        """True when every point has a label (a pure classification spec)."""
        return self.labels is not None and bool(np.all(self.labels >= 0))

    def _constraint_rows(self) -> _Rows | None:
        """``(constraint_A, constraint_b, constraint_point)``, or None: ``__post_init__`` sets all three or none."""
        if self.constraint_A is None:
            return None
        assert self.constraint_b is not None and self.constraint_point is not None
        return self.constraint_A, self.constraint_b, self.constraint_point

    @property
    def n_outputs_hint(self) -> int | None:
        """Number of outputs implied by explicit constraints (``None`` for label-only specs)."""
        return None if self.constraint_A is None else int(self.constraint_A.shape[1])

    def __repr__(self) -> str:
        kinds = []
        if self.labels is not None:
            kinds.append("labels")
        if self.constraint_A is not None:
            kinds.append(f"{self.constraint_A.shape[0]} constraint rows")
        src = f", source={self.source!r}" if self.source else ""
        return f"PointSpec(n_points={self.n_points}, input_shape={self.input_shape}, {' + '.join(kinds)}{src})"

    # ------------------------------------------------------------------ unified constraint view
    def output_constraints(self, n_outputs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every requirement as rows of ``A y <= b`` (to hold strictly, with margin).

        Returns ``(A, b, point_index)``: ``A`` float64 ``(R, n_outputs)``, ``b`` float64 ``(R,)``,
        ``point_index`` int64 ``(R,)``. Rows are grouped by point in point order; a point's label
        rows (``y_j - y_c <= 0`` for ``j != c``, increasing ``j``) come before its explicit rows.
        The arrays are fresh copies.
        """
        n_outputs = int(n_outputs)
        if n_outputs < 1:
            raise SpecError(f"the model must have at least one output, got n_outputs={n_outputs}")
        parts_A: list[np.ndarray] = []
        parts_b: list[np.ndarray] = []
        parts_p: list[np.ndarray] = []
        if self.labels is not None:
            lab_pts = np.flatnonzero(self.labels >= 0)
            lab = self.labels[lab_pts]
            if lab.size and lab.max() >= n_outputs:
                _raise_label_range(self.labels, n_outputs)
            A, b, p = _label_rows(lab, lab_pts.astype(np.int64), n_outputs)
            parts_A.append(A)
            parts_b.append(b)
            parts_p.append(p)
        cons = self._constraint_rows()
        if cons is not None:
            con_A, con_b, con_point = cons
            if con_A.shape[1] != n_outputs:
                _raise_columns(con_A.shape[1], n_outputs)
            parts_A.append(con_A)
            parts_b.append(con_b)
            parts_p.append(con_point)
        A = np.concatenate(parts_A, axis=0) if parts_A else np.zeros((0, n_outputs))
        b = np.concatenate(parts_b) if parts_b else np.zeros(0)
        p = np.concatenate(parts_p).astype(np.int64) if parts_p else np.zeros(0, dtype=np.int64)
        order = np.argsort(p, kind="stable")
        return np.ascontiguousarray(A[order], dtype=np.float64), b[order].astype(np.float64), p[order]

    # ------------------------------------------------------------------ derived specs
    def subset(self, indices: Sequence[int] | np.ndarray) -> "PointSpec":
        """The spec restricted to ``indices`` (integer positions or a boolean mask), in that order."""
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (self.n_points,):
                raise SpecError(f"a boolean mask for subset() needs {self.n_points} entries, got shape {idx.shape}")
            idx = np.flatnonzero(idx)
        idx = _as_int_array(idx, "subset indices").reshape(-1)
        if idx.size and (idx.min() < -self.n_points or idx.max() >= self.n_points):
            raise SpecError(f"subset indices must lie in [0, {self.n_points}), got min {idx.min()} max {idx.max()}")
        idx = np.where(idx < 0, idx + self.n_points, idx)
        labels = None if self.labels is None else self.labels[idx]
        cA: np.ndarray | None = None
        cb: np.ndarray | None = None
        cp: np.ndarray | None = None
        cons = self._constraint_rows()
        if cons is not None:
            con_A, con_b, con_point = cons
            # rows are grouped by point: gather each selected point's block of rows
            starts = np.searchsorted(con_point, idx, side="left")
            stops = np.searchsorted(con_point, idx, side="right")
            counts = stops - starts
            total = int(counts.sum())
            offsets = np.repeat(starts - np.concatenate(([0], np.cumsum(counts)[:-1])), counts)
            rows = np.arange(total) + offsets
            cA = con_A[rows]
            cb = con_b[rows]
            cp = np.repeat(np.arange(idx.size), counts)
            if labels is not None and np.all(labels < 0):
                labels = None
            if total == 0:
                cA = cb = cp = None
        return PointSpec(self.inputs[idx], labels, cA, cb, cp, source=self.source)

    def with_shape(self, input_shape: Sequence[int]) -> "PointSpec":
        """The spec with every input reshaped to ``input_shape`` (the model's input, no batch axis).

        Flat inputs of the right size are reshaped (C order); a size mismatch is a SpecError.
        """
        shape = tuple(int(s) for s in input_shape)
        if shape == self.input_shape:
            return self
        if math.prod(shape) != math.prod(self.input_shape):
            raise SpecError(
                f"repair-set inputs have shape {self.input_shape} per point ({math.prod(self.input_shape)} values) "
                f"but the model expects inputs of shape {shape} ({math.prod(shape)} values); "
                "use a repair set made for this model, or export the points in the model's input layout"
            )
        return PointSpec(
            self.inputs.reshape((self.n_points,) + shape),
            self.labels,
            self.constraint_A,
            self.constraint_b,
            self.constraint_point,
            source=self.source,
        )

    def validate(self, input_shape: Sequence[int] | None, n_outputs: int | None) -> "PointSpec":
        """Check the spec against a model; return it reshaped to ``input_shape``.

        Raises :class:`SpecError` when the spec is empty, an input is NaN/inf, the input size does
        not match the model, a label is outside ``[0, n_outputs)``, or the explicit constraints do
        not have ``n_outputs`` columns or are not finite.
        """
        return validate_point_spec(self, input_shape, n_outputs)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_arrays(
        cls,
        inputs: Any,
        labels: Any = None,
        A: Any = None,
        b: Any = None,
        *,
        source: str | None = None,
    ) -> "PointSpec":
        """Build a spec from arrays.

        ``inputs`` ``(N, ...)``; ``labels`` ``(N,)`` integers; and/or ``A`` ``(N, m, n_outputs)`` with
        ``b`` ``(N, m)`` (the same ``m`` rows count for every point), or a shared ``A`` ``(m, n_outputs)``
        with ``b`` ``(m,)`` applied to every point.
        """
        x = _as_float_array(inputs, "repair-set inputs")
        if x.ndim < 2:
            raise SpecError(
                f"repair-set inputs must have shape (N, ...) with one row per point, got shape {x.shape}; "
                "for a single point add a leading axis (x[None])"
            )
        n = x.shape[0]
        if labels is None and A is None and b is None:
            raise SpecError("a point spec needs labels, or output constraints A and b; pass labels=... or A=..., b=...")
        cA = cb = cp = None
        if A is not None or b is not None:
            if A is None or b is None:
                raise SpecError("output constraints need both A and b; pass A=... and b=...")
            Aa = _as_float_array(A, "constraint matrix A")
            ba = _as_float_array(b, "constraint bounds b")
            if Aa.ndim == 2 and ba.ndim == 1:  # shared by every point
                Aa = np.broadcast_to(Aa, (n,) + Aa.shape)
                ba = np.broadcast_to(ba, (n,) + ba.shape)
            if Aa.ndim != 3 or ba.ndim != 2 or Aa.shape[:2] != ba.shape or Aa.shape[0] != n:
                raise SpecError(
                    f"constraints need A of shape (N, m, n_outputs) and b of shape (N, m) with N={n} points, "
                    f"got A {Aa.shape} and b {ba.shape}; for one set of rows shared by all points give "
                    "A (m, n_outputs) and b (m,)"
                )
            m = Aa.shape[1]
            if m == 0 and labels is None:
                raise SpecError("A and b have zero rows per point; give at least one constraint row or labels")
            cA = Aa.reshape(n * m, Aa.shape[2])
            cb = ba.reshape(n * m)
            cp = np.repeat(np.arange(n, dtype=np.int64), m)
            if m == 0:
                cA = cb = cp = None
        if labels is not None:
            lab = _as_int_array(labels, "labels")
            if lab.ndim != 1:
                raise SpecError(
                    f"labels must be a 1-D array of class indices, got shape {lab.shape}; convert one-hot labels with argmax"
                )
            if lab.size and lab.min() < 0:
                i = int(np.flatnonzero(lab < 0)[0])
                raise SpecError(f"label {int(lab[i])} at point {i} is negative; labels are class indices >= 0")
            labels = lab
        return cls(x, labels, cA, cb, cp, source=source)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        labels: Any = None,
        where: Mapping[str, Any] | None = None,
        limit: int | None = None,
    ) -> "PointSpec":
        """Read a repair set from ``.npz``, ``.npy`` or ``.json`` (formats: module docstring).

        ``labels`` (array or path of a ``.npy``/``.txt`` of integers) overrides labels in the file and
        is required for ``.npy``; ``where`` keeps points whose integer field equals the given value;
        ``limit`` keeps the first ``limit`` points after filtering.
        """
        p = Path(path)
        if not p.exists():
            raise InputError(f"no such file: {p}; check the repair-set path")
        if p.is_dir():
            raise InputError(f"{p} is a directory; give the repair-set file (.npz, .npy or .json)")
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
                raise SpecError(f"limit must be a positive integer, got {limit!r}")
        ext = p.suffix.lower()
        if ext == ".npz":
            x, lab, cons, fields = _read_npz(p)
        elif ext == ".npy":
            x, lab, cons, fields = _read_npy(p), None, None, {}
        elif ext == ".json":
            x, lab, cons, fields = _read_json(p)
        else:
            raise SpecError(f"{p}: unsupported repair-set format {ext or '(no extension)'!r}; use .npz, .npy or .json")

        if x.ndim < 2:
            raise SpecError(f"{p}: inputs have shape {x.shape}; expected (N, ...) with one row per point")
        n = x.shape[0]
        if labels is not None:
            lab = _labels_argument(labels, n)
        if lab is None and cons is None:
            if ext == ".npy":
                raise SpecError(
                    f"{p} holds inputs only; pass the labels (labels=array or a .npy/.txt path, "
                    "--labels on the command line), or use an .npz/.json repair set with labels"
                )
            raise SpecError(
                f"{p} has no labels (keys {', '.join(LABEL_KEYS)}) and no constraints (A, b); "
                "add them to the file or pass labels=..."
            )

        keep = np.arange(n)
        if where:
            keep = _select(p, fields, where, n)
        if limit is not None:
            keep = keep[: int(limit)]

        cA = cb = cp = None
        if cons is not None:
            cA, cb, cp = cons
        spec = cls(x, lab, cA, cb, cp, source=str(p))
        if keep.size != n:
            spec = spec.subset(keep)
        return spec


# ---------------------------------------------------------------------- validation
def _raise_label_range(labels: np.ndarray, n_outputs: int) -> None:
    bad = np.flatnonzero((labels >= n_outputs) | (labels < NO_LABEL))
    i = int(bad[0])
    raise SpecError(
        f"label {int(labels[i])} at point {i} is outside the valid range [0, {n_outputs - 1}] for a model "
        f"with {n_outputs} outputs ({bad.size} bad label(s)); fix the labels or check that the model is the right one"
    )


def _raise_columns(cols: int, n_outputs: int) -> None:
    raise SpecError(
        f"the output constraints have {cols} column(s) but the model has {n_outputs} output(s); "
        "every row of A needs one coefficient per network output"
    )


def validate_point_spec(spec: PointSpec, input_shape: Sequence[int] | None, n_outputs: int | None) -> PointSpec:
    """Check ``spec`` against a model with ``input_shape`` (no batch axis) and ``n_outputs`` outputs.

    ``None`` for either skips the checks that need it. Returns the spec reshaped to
    ``input_shape``; raises :class:`SpecError`."""
    where = f" ({spec.source})" if spec.source else ""
    if spec.n_points == 0:
        raise SpecError(f"the repair set{where} is empty; give at least one point (check where=/limit= filters)")
    x = spec.inputs
    finite = np.isfinite(x)
    if not finite.all():
        n_nan = int(np.isnan(x).sum())
        n_inf = int(np.isinf(x).sum())
        bad_pts = np.flatnonzero(~finite.reshape(spec.n_points, -1).all(axis=1))
        raise SpecError(
            f"the repair-set inputs{where} contain {n_nan} NaN and {n_inf} infinite value(s) in {bad_pts.size} "
            f"point(s); the first bad point is index {int(bad_pts[0])}; remove or fix those points"
        )
    if input_shape is not None:
        spec = spec.with_shape(input_shape)
    if n_outputs is None:
        return spec
    n_outputs = int(n_outputs)
    if spec.labels is not None and spec.labels.size and spec.labels.max() >= n_outputs:
        _raise_label_range(spec.labels, n_outputs)
    cons = spec._constraint_rows()
    if cons is not None:
        con_A, con_b, con_point = cons
        if con_A.shape[1] != n_outputs:
            _raise_columns(con_A.shape[1], n_outputs)
        for name, arr in (("A", con_A), ("b", con_b)):
            ok = np.isfinite(arr)
            if not ok.all():
                row = int(np.flatnonzero(~ok.reshape(arr.shape[0], -1).all(axis=1))[0])
                raise SpecError(
                    f"the output constraints{where} have a non-finite entry in {name} (row {row}, point "
                    f"{int(con_point[row])}); every coefficient and bound must be a finite number"
                )
    return spec


# ---------------------------------------------------------------------- readers
def _read_npz(p: Path) -> _Read:
    try:
        # open the file ourselves: np.load leaks its handle when the archive is corrupt
        with open(p, "rb") as fh, np.load(fh, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except NPZ_ERRORS as exc:
        raise SpecError(f"cannot read the repair set {p} as .npz ({type(exc).__name__}: {exc}); re-save it with numpy.savez") from None
    xkey = next((k for k in INPUT_KEYS if k in arrays), None)
    if xkey is None:
        found = ", ".join(sorted(arrays)) or "none"
        raise SpecError(
            f"{p} has no inputs: expected one of the keys {', '.join(INPUT_KEYS)}; keys found: {found}"
        )
    x = _as_float_array(arrays[xkey], f"{p}: inputs '{xkey}'")
    lkey = next((k for k in LABEL_KEYS if k in arrays), None)
    lab = None
    if lkey is not None:
        lab = _as_int_array(arrays[lkey], f"{p}: labels '{lkey}'")
        if lab.ndim != 1:
            raise SpecError(f"{p}: labels '{lkey}' have shape {lab.shape}; give a 1-D array of class indices")
        if lab.size and lab.min() < 0:
            i = int(np.flatnonzero(lab < 0)[0])
            raise SpecError(f"{p}: label {int(lab[i])} at point {i} is negative; labels are class indices >= 0")
    cons = None
    if ("A" in arrays) != ("b" in arrays):
        raise SpecError(f"{p} has only one of the keys 'A' and 'b'; output constraints need both")
    if "A" in arrays:
        cons = PointSpec.from_arrays(x, None, arrays["A"], arrays["b"])._constraint_rows()
    fields = {k: v for k, v in arrays.items() if k not in (xkey, "A", "b")}
    return x, lab, cons, fields


def _read_npy(p: Path) -> np.ndarray:
    try:
        with open(p, "rb") as fh:
            arr = np.load(fh, allow_pickle=False)
            if isinstance(arr, np.lib.npyio.NpzFile):  # an .npz saved under a .npy name
                arr.close()
                raise SpecError(f"{p} is an .npz archive; rename it to .npz")
    except NPZ_ERRORS as exc:
        raise SpecError(f"cannot read the repair set {p} as .npy ({type(exc).__name__}: {exc}); re-save it with numpy.save") from None
    return _as_float_array(arr, f"{p}: inputs")


def _json_points(p: Path) -> list[Any]:
    """The list of points of a JSON repair set (an object with ``points``, or the bare list)."""
    doc = read_json_document(p, "repair set")
    pts = doc.get("points") if isinstance(doc, dict) else doc
    if not isinstance(pts, list):
        raise SpecError(
            f"{p}: expected an object {{\"points\": [...]}} (or a list of points); "
            "see provrepair.specs.points for the format"
        )
    if not pts:
        raise SpecError(f"{p}: the repair set has no points; add at least one")
    return pts


def _json_label(p: Path, i: int, lab: Any) -> int:
    """A point's label as a class index; JSON gives integral floats (``3.0``) for some writers."""
    if (
        isinstance(lab, bool)
        or not isinstance(lab, (int, float))
        or (isinstance(lab, float) and not lab.is_integer())
        or lab < 0
    ):
        raise SpecError(f"{p}: point {i} has label {lab!r}; a label is a class index, an integer >= 0")
    return int(lab)


def _json_constraints(p: Path, i: int, cons: Any, width: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``(A, b)`` of one point's constraints; ``width`` is the column count of earlier points' rows."""
    if not isinstance(cons, dict) or "A" not in cons or "b" not in cons:
        raise SpecError(f"{p}: point {i}: \"constraints\" must be an object with \"A\" (rows) and \"b\"")
    Ai = _as_float_array(cons["A"], f"{p}: point {i} constraints A")
    bi = _as_float_array(cons["b"], f"{p}: point {i} constraints b")
    if Ai.ndim == 1:
        Ai = Ai[None, :]
    bi = bi.reshape(-1)
    if Ai.ndim != 2 or Ai.shape[0] != bi.shape[0]:
        raise SpecError(
            f"{p}: point {i}: constraints A has shape {Ai.shape} but b has {bi.shape[0]} entries; "
            "give A as a list of rows and one b entry per row"
        )
    if width is not None and Ai.shape[0] and Ai.shape[1] != width:
        raise SpecError(
            f"{p}: point {i}: constraint rows have {Ai.shape[1]} columns but earlier points use "
            f"{width}; every row needs one coefficient per network output"
        )
    return Ai, bi


def _json_inputs(p: Path, inputs: list[Any]) -> np.ndarray:
    """The inputs as one (n, *shape) array; the error names the first point that breaks it."""
    shapes = [_safe_shape(v) for v in inputs]
    x = None
    if len(set(shapes)) == 1 and shapes[0] is not None:
        try:
            x = np.array(inputs, dtype=np.float64)
        except (TypeError, ValueError):
            x = None
    if x is None:
        bad = next((i for i, s in enumerate(shapes) if s is None or s != shapes[0]), 0)
        if bad == 0 and shapes[0] is not None:  # same shapes, but not numbers
            bad = next(i for i, v in enumerate(inputs) if _safe_float(v) is None)
        what = "is ragged or not numeric" if shapes[bad] is None else f"has shape {shapes[bad]}"
        raise SpecError(
            f"{p}: the input of point {bad} {what} (point 0 has shape {shapes[0]}); "
            "all inputs must have the same shape and hold only numbers"
        )
    if x.ndim == 1:  # scalar inputs
        x = x[:, None]
    return x


def _json_fields(extra: dict[str, list[Any]]) -> dict[str, Any]:
    """Extra per-point keys: integer ones as arrays for ``where=``, the rest kept as given."""
    fields: dict[str, Any] = {}
    for k, vals in extra.items():
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in vals):
            fields[k] = np.asarray(vals, dtype=np.int64)
        else:
            fields[k] = vals  # kept so that where= can say why it cannot use it
    return fields


def _read_json(p: Path) -> _Read:
    pts = _json_points(p)
    inputs: list[Any] = []
    labels: list[int] = []
    rows_A: list[np.ndarray] = []
    rows_b: list[np.ndarray] = []
    rows_p: list[np.ndarray] = []
    any_label = False
    extra: dict[str, list[Any]] = {}
    for i, item in enumerate(pts):
        if not isinstance(item, dict) or "input" not in item:
            raise SpecError(f"{p}: point {i} must be an object with an \"input\" list (and a \"label\" or \"constraints\")")
        inputs.append(item["input"])
        lab = item.get("label")
        labels.append(NO_LABEL if lab is None else _json_label(p, i, lab))
        any_label = any_label or lab is not None
        cons = item.get("constraints")
        if cons is not None:
            Ai, bi = _json_constraints(p, i, cons, rows_A[0].shape[1] if rows_A else None)
            if Ai.shape[0]:
                rows_A.append(Ai)
                rows_b.append(bi)
                rows_p.append(np.full(Ai.shape[0], i, dtype=np.int64))
        elif lab is None:
            raise SpecError(f"{p}: point {i} has neither \"label\" nor \"constraints\"; give one of them")
        for k, v in item.items():
            if k not in ("input", "label", "constraints"):
                extra.setdefault(k, [None] * len(pts))[i] = v
    x = _json_inputs(p, inputs)
    lab_arr = np.asarray(labels, dtype=np.int64) if any_label else None
    cons_t = None
    if rows_A:
        cons_t = (np.concatenate(rows_A), np.concatenate(rows_b), np.concatenate(rows_p))
    return x, lab_arr, cons_t, _json_fields(extra)


def _safe_shape(v: Any) -> tuple[int, ...] | None:
    try:
        shape: tuple[int, ...] = np.shape(v)
        return shape
    except ValueError:  # ragged nested lists
        return None


def _safe_float(v: Any) -> np.ndarray | None:
    try:
        return np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        return None


def _labels_argument(labels: Any, n: int) -> np.ndarray:
    if isinstance(labels, (str, os.PathLike)):
        lp = Path(labels)
        if not lp.exists():
            raise InputError(f"no such file: {lp}; check the labels path")
        try:
            if lp.suffix.lower() == ".npy":
                with open(lp, "rb") as fh:
                    raw = np.load(fh, allow_pickle=False)
            else:
                raw = np.loadtxt(lp, ndmin=1)
        except NPZ_ERRORS as exc:
            raise SpecError(f"cannot read the labels file {lp} ({type(exc).__name__}: {exc}); give a .npy or a text file of integers") from None
        lab = _as_int_array(raw, f"labels in {lp}").reshape(-1)
    else:
        lab = _as_int_array(labels, "labels")
        if lab.ndim != 1:
            raise SpecError(f"labels must be a 1-D array of class indices, got shape {lab.shape}")
    if lab.shape[0] != n:
        raise SpecError(f"got {lab.shape[0]} labels for {n} input points; give exactly one label per point")
    if lab.size and lab.min() < 0:
        i = int(np.flatnonzero(lab < 0)[0])
        raise SpecError(f"label {int(lab[i])} at point {i} is negative; labels are class indices >= 0")
    return lab


def _select(p: Path, fields: Mapping[str, Any], where: Mapping[str, Any], n: int) -> np.ndarray:
    if not isinstance(where, Mapping):
        raise SpecError(f"where must be a mapping like {{'group': 0}}, got {where!r}")
    mask = np.ones(n, dtype=bool)
    for key, value in where.items():
        if key not in fields:
            avail = ", ".join(sorted(fields)) or "none"
            raise SpecError(f"{p}: cannot filter on {key!r}: no such field (fields available: {avail})")
        col = fields[key]
        if isinstance(col, list):
            raise SpecError(f"{p}: field {key!r} is not an integer for every point; where= needs integer fields")
        col = np.asarray(col)
        if col.shape != (n,) or col.dtype.kind not in "iub":
            raise SpecError(
                f"{p}: field {key!r} has shape {col.shape} and dtype {col.dtype}; where= needs a 1-D integer array "
                f"with one entry per point ({n})"
            )
        values = list(value) if isinstance(value, (list, tuple, set, frozenset, np.ndarray)) else [value]
        mask &= np.isin(col, np.asarray(values))
    keep = np.flatnonzero(mask)
    if keep.size == 0:
        present = {k: sorted(set(np.asarray(fields[k]).tolist()))[:10] for k in where if k in fields}
        raise SpecError(f"{p}: where={dict(where)!r} selects no points (values present: {present}); change the filter")
    return keep
