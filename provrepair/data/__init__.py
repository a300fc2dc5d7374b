"""Datasets that ship offline (MNIST, Fashion-MNIST, scikit-learn digits), corruptions and augmentors.

The corruption suite (:mod:`.corruptions`) and DeepPatch's augmentors (:mod:`.augment`) need
scipy; their names are imported on first use so that ``import provrepair.data`` stays light.
"""

from __future__ import annotations

import importlib

from .build import build_corrupted, load_corrupted, read_corrupted
from .datasets import DATASETS, SPLITS, dataset_info, load_dataset
from .mnist import load_mnist

_LAZY = {
    **dict.fromkeys(("corrupt", "corrupt_all", "corruption_group", "CORRUPTIONS", "GROUPS", "SEVERITIES"),
                    "corruptions"),
    **dict.fromkeys(("BLUR_SIGMAS", "SPATIAL_RANGES", "SPATIAL_LEVELS", "SpatialRanges", "blur", "blur_dynamic",
                     "blur_static", "spatial", "spatial_static", "spatial_params", "apply_spatial"), "augment"),
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["load_mnist", "load_dataset", "dataset_info", "DATASETS", "SPLITS", "build_corrupted", "load_corrupted",
           "read_corrupted", *_LAZY]
