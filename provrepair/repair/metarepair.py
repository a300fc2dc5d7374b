"""MetaRepair / Learning to Repair (ACM MM 2024): repair a network for a target corruption by
meta-learning from earlier repairs of other corruptions.

The pipeline (the paper's Sec. 4.2 and Algorithm 1, on a canonical network):

1. **Repair experiences** (:func:`make_experience`). For a corruption ``k`` the pretrained model's
   failures on the corrupted *training* split are split into ``D_collect^k`` (``collect`` failures, at
   least one of each class among the failures, the rest at random) and ``D_fail^k`` (the other
   failures). The target ``t`` gets the same from the corrupted *test* split. A target with fewer
   than ``collect + min_fail`` failures is refused (lower ``collect`` or raise the severity); an
   experience with too few failures uses half of them as its collected set.
2. **Correlation and confidence** (:mod:`.frechet`, :func:`task_probabilities`). The Fréchet distance
   ``q_k`` between Gaussian fits of the features of ``D_collect^k`` and ``D_collect^t`` (the model's
   penultimate features by default); the ``K`` nearest experiences are kept (or an explicit list)
   and task ``k`` is sampled with probability ``p_k ∝ exp(-alpha (q_k - beta))`` (the paper's
   Eq. 8). ``beta`` cancels in the normalisation (it only shifts the exponent; the default, the
   smallest ``q``, keeps it in range); ``alpha = "auto"`` is ``1 / mean(q)`` over the kept experiences.
   ``confidence=False`` samples uniformly (the paper's "w/o confidence" ablation).
3. **Meta-training** (:func:`meta_train`): MAML. An episode samples ``tasks`` experiences by ``p``;
   each task's training part has ``shots`` failures of every class from ``D_collect^k``, its test
   part ``query`` failures from ``D_fail^k``. Inner loop: ``inner_steps`` SGD steps of ``inner_lr``
   on the training part; the meta-gradient is the test part's loss gradient at the adapted weights
   (first-order, the default) or through the inner loop (``second_order=True``, via ``torch.func``),
   averaged over the episode's tasks, and applied with ``meta_optimizer`` (``sgd`` or ``adam``) at
   ``meta_lr``.
4. **Meta-test** (:func:`meta_test`): ``D_collect^t`` is dealt class by class into ``tasks`` disjoint
   tasks (each covering every class of the collected set); each task trains the network for
   ``adapt_steps`` SGD steps of ``adapt_lr`` on mini-batches of ``adapt_batch``. With
   ``update="accumulated"`` (the paper's modification, Alg. 1 L17-21) the updates accumulate: task
   ``s`` starts where task ``s - 1`` ended, and the returned network has seen all of
   ``D_collect^t``. With ``update="separate"`` (the ablation, plain MAML meta-testing) every task
   starts from the meta-trained weights; the reported ``fail_accuracy_task_mean`` is then the mean
   over the task networks (the paper's measure) and the returned network is the last task's.

Baselines with the same step budget (:func:`finetune_collect`, :func:`joint_finetune`,
:func:`augmix_collect`): plain fine-tuning on ``D_collect^t`` (``tasks * adapt_steps`` steps), joint
fine-tuning on the union of the kept experiences' and the target's collected failures (as many
steps as MetaRepair's gradient evaluations, meta-training and meta-test together), and AugMix-style
training (AugMix's consistency loss) on ``D_collect^t`` with the fine-tuning budget.

The repaired network has the architecture of the input (a plain ``nn.Sequential``, saved with
``provrepair.models.save_model``), so ``provrepair.certify`` checks it on the collected points.
"""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from tqdm import tqdm

from ..data.build import load_corrupted
from ..data.checks import check_seed
from ..data.corruptions import CORRUPTIONS, check_corruption_name, check_severity, corrupt
from ..errors import InputError
from ..models.inference import predictions
from . import frechet
from .augmix import JSD_WEIGHT, augmix_loss, generic_ops
from .options import UPDATES, MetaRepairOptions, check_positive_float
from .protocol import Progress, RepairResult
from .training import (
    DATA_SEED,
    as_canonical,
    check_model_fits,
    fingerprint,
    load_splits,
    measure_accuracy,
    resolve_device,
    show_bars,
    trained_result,
)

__all__ = [
    "CorruptedData",
    "Experience",
    "MetaRepairOptions",
    "MetaRepairRepairer",
    "MetaRepairTarget",
    "UPDATES",
    "augmix_collect",
    "candidate_experiences",
    "experience_fits",
    "finetune_collect",
    "joint_finetune",
    "make_experience",
    "meta_gradient",
    "meta_test",
    "meta_train",
    "metarepair",
    "select_experiences",
    "task_probabilities",
]

