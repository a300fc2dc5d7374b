"""DeepPatch (Wei, Wang, Ashraf, Chan, TOSEM 2023): replacement filters switched in per sample.

The algorithm (the paper's Alg. 1), on a canonical network (BatchNorm folded into its convolutions):

1. **Filter assessment** (alpha units, :func:`assess_filters`): for every ``Conv2d`` and every filter,
   zero that filter's channel and measure the robustness accuracy on the augmented validation set
   ``T_val°`` (every validation image at every level of the augmentor). The priority of a filter is
   ``acc - acc0`` (``acc0``: the unpatched model); within a layer, a larger change ranks higher.
   Many filters are assessed per forward pass: the layer's output is computed once per chunk of
   samples, repeated once per filter with that filter's channel zeroed, and the repeats go through
   the rest of the network as one batch. (Zeroing a filter's kernel and bias makes its channel
   exactly zero, so this equals assessing a hand-zeroed model.)
2. **Patching** (beta units, :class:`PatchedNet`): the top ``floor(kappa * m)`` filters of each conv
   layer of ``m`` filters (``kappa = 25 %`` by default) get replacement filters at the same
   positions; everything else is frozen. The paper re-initialises the replacements at random
   (``init="random"``); by default they start as copies of the blamed filters (``init="clone"``).
   Cloned replacements start out equal to the originals and move only as far as training on
   perturbed images takes them, so they stay closer to the originals on clean images. On
   Fashion-MNIST blur (``benchmarks/results/deeppatch.json``, kappa 25 %) DP-beta keeps 90.48 %
   standard accuracy instead of 89.09 %, and DP-gamma reaches 91.00 % / 75.28 % nRob instead of
   90.04 % / 71.96 %. The switch still routes 35 % of clean test images to the replacements there.
   The replacements are trained (SGD at ``PATCH_LR``) on the training split with dynamic
   augmentation (each sample, each time it is drawn, perturbed with probability 1/2 at a random
   strength) and the epoch with the best robustness accuracy on ``T_val°`` is kept.
3. **Standard-accuracy recovery** (the gamma unit) on the first patched conv layer: the *corrective
   rate* of a sample is the share of positions in the blamed channels where the original and the
   replacement feature maps disagree on activation (one ``> 0``, the other not); the boundary is the
   midpoint of its mean on clean validation and on ``T_val°``. At inference, per sample, a rate on the
   augmented side of the boundary routes that sample through the replacement filters of *every*
   patched layer, and otherwise through the original filters (so the original network's output is
   reproduced exactly). The paper assumes augmented samples have the higher rate (``rate > b`` means
   replacement); that does not always hold (e.g. MNIST blur at kappa = 50 gives the clean samples the
   higher mean), so the side is calibrated too: ``side = +1`` when the augmented mean is the higher,
   else ``-1``, and a sample takes the replacements when ``side * (rate - b) > 0``.

Variants (``PatchedNet.variant``): ``"gamma"`` (the switch), ``"beta"`` (always the replacements:
the paper's DP-beta) and ``"fallback"`` (always the originals: DP-fb, the pretrained network).

The patched model is a plain ``torch.nn.Module`` whose whole configuration (blamed filter indices,
boundary, variant) lives in its buffers; ``provrepair.models.save_model(patched, "x.pt")`` writes it
and :func:`load_patched` reads it back, no training code involved. Each sample's output depends on
that sample alone.

The training harness shared with the baselines (:mod:`provrepair.repair.finetune`,
:mod:`provrepair.repair.augmix`) is :class:`RobustnessTask`: data, augmentor, device, the
per-epoch model selection on ``T_val°`` and the test metrics (standard accuracy, accuracy per level,
nRob/sRob as the paper defines them: the mean over the clean set and every level, and the joint
accuracy ``std + nRob/sRob``).
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..data import augment as _aug
from ..errors import InputError, ModelFormatError
from ..models.inference import accuracy, predictions
from ..models import ModelMeta, get_meta, load_model, normalize_model, set_meta

__all__ = [
    "AUGMENTS",
    "RANKINGS",
    "VARIANTS",
    "Augmentor",
    "FilterAssessment",
    "PatchedNet",
    "RobustnessTask",
    "StatisticalRepairResult",
    "assess_filters",
    "calibrate_boundary",
    "corrective_rate",
    "deeppatch",
    "get_augmentor",
    "kappa_percent",
    "load_patched",
    "select_filters",
]

VARIANTS = ("gamma", "beta", "fallback")
RANKINGS = ("alpha", "random", "bottom")
INITS = ("random", "clone")
AUGMENTS = ("blur", "spatial")
_VARIANT_CODES = {"beta": 0, "gamma": 1, "fallback": 2}

#: Training defaults, chosen so that the benchmark fits a 2-core CPU (see benchmarks/deeppatch.py).
DEFAULT_EPOCHS = 3
#: Learning rate of the baselines, which fine-tune trained weights (the paper's SGD setting).
DEFAULT_LR = 0.01
#: Learning rate of the replacement filters: the only trainable weights, few of them, behind frozen
#: layers. At 0.01 they are still far from converged after the default 3 epochs.
PATCH_LR = 0.2
#: How replacement filters start: "clone" (copies of the blamed filters, the default) or "random"
#: (the paper's re-initialisation). See the module docstring.
DEFAULT_INIT = "clone"
DEFAULT_BATCH = 128
#: Samples per forward pass when evaluating (on a 2-core CPU 256 is faster than larger batches).
EVAL_BATCH = 256
#: The most samples in one forward pass of the batched filter assessment.
ASSESS_BATCH = 4096
#: SGD settings of the paper (Sec. 4.2.1); the learning rate decays to 0 by cosine over the run.
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
#: Seed of the train/val split and of the subsets drawn by the ``*_limit`` options: fixed, so that
#: runs with different training seeds see the same data.
DATA_SEED = 0


# --------------------------------------------------------------------------------------------------
# options


def kappa_percent(ratio) -> float:
    """The blamed ratio as a percentage in (0, 100]. ``ratio`` may be a fraction (``0.25`` = 25 %) or a
    percentage (``25``): values up to 1 are read as fractions, larger ones as percentages."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float, np.integer, np.floating)):
        raise InputError(f"ratio must be a number in (0, 100], got {ratio!r}")
    r = float(ratio)
    if not (0.0 < r <= 100.0):
        raise InputError(
            f"ratio must lie in (0, 100] (a fraction such as 0.25 or a percentage such as 25), got {ratio!r}"
        )
    return r * 100.0 if r <= 1.0 else r


