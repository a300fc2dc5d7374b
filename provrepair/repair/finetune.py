"""Fine-tuning baseline: the whole network retrained on dynamically augmented data.

The paper's FineTune (FT): every parameter trainable, trained on the training split where each
sample, each time it is drawn, is kept with probability 1/2 or perturbed by the augmentor at a
random strength, the same data DeepPatch's replacement filters see. :func:`retrain` is the shared
whole-network loop (AugMix uses it with its own loss); the epoch with the best robustness accuracy
on the augmented validation set is kept, and the pretrained network itself competes as epoch 0.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

from .deeppatch import (
    DEFAULT_BATCH,
    DEFAULT_EPOCHS,
    DEFAULT_LR,
    RobustnessTask,
    StatisticalRepairResult,
    _check_seed,
    as_canonical,
    augmented_cross_entropy,
    parameter_count,
)

__all__ = ["finetune", "retrain"]


def retrain(method: str, model, batch_loss: Callable, *, dataset, augment: str, epochs: int, lr: float,
            batch_size: int, device, seed: int, progress: bool | None, train_limit: int | None,
            val_limit: int | None, test_limit: int | None, task: RobustnessTask | None,
            details: dict | None = None) -> StatisticalRepairResult:
    """Train every parameter of a copy of ``model`` with ``batch_loss(net, x, y, rng)``, keep the best
    epoch on the augmented validation set, and measure it next to the pretrained network."""
    t_start = time.perf_counter()
    seed = _check_seed(seed)
    net = as_canonical(model, need_conv=False)
    if task is None:
        task = RobustnessTask.create(dataset=dataset, augment=augment, device=device, train_limit=train_limit,
                                     val_limit=val_limit, test_limit=test_limit)
    task.check_model(net)
    net = net.to(task.device)
    tuned = copy.deepcopy(net)
    params = list(tuned.parameters())
    for p in params:
        p.requires_grad_(True)
    training = task.fit(tuned, params, batch_loss, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                        progress=progress, desc=method, initial_score=task.val_robustness(net))
    for p in params:
        p.requires_grad_(False)
    timings = {"data": task.data_seconds, "train": training.pop("seconds")}
    t0 = time.perf_counter()
    pretrained = task.pretrained_metrics(net)
    metrics = task.metrics(tuned)
    timings["evaluate"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    info = {"parameters": parameter_count(tuned), "parameters_pretrained": parameter_count(net), **(details or {})}
    options = {"dataset": dataset if isinstance(dataset, str) else "(arrays)", "augment": task.augmentor.name,
               "epochs": epochs, "lr": lr, "batch_size": batch_size, "device": str(task.device), "seed": seed,
               "train_samples": int(task.train[1].shape[0]), "val_samples": int(task.val[1].shape[0])}
    return StatisticalRepairResult(method, tuned.eval(), metrics, pretrained, training, info, timings, options)


def finetune(model, *, dataset, augment: str, epochs: int = DEFAULT_EPOCHS, lr: float = DEFAULT_LR,
             batch_size: int = DEFAULT_BATCH, device="auto", seed: int = 0, progress: bool | None = None,
             train_limit: int | None = None, val_limit: int | None = None, test_limit: int | None = None,
             task: RobustnessTask | None = None) -> StatisticalRepairResult:
    """Fine-tune the whole of ``model`` on dynamically augmented data (same arguments as
    :func:`provrepair.repair.deeppatch.deeppatch`, without the patching ones)."""
    if task is None:
        task = RobustnessTask.create(dataset=dataset, augment=augment, device=device, train_limit=train_limit,
                                     val_limit=val_limit, test_limit=test_limit)
    return retrain("finetune", model, augmented_cross_entropy(task.augmentor), dataset=dataset, augment=augment, epochs=epochs, lr=lr,
                   batch_size=batch_size, device=device, seed=seed, progress=progress, train_limit=train_limit,
                   val_limit=val_limit, test_limit=test_limit, task=task)
