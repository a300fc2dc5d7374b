"""Layer-selection scorers: one score per affine layer, higher = better place to repair.

Every scorer has the signature ``f(net, inputs, *, labels=None, pairs=None) -> np.ndarray`` and
returns a float64 array with one entry per affine layer (Linear/Conv2d, numbered as in
``provrepair.models.affine_layers``).  ``inputs`` is the repair set, shaped ``(N, *input_shape)``.

The *representation* of affine layer ``k`` is what the rest of the network sees of it: the output
of the module right after it when that module is a ReLU, otherwise the affine output itself,
flattened per point.  Forward passes run in the network's parameter dtype (float32 for every
network provrepair loads) with autograd off, and in eval mode; the caller's mode is restored.

Scorers (the keys of ``SCORERS``):

``activation``   mean |representation| over points and units.
``variance``     mean over units of the (population) variance across the repair points.
``gradient``     ||d loss / d (W_k, b_k)||_2 / sqrt(#params of layer k), loss = summed cross-entropy
                 of the repair points against ``labels``.  The division keeps a big layer from
                 winning only because its gradient vector has more entries (it is the RMS gradient
                 entry).  Needs ``labels``.
``change``       mean over points of ||rep(x') - rep(x)|| / (||rep(x)|| + 1e-12), with x' the repair
                 point and x its original in ``pairs``.  Needs ``pairs``.
``similarity``   mean pairwise cosine similarity of the points' representations, self-pairs
                 excluded.  Two zero vectors count as identical (1), a zero vector against a
                 non-zero one as 0; a repair set of one point scores 1 everywhere.
``penultimate``  1 for the second-to-last affine layer (the only layer if there is one), else 0.
``first_dense``  1 for the first Linear after the last Conv2d, else 0.  A network without
                 convolutions (an MLP) marks affine layer 0, its first dense layer; a network
                 with no Linear after its last convolution marks its last affine layer.

``rank`` orders layers best first; equal scores go to the later layer, whose repair LP is
smaller (fewer layers follow it, fewer parameters usually precede the output).

This module imports nothing from ``provrepair.repair``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from provrepair.errors import InputError
from provrepair.models import affine_layers

#: Added to the norm of the original representation in the ``change`` scorer.
CHANGE_EPS = 1e-12


# --------------------------------------------------------------------------------------------
# helpers


def _modules(net: nn.Module) -> list[nn.Module]:
    return list(net) if isinstance(net, nn.Sequential) else [net]


def _affine(net: nn.Module) -> list[int]:
    idx = affine_layers(net)
    if not idx:
        raise InputError("the network has no Linear/Conv2d layer, so there is no layer to score; "
                         "check the model file")
    return idx


def _rep_positions(net: nn.Module) -> list[int]:
    """Module index whose output is the representation of each affine layer."""
    mods = _modules(net)
    out = []
    for i in _affine(net):
        out.append(i + 1 if i + 1 < len(mods) and isinstance(mods[i + 1], nn.ReLU) else i)
    return out


def _dtype(net: nn.Module) -> torch.dtype:
    p = next(net.parameters(), None)
    return p.dtype if p is not None else torch.float32


def _as_tensor(net: nn.Module, inputs, what: str = "inputs") -> torch.Tensor:
    arr = np.asarray(inputs)
    if arr.ndim < 2 or arr.shape[0] == 0:
        raise InputError(f"{what} must be a non-empty array shaped (N, *input_shape); got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"{what} must be numeric; got dtype {arr.dtype}")
    return torch.tensor(arr, dtype=torch.float64).to(_dtype(net))  # a copy: spec arrays are read-only


class _eval_mode:
    """Put ``net`` in eval mode for the block and restore its previous mode."""

    def __init__(self, net: nn.Module):
        self.net = net

    def __enter__(self):
        self.was_training = self.net.training
        self.net.eval()

    def __exit__(self, *exc):
        self.net.train(self.was_training)


def _run(net: nn.Module, x: torch.Tensor, keep: Sequence[int]) -> dict[int, torch.Tensor]:
    """Run ``x`` through the modules of ``net``, keeping the outputs of module indices ``keep``."""
    want = set(keep)
    found: dict[int, torch.Tensor] = {}
    try:
        for i, m in enumerate(_modules(net)):
            x = m(x)
            if i in want:
                found[i] = x
    except RuntimeError as e:
        raise InputError(f"the inputs do not fit the network ({e}); give an array shaped "
                         "(N, *input_shape) for this model") from None
    found[-1] = x
    return found


def representations(net: nn.Module, inputs) -> list[np.ndarray]:
    """Per affine layer, an (N, units) float64 array of its representation."""
    x = _as_tensor(net, inputs)
    pos = _rep_positions(net)
    with _eval_mode(net), torch.no_grad():
        outs = _run(net, x, pos)
    return [outs[p].reshape(x.shape[0], -1).double().numpy() for p in pos]


# --------------------------------------------------------------------------------------------
# scorers


def activation_magnitude(net, inputs, *, labels=None, pairs=None) -> np.ndarray:
    """Mean absolute value of each layer's representation over the repair set."""
    return np.array([float(np.abs(r).mean()) for r in representations(net, inputs)])


