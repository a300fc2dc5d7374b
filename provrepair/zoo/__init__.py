"""A small zoo of pretrained networks shipped with the package.

Each model is a pair of package files: ``<name>.pt`` (the canonical network, written by
``provrepair.models.save_model``) and ``<name>.json`` (its card: architecture, training settings,
clean test accuracy, accuracy under the corruptions at severity 3). They are produced by
``benchmarks/train_zoo.py``.

Models: ``mnist_mlp`` (MNIST, 784-100-100-10), ``mnist_cnn`` (MNIST) and ``fashion_cnn``
(Fashion-MNIST), the two CNNs with input shape ``(1, 28, 28)``; and three networks that are not
piecewise linear throughout, which load with a frozen front (``provrepair.models.FrozenFront``)
and a repairable piecewise-linear back (their files record the cut): ``mnist_vit`` and
``fashion_vit`` (a small vision transformer: patch embedding, three attention blocks with LayerNorm
and GELU, a Linear-ReLU-Linear head; the head's two Linear layers are affine layers 0 and 1) and
``mnist_gelu_mlp`` (784-100-100-10 with a GELU after the first layer; layers 0 and 1 are the last
two Linear layers). Their architectures are factories in ``provrepair.zoo.architectures``. The CNNs were trained with
BatchNorm2d after each convolution; the files keep those layers, and ``load_zoo`` folds each into
the convolution before it (the canonical network has no BatchNorm). ``load_zoo(name,
fold_batchnorm=False)`` returns the network as trained, BatchNorm included.

>>> from provrepair.zoo import available, load_zoo, card
>>> available()
['fashion_cnn', 'fashion_vit', 'mnist_cnn', 'mnist_gelu_mlp', 'mnist_mlp', 'mnist_vit']
>>> net = load_zoo("mnist_mlp")          # nn.Sequential, float32, eval mode, input shape (784,)
>>> card("mnist_mlp")["test_accuracy"]   # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from ..errors import InputError

__all__ = ["available", "card", "load_zoo", "zoo_path"]

_DIR = Path(__file__).resolve().parent


def available() -> list[str]:
    """Names of the zoo models whose weights file ships with the package, sorted."""
    return sorted(p.stem for p in _DIR.glob("*.pt") if p.is_file())


def _check(name: str) -> str:
    names = available()
    if not isinstance(name, str) or name not in names:
        listed = ", ".join(names) if names else "(none: the zoo files are missing; run benchmarks/train_zoo.py)"
        raise InputError(f"unknown zoo model {name!r}; available: {listed}")
    return name


def zoo_path(name: str) -> Path:
    """The path of the weights file of zoo model ``name``."""
    return _DIR / f"{_check(name)}.pt"


def load_zoo(name: str, *, fold_batchnorm: bool = True) -> nn.Sequential:
    """Zoo model ``name`` as a canonical ``nn.Sequential`` (float32, eval mode, with metadata).

    With ``fold_batchnorm=False`` the network comes back exactly as it was trained and saved
    (BatchNorm layers kept, eval mode, with metadata) instead of in canonical form; it computes the
    same function up to float32 rounding.
    """
    # local import: listing the zoo does not need the model loaders
    from ..models import load_model

    path = zoo_path(name)
    if fold_batchnorm:
        return load_model(path)
    from ..models.meta import META_ATTR, set_meta
    from ..models.torch_io import load_torch, pt_meta

    net = load_torch(path)
    set_meta(net, pt_meta(getattr(net, META_ATTR, None), path))
    return net.eval()


def card(name: str) -> dict:
    """The card of zoo model ``name`` (a fresh dict on every call)."""
    path = _DIR / f"{_check(name)}.json"
    if not path.is_file():
        raise InputError(f"zoo model {name!r} has no card {path.name}; re-run benchmarks/train_zoo.py")
    return json.loads(path.read_text())
