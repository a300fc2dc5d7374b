"""Folding BatchNorm into affine layers.

In eval mode a BatchNorm is a per-channel affine map ``a * y + c``. Folding it into the preceding
Linear/Conv2d keeps the network a chain of affine layers and ReLUs, which is what the repair LPs and
the certifiers reason about, and keeps the user's count of affine layers unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ModelFormatError


def batchnorm_scale_shift(bn: nn.BatchNorm1d | nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(a, c)`` (float64) with ``bn(y) == a * y + c`` in eval mode."""
    if bn.running_mean is None or bn.running_var is None:
        raise ModelFormatError(
            f"{type(bn).__name__} has track_running_stats=False, so in eval mode it normalises with "
            "the statistics of each batch and is not a fixed affine map; retrain with running "
            "statistics or remove the layer"
        )
    var = bn.running_var.detach().double()
    mean = bn.running_mean.detach().double()
    n = mean.numel()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones(n, dtype=torch.float64)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros(n, dtype=torch.float64)
    a = gamma / torch.sqrt(var + bn.eps)
    return a, beta - a * mean


def fold_batchnorm(affine: nn.Linear | nn.Conv2d, bn: nn.BatchNorm1d | nn.BatchNorm2d) -> nn.Linear | nn.Conv2d:
    """A new Linear/Conv2d equal to ``bn(affine(x))`` in eval mode (the inputs are not modified).

    The arithmetic is done in float64 and rounded once to float32.
    """
    if not isinstance(affine, (nn.Linear, nn.Conv2d)):
        raise TypeError(f"fold_batchnorm needs a Linear or Conv2d, got {type(affine).__name__}")
    channels = affine.out_features if isinstance(affine, nn.Linear) else affine.out_channels
    if bn.num_features != channels:
        raise ModelFormatError(
            f"{type(bn).__name__}({bn.num_features}) follows a {type(affine).__name__} with {channels} "
            "outputs; the model is inconsistent, check that it runs in PyTorch"
        )
    a, c = batchnorm_scale_shift(bn)
    w = affine.weight.detach().double()
    b = affine.bias.detach().double() if affine.bias is not None else torch.zeros(channels, dtype=torch.float64)
    new_w = w * a.reshape((-1,) + (1,) * (w.dim() - 1))
    new_b = a * b + c
    if isinstance(affine, nn.Linear):
        out = nn.Linear(affine.in_features, affine.out_features, bias=True)
    else:
        out = nn.Conv2d(
            affine.in_channels,
            affine.out_channels,
            affine.kernel_size,
            stride=affine.stride,
            padding=affine.padding,
            dilation=affine.dilation,
            groups=affine.groups,
            bias=True,
            padding_mode=affine.padding_mode,
        )
    with torch.no_grad():
        out.weight.copy_(new_w.float())
        out.bias.copy_(new_b.float())
    return out.eval()


def batchnorm_as_affine(bn: nn.BatchNorm1d | nn.BatchNorm2d) -> nn.Linear | nn.Conv2d:
    """A standalone affine layer equal to ``bn`` in eval mode.

    Used when no affine layer directly precedes the BatchNorm: BatchNorm1d becomes a diagonal
    Linear, BatchNorm2d a diagonal 1x1 Conv2d (dense, groups=1, so later stages need no grouped
    convolutions).
    """
    a, c = batchnorm_scale_shift(bn)
    n = a.numel()
    if isinstance(bn, nn.BatchNorm2d):
        out = nn.Conv2d(n, n, kernel_size=1, bias=True)
        w = torch.diag(a).reshape(n, n, 1, 1)
    else:
        out = nn.Linear(n, n, bias=True)
        w = torch.diag(a)
    with torch.no_grad():
        out.weight.copy_(w.float())
        out.bias.copy_(c.float())
    return out.eval()
