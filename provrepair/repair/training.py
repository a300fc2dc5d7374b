"""The training library of the statistical repairers (DeepPatch, fine-tuning, AugMix, MetaRepair).

:class:`RobustnessTask` is the target of the training repairers: data, augmentor, device, the
per-epoch model selection on the augmented validation set ``T_val°`` and the test metrics (standard
accuracy, accuracy per level, nRob/sRob as DeepPatch's paper defines them: the mean over the clean
set and every level, and the joint accuracy ``std + nRob/sRob``). The rest is what more than one
repairer needs: the augmentors, device resolution, the canonical copy of a model, dataset splits,
batched accuracy and the :class:`~provrepair.repair.protocol.RepairResult` of a trained model.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..data import augment as _aug
from ..data.checks import check_int, check_seed
from ..data.datasets import load_dataset
from ..errors import InputError
from ..models import load_model, normalize_model
from ..models.inference import accuracy
from .options import AUGMENTS, check_choice
from .protocol import TRAINED, Progress, RepairResult, say

__all__ = [
    "DATA_SEED", "EVAL_BATCH", "MOMENTUM", "WEIGHT_DECAY", "Augmentor", "RobustnessTask", "as_canonical",
    "as_pair", "augmented_cross_entropy", "check_limit", "check_model_fits", "chunks", "conv_indices", "fingerprint",
    "get_augmentor", "load_splits", "measure_accuracy", "parameter_count", "resolve_device", "robustness_summary",
    "show_bars", "trained_result",
]

#: Samples per forward pass when evaluating (on a 2-core CPU 256 is faster than larger batches).
EVAL_BATCH = 256
#: SGD settings of DeepPatch's paper (Sec. 4.2.1); the learning rate decays to 0 by cosine over the run.
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
#: Seed of the train/val split and of the subsets drawn by the ``*_limit`` options: fixed, so that
#: runs with different training seeds see the same data.
DATA_SEED = 0


# --------------------------------------------------------------------------------------------------
# checks


def check_limit(value, what: str) -> int | None:
    """A ``*_limit`` option: None (everything) or a positive count."""
    return None if value is None else check_int(value, what)


def resolve_device(device) -> torch.device:
    """``"auto"`` is the GPU when one is present, else the CPU; ``"cpu"``, ``"cuda"``, ``"cuda:N"``."""
    name = str(device) if device is not None else "auto"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {device!r}; use auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r} was asked for but CUDA is not available here; use --device cpu or auto")
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"unsupported device {name!r}; use auto, cpu or cuda")
    return dev


def show_bars(progress: Progress | bool | None) -> bool:
    """Training bars are shown for a progress callback (and for ``True``, the older flag)."""
    return bool(progress)


# --------------------------------------------------------------------------------------------------
# augmentors


@dataclass(frozen=True)
class Augmentor:
    """One perturbation family: a dynamic training augmentor and fixed, graded test sets.

    ``dynamic(x, rng)``: each sample kept with probability 1/2, else perturbed at a random strength
    (DeepPatch's Eq. 2). ``static(x, seed)``: ``{level name: every sample perturbed at that level}``.
    ``metric``: the paper's name of the mean accuracy over the clean set and all levels.
    """

    name: str
    metric: str
    levels: tuple[str, ...]
    dynamic: Callable[[torch.Tensor, np.random.Generator], torch.Tensor]
    static: Callable[[torch.Tensor, int], dict[str, torch.Tensor]]


def _blur_static(x: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    return {f"blur{s:g}": _aug.blur(x, s) for s in _aug.BLUR_SIGMAS}


def _spatial_dynamic(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    chosen = np.flatnonzero(rng.random(x.shape[0]) < 0.5)
    out = x.clone()
    if chosen.size:
        idx = torch.as_tensor(chosen, device=x.device)
        out[idx] = _aug.spatial(x[idx], rng)
    return out


def _spatial_static(x: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    n = len(_aug.SPATIAL_LEVELS)
    return {f"spat{i}/{n}": _aug.spatial_static(x, i, seed) for i in range(1, n + 1)}


_AUGMENTORS = {
    "blur": Augmentor("blur", "nRob", tuple(f"blur{s:g}" for s in _aug.BLUR_SIGMAS), _aug.blur_dynamic, _blur_static),
    "spatial": Augmentor("spatial", "sRob", tuple(f"spat{i}/{len(_aug.SPATIAL_LEVELS)}" for i in
                                               range(1, len(_aug.SPATIAL_LEVELS) + 1)), _spatial_dynamic, _spatial_static),
}


def get_augmentor(name: str) -> Augmentor:
    """The augmentor ``"blur"`` (Gaussian blur, sigma 0.5..3) or ``"spatial"`` (SENSEI's transforms)."""
    return _AUGMENTORS[check_choice(name, AUGMENTS, "augmentor")]


def augmented_cross_entropy(augmentor: Augmentor):
    """The batch loss of adversarial training with dynamic augmentation: cross-entropy on the batch
    after the augmentor perturbs each sample with probability 1/2."""

    def loss(model, x, y, rng):
        return F.cross_entropy(model(augmentor.dynamic(x, rng)), y)

    return loss


# --------------------------------------------------------------------------------------------------
# models


def conv_indices(net: nn.Sequential) -> list[int]:
    return [i for i, m in enumerate(net) if isinstance(m, nn.Conv2d)]


def as_canonical(model, *, need_conv: bool = True) -> nn.Sequential:
    """A canonical copy of ``model`` (a path or an ``nn.Module``); refuses a network without Conv2d."""
    if isinstance(model, (str, os.PathLike)):
        net = load_model(model)
    elif isinstance(model, nn.Module):
        net = normalize_model(model)
    else:
        raise InputError(f"expected a model path or a torch.nn.Module, got {type(model).__name__}")
    if need_conv and not conv_indices(net):
        raise InputError("the model has no Conv2d layer; DeepPatch patches convolution filters, so give a "
                         "convolutional network")
    return net


def fingerprint(net: nn.Module) -> str:
    """A digest of the network's weights: caches keyed by it survive copies of the same network."""
    h = hashlib.sha256()
    for name, t in net.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def parameter_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def chunks(n: int, size: int):
    """``(start, stop)`` of consecutive slices of ``range(n)`` of at most ``size``."""
    for start in range(0, n, size):
        yield start, min(n, start + size)


def measure_accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = EVAL_BATCH) -> float:
    """Accuracy of ``net`` on ``(x, y)``; NaN for an empty set (a held-out part can be empty)."""
    return float("nan") if y.shape[0] == 0 else accuracy(net, x, y, batch_size=batch_size)


def check_model_fits(net: nn.Module, x: torch.Tensor, max_label: int) -> None:
    """Refuse a network that cannot take the images ``x`` or has no output for label ``max_label``,
    before any training."""
    x = x[:1]
    try:
        with torch.no_grad():
            out = net(x)
    except RuntimeError as exc:
        raise InputError(f"the model cannot take the dataset's images of shape {tuple(x.shape[1:])} "
                         f"({str(exc).splitlines()[0]}); use a model made for this dataset") from None
    if out.dim() != 2 or out.shape[1] <= max_label:
        raise InputError(f"the model has outputs {tuple(out.shape[1:])}, too few for the dataset's labels; "
                         "use a classifier made for this dataset")


# --------------------------------------------------------------------------------------------------
# data


def as_pair(value, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A split given as ``(images, labels)``: float32 images (N, C, H, W) (a (N, H, W) stack gets a
    channel) and int64 labels (N,)."""
    try:
        x, y = value
    except (TypeError, ValueError):
        raise InputError(f"dataset[{split!r}] must be a pair (images, labels)") from None
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64).reshape(-1)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise InputError(f"dataset[{split!r}] needs images (N, C, H, W) and N labels, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    return x, y


def load_splits(dataset, splits: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The ``splits`` of ``dataset``: a dataset name (loaded with the fixed ``DATA_SEED`` split) or a
    mapping ``{split: (images, labels)}``; each checked by :func:`as_pair`."""
    if isinstance(dataset, str):

        raw = {s: load_dataset(dataset, s, seed=DATA_SEED) for s in splits}
    elif isinstance(dataset, Mapping):
        missing = [s for s in splits if s not in dataset]
        if missing:
            wanted = ", ".join(splits[:-1]) + " and " + splits[-1]
            raise InputError(f"the dataset mapping lacks {', '.join(missing)}; give {wanted} pairs")
        raw = {s: dataset[s] for s in splits}
    else:
        raise InputError(f"dataset must be a dataset name or a mapping of splits, got {type(dataset).__name__}")
    return {s: as_pair(raw[s], s) for s in splits}


def _subset(x: torch.Tensor, y: torch.Tensor, limit: int | None, salt: int):
    if limit is None or limit >= x.shape[0]:
        return x, y
    idx = np.sort(np.random.default_rng([DATA_SEED, salt]).permutation(x.shape[0])[:limit])
    t = torch.as_tensor(idx)
    return x[t], y[t]


def _replacement_share(net: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        used = [net.uses_replacement(x[a:b]) for a, b in chunks(x.shape[0], EVAL_BATCH)]
    return float(torch.cat(used).float().mean())


# --------------------------------------------------------------------------------------------------
# the task


@dataclass
class RobustnessTask:
    """Data, augmentor and device of one robustness-repair run: the target of DeepPatch and the
    training baselines.

    ``val_aug`` / ``test_sets``: the static augmented sets (``test_sets`` starts with ``"clean"``).
    """

    augmentor: Augmentor
    device: torch.device
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    val_aug: tuple[torch.Tensor, torch.Tensor]
    test_y: torch.Tensor
    test_sets: dict[str, torch.Tensor]
    data_seconds: float = 0.0
    dataset: str = "(arrays)"  # the dataset's name, for the reports
    _pretrained: dict = field(default_factory=dict, repr=False)

    @classmethod
    def create(cls, *, dataset, augment: str, device="auto", train_limit: int | None = None,
               val_limit: int | None = None, test_limit: int | None = None) -> RobustnessTask:
        """Load (or take) the splits, build the static augmented validation and test sets.

        ``dataset``: a dataset name (``mnist``, ``fashion-mnist``, ``digits``) or a mapping
        ``{"train": (x, y), "val": (x, y), "test": (x, y)}``; ``*_limit``: a fixed random subset."""
        t0 = time.perf_counter()
        augmentor = get_augmentor(augment)
        dev = resolve_device(device)
        limits = [check_limit(train_limit, "train_limit"), check_limit(val_limit, "val_limit"),
                  check_limit(test_limit, "test_limit")]
        raw = load_splits(dataset, ("train", "val", "test"))
        splits = {s: _subset(*map(torch.as_tensor, raw[s]), limits[salt], salt)
                  for salt, s in enumerate(("train", "val", "test"))}
        xv, yv = splits["val"]
        levels = augmentor.static(xv, DATA_SEED)
        val_aug = (torch.cat(list(levels.values())), yv.repeat(len(levels)))
        xt, yt = splits["test"]
        test_sets = {"clean": xt, **augmentor.static(xt, DATA_SEED)}
        on = lambda t: t.to(dev)  # noqa: E731
        return cls(augmentor, dev, tuple(map(on, splits["train"])), (on(xv), on(yv)), tuple(map(on, val_aug)),
                   on(yt), {k: on(v) for k, v in test_sets.items()}, time.perf_counter() - t0,
                   dataset if isinstance(dataset, str) else "(arrays)")

    def check_model(self, net: nn.Module) -> None:
        """Refuse a network whose input does not fit the data, before any training."""
        check_model_fits(net.to(self.device), self.val[0],
                         int(torch.cat([self.train[1], self.val[1], self.test_y]).max()))

    def val_robustness(self, net: nn.Module) -> float:
        """Accuracy on the augmented validation set (the model-selection score)."""
        return measure_accuracy(net, *self.val_aug)

    def metrics(self, net: nn.Module) -> dict[str, Any]:
        """Standard accuracy, accuracy per level, nRob/sRob (mean over clean and all levels), joint;
        for a network that switches per sample (DeepPatch's), the share routed to its replacements."""
        acc = {name: measure_accuracy(net, x, self.test_y) for name, x in self.test_sets.items()}
        std = acc["clean"]
        rob = float(np.mean(list(acc.values())))
        out = {"standard_accuracy": std, "levels": {k: v for k, v in acc.items() if k != "clean"},
               "robustness": rob, "metric": self.augmentor.metric, "joint": std + rob,
               "test_samples": int(self.test_y.shape[0])}
        if hasattr(net, "uses_replacement"):
            out["replacement_share"] = {k: _replacement_share(net, x) for k, x in self.test_sets.items()}
        return out

    def pretrained_metrics(self, net: nn.Sequential) -> dict[str, Any]:
        """:meth:`metrics` of the unpatched network, computed once per network (benchmarks patch one
        network many times)."""
        key = fingerprint(net)
        if key not in self._pretrained:
            self._pretrained[key] = self.metrics(net)
        return copy.deepcopy(self._pretrained[key])

    def record(self) -> dict[str, Any]:
        """The task's part of a result's options record."""
        return {"dataset": self.dataset, "augment": self.augmentor.name, "device": str(self.device),
                "train_samples": int(self.train[1].shape[0]), "val_samples": int(self.val[1].shape[0])}

    def fit(self, model: nn.Module, params: list[torch.Tensor], batch_loss, *, epochs: int, lr: float,
            batch_size: int, seed: int, progress: Progress | bool | None, desc: str,
            initial_score: float | None = None) -> dict[str, Any]:
        """Train ``params`` of ``model`` with SGD (momentum 0.9, weight decay 5e-4, cosine decay of
        ``lr`` to 0) for ``epochs`` epochs over the training split; ``batch_loss(model, x, y, rng)``
        gives a batch's loss. After each epoch the robustness accuracy on the augmented validation
        set is measured and the best epoch's ``params`` are restored at the end. With
        ``initial_score`` (the untrained model's score), epoch 0 competes too: no epoch beating it
        means the parameters are restored to their initial values (DeepPatch's rule)."""
        epochs = check_int(epochs, "epochs")
        batch_size = check_int(batch_size, "batch_size")
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise InputError(f"lr must be a positive number, got {lr!r}")
        x, y = self.train
        n = x.shape[0]
        steps = math.ceil(n / batch_size)
        opt = torch.optim.SGD(params, lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps)
        rng = np.random.default_rng([check_seed(seed), 1])
        snapshot = lambda: [p.detach().clone() for p in params]  # noqa: E731
        best_state = snapshot() if initial_score is not None else None
        best_score, best_epoch = (initial_score, 0) if initial_score is not None else (-1.0, 0)
        history = []
        t0 = time.perf_counter()
        for epoch in range(1, epochs + 1):
            order = torch.as_tensor(rng.permutation(n), device=x.device)
            model.train()
            total = 0.0
            for b in tqdm(range(steps), desc=f"{desc} epoch {epoch}/{epochs}", unit="batch",
                          disable=not show_bars(progress), leave=False):
                idx = order[b * batch_size:(b + 1) * batch_size]
                loss = batch_loss(model, x[idx], y[idx], rng)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * idx.numel()
            model.eval()
            score = self.val_robustness(model)
            history.append({"epoch": epoch, "train_loss": total / n, "val_robustness": score,
                            "seconds": round(time.perf_counter() - t0, 3)})
            say(progress)(f"{desc}: epoch {epoch}/{epochs}, validation robustness {100 * score:.2f} %")
            if score > best_score:
                best_score, best_epoch, best_state = score, epoch, snapshot()
        with torch.no_grad():
            for p, v in zip(params, best_state):
                p.copy_(v)
        model.eval()
        return {"history": history, "best_epoch": best_epoch, "best_val_robustness": best_score,
                "initial_val_robustness": initial_score, "seconds": time.perf_counter() - t0}


# --------------------------------------------------------------------------------------------------
# results


def robustness_summary(method: str, metrics: dict, pretrained: dict, training: dict, details: dict,
                       timings: dict) -> str:
    """The report of a model trained on a :class:`RobustnessTask`, next to the pretrained one."""
    m, p = metrics, pretrained
    name = m["metric"]
    lines = [(f"{method}: standard accuracy {100 * m['standard_accuracy']:.2f} % "
              f"(pretrained {100 * p['standard_accuracy']:.2f} %), {name} {100 * m['robustness']:.2f} % "
              f"(pretrained {100 * p['robustness']:.2f} %), joint {100 * m['joint']:.2f} "
              f"(pretrained {100 * p['joint']:.2f}) on {m['test_samples']} test images")]
    share = m.get("replacement_share", {})
    levels = "  ".join(
        f"{k} {100 * v:.2f}/{100 * p['levels'][k]:.2f}" + (f" [{100 * share[k]:.0f}% repl]" if k in share else "")
        for k, v in m["levels"].items())
    lines.append(f"per level (after/before): {levels}")
    lines.append(f"best epoch {training['best_epoch']} of {len(training['history'])}; "
                 f"parameters {details.get('parameters')} (pretrained {details.get('parameters_pretrained')}); "
                 f"total {timings.get('total', 0):.1f} s")
    return "\n".join(lines)


def trained_result(method: str, model: nn.Module, *, message: str, metrics: dict, pretrained: dict | None = None,
                   training: dict | None = None, details: dict | None = None, timings: dict | None = None,
                   options: dict | None = None) -> RepairResult:
    """A statistical repairer's :class:`RepairResult` (status ``trained``); ``message`` is its
    report, written from the unrounded timings, which the result keeps to the millisecond."""
    return RepairResult(TRAINED, model, method=method, message=message, metrics=metrics,
                        pretrained=pretrained or {}, training=training or {}, details=details or {},
                        timings={k: round(v, 3) for k, v in (timings or {}).items()}, options=options or {})
