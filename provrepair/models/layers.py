"""Our own layers and the table of layers provrepair can reason about.

Every later stage (the repair LPs, bound propagation, the MILP check) handles exactly the module
types listed here, so the loader refuses anything else up front rather than failing deep inside.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError


class Normalize(nn.Module):
    """Input normalisation ``(x - mean) / std``, kept inside the network.

    Keeping it in the network means the network's input is in the user's units (pixels in [0,1],
    ACAS Xu's physical units), so repair sets and specs need no separate preprocessing step.
    ``mean`` and ``std`` must broadcast to one sample's shape: a scalar, a vector for a flat input,
    or a (C, 1, 1) tensor for per-channel image normalisation.
    """

    def __init__(self, mean, std):
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).detach().clone()
        std_t = torch.as_tensor(std, dtype=torch.float32).detach().clone()
        if torch.any(std_t == 0) or not torch.all(torch.isfinite(std_t)):
            raise InputError(
                "Normalize: std contains zero or a non-finite value, which would divide by zero; "
                "fix the normalisation constants in the model file"
            )
        if not torch.all(torch.isfinite(mean_t)):
            raise InputError("Normalize: mean contains a non-finite value; fix the normalisation constants")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean_shape={tuple(self.mean.shape)}, std_shape={tuple(self.std.shape)}"


#: Module types a normalised network may contain (exact types, not subclasses: a subclass may
#: override ``forward`` with something the LPs do not model).
SUPPORTED_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv2d,
    nn.ReLU,
    nn.Flatten,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.MaxPool2d,
    Normalize,
)

#: Affine layers: the ones the API counts ("layer 3" = the fourth of these).
AFFINE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)

#: Folded into the preceding affine layer when loading.
BATCHNORM_TYPES: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d)

#: Dropped when loading (they are the identity in eval mode).
DROPPED_TYPES: tuple[type[nn.Module], ...] = (
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)

SUPPORTED_TEXT = (
    "Linear, Conv2d, ReLU, Flatten, AvgPool2d, AdaptiveAvgPool2d, MaxPool2d, Normalize "
    "(input normalisation), BatchNorm1d/BatchNorm2d (folded into the preceding Linear/Conv2d), "
    "Identity/Dropout (dropped), nested Sequential (flattened)"
)


def is_affine(module: nn.Module) -> bool:
    return type(module) in AFFINE_TYPES
