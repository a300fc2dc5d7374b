"""The built-in methods of the comparison harness and their runners.

Every runner has the signature ``runner(net, data, *, seed, options) -> MethodOutput`` and imports
its repairer only when it runs, so a repairer that is missing breaks nothing but itself.
Pipelines (``<stage>+aprnn``) have no runner of their own: the harness runs the stage's runner and
then :func:`provrepair.repair.pipeline.polish`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from .registry import Method, Option, register_method

__all__ = ["MethodOutput", "robustness_task", "POLISH_OPTIONS"]


@dataclass
class MethodOutput:
    """A runner's answer: the repaired network (None when the method found none), what the method
    reports about itself (JSON-able), and its own timings in seconds."""

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


def _point_options(options: dict):
    from ..repair.aprnn import PointRepairOptions
    return PointRepairOptions(delta_bound=options["delta_bound"], margin=options["margin"],
                              objective=options["objective"], time_limit=options["time_limit"], threads=1)


def run_aprnn(net, data, *, seed: int, options: dict) -> MethodOutput:
    """APRNN point repair of the repair set (LP; certified by the independent point check)."""
    from ..api import repair
    result = repair(net, data.spec(), layer=_layer(options["layer"]), options=_point_options(options))
    details = {k: v for k, v in result.to_dict().items() if k not in ("certificate", "options")}
    return MethodOutput(result.model, "ok" if result.model is not None else result.status, details,
                        {k: float(v) for k, v in result.timings.items()}, result.message)


def robustness_task(data, device="auto"):
    """The training harness of the statistical repairers (:class:`~provrepair.repair.deeppatch.RobustnessTask`)
    for ``data``: its clean training and validation subsets, the task's corruption as the augmentor."""
    from ..repair.deeppatch import RobustnessTask, resolve_device
    from .tasks import corruption_augmentor
    if data.config.corruption is None:
        raise InputError("the statistical methods train on a corruption; give --corruption (a repair-set file "
                         "alone does not say what to train on)")
    aug = corruption_augmentor(data.config.corruption)
    dev = resolve_device(device)
    t = lambda a, dt=torch.float32: torch.as_tensor(np.asarray(a), dtype=dt, device=dev)
    xv, yv = t(data.val[0]), t(data.val[1], torch.int64)
    levels = aug.static(xv, 0)
    val_aug = (torch.cat(list(levels.values())), yv.repeat(len(levels)))
    # the task's own test metrics are bookkeeping only (the harness measures every model itself):
    # the repair set keeps them cheap
    test_y = t(data.repair[1], torch.int64)
    return RobustnessTask(aug, dev, (t(data.train[0]), t(data.train[1], torch.int64)), (xv, yv), val_aug,
                          test_y, {"clean": t(data.repair[0])})


def _statistical(result) -> MethodOutput:
    d = result.to_dict()
    details = {"training": d["training"], "details": d["details"], "options": d["options"]}
    return MethodOutput(result.model.cpu().eval(), "ok", details, dict(result.timings))


def _train_options(lr: float = 0.01, lr_help: str = "SGD learning rate") -> tuple[Option, ...]:
    """The training options every statistical method takes (DeepPatch with its own learning rate)."""
    return (Option("epochs", "int", 2, "training epochs"), Option("lr", "float", lr, lr_help),
            Option("batch_size", "int", 128, "training batch size"),
            Option("device", "str", "auto", "auto (GPU when present), cpu or cuda"))


_TRAIN = _train_options()


def run_finetune(net, data, *, seed: int, options: dict) -> MethodOutput:
    from ..repair.finetune import finetune
    task = robustness_task(data, options["device"])
    return _statistical(finetune(net, dataset=None, augment=task.augmentor.name, epochs=options["epochs"],
                                 lr=options["lr"], batch_size=options["batch_size"], seed=seed, progress=False,
                                 task=task))


def run_augmix(net, data, *, seed: int, options: dict) -> MethodOutput:
    from ..repair.augmix import augmix
    task = robustness_task(data, options["device"])
    return _statistical(augmix(net, dataset=None, augment=task.augmentor.name, epochs=options["epochs"],
                               lr=options["lr"], batch_size=options["batch_size"], seed=seed, progress=False,
                               jsd_weight=options["jsd_weight"], task=task))


def run_deeppatch(net, data, *, seed: int, options: dict) -> MethodOutput:
    from ..repair.deeppatch import deeppatch
    task = robustness_task(data, options["device"])
    out = _statistical(deeppatch(net, dataset=None, augment=task.augmentor.name, ratio=options["ratio"],
                                 variant=options["variant"], ranking=options["ranking"], init=options["init"],
                                 epochs=options["epochs"], lr=options["lr"], batch_size=options["batch_size"],
                                 seed=seed, progress=False, task=task))
    out.details["details"].pop("assessment", None)  # per-filter scores: large, and in the DeepPatch report
    return out


