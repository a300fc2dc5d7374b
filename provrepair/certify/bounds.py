"""Sound bounds on a network's outputs over input regions: interval (IBP) and CROWN linear bounds.

Both work on a canonical network (``provrepair.models``) for a batch of regions at once, in
float64 on the device the caller picks. A region is a box, or a V-polytope whose linear bounds are
concretised at its vertices (exact for a linear function over the hull, so tighter than its box).

CROWN walks the network backwards from a linear function ``C y`` of the outputs, replacing each
ReLU by two lines that enclose it on its input interval ``[l, u]``:

* upper: the chord through ``(l, 0)`` and ``(u, u)``;
* lower: ``a * x`` with ``a = 1`` when ``u >= -l``, else ``a = 0``;

and each MaxPool window by ``x_i*`` below (``i*`` = the input with the largest lower bound) and the
largest upper bound above (or ``x_i*`` on both sides when ``i*`` dominates its window). The
intervals ``[l, u]`` of every ReLU and MaxPool input are themselves CROWN bounds, computed layer
by layer, and only for ReLU inputs whose interval bounds leave them unstable (stable neurons are
relaxed exactly whatever their bounds). Every bound is intersected with the interval bound, so
CROWN is never looser than IBP.

Soundness is with respect to real arithmetic on the float32 weights, evaluated in float64.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias, TypedDict

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import torch
import torch.nn.functional as F
import torch.nn.grad
from torch import nn
from torch.types import Device

from ..errors import InputError, UnsupportedLayerError
from ..models import Normalize, get_meta

__all__ = ["AFFINE", "MAXPOOL", "METHODS", "RELU", "BoundPropagator", "InputSet", "NetworkBounds", "as_tensor",
           "crown_bounds", "ibp_bounds"]

METHODS = ("ibp", "crown")

DTYPE = torch.float64

#: Largest number of float64 entries one backward pass may hold in its coefficient tensor; the
#: rows of an intermediate layer are processed in chunks below it.
MAX_COEFFICIENTS = 2**24

#: An operator's ``kind``: what another encoding of the network (the complete MILP) must do with it.
#: An affine operator gives its map through ``matrix``; a MaxPool its windows through ``index``/``hw``.
AFFINE: Final = "affine"
RELU: Final = "relu"
MAXPOOL: Final = "maxpool"

#: Rows of an affine map's identity pushed through its transpose at once when building its matrix.
_MATRIX_CHUNK = 2048


def as_tensor(v: npt.ArrayLike | torch.Tensor, device: Device = None) -> torch.Tensor:
    """A float64 tensor; numpy inputs are copied (spec arrays are read-only)."""
    if isinstance(v, torch.Tensor):
        return v.to(device=device, dtype=DTYPE)
    return torch.from_numpy(np.array(v, dtype=np.float64)).to(device)


# ----------------------------------------------------------------------------- input regions


@dataclass
class InputSet:
    """A batch of input regions: boxes, or V-polytopes (``vertices``; ``lower``/``upper`` is then
    their bounding box). V-polytopes with fewer vertices than others repeat their first vertex."""

    lower: torch.Tensor  # (B, *input_shape)
    upper: torch.Tensor
    vertices: torch.Tensor | None = None  # (B, K, *input_shape)

    @classmethod
    def box(cls, lower: npt.ArrayLike | torch.Tensor, upper: npt.ArrayLike | torch.Tensor, *,
            device: Device = None) -> InputSet:
        lo = as_tensor(lower, device)
        hi = as_tensor(upper, device)
        if lo.shape != hi.shape:
            raise InputError(f"box lower and upper differ in shape: {tuple(lo.shape)} vs {tuple(hi.shape)}")
        if bool((lo > hi).any()):
            raise InputError("a box has lower > upper; give lower <= upper everywhere")
        return cls(lo, hi)

    @classmethod
    def polytopes(cls, vertex_sets: Iterable[npt.ArrayLike | torch.Tensor], *, device: Device = None) -> InputSet:
        sets = [as_tensor(v, device) for v in vertex_sets]
        if not sets or any(v.ndim < 2 or v.shape[0] == 0 for v in sets):
            raise InputError("each V-polytope needs at least one vertex, as an array (k, *input_shape)")
        shape = sets[0].shape[1:]
        if any(v.shape[1:] != shape for v in sets):
            raise InputError("all V-polytopes of one batch must have vertices of the same shape")
        k = max(v.shape[0] for v in sets)
        padded = torch.stack([torch.cat([v, v[:1].expand(k - v.shape[0], *shape)]) for v in sets])
        return cls(padded.amin(1), padded.amax(1), padded)

    @property
    def batch(self) -> int:
        return self.lower.shape[0]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.lower.shape[1:])

    def concretize_lower(self, lam: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """min over the region of ``lam . x + bias`` for lam (B, m, *shape), bias (B, m)."""
        flat = lam.reshape(lam.shape[0], lam.shape[1], -1)
        if self.vertices is not None:
            v = self.vertices.reshape(self.vertices.shape[0], self.vertices.shape[1], -1)
            return torch.bmm(flat, v.transpose(1, 2)).amin(2) + bias
        c = ((self.lower + self.upper) / 2).reshape(self.batch, -1, 1)
        r = ((self.upper - self.lower) / 2).reshape(self.batch, -1, 1)
        return (torch.bmm(flat, c) - torch.bmm(flat.abs(), r)).squeeze(2) + bias


# ----------------------------------------------------------------------------- layers as operators


class _Affine:
    """An affine map ``x -> L x + c`` with its transpose, on (N, *shape) batches."""

    kind: Literal["affine"] = AFFINE
    mixing = True  # False for maps that act on each coordinate alone (interval bounds stay exact)

    def apply(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def back(self, lam: torch.Tensor) -> torch.Tensor:
        """``lam L``: lam (N, *out_shape) -> (N, *in_shape)."""
        raise NotImplementedError

    def bias_dot(self, lam: torch.Tensor) -> torch.Tensor:
        """``lam . c`` for lam (N, *out_shape) -> (N,)."""
        return lam.new_zeros(lam.shape[0])

    def matrix(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...],
               device: Device) -> tuple[sp.csr_matrix, np.ndarray]:
        """The map on flattened tensors as ``(L, c)`` with ``y = L x + c``: an exact encoding for a
        solver. This default rebuilds ``L`` from ``back`` in row chunks; layers that hold ``L``
        directly override it."""
        n_in, n_out = int(np.prod(in_shape)), int(np.prod(out_shape))
        blocks = []
        for start in range(0, n_out, _MATRIX_CHUNK):
            rows = torch.arange(start, min(n_out, start + _MATRIX_CHUNK), device=device)
            eye = torch.zeros((rows.numel(), n_out), dtype=DTYPE, device=device)
            eye[torch.arange(rows.numel(), device=device), rows] = 1.0
            back = self.back(eye.reshape(-1, *out_shape)).reshape(rows.numel(), n_in)
            blocks.append(sp.csr_matrix(back.cpu().numpy()))
        return sp.vstack(blocks, format="csr"), self._offset(in_shape, device)

    def _offset(self, in_shape: tuple[int, ...], device: Device) -> np.ndarray:
        """``c``, the image of the zero input, flattened."""
        return self.apply(torch.zeros((1, *in_shape), dtype=DTYPE, device=device)).reshape(-1).cpu().numpy()


class _Linear(_Affine):
    def __init__(self, m: nn.Linear, device: Device):
        self.w = m.weight.detach().to(device, DTYPE)
        self.b = (m.bias.detach().to(device, DTYPE) if m.bias is not None
                  else torch.zeros(m.out_features, dtype=DTYPE, device=device))
        self.w_abs = self.w.abs()

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w.T + self.b

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c, r = (lo + hi) / 2, (hi - lo) / 2
        mid, rad = c @ self.w.T + self.b, r @ self.w_abs.T
        return mid - rad, mid + rad

    def back(self, lam: torch.Tensor) -> torch.Tensor:
        return lam @ self.w

    def bias_dot(self, lam: torch.Tensor) -> torch.Tensor:
        return lam @ self.b

    def matrix(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...],
               device: Device) -> tuple[sp.csr_matrix, np.ndarray]:
        return sp.csr_matrix(self.w.cpu().numpy()), self._offset(in_shape, device)


class _ConvArgs(TypedDict):
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int


class _Conv(_Affine):
    def __init__(self, m: nn.Conv2d, in_shape: tuple[int, ...], device: Device):
        self.w = m.weight.detach().to(device, DTYPE)
        self.b = m.bias.detach().to(device, DTYPE) if m.bias is not None else None
        self.w_abs = self.w.abs()
        assert not isinstance(m.padding, str)  # BoundPropagator._compile rejects string padding
        self.kw = _ConvArgs(stride=m.stride, padding=m.padding, dilation=m.dilation, groups=m.groups)
        self.in_shape = tuple(in_shape)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.w, self.b, **self.kw)

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c, r = (lo + hi) / 2, (hi - lo) / 2
        mid, rad = F.conv2d(c, self.w, self.b, **self.kw), F.conv2d(r, self.w_abs, None, **self.kw)
        return mid - rad, mid + rad

    def back(self, lam: torch.Tensor) -> torch.Tensor:
        # torch.nn.grad.conv2d_input carries no annotations (its result is a Tensor)
        g: torch.Tensor = torch.nn.grad.conv2d_input(  # type: ignore[no-untyped-call]
            (lam.shape[0], *self.in_shape), self.w, lam, **self.kw)
        return g

    def bias_dot(self, lam: torch.Tensor) -> torch.Tensor:
        if self.b is None:
            return lam.new_zeros(lam.shape[0])
        return lam.sum((2, 3)) @ self.b


class _Elementwise(_Affine):
    """``x * scale + shift`` per coordinate (Normalize)."""

    mixing = False

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor, shape: tuple[int, ...]):
        self.scale = scale.expand(shape).contiguous()
        self.shift = shift.expand(shape).contiguous()

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = lo * self.scale + self.shift, hi * self.scale + self.shift
        return torch.minimum(a, b), torch.maximum(a, b)

    def back(self, lam: torch.Tensor) -> torch.Tensor:
        return lam * self.scale

    def bias_dot(self, lam: torch.Tensor) -> torch.Tensor:
        return (lam * self.shift).flatten(1).sum(1)

    def matrix(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...],
               device: Device) -> tuple[sp.csr_matrix, np.ndarray]:
        return sp.diags(self.scale.reshape(-1).cpu().numpy(), format="csr"), self._offset(in_shape, device)


class _Reshape(_Affine):
    mixing = False

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]):
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.out_shape)

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.apply(lo), self.apply(hi)

    def back(self, lam: torch.Tensor) -> torch.Tensor:
        return lam.reshape(lam.shape[0], *self.in_shape)

    def matrix(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...],
               device: Device) -> tuple[sp.csr_matrix, np.ndarray]:
        return sp.identity(int(np.prod(in_shape)), format="csr"), self._offset(in_shape, device)


class _AvgPool(_Affine):
    """Average pooling: linear with non-negative weights; the transpose comes from autograd."""

    def __init__(self, m: nn.Module, in_shape: tuple[int, ...]):
        self.m = m
        self.in_shape = tuple(in_shape)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.m(x)  # Module.__call__ is typed as returning Any
        return y

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.m(lo), self.m(hi)

    def back(self, lam: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x = torch.zeros((lam.shape[0], *self.in_shape), dtype=lam.dtype, device=lam.device, requires_grad=True)
            (g,) = torch.autograd.grad(self.m(x), x, grad_outputs=lam)
        return g


class _ReLU:
    kind: Literal["relu"] = RELU

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return lo.clamp(min=0), hi.clamp(min=0)

    @staticmethod
    def relax(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Slopes (lower, upper) and the upper line's intercept, per neuron."""
        active, inactive = lo >= 0, hi <= 0
        unstable = ~(active | inactive)
        lower = torch.where(unstable, (hi >= -lo).to(lo.dtype), active.to(lo.dtype))
        denom = torch.where(unstable, hi - lo, torch.ones_like(lo))
        upper = torch.where(unstable, hi / denom, active.to(lo.dtype))
        intercept = torch.where(unstable, -upper * lo, torch.zeros_like(lo))
        return lower, upper, intercept

    def back_lower(self, lam: torch.Tensor, bias: torch.Tensor, lo: torch.Tensor,
                   hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, s, t = self.relax(lo, hi)
        pos, neg = lam.clamp(min=0), lam.clamp(max=0)
        bias = bias + (neg * t.unsqueeze(1)).flatten(2).sum(2)
        return pos * a.unsqueeze(1) + neg * s.unsqueeze(1), bias


class _MaxPool:
    """``index`` (K, L): the input position of each window slot, padding at the sentinel ``hw``."""

    kind: Literal["maxpool"] = MAXPOOL

    def __init__(self, m: nn.MaxPool2d, in_shape: tuple[int, ...], device: Device):
        if m.ceil_mode:
            raise UnsupportedLayerError(
                "MaxPool2d with ceil_mode=True is not supported by bound propagation; "
                "use ceil_mode=False (pad the input instead)")
        self.m = m
        c, h, w = in_shape
        self.in_shape = tuple(in_shape)
        self.kw = dict(kernel_size=m.kernel_size, stride=m.stride, padding=m.padding, dilation=m.dilation)
        idx = torch.arange(h * w, dtype=DTYPE, device=device).reshape(1, 1, h, w) + 1
        cols = F.unfold(idx, m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)[0] - 1
        # (K, L) input position of each window slot; padding points at a sentinel column h*w.
        self.index = torch.where(cols < 0, torch.full_like(cols, h * w), cols).long()
        self.hw = h * w

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kw = self.kw
        return (F.max_pool2d(lo, kw["kernel_size"], kw["stride"], kw["padding"], kw["dilation"]),
                F.max_pool2d(hi, kw["kernel_size"], kw["stride"], kw["padding"], kw["dilation"]))

    def _windows(self, v: torch.Tensor, fill: float) -> torch.Tensor:
        b, c = v.shape[:2]
        ext = torch.cat([v.reshape(b, c, self.hw), v.new_full((b, c, 1), fill)], 2)
        return ext[:, :, self.index]  # (B, C, K, L)

    def relax(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per window: the input position of x_i*, whether it dominates, and the largest upper bound."""
        lw, uw = self._windows(lo, -torch.inf), self._windows(hi, -torch.inf)
        lstar, istar = lw.max(2)
        umax = uw.amax(2)
        others = uw.scatter(2, istar.unsqueeze(2), -torch.inf).amax(2)
        dominated = lstar >= others
        pos = self.index[istar, torch.arange(istar.shape[-1], device=istar.device)]
        return pos, dominated, umax

    def back_lower(self, lam: torch.Tensor, bias: torch.Tensor, lo: torch.Tensor,
                   hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pos, dominated, umax = self.relax(lo, hi)
        b, m, c = lam.shape[:3]
        lam = lam.reshape(b, m, c, -1)
        p, n = lam.clamp(min=0), lam.clamp(max=0)
        dom = dominated.unsqueeze(1).to(lam.dtype)
        coeff = p + n * dom
        bias = bias + (n * (1 - dom) * umax.unsqueeze(1)).sum((2, 3))
        out = lam.new_zeros(b, m, c, self.hw + 1)
        out.scatter_add_(3, pos.unsqueeze(1).expand(b, m, c, pos.shape[-1]), coeff)
        return out[..., : self.hw].reshape(b, m, *self.in_shape), bias


#: The operators a ``BoundPropagator`` compiles a network into (``BoundPropagator.ops``), told
#: apart by their ``kind``: ``op.kind == AFFINE`` narrows an ``Operator`` to an ``AffineOp``.
AffineOp: TypeAlias = _Affine
ReluOp: TypeAlias = _ReLU
MaxPoolOp: TypeAlias = _MaxPool
Operator: TypeAlias = AffineOp | ReluOp | MaxPoolOp


# ----------------------------------------------------------------------------- the propagator


@dataclass
class NetworkBounds:
    """Bounds of ``C y`` per region (B, m), and the interval of every ReLU/MaxPool input, keyed by
    the module index in the network (each (B, *shape)); the complete check takes its big-M from them."""

    lower: torch.Tensor
    upper: torch.Tensor
    method: str
    pre: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    coefficients: torch.Tensor | None = None  # CROWN: (B, m, *input_shape) of the lower bounds


class BoundPropagator:
    """A network compiled for bound propagation (float64 copies of its weights, on ``device``)."""

    def __init__(self, net: nn.Sequential, input_shape: Sequence[int] | None = None, *, device: Device = None):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        shape = tuple(input_shape or get_meta(net).input_shape or ())
        if not shape:
            raise InputError("the network's input shape is unknown; pass input_shape=")
        self.input_shape = shape
        self.ops: list[Operator] = []
        self.shapes: list[tuple[int, ...]] = [shape]  # shapes[i] = input shape of op i
        x = torch.zeros((1, *shape), dtype=DTYPE, device=self.device)
        for i, m in enumerate(net):
            op = self._compile(i, m, tuple(x.shape[1:]))
            x = op.apply(x) if isinstance(op, _Affine) else op.interval(x, x)[0]
            self.ops.append(op)
            self.shapes.append(tuple(x.shape[1:]))
        self.output_shape = self.shapes[-1]
        self.n_outputs = int(torch.tensor(self.output_shape).prod()) if self.output_shape else 1

    def _compile(self, i: int, m: nn.Module, in_shape: tuple[int, ...]) -> Operator:
        t = type(m)
        if type(m) is nn.Linear:
            return _Linear(m, self.device)
        if type(m) is nn.Conv2d:
            if isinstance(m.padding, str) or m.padding_mode != "zeros":
                raise UnsupportedLayerError(f"module {i}: Conv2d with padding {m.padding!r}/{m.padding_mode!r} "
                                            "is not supported; use numeric zero padding")
            return _Conv(m, in_shape, self.device)
        if type(m) is nn.ReLU:
            return _ReLU()
        if type(m) is nn.MaxPool2d:
            return _MaxPool(m, in_shape, self.device)
        if type(m) is nn.Flatten:
            out = nn.Flatten(m.start_dim, m.end_dim)(torch.zeros(1, *in_shape)).shape[1:]
            return _Reshape(in_shape, out)
        if t in (nn.AvgPool2d, nn.AdaptiveAvgPool2d):
            return _AvgPool(m, in_shape)
        if type(m) is Normalize:
            std, mean = m.std, m.mean  # buffers, which nn.Module's __getattr__ types as Tensor | Module
            assert isinstance(std, torch.Tensor) and isinstance(mean, torch.Tensor)
            std, mean = std.detach().to(self.device, DTYPE), mean.detach().to(self.device, DTYPE)
            return _Elementwise(1 / std, -mean / std, in_shape)
        raise UnsupportedLayerError(
            f"module {i} ({t.__name__}) is not supported by bound propagation; it handles Linear, Conv2d, "
            "ReLU, Flatten, AvgPool2d, AdaptiveAvgPool2d, MaxPool2d and Normalize (load the model with "
            "provrepair.load_model to fold BatchNorm)")

    # -- helpers

    def _spec(self, C: npt.ArrayLike | torch.Tensor | None, batch: int) -> torch.Tensor:
        if C is None:
            C = torch.eye(self.n_outputs, dtype=DTYPE, device=self.device)
        C = as_tensor(C, self.device)
        if C.ndim == 2:
            C = C.unsqueeze(0).expand(batch, *C.shape)
        if C.ndim != 3 or C.shape[0] != batch or C.shape[2] != self.n_outputs:
            raise InputError(f"the spec matrix C must be (m, {self.n_outputs}) or ({batch}, m, {self.n_outputs}); "
                             f"got {tuple(C.shape)}")
        return C.reshape(batch, C.shape[1], *self.output_shape)

    def _check_input(self, inp: InputSet) -> None:
        if inp.shape != self.input_shape:
            raise InputError(f"the regions have shape {inp.shape} but the network takes {self.input_shape}")

    def _backward(self, end: int, lam: torch.Tensor, inp: InputSet, pre: dict[int, tuple[torch.Tensor, torch.Tensor]],
                  keep: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Lower bound over each region of ``lam . z_end`` (z_end = output of op end-1); ``keep``
        receives the coefficients at the input."""
        b, m = lam.shape[:2]
        bias = lam.new_zeros(b, m)
        for i in range(end - 1, -1, -1):
            op = self.ops[i]
            if isinstance(op, _Affine):
                flat = lam.reshape(b * m, *self.shapes[i + 1])
                bias = bias + op.bias_dot(flat).reshape(b, m)
                lam = op.back(flat).reshape(b, m, *self.shapes[i])
            else:
                lam, bias = op.back_lower(lam, bias, *pre[i])
        if keep is not None:
            keep.append(lam)
        return inp.concretize_lower(lam, bias)

    def _node_bounds(self, i: int, inp: InputSet, pre: dict[int, tuple[torch.Tensor, torch.Tensor]],
                     lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CROWN bounds of the input of op ``i``, tightening (lo, hi) where it is needed."""
        shape = self.shapes[i]
        n = lo[0].numel()
        if isinstance(self.ops[i], _ReLU):
            # a region's own stable neurons keep their interval bounds, so that its bounds do not
            # depend on which other regions share the batch
            wanted = ((lo < 0) & (hi > 0)).reshape(lo.shape[0], -1)
        else:
            wanted = torch.ones((lo.shape[0], n), dtype=torch.bool, device=lo.device)
        rows = wanted.any(0).nonzero().flatten()
        if rows.numel() == 0:
            return lo, hi
        b = inp.batch
        widest = max(int(torch.tensor(s).prod()) for s in self.shapes[: i + 1])
        chunk = max(1, MAX_COEFFICIENTS // max(1, 2 * b * widest))
        lo_flat, hi_flat = lo.reshape(b, -1).clone(), hi.reshape(b, -1).clone()
        for start in range(0, rows.numel(), chunk):
            r = rows[start:start + chunk]
            k = r.numel()
            lam = torch.zeros(b, 2 * k, n, dtype=DTYPE, device=self.device)
            ar = torch.arange(k, device=self.device)
            lam[:, ar, r] = 1.0
            lam[:, k + ar, r] = -1.0
            bound = self._backward(i, lam.reshape(b, 2 * k, *shape), inp, pre)
            use = wanted[:, r]
            lo_flat[:, r] = torch.where(use, torch.maximum(lo_flat[:, r], bound[:, :k]), lo_flat[:, r])
            hi_flat[:, r] = torch.where(use, torch.minimum(hi_flat[:, r], -bound[:, k:]), hi_flat[:, r])
        return lo_flat.reshape(lo.shape), hi_flat.reshape(hi.shape)

    def _tail_interval(self, C: torch.Tensor, start: int, lo: torch.Tensor,
                       hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bounds of ``C y`` from the interval of the input of op ``start``, through the affine ops
        after it with ``C`` folded in: never looser than bounding ``C`` over the output's
        interval, and exact for the last layer over a box of its inputs, which is the guarantee a
        last-layer repair over interval hulls gives (``repair.polytope``, ``hull='interval'``)."""
        b, m = C.shape[:2]
        lam, bias = C, C.new_zeros(b, m)
        for i in range(len(self.ops) - 1, start - 1, -1):
            op = self.ops[i]
            assert isinstance(op, _Affine)  # every op after the last nonlinear one is affine
            flat = lam.reshape(b * m, *self.shapes[i + 1])
            bias = bias + op.bias_dot(flat).reshape(b, m)
            lam = op.back(flat).reshape(b, m, *self.shapes[i])
        pos, neg = lam.clamp(min=0).flatten(2), lam.clamp(max=0).flatten(2)
        lo_f, hi_f = lo.reshape(b, -1, 1), hi.reshape(b, -1, 1)
        lower = bias + (torch.bmm(pos, lo_f) + torch.bmm(neg, hi_f)).squeeze(2)
        upper = bias + (torch.bmm(pos, hi_f) + torch.bmm(neg, lo_f)).squeeze(2)
        return lower, upper

    # -- public

    @torch.no_grad()
    def bounds(self, inp: InputSet, C: npt.ArrayLike | torch.Tensor | None = None, *,
               method: str = "crown") -> NetworkBounds:
        """Lower and upper bounds of ``C y`` over each region (C defaults to the identity)."""
        if method not in METHODS:
            raise InputError(f"unknown bound method {method!r}; choose one of {', '.join(METHODS)}")
        self._check_input(inp)
        C = self._spec(C, inp.batch)
        lo, hi = inp.lower, inp.upper
        pre: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        mixing = 0  # mixing affine maps since the input or the last nonlinear layer
        nonlinear_seen = False
        tail = (0, lo, hi)  # the first op of the affine tail, and the interval of its input
        for i, op in enumerate(self.ops):
            if isinstance(op, _Affine):
                mixing += op.mixing
            else:
                ibp_exact = not nonlinear_seen and mixing <= 1 and inp.vertices is None
                if method == "crown" and mixing and not ibp_exact:
                    lo, hi = self._node_bounds(i, inp, pre, lo, hi)
                pre[i] = (lo, hi)
                nonlinear_seen, mixing = True, 0
            lo, hi = op.interval(lo, hi)
            if not isinstance(op, _Affine):
                tail = (i + 1, lo, hi)
        lower, upper = self._tail_interval(C, *tail)
        if method == "crown":
            m = C.shape[1]
            keep: list[torch.Tensor] = []
            both = self._backward(len(self.ops), torch.cat([C, -C], 1), inp, pre, keep)
            lower = torch.maximum(lower, both[:, :m])
            upper = torch.minimum(upper, -both[:, m:])
            return NetworkBounds(lower=lower, upper=upper, method=method, pre=pre, coefficients=keep[0][:, :m])
        return NetworkBounds(lower=lower, upper=upper, method=method, pre=pre)


def ibp_bounds(net: nn.Sequential, inp: InputSet, C: npt.ArrayLike | torch.Tensor | None = None) -> NetworkBounds:
    return BoundPropagator(net, inp.shape, device=inp.lower.device).bounds(inp, C, method="ibp")


def crown_bounds(net: nn.Sequential, inp: InputSet, C: npt.ArrayLike | torch.Tensor | None = None) -> NetworkBounds:
    return BoundPropagator(net, inp.shape, device=inp.lower.device).bounds(inp, C, method="crown")
