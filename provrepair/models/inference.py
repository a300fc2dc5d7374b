"""The network as a user runs it (float32): outputs, predictions and accuracy.

The network is evaluated in eval mode without gradients and in batches; a float64 (or other)
network is evaluated through a float32 copy, so the caller's module is never modified (its
train/eval mode is restored afterwards). Repairers, heuristics and the harness all measure through
these, so they live with the models and not in ``evaluate``, which comes last in the data flow.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InputError

__all__ = ["predictions", "accuracy", "logits", "DEFAULT_EVAL_BATCH"]

#: Samples per forward pass.
DEFAULT_EVAL_BATCH = 1024


def _as_input(net: nn.Module, x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach().to(torch.float32)
    else:
        t = torch.from_numpy(np.array(x, dtype=np.float32))  # a copy: inputs may be read-only
    if t.dim() < 1 or t.shape[0] == 0:
        raise InputError(f"no samples to evaluate (input shape {tuple(t.shape)}); give at least one sample")
    meta = getattr(net, "provrepair_meta", None)
    shape = getattr(meta, "input_shape", None)
    if shape is not None:
        shape = tuple(int(s) for s in shape)
        if tuple(t.shape[1:]) != shape:
            if math.prod(t.shape[1:]) != math.prod(shape):
                raise InputError(
                    f"the samples have shape {tuple(t.shape[1:])} but the model expects {shape}; "
                    "give data in the model's input layout"
                )
            t = t.reshape((t.shape[0],) + shape)
    return t


def _float32_net(net: nn.Module) -> tuple[nn.Module, bool]:
    """The module to run and whether it is the caller's own (so its mode must be restored)."""
    params = list(net.parameters()) + list(net.buffers())
    if all(p.dtype == torch.float32 for p in params if p.is_floating_point()):
        return net, True
    return copy.deepcopy(net).float(), False


def logits(net: nn.Module, x: Any, *, batch_size: int = DEFAULT_EVAL_BATCH) -> np.ndarray:
    """Network outputs in float32, shape ``(N, n_outputs)`` (numpy)."""
    if int(batch_size) < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    t = _as_input(net, x)
    model, own = _float32_net(net)
    was_training = model.training
    model.eval()
    outs = []
    try:
        with torch.no_grad():
            for start in range(0, t.shape[0], int(batch_size)):
                yb = model(t[start : start + int(batch_size)])
                outs.append(yb.reshape(yb.shape[0], -1).cpu().numpy())
    finally:
        if own and was_training:
            model.train()
    return np.concatenate(outs, axis=0)


def predictions(net: nn.Module, x: Any, *, batch_size: int = DEFAULT_EVAL_BATCH) -> np.ndarray:
    """Predicted classes (argmax of the float32 outputs), int64 ``(N,)``."""
    return np.argmax(logits(net, x, batch_size=batch_size), axis=1).astype(np.int64)


def accuracy(net: nn.Module, x: Any, y: Any, *, batch_size: int = DEFAULT_EVAL_BATCH) -> float:
    """Fraction of samples whose float32 prediction equals the label ``y``."""
    labels = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    labels = labels.reshape(-1)
    pred = predictions(net, x, batch_size=batch_size)
    if labels.shape[0] != pred.shape[0]:
        raise InputError(f"got {labels.shape[0]} labels for {pred.shape[0]} samples; give one label per sample")
    return float(np.mean(pred == labels))
