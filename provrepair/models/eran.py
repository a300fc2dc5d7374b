"""ERAN's text format (``.tf``/``.eran``) for fully connected networks.

The file is a sequence of three-line blocks (activation name, weight matrix ``[[..], ..]`` of
shape (out, in), bias ``[..]``), optionally preceded by ``Normalize mean=[..] std=[..]``. Numbers
are parsed by splitting on commas rather than with ``ast.literal_eval``, which is two orders of
magnitude slower on the multi-megabyte benchmark files.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ModelFormatError, UnsupportedLayerError
from ..fileio import atomic_path
from .layers import Normalize
from .meta import ModelMeta, set_meta

_ACTIVATIONS = {"ReLU": "relu", "Affine": None}
_REFUSED = {"Sigmoid", "Tanh"}
_NORMALIZE = re.compile(r"^Normalize\s+mean\s*=\s*(\[.*?\])\s*,?\s*std\s*=\s*(\[.*?\])\s*$")
_ROW_SPLIT = re.compile(r"\]\s*,\s*\[")


def _err(path: Path, lineno: int, what: str) -> ModelFormatError:
    return ModelFormatError(f"{path}: line {lineno}: {what}; fix the file or re-export the network in ERAN format")


def _floats(text: str, path: Path, lineno: int) -> np.ndarray:
    """Comma-separated numbers (brackets already removed) as float64."""
    text = text.strip()
    if not text:
        return np.zeros(0, dtype=np.float64)
    parts = text.split(",")
    if parts[-1].strip() == "":  # tolerate one trailing comma
        parts = parts[:-1]
    try:
        return np.array(parts, dtype=np.float64)
    except ValueError:
        bad = next((p for p in parts if not _is_float(p)), "?")
        raise _err(path, lineno, f"{bad.strip()[:40]!r} is not a number") from None


def _is_float(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _vector(line: str, path: Path, lineno: int, what: str) -> np.ndarray:
    s = line.strip()
    if not (s.startswith("[") and s.endswith("]")) or s.startswith("[["):
        raise _err(path, lineno, f"expected the {what} as a list [v1, v2, ...]")
    return _floats(s[1:-1], path, lineno)


def _matrix(line: str, path: Path, lineno: int) -> np.ndarray:
    s = line.strip()
    if not (s.startswith("[[") and s.endswith("]]")):
        raise _err(path, lineno, "expected a weight matrix [[...], [...], ...]")
    rows = _ROW_SPLIT.split(s[2:-2])
    arrays = [_floats(r, path, lineno) for r in rows]
    widths = {len(a) for a in arrays}
    if len(widths) != 1 or 0 in widths:
        raise _err(path, lineno, f"the weight matrix rows have different or zero lengths {sorted(widths)}")
    return np.stack(arrays)


def _content_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of every line that is neither blank nor a ``#`` comment."""
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ModelFormatError(f"{path} is not a text file; an ERAN .tf/.eran network is plain text") from None
    return [(i + 1, ln) for i, ln in enumerate(text.splitlines()) if ln.strip() and not ln.lstrip().startswith("#")]


def _normalize_header(head: str, path: Path, lineno: int, allowed: bool) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) of a ``Normalize`` line; ``allowed`` is False once a layer or a header was read."""
    m = _NORMALIZE.match(head)
    if not m:
        raise _err(path, lineno, "expected 'Normalize mean=[...] std=[...]'")
    if not allowed:
        raise _err(path, lineno, "Normalize may only appear once, before the first layer")
    mean, std = _vector(m.group(1), path, lineno, "mean"), _vector(m.group(2), path, lineno, "std")
    if len(mean) != len(std) or len(mean) == 0:
        raise _err(path, lineno, "Normalize mean and std must have the same, non-zero length")
    if np.any(std == 0):
        raise _err(path, lineno, "Normalize std contains 0, which would divide by zero")
    return mean, std


def _check_block_head(head: str, path: Path, lineno: int) -> None:
    """Refuse a block whose activation provrepair cannot repair, or that is not an ERAN block at all."""
    if head in _REFUSED:
        raise UnsupportedLayerError(
            f"{path}: line {lineno}: activation {head} is not supported (only ReLU and Affine blocks "
            "are): provrepair repairs piecewise-linear networks; retrain with ReLU activations"
        )
    if head not in _ACTIVATIONS:
        word = head.split()[0][:40] if head.split() else head
        raise _err(
            path,
            lineno,
            f"unknown block {word!r}; this reader supports fully connected ERAN networks "
            "(blocks 'ReLU' or 'Affine', optional 'Normalize' header). For convolutional networks "
            "export to ONNX",
        )


def _linear_block(lines: list[tuple[int, str]], pos: int, path: Path, prev_out: int | None) -> nn.Linear:
    """The Linear layer of the block whose head is ``lines[pos]`` (weights and bias on the next two lines)."""
    lineno, head = lines[pos][0], lines[pos][1].strip()
    if pos + 2 >= len(lines):
        raise _err(path, lineno, f"the {head} block is incomplete: it needs a weight line and a bias line after it")
    (wl, wline), (bl, bline) = lines[pos + 1], lines[pos + 2]
    w = _matrix(wline, path, wl)
    b = _vector(bline, path, bl, "bias")
    if len(b) != w.shape[0]:
        raise _err(path, bl, f"the bias has {len(b)} values but the weight matrix above has {w.shape[0]} rows")
    if prev_out is not None and w.shape[1] != prev_out:
        raise _err(path, wl, f"the weight matrix has {w.shape[1]} columns but the previous layer has {prev_out} outputs")
    lin = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w))
        lin.bias.copy_(torch.from_numpy(b))
    return lin


def _parse_blocks(path: Path, lines: list[tuple[int, str]]):
    """The Linear/ReLU modules of the file, its Normalize header (mean, std) or None, and the last
    block's activation."""
    modules: list[nn.Module] = []
    normalize: tuple[np.ndarray, np.ndarray] | None = None
    prev_out: int | None = None
    last_act = None
    pos = 0
    while pos < len(lines):
        lineno, line = lines[pos]
        head = line.strip()
        if head.startswith("Normalize"):
            normalize = _normalize_header(head, path, lineno, allowed=not modules and normalize is None)
            pos += 1
            continue
        _check_block_head(head, path, lineno)
        lin = _linear_block(lines, pos, path, prev_out)
        modules.append(lin)
        last_act = _ACTIVATIONS[head]
        if last_act == "relu":
            modules.append(nn.ReLU())
        prev_out = lin.out_features
        pos += 3
    return modules, normalize, last_act


