"""What each weight row of an affine layer multiplies, per point and output position.

The point-repair LP and its size prediction both need this; canonical networks have numeric
Conv2d padding (string padding is refused at load), so unfolding needs no special cases.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def layer_inputs(layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """(N, positions, fan_in): one position for a Linear, H_out*W_out unfolded patches for a Conv2d."""
    if isinstance(layer, nn.Linear):
        return h.reshape(h.shape[0], 1, -1)
    cols = F.unfold(h, layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride)
    return cols.transpose(1, 2)
