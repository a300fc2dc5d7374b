"""Fréchet distance between Gaussian fits of feature distributions (FID without the Inception net).

MetaRepair measures how close a repair experience is to the target corruption by fitting a Gaussian
``N(mu, Sigma)`` to the features of each one's collected failures and taking the Fréchet (2-Wasserstein)
distance of the two fits (the paper's Eq. 7, written there with a typo in the square-root term):

    q = ||mu_1 - mu_2||^2 + tr(Sigma_1 + Sigma_2 - 2 (Sigma_1^{1/2} Sigma_2 Sigma_1^{1/2})^{1/2})

``tr((Sigma_1 Sigma_2)^{1/2})`` equals ``tr((Sigma_1^{1/2} Sigma_2 Sigma_1^{1/2})^{1/2})``; the latter is the
square root of a symmetric PSD matrix, so it is computed with two symmetric eigendecompositions in
float64 (no complex ``sqrtm`` and no imaginary residue to discard).

Features: the model's own penultimate layer (the input of its last affine layer) by default.
Inception-v3 features, as the paper uses, need torchvision and its weights in the local torch hub
cache; nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from .options import FEATURES

__all__ = ["FEATURES", "GaussianFit", "distance_matrix", "features", "fit_gaussian", "frechet_distance"]

#: Samples per forward pass when extracting features.
FEATURE_BATCH = 512


class GaussianFit:
    """Mean ``mu`` (d,) and covariance ``sigma`` (d, d) of a feature sample, float64."""

    __slots__ = ("mu", "sigma", "n")

    def __init__(self, mu, sigma, n: int = 0):
        self.mu = np.asarray(mu, dtype=np.float64).reshape(-1)
        self.sigma = np.asarray(sigma, dtype=np.float64)
        d = self.mu.shape[0]
        if self.sigma.shape != (d, d):
            raise InputError(f"a Gaussian fit needs a ({d}, {d}) covariance for a mean of {d} values, "
                             f"got {self.sigma.shape}")
        self.n = int(n)


def fit_gaussian(feats) -> GaussianFit:
    """The sample mean and (unbiased) covariance of ``feats`` (n, d), n >= 2."""
    f = np.asarray(feats, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise InputError(f"a Gaussian fit needs at least two feature vectors (n, d), got shape {f.shape}")
    return GaussianFit(f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1]), f.shape[0])


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(a: GaussianFit, b: GaussianFit) -> float:
    """The Fréchet distance between ``N(a.mu, a.sigma)`` and ``N(b.mu, b.sigma)`` (>= 0)."""
    if a.mu.shape != b.mu.shape:
        raise InputError(f"the two feature fits have different dimensions ({a.mu.shape[0]} and {b.mu.shape[0]})")
    root_a = _psd_sqrt(a.sigma)
    inner = root_a @ b.sigma @ root_a
    w = np.linalg.eigvalsh((inner + inner.T) / 2)
    cross = float(np.sqrt(np.clip(w, 0.0, None)).sum())
    diff = a.mu - b.mu
    q = float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2.0 * cross)
    return max(q, 0.0)


def _last_affine(net: nn.Sequential) -> int:
    idx = [i for i, m in enumerate(net) if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not idx:
        raise InputError("the model has no Linear or Conv2d layer, so it has no penultimate features")
    return idx[-1]


def _inception():  # pragma: no cover - needs torchvision and its weights offline
    try:
        import torchvision
    except ImportError:
        raise InputError("Inception-v3 features need torchvision, which is not installed; use "
                         "features='penultimate' (the model's own features)") from None
    try:
        weights = torchvision.models.Inception_V3_Weights.IMAGENET1K_V1
        path = torch.hub.get_dir() + "/checkpoints/" + weights.url.rsplit("/", 1)[-1]
        net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
        net.load_state_dict(torch.load(path, map_location="cpu"))
    except (OSError, RuntimeError, AttributeError) as exc:
        raise InputError(f"the Inception-v3 weights are not in the local torch hub cache ({exc}); place them "
                         "there or use features='penultimate'") from None
    net.fc = nn.Identity()
    return net.eval()


def features(net: nn.Sequential, x: torch.Tensor, *, kind: str = "penultimate",
             batch_size: int = FEATURE_BATCH) -> np.ndarray:
    """Feature vectors (n, d) of images ``x``: the input of the model's last affine layer
    (``"penultimate"``) or Inception-v3's pooled features (``"inception"``, if available offline)."""
    if kind not in FEATURES:
        raise InputError(f"unknown features {kind!r}; use one of: {', '.join(FEATURES)}")
    if kind == "inception":  # pragma: no cover - needs torchvision and its weights offline
        body = _inception().to(x.device)

        def run(b):
            b = b.expand(-1, 3, -1, -1) if b.shape[1] == 1 else b
            return body(nn.functional.interpolate(b, size=(299, 299), mode="bilinear", align_corners=False))
    else:
        body = net[: _last_affine(net)]
        run = body
    outs = []
    with torch.no_grad():
        for s in range(0, x.shape[0], batch_size):
            outs.append(run(x[s:s + batch_size]).flatten(1).double().cpu().numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 0))


def distance_matrix(fits: Mapping[str, GaussianFit], names: Sequence[str] | None = None) -> np.ndarray:
    """Pairwise Fréchet distances of ``fits`` in the order ``names`` (default: the mapping's order)."""
    names = list(fits) if names is None else list(names)
    n = len(names)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            out[i, j] = out[j, i] = frechet_distance(fits[names[i]], fits[names[j]])
    return out
