"""The zoo's architectures as factories (defined in ``provrepair.models.architectures``, re-exported
here under the name the zoo's files and ``--arch provrepair.zoo.architectures:vit_small`` use)."""

from ..models.architectures import (
    ARCHITECTURES,
    Attention,
    Block,
    ClsToken,
    PatchEmbed,
    gelu_mlp,
    tiny_vit,
    vit_small,
)

__all__ = ["ARCHITECTURES", "Attention", "Block", "ClsToken", "PatchEmbed", "gelu_mlp", "tiny_vit", "vit_small"]
