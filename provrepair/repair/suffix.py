"""The network after the repair layer, made linear by fixing each point's activation pattern.

With layers before ``k`` unchanged and every ReLU after ``k`` held to the original network's
pattern at a point, each later quantity (a pre-activation, an output) is an affine function of
the layer-``k`` output ``u`` and of the later bias deltas. This module computes the rows of those
affine maps exactly, by pulling linear functionals back through the suffix one module at a time
(a vector-Jacobian product at the point's own activations), batched over many rows.

A max-pool after ``k`` is held to its original argmax the same way a ReLU is held to its
pattern: with the chosen input of each window fixed, the pool is a selection (linear), and the
choice stays right while the chosen input is >= every other input of its window. Those
"max-pool pattern" rows (one per window and other member) are pattern rows like the ReLU's.
Average pools are linear maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UnsupportedLayerError

AFFINE = (nn.Linear, nn.Conv2d)
_LINEAR_PULLBACK = (nn.Conv2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)


@dataclass
class Rows:
    """Affine rows ``coef_u @ u_p + sum_j coef_b[j] @ db_j + const`` for a batch of functionals."""

    point: np.ndarray  # (E,) point of each row
    coef_u: np.ndarray  # (E, n_k) over the flattened layer-k output
    coef_b: dict[int, np.ndarray]  # module index of a later affine layer -> (E, bias size)
    const: np.ndarray  # (E,) value at u = u0_p, db = 0 minus coef_u @ u0_p


class Suffix:
    """Original activations of the repair points from the repair layer on, in float64.

    ``net`` must already be float64 and in eval mode; ``k`` is the module index of the repair layer.
    """

    def __init__(self, net: nn.Sequential, k: int, h: torch.Tensor, patterns: dict | None = None):
        """``patterns`` (ReLU module index -> (N, *shape) signs: +1 active, -1 inactive, 0 held at
        zero; MaxPool2d module index -> (N, C, windows) chosen input per window, as ``argmax``
        stores it) replaces the points' own patterns where given: the polytope repair holds every
        vertex of a polytope to one pattern. Activations are those of the pattern-fixed model.
        With ``patterns`` given, every max-pool needs one (a region's vertices must share it)."""
        self.net = net
        self.k = k
        self.modules = list(net)
        self.sign: dict[int, torch.Tensor] = {}
        self.argmax: dict[int, torch.Tensor] = {}  # MaxPool2d module -> (N, C, Ho*Wo) long
        self.windows: dict[int, torch.Tensor] = {}  # MaxPool2d module -> (K, Ho*Wo) members, -1: padding
        with torch.no_grad():
            acts = {k: h}
            x = h
            for i in range(k, len(self.modules)):
                m = self.modules[i]
                if i > k and isinstance(m, nn.ReLU):
                    given = None if patterns is None else patterns.get(i)
                    if given is None:
                        sign = torch.where(x > 0, 1, -1).to(torch.int8)
                    else:
                        sign = torch.as_tensor(np.asarray(given), dtype=torch.int8).reshape(x.shape)
                    self.sign[i] = sign
                    x = torch.where(sign > 0, x, torch.zeros_like(x))
                elif i > k and isinstance(m, nn.MaxPool2d):
                    x = self._fix_pool(i, m, x, None if patterns is None else patterns.get(i), patterns is not None)
                else:
                    x = m(x)
                acts[i + 1] = x  # acts[i] is the input of module i
        self.acts = acts
        self.u0 = acts[k + 1].reshape(h.shape[0], -1)
        self.n_points = h.shape[0]
        # Modules whose input is u itself up to a reshape: the ReLU there is a bound on u.
        self.relu_on_u: int | None = None
        for i in range(k + 1, len(self.modules)):
            if isinstance(self.modules[i], nn.Flatten):
                continue
            if isinstance(self.modules[i], nn.ReLU):
                self.relu_on_u = i
            break

    def _fix_pool(self, i: int, m: nn.MaxPool2d, x: torch.Tensor, given, with_patterns: bool) -> torch.Tensor:
        """Hold max-pool ``i`` to its argmax (``given`` or the points' own) and apply it."""
        if m.ceil_mode:
            raise UnsupportedLayerError(f"point repair before the MaxPool2d at module {i} needs ceil_mode=False")
        if x.dim() != 4:
            raise UnsupportedLayerError(f"MaxPool2d at module {i} needs (N, C, H, W) inputs")
        n, c, hh, ww = x.shape
        idx = torch.arange(hh * ww, dtype=torch.float64).reshape(1, 1, hh, ww) + 1.0  # 0 marks padding
        win = F.unfold(idx, m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)[0]
        self.windows[i] = win.round().long() - 1  # (K, Ho*Wo)
        if given is not None:
            arg = torch.as_tensor(np.asarray(given), dtype=torch.int64).reshape(n, c, -1)
        elif with_patterns:
            raise UnsupportedLayerError(
                f"a region repair before the MaxPool2d at module {i} is not supported; choose a layer after it")
        else:
            _, arg = F.max_pool2d(x, m.kernel_size, m.stride, m.padding, m.dilation, return_indices=True)
            arg = arg.reshape(n, c, -1)
        self.argmax[i] = arg
        out = torch.gather(x.reshape(n, c, -1), 2, arg)
        ho = F.max_pool2d(torch.zeros(1, 1, hh, ww, dtype=x.dtype), m.kernel_size, m.stride, m.padding, m.dilation).shape
        return out.reshape(n, c, ho[2], ho[3])

    def pattern(self, i: int) -> np.ndarray:
        """Signs held at pattern module ``i``, flattened per point (+1 active, -1 inactive, 0 zero).
        A max-pool's units are (channel, window, member) triples, all +1: ``chosen - member >= 0``."""
        if i in self.argmax:
            return np.ones((self.n_points, self.pool_units(i)), dtype=np.int8)
        return self.sign[i].reshape(self.n_points, -1).numpy()

    def pool_units(self, i: int) -> int:
        c = self.argmax[i].shape[1]
        return c * self.windows[i].numel()

    def pattern_mask(self, i: int) -> np.ndarray:
        """(N, units) which pattern rows exist: every ReLU unit; a max-pool's members other than the
        chosen one (padding is no member)."""
        if i not in self.argmax:
            return np.ones((self.n_points, self.sign[i][0].numel()), dtype=bool)
        win, arg = self.windows[i], self.argmax[i]  # (K, O), (N, C, O)
        member = win.t()[None, None]  # (1, 1, O, K)
        mask = (member >= 0) & (member != arg[..., None])
        return mask.reshape(self.n_points, -1).numpy()

    def functional_entries(self, i: int, point: np.ndarray, unit: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``functional`` as (row, index, value) triples: one per ReLU unit, two per max-pool member."""
        rows = np.arange(point.size)
        if i not in self.argmax:
            return rows, np.asarray(unit, dtype=np.int64), np.ones(point.size)
        win, arg = self.windows[i], self.argmax[i]
        n_k, n_o = win.shape
        ch, rest = unit // (n_o * n_k), unit % (n_o * n_k)
        o, s = rest // n_k, rest % n_k
        plane = self.acts[i].shape[2] * self.acts[i].shape[3]
        chosen = arg.numpy()[point, ch, o]
        member = np.maximum(win.numpy()[s, o], 0)
        return (np.concatenate([rows, rows]), np.concatenate([ch * plane + chosen, ch * plane + member]),
                np.concatenate([np.ones(point.size), -np.ones(point.size)]))

    def direct(self, i: int) -> bool:
        """Whether the input of module ``i`` is u itself up to ReLUs and reshapes (a pattern row there
        touches a unit or two of u)."""
        return all(isinstance(self.modules[j], (nn.ReLU, nn.Flatten)) for j in range(self.k + 1, i))

    def functional(self, i: int, point: np.ndarray, unit: np.ndarray) -> torch.Tensor:
        """(E, size of the input of module ``i``): the linear functional of each pattern row
        (one-hot for a ReLU unit; chosen minus member for a max-pool's)."""
        size = self.acts[i][0].numel()
        g = torch.zeros((point.size, size), dtype=torch.float64)
        rows = torch.arange(point.size)
        if i not in self.argmax:
            g[rows, torch.from_numpy(unit)] = 1.0
            return g
        win, arg = self.windows[i], self.argmax[i]
        n_k, n_o = win.shape
        unit = torch.from_numpy(unit)
        ch, rest = unit // (n_o * n_k), unit % (n_o * n_k)
        o, s = rest // n_k, rest % n_k
        plane = self.acts[i].shape[2] * self.acts[i].shape[3]
        chosen = arg[torch.from_numpy(point), ch, o]
        member = win[s, o]
        g[rows, ch * plane + chosen] += 1.0
        g[rows, ch * plane + member.clamp(min=0)] -= 1.0
        return g

    @property
    def later_affine(self) -> list[int]:
        return [i for i in range(self.k + 1, len(self.modules)) if isinstance(self.modules[i], AFFINE)]

    @property
    def pattern_relus(self) -> list[int]:
        """ReLU modules whose pattern needs LP rows (the one acting directly on u is a bound)."""
        return [i for i in range(self.k + 1, len(self.modules))
                if isinstance(self.modules[i], nn.ReLU) and i != self.relu_on_u]

    @property
    def pattern_modules(self) -> list[int]:
        """Every module whose pattern needs LP rows: those ReLUs and every max-pool after ``k``."""
        return sorted(self.pattern_relus + list(self.argmax))

    def preactivation(self, i: int) -> torch.Tensor:
        """Original input of ReLU module ``i``, flattened per point."""
        return self.acts[i].reshape(self.n_points, -1)

    def run_fixed_pattern(self, candidate: nn.Sequential) -> tuple[dict[int, np.ndarray], np.ndarray]:
        """Inputs of the pattern ReLUs when ``candidate`` (same architecture, float64) is run from
        the repair layer with every ReLU held to the original pattern, and the outputs (points,
        outputs) of that run: exactly the LP's own linear model of those quantities. Checking
        signs here finds every violated pattern row at once; a real forward pass would hide
        deeper violations behind shallower flips. A max-pool's entry is ``chosen - member`` per
        unit (0 where no row exists)."""
        want = set(self.pattern_relus)
        out: dict[int, np.ndarray] = {}
        with torch.no_grad():
            z = candidate[self.k](self.acts[self.k])
            for i in range(self.k + 1, len(self.modules)):
                if isinstance(self.modules[i], nn.ReLU):
                    if i in want:
                        out[i] = z.reshape(self.n_points, -1).numpy()
                    z = z * (self.sign[i] > 0)
                elif i in self.argmax:
                    out[i], z = self._pool_slack(i, z)
                else:
                    z = candidate[i](z)
        return out, z.reshape(self.n_points, -1).numpy()

    def _pool_slack(self, i: int, z: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
        """``chosen - member`` per (channel, window, member) of max-pool ``i`` at input ``z``, and
        the pool's output with the choice held."""
        win, arg = self.windows[i], self.argmax[i]
        n, c = z.shape[:2]
        flat = z.reshape(n, c, -1)
        chosen = torch.gather(flat, 2, arg)  # (N, C, O)
        members = flat[:, :, win.t().clamp(min=0)]  # (N, C, O, K)
        slack = (chosen[..., None] - members).reshape(n, -1).numpy().copy()
        slack[~self.pattern_mask(i)] = 0.0  # no row there: never violated
        out_shape = self.acts[i + 1].shape[1:]
        return slack, chosen.reshape((n,) + tuple(out_shape))

    def pullback(self, i: int, point: np.ndarray, functional: torch.Tensor) -> Rows:
        """Rows for ``functional @ (input of module i)`` at the given points (``len(self.modules)``
        for the network output). ``functional`` is (E, size of that input)."""
        point = np.asarray(point, dtype=np.int64)
        pidx = torch.from_numpy(point)
        R = functional.to(torch.float64).reshape((len(point),) + tuple(self.acts[i].shape[1:]))
        const = (R.reshape(len(point), -1) * self.acts[i][pidx].reshape(len(point), -1)).sum(1)
        coef_b: dict[int, np.ndarray] = {}
        for j in range(i - 1, self.k, -1):
            m = self.modules[j]
            if isinstance(m, nn.ReLU):
                R = R * (self.sign[j][pidx] > 0)
            elif isinstance(m, nn.Linear):
                coef_b[j] = R.numpy().copy()
                R = R @ m.weight
            elif j in self.argmax:  # selection: scatter back to the chosen inputs
                n, c = R.shape[:2]
                back = torch.zeros((n, c, self.acts[j][0, 0].numel()), dtype=R.dtype)
                back.scatter_add_(2, self.argmax[j][pidx], R.reshape(n, c, -1))
                R = back.reshape((n,) + tuple(self.acts[j].shape[1:]))
            elif isinstance(m, nn.Flatten):
                R = R.reshape((len(point),) + tuple(self.acts[j].shape[1:]))
            elif isinstance(m, _LINEAR_PULLBACK):
                if isinstance(m, nn.Conv2d):
                    coef_b[j] = R.sum(dim=(2, 3)).numpy()
                R = _vjp(m, self.acts[j][pidx], R)
            else:
                raise UnsupportedLayerError(f"cannot linearise {type(m).__name__} (module {j}) after the repair layer")
        coef_u = R.reshape(len(point), -1)
        const = const - (coef_u * self.u0[pidx]).sum(1)
        return Rows(point=point, coef_u=coef_u.numpy(), coef_b=coef_b, const=const.numpy())


def _vjp(module: nn.Module, x: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """Transpose of the module's (bias-free) Jacobian applied to R, evaluated at inputs x."""
    with torch.enable_grad():
        xi = x.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(module(xi), xi, grad_outputs=R)
    return g.detach()
