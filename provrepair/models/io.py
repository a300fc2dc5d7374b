"""``load_model``/``save_model``: one entry point per direction, dispatching on the file suffix."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import InputError, ModelFormatError
from .canonical import normalize_model
from .meta import META_ATTR, set_meta

#: Suffix -> format name. ``.tf`` is ERAN's text format (not TensorFlow).
SUFFIXES = {".pt": "pt", ".pth": "pt", ".onnx": "onnx", ".nnet": "nnet", ".tf": "eran", ".eran": "eran"}
_FORMAT_ALIASES = {"pt": "pt", "pth": "pt", "torch": "pt", "onnx": "onnx", "nnet": "nnet", "tf": "eran", "eran": "eran"}


def _suffix_list() -> str:
    return ", ".join(SUFFIXES)


def _format_of(path: Path, fmt: str | None, verb: str) -> str:
    if fmt is not None:
        key = fmt.lower().lstrip(".")
        if key not in _FORMAT_ALIASES:
            raise ModelFormatError(f"unknown model format {fmt!r}; use one of: {', '.join(sorted(set(_FORMAT_ALIASES)))}")
        return _FORMAT_ALIASES[key]
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ModelFormatError(
            f"cannot {verb} {path}: unknown model file suffix {suffix or '(none)'!r}; supported suffixes: "
            f"{_suffix_list()} (.tf/.eran = ERAN text format)"
        )
    return SUFFIXES[suffix]


def resolve_arch(arch: Any) -> nn.Module | None:
    """The architecture ``arch`` names: an ``nn.Module`` as it is, a factory called with no
    arguments, ``"module:factory"`` (imported, then called), or the name of a zoo architecture
    (``provrepair.zoo.architectures.ARCHITECTURES``, e.g. ``"vit_small"``)."""
    if arch is None or isinstance(arch, nn.Module):
        return arch
    factory = arch
    if isinstance(arch, str):
        from .architectures import ARCHITECTURES

        if arch in ARCHITECTURES:
            factory = ARCHITECTURES[arch]
        elif ":" in arch:
            mod_name, _, attr = arch.partition(":")
            try:
                factory = getattr(importlib.import_module(mod_name), attr)
            except ImportError as exc:
                raise InputError(f"arch {arch!r}: cannot import module {mod_name!r} ({exc}); give MODULE:FACTORY with "
                                 "an importable module (on PYTHONPATH)") from None
            except AttributeError:
                raise InputError(f"arch {arch!r}: module {mod_name!r} has no attribute {attr!r}") from None
        else:
            raise InputError(f"arch {arch!r}: give MODULE:FACTORY (e.g. mypkg.nets:build_net, called with no "
                             f"arguments) or a zoo architecture name ({', '.join(sorted(ARCHITECTURES))})")
    if not callable(factory):
        raise InputError(f"arch must be an nn.Module, a factory or 'module:factory', got {type(arch).__name__}")
    try:
        built = factory()
    except TypeError as exc:
        raise InputError(f"arch {arch!r}: the factory cannot be called without arguments ({exc}); wrap it in a "
                         "function that builds the architecture") from None
    if not isinstance(built, nn.Module):
        raise InputError(f"arch {arch!r}: the factory returned a {type(built).__name__}, not an nn.Module")
    return built


def load_model(
    path: str | os.PathLike,
    *,
    input_shape: tuple[int, ...] | None = None,
    arch: Any = None,
    cut: int | str | None = None,
) -> nn.Sequential:
    """Read a network file into the canonical ``nn.Sequential`` (float32, eval mode, with metadata).

    ``input_shape`` (one sample, no batch dimension) overrides what the file says; it is needed for
    convolutional networks whose file does not record it. ``arch`` is the architecture to load a
    PyTorch state_dict into: an ``nn.Module``, a factory, ``"module:factory"`` or a zoo architecture
    name (``resolve_arch``). ``cut`` splits the model into a frozen front and a piecewise-linear back
    (``normalize_model``; for ONNX, ``'auto'`` or the name of the tensor where the back begins: the
    front then runs in onnxruntime, an optional extra). ``.pt``/``.pth`` files are unpickled: load
    only files you trust.
    """
    path = Path(path)
    fmt = _format_of(path, None, "load")
    if not path.exists():
        raise InputError(f"no such model file: {path}; check the path")
    if path.is_dir():
        raise InputError(f"{path} is a directory; give the model file inside it")
    shape = tuple(int(d) for d in input_shape) if input_shape is not None else None
    if arch is not None and fmt != "pt":
        raise InputError(f"arch= is only used for PyTorch state_dict files (.pt/.pth), not {path.suffix}; leave it out")
    if cut is not None and fmt in ("nnet", "eran"):
        raise InputError(f"cut= splits PyTorch and ONNX models; a {path.suffix} network is piecewise linear throughout")
    if fmt == "pt":
        from .torch_io import load_torch, pt_meta

        module = load_torch(path, resolve_arch(arch))
        old = getattr(module, META_ATTR, None)
        set_meta(module, pt_meta(old, path))
        return normalize_model(module, input_shape=shape, cut=cut)
    if fmt == "onnx":
        from .onnx_io import load_onnx

        raw, meta = load_onnx(path, shape, cut=cut)
        set_meta(raw, meta)
        return normalize_model(raw, input_shape=meta.input_shape)
    if fmt == "nnet":
        from .nnet import load_nnet

        return normalize_model(load_nnet(path), input_shape=shape)
    from .eran import load_eran

    return normalize_model(load_eran(path), input_shape=shape)


def save_model(net: nn.Module, path: str | os.PathLike, *, fmt: str | None = None, protect=()) -> Path:
    """Write ``net`` atomically in the format of the suffix (or ``fmt``); returns the path.

    ``.pt`` always works (the whole module with its metadata). ``.onnx`` works for every canonical
    network; ``.nnet`` and ``.tf``/``.eran`` only for fully connected ReLU networks (with an optional
    input Normalize), otherwise a ``ModelFormatError`` names the format to use instead. ``protect``
    lists input files that must not be overwritten.
    """
    path = Path(path)
    kind = _format_of(path, fmt, "save to")
    if not isinstance(net, nn.Module):
        raise InputError(f"save_model needs a torch.nn.Module, got {type(net).__name__}")
    if kind == "pt":
        from .torch_io import save_torch

        save_torch(net, path, protect=protect)
        return path
    if not isinstance(net, nn.Sequential):
        net = normalize_model(net)
    from .front import front_of

    if front_of(net) is not None:
        raise ModelFormatError(
            f"cannot save to {path.suffix}: the network has a {front_of(net).where()}, which only a .pt file can hold; "
            "save it as .pt")
    if kind == "onnx":
        from .onnx_io import save_onnx

        save_onnx(net, path, protect=protect)
    elif kind == "nnet":
        from .nnet import save_nnet

        save_nnet(net, path, protect=protect)
    else:
        from .eran import save_eran

        save_eran(net, path, protect=protect)
    return path
