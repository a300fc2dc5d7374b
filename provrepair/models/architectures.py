"""Architectures of the zoo models that are not plain piecewise-linear Sequentials, as factories
(re-exported by ``provrepair.zoo.architectures``).

Each factory builds an untrained ``nn.Sequential`` of the architecture a zoo model was trained with,
so a ``state_dict`` of it can be loaded by name (``load_model(path, arch="vit_small")`` or
``provrepair repair MODEL --arch provrepair.zoo.architectures:vit_small``).

Every network here is a Sequential of blocks whose *last* modules (the head) are piecewise linear
(Linear, ReLU, Linear): ``normalize_model`` puts everything before the head into a frozen front
(``provrepair.models.FrozenFront``) and the head's affine layers are repairable.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .meta import ModelMeta, set_meta


def _with_cut(net: nn.Sequential, input_shape: tuple[int, ...]) -> nn.Sequential:
    """Record the default cut ('auto': right after the last non-piecewise-linear block) and the
    input shape, so ``load_model(path, arch=<factory>)`` splits the network without being told."""
    set_meta(net, ModelMeta(format="torch", source=None, input_shape=input_shape, extra={"cut": "auto"}))
    return net

__all__ = ["ARCHITECTURES", "Attention", "Block", "ClsToken", "PatchEmbed", "gelu_mlp", "tiny_vit", "vit_small"]


class PatchEmbed(nn.Module):
    """Non-overlapping patches (a strided convolution), a class token and learned positions.

    ``(N, C, H, W) -> (N, 1 + (H/p)*(W/p), dim)``.
    """

    def __init__(self, in_channels: int = 1, image: int = 28, patch: int = 7, dim: int = 64):
        super().__init__()
        if image % patch:
            raise ValueError(f"image size {image} is not a multiple of the patch size {patch}")
        self.proj = nn.Conv2d(in_channels, dim, patch, stride=patch)
        n = (image // patch) ** 2
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.proj(x).flatten(2).transpose(1, 2)
        cls = self.cls.expand(t.shape[0], -1, -1)
        return torch.cat([cls, t], dim=1) + self.pos


class Attention(nn.Module):
    """Multi-head self-attention written out (one qkv Linear, softmax, one output Linear), so it
    exports to plain ONNX ops (MatMul, Softmax, Transpose, Reshape)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        h = self.heads
        qkv = self.qkv(x).reshape(n, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = torch.softmax((q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d // h)), dim=-1)
        y = (att @ v).transpose(1, 2).reshape(n, t, d)
        return self.out(y)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(LN(x))``, then ``x + MLP(LN(x))`` with a GELU MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ClsToken(nn.Module):
    """The class token's features: ``(N, T, dim) -> (N, dim)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]


def vit_small(in_channels: int = 1, image: int = 28, patch: int = 7, dim: int = 64, depth: int = 3,
              heads: int = 4, hidden: int = 128, classes: int = 10) -> nn.Sequential:
    """The zoo ViT: patch embedding, ``depth`` attention blocks (LayerNorm, GELU), a final
    LayerNorm, the class token, and the head Linear(dim, hidden)-ReLU-Linear(hidden, classes).

    As a Sequential of blocks, the default cut is right after ``ClsToken``: the head's two Linear
    layers are affine layers 0 and 1 of the repairable back.
    """
    blocks = [Block(dim, heads) for _ in range(depth)]
    net = nn.Sequential(
        PatchEmbed(in_channels, image, patch, dim),
        *blocks,
        nn.LayerNorm(dim),
        ClsToken(),
        nn.Linear(dim, hidden),
        nn.ReLU(),
        nn.Linear(hidden, classes),
    )
    return _with_cut(net, (in_channels, image, image))


def tiny_vit(classes: int = 10) -> nn.Sequential:
    """A very small ViT of the same shape as ``vit_small`` (8x8 single-channel input), for tests."""
    return vit_small(in_channels=1, image=8, patch=4, dim=8, depth=1, heads=2, hidden=12, classes=classes)


def gelu_mlp(inputs: int = 784, hidden: int = 100, classes: int = 10) -> nn.Sequential:
    """MLP 784-100-100-10 with a GELU after the first layer and a ReLU after the second.

    The default cut is right after the GELU: the last two Linear layers are repairable (affine
    layers 0 and 1 of the back); the first is in the frozen front.
    """
    net = nn.Sequential(
        nn.Linear(inputs, hidden),
        nn.GELU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, classes),
    )
    return _with_cut(net, (inputs,))


#: Factories by name: ``load_model(path, arch=<name>)`` and ``--arch <name>`` accept these names.
ARCHITECTURES = {"vit_small": vit_small, "tiny_vit": tiny_vit, "gelu_mlp": gelu_mlp}
