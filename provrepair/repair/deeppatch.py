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

The data, the augmentor, the training loop and the test metrics are shared with the baselines
(:mod:`provrepair.repair.finetune`, :mod:`provrepair.repair.augmix`) in
:mod:`provrepair.repair.training`; DeepPatch's target is a
:class:`~provrepair.repair.training.RobustnessTask` and its options are
:class:`~provrepair.repair.options.DeepPatchOptions`.
"""


from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..data.checks import check_int, check_seed
from ..errors import InputError, ModelFormatError
from ..models import ModelMeta, get_meta, set_meta
from ..models.inference import predictions
from .options import (
    DEFAULT_BATCH,
    DEFAULT_EPOCHS,
    DEFAULT_INIT,
    INITS,
    PATCH_LR,
    RANKINGS,
    VARIANTS,
    DeepPatchOptions,
    build,
    check_choice,
)
from .protocol import Progress, RepairResult, say
from .provable import as_network
from .training import (
    EVAL_BATCH,
    RobustnessTask,
    as_canonical,
    augmented_cross_entropy,
    chunks,
    conv_indices,
    parameter_count,
    robustness_summary,
    show_bars,
    trained_result,
)

__all__ = [
    "DeepPatchRepairer",
    "FilterAssessment",
    "PatchedNet",
    "assess_filters",
    "calibrate_boundary",
    "corrective_rate",
    "deeppatch",
    "kappa_percent",
    "load_patched",
    "select_filters",
]

_VARIANT_CODES = {"beta": 0, "gamma": 1, "fallback": 2}
#: The most samples in one forward pass of the batched filter assessment.
ASSESS_BATCH = 4096


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
        init = check_choice(init, INITS, "init")
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
        self.register_buffer("variant_code", torch.tensor(_VARIANT_CODES[check_choice(variant, VARIANTS, "variant")]))
        meta = get_meta(base)
        set_meta(self, ModelMeta(format="torch", source=None, input_shape=meta.input_shape,
                                 extra={"repair": "deeppatch"}))

    # -- configuration
    @property
    def patched_layers(self) -> list[int]:
        """Module indices (in ``base``) of the conv layers with replacement filters, in order."""
        return sorted(int(k) for k in self.repl_weight)

    @property
    def added_parameters(self) -> int:
        """How many parameters the replacement filters add to the original network."""
        return int(sum(p.numel() for p in (*self.repl_weight.values(), *self.repl_bias.values())))

    @property
    def first_unpatched(self) -> int:
        """The first module index of ``base`` after every replacement filter: from there on the
        network is the original's, the same for every sample (what the LP polish may change)."""
        return max(self.patched_layers) + 1

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
        self.variant_code.fill_(_VARIANT_CODES[check_choice(variant, VARIANTS, "variant")])
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


