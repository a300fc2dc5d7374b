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

from ..data.checks import check_seed
from .options import DEFAULT_BATCH, DEFAULT_EPOCHS, DEFAULT_LR, FinetuneOptions, TrainingOptions, build
from .protocol import Progress, RepairResult
from .training import (
    RobustnessTask,
    as_canonical,
    augmented_cross_entropy,
    parameter_count,
    robustness_summary,
    trained_result,
)

__all__ = ["FinetuneRepairer", "finetune", "retrain", "training_options"]


def retrain(method: str, model, batch_loss: Callable, task: RobustnessTask, options: TrainingOptions, *,
            progress: Progress | None = None, details: dict | None = None) -> RepairResult:
    """Train every parameter of a copy of ``model`` with ``batch_loss(net, x, y, rng)``, keep the best
    epoch on the augmented validation set, and measure it next to the pretrained network."""
    t_start = time.perf_counter()
    seed = check_seed(options.seed)
    net = as_canonical(model, need_conv=False)
    task.check_model(net)
    net = net.to(task.device)
    tuned = copy.deepcopy(net)
    params = list(tuned.parameters())
    for p in params:
        p.requires_grad_(True)
    training = task.fit(tuned, params, batch_loss, epochs=options.epochs, lr=options.lr,
                        batch_size=options.batch_size, seed=seed, progress=progress, desc=method,
                        initial_score=task.val_robustness(net))
    for p in params:
        p.requires_grad_(False)
    timings = {"data": task.data_seconds, "train": training.pop("seconds")}
    t0 = time.perf_counter()
    pretrained = task.pretrained_metrics(net)
    metrics = task.metrics(tuned)
    timings["evaluate"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    info = {"parameters": parameter_count(tuned), "parameters_pretrained": parameter_count(net), **(details or {})}
    record = {**task.record(), "epochs": options.epochs, "lr": options.lr, "batch_size": options.batch_size,
              "seed": seed}
    message = robustness_summary(method, metrics, pretrained, training, info, timings)
    return trained_result(method, tuned.eval(), message=message, metrics=metrics, pretrained=pretrained,
                          training=training, details=info, timings=timings, options=record)


class FinetuneRepairer:
    """Fine-tuning behind the repairer protocol: ``target`` is a :class:`RobustnessTask`."""

    name = "finetune"
    kind = "statistical"
    Options = FinetuneOptions

    def run(self, model, target: RobustnessTask, options: FinetuneOptions,
            progress: Progress | None = None) -> RepairResult:
        return retrain("finetune", model, augmented_cross_entropy(target.augmentor), target, options,
                       progress=progress)


def training_options(cls: type, *, dataset, augment: str, device, train_limit: int | None, val_limit: int | None,
                     test_limit: int | None, task: RobustnessTask | None, **options) -> tuple:
    """The API functions' common start: typed options ``cls(**options)`` and the task (``task``, or
    one loaded from ``dataset`` and ``augment``)."""
    opts = build(cls, device=str(device), **options)
    if task is None:
        task = RobustnessTask.create(dataset=dataset, augment=augment, device=device, train_limit=train_limit,
                                     val_limit=val_limit, test_limit=test_limit)
    return opts, task


def finetune(model, *, dataset, augment: str, epochs: int = DEFAULT_EPOCHS, lr: float = DEFAULT_LR,
             batch_size: int = DEFAULT_BATCH, device="auto", seed: int = 0, progress: Progress | bool | None = None,
             train_limit: int | None = None, val_limit: int | None = None, test_limit: int | None = None,
             task: RobustnessTask | None = None) -> RepairResult:
    """Fine-tune the whole of ``model`` on dynamically augmented data (same arguments as
    :func:`provrepair.repair.deeppatch.deeppatch`, without the patching ones). The API's form of
    :class:`FinetuneRepairer`."""
    opts, task = training_options(FinetuneOptions, dataset=dataset, augment=augment, device=device,
                                  train_limit=train_limit, val_limit=val_limit, test_limit=test_limit, task=task,
                                  epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)
    return FinetuneRepairer().run(model, task, opts, progress)