def activation_variance(net, inputs, *, labels=None, pairs=None) -> np.ndarray:
    """Mean over units of the variance (ddof 0) across the repair points."""
    return np.array([float(r.var(axis=0).mean()) for r in representations(net, inputs)])


def gradient_norm(net, inputs, *, labels=None, pairs=None) -> np.ndarray:
    """RMS entry of the gradient of the summed cross-entropy w.r.t. each layer's weight and bias."""
    if labels is None:
        raise InputError("the gradient heuristic needs the labels of the repair points")
    x = _as_tensor(net, inputs)
    y = np.asarray(labels).reshape(-1)
    if y.shape[0] != x.shape[0]:
        raise InputError(f"got {y.shape[0]} labels for {x.shape[0]} repair points; give one label per point")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.mod(y, 1) == 0):
            raise InputError("labels must be integer class indices")
        y = y.astype(np.int64)
    work = copy.deepcopy(net)  # never touch the caller's requires_grad flags or .grad buffers
    work.eval()
    mods = _modules(work)
    params: list[list[torch.nn.Parameter]] = []
    for i in _affine(work):
        ps = [p for p in (mods[i].weight, mods[i].bias) if p is not None]
        for p in ps:
            p.requires_grad_(True)
        params.append(ps)
    with torch.enable_grad():
        logits = _run(work, x, [])[-1].reshape(x.shape[0], -1)
        n_out = logits.shape[1]
        if y.min() < 0 or y.max() >= n_out:
            raise InputError(f"labels must lie in 0..{n_out - 1} for this network; got {y.min()}..{y.max()}")
        loss = F.cross_entropy(logits, torch.tensor(y, dtype=torch.long), reduction="sum")
        flat = [p for ps in params for p in ps]
        grads = torch.autograd.grad(loss, flat, allow_unused=True)
    out, j = [], 0
    for ps in params:
        sq, count = 0.0, 0
        for p in ps:
            g = grads[j]
            j += 1
            count += p.numel()
            if g is not None:
                sq += float((g.double() ** 2).sum())
        out.append(np.sqrt(sq) / np.sqrt(count))
    return np.array(out)


def change(net, inputs, *, labels=None, pairs=None) -> np.ndarray:
    """Mean relative change of each representation from the original inputs to the repair points."""
    if pairs is None:
        raise InputError("the change heuristic needs the original inputs paired with the repair points")
    a, b = np.asarray(inputs), np.asarray(pairs)
    if a.shape != b.shape:
        raise InputError(f"the original inputs have shape {b.shape} but the repair points have shape "
                         f"{a.shape}; give one original per repair point, in the same order")
    out = []
    for new, old in zip(representations(net, a), representations(net, b)):
        diff = np.linalg.norm(new - old, axis=1)
        out.append(float(np.mean(diff / (np.linalg.norm(old, axis=1) + CHANGE_EPS))))
    return np.array(out)