def _normalize_module(normalize: tuple[np.ndarray, np.ndarray], in_features: int, path: Path, lineno: int) -> Normalize:
    """The input Normalize, with one value for all inputs or one per input."""
    mean, std = normalize
    if len(mean) not in (1, in_features):
        raise _err(path, lineno, f"Normalize has {len(mean)} values; give 1 or {in_features} (one per input)")
    if len(mean) == 1:
        mean, std = mean.reshape(()), std.reshape(())
    return Normalize(mean, std)


def load_eran(path: str | Path) -> nn.Sequential:
    """Read an ERAN fully connected network; a ReLU on the final logits is dropped with a warning."""
    path = Path(path)
    lines = _content_lines(path)
    modules, normalize, last_act = _parse_blocks(path, lines)
    if not modules:
        raise ModelFormatError(f"{path}: no layers found; an ERAN file needs at least one ReLU/Affine block")
    in_features = modules[0].in_features
    dropped = False
    if last_act == "relu":
        modules.pop()
        dropped = True
        warnings.warn(
            f"{path.name}: dropped the ReLU after the last layer: classification uses the logits, and a "
            "ReLU there would only clip negative scores",
            UserWarning,
            stacklevel=3,
        )
    if normalize is not None:
        modules.insert(0, _normalize_module(normalize, in_features, path, lines[0][0]))
    net = nn.Sequential(*modules).float().eval()
    return set_meta(net, ModelMeta(format="eran", source=str(path), input_shape=(in_features,), extra={"dropped_final_relu": dropped}))


def _numbers(values: np.ndarray) -> str:
    # repr of the float64 value of each float32 is exact, so the file reloads bit for bit.
    return ", ".join(map(repr, np.asarray(values, dtype=np.float64).ravel().tolist()))


def eran_text(net: nn.Sequential) -> str:
    """The ERAN text of a network made of an optional Normalize, then Linear layers each optionally followed by ReLU."""
    layers = list(net)
    out: list[str] = []
    i = 0
    if layers and isinstance(layers[0], Normalize):
        norm = layers[0]
        mean, std = norm.mean.detach().numpy(), norm.std.detach().numpy()
        if mean.ndim > 1 or std.ndim > 1:
            raise ModelFormatError(
                "the ERAN format only stores a flat input normalisation, this network normalises per channel; "
                "save it as .onnx or .pt instead"
            )
        n = max(mean.size, std.size)
        mean, std = np.broadcast_to(mean, (n,)), np.broadcast_to(std, (n,))
        out.append(f"Normalize mean=[{_numbers(mean)}] std=[{_numbers(std)}]")
        i = 1
    if i >= len(layers):
        raise ModelFormatError("the network has no Linear layer to write; save it as .pt instead")
    while i < len(layers):
        m = layers[i]
        if type(m) is not nn.Linear:
            raise ModelFormatError(
                f"the ERAN text format only holds Linear layers each optionally followed by ReLU (and a leading "
                f"Normalize); layer {i} is {type(m).__name__}. Save the network as .onnx or .pt instead"
            )
        relu = i + 1 < len(layers) and type(layers[i + 1]) is nn.ReLU
        w = m.weight.detach().numpy()
        b = m.bias.detach().numpy() if m.bias is not None else np.zeros(m.out_features, dtype=np.float32)
        out.append("ReLU" if relu else "Affine")
        out.append("[" + ", ".join("[" + _numbers(row) + "]" for row in w) + "]")
        out.append("[" + _numbers(b) + "]")
        i += 2 if relu else 1
    return "\n".join(out) + "\n"


def save_eran(net: nn.Sequential, path: str | Path, *, protect=()) -> None:
    text = eran_text(net)  # build first: an unsupported network leaves no file behind
    with atomic_path(path, protect=protect) as tmp:
        tmp.write_text(text)
