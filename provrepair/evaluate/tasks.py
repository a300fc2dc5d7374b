"""A comparison task: one model, one kind of failure, and the data every method is measured on.

:class:`TaskConfig` is plain data (it goes into ``results.json`` and into the resume keys);
:func:`build_task` turns it into :class:`TaskData`:

* **repair set**: the first ``repair_points`` images of the first ``train_limit`` training images,
  corrupted (``corruption`` at ``severity``, corruption seed 0), that the original network
  misclassifies; or the points of a ``repair_set`` file.
* **held-out failures** (generalization): the corrupted test images (of the first ``test_limit``)
  that the original network misclassifies, at most ``heldout``; the repair never sees them.
* **clean test set**: the first ``test_limit`` test images (drawdown, locality, constraint and
  confusion accuracy).
* **robustness sets**: that clean test set under the corruption at every severity in ``severities``.
* **training data** for the statistical methods: the clean training subset (``train_limit``) and
  validation subset (``val_limit``) with a dynamic augmentor that corrupts each sample with
  probability 1/2 at a random severity (the same rule as DeepPatch's augmentors).

Corrupted splits come from the cached corruption builder (:func:`provrepair.data.load_corrupted`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data import load_corrupted, load_dataset
from ..data.corruptions import CORRUPTIONS, corrupt
from ..errors import InputError
from ..models import get_meta, load_model
from ..repair.training import Augmentor
from ..specs import PointSpec
from ..zoo import available, load_zoo
from .metrics import logits, predictions

__all__ = ["TaskConfig", "TaskData", "build_task", "load_network", "class_groups", "corruption_augmentor"]

#: Class groups for DL2's constraint accuracy. Fashion-MNIST: tops, bottoms, dresses, footwear, bags.
#: MNIST has no natural groups; every digit is its own group, so the constraint reads "the network
#: commits to one class with probability >= 1 - delta".
CLASS_GROUPS = {
    "fashion-mnist": [[0, 2, 4, 6], [1], [3], [5, 7, 9], [8]],
}


def class_groups(dataset: str, classes: int) -> list[list[int]]:
    return CLASS_GROUPS.get(dataset, [[c] for c in range(classes)])


@dataclass(frozen=True)
class TaskConfig:
    """Everything that defines a comparison task (JSON-able; its hash keys the resume records)."""

    model: str
    dataset: str
    corruption: str | None = None
    severity: int = 3
    repair_set: str | None = None
    repair_points: int = 50
    heldout: int = 500
    test_limit: int = 2000
    train_limit: int = 2000
    val_limit: int = 200
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    data_seed: int = 0

    def __post_init__(self):
        for name in ("repair_points", "heldout", "test_limit", "train_limit", "val_limit"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"{name.replace('_', '-')} must be a positive integer, got {v!r}")
        if self.corruption is not None:
            if self.corruption not in CORRUPTIONS:
                raise InputError(f"unknown corruption {self.corruption!r}; use one of: {', '.join(CORRUPTIONS)}")
        sev = (self.severity, *self.severities)
        if any(isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= 5 for s in sev):
            raise InputError(f"severities must be integers 1-5, got {self.severity!r} and {self.severities!r}")
        object.__setattr__(self, "severities", tuple(self.severities))

    @property
    def name(self) -> str:
        model = Path(self.model).stem if os.sep in self.model or "." in self.model else self.model
        kind = self.corruption or (Path(self.repair_set).stem if self.repair_set else "clean")
        return f"{model}-{kind}" + (f"-s{self.severity}" if self.corruption else "")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["severities"] = list(self.severities)
        return d

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class TaskData:
    config: TaskConfig
    net: nn.Sequential
    repair: tuple[np.ndarray, np.ndarray]
    heldout: tuple[np.ndarray, np.ndarray] | None
    test: tuple[np.ndarray, np.ndarray]
    robustness: dict[str, np.ndarray]
    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    groups: list[list[int]]
    classes: int
    info: dict = field(default_factory=dict)

    def spec(self):
        return PointSpec.from_arrays(self.repair[0], labels=self.repair[1], source="repair set")


def load_network(model: str | os.PathLike) -> nn.Sequential:
    """A zoo name (``mnist_cnn``) or a model file, as a canonical network."""
    if isinstance(model, str) and model in available():
        return load_zoo(model)
    path = Path(model)
    if not path.exists():
        raise InputError(f"--model {model!r} is neither a zoo model ({', '.join(available())}) nor an existing file")
    return load_model(path)


def _reshape(x: np.ndarray, net: nn.Module) -> np.ndarray:
    shape = get_meta(net).input_shape
    return x.reshape((x.shape[0], *shape)).astype(np.float32) if shape else x.astype(np.float32)


def build_task(config: TaskConfig, net: nn.Sequential | None = None) -> TaskData:
    """Load the model and build every data set of ``config`` (deterministic)."""
    net = load_network(config.model) if net is None else net
    seed = config.data_seed
    xt, yt = load_dataset(config.dataset, "test", seed=seed)
    xt, yt = _reshape(xt[:config.test_limit], net), yt[:config.test_limit]
    xtr, ytr = load_dataset(config.dataset, "train", seed=seed)
    xtr, ytr = _reshape(xtr[:config.train_limit], net), ytr[:config.train_limit]
    xv, yv = load_dataset(config.dataset, "val", seed=seed)
    xv, yv = _reshape(xv[:config.val_limit], net), yv[:config.val_limit]
    classes = _n_outputs(net, xt[:1])
    info: dict[str, Any] = {}
    robustness: dict[str, np.ndarray] = {}
    heldout = None
    if config.corruption is not None:
        c = config.corruption
        for s in config.severities:
            robustness[f"{c}/{s}"] = _reshape(load_corrupted(config.dataset, "test", c, s, seed=seed,
                                                             limit=config.test_limit)[0], net)
        xct = robustness.get(f"{c}/{config.severity}")
        if xct is None:
            xct = _reshape(load_corrupted(config.dataset, "test", c, config.severity, seed=seed,
                                          limit=config.test_limit)[0], net)
        wrong = np.flatnonzero(predictions(net, xct) != yt)
        info["test_failure_rate"] = float(wrong.size / yt.size)
        heldout = (xct[wrong[:config.heldout]], yt[wrong[:config.heldout]])
    if config.repair_set is not None:
        spec = PointSpec.load(config.repair_set)
        if spec.labels is None or (spec.labels < 0).any():
            raise InputError(f"the repair set {config.repair_set} needs a label per point for the comparison")
        rx, ry = _reshape(np.asarray(spec.inputs, dtype=np.float32), net), np.asarray(spec.labels)
        rx, ry = rx[:config.repair_points], ry[:config.repair_points]
        info["repair_source"] = f"file {config.repair_set}"
    elif config.corruption is None:  # test only: no repair set
        rx, ry = xt[:0], yt[:0]
        info["repair_source"] = "none"
    else:
        xc, yc = load_corrupted(config.dataset, "train", config.corruption, config.severity, seed=seed,
                                limit=config.train_limit)
        xc = _reshape(xc, net)
        wrong = np.flatnonzero(predictions(net, xc) != yc)
        info["train_failure_rate"] = float(wrong.size / yc.size)
        if wrong.size == 0:
            raise InputError(f"the model misclassifies none of the {yc.size} {config.corruption} (severity "
                             f"{config.severity}) training images; raise the severity or the train limit")
        pick = wrong[:config.repair_points]
        rx, ry = xc[pick], yc[pick]
        info["repair_source"] = (f"the first {pick.size} of the first {config.train_limit} training images under "
                                 f"{config.corruption} severity {config.severity} that the model misclassifies")
    info.update(repair_points=int(ry.size), heldout_points=0 if heldout is None else int(heldout[1].size),
                test_points=int(yt.size), train_points=int(ytr.size), val_points=int(yv.size))
    return TaskData(config, net, (rx, ry.astype(np.int64)), heldout, (xt, yt.astype(np.int64)), robustness,
                    (xtr, ytr.astype(np.int64)), (xv, yv.astype(np.int64)), class_groups(config.dataset, classes),
                    classes, info)


def _n_outputs(net: nn.Module, x: np.ndarray) -> int:
    return int(logits(net, x).shape[1])


def corruption_augmentor(name: str, severities=(1, 2, 3, 4, 5)):
    """A DeepPatch-style :class:`~provrepair.repair.deeppatch.Augmentor` for a corruption of the suite:
    ``dynamic`` keeps each sample with probability 1/2 and otherwise corrupts it at a random severity
    (one severity and corruption seed per batch, drawn from the training generator); ``static``
    gives the set at every severity (corruption seed 0)."""

    levels = tuple(int(s) for s in severities)

    def _apply(x: torch.Tensor, severity: int, seed: int) -> torch.Tensor:
        out = corrupt(x.detach().cpu().numpy(), name, severity, seed=seed)
        return torch.as_tensor(np.asarray(out, dtype=np.float32).reshape(x.shape), device=x.device)

    def dynamic(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        chosen = np.flatnonzero(rng.random(x.shape[0]) < 0.5)
        severity = int(rng.choice(levels))
        seed = int(rng.integers(0, 2**31 - 1))
        out = x.clone()
        if chosen.size:
            idx = torch.as_tensor(chosen, device=x.device)
            out[idx] = _apply(x[idx], severity, seed)
        return out

    def static(x: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
        return {f"{name}{s}": _apply(x, s, seed) for s in levels}

    return Augmentor(name, "cRob", tuple(f"{name}{s}" for s in levels), dynamic, static)