def assess_filters(net: nn.Sequential, x: torch.Tensor, y: torch.Tensor, *, max_batch: int = ASSESS_BATCH,
                   progress: Progress | None = None) -> FilterAssessment:
    """Zero every filter of every conv layer in turn and measure the accuracy on ``(x, y)`` (the
    augmented validation set; tensors on the network's device).

    The layer's output is computed once per chunk of samples; copies of it, each with one filter's
    channel set to 0, go through the remaining layers together, up to ``max_batch`` samples a pass.
    """
    t0 = time.perf_counter()
    convs = conv_indices(net)
    y = y.to(x.device)
    n = x.shape[0]
    base = predictions(net, x, batch_size=EVAL_BATCH)
    acc0 = float(np.mean(base == y.cpu().numpy()))
    scores: dict[int, np.ndarray] = {}
    passes = singles = 0
    bar = tqdm(total=sum(net[i].out_channels for i in convs), desc="assessing filters", unit="filter",
               disable=not show_bars(progress), leave=False)
    with torch.no_grad():
        for i in convs:
            m = net[i].out_channels
            per = max(1, min(n, max_batch // m))  # samples per chunk: every filter's copy in one pass if possible
            group = max(1, max_batch // per)  # filters per pass
            correct = np.zeros(m, dtype=np.int64)
            for s0, s1 in chunks(n, per):
                h = net[: i + 1](x[s0:s1])
                yb = y[s0:s1]
                for f0, f1 in chunks(m, group):
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
    check_choice(ranking, RANKINGS, "ranking")
    if ranking != "random" and assessment is None:
        raise InputError(f"ranking {ranking!r} needs a filter assessment; run assess_filters first")
    blamed: dict[int, list[int]] = {}
    for i in conv_indices(net):
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
        widest = max(net[i].out_channels for i in conv_indices(net))
        raise InputError(f"ratio {kappa:g} % selects no filter (the widest conv layer has {widest} filters); "
                         f"use a ratio of at least {math.ceil(10000 / widest) / 100:g} %")
    return blamed


# --------------------------------------------------------------------------------------------------
# DeepPatch


def _checked(opts: DeepPatchOptions) -> DeepPatchOptions:
    """Refuse bad options before any data is loaded or any network copied."""
    check_choice(opts.variant, VARIANTS, "variant")
    check_choice(opts.ranking, RANKINGS, "ranking")
    check_choice(opts.init, INITS, "init")
    kappa_percent(opts.ratio)
    return dataclasses.replace(opts, epochs=check_int(opts.epochs, "epochs"), seed=check_seed(opts.seed))


def _calibrate(patched: PatchedNet, task: RobustnessTask, variant: str) -> tuple[dict[str, torch.Tensor], float, int]:
    """Set the gamma unit's boundary and side from the validation rates; returns the rates, the
    boundary (unrounded: the buffer holds it in float32) and the side."""
    with torch.no_grad():
        rates = {name: torch.cat([patched.corrective_rate(x[a:b]) for a, b in chunks(x.shape[0], EVAL_BATCH)])
                 for name, x in (("clean", task.val[0]), ("augmented", task.val_aug[0]))}
    boundary, side = calibrate_boundary(rates["clean"], rates["augmented"])
    patched.boundary.fill_(boundary)
    patched.side.fill_(side)
    patched.set_variant(variant)
    return rates, boundary, side


def _details(net: nn.Sequential, patched: PatchedNet, opts: DeepPatchOptions, blamed: dict,
             calibration: tuple, assessment: FilterAssessment | None) -> dict[str, Any]:
    rates, boundary, side = calibration
    return {
        "variant": opts.variant, "kappa_percent": kappa_percent(opts.ratio), "ranking": opts.ranking,
        "boundary": boundary, "side": side,
        "corrective_rate_mean": {k: float(v.mean()) for k, v in rates.items()},
        "gamma_layer": patched.gamma_layer,
        "blamed": {str(i): v for i, v in blamed.items()},
        "blamed_count": sum(len(v) for v in blamed.values()),
        "filters": sum(net[i].out_channels for i in conv_indices(net)),
        "parameters": parameter_count(patched), "parameters_pretrained": parameter_count(net),
        "assessment": assessment.to_dict() if assessment is not None else None,
    }


class DeepPatchRepairer:
    """DeepPatch behind the repairer protocol: ``target`` is a :class:`RobustnessTask` (the data and
    the augmentor to be robust against), ``options`` a :class:`DeepPatchOptions`."""

    name = "deeppatch"
    kind = "statistical"
    Options = DeepPatchOptions

    def run(self, model, target: RobustnessTask, options: DeepPatchOptions,
            progress: Progress | None = None) -> RepairResult:
        t_start = time.perf_counter()
        opts, task = _checked(options), target
        net = as_canonical(model)
        task.check_model(net)
        net = net.to(task.device)
        timings = {"data": task.data_seconds}
        t0 = time.perf_counter()
        assessment = opts.assessment
        if opts.ranking != "random" and assessment is None:
            say(progress)("deeppatch: assessing the filters")
            assessment = assess_filters(net, *task.val_aug, progress=progress)
        timings["assess"] = time.perf_counter() - t0 if opts.ranking != "random" else 0.0
        blamed = select_filters(net, opts.ratio, ranking=opts.ranking, assessment=assessment, seed=opts.seed)
        patched = PatchedNet(copy.deepcopy(net), blamed, variant="beta", seed=opts.seed, init=opts.init).to(task.device)
        params = list(patched.repl_weight.values()) + list(patched.repl_bias.values())
        training = task.fit(patched, params, augmented_cross_entropy(task.augmentor), epochs=opts.epochs, lr=opts.lr,
                            batch_size=opts.batch_size, seed=opts.seed, progress=progress, desc="patching")
        timings["train"] = training.pop("seconds")
        t0 = time.perf_counter()
        calibration = _calibrate(patched, task, opts.variant)
        timings["calibrate"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        pretrained = task.pretrained_metrics(net)
        metrics = task.metrics(patched)
        timings["evaluate"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_start
        details = _details(net, patched, opts, blamed, calibration, assessment)
        record = {**task.record(), "ratio": opts.ratio, "variant": opts.variant, "ranking": opts.ranking,
                  "init": opts.init, "epochs": opts.epochs, "lr": opts.lr, "batch_size": opts.batch_size,
                  "seed": opts.seed}
        message = robustness_summary("deeppatch", metrics, pretrained, training, details, timings)
        return trained_result("deeppatch", patched.eval(), message=message, metrics=metrics, pretrained=pretrained,
                              training=training, details=details, timings=timings, options=record)


def deeppatch(model, *, dataset, augment: str, ratio=0.25, variant: str = "gamma", epochs: int = DEFAULT_EPOCHS,
              ranking: str = "alpha", lr: float = PATCH_LR, batch_size: int = DEFAULT_BATCH, device="auto",
              seed: int = 0, progress: Progress | bool | None = None, train_limit: int | None = None,
              val_limit: int | None = None, test_limit: int | None = None,
              assessment: FilterAssessment | None = None, task: RobustnessTask | None = None,
              init: str = DEFAULT_INIT) -> RepairResult:
    """Patch ``model`` (a path or an ``nn.Module``, convolutional) for robustness against ``augment``.

    ``dataset``: a dataset name (``mnist``, ``fashion-mnist``, ``digits``; its train/val/test splits)
    or a mapping ``{"train": (x, y), "val": (x, y), "test": (x, y)}``; ``*_limit``: use a fixed random
    subset of that size. ``ratio``: the blamed ratio kappa, a fraction (0.25) or a percentage (25).
    ``ranking``: ``alpha`` (the paper's assessment), ``bottom`` (the lowest ranked) or ``random``.
    ``variant``: how the returned model routes samples (it can be switched later with
    ``result.model.set_variant``). ``init``: ``clone`` (replacements start as copies of the blamed
    filters) or ``random`` (the paper's re-initialisation); ``lr``: the replacement filters' SGD step.
    ``assessment`` / ``task``: reuse a filter assessment or a loaded task (benchmarks run several
    patches on one model). The API's form of :class:`DeepPatchRepairer`.
    """
    opts = _checked(build(DeepPatchOptions, epochs=epochs, lr=lr, batch_size=batch_size, device=str(device),
                          seed=seed, ratio=ratio, variant=variant, ranking=ranking, init=init, assessment=assessment))
    if task is None:
        task = RobustnessTask.create(dataset=dataset, augment=augment, device=device, train_limit=train_limit,
                                     val_limit=val_limit, test_limit=test_limit)
    return DeepPatchRepairer().run(model, task, opts, progress)


def as_runnable(model) -> nn.Module:
    """A DeepPatch model as it is (its per-sample switch is part of its forward pass); any other
    model as the canonical network."""
    return model if isinstance(model, PatchedNet) else as_network(model)
