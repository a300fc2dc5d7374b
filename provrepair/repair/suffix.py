"""The network after the repair layer, made linear by fixing each point's activation pattern.

With layers before ``k`` unchanged and every ReLU after ``k`` held to the original network's
pattern at a point, each later quantity (a pre-activation, an output) is an affine function of
the layer-``k`` output ``u`` and of the later bias deltas. This module computes the rows of those
affine maps exactly, by pulling linear functionals back through the suffix one module at a time
(a vector-Jacobian product at the point's own activations), batched over many rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
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
        zero) replaces the points' own patterns where given: the polytope repair holds every
        vertex of a polytope to one pattern. Activations are those of the pattern-fixed model."""
        self.net = net
        self.k = k
        self.modules = list(net)
        self.sign: dict[int, torch.Tensor] = {}
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
                else:
                    x = m(x)
                acts[i + 1] = x  # acts[i] is the input of module i
        self.acts = acts
        self.u0 = acts[k + 1].reshape(h.shape[0], -1)
        self.n_points = h.shape[0]
        for i in range(k + 1, len(self.modules)):
            m = self.modules[i]
            if isinstance(m, nn.MaxPool2d):
                raise UnsupportedLayerError(
                    f"point repair at a layer before the MaxPool2d at module {i} is not supported yet; "
                    "choose a repair layer after the last MaxPool2d")
        # Modules whose input is u itself up to a reshape: the ReLU there is a bound on u.
        self.relu_on_u: int | None = None
        for i in range(k + 1, len(self.modules)):
            if isinstance(self.modules[i], nn.Flatten):
                continue
            if isinstance(self.modules[i], nn.ReLU):
                self.relu_on_u = i
            break

    def pattern(self, i: int) -> np.ndarray:
        """Signs held at ReLU module ``i``, flattened per point (+1 active, -1 inactive, 0 zero)."""
        return self.sign[i].reshape(self.n_points, -1).numpy()

    @property
    def later_affine(self) -> list[int]:
        return [i for i in range(self.k + 1, len(self.modules)) if isinstance(self.modules[i], AFFINE)]

    @property
    def pattern_relus(self) -> list[int]:
        """ReLU modules whose pattern needs LP rows (the one acting directly on u is a bound)."""
        return [i for i in range(self.k + 1, len(self.modules))
                if isinstance(self.modules[i], nn.ReLU) and i != self.relu_on_u]

    def preactivation(self, i: int) -> torch.Tensor:
        """Original input of ReLU module ``i``, flattened per point."""
        return self.acts[i].reshape(self.n_points, -1)

    def fixed_pattern_preactivations(self, candidate: nn.Sequential) -> dict[int, np.ndarray]:
        """Inputs of the pattern ReLUs when ``candidate`` (same architecture, float64) is run from
        the repair layer with every ReLU held to the original pattern: exactly the LP's own
        linear model of those quantities. Checking signs here finds every violated pattern
        row at once; a real forward pass would hide deeper violations behind shallower flips."""
        want = set(self.pattern_relus)
        out: dict[int, np.ndarray] = {}
        with torch.no_grad():
            z = candidate[self.k](self.acts[self.k])
            for i in range(self.k + 1, len(self.modules)):
                if isinstance(self.modules[i], nn.ReLU):
                    if i in want:
                        out[i] = z.reshape(self.n_points, -1).numpy()
                    z = z * (self.sign[i] > 0)
                else:
                    z = candidate[i](z)
        return out

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
