"""Region specs: sets of inputs (boxes, polytopes), each with an output property to certify or repair.

A :class:`RegionSpec` is an ordered list of pairs ``(region, property)``. The property is stated the
way VNN-LIB states it, as the set of **unsafe** outputs: a disjunction of closed polyhedra
``{y : G y <= h}`` (:class:`OutputProperty`). The property holds on a region iff no input of the
region reaches any unsafe disjunct; a point on the boundary of a disjunct counts as unsafe, so the
requirements it encodes hold *strictly* (as in :class:`~provrepair.specs.points.PointSpec`).

Regions, all with ``input_shape`` = the model's input shape (e.g. ``(1, 28, 28)`` or ``(5,)``):

* :class:`Box` ``lower <= x <= upper``;
* :class:`VPolytope`: the convex hull of a list of vertices;
* :class:`HPolytope`: ``A x_flat <= b`` inside a bounding box (what VNN-LIB files give when an
  input constraint involves several inputs).

Specs and regions are immutable: arrays are float64 and read-only.

File formats accepted by :meth:`RegionSpec.load` and written by :meth:`RegionSpec.save`
-------------------------------------------------------------------------------------

``.json``
    ::

        {"boxes": [{"lower": [0.0, 0.1], "upper": [0.2, 0.3], "label": 3}, ...]}
        {"polytopes": [{"vertices": [[0.0, 0.1], [0.2, 0.3], [0.0, 0.3]], "label": 3}, ...]}
        {"hpolytopes": [{"lower": [...], "upper": [...], "input_A": [[...]], "input_b": [...],
                         "label": 3}, ...]}

    ``lower``/``upper`` and each vertex are (possibly nested) lists of numbers in the model's input
    layout, or flat. Instead of ``label`` (the network must classify the whole region as that
    class), a region may give ``"A"`` (rows, one column per network output) and ``"b"``: the
    required conjunction ``A y <= b`` (strictly), or ``"unsafe": [{"G": [[...]], "h": [...]}, ...]``:
    the unsafe disjuncts directly. An optional ``"name"`` names a region. An optional top-level
    ``"n_outputs"`` lets labels be expanded before the spec meets a model. A spec mixing region
    kinds is written as ``{"regions": [{"kind": "box" | "polytope" | "hpolytope", ...}, ...]}``.

``.npz`` (``numpy.savez``)
    ``lower`` and ``upper`` with shape ``(n, *input_shape)`` (boxes), or ``vertices`` with shape
    ``(n, k, *input_shape)`` (``n`` polytopes of ``k`` vertices each); plus ``labels`` ``(n,)``, or
    ``A`` ``(n, r, n_outputs)`` and ``b`` ``(n, r)`` (required conjunctions). Optional: ``names``
    ``(n,)`` strings, ``n_outputs`` (a scalar). Unsafe disjunctions and H-polytopes need JSON or
    VNN-LIB.

``.vnnlib``
    VNN-LIB 1.0 properties, see :mod:`provrepair.specs.vnnlib`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, SpecError
from ..fileio import atomic_path, write_text_atomic
from .common import NO_LABEL, NPZ_ERRORS, read_json_document, readonly

__all__ = ["REGION_KINDS", "Box", "HPolytope", "OutputProperty", "Region", "RegionSpec", "VPolytope"]

#: ``kind=`` values of :meth:`RegionSpec.load`.
REGION_KINDS = ("box", "polytope", "hpolytope", "vnnlib")

#: A polytope file describes sets of inputs; one vertex is a point, which is most likely a mistake.
_ONE_VERTEX = ("{where}: a polytope needs at least 2 vertices, got 1; give single inputs as a points file "
               "(--points), or a box")


# ---------------------------------------------------------------------- helpers
def _frozen(a: Any) -> np.ndarray:
    """A private float64 copy that nobody can modify (specs are shared between stages)."""
    return readonly(np.array(a, dtype=np.float64, copy=True))


def _floats(value: Any, what: str) -> np.ndarray:
    try:
        arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise SpecError(f"{what} must be numbers in a rectangular array ({exc}); check its shape and contents") from None
    return arr


def _finite(arr: np.ndarray, what: str) -> None:
    ok = np.isfinite(arr)
    if not ok.all():
        i = _index(np.flatnonzero(~ok.ravel())[0], arr.shape)
        raise SpecError(f"{what} has the non-finite value {float(arr[i])!r} at index {_fmt_index(i)}; give finite numbers")


def _index(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(v) for v in np.unravel_index(int(flat), shape))


def _fmt_index(i: tuple[int, ...]) -> str:
    return str(i[0]) if len(i) == 1 else str(i)


def _label_int(value: Any, what: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise SpecError(f"{what} is {value!r}; a label is a class index, an integer >= 0")
    if isinstance(value, (float, np.floating)) and not float(value).is_integer():
        raise SpecError(f"{what} is {value!r}; a label is a class index, an integer >= 0")
    if value < 0:
        raise SpecError(f"{what} is {value!r}; a label is a class index, an integer >= 0")
    return int(value)


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    """A generator; ``None`` means seed 0 so that sampling is deterministic unless asked otherwise."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(0 if rng is None else rng)


def _shape(shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(s) for s in shape)


def _check_box(lower: np.ndarray, upper: np.ndarray, what: str) -> None:
    if lower.shape != upper.shape:
        raise SpecError(f"{what}: lower has shape {lower.shape} but upper has {upper.shape}; give one bound of each per input")
    if lower.ndim == 0 or lower.size == 0:
        raise SpecError(f"{what}: the bounds have shape {lower.shape}; give at least one input")
    _finite(lower, f"{what}: lower")
    _finite(upper, f"{what}: upper")
    bad = lower > upper
    if bad.any():
        i = _index(np.flatnonzero(bad.ravel())[0], lower.shape)
        raise SpecError(
            f"{what} is empty: lower[{_fmt_index(i)}] = {float(lower[i])!r} > upper[{_fmt_index(i)}] = {float(upper[i])!r}; "
            "every lower bound must be <= its upper bound"
        )


def _reshape(arr: np.ndarray, lead: int, shape: tuple[int, ...]) -> np.ndarray:
    out = arr.reshape(arr.shape[:lead] + shape)
    out.flags.writeable = False
    return out