#: Samples per forward pass when evaluating.
EVAL_BATCH = 1024


# --------------------------------------------------------------------------------------------------
# data


def _severities(severity) -> tuple[int, ...]:
    if isinstance(severity, (list, tuple)):
        if not severity:
            raise InputError("severity must be an integer 1-5 or a non-empty list of them")
        return tuple(sorted({check_severity(s) for s in severity}))
    return (check_severity(severity),)


class CorruptedData:
    """The clean splits of a dataset and their corrupted versions at one severity (or several,
    concatenated), made on first use and kept in memory (a benchmark builds many repairs on them).

    ``dataset``: a name (``mnist``, ``fashion-mnist``: the ``train`` and ``test`` splits, corrupted
    copies cached on disk by :func:`provrepair.data.load_corrupted`) or a mapping
    ``{"train": (x, y), "test": (x, y)}`` of images in [0, 1] (corrupted in memory).
    """

    def __init__(self, dataset, severity=5, *, train_limit: int | None = None, test_limit: int | None = None,
                 device="cpu"):
        self.severities = _severities(severity)
        self.device = resolve_device(device)
        self.limits = {"train": train_limit, "test": test_limit}
        self._cache: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self._preds: dict[tuple, torch.Tensor] = {}
        self.name = dataset if isinstance(dataset, str) else None
        raw = load_splits(dataset, ("train", "test"))
        self._clean = {}
        for s in ("train", "test"):
            x, y = raw[s]
            lim = self.limits[s]
            self._clean[s] = (x[:lim], y[:lim]) if lim is not None else (x, y)

    def clean(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self._clean[split]
        return torch.from_numpy(x).to(self.device), torch.from_numpy(y).to(self.device)

    def corrupted(self, name: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The split under corruption ``name`` at every severity (concatenated in severity order)."""
        name = check_corruption_name(name)
        key = (name, split)
        if key not in self._cache:
            xs, ys = [], []
            for sev in self.severities:
                if self.name is not None:

                    x, y = load_corrupted(self.name, split, name, sev, seed=DATA_SEED, limit=self.limits[split])
                else:

                    x0, y = self._clean[split]
                    x = corrupt(x0, name, sev, seed=DATA_SEED)
                xs.append(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
                ys.append(torch.from_numpy(np.asarray(y, dtype=np.int64)))
            self._cache[key] = (torch.cat(xs).to(self.device), torch.cat(ys).to(self.device))
        return self._cache[key]

    def predictions(self, net: nn.Module, name: str, split: str) -> torch.Tensor:
        """``net``'s predictions on a corrupted split (``name="clean"``: the clean split), kept per network (by its weights)."""
        key = (fingerprint(net), name, split)
        if key not in self._preds:
            x = self.clean(split)[0] if name == "clean" else self.corrupted(name, split)[0]
            self._preds[key] = _predict(net, x)
        return self._preds[key]


@dataclass
class Experience:
    """One corruption's repair data: the collected failures and the remaining ones."""

    name: str
    split: str
    collect: tuple[torch.Tensor, torch.Tensor]
    fail: tuple[torch.Tensor, torch.Tensor]
    failures: int
    samples: int
    halved: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "split": self.split, "samples": self.samples, "failures": self.failures,
                "collect": int(self.collect[1].shape[0]), "fail": int(self.fail[1].shape[0]),
                "halved": self.halved}


def _predict(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(predictions(net, x, batch_size=EVAL_BATCH)).to(x.device)


#: Accuracy at MetaRepair's evaluation batch (NaN on an empty set); the benchmarks use it too.
_accuracy = functools.partial(measure_accuracy, batch_size=EVAL_BATCH)


def _class_covering_order(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random order of ``range(len(labels))`` that starts with one index of every class present."""
    perm = rng.permutation(labels.shape[0])
    _, first = np.unique(labels[perm], return_index=True)
    head = perm[np.sort(first)]
    rest = np.setdiff1d(perm, head, assume_unique=True)
    return np.concatenate([head, perm[np.isin(perm, rest)]])


def make_experience(net: nn.Module, x: torch.Tensor, y: torch.Tensor, name: str, options: MetaRepairOptions,
                    rng: np.random.Generator, *, split: str, strict: bool, context: str = "",
                    predicted: torch.Tensor | None = None) -> Experience | None:
    """Split ``net``'s failures on ``(x, y)`` into ``D_collect`` and ``D_fail``.

    ``strict`` (the target): too few failures raise an error. Otherwise an experience with fewer than
    ``collect + min_fail`` failures uses half of them as ``D_collect``, and one with fewer than 4
    failures is skipped (``None``)."""
    pred = _predict(net, x) if predicted is None else predicted
    wrong = torch.nonzero(pred != y).squeeze(1).cpu().numpy()
    f = int(wrong.size)
    n = options.n_collect(f)
    halved = False
    if f < n + options.min_fail or n < 1:
        if strict:
            most = f - options.min_fail
            hint = (f"lower collect to at most {most} (or min_fail)" if most >= 1 else
                    "use a higher severity or a larger test split")
            raise InputError(
                f"target {name!r}{context} has only {f} failures of the model on {x.shape[0]} corrupted {split} images, "
                f"but D_collect needs {n} and D_fail at least {options.min_fail}; {hint}")
        if f < 4:
            return None
        n, halved = f // 2, True
    order = wrong[_class_covering_order(y[torch.as_tensor(wrong, device=y.device)].cpu().numpy(), rng)]
    c = torch.as_tensor(np.sort(order[:n]), device=x.device)
    r = torch.as_tensor(np.sort(order[n:]), device=x.device)
    return Experience(name, split, (x[c], y[c]), (x[r], y[r]), f, int(x.shape[0]), halved)


# --------------------------------------------------------------------------------------------------
# correlation and confidence


def task_probabilities(q, *, alpha: float | str = "auto", beta: float | str = "auto",
                       confidence: bool = True) -> np.ndarray:
    """``p_k = exp(-alpha (q_k - beta)) / sum_j exp(-alpha (q_j - beta))`` for distances ``q``.

    ``alpha="auto"``: ``1 / mean(q)`` (1 when every ``q`` is 0); ``beta="auto"``: ``min(q)``.
    ``confidence=False``: the uniform distribution."""
    q = np.asarray(q, dtype=np.float64).reshape(-1)
    if q.size == 0:
        raise InputError("task probabilities need at least one experience")
    if not np.all(np.isfinite(q)) or np.any(q < 0):
        raise InputError("Fréchet distances must be finite and non-negative")
    if not confidence:
        return np.full(q.size, 1.0 / q.size)
    a = (1.0 / q.mean() if q.mean() > 0 else 1.0) if alpha == "auto" else check_positive_float(alpha, "alpha")
    b = q.min() if beta == "auto" else float(beta)
    z = -a * (q - b)
    z -= z.max()  # the normalisation cancels any shift; this keeps exp() in range
    w = np.exp(z)
    return w / w.sum()


def select_experiences(distances: Mapping[str, float], k: int) -> list[str]:
    """The ``k`` experiences nearest to the target (ties: the suite's order)."""
    rank = {c: i for i, c in enumerate(CORRUPTIONS)}
    return sorted(distances, key=lambda n: (distances[n], rank.get(n, len(rank))))[:k]


# --------------------------------------------------------------------------------------------------
# MAML


def _loss(net: nn.Module, params: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(functional_call(net, params, (x,)), y)


def _inner(net, params: dict, x, y, steps: int, lr: float, *, create_graph: bool) -> dict:
    fast = params
    for _ in range(steps):
        grads = torch.autograd.grad(_loss(net, fast, x, y), list(fast.values()), create_graph=create_graph)
        if create_graph:
            fast = {k: v - lr * g for (k, v), g in zip(fast.items(), grads)}
        else:
            fast = {k: (v - lr * g).detach().requires_grad_(True) for (k, v), g in zip(fast.items(), grads)}
    return fast


def meta_gradient(net: nn.Module, tasks: Sequence[tuple], *, inner_steps: int, inner_lr: float,
                  second_order: bool = False) -> tuple[dict[str, torch.Tensor], float]:
    """The MAML meta-gradient of ``net``'s parameters over ``tasks`` (``(x_train, y_train, x_test,
    y_test)`` each): the mean over tasks of the gradient of the test loss after ``inner_steps`` SGD
    steps on the training part. First-order by default (the gradient at the adapted weights);
    ``second_order`` differentiates through the inner loop. Returns the gradients by parameter
    name and the mean test loss."""
    base = {k: v for k, v in net.named_parameters()}
    total = {k: torch.zeros_like(v) for k, v in base.items()}
    losses = 0.0
    for xtr, ytr, xte, yte in tasks:
        if second_order:
            start = {k: v.detach().requires_grad_(True) for k, v in base.items()}
            fast = _inner(net, start, xtr, ytr, inner_steps, inner_lr, create_graph=True)
            loss = _loss(net, fast, xte, yte)
            grads = torch.autograd.grad(loss, list(start.values()))
        else:
            start = {k: v.detach().clone().requires_grad_(True) for k, v in base.items()}
            fast = _inner(net, start, xtr, ytr, inner_steps, inner_lr, create_graph=False)
            loss = _loss(net, fast, xte, yte)
            grads = torch.autograd.grad(loss, list(fast.values()))
        for k, g in zip(base, grads):
            total[k] += g.detach()
        losses += float(loss.detach())
    n = max(1, len(tasks))
    return {k: g / n for k, g in total.items()}, losses / n


def _sample_task(exp: Experience, options: MetaRepairOptions, rng: np.random.Generator, clean=None):
    """A task of experience ``exp``: ``shots`` collected failures of every class it has (fewer when a
    class has fewer), and ``query`` failures of ``D_fail``; each part with ``replay`` clean images per
    failure from ``clean``."""
    xc, yc = exp.collect
    labels = yc.cpu().numpy()
    pick = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        pick.append(rng.choice(idx, size=min(options.shots, idx.size), replace=False))
    tr = torch.as_tensor(np.sort(np.concatenate(pick)), device=xc.device)
    xf, yf = exp.fail
    te = torch.as_tensor(np.sort(rng.choice(yf.shape[0], size=min(options.query, yf.shape[0]), replace=False)),
                         device=xf.device)
    return (*_with_replay(xc[tr], yc[tr], clean, options.replay, rng),
            *_with_replay(xf[te], yf[te], clean, options.replay, rng))


def _with_replay(x, y, pool, ratio: float, rng: np.random.Generator):
    """``(x, y)`` with ``round(ratio * len(y))`` clean images of ``pool`` appended (drawn at random)."""
    if pool is None or ratio <= 0:
        return x, y
    m = int(round(ratio * y.shape[0]))
    if m == 0:
        return x, y
    idx = torch.as_tensor(rng.integers(0, pool[1].shape[0], size=m), device=pool[1].device)
    return torch.cat([x, pool[0][idx]]), torch.cat([y, pool[1][idx]])


def _trainable(net: nn.Module) -> nn.Module:
    for p in net.parameters():
        p.requires_grad_(True)
    return net


def _frozen(net: nn.Module) -> nn.Module:
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


def meta_train(net: nn.Module, experiences: Sequence[Experience], probs, options: MetaRepairOptions, *,
               seed: int = 0, progress: Progress | None = None, clean=None) -> tuple[nn.Module, dict[str, Any]]:
    """MAML over ``experiences`` sampled by ``probs``; returns a meta-trained copy of ``net`` and the
    training history (loss per episode, tasks drawn per experience, gradient evaluations)."""
    if not experiences:
        raise InputError("meta-training needs at least one repair experience")
    p = np.asarray(probs, dtype=np.float64)
    if p.shape != (len(experiences),) or np.any(p < 0) or not np.isclose(p.sum(), 1.0):
        raise InputError("probs must be one probability per experience, summing to 1")
    rng = np.random.default_rng([check_seed(seed), 11])
    meta = _trainable(copy.deepcopy(net)).train()
    params = list(meta.parameters())
    opt = (torch.optim.SGD(params, lr=options.meta_lr) if options.meta_optimizer == "sgd"
           else torch.optim.Adam(params, lr=options.meta_lr))
    drawn = np.zeros(len(experiences), dtype=np.int64)
    history = []
    t0 = time.perf_counter()
    for _ in tqdm(range(options.episodes), desc="meta-training", unit="episode", disable=not show_bars(progress), leave=False):
        which = rng.choice(len(experiences), size=options.tasks, p=p)
        np.add.at(drawn, which, 1)
        tasks = [_sample_task(experiences[k], options, rng, clean) for k in which]
        grads, loss = meta_gradient(meta, tasks, inner_steps=options.inner_steps, inner_lr=options.inner_lr,
                                    second_order=options.second_order)
        for name, prm in meta.named_parameters():
            prm.grad = grads[name]
        opt.step()
        opt.zero_grad(set_to_none=True)
        history.append(round(loss, 5))
    return _frozen(meta), {
        "episodes": options.episodes, "test_loss": history, "seconds": time.perf_counter() - t0,
        "tasks_per_experience": {e.name: int(d) for e, d in zip(experiences, drawn)},
        "gradient_evaluations": options.episodes * options.tasks * (options.inner_steps + 1),
    }


def _sgd(net: nn.Module, data: tuple[torch.Tensor, torch.Tensor], *, steps: int, lr: float, batch: int,
         rng: np.random.Generator, loss_fn=None, clean=None, replay: float = 0.0) -> nn.Module:
    """``steps`` plain SGD steps on mini-batches of ``batch`` drawn without replacement (reshuffled
    each pass) from ``data``, each with ``replay`` clean images per sample from ``clean``; trains
    ``net`` in place and returns it."""
    x, y = data
    n = y.shape[0]
    if n == 0:
        raise InputError("no samples to train on")
    net = _trainable(net).train()
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    order, pos = rng.permutation(n), 0
    for _ in range(steps):
        if pos >= n:
            order, pos = rng.permutation(n), 0
        idx = torch.as_tensor(order[pos:pos + batch], device=x.device)
        pos += batch
        xb, yb = _with_replay(x[idx], y[idx], clean, replay, rng)
        loss = loss_fn(net, xb, yb, rng) if loss_fn is not None else F.cross_entropy(net(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return _frozen(net)


def _deal(labels: np.ndarray, parts: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Indices dealt into ``parts`` disjoint groups, class by class, so every group gets its share of
    every class (all classes when each has at least ``parts`` samples)."""
    groups: list[list[int]] = [[] for _ in range(parts)]
    offset = 0
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        for j, i in enumerate(idx):
            groups[(offset + j) % parts].append(int(i))
        offset += idx.size
    return [np.sort(np.asarray(g, dtype=np.int64)) for g in groups if g]


def meta_test(meta: nn.Module, collect: tuple[torch.Tensor, torch.Tensor], options: MetaRepairOptions, *,
              seed: int = 0, update: str | None = None, progress: Progress | None = None, clean=None) -> tuple[list[nn.Module], dict]:
    """Adapt the meta-trained network to the target's tasks (``D_collect^t`` dealt into ``tasks``
    class-covering parts). Returns the network after each task and details. ``accumulated``: task
    ``s`` starts from the network after task ``s - 1`` (the last network is the repair);
    ``separate``: every task starts from ``meta``."""
    update = options.update if update is None else update
    if update not in UPDATES:
        raise InputError(f"unknown update {update!r}; use one of: {', '.join(UPDATES)}")
    rng = np.random.default_rng([check_seed(seed), 12])
    x, y = collect
    parts = _deal(y.cpu().numpy(), options.tasks, rng)
    t0 = time.perf_counter()
    models, current = [], meta
    for part in tqdm(parts, desc=f"meta-test ({update})", unit="task", disable=not show_bars(progress), leave=False):
        idx = torch.as_tensor(part, device=x.device)
        start = current if update == "accumulated" else meta
        current = _sgd(copy.deepcopy(start), (x[idx], y[idx]), steps=options.adapt_steps, lr=options.adapt_lr,
                       batch=options.adapt_batch, rng=rng, clean=clean, replay=options.replay)
        models.append(current)
    return models, {"update": update, "tasks": len(parts), "task_sizes": [int(p.size) for p in parts],
                    "steps": len(parts) * options.adapt_steps, "seconds": time.perf_counter() - t0}


# --------------------------------------------------------------------------------------------------
# baselines


def finetune_collect(net: nn.Module, collect, *, steps: int, lr: float, batch: int, seed: int = 0, clean=None,
                     replay: float = 0.0) -> nn.Module:
    """Fine-tuning baseline: ``steps`` plain SGD steps on ``D_collect^t`` from the pretrained weights."""
    return _sgd(copy.deepcopy(net), collect, steps=steps, lr=lr, batch=batch,
                rng=np.random.default_rng([check_seed(seed), 21]), clean=clean, replay=replay)


def joint_finetune(net: nn.Module, experiences: Sequence[Experience], collect, *, steps: int, lr: float, batch: int,
                   seed: int = 0, clean=None, replay: float = 0.0) -> nn.Module:
    """Joint fine-tuning baseline: ``steps`` SGD steps on the union of the experiences' collected
    failures and ``D_collect^t``."""
    xs = [e.collect[0] for e in experiences] + [collect[0]]
    ys = [e.collect[1] for e in experiences] + [collect[1]]
    return _sgd(copy.deepcopy(net), (torch.cat(xs), torch.cat(ys)), steps=steps, lr=lr, batch=batch,
                rng=np.random.default_rng([check_seed(seed), 22]), clean=clean, replay=replay)


def augmix_collect(net: nn.Module, collect, *, steps: int, lr: float, batch: int, seed: int = 0,
                   jsd_weight: float | None = None, clean=None, replay: float = 0.0) -> nn.Module:
    """AugMix-style baseline: ``steps`` SGD steps on ``D_collect^t`` with AugMix's loss (cross-entropy
    on the image plus the Jensen-Shannon consistency of it and two AugMix views; AugMix's generic
    operations, without any corruption of the suite)."""

    loss = augmix_loss(generic_ops(), JSD_WEIGHT if jsd_weight is None else jsd_weight)
    return _sgd(copy.deepcopy(net), collect, steps=steps, lr=lr, batch=batch,
                rng=np.random.default_rng([check_seed(seed), 23]), loss_fn=loss, clean=clean, replay=replay)


# --------------------------------------------------------------------------------------------------
# the API


def repair_metrics(net: nn.Module, pretrained: nn.Module, data: CorruptedData, target: Experience,
                   name: str, *, whole: bool = True) -> dict[str, Any]:
    """Accuracy of ``net`` on ``D_fail^t``, ``D_collect^t``, the whole corrupted test split and the clean
    test split, next to the pretrained network's. ``whole=False`` leaves out the whole corrupted
    split (a full test-split pass, which ablations can spare)."""
    xc, yc = data.clean("test")
    clean = _accuracy(net, xc, yc)
    clean0 = float((data.predictions(pretrained, "clean", "test") == yc).double().mean())
    out = {"fail_accuracy": _accuracy(net, *target.fail), "collect_accuracy": _accuracy(net, *target.collect)}
    if whole:
        xt, yt = data.corrupted(name, "test")
        out.update(target_accuracy=_accuracy(net, xt, yt),
                   target_accuracy_pretrained=float((data.predictions(pretrained, name, "test") == yt).double().mean()))
    return {**out, "clean_accuracy": clean, "clean_accuracy_pretrained": clean0, "clean_drop": clean0 - clean,
            "fail_samples": int(target.fail[1].shape[0]), "collect_samples": int(target.collect[1].shape[0])}


@dataclass
class Preparation:
    """Everything before meta-training: the target task, the candidate experiences, their Fréchet
    distances to the target, the kept ones and their task probabilities."""

    target: Experience
    candidates: dict[str, Experience]
    distances: dict[str, float]
    kept: list[str]
    probabilities: dict[str, float]
    skipped: list[str]
    seconds: float

    def keeping(self, k: int, options: MetaRepairOptions) -> Preparation:
        """The same preparation with the ``k`` nearest experiences kept instead (a sweep over K
        without remaking the experiences)."""
        kept = select_experiences(self.distances, k)
        return replace(self, kept=kept, probabilities=_task_weights(kept, self.distances, options))


def _task_weights(kept: Sequence[str], distances: Mapping[str, float], options: MetaRepairOptions) -> dict[str, float]:
    p = task_probabilities([distances[n] for n in kept], alpha=options.alpha, beta=options.beta,
                           confidence=options.confidence)
    return dict(zip(kept, map(float, p)))


def _fits(net, exps: Mapping[str, Experience], kind: str) -> dict[str, frechet.GaussianFit]:
    return {n: frechet.fit_gaussian(frechet.features(net, e.collect[0], kind=kind)) for n, e in exps.items()}


def _cache_part(cache: dict | None, part: str, net, data, seed: int, options: MetaRepairOptions) -> dict:
    """``cache[part]`` (a fresh dict without a cache), refusing a cache made for other inputs."""
    if cache is None:
        return {}
    key = (fingerprint(net), id(data), seed, tuple(sorted(asdict(options).items())))
    if cache.get("key") not in (None, key):
        raise InputError("prepare's cache was made for another network, dataset, seed or options; use a fresh dict")
    cache["key"] = key
    return cache.setdefault(part, {})


def candidate_experiences(net: nn.Module, data: CorruptedData, names: Sequence[str], options: MetaRepairOptions, *,
                          seed: int = 0, cache: dict | None = None,
                          progress: Progress | None = None) -> dict[str, Experience | None]:
    """Each corruption's training-split experience (None where it has too few failures).

    They do not depend on the target, so ``cache`` (a dict kept between calls with the same ``net``,
    ``data``, ``options`` and ``seed``) makes each one once."""
    made = _cache_part(cache, "experiences", net, data, seed, options)
    for n in tqdm(names, desc="repair experiences", unit="corruption", disable=not show_bars(progress), leave=False):
        if n not in made:
            made[n] = make_experience(net, *data.corrupted(n, "train"), n, options,
                                      np.random.default_rng([seed, 2, CORRUPTIONS.index(n)]), split="train",
                                      strict=False, predicted=data.predictions(net, n, "train"))
    return {n: made[n] for n in names}


def experience_fits(net: nn.Module, exps: Mapping[str, Experience], options: MetaRepairOptions, *,
                    cache: dict | None = None) -> dict[str, frechet.GaussianFit]:
    """The Gaussian fit of each experience's features, made once per ``cache`` (the one
    ``candidate_experiences`` checked)."""
    fitted = {} if cache is None else cache.setdefault("fits", {})
    missing = {n: e for n, e in exps.items() if n not in fitted}
    fitted.update(_fits(net, missing, options.features))
    return {n: fitted[n] for n in exps}


def prepare(net: nn.Module, data: CorruptedData, target: str, experiences, options: MetaRepairOptions, *,
            seed: int = 0, progress: Progress | None = None, cache: dict | None = None) -> Preparation:
    """Build the target task and the experiences, and compute distances, selection and probabilities.

    ``cache``: a dict kept between calls with the same ``net``, ``data``, ``options`` and ``seed`` (a
    benchmark repairing several targets): the candidate experiences and their Gaussian fits, which do
    not depend on the target, are made once and reused."""
    t0 = time.perf_counter()
    target = check_corruption_name(target)
    if isinstance(experiences, str) and experiences != "auto":
        experiences = [e.strip() for e in experiences.split(",") if e.strip()]
    explicit = not (isinstance(experiences, str) and experiences == "auto")
    if explicit:
        if not isinstance(experiences, Sequence) or not experiences:
            raise InputError("experiences must be 'auto' or a non-empty list of corruption names")
        names = [check_corruption_name(e) for e in experiences]
        if target in names:
            raise InputError(f"the target {target!r} cannot be one of its own experiences; remove it from the list")
        if len(set(names)) != len(names):
            raise InputError(f"experiences list a corruption twice: {', '.join(names)}")
    else:
        names = [c for c in CORRUPTIONS if c != target]
    xt, yt = data.corrupted(target, "test")
    check_model_fits(net, xt, int(yt.max()))
    tgt = make_experience(net, xt, yt, target, options, np.random.default_rng([seed, 1]), split="test", strict=True,
                          predicted=data.predictions(net, target, "test"),
                          context=f" at severity {','.join(map(str, data.severities))}")
    made = candidate_experiences(net, data, names, options, seed=seed, cache=cache, progress=progress)
    cands, skipped = {}, []
    for n, e in made.items():
        if e is None:
            if explicit:
                raise InputError(f"experience {n!r} has fewer than 4 failures of the model on the corrupted training "
                                 "split; choose other experiences or a higher severity")
            skipped.append(n)
        else:
            cands[n] = e
    if not cands:
        raise InputError("no corruption has enough failures on the training split to serve as a repair experience; "
                         "use a higher severity or a larger train_limit")
    fits = {**_fits(net, {target: tgt}, options.features), **experience_fits(net, cands, options, cache=cache)}
    dist = {n: frechet.frechet_distance(fits[n], fits[target]) for n in cands}
    kept = list(cands) if explicit else select_experiences(dist, options.k)
    return Preparation(tgt, cands, dist, kept, _task_weights(kept, dist, options), skipped, time.perf_counter() - t0)


def metarepair_summary(metrics: dict, details: dict, timings: dict) -> str:
    """The report of a MetaRepair run."""
    m = metrics
    return (f"metarepair: target {m['target']} (severity {m['severity']}): accuracy on D_fail^t "
            f"{100 * m['fail_accuracy']:.2f} % ({m['fail_samples']} held-out failures; pretrained 0 %), on the "
            f"corrupted test split {100 * m['target_accuracy']:.2f} % (pretrained "
            f"{100 * m['target_accuracy_pretrained']:.2f} %); clean {100 * m['clean_accuracy']:.2f} % "
            f"(pretrained {100 * m['clean_accuracy_pretrained']:.2f} %)\n"
            f"experiences: {', '.join(f'{n} (p={p:.2f})' for n, p in details['probabilities'].items())}; "
            f"total {timings.get('total', 0):.1f} s")


@dataclass
class MetaRepairTarget:
    """What MetaRepair repairs: corruption ``target`` of ``data`` (the clean and corrupted splits),
    learning from ``experiences`` (``"auto"``: the ``k`` nearest by Fréchet distance, or a list /
    comma-separated string of corruption names). ``dataset`` names the data in the reports."""

    data: CorruptedData
    target: str
    experiences: str | Sequence[str] = "auto"
    dataset: str = "(arrays)"

    @classmethod
    def create(cls, *, dataset, target: str, severity=5, experiences="auto", device="auto",
               train_limit: int | None = 10000, test_limit: int | None = None) -> MetaRepairTarget:
        """``dataset``: ``mnist`` / ``fashion-mnist`` or ``{"train": (x, y), "test": (x, y)}``;
        ``severity``: 1-5 or a list (the corrupted sets of those severities together); the limits:
        the first N images of each split."""
        target = check_corruption_name(target)
        data = CorruptedData(dataset, severity, train_limit=train_limit, test_limit=test_limit,
                             device=resolve_device(device))
        return cls(data, target, experiences, dataset if isinstance(dataset, str) else "(arrays)")


def _repair(net: nn.Module, task: MetaRepairTarget, opts: MetaRepairOptions, progress) -> tuple:
    """Prepare, meta-train and meta-test; returns the repaired network, the meta-trained one, every
    task network, the preparation and the details and timings of the stages."""
    data = task.data
    prep = prepare(net, data, task.target, task.experiences, opts, seed=opts.seed, progress=progress)
    timings = {"prepare": prep.seconds}
    kept = [prep.candidates[n] for n in prep.kept]
    clean = data.clean("train")
    meta, training = meta_train(net, kept, [prep.probabilities[n] for n in prep.kept], opts, seed=opts.seed,
                                progress=progress, clean=clean)
    timings["meta_train"] = training.pop("seconds")
    models, testing = meta_test(meta, prep.target.collect, opts, seed=opts.seed, progress=progress, clean=clean)
    timings["meta_test"] = testing.pop("seconds")
    details = {
        "experiences": prep.kept, "probabilities": prep.probabilities,
        "distances": {n: round(v, 6) for n, v in sorted(prep.distances.items(), key=lambda kv: kv[1])},
        "skipped": prep.skipped, "target_task": prep.target.to_dict(),
        "experience_tasks": {n: prep.candidates[n].to_dict() for n in prep.kept},
        "meta_training": training, "meta_test": testing,
    }
    return models[-1], meta, models, prep, details, timings


class MetaRepairRepairer:
    """MetaRepair behind the repairer protocol: ``target`` is a :class:`MetaRepairTarget`,
    ``options`` a :class:`MetaRepairOptions` (its ``device`` is the target data's)."""

    name = "metarepair"
    kind = "statistical"
    Options = MetaRepairOptions

    def run(self, model, target: MetaRepairTarget, options: MetaRepairOptions,
            progress: Progress | None = None) -> RepairResult:
        t_start = time.perf_counter()
        opts = replace(options, seed=check_seed(options.seed), device=str(target.data.device))
        data = target.data
        net = _frozen(as_canonical(model, need_conv=False).to(data.device))
        repaired, meta, models, prep, details, timings = _repair(net, target, opts, progress)
        t0 = time.perf_counter()
        severity = list(data.severities) if len(data.severities) > 1 else data.severities[0]
        metrics = {"target": target.target, "severity": severity,
                   **repair_metrics(repaired, net, data, prep.target, target.target)}
        if details["meta_test"]["update"] == "separate":
            metrics["fail_accuracy_task_mean"] = float(np.mean([_accuracy(m, *prep.target.fail) for m in models]))
        metrics["meta_trained_fail_accuracy"] = _accuracy(meta, *prep.target.fail)
        timings["evaluate"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_start
        record = asdict(opts)
        experiences = target.experiences
        record.update(dataset=target.dataset, target=target.target, severity=severity,
                      experiences=experiences if isinstance(experiences, str) else list(experiences))
        return trained_result("metarepair", repaired, message=metarepair_summary(metrics, details, timings),
                              metrics=metrics, details=details, timings=timings, options=record)


def metarepair(model, *, dataset, target: str, severity=5, experiences="auto", device="auto", seed: int = 0,
               progress: Progress | bool | None = None, data: CorruptedData | None = None,
               **options) -> RepairResult:
    """Repair ``model`` (a path or an ``nn.Module``) for corruption ``target`` with MetaRepair.

    ``dataset``: ``mnist`` / ``fashion-mnist`` or ``{"train": (x, y), "test": (x, y)}``; ``severity``:
    1-5 or a list (the corrupted sets of those severities together); ``experiences``: ``"auto"`` (the
    ``k`` nearest by Fréchet distance) or a list / comma-separated string of corruption names;
    ``options``: see :class:`MetaRepairOptions`. ``data``: a :class:`CorruptedData` to reuse (its
    dataset and severity then win). Deterministic under ``seed``. Returns the repaired network (same
    architecture, plain ``nn.Sequential``) with its metrics. The API's form of :class:`MetaRepairRepairer`.
    """
    opts = MetaRepairOptions.from_kwargs(**options, seed=seed, device=str(device))
    if data is None:
        task = MetaRepairTarget.create(dataset=dataset, target=target, severity=severity, experiences=experiences,
                                       device=device, train_limit=opts.train_limit, test_limit=opts.test_limit)
    else:
        task = MetaRepairTarget(data, check_corruption_name(target), experiences,
                                dataset if isinstance(dataset, str) else "(arrays)")
    return MetaRepairRepairer().run(model, task, opts, progress)
