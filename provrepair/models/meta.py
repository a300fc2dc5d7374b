"""Metadata that travels with a loaded network.

A file format often carries facts the torch modules cannot (the input shape of a convolutional
net, the ACAS Xu input domain and output scaling). They are kept on the network itself, as the
attribute ``provrepair_meta``, so that they survive ``torch.save`` and can be written back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

META_ATTR = "provrepair_meta"


@dataclass
class ModelMeta:
    """Where a network came from and what its input looks like.

    ``format``: the format it was read from ("pt", "onnx", "nnet", "eran", or "torch" for an
    in-memory module). ``source``: the file path, or None. ``input_shape``: one sample's shape
    without the batch dimension, or None when it cannot be known. ``extra``: format-specific
    facts (for ``.nnet``: input_min, input_max, input_mean, input_range, output_mean,
    output_range as lists of floats). ``extra["cut"]``: where the model splits into a frozen front
    and a piecewise-linear back (a position, a module name or "auto"; see ``normalize_model``),
    so a model saved with its front loads with the same cut.
    """

    format: str = "torch"
    source: str | None = None
    input_shape: tuple[int, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.input_shape is not None:
            self.input_shape = tuple(int(d) for d in self.input_shape)


def infer_input_shape(net: nn.Module) -> tuple[int, ...] | None:
    """Guess one sample's shape from the first layers; None when they do not determine it.

    A leading Linear fixes the shape to (in_features,), a leading flat Normalize to its length;
    a convolution or a Flatten accepts many spatial sizes, so nothing is guessed for them.
    """
    from .layers import Normalize  # local import: layers is light, but keep meta import-free

    modules = list(net) if isinstance(net, nn.Sequential) else [net]
    for m in modules:
        if type(m).__name__ == "FrozenFront":  # its own first module decides (recorded when it was cut)
            return getattr(m, "input_shape", None)
        if isinstance(m, Normalize):
            if m.mean.dim() == 1 and m.mean.numel() > 1:
                return (m.mean.numel(),)
            if m.std.dim() == 1 and m.std.numel() > 1:
                return (m.std.numel(),)
            continue
        if isinstance(m, nn.Linear):
            return (m.in_features,)
        return None
    return None


def get_meta(net: nn.Module) -> ModelMeta:
    """The network's metadata, or a default one (input shape inferred) when it has none."""
    meta = getattr(net, META_ATTR, None)
    if isinstance(meta, ModelMeta):
        return meta
    return ModelMeta(format="torch", source=None, input_shape=infer_input_shape(net), extra={})


def set_meta(net: nn.Module, meta: ModelMeta) -> nn.Module:
    """Attach ``meta`` to ``net`` (returned for chaining)."""
    setattr(net, META_ATTR, meta)
    return net