# ---------------------------------------------------------------------- output property
@dataclass(frozen=True, eq=False)
class OutputProperty:
    """The unsafe outputs: ``y`` is unsafe iff ``G y <= h`` for some disjunct ``(G, h)``.

    ``G`` has shape ``(r, n_outputs)`` and ``h`` shape ``(r,)``; a disjunct with zero rows makes
    every output unsafe. Boundaries are unsafe (non-strict), so a certificate is sound however the
    verifier rounds at the boundary.
    """

    disjuncts: tuple[tuple[np.ndarray, np.ndarray], ...]
    n_outputs: int

    def __post_init__(self) -> None:
        n = self.n_outputs
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise SpecError(f"n_outputs must be a positive integer, got {n!r}")
        object.__setattr__(self, "n_outputs", int(n))
        if len(self.disjuncts) == 0:
            raise SpecError("an output property needs at least one unsafe disjunct (G, h); nothing would be checked")
        out = []
        for d, pair in enumerate(self.disjuncts):
            try:
                G, h = pair
            except (TypeError, ValueError):
                raise SpecError(f"unsafe disjunct {d} must be a pair (G, h)") from None
            G = _floats(G, f"unsafe disjunct {d}: G")
            h = _floats(h, f"unsafe disjunct {d}: h").reshape(-1)
            if G.ndim == 1 and G.size == n:
                G = G[None, :]
            if G.size == 0:
                G = G.reshape(0, n)
            if G.ndim != 2 or G.shape[1] != n or G.shape[0] != h.shape[0]:
                raise SpecError(
                    f"unsafe disjunct {d}: G has shape {G.shape} and h {h.shape}; give G of shape (r, {n}) "
                    "(one column per network output) and one h entry per row"
                )
            _finite(G, f"unsafe disjunct {d}: G")
            _finite(h, f"unsafe disjunct {d}: h")
            out.append((_frozen(G), _frozen(h)))
        object.__setattr__(self, "disjuncts", tuple(out))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def label(cls, label: int, n_outputs: int, margin: float = 0.0) -> OutputProperty:
        """Required: ``y[label] - y[j] > margin`` for every ``j != label``."""
        n = int(n_outputs)
        c = _label_int(label, "the label")
        if n < 2:
            raise SpecError(f"a label property needs a model with at least 2 outputs, got n_outputs={n}")
        if c >= n:
            raise SpecError(f"label {c} is out of range for a model with {n} outputs; labels are in [0, {n})")
        margin = float(margin)
        ds = []
        for j in range(n):
            if j != c:
                G = np.zeros((1, n))
                G[0, c], G[0, j] = 1.0, -1.0
                ds.append((G, np.array([margin])))
        return cls(tuple(ds), n)

    @classmethod
    def required_all(cls, A: Any, b: Any) -> OutputProperty:
        """Required: every row of ``A y <= b`` (strictly); unsafe: any row reversed."""
        A, b = cls._rows(A, b)
        if A.shape[0] == 0:
            raise SpecError("a required conjunction A y <= b needs at least one row")
        return cls(tuple((-A[r : r + 1], -b[r : r + 1]) for r in range(A.shape[0])), A.shape[1])

    @classmethod
    def required_any(cls, A: Any, b: Any) -> OutputProperty:
        """Required: some row of ``A y <= b`` (strictly); unsafe: every row reversed at once."""
        A, b = cls._rows(A, b)
        if A.shape[0] == 0:
            raise SpecError("a required disjunction A y <= b needs at least one row")
        return cls(((-A, -b),), A.shape[1])

    @classmethod
    def unsafe(cls, disjuncts: Sequence[tuple[Any, Any]]) -> OutputProperty:
        """The unsafe disjuncts ``[(G, h), ...]`` directly (VNN-LIB's view)."""
        ds = list(disjuncts)
        if not ds:
            raise SpecError("give at least one unsafe disjunct (G, h)")
        G0 = _floats(ds[0][0], "unsafe disjunct 0: G")
        n = G0.shape[-1] if G0.ndim >= 1 else 0
        return cls(tuple(ds), n)

    @staticmethod
    def _rows(A: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
        A = _floats(A, "output constraints A")
        b = _floats(b, "output constraints b").reshape(-1)
        if A.ndim == 1:
            A = A[None, :]
        if A.ndim != 2 or A.shape[0] != b.shape[0] or A.shape[1] < 1:
            raise SpecError(
                f"output constraints: A has shape {A.shape} and b {b.shape}; give A as rows with one "
                "column per network output and one b entry per row"
            )
        return A, b

    # ------------------------------------------------------------------ evaluation
    def violated(self, y: Any) -> np.ndarray:
        """Index of the first unsafe disjunct each output reaches (-1: none), evaluated in float64."""
        Y = np.asarray(y, dtype=np.float64)
        if Y.ndim == 1:
            Y = Y[None, :]
        if Y.ndim != 2 or Y.shape[1] != self.n_outputs:
            raise SpecError(f"outputs have shape {np.shape(y)}; expected (n, {self.n_outputs})")
        out = np.full(Y.shape[0], -1, dtype=np.int64)
        for d in range(len(self.disjuncts) - 1, -1, -1):  # backwards: the first match wins
            G, h = self.disjuncts[d]
            inside = np.all(Y @ G.T <= h, axis=1)
            out[inside] = d
        return out

    def holds(self, y: Any) -> np.ndarray:
        """True where the output reaches no unsafe disjunct."""
        return self.violated(y) < 0

    @property
    def is_conjunctive(self) -> bool:
        """Every disjunct is a single row, i.e. the requirement is a conjunction of rows."""
        return all(G.shape[0] == 1 for G, _ in self.disjuncts)

    def required_conjunction(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(A, b)`` with the requirement ``A y < b`` when :attr:`is_conjunctive`, else None.

        This is the form an LP repairer imposes (with a margin); fresh arrays.
        """
        if not self.is_conjunctive:
            return None
        A = 0.0 - np.concatenate([G for G, _ in self.disjuncts], axis=0)  # 0 - x: no -0.0 entries
        b = 0.0 - np.concatenate([h for _, h in self.disjuncts])
        return A, b

    def __repr__(self) -> str:
        rows = sorted({G.shape[0] for G, _ in self.disjuncts})
        return f"OutputProperty(n_outputs={self.n_outputs}, {len(self.disjuncts)} unsafe disjunct(s) of {'/'.join(map(str, rows))} row(s))"

    def validate(self, n_outputs: int) -> OutputProperty:
        """Check the property fits a model with ``n_outputs`` outputs; returns it."""
        if int(n_outputs) != self.n_outputs:
            raise SpecError(
                f"the output property constrains {self.n_outputs} outputs but the model has {int(n_outputs)}; "
                "use a property written for this model"
            )
        return self

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        return {
            "n_outputs": self.n_outputs,
            "unsafe": [{"G": G.tolist(), "h": h.tolist()} for G, h in self.disjuncts],
        }

    @classmethod
    def from_dict(cls, doc: Any, n_outputs: int | None = None) -> OutputProperty:
        """Read ``{"unsafe": [{"G", "h"}, ...]}`` or ``{"A", "b"}`` (``n_outputs`` optional in both)."""
        if not isinstance(doc, dict):
            raise SpecError(f"an output property must be a JSON object, got {type(doc).__name__}")
        n = doc.get("n_outputs", n_outputs)
        if "unsafe" in doc:
            ds = doc["unsafe"]
            if not isinstance(ds, list) or not ds:
                raise SpecError('"unsafe" must be a non-empty list of {"G": [[...]], "h": [...]} objects')
            pairs = []
            for d, item in enumerate(ds):
                if not isinstance(item, dict) or "G" not in item or "h" not in item:
                    raise SpecError(f'unsafe disjunct {d} must be an object with "G" (rows) and "h"')
                pairs.append((item["G"], item["h"]))
            prop = cls.unsafe(pairs)
        elif "A" in doc or "b" in doc:
            if "A" not in doc or "b" not in doc:
                raise SpecError('a required conjunction needs both "A" and "b"')
            prop = cls.required_all(doc["A"], doc["b"])
        else:
            raise SpecError('an output property needs "unsafe" (disjuncts) or "A" and "b" (required rows)')
        if n is not None:
            prop.validate(int(n))
        return prop


# ---------------------------------------------------------------------- regions
class Region:
    """Common interface of :class:`Box`, :class:`VPolytope` and :class:`HPolytope`."""

    kind = "region"

    @property
    def input_shape(self) -> tuple[int, ...]:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def dim(self) -> int:
        """Number of scalar inputs."""
        return math.prod(self.input_shape)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - overridden
        raise NotImplementedError

    def with_shape(self, input_shape: Sequence[int]) -> Region:  # pragma: no cover - overridden
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class Box(Region):
    """``lower <= x <= upper`` elementwise (degenerate coordinates, lower == upper, allowed)."""

    lower: np.ndarray
    upper: np.ndarray
    kind = "box"

    def __post_init__(self) -> None:
        lo = _floats(self.lower, "box lower bound")
        hi = _floats(self.upper, "box upper bound")
        _check_box(lo, hi, "box")
        object.__setattr__(self, "lower", _frozen(lo))
        object.__setattr__(self, "upper", _frozen(hi))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return _shape(self.lower.shape)

    def center(self) -> np.ndarray:
        c: np.ndarray = (self.lower + self.upper) / 2
        return c

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.lower, self.upper

    def sample(self, n: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
        """``n`` uniform points, shape ``(n, *input_shape)`` (``rng=None``: seed 0)."""
        u = _rng(rng).random((int(n),) + self.input_shape)
        x: np.ndarray = self.lower + u * (self.upper - self.lower)
        return x

    def corners(self, max_corners: int = 4096) -> np.ndarray:
        """Every vertex, varying only the non-degenerate coordinates: ``(2**d, *input_shape)``.

        A box is a V-polytope with these vertices; past ``max_corners`` that view is too costly.
        """
        free = np.flatnonzero((self.upper > self.lower).ravel())
        d = free.size
        if d > 62 or 2**d > max_corners:
            raise SpecError(
                f"the box has {d} non-degenerate coordinates, i.e. 2^{d} corners (more than max_corners="
                f"{max_corners}); use bound propagation on the box, split it, or raise max_corners"
            )
        bits = (np.arange(2**d)[:, None] >> np.arange(d)[None, :]) & 1
        out = np.broadcast_to(self.lower.ravel(), (2**d, self.dim)).copy()
        out[:, free] = np.where(bits == 1, self.upper.ravel()[free], self.lower.ravel()[free])
        return out.reshape((2**d,) + self.input_shape)

    def contains(self, x: Any, atol: float = 0.0) -> np.ndarray | bool:
        """Membership of one point ``(*input_shape)`` (a bool) or a batch ``(n, *input_shape)``."""
        X, single = _batch(x, self.input_shape)
        ok = np.all((X >= self.lower - atol) & (X <= self.upper + atol), axis=tuple(range(1, X.ndim)))
        return bool(ok[0]) if single else ok

    def with_shape(self, input_shape: Sequence[int]) -> Box:
        shape = _shape(input_shape)
        return Box(_reshape(self.lower, 0, shape), _reshape(self.upper, 0, shape))

    def __repr__(self) -> str:
        return f"Box(input_shape={self.input_shape})"


@dataclass(frozen=True, eq=False)
class VPolytope(Region):
    """The convex hull of ``vertices`` (shape ``(k, *input_shape)``, ``k >= 1``)."""

    vertices: np.ndarray
    kind = "polytope"

    def __post_init__(self) -> None:
        v = _floats(self.vertices, "polytope vertices")
        if v.ndim < 2 or v.shape[0] < 1 or v[0].size == 0:
            raise SpecError(
                f"polytope vertices have shape {v.shape}; give (k, *input_shape) with at least one vertex"
            )
        _finite(v, "polytope vertices")
        object.__setattr__(self, "vertices", _frozen(v))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return _shape(self.vertices.shape[1:])

    @property
    def n_vertices(self) -> int:
        return int(self.vertices.shape[0])

    def center(self) -> np.ndarray:
        """The vertex mean (inside the polytope; not its centroid when vertices cluster)."""
        c: np.ndarray = self.vertices.mean(axis=0)
        return c

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.vertices.min(axis=0), self.vertices.max(axis=0)

    def sample(self, n: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
        """``n`` points: the vertices first when ``n`` allows, then Dirichlet convex combinations."""
        n = int(n)
        k = self.n_vertices
        flat = self.vertices.reshape(k, -1)
        head = flat if n >= k else flat[:0]
        w = _rng(rng).dirichlet(np.ones(k), size=n - head.shape[0]) if k > 1 else np.ones((n - head.shape[0], 1))
        pts = np.concatenate([head, w @ flat], axis=0)
        return pts.reshape((n,) + self.input_shape)

    def with_shape(self, input_shape: Sequence[int]) -> VPolytope:
        return VPolytope(_reshape(self.vertices, 1, _shape(input_shape)))

    def __repr__(self) -> str:
        return f"VPolytope(n_vertices={self.n_vertices}, input_shape={self.input_shape})"


@dataclass(frozen=True, eq=False)
class HPolytope(Region):
    """``A x_flat <= b`` inside the box ``[lower, upper]`` (the box is required).

    ``x_flat`` is the input flattened in C order, so ``A`` has ``prod(input_shape)`` columns.
    """

    A: np.ndarray
    b: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    kind = "hpolytope"

    def __post_init__(self) -> None:
        if self.lower is None or self.upper is None:
            raise SpecError(
                "an H-polytope needs a bounding box lower <= x <= upper on every input; "
                "add bounds for every input (VNN-LIB regions must bound every input)"
            )
        lo = _floats(self.lower, "H-polytope lower bound")
        hi = _floats(self.upper, "H-polytope upper bound")
        _check_box(lo, hi, "the H-polytope's bounding box")
        A = _floats(self.A, "H-polytope A")
        b = _floats(self.b, "H-polytope b").reshape(-1)
        if A.size == 0:
            A = A.reshape(0, lo.size)
        if A.ndim == 1:
            A = A[None, :]
        if A.ndim != 2 or A.shape[1] != lo.size or A.shape[0] != b.shape[0]:
            raise SpecError(
                f"H-polytope: A has shape {A.shape} and b {b.shape}, but the box has {lo.size} inputs; "
                f"give A of shape (m, {lo.size}) over the flattened input and one b entry per row"
            )
        _finite(A, "H-polytope A")
        _finite(b, "H-polytope b")
        for name, arr in (("A", A), ("b", b), ("lower", lo), ("upper", hi)):
            object.__setattr__(self, name, _frozen(arr))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return _shape(self.lower.shape)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.lower, self.upper

    def contains(self, x: Any, atol: float = 0.0) -> np.ndarray | bool:
        """Membership of one point (a bool) or a batch ``(n, *input_shape)`` (a bool array)."""
        X, single = _batch(x, self.input_shape)
        flat = X.reshape(X.shape[0], -1)
        ok = np.all((flat >= self.lower.ravel() - atol) & (flat <= self.upper.ravel() + atol), axis=1)
        ok &= np.all(flat @ self.A.T <= self.b + atol, axis=1)
        return bool(ok[0]) if single else ok

    def sample(self, n: int, rng: np.random.Generator | int | None = None, *, max_draws: int | None = None) -> np.ndarray:
        """Up to ``n`` uniform points by rejection from the box.

        May return **fewer** than ``n`` (none for a thin or empty polytope): at most ``max_draws``
        box points (default ``max(1000, 100 n)``) are tried.
        """
        n = int(n)
        g = _rng(rng)
        budget = max(1000, 100 * n) if max_draws is None else int(max_draws)
        box = Box(self.lower, self.upper)
        kept: list[np.ndarray] = []
        count = 0
        while count < n and budget > 0:
            m = min(budget, max(64, 4 * (n - count)))
            budget -= m
            pts = box.sample(m, g)
            pts = pts[self.contains(pts)]
            kept.append(pts)
            count += pts.shape[0]
        out = np.concatenate(kept, axis=0) if kept else np.zeros((0,) + self.input_shape)
        return out[:n]

    def center(self) -> np.ndarray:
        """The Chebyshev center: the centre of the largest ball inside (SpecError if empty).

        Degenerate box coordinates (lower == upper) are left out of the ball, so a polytope that is
        thin along them still has a centre.
        """
        from provrepair import solvers  # only here: loading a spec needs no solver

        d = self.A.shape[1]
        lo, hi = self.lower.ravel(), self.upper.ravel()
        free = np.flatnonzero(hi > lo)
        eye = np.eye(d)[free]
        rows = np.vstack([self.A, eye, -eye])
        norms = np.concatenate([np.linalg.norm(self.A[:, free], axis=1), np.ones(2 * free.size)])
        rhs = np.concatenate([self.b, hi[free], -lo[free]])
        backend = solvers.create("highs")
        backend.add_variables(d, lb=lo, ub=hi)
        backend.add_variables(1, lb=0.0, ub=np.inf, cost=-1.0)  # the radius, maximised
        backend.add_rows(np.hstack([rows, norms[:, None]]), hi=rhs)
        res = backend.solve()
        if res.status != solvers.OPTIMAL or res.x is None:
            raise SpecError(
                "the H-polytope is empty (its constraints A x <= b have no solution inside its box); "
                "check the region's constraints"
            )
        c: np.ndarray = np.clip(res.x[:d], lo, hi).reshape(self.input_shape)
        return c

    def with_shape(self, input_shape: Sequence[int]) -> HPolytope:
        shape = _shape(input_shape)
        return HPolytope(self.A, self.b, _reshape(self.lower, 0, shape), _reshape(self.upper, 0, shape))

    def __repr__(self) -> str:
        return f"HPolytope(n_constraints={self.A.shape[0]}, input_shape={self.input_shape})"


def _batch(x: Any, shape: tuple[int, ...]) -> tuple[np.ndarray, bool]:
    X = np.asarray(x, dtype=np.float64)
    if X.shape == shape:
        return X[None], True
    if X.shape[1:] != shape:
        raise SpecError(f"points have shape {X.shape}; expected {shape} or (n, *{shape})")
    return X, False


# ---------------------------------------------------------------------- the spec
@dataclass(frozen=True, eq=False)
class RegionSpec:
    """Ordered pairs ``(region, property)``; iterate to get them.

    Attributes
    ----------
    regions, properties:
        tuples of equal length. A property is ``None`` only while it is a label that still needs
        the model's number of outputs; :meth:`validate` expands it.
    labels:
        int64 ``(n,)`` (``-1`` where a region's property is not a label), or None. Kept so that
        saving writes labels back as labels.
    names:
        optional region names.
    """

    regions: tuple[Region, ...]
    properties: tuple[OutputProperty | None, ...]
    labels: np.ndarray | None = None
    names: tuple[str, ...] | None = None
    source: str | None = field(default=None)

    def __post_init__(self) -> None:
        regions = tuple(self.regions)
        props = tuple(self.properties)
        n = len(regions)
        if n == 0:
            raise SpecError("the region spec has no regions; give at least one box or polytope")
        if len(props) != n:
            raise SpecError(f"got {len(props)} output properties for {n} regions; give one property per region")
        for i, r in enumerate(regions):
            if not isinstance(r, Region):
                raise SpecError(f"region {i} is a {type(r).__name__}; give Box, VPolytope or HPolytope objects")
            if r.input_shape != regions[0].input_shape:
                raise SpecError(
                    f"region {i} has input shape {r.input_shape} but region 0 has {regions[0].input_shape}; "
                    "every region of a spec must describe the same model input"
                )
        labels = None
        if self.labels is not None:
            labels = np.asarray(self.labels)
            if labels.dtype.kind not in "iu" or labels.shape != (n,):
                raise SpecError(f"labels must be {n} integers (-1 for none), got {labels.dtype} {labels.shape}")
            labels = labels.astype(np.int64)
            labels.flags.writeable = False
        outs = set()
        for i, p in enumerate(props):
            if p is None:
                if labels is None or labels[i] < 0:
                    raise SpecError(f"region {i} has no output property; give a label or an OutputProperty")
            elif not isinstance(p, OutputProperty):
                raise SpecError(f"the property of region {i} is a {type(p).__name__}; give an OutputProperty")
            else:
                outs.add(p.n_outputs)
        if len(outs) > 1:
            raise SpecError(
                f"the output properties disagree on the number of outputs ({sorted(outs)}); "
                "every property of a spec must be written for the same model"
            )
        names = None
        if self.names is not None:
            names = tuple(str(s) for s in self.names)
            if len(names) != n:
                raise SpecError(f"got {len(names)} names for {n} regions; give one name per region")
        object.__setattr__(self, "regions", regions)
        object.__setattr__(self, "properties", props)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "names", names)

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return len(self.regions)

    def __iter__(self) -> Iterator[tuple[Region, OutputProperty]]:
        self._require_resolved()
        return iter(zip(self.regions, (p for p in self.properties if p is not None)))

    def __getitem__(self, i: int) -> tuple[Region, OutputProperty]:
        self._require_resolved()
        p = self.properties[i]
        assert p is not None  # _require_resolved: no property is None
        return self.regions[i], p

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.regions[0].input_shape

    @property
    def n_outputs(self) -> int | None:
        """The outputs the properties constrain (None while only unexpanded labels are known)."""
        return next((p.n_outputs for p in self.properties if p is not None), None)

    @property
    def resolved(self) -> bool:
        """True when every property is explicit (labels expanded)."""
        return all(p is not None for p in self.properties)

    def _require_resolved(self) -> None:
        if not self.resolved:
            raise SpecError(
                "the spec's label properties need the model's number of outputs; call "
                "spec.validate(input_shape, n_outputs) first (or pass n_outputs= when building it)"
            )

    def __repr__(self) -> str:
        kinds: dict[str, int] = {}
        for r in self.regions:
            kinds[r.kind] = kinds.get(r.kind, 0) + 1
        what = ", ".join(f"{v} {k if v == 1 else _JSON_KEY[k]}" for k, v in kinds.items())
        src = f", source={self.source!r}" if self.source else ""
        return f"RegionSpec({what}, input_shape={self.input_shape}, n_outputs={self.n_outputs}{src})"

    # ------------------------------------------------------------------ derived specs
    def subset(self, indices: Sequence[int] | np.ndarray) -> RegionSpec:
        """The spec restricted to ``indices`` (positions or a boolean mask), in that order."""
        n = len(self)
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (n,):
                raise SpecError(f"a boolean mask for subset() needs {n} entries, got shape {idx.shape}")
            idx = np.flatnonzero(idx)
        if idx.size and idx.dtype.kind not in "iu":
            raise SpecError(f"subset indices must be integers, got dtype {idx.dtype}")
        idx = idx.astype(np.int64).reshape(-1)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise SpecError(f"subset indices must lie in [0, {n}), got min {idx.min()} max {idx.max()}")
        idx = np.where(idx < 0, idx + n, idx)
        return RegionSpec(
            tuple(self.regions[i] for i in idx),
            tuple(self.properties[i] for i in idx),
            None if self.labels is None else self.labels[idx],
            None if self.names is None else tuple(self.names[i] for i in idx),
            source=self.source,
        )

    def validate(self, input_shape: Sequence[int] | None, n_outputs: int) -> RegionSpec:
        """Check the spec against a model; return it with regions reshaped and labels expanded.

        Flat regions of the right size are reshaped to ``input_shape`` (C order); a size mismatch,
        a label out of range or a property over another number of outputs is a SpecError.
        """
        n_outputs = int(n_outputs)
        regions = list(self.regions)
        if input_shape is not None:
            shape = _shape(input_shape)
            size = math.prod(shape)
            for i, r in enumerate(regions):
                if r.input_shape == shape:
                    continue
                if r.dim != size:
                    raise SpecError(
                        f"region {i} has {r.dim} inputs (shape {r.input_shape}) but the model takes "
                        f"{shape} = {size} inputs; use regions made for this model"
                    )
                regions[i] = r.with_shape(shape)
        props = list(self.properties)
        for i, p in enumerate(props):
            try:
                if p is None:
                    assert self.labels is not None  # __post_init__: a None property is a label's
                    props[i] = OutputProperty.label(int(self.labels[i]), n_outputs)
                else:
                    p.validate(n_outputs)
            except SpecError as exc:
                raise SpecError(f"region {i}: {exc}") from None
        return RegionSpec(tuple(regions), tuple(props), self.labels, self.names, source=self.source)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def _build(cls, regions: Sequence[Region], n: int, labels: Any, properties: Any, n_outputs: int | None,
               names: Sequence[str] | None, source: str | None = None) -> RegionSpec:
        if (labels is None) == (properties is None):
            raise SpecError("give either labels= or properties= (one output property per region), not both or neither")
        lab = None
        if labels is not None:
            raw = np.asarray(labels)
            if raw.ndim == 0:
                raw = np.full(n, raw)
            if raw.shape != (n,):
                raise SpecError(f"got labels of shape {raw.shape} for {n} regions; give one label per region")
            lab = np.array([_label_int(v, f"the label of region {i}") for i, v in enumerate(raw.tolist())], dtype=np.int64)
            props: list[OutputProperty | None] = [None] * n
            if n_outputs is not None:
                for i in range(n):
                    try:
                        props[i] = OutputProperty.label(int(lab[i]), int(n_outputs))
                    except SpecError as exc:
                        raise SpecError(f"region {i}: {exc}") from None
        else:
            if isinstance(properties, OutputProperty):
                props = [properties] * n
            else:
                props = list(properties)
                if len(props) != n:
                    raise SpecError(f"got {len(props)} properties for {n} regions; give one per region (or one for all)")
            if n_outputs is not None:
                for p in props:
                    if isinstance(p, OutputProperty):
                        p.validate(int(n_outputs))
        return cls(tuple(regions), tuple(props), lab, None if names is None else tuple(names), source=source)

    @classmethod
    def boxes(
        cls,
        lower: Any,
        upper: Any,
        *,
        labels: Any = None,
        properties: Any = None,
        n_outputs: int | None = None,
        names: Sequence[str] | None = None,
    ) -> RegionSpec:
        """Boxes from ``lower``/``upper`` of shape ``(n, *input_shape)``.

        ``labels`` (one per region, or one for all) or ``properties`` (one OutputProperty per
        region, or one for all). Labels stay unexpanded until :meth:`validate` unless ``n_outputs``
        is given.
        """
        lo = _floats(lower, "lower bounds")
        hi = _floats(upper, "upper bounds")
        if lo.shape != hi.shape or lo.ndim < 2:
            raise SpecError(
                f"lower has shape {lo.shape} and upper {hi.shape}; give both as (n_regions, *input_shape) "
                "(for one region add a leading axis)"
            )
        regions = []
        for i in range(lo.shape[0]):
            try:
                regions.append(Box(lo[i], hi[i]))
            except SpecError as exc:
                raise SpecError(f"region {i}: {exc}") from None
        return cls._build(regions, len(regions), labels, properties, n_outputs, names)

    @classmethod
    def linf(
        cls,
        points: Any,
        radius: Any,
        *,
        labels: Any = None,
        properties: Any = None,
        clip: tuple[float, float] | None = None,
        n_outputs: int | None = None,
        names: Sequence[str] | None = None,
    ) -> RegionSpec:
        """L-infinity balls of ``radius`` (a number, or one per point) around ``points`` ``(n, ...)``.

        ``clip=(lo, hi)`` intersects every ball with the valid input range, e.g. ``(0, 1)`` for
        pixels, so that no region contains inputs the model never sees.
        """
        x = _floats(points, "points")
        if x.ndim < 2:
            raise SpecError(f"points have shape {x.shape}; give (n_points, *input_shape) (add a leading axis for one)")
        r = _floats(radius, "radius")
        if r.ndim == 1 and r.shape[0] == x.shape[0]:
            r = r.reshape((-1,) + (1,) * (x.ndim - 1))
        elif r.ndim != 0:
            raise SpecError(f"radius has shape {r.shape}; give one number, or one per point ({x.shape[0]})")
        if not np.all(np.isfinite(r)) or np.any(r < 0):
            raise SpecError(f"the radius must be finite and >= 0, got {radius!r}")
        lo, hi = x - r, x + r
        if clip is not None:
            try:
                c_lo, c_hi = (float(v) for v in clip)
            except (TypeError, ValueError):
                raise SpecError(f"clip must be a pair (lo, hi) of numbers, got {clip!r}") from None
            if c_lo > c_hi:
                raise SpecError(f"clip=({c_lo}, {c_hi}) is empty; give lo <= hi")
            lo, hi = np.maximum(lo, c_lo), np.minimum(hi, c_hi)
        return cls.boxes(lo, hi, labels=labels, properties=properties, n_outputs=n_outputs, names=names)

    @classmethod
    def polytopes(
        cls,
        vertex_arrays: Any,
        *,
        labels: Any = None,
        properties: Any = None,
        n_outputs: int | None = None,
        names: Sequence[str] | None = None,
    ) -> RegionSpec:
        """V-polytopes from a list of ``(k_i, *input_shape)`` vertex arrays (or one ``(n, k, ...)`` array)."""
        if isinstance(vertex_arrays, np.ndarray) and vertex_arrays.ndim < 3:
            raise SpecError(
                f"vertices have shape {vertex_arrays.shape}; give (n_regions, k, *input_shape) or a list of (k, *input_shape)"
            )
        regions = []
        for i, v in enumerate(vertex_arrays):
            try:
                regions.append(VPolytope(v))
            except SpecError as exc:
                raise SpecError(f"region {i}: {exc}") from None
        return cls._build(regions, len(regions), labels, properties, n_outputs, names)

    # ------------------------------------------------------------------ files
    @classmethod
    def load(cls, path: str | os.PathLike[str], *, kind: str | None = None) -> RegionSpec:
        """Read a spec from ``.json``, ``.npz`` or ``.vnnlib`` (formats: module docstring).

        ``kind`` ('box', 'polytope', 'hpolytope' or 'vnnlib') says what the file must hold (e.g.
        the CLI's ``--box``); the format still follows the suffix, or the content for other suffixes.
        """
        if kind is not None and kind not in REGION_KINDS:
            raise SpecError(f"unknown region kind {kind!r}; use one of {', '.join(REGION_KINDS)}")
        p = Path(path)
        if not p.exists():
            raise InputError(f"no such file: {p}; check the region-spec path")
        if p.is_dir():
            raise InputError(f"{p} is a directory; give the region-spec file (.json, .npz or .vnnlib)")
        suffix = p.suffix.lower()
        if suffix not in (".json", ".npz", ".vnnlib"):
            if kind == "vnnlib":
                suffix = ".vnnlib"
            else:
                with open(p, "rb") as fh:
                    head = fh.read(2)
                suffix = ".npz" if head == b"PK" else ".json" if head[:1] in (b"{", b"[") else ".vnnlib"
        if suffix == ".vnnlib" or kind == "vnnlib":
            from .vnnlib import read_vnnlib

            spec = read_vnnlib(p)
        elif suffix == ".npz":
            spec = _read_npz(p)
        else:
            spec = _read_json(p)
        if kind in ("box", "polytope", "hpolytope"):
            for i, r in enumerate(spec.regions):
                if r.kind != kind:
                    raise SpecError(f"{p}: region {i} is a {r.kind} but a {kind} spec was asked for; pass the file with the right option")
        return spec

    def save(self, path: str | os.PathLike[str], *, protect: Sequence[str | os.PathLike[str]] = ()) -> None:
        """Write the spec atomically as ``.json``, ``.npz`` or ``.vnnlib`` (by suffix)."""
        p = Path(path)
        suffix = p.suffix.lower()
        if suffix == ".vnnlib":
            from .vnnlib import write_vnnlib

            write_vnnlib(self, p, protect=tuple(protect))
        elif suffix == ".json":
            write_text_atomic(p, json.dumps(self._json_doc()) + "\n", protect=tuple(protect))
        elif suffix == ".npz":
            arrays = self._npz_arrays()
            with atomic_path(p, protect=tuple(protect)) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, allow_pickle=True, **arrays)  # numpy's default, named so that **arrays type-checks
        else:
            raise SpecError(f"cannot tell the format of {p} from its suffix; use .json, .npz or .vnnlib")

    def _entry(self, i: int) -> dict[str, Any]:
        r = self.regions[i]
        d: dict[str, Any] = {}
        if self.names is not None:
            d["name"] = self.names[i]
        if isinstance(r, VPolytope):
            d["vertices"] = r.vertices.tolist()
        else:
            assert isinstance(r, (Box, HPolytope))  # the three region kinds
            d["lower"] = r.lower.tolist()
            d["upper"] = r.upper.tolist()
            if isinstance(r, HPolytope):
                d["input_A"] = r.A.tolist()
                d["input_b"] = r.b.tolist()
        p = self.properties[i]
        if self.labels is not None and self.labels[i] >= 0:
            d["label"] = int(self.labels[i])
        elif p is not None and (conj := p.required_conjunction()) is not None:  # None unless conjunctive
            d["A"], d["b"] = conj[0].tolist(), conj[1].tolist()
        elif p is not None:
            d["unsafe"] = p.to_dict()["unsafe"]
        return d

    def _json_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        if self.n_outputs is not None:
            doc["n_outputs"] = self.n_outputs
        kinds = {r.kind for r in self.regions}
        entries = [self._entry(i) for i in range(len(self))]
        if len(kinds) == 1:
            doc[_JSON_KEY[kinds.pop()]] = entries
        else:
            doc["regions"] = [{"kind": r.kind, **e} for r, e in zip(self.regions, entries)]
        return doc

    def _npz_arrays(self) -> dict[str, np.ndarray]:
        kinds = {r.kind for r in self.regions}
        out: dict[str, np.ndarray] = {}
        if kinds == {"box"}:
            boxes = [r for r in self.regions if isinstance(r, Box)]  # all of them
            out["lower"] = np.stack([r.lower for r in boxes])
            out["upper"] = np.stack([r.upper for r in boxes])
        elif kinds == {"polytope"}:
            polys = [r for r in self.regions if isinstance(r, VPolytope)]  # all of them
            ks = {r.n_vertices for r in polys}
            if len(ks) != 1:
                raise SpecError(f"the polytopes have different vertex counts {sorted(ks)}; NPZ needs equal counts, save as .json")
            out["vertices"] = np.stack([r.vertices for r in polys])
        else:
            raise SpecError(f"NPZ stores only boxes or only V-polytopes, this spec has {', '.join(sorted(kinds))}; save as .json or .vnnlib")
        if self.labels is not None and np.all(self.labels >= 0):
            out["labels"] = self.labels.copy()
        else:
            conj = [p.required_conjunction() if p is not None else None for p in self.properties]
            reqs = [c for c in conj if c is not None]
            if len(reqs) != len(conj) or len({c[0].shape for c in reqs}) != 1:
                raise SpecError(
                    "NPZ stores labels or required conjunctions A y <= b with the same row count for every region; "
                    "this spec has other properties, save it as .json"
                )
            out["A"] = np.stack([c[0] for c in reqs])
            out["b"] = np.stack([c[1] for c in reqs])
        if self.names is not None:
            out["names"] = np.array(self.names, dtype=str)
        if self.n_outputs is not None:
            out["n_outputs"] = np.array(self.n_outputs)
        return out


_JSON_KEY = {"box": "boxes", "polytope": "polytopes", "hpolytope": "hpolytopes"}
_JSON_KIND = {v: k for k, v in _JSON_KEY.items()}


# ---------------------------------------------------------------------- readers
def _read_json(p: Path) -> RegionSpec:
    doc = read_json_document(p, "region spec")
    if not isinstance(doc, dict):
        raise SpecError(f'{p}: expected a JSON object such as {{"boxes": [...]}}; see provrepair.specs.regions for the format')
    keys = [k for k in ("boxes", "polytopes", "hpolytopes", "regions") if k in doc]
    if len(keys) != 1:
        raise SpecError(
            f'{p}: expected exactly one of the fields "boxes", "polytopes", "hpolytopes" or "regions", '
            f"found {keys or sorted(doc)}; see provrepair.specs.regions for the format"
        )
    key = keys[0]
    items = doc[key]
    if not isinstance(items, list) or not items:
        raise SpecError(f'{p}: field "{key}" must be a non-empty list of region objects')
    n_outputs = doc.get("n_outputs")
    if n_outputs is not None and (isinstance(n_outputs, bool) or not isinstance(n_outputs, int) or n_outputs < 1):
        raise SpecError(f'{p}: field "n_outputs" must be a positive integer, got {n_outputs!r}')
    regions: list[Region] = []
    props: list[OutputProperty | None] = []
    labels: list[int] = []
    names: list[str | None] = []
    for i, item in enumerate(items):
        where = f"{p}: {key}[{i}]"
        if not isinstance(item, dict):
            raise SpecError(f"{where} must be an object")
        kind = _JSON_KIND.get(key) or item.get("kind")
        if kind not in _JSON_KEY:
            raise SpecError(f'{where}: field "kind" must be "box", "polytope" or "hpolytope", got {item.get("kind")!r}')
        need = ("vertices",) if kind == "polytope" else ("lower", "upper") + (("input_A", "input_b") if kind == "hpolytope" else ())
        for f in need:
            if f not in item:
                raise SpecError(f'{where} has no field "{f}"; a {kind} needs {", ".join(need)}')
        try:
            if kind == "box":
                regions.append(Box(_floats(item["lower"], "lower"), _floats(item["upper"], "upper")))
            elif kind == "polytope":
                verts = _floats(item["vertices"], "vertices")
                if verts.ndim >= 1 and verts.shape[0] == 1:
                    raise SpecError(_ONE_VERTEX.format(where="its vertices"))
                regions.append(VPolytope(verts))
            else:
                regions.append(HPolytope(item["input_A"], item["input_b"], _floats(item["lower"], "lower"), _floats(item["upper"], "upper")))
            given = [f for f in ("label", "A", "unsafe") if f in item]
            if len(given) != 1:
                raise SpecError(
                    f'needs exactly one of "label", "A"/"b" (required rows) or "unsafe" (disjuncts), found {given or "none"}'
                )
            if "label" in item:
                lab = _label_int(item["label"], "field \"label\"")
                labels.append(lab)
                props.append(None if n_outputs is None else OutputProperty.label(lab, n_outputs))
            else:
                labels.append(NO_LABEL)
                props.append(OutputProperty.from_dict(item, n_outputs))
        except SpecError as exc:
            raise SpecError(f"{where}: {exc}") from None
        name = item.get("name")
        names.append(None if name is None else str(name))
    has_names = any(nm is not None for nm in names)
    spec_names = tuple(nm if nm is not None else str(i) for i, nm in enumerate(names)) if has_names else None
    lab_arr = np.asarray(labels, dtype=np.int64) if any(v >= 0 for v in labels) else None
    try:
        return RegionSpec(tuple(regions), tuple(props), lab_arr, spec_names, source=str(p))
    except SpecError as exc:
        raise SpecError(f"{p}: {exc}") from None


def _read_npz(p: Path) -> RegionSpec:
    try:
        with open(p, "rb") as fh, np.load(fh, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except NPZ_ERRORS as exc:
        raise SpecError(f"cannot read the region spec {p} as .npz ({type(exc).__name__}: {exc}); re-save it with numpy.savez") from None
    found = ", ".join(sorted(arrays)) or "none"
    n_outputs = None
    if "n_outputs" in arrays:
        v = arrays["n_outputs"]
        if v.shape != () or v.dtype.kind not in "iu" or int(v) < 1:
            raise SpecError(f"{p}: field 'n_outputs' must be a positive integer scalar, got {v!r}")
        n_outputs = int(v)
    if "vertices" in arrays:
        verts = _floats(arrays["vertices"], f"{p}: field 'vertices'")
        if verts.ndim < 3:
            raise SpecError(f"{p}: field 'vertices' has shape {verts.shape}; give (n_regions, k, *input_shape)")
        if verts.shape[1] == 1:
            raise SpecError(_ONE_VERTEX.format(where=f"{p}: field 'vertices'"))
        n = verts.shape[0]
    elif "lower" in arrays and "upper" in arrays:
        lo = _floats(arrays["lower"], f"{p}: field 'lower'")
        hi = _floats(arrays["upper"], f"{p}: field 'upper'")
        if lo.shape != hi.shape or lo.ndim < 2:
            raise SpecError(f"{p}: fields 'lower' {lo.shape} and 'upper' {hi.shape} must both be (n_regions, *input_shape)")
        n = lo.shape[0]
    else:
        raise SpecError(f"{p} holds no regions: expected 'lower' and 'upper', or 'vertices'; keys found: {found}")
    labels = properties = None
    if "labels" in arrays:
        labels = arrays["labels"]
        if labels.shape != (n,):
            raise SpecError(f"{p}: field 'labels' has shape {labels.shape}; give one label per region ({n})")
    elif "A" in arrays and "b" in arrays:
        A = _floats(arrays["A"], f"{p}: field 'A'")
        b = _floats(arrays["b"], f"{p}: field 'b'")
        if A.ndim != 3 or b.shape != A.shape[:2] or A.shape[0] != n:
            raise SpecError(
                f"{p}: fields 'A' {A.shape} and 'b' {b.shape} must be (n_regions, r, n_outputs) and (n_regions, r) with n_regions={n}"
            )
        try:
            properties = [OutputProperty.required_all(A[i], b[i]) for i in range(n)]
        except SpecError as exc:
            raise SpecError(f"{p}: fields 'A'/'b': {exc}") from None
    else:
        raise SpecError(f"{p} has no output property: expected 'labels', or 'A' and 'b'; keys found: {found}")
    names = [str(s) for s in arrays["names"].tolist()] if "names" in arrays else None
    try:
        if "vertices" in arrays:
            spec = RegionSpec.polytopes(list(verts), labels=labels, properties=properties, n_outputs=n_outputs, names=names)
        else:
            spec = RegionSpec.boxes(lo, hi, labels=labels, properties=properties, n_outputs=n_outputs, names=names)
    except SpecError as exc:
        raise SpecError(f"{p}: {exc}") from None
    return RegionSpec(spec.regions, spec.properties, spec.labels, spec.names, source=str(p))