def run_metarepair(net, data, *, seed: int, options: dict) -> MethodOutput:
    from ..repair.metarepair import metarepair
    cfg = data.config
    if cfg.corruption is None:
        raise InputError("MetaRepair repairs a corruption; give --corruption")
    opts = {k: v for k, v in options.items() if k not in ("device", "experiences") and v is not None}
    if "collect" in opts and opts["collect"] >= 1:
        opts["collect"] = int(opts["collect"])
    result = metarepair(net, dataset=cfg.dataset, target=cfg.corruption, severity=cfg.severity,
                        experiences=options["experiences"], device=options["device"], seed=seed, progress=False,
                        **opts)
    d = result.to_dict() if hasattr(result, "to_dict") else {"metrics": getattr(result, "metrics", {})}
    timings = dict(getattr(result, "timings", {}) or {})
    model = result.model.cpu().eval()
    return MethodOutput(model, "ok", {k: v for k, v in d.items() if k != "model"}, timings)


#: Options of the LP polish in every pipeline.
POLISH_OPTIONS = (
    Option("max_layers", "int", 2, "how many of the last affine layers the polish may try, last first"),
    Option("delta_bound", "float", 3.0, "bound on every parameter change of the LP"),
    Option("margin", "float", 1e-3, "output margin the LP requires"),
    Option("objective", "str", "linf+l1", "LP objective", choices=("linf+l1", "l1", "linf")),
    Option("time_limit", "float", None, "seconds for each LP", optional=True),
)

_HERE = __name__

register_method(Method(
    "aprnn", "provable", "APRNN point repair (LP at one layer; provably correct on the repair set)",
    f"{_HERE}:run_aprnn",
    (Option("layer", "str", "-1", "affine layer index (default -1: the last one, the smallest LP), or auto (ranked "
                                   "by the layer heuristic, with fallback; its LP can be far larger)"),
     *POLISH_OPTIONS[1:])))
register_method(Method("finetune", "statistical", "fine-tuning of the whole network on corrupted training data",
                       f"{_HERE}:run_finetune", _TRAIN, imports=("provrepair.repair.finetune",)))
register_method(Method("augmix", "statistical", "AugMix-style training (augmentation chains + JS consistency)",
                       f"{_HERE}:run_augmix", (*_TRAIN, Option("jsd_weight", "float", 12.0, "JS loss weight")),
                       imports=("provrepair.repair.augmix",)))
register_method(Method(
    "deeppatch", "statistical", "DeepPatch: replacement filters switched in per sample",
    f"{_HERE}:run_deeppatch",
    (*_train_options(0.2, "SGD learning rate of the replacement filters"),
     Option("ratio", "float", 0.25, "blamed ratio per conv layer"),
     Option("init", "str", "clone", "how replacement filters start", choices=("clone", "random")),
     Option("variant", "str", "gamma", "routing", choices=("gamma", "beta", "fallback")),
     Option("ranking", "str", "alpha", "filter ranking", choices=("alpha", "random", "bottom"))),
    requires=("conv",), imports=("provrepair.repair.deeppatch",)))
register_method(Method(
    "metarepair", "statistical", "MetaRepair: meta-learning over corruption repair experiences",
    f"{_HERE}:run_metarepair",
    (Option("experiences", "str", "auto", "auto (nearest by Frechet distance) or corruption names a,b"),
     Option("device", "str", "auto", "auto (GPU when present), cpu or cuda"),
     Option("train_limit", "int", 2000, "training images MetaRepair builds its experiences from", optional=True),
     Option("test_limit", "int", 2000, "test images of MetaRepair's own metrics", optional=True),
     Option("episodes", "int", None, "meta-training episodes (default: MetaRepair's)", optional=True),
     Option("replay", "float", None, "clean training images per failure in every batch (default: MetaRepair's; "
                                     "4 kept clean accuracy within 1.4 pp on MNIST fog-3, 1 lost 36 pp)",
            optional=True),
     Option("collect", "float", 0.25, "|D_collect| per corruption: a count, or a fraction in (0, 1) of the failures "
                                      "(a fraction fits the harness's small test sets)", optional=True)),
    install_hint="MetaRepair (provrepair.repair.metarepair) is not in this checkout yet; update provrepair",
    imports=("provrepair.repair.metarepair",)))
for _stage in ("deeppatch", "finetune", "metarepair"):
    register_method(Method(
        f"{_stage}+aprnn", "pipeline",
        f"{_stage}, then the LP polish at the last affine layer(s) so every repair point is certified",
        "provrepair.repair.pipeline:polish", POLISH_OPTIONS, stage=_stage))