def feature_similarity(net, inputs, *, labels=None, pairs=None) -> np.ndarray:
    """Mean cosine similarity over distinct pairs of repair points, per layer."""
    out = []
    for r in representations(net, inputs):
        n = r.shape[0]
        if n < 2:
            out.append(1.0)
            continue
        norms = np.linalg.norm(r, axis=1)
        zero = norms == 0
        unit = r / np.where(zero, 1.0, norms)[:, None]
        sim = unit @ unit.T
        sim[np.ix_(zero, zero)] = 1.0  # two zero vectors are the same representation
        sim = np.clip(sim, -1.0, 1.0)
        off = ~np.eye(n, dtype=bool)
        out.append(float(sim[off].mean()))
    return np.array(out)


def penultimate(net, inputs=None, *, labels=None, pairs=None) -> np.ndarray:
    """1 for the second-to-last affine layer (the last one if it is the only one)."""
    n = len(_affine(net))
    s = np.zeros(n)
    s[max(n - 2, 0)] = 1.0
    return s


def first_dense(net, inputs=None, *, labels=None, pairs=None) -> np.ndarray:
    """1 for the first Linear after the last Conv2d (affine layer 0 for an MLP)."""
    mods = _modules(net)
    idx = _affine(net)
    kinds = [type(mods[i]) for i in idx]
    s = np.zeros(len(idx))
    convs = [k for k, t in enumerate(kinds) if t is nn.Conv2d]
    if not convs:
        s[0] = 1.0
        return s
    after = [k for k in range(convs[-1] + 1, len(idx)) if kinds[k] is nn.Linear]
    s[after[0] if after else len(idx) - 1] = 1.0
    return s


Scorer = Callable[..., np.ndarray]

SCORERS: dict[str, Scorer] = {
    "activation": activation_magnitude,
    "variance": activation_variance,
    "gradient": gradient_norm,
    "change": change,
    "similarity": feature_similarity,
    "penultimate": penultimate,
    "first_dense": first_dense,
}

#: The keyword argument each scorer cannot do without.
NEEDS: dict[str, str] = {"gradient": "labels", "change": "pairs"}


def rank(scores, candidates: Iterable[int] | None = None) -> list[int]:
    """Affine layer indices, best (highest score) first; ties go to the later layer.

    NaN scores rank last.  ``candidates`` restricts (and deduplicates) the layers returned.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    n = s.shape[0]
    if candidates is None:
        ks = list(range(n))
    else:
        ks = list(dict.fromkeys(int(k) for k in candidates))
        bad = [k for k in ks if not 0 <= k < n]
        if bad:
            raise InputError(f"candidate layers {bad} do not exist: there are {n} affine layers, "
                             f"numbered 0 to {n - 1}")
    key = np.where(np.isnan(s), -np.inf, s)
    return sorted(ks, key=lambda k: (-key[k], -k))


def score_all(net, inputs, *, labels=None, pairs=None, names: Iterable[str] | None = None
              ) -> dict[str, np.ndarray]:
    """Scores of every scorer in ``names`` (default: all) whose required argument is given."""
    names = list(SCORERS) if names is None else list(names)
    unknown = [n for n in names if n not in SCORERS]
    if unknown:
        raise InputError(f"unknown layer heuristic(s) {', '.join(map(repr, unknown))}; "
                         f"choose from {', '.join(SCORERS)}")
    given = {"labels": labels, "pairs": pairs}
    out = {}
    for name in names:
        need = NEEDS.get(name)
        if need is not None and given[need] is None:
            continue
        out[name] = SCORERS[name](net, inputs, labels=labels, pairs=pairs)
    return out
