"""PyTorch files: a whole pickled module, or a state_dict loaded into a given architecture.

Reading a pickled module runs code from the file (``torch.load(weights_only=False)``): load only
files you trust.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError, ModelFormatError
from ..fileio import atomic_path
from .meta import ModelMeta

#: Keys under which training scripts commonly nest the weights or the model in a checkpoint dict.
_NESTED_KEYS = ("model", "net", "state_dict", "model_state_dict", "network")


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def load_torch(path: str | Path, arch: nn.Module | None = None) -> nn.Module:
    """The module stored in ``path`` (not yet normalised); a state_dict is loaded into ``arch``."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except (AttributeError, ModuleNotFoundError) as exc:
        raise ModelFormatError(
            f"{path}: the pickled model refers to a class that cannot be imported ({exc}); import or define "
            "that class before loading, or save model.state_dict() and pass the architecture (CLI --arch MODULE:FACTORY, "
            "API arch=...)"
        ) from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        raise ModelFormatError(
            f"{path}: not a readable PyTorch file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
            "save the model with torch.save(model, path) (TorchScript archives are not supported: export to ONNX)"
        ) from None
    if isinstance(obj, Mapping) and not _is_state_dict(obj):
        for key in _NESTED_KEYS:
            if key in obj and (isinstance(obj[key], nn.Module) or _is_state_dict(obj[key])):
                obj = obj[key]
                break
    if isinstance(obj, nn.Module):
        if arch is not None:
            warnings.warn(f"{path} holds a whole model; the architecture given with arch=/--arch is not used", UserWarning,
                          stacklevel=3)
        return obj
    if _is_state_dict(obj):
        if arch is None:
            raise ModelFormatError(
                f"{path} holds only weights (a state_dict), not the network's architecture; pass the architecture: "
                "on the command line --arch MODULE:FACTORY (a function that builds it, e.g. mypkg.nets:build_net) or "
                "a zoo architecture name (e.g. --arch vit_small), in the API arch= (the same, or an nn.Module "
                "instance); or save the whole model with torch.save(model, path)"
            )
        if not isinstance(arch, nn.Module):
            raise InputError(f"arch must be an nn.Module instance, got {type(arch).__name__}; build the architecture first")
        try:
            arch.load_state_dict(obj, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()
            raise ModelFormatError(
                f"{path}: the weights do not fit the given architecture: {' '.join(s.strip() for s in first[:3])}; "
                "pass the architecture the weights were trained with"
            ) from None
        return arch
    raise ModelFormatError(
        f"{path} holds a {type(obj).__name__}, neither an nn.Module nor a state_dict; save the model with "
        "torch.save(model, path)"
    )


def save_torch(net: nn.Module, path: str | Path, *, protect=()) -> None:
    """``torch.save`` of the whole module (its ``provrepair_meta`` attribute included), atomically."""
    with atomic_path(path, protect=protect) as tmp:
        torch.save(net, tmp)


def pt_meta(old, path: Path) -> ModelMeta:
    """Metadata of a network read from a PyTorch file: the stored one, re-pointed at ``path``."""
    if isinstance(old, ModelMeta):
        return ModelMeta(format="pt", source=str(path), input_shape=old.input_shape, extra=dict(old.extra))
    return ModelMeta(format="pt", source=str(path), input_shape=None, extra={})
