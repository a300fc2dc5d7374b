"""AugMix-style baseline (Hendrycks et al., ICLR 2020): augmentation chains mixed with the original
image, trained with a Jensen-Shannon consistency loss.

For each image, ``width`` chains of 1..``max_depth`` random operations are applied, the chains are
mixed with Dirichlet(``alpha``) weights, and the mixture is blended with the original image by a
Beta(``alpha``, ``alpha``) weight. Two such views and the clean image go through the network; the loss
is the cross-entropy on the clean image plus ``jsd_weight`` times the Jensen-Shannon divergence of
the three predictive distributions. The whole network is trained (:func:`~provrepair.repair.finetune.retrain`).

Operations (on images in [0, 1]): AugMix's autocontrast, equalize, posterize, solarize, rotate,
shear, translate x / y, plus, as DeepPatch's authors did for blur, the augmentor's own perturbation
at a random strength (a Gaussian blur, or a random SENSEI transform). Geometric magnitudes are
uniform within SENSEI's ranges (``provrepair.data.augment.SPATIAL_RANGES``); the pixel operations
use AugMix's default severity 3 of 10.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..data import augment as _aug
from .finetune import retrain, training_options
from .options import DEFAULT_BATCH, DEFAULT_EPOCHS, DEFAULT_LR, JSD_WEIGHT, AugmixOptions
from .protocol import Progress, RepairResult
from .training import RobustnessTask

__all__ = ["AugmixRepairer", "JSD_WEIGHT", "augment_and_mix", "augmix", "augmix_loss", "generic_ops", "jensen_shannon",
           "task_ops"]

#: AugMix's defaults: 3 chains of depth 1..3, Dirichlet/Beta parameter 1 (the JS weight, 12, is
#: :data:`~provrepair.repair.options.JSD_WEIGHT`).
WIDTH, MAX_DEPTH, ALPHA = 3, 3, 1.0
_SEVERITY = 0.3  # AugMix's severity 3 of 10


def _autocontrast(x, rng):
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (x - lo) / span.clamp_min(1e-12), x)


def _equalize(x, rng):
    q = torch.round(x * 255).flatten(2)
    ranks = torch.searchsorted(q.sort(dim=2).values.contiguous(), q.contiguous(), right=True)
    return (ranks.to(x.dtype) / q.shape[2]).view_as(x)


def _posterize(x, rng):
    bits = torch.as_tensor(rng.integers(4 - int(_SEVERITY * 4), 5, size=x.shape[0]), device=x.device)
    step = (2 ** (8 - bits)).view(-1, 1, 1, 1).to(x.dtype)
    return torch.floor(torch.round(x * 255) / step) * step / 255


def _solarize(x, rng):
    t = torch.as_tensor(1.0 - _SEVERITY * rng.random(x.shape[0]), dtype=x.dtype, device=x.device).view(-1, 1, 1, 1)
    return torch.where(x < t, x, 1.0 - x)


def _geometric(key: str):
    r = _aug.SPATIAL_RANGES
    half = {"rotate": r.rotate, "shear": r.shear, "tx": r.translate, "ty": r.translate}[key]

    def op(x, rng):
        n = x.shape[0]
        params = {"rotate": np.zeros(n), "tx": np.zeros(n), "ty": np.zeros(n), "shear": np.zeros(n), "zoom": np.ones(n)}
        params[key] = rng.uniform(-half, half, size=n)
        return _aug.apply_spatial(x, params)

    return op


def _task_op(augment: str):
    if augment == "blur":
        def op(x, rng):
            return _aug.blur_dynamic(x, rng, p=1.0)
    else:
        def op(x, rng):
            return _aug.spatial(x, rng)
    return op


def generic_ops() -> list:
    """AugMix's own eight operations, without any perturbation of the repair's task."""
    return [_autocontrast, _equalize, _posterize, _solarize, _geometric("rotate"), _geometric("shear"),
            _geometric("tx"), _geometric("ty")]


def task_ops(augment: str) -> list:
    """AugMix's operations plus the augmentor's own perturbation (as DeepPatch's authors did for blur)."""
    return generic_ops() + [_task_op(augment)]


def augment_and_mix(x: torch.Tensor, rng: np.random.Generator, ops, *, width: int = WIDTH,
                    max_depth: int = MAX_DEPTH, alpha: float = ALPHA) -> torch.Tensor:
    """One AugMix view of each image of ``x`` (N, C, H, W): ``width`` chains of random ``ops`` mixed
    by Dirichlet weights, blended with the original by a Beta weight (per image)."""
    n = x.shape[0]
    w = torch.as_tensor(rng.dirichlet([alpha] * width, size=n), dtype=x.dtype, device=x.device)
    m = torch.as_tensor(rng.beta(alpha, alpha, size=n), dtype=x.dtype, device=x.device).view(-1, 1, 1, 1)
    mix = torch.zeros_like(x)
    for c in range(width):
        chain = x.clone()
        depth = rng.integers(1, max_depth + 1, size=n)
        for d in range(max_depth):
            which = np.where(depth > d, rng.integers(0, len(ops), size=n), -1)
            for k, op in enumerate(ops):
                sel = np.flatnonzero(which == k)
                if sel.size:
                    idx = torch.as_tensor(sel, device=x.device)
                    chain[idx] = op(chain[idx], rng)
        mix += w[:, c].view(-1, 1, 1, 1) * chain
    return m * x + (1 - m) * mix


def jensen_shannon(*logits: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence of the softmax distributions of ``logits`` (mean over the batch)."""
    probs = [F.softmax(z, dim=1) for z in logits]
    log_mixture = torch.clamp(sum(probs) / len(probs), 1e-7, 1.0).log()
    return sum(F.kl_div(log_mixture, p, reduction="batchmean") for p in probs) / len(probs)


def augmix_loss(ops, jsd_weight: float):
    """AugMix's batch loss: cross-entropy on the image plus ``jsd_weight`` times the Jensen-Shannon
    consistency of it and two AugMix views made with ``ops``."""

    def loss(net, x, y, rng):
        views = torch.cat([x, augment_and_mix(x, rng, ops), augment_and_mix(x, rng, ops)])
        clean, a1, a2 = net(views).chunk(3)
        return F.cross_entropy(clean, y) + jsd_weight * jensen_shannon(clean, a1, a2)

    return loss


class AugmixRepairer:
    """AugMix-style training behind the repairer protocol: ``target`` is a :class:`RobustnessTask`."""

    name = "augmix"
    kind = "statistical"
    Options = AugmixOptions

    def run(self, model, target: RobustnessTask, options: AugmixOptions,
            progress: Progress | None = None) -> RepairResult:
        loss = augmix_loss(task_ops(target.augmentor.name), options.jsd_weight)
        return retrain("augmix", model, loss, target, options, progress=progress,
                       details={"jsd_weight": options.jsd_weight})


def augmix(model, *, dataset, augment: str, epochs: int = DEFAULT_EPOCHS, lr: float = DEFAULT_LR,
           batch_size: int = DEFAULT_BATCH, device="auto", seed: int = 0, progress: Progress | bool | None = None,
           train_limit: int | None = None, val_limit: int | None = None, test_limit: int | None = None,
           jsd_weight: float = JSD_WEIGHT, task: RobustnessTask | None = None) -> RepairResult:
    """Train the whole of ``model`` AugMix-style (same arguments as
    :func:`provrepair.repair.finetune.finetune`; ``jsd_weight``: the consistency loss's weight). The
    API's form of :class:`AugmixRepairer`."""
    opts, task = training_options(AugmixOptions, dataset=dataset, augment=augment, device=device,
                                  train_limit=train_limit, val_limit=val_limit, test_limit=test_limit, task=task,
                                  epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, jsd_weight=jsd_weight)
    return AugmixRepairer().run(model, task, opts, progress)
