"""The built-in methods of the comparison harness.

A method is a registered repairer (:mod:`provrepair.repair.registry`), the *target* the harness
builds for it from a task's data (the repair set's points, a training task for the statistical
repairers), and the defaults the harness runs it with (fewer epochs, one solver thread). Its
options are the repairer's typed options (:func:`provrepair.repair.options.options_of`), so an
option is written once, in the repairer's options dataclass. Pipelines (``<stage>+aprnn``) run the
stage's method and then the ``polish`` repairer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..repair.metarepair import MetaRepairTarget
from ..repair.options import Option, build, options_of
from ..repair.training import RobustnessTask, resolve_device
from .registry import Method, register_method
from .tasks import corruption_augmentor

__all__ = ["MethodOutput", "run_method", "robustness_task", "TARGETS"]


@dataclass
class MethodOutput:
    """A method's answer in the harness: the repaired network (None when the method found none),
    what the method reports about itself (JSON-able), and its own timings in seconds."""

    model: nn.Module | None
    status: str = "ok"
    details: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    message: str = ""


def _layer(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise InputError(f"option aprnn.layer must be an affine layer index or 'auto', got {value!r}") from None


def robustness_task(data, device="auto"):
    """The training task of the statistical repairers (:class:`~provrepair.repair.training.RobustnessTask`)
    for ``data``: its clean training and validation subsets, the task's corruption as the augmentor."""
    if data.config.corruption is None:
        raise InputError("the statistical methods train on a corruption; give --corruption (a repair-set file "
                         "alone does not say what to train on)")
    aug = corruption_augmentor(data.config.corruption)
    dev = resolve_device(device)
    t = lambda a, dt=torch.float32: torch.as_tensor(np.asarray(a), dtype=dt, device=dev)  # noqa: E731
    xv, yv = t(data.val[0]), t(data.val[1], torch.int64)
    levels = aug.static(xv, 0)
    val_aug = (torch.cat(list(levels.values())), yv.repeat(len(levels)))
    # the task's own test metrics are bookkeeping only (the harness measures every model itself):
    # the repair set keeps them cheap
    test_y = t(data.repair[1], torch.int64)
    return RobustnessTask(aug, dev, (t(data.train[0]), t(data.train[1], torch.int64)), (xv, yv), val_aug,
                          test_y, {"clean": t(data.repair[0])})


def _corruption_target(data, options: dict):
    """MetaRepair's target: the task's dataset under its corruption and severity."""
    cfg = data.config
    if cfg.corruption is None:
        raise InputError("MetaRepair repairs a corruption; give --corruption")
    return MetaRepairTarget.create(dataset=cfg.dataset, target=cfg.corruption, severity=cfg.severity,
                                   experiences=options.pop("experiences"), device=options.get("device", "auto"),
                                   train_limit=options.get("train_limit"), test_limit=options.get("test_limit"))


#: target kind -> builder(data, options) (a builder may consume harness-only options)
TARGETS: dict[str, Callable[[Any, dict], Any]] = {
    "points": lambda data, options: data.spec(),
    "robustness": lambda data, options: robustness_task(data, options.get("device", "auto")),
    "corruption": _corruption_target,
}


def run_method(method: Method, net: nn.Module, data, *, seed: int, options: dict) -> MethodOutput:
    """Build the method's target from ``data``, run its repairer, and keep what the harness records."""
    repairer = method.repairer_instance()
    opts = dict(options)
    target = TARGETS[method.target](data, opts)
    if "layer" in opts:
        opts["layer"] = _layer(opts["layer"])
    known = {o.name for o in options_of(repairer.Options)} | {"layer"}
    typed = {k: v for k, v in opts.items() if k in known and v is not None}
    if "seed" in repairer.Options.__dataclass_fields__:
        typed["seed"] = seed
    result = repairer.run(net, target, build(repairer.Options, **typed))
    details = {k: v for k, v in result.to_dict().items() if k not in ("certificate", "before", "options", "model")}
    details.get("details", {}).pop("assessment", None)  # DeepPatch's per-filter scores: large, in its own report
    model = result.model.cpu().eval() if result.model is not None and repairer.kind == "statistical" else result.model
    return MethodOutput(model, "ok" if model is not None else result.status, details,
                        {k: float(v) for k, v in result.timings.items()}, "" if model is not None else result.message)


_DEVICE = Option("device", "str", "auto", "auto (GPU when present), cpu or cuda")
_TRAIN = {"epochs": 2}  # the harness's training budget (the API's default is longer)

register_method(Method(
    "aprnn", "provable", "APRNN point repair (LP at one layer; provably correct on the repair set)",
    "aprnn", "points", defaults={"threads": 1},
    extra=(Option("layer", "str", "-1", "affine layer index (default -1: the last one, the smallest LP), or auto "
                                        "(ranked by the layer heuristic, with fallback; its LP can be far larger)"),)))
register_method(Method("finetune", "statistical", "fine-tuning of the whole network on corrupted training data",
                       "finetune", "robustness", defaults=_TRAIN))
register_method(Method("augmix", "statistical", "AugMix-style training (augmentation chains + JS consistency)",
                       "augmix", "robustness", defaults=_TRAIN))
register_method(Method("deeppatch", "statistical", "DeepPatch: replacement filters switched in per sample",
                       "deeppatch", "robustness", defaults=_TRAIN, requires=("conv",)))
register_method(Method(
    "metarepair", "statistical", "MetaRepair: meta-learning over corruption repair experiences", "metarepair",
    "corruption", defaults={"train_limit": 2000, "test_limit": 2000, "collect": 0.25},
    extra=(Option("experiences", "str", "auto", "auto (nearest by Frechet distance) or corruption names a,b"),),
    install_hint="MetaRepair (provrepair.repair.metarepair) is not in this checkout yet; update provrepair"))
for _stage in ("deeppatch", "finetune", "metarepair"):
    register_method(Method(
        f"{_stage}+aprnn", "pipeline",
        f"{_stage}, then the LP polish at the last affine layer(s) so every repair point is certified",
        "polish", "points", defaults={"threads": 1}, stage=_stage))