def _check_choice(value, choices: Sequence[str], what: str) -> str:
    if not isinstance(value, str) or value not in choices:
        raise InputError(f"unknown {what} {value!r}; use one of: {', '.join(choices)}")
    return value


def _check_positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _check_limit(value, what: str) -> int | None:
    return None if value is None else _check_positive_int(value, what)


def resolve_device(device) -> torch.device:
    """``"auto"`` is the GPU when one is present, else the CPU; ``"cpu"``, ``"cuda"``, ``"cuda:N"``."""
    name = str(device) if device is not None else "auto"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {device!r}; use auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r} was asked for but CUDA is not available here; use --device cpu or auto")
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"unsupported device {name!r}; use auto, cpu or cuda")
    return dev


# --------------------------------------------------------------------------------------------------
# augmentors


@dataclass(frozen=True)
class Augmentor:
    """One perturbation family: a dynamic training augmentor and fixed, graded test sets.

    ``dynamic(x, rng)``: each sample kept with probability 1/2, else perturbed at a random strength
    (the paper's Eq. 2). ``static(x, seed)``: ``{level name: every sample perturbed at that level}``.
    ``metric``: the paper's name of the mean accuracy over the clean set and all levels.
    """

    name: str
    metric: str
    levels: tuple[str, ...]
    dynamic: Callable[[torch.Tensor, np.random.Generator], torch.Tensor]
    static: Callable[[torch.Tensor, int], dict[str, torch.Tensor]]


