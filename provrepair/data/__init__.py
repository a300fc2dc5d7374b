"""Datasets that ship offline (MNIST, Fashion-MNIST, scikit-learn digits), corruptions and augmentors.

Every name is imported on first use, so that ``import provrepair.data`` stays light: the
corruption suite (:mod:`.corruptions`) and DeepPatch's augmentors (:mod:`.augment`) need scipy, the
loaders numpy, and the repairers' options (which the CLI's ``--help`` reads) need only
:mod:`.checks`.
"""

from __future__ import annotations

import importlib

_LAZY = {
    **dict.fromkeys(("build_corrupted", "load_corrupted", "read_corrupted"), "build"),
    **dict.fromkeys(("DATASETS", "SPLITS", "dataset_info", "load_dataset"), "datasets"),
    "load_mnist": "mnist",
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


__all__ = [*_LAZY]