def _blur_static(x: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    return {f"blur{s:g}": _aug.blur(x, s) for s in _aug.BLUR_SIGMAS}


def _spatial_dynamic(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    chosen = np.flatnonzero(rng.random(x.shape[0]) < 0.5)
    out = x.clone()
    if chosen.size:
        idx = torch.as_tensor(chosen, device=x.device)
        out[idx] = _aug.spatial(x[idx], rng)
    return out


def _spatial_static(x: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    n = len(_aug.SPATIAL_LEVELS)
    return {f"spat{i}/{n}": _aug.spatial_static(x, i, seed) for i in range(1, n + 1)}


_AUGMENTORS = {
    "blur": Augmentor("blur", "nRob", tuple(f"blur{s:g}" for s in _aug.BLUR_SIGMAS), _aug.blur_dynamic, _blur_static),
    "spatial": Augmentor("spatial", "sRob", tuple(f"spat{i}/{len(_aug.SPATIAL_LEVELS)}" for i in
                                               range(1, len(_aug.SPATIAL_LEVELS) + 1)), _spatial_dynamic, _spatial_static),
}


def get_augmentor(name: str) -> Augmentor:
    """The augmentor ``"blur"`` (Gaussian blur, sigma 0.5..3) or ``"spatial"`` (SENSEI's transforms)."""
    return _AUGMENTORS[_check_choice(name, AUGMENTS, "augmentor")]


# --------------------------------------------------------------------------------------------------
# the corrective rate and its boundary


def corrective_rate(z_minus: torch.Tensor, z_plus: torch.Tensor) -> torch.Tensor:
    """Per sample, the share of neurons active (``> 0``) in exactly one of the two feature maps
    (the paper's Eq. 1). ``z_minus``: the blamed filters' channels, ``z_plus``: the replacements',
    both ``(N, k, H, W)``. Returns ``(N,)`` in their dtype."""
    if z_minus.shape != z_plus.shape:
        raise InputError(f"feature maps of different shapes: {tuple(z_minus.shape)} and {tuple(z_plus.shape)}")
    disagree = (z_minus > 0) != (z_plus > 0)
    return disagree.flatten(1).sum(dim=1).to(z_plus.dtype) / disagree[0].numel()


def calibrate_boundary(rate_clean, rate_augmented) -> tuple[float, int]:
    """The separation boundary, the midpoint of the mean corrective rate on clean validation data and
    the mean on augmented validation data (Sec. 3.3.2), and the side of it the augmented mean lies on
    (``+1``: above, the paper's assumption; ``-1``: below)."""
    a = torch.as_tensor(rate_clean, dtype=torch.float64).reshape(-1)
    b = torch.as_tensor(rate_augmented, dtype=torch.float64).reshape(-1)
    if a.numel() == 0 or b.numel() == 0:
        raise InputError("the boundary needs corrective rates of at least one clean and one augmented sample")
    return float((a.mean() + b.mean()) / 2), (1 if b.mean() >= a.mean() else -1)


# --------------------------------------------------------------------------------------------------
# the patched network


def _conv_indices(net: nn.Sequential) -> list[int]:
    return [i for i, m in enumerate(net) if isinstance(m, nn.Conv2d)]


class PatchedNet(nn.Module):
    """A network with replacement filters for some filters of its conv layers and a gamma switch.

    ``base``: the original canonical network (frozen, kept unchanged); ``blamed``: ``{module index
    of a Conv2d: positions of its blamed filters}``. The replacements are the parameters
    ``repl_weight[str(i)]`` / ``repl_bias[str(i)]``; the blamed positions, the boundary, its side and
    the variant are buffers, so ``state_dict`` and a pickled module carry the whole configuration.
    """

    def __init__(self, base: nn.Sequential, blamed: Mapping[int, Sequence[int]], *, boundary: float = 0.0,
                 side: int = 1, variant: str = "gamma", seed: int = 0, init: str = "random"):
        super().__init__()
        init = _check_choice(init, INITS, "init")
        if not isinstance(base, nn.Sequential):
            raise InputError(f"PatchedNet needs an nn.Sequential, got {type(base).__name__}")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.repl_weight = nn.ParameterDict()
        self.repl_bias = nn.ParameterDict()
        gen = torch.Generator().manual_seed(int(seed))
        for i in sorted(int(k) for k in blamed):
            conv = base[i]
            if not isinstance(conv, nn.Conv2d):
                raise InputError(f"module {i} is a {type(conv).__name__}, not a Conv2d; only conv filters are patched")
            idx = torch.as_tensor(sorted(int(j) for j in blamed[i]), dtype=torch.long)
            if idx.numel() == 0:
                continue
            if idx.min() < 0 or idx.max() >= conv.out_channels or idx.unique().numel() != idx.numel():
                raise InputError(f"blamed filters {idx.tolist()} of module {i} must be distinct positions in "
                                 f"0..{conv.out_channels - 1}")
            self.register_buffer(f"blamed_{i}", idx)
            if init == "clone":
                weight = conv.weight.detach()[idx.to(conv.weight.device)].clone()
            else:
                weight = torch.empty((idx.numel(),) + tuple(conv.weight.shape[1:]), dtype=conv.weight.dtype)
                nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=gen)  # nn.Conv2d's own initialisation
            self.repl_weight[str(i)] = nn.Parameter(weight.to(conv.weight.device))
            if conv.bias is not None:
                if init == "clone":
                    bias = conv.bias.detach()[idx.to(conv.bias.device)].clone()
                else:
                    bound = 1.0 / math.sqrt(weight[0].numel())
                    bias = torch.empty(idx.numel(), dtype=conv.bias.dtype)
                    nn.init.uniform_(bias, -bound, bound, generator=gen)
                self.repl_bias[str(i)] = nn.Parameter(bias.to(conv.bias.device))
        if not self.repl_weight:
            raise InputError("no filter is blamed in any conv layer; raise the ratio so that at least one filter is patched")
        self.register_buffer("boundary", torch.tensor(float(boundary), dtype=torch.float32))
        self.register_buffer("side", torch.tensor(1 if side >= 0 else -1))
        self.register_buffer("variant_code", torch.tensor(_VARIANT_CODES[_check_choice(variant, VARIANTS, "variant")]))
        meta = get_meta(base)
        set_meta(self, ModelMeta(format="torch", source=None, input_shape=meta.input_shape,
                                 extra={"repair": "deeppatch"}))

    # -- configuration
    @property
    def patched_layers(self) -> list[int]:
        """Module indices (in ``base``) of the conv layers with replacement filters, in order."""
        return sorted(int(k) for k in self.repl_weight)

    @property
    def gamma_layer(self) -> int:
        """Module index of the layer holding the gamma unit: the first patched conv layer."""
        return self.patched_layers[0]

    def blamed(self, i: int) -> torch.Tensor:
        """Positions of the blamed filters of module ``i`` (sorted)."""
        return getattr(self, f"blamed_{i}")

    @property
    def variant(self) -> str:
        code = int(self.variant_code)
        return next(k for k, v in _VARIANT_CODES.items() if v == code)

    def set_variant(self, variant: str) -> PatchedNet:
        """Switch between ``"gamma"``, ``"beta"`` and ``"fallback"`` (returns self)."""
        self.variant_code.fill_(_VARIANT_CODES[_check_choice(variant, VARIANTS, "variant")])
        return self

    # -- computation
    def _patched_params(self, i: int):
        conv = self.base[i]
        idx = self.blamed(i)
        w = conv.weight.index_copy(0, idx, self.repl_weight[str(i)])
        b = conv.bias.index_copy(0, idx, self.repl_bias[str(i)]) if conv.bias is not None else None
        return w, b

    def _conv(self, i: int, h: torch.Tensor, w, b) -> torch.Tensor:
        c = self.base[i]
        return F.conv2d(h, w, b, c.stride, c.padding, c.dilation, c.groups)

    def _run(self, h: torch.Tensor, start: int, patched: bool) -> torch.Tensor:
        for i in range(start, len(self.base)):
            if patched and str(i) in self.repl_weight:
                h = self._conv(i, h, *self._patched_params(i))
            else:
                h = self.base[i](h)
        return h

    def _gamma_maps(self, x: torch.Tensor):
        """The gamma layer's original output (all channels) and its replacement channels."""
        g = self.gamma_layer
        h = self._run_range(x, 0, g)
        orig = self.base[g](h)
        conv = self.base[g]
        if conv.groups == 1:
            bias = self.repl_bias[str(g)] if conv.bias is not None else None
            repl = self._conv(g, h, self.repl_weight[str(g)], bias)
        else:  # a grouped conv: the replacements' input channels depend on their group
            repl = self._conv(g, h, *self._patched_params(g))[:, self.blamed(g)]
        return orig, repl

    def _run_range(self, h: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        for i in range(start, stop):
            h = self.base[i](h)
        return h

    def corrective_rate(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample corrective rate at the gamma layer, ``(N,)``."""
        orig, repl = self._gamma_maps(x)
        return corrective_rate(orig[:, self.blamed(self.gamma_layer)], repl)

    def _decide(self, rate: torch.Tensor) -> torch.Tensor:
        """The gamma unit's per-sample decision: is the rate on the augmented side of the boundary?"""
        above = rate > self.boundary.to(rate.dtype)
        return above if int(self.side) > 0 else rate < self.boundary.to(rate.dtype)

    def uses_replacement(self, x: torch.Tensor) -> torch.Tensor:
        """Per sample, whether the current variant routes it through the replacement filters, ``(N,)``."""
        code = int(self.variant_code)
        if code != _VARIANT_CODES["gamma"]:
            return torch.full((x.shape[0],), code == _VARIANT_CODES["beta"], dtype=torch.bool, device=x.device)
        return self._decide(self.corrective_rate(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        code = int(self.variant_code)
        if code == _VARIANT_CODES["fallback"]:
            return self.base(x)
        if code == _VARIANT_CODES["beta"]:
            return self._run(x, 0, patched=True)
        g = self.gamma_layer
        idx = self.blamed(g)
        h, repl = self._gamma_maps(x)
        use = self._decide(corrective_rate(h[:, idx], repl))
        chosen = torch.nonzero(use).squeeze(1)
        if chosen.numel() == 0:
            return self._run(h, g + 1, patched=False)
        if chosen.numel() == x.shape[0]:
            return self._run(h.index_copy(1, idx, repl), g + 1, patched=True)
        # Mixed batch: the chosen samples' replacement channels are written into the gamma layer's
        # output, and at every later patched conv the chosen samples' blamed channels are recomputed
        # with the replacement filters. Every other layer runs once on the whole batch, so routing
        # adds only those channels and no second pass through the network.
        h.index_put_((chosen.unsqueeze(1), idx.unsqueeze(0)), repl[chosen])
        for i in range(g + 1, len(self.base)):
            conv_in = h
            h = self.base[i](h)
            if str(i) in self.repl_weight:
                blamed = self.blamed(i)
                bias = self.repl_bias[str(i)] if self.base[i].bias is not None else None
                if self.base[i].groups == 1:
                    fresh = self._conv(i, conv_in[chosen], self.repl_weight[str(i)], bias)
                else:
                    fresh = self._conv(i, conv_in[chosen], *self._patched_params(i))[:, blamed]
                h.index_put_((chosen.unsqueeze(1), blamed.unsqueeze(0)), fresh)
        return h

    def extra_repr(self) -> str:
        counts = ", ".join(f"{i}: {self.blamed(i).numel()}/{self.base[i].out_channels}" for i in self.patched_layers)
        rule = ">" if int(self.side) > 0 else "<"
        return f"variant={self.variant}, replacements when rate {rule} {float(self.boundary):.4g}, replaced filters {{{counts}}}"


def load_patched(path: str | os.PathLike, *, map_location="cpu") -> PatchedNet:
    """Read a patched model written with ``provrepair.models.save_model`` (or ``torch.save``).

    The file is unpickled: load only files you trust."""
    try:
        obj = torch.load(path, map_location=map_location, weights_only=False)
    except FileNotFoundError:
        raise InputError(f"no such file: {path}; check the path") from None
    except (OSError, RuntimeError, EOFError, ValueError, AttributeError) as exc:
        raise ModelFormatError(f"{path} is not a readable PyTorch file ({exc}); give a model written by "
                               "`provrepair patch` or provrepair.models.save_model") from None
    if not isinstance(obj, PatchedNet):
        raise ModelFormatError(f"{path} holds a {type(obj).__name__}, not a DeepPatch model; load plain networks "
                               "with provrepair.load_model")
    return obj.eval()


# --------------------------------------------------------------------------------------------------
# filter assessment (alpha units)


@dataclass
class FilterAssessment:
    """Robustness change of zeroing each filter, per conv layer (module index in the network).

    ``scores[i][j] = acc(filter j of module i zeroed) - base_accuracy`` on the augmented validation set.
    ``forward_passes``: the batched passes made; ``single_passes``: the passes of batch ``EVAL_BATCH``
    that assessing one filter at a time would take.
    """

    base_accuracy: float
    scores: dict[int, np.ndarray]
    n_samples: int
    forward_passes: int
    single_passes: int
    seconds: float

    def order(self, layer: int) -> np.ndarray:
        """Filters of ``layer`` by descending priority (ties: lower position first)."""
        return np.argsort(-self.scores[layer], kind="stable")

    def to_dict(self) -> dict[str, Any]:
        return {"base_accuracy": self.base_accuracy, "n_samples": self.n_samples,
                "forward_passes": self.forward_passes, "single_passes": self.single_passes,
                "seconds": round(self.seconds, 3),
                "scores": {str(i): [round(float(v), 6) for v in s] for i, s in self.scores.items()}}


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(n, start + size)


def assess_filters(net: nn.Sequential, x: torch.Tensor, y: torch.Tensor, *, max_batch: int = ASSESS_BATCH,
                   progress: bool | None = None) -> FilterAssessment:
    """Zero every filter of every conv layer in turn and measure the accuracy on ``(x, y)`` (the
    augmented validation set; tensors on the network's device).

    The layer's output is computed once per chunk of samples; copies of it, each with one filter's
    channel set to 0, go through the remaining layers together, up to ``max_batch`` samples a pass.
    """
    t0 = time.perf_counter()
    convs = _conv_indices(net)
    y = y.to(x.device)
    n = x.shape[0]
    base = predictions(net, x, batch_size=EVAL_BATCH)
    acc0 = float(np.mean(base == y.cpu().numpy()))
    scores: dict[int, np.ndarray] = {}
    passes = singles = 0
    bar = tqdm(total=sum(net[i].out_channels for i in convs), desc="assessing filters", unit="filter",
               disable=not progress, leave=False)
    with torch.no_grad():
        for i in convs:
            m = net[i].out_channels
            per = max(1, min(n, max_batch // m))  # samples per chunk: every filter's copy in one pass if possible
            group = max(1, max_batch // per)  # filters per pass
            correct = np.zeros(m, dtype=np.int64)
            for s0, s1 in _chunks(n, per):
                h = net[: i + 1](x[s0:s1])
                yb = y[s0:s1]
                for f0, f1 in _chunks(m, group):
                    k = f1 - f0
                    z = h.unsqueeze(0).repeat(k, *([1] * h.dim()))  # (k, B, C, H, W)
                    z[torch.arange(k, device=z.device), :, torch.arange(f0, f1, device=z.device)] = 0
                    out = net[i + 1:](z.flatten(0, 1)).argmax(dim=1).view(k, -1)
                    correct[f0:f1] += (out == yb).sum(dim=1).cpu().numpy()
                    passes += 1
            singles += m * math.ceil(n / EVAL_BATCH)
            scores[i] = correct / n - acc0
            bar.update(m)
    bar.close()
    return FilterAssessment(acc0, scores, n, passes, singles, time.perf_counter() - t0)


def select_filters(net: nn.Sequential, ratio, *, ranking: str = "alpha", assessment: FilterAssessment | None = None,
                   seed: int = 0) -> dict[int, list[int]]:
    """Blamed filters per conv layer: ``floor(kappa * m)`` of its ``m`` filters, the top of the
    assessment (``"alpha"``), its bottom (``"bottom"``) or a random choice (``"random"``)."""
    kappa = kappa_percent(ratio)
    _check_choice(ranking, RANKINGS, "ranking")
    if ranking != "random" and assessment is None:
        raise InputError(f"ranking {ranking!r} needs a filter assessment; run assess_filters first")
    blamed: dict[int, list[int]] = {}
    for i in _conv_indices(net):
        m = net[i].out_channels
        count = math.floor(kappa * m / 100.0 + 1e-9)
        if ranking == "random":
            order = np.random.default_rng([seed, 2, i]).permutation(m)
        else:
            order = assessment.order(i)
            if ranking == "bottom":
                order = order[::-1]
        if count:
            blamed[i] = sorted(int(j) for j in order[:count])
    if not blamed:
        widest = max(net[i].out_channels for i in _conv_indices(net))
        raise InputError(f"ratio {kappa:g} % selects no filter (the widest conv layer has {widest} filters); "
                         f"use a ratio of at least {math.ceil(10000 / widest) / 100:g} %")
    return blamed


# --------------------------------------------------------------------------------------------------
# the shared training/evaluation harness


def as_canonical(model, *, need_conv: bool = True) -> nn.Sequential:
    """A canonical copy of ``model`` (a path or an ``nn.Module``); refuses a network without Conv2d."""
    if isinstance(model, (str, os.PathLike)):
        net = load_model(model)
    elif isinstance(model, nn.Module):
        net = normalize_model(model)
    else:
        raise InputError(f"expected a model path or a torch.nn.Module, got {type(model).__name__}")
    if need_conv and not _conv_indices(net):
        raise InputError("the model has no Conv2d layer; DeepPatch patches convolution filters, so give a "
                         "convolutional network")
    return net


def _as_pair(value, split: str):
    try:
        x, y = value
    except (TypeError, ValueError):
        raise InputError(f"dataset[{split!r}] must be a pair (images, labels)") from None
    x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    y = torch.as_tensor(np.asarray(y, dtype=np.int64)).reshape(-1)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise InputError(f"dataset[{split!r}] needs images (N, C, H, W) and N labels, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    return x, y


def _subset(x: torch.Tensor, y: torch.Tensor, limit: int | None, salt: int):
    if limit is None or limit >= x.shape[0]:
        return x, y
    idx = np.sort(np.random.default_rng([DATA_SEED, salt]).permutation(x.shape[0])[:limit])
    t = torch.as_tensor(idx)
    return x[t], y[t]


def _load_splits(dataset, limits: dict[str, int | None]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    if isinstance(dataset, str):
        from ..data.datasets import load_dataset

        raw = {s: load_dataset(dataset, s, seed=DATA_SEED) for s in ("train", "val", "test")}
    elif isinstance(dataset, Mapping):
        missing = [s for s in ("train", "val", "test") if s not in dataset]
        if missing:
            raise InputError(f"the dataset mapping lacks {', '.join(missing)}; give train, val and test pairs")
        raw = {s: dataset[s] for s in ("train", "val", "test")}
    else:
        raise InputError(f"dataset must be a dataset name or a mapping of splits, got {type(dataset).__name__}")
    out = {}
    for salt, split in enumerate(("train", "val", "test")):
        x, y = _as_pair(raw[split], split)
        out[split] = _subset(x, y, limits.get(split), salt)
    return out


def _accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return accuracy(net, x, y, batch_size=EVAL_BATCH)


def _replacement_share(net: PatchedNet, x: torch.Tensor) -> float:
    with torch.no_grad():
        used = [net.uses_replacement(x[a:b]) for a, b in _chunks(x.shape[0], EVAL_BATCH)]
    return float(torch.cat(used).float().mean())


@dataclass
class RobustnessTask:
    """Data, augmentor and device of one robustness-repair run; shared by DeepPatch and the baselines.

    ``val_aug`` / ``test_sets``: the static augmented sets (``test_sets`` starts with ``"clean"``).
    """

    augmentor: Augmentor
    device: torch.device
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    val_aug: tuple[torch.Tensor, torch.Tensor]
    test_y: torch.Tensor
    test_sets: dict[str, torch.Tensor]
    data_seconds: float = 0.0
    _pretrained: dict = field(default_factory=dict, repr=False)

    @classmethod
    def create(cls, *, dataset, augment: str, device="auto", train_limit: int | None = None,
               val_limit: int | None = None, test_limit: int | None = None) -> RobustnessTask:
        """Load (or take) the splits, build the static augmented validation and test sets."""
        t0 = time.perf_counter()
        augmentor = get_augmentor(augment)
        dev = resolve_device(device)
        limits = {"train": _check_limit(train_limit, "train_limit"), "val": _check_limit(val_limit, "val_limit"),
                  "test": _check_limit(test_limit, "test_limit")}
        splits = _load_splits(dataset, limits)
        xv, yv = splits["val"]
        levels = augmentor.static(xv, DATA_SEED)
        val_aug = (torch.cat(list(levels.values())), yv.repeat(len(levels)))
        xt, yt = splits["test"]
        test_sets = {"clean": xt, **augmentor.static(xt, DATA_SEED)}
        on = lambda t: t.to(dev)
        return cls(augmentor, dev, tuple(map(on, splits["train"])), (on(xv), on(yv)), tuple(map(on, val_aug)),
                   on(yt), {k: on(v) for k, v in test_sets.items()}, time.perf_counter() - t0)

    def check_model(self, net: nn.Module) -> None:
        """Refuse a network whose input does not fit the data, before any training."""
        x = self.val[0][:1]
        try:
            with torch.no_grad():
                out = net.to(self.device)(x)
        except RuntimeError as exc:
            raise InputError(f"the model cannot take the dataset's images of shape {tuple(x.shape[1:])} "
                             f"({str(exc).splitlines()[0]}); use a model made for this dataset") from None
        if out.dim() != 2 or out.shape[1] <= int(torch.cat([self.train[1], self.val[1], self.test_y]).max()):
            raise InputError(f"the model has outputs {tuple(out.shape[1:])}, too few for the dataset's labels; "
                             "use a classifier made for this dataset")

    def val_robustness(self, net: nn.Module) -> float:
        """Accuracy on the augmented validation set (the model-selection score)."""
        return _accuracy(net, *self.val_aug)

    def metrics(self, net: nn.Module) -> dict[str, Any]:
        """Standard accuracy, accuracy per level, nRob/sRob (mean over clean and all levels), joint."""
        acc = {name: _accuracy(net, x, self.test_y) for name, x in self.test_sets.items()}
        std = acc["clean"]
        rob = float(np.mean(list(acc.values())))
        out = {"standard_accuracy": std, "levels": {k: v for k, v in acc.items() if k != "clean"},
               "robustness": rob, "metric": self.augmentor.metric, "joint": std + rob,
               "test_samples": int(self.test_y.shape[0])}
        if isinstance(net, PatchedNet):
            out["replacement_share"] = {k: _replacement_share(net, x) for k, x in self.test_sets.items()}
        return out

    def pretrained_metrics(self, net: nn.Sequential) -> dict[str, Any]:
        """:meth:`metrics` of the unpatched network, computed once per network (benchmarks patch one
        network many times)."""
        key = _fingerprint(net)
        if key not in self._pretrained:
            self._pretrained[key] = self.metrics(net)
        return copy.deepcopy(self._pretrained[key])

    def fit(self, model: nn.Module, params: list[torch.Tensor], batch_loss, *, epochs: int, lr: float,
            batch_size: int, seed: int, progress: bool | None, desc: str,
            initial_score: float | None = None) -> dict[str, Any]:
        """Train ``params`` of ``model`` with SGD (momentum 0.9, weight decay 5e-4, cosine decay of
        ``lr`` to 0) for ``epochs`` epochs over the training split; ``batch_loss(model, x, y, rng)``
        gives a batch's loss. After each epoch the robustness accuracy on the augmented validation
        set is measured and the best epoch's ``params`` are restored at the end. With
        ``initial_score`` (the untrained model's score), epoch 0 competes too: no epoch beating it
        means the parameters are restored to their initial values (the paper's rule)."""
        epochs = _check_positive_int(epochs, "epochs")
        batch_size = _check_positive_int(batch_size, "batch_size")
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise InputError(f"lr must be a positive number, got {lr!r}")
        x, y = self.train
        n = x.shape[0]
        steps = math.ceil(n / batch_size)
        opt = torch.optim.SGD(params, lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps)
        rng = np.random.default_rng([_check_seed(seed), 1])
        snapshot = lambda: [p.detach().clone() for p in params]
        best_state = snapshot() if initial_score is not None else None
        best_score, best_epoch = (initial_score, 0) if initial_score is not None else (-1.0, 0)
        history = []
        t0 = time.perf_counter()
        for epoch in range(1, epochs + 1):
            order = torch.as_tensor(rng.permutation(n), device=x.device)
            model.train()
            total = 0.0
            for b in tqdm(range(steps), desc=f"{desc} epoch {epoch}/{epochs}", unit="batch", disable=not progress,
                          leave=False):
                idx = order[b * batch_size:(b + 1) * batch_size]
                loss = batch_loss(model, x[idx], y[idx], rng)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * idx.numel()
            model.eval()
            score = self.val_robustness(model)
            history.append({"epoch": epoch, "train_loss": total / n, "val_robustness": score,
                            "seconds": round(time.perf_counter() - t0, 3)})
            if score > best_score:
                best_score, best_epoch, best_state = score, epoch, snapshot()
        with torch.no_grad():
            for p, v in zip(params, best_state):
                p.copy_(v)
        model.eval()
        return {"history": history, "best_epoch": best_epoch, "best_val_robustness": best_score,
                "initial_val_robustness": initial_score, "seconds": time.perf_counter() - t0}


def _fingerprint(net: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in net.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def parameter_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@dataclass
class StatisticalRepairResult:
    """What a statistical repairer returns: the model, its test metrics next to the pretrained
    model's, the model selection on the augmented validation set, method details and timings."""

    method: str
    model: nn.Module
    metrics: dict[str, Any]
    pretrained: dict[str, Any]
    training: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "metrics": self.metrics, "pretrained": self.pretrained,
                "training": self.training, "details": self.details,
                "timings": {k: round(v, 3) for k, v in self.timings.items()}, "options": self.options}

    def summary(self) -> str:
        m, p = self.metrics, self.pretrained
        name = m["metric"]
        lines = [(f"{self.method}: standard accuracy {100 * m['standard_accuracy']:.2f} % "
                  f"(pretrained {100 * p['standard_accuracy']:.2f} %), {name} {100 * m['robustness']:.2f} % "
                  f"(pretrained {100 * p['robustness']:.2f} %), joint {100 * m['joint']:.2f} "
                  f"(pretrained {100 * p['joint']:.2f}) on {m['test_samples']} test images")]
        share = m.get("replacement_share", {})
        levels = "  ".join(
            f"{k} {100 * v:.2f}/{100 * p['levels'][k]:.2f}" + (f" [{100 * share[k]:.0f}% repl]" if k in share else "")
            for k, v in m["levels"].items())
        lines.append(f"per level (after/before): {levels}")
        lines.append(f"best epoch {self.training['best_epoch']} of {len(self.training['history'])}; "
                     f"parameters {self.details.get('parameters')} (pretrained {self.details.get('parameters_pretrained')}); "
                     f"total {self.timings.get('total', 0):.1f} s")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# DeepPatch


def augmented_cross_entropy(augmentor: Augmentor):
    """The batch loss of adversarial training with dynamic augmentation: cross-entropy on the batch
    after the augmentor perturbs each sample with probability 1/2."""

    def loss(model, x, y, rng):
        return F.cross_entropy(model(augmentor.dynamic(x, rng)), y)

    return loss


def deeppatch(model, *, dataset, augment: str, ratio=0.25, variant: str = "gamma", epochs: int = DEFAULT_EPOCHS,
              ranking: str = "alpha", lr: float = PATCH_LR, batch_size: int = DEFAULT_BATCH, device="auto",
              seed: int = 0, progress: bool | None = None, train_limit: int | None = None,
              val_limit: int | None = None, test_limit: int | None = None,
              assessment: FilterAssessment | None = None, task: RobustnessTask | None = None,
              init: str = DEFAULT_INIT) -> StatisticalRepairResult:
    """Patch ``model`` (a path or an ``nn.Module``, convolutional) for robustness against ``augment``.

    ``dataset``: a dataset name (``mnist``, ``fashion-mnist``, ``digits``; its train/val/test splits)
    or a mapping ``{"train": (x, y), "val": (x, y), "test": (x, y)}``; ``*_limit``: use a fixed random
    subset of that size. ``ratio``: the blamed ratio kappa, a fraction (0.25) or a percentage (25).
    ``ranking``: ``alpha`` (the paper's assessment), ``bottom`` (the lowest ranked) or ``random``.
    ``variant``: how the returned model routes samples (it can be switched later with
    ``result.model.set_variant``). ``init``: ``clone`` (replacements start as copies of the blamed
    filters) or ``random`` (the paper's re-initialisation); ``lr``: the replacement filters' SGD step.
    ``assessment`` / ``task``: reuse a filter assessment or a loaded task (benchmarks run several
    patches on one model). Returns the patched model and its metrics.
    """
    t_start = time.perf_counter()
    variant = _check_choice(variant, VARIANTS, "variant")
    ranking = _check_choice(ranking, RANKINGS, "ranking")
    init = _check_choice(init, INITS, "init")
    kappa = kappa_percent(ratio)
    epochs = _check_positive_int(epochs, "epochs")
    seed = _check_seed(seed)
    net = as_canonical(model)
    if task is None:
        task = RobustnessTask.create(dataset=dataset, augment=augment, device=device,
                                     train_limit=train_limit, val_limit=val_limit, test_limit=test_limit)
    task.check_model(net)
    net = net.to(task.device)
    timings = {"data": task.data_seconds}

    t0 = time.perf_counter()
    if ranking != "random" and assessment is None:
        assessment = assess_filters(net, *task.val_aug, progress=progress)
    timings["assess"] = time.perf_counter() - t0 if ranking != "random" else 0.0
    blamed = select_filters(net, kappa, ranking=ranking, assessment=assessment, seed=seed)

    patched = PatchedNet(copy.deepcopy(net), blamed, variant="beta", seed=seed, init=init).to(task.device)
    params = list(patched.repl_weight.values()) + list(patched.repl_bias.values())
    training = task.fit(patched, params, augmented_cross_entropy(task.augmentor), epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, progress=progress, desc="patching")
    timings["train"] = training.pop("seconds")

    t0 = time.perf_counter()
    with torch.no_grad():
        rates = {name: torch.cat([patched.corrective_rate(x[a:b]) for a, b in _chunks(x.shape[0], EVAL_BATCH)])
                 for name, x in (("clean", task.val[0]), ("augmented", task.val_aug[0]))}
    boundary, side = calibrate_boundary(rates["clean"], rates["augmented"])
    patched.boundary.fill_(boundary)
    patched.side.fill_(side)
    patched.set_variant(variant)
    timings["calibrate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    pretrained = task.pretrained_metrics(net)
    metrics = task.metrics(patched)
    timings["evaluate"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    details = {
        "variant": variant, "kappa_percent": kappa, "ranking": ranking, "boundary": boundary, "side": side,
        "corrective_rate_mean": {k: float(v.mean()) for k, v in rates.items()},
        "gamma_layer": patched.gamma_layer,
        "blamed": {str(i): v for i, v in blamed.items()},
        "blamed_count": sum(len(v) for v in blamed.values()),
        "filters": sum(net[i].out_channels for i in _conv_indices(net)),
        "parameters": parameter_count(patched), "parameters_pretrained": parameter_count(net),
        "assessment": assessment.to_dict() if assessment is not None else None,
    }
    options = {"dataset": dataset if isinstance(dataset, str) else "(arrays)", "augment": task.augmentor.name,
               "ratio": ratio, "variant": variant, "ranking": ranking, "init": init, "epochs": epochs, "lr": lr,
               "batch_size": batch_size, "device": str(task.device), "seed": seed, "train_samples":
               int(task.train[1].shape[0]), "val_samples": int(task.val[1].shape[0])}
    return StatisticalRepairResult("deeppatch", patched.eval(), metrics, pretrained, training, details, timings, options)
