"""provrepair: repair trained neural networks and prove the repair.

>>> import provrepair
>>> net = provrepair.load_model("mnist_relu_9_100.tf")
>>> spec = provrepair.PointSpec.load("points.npz", where={"group": 0})
>>> result = provrepair.repair(net, spec, layer=5)
>>> result.certified, result.timings["total"]

Every name below is imported on first use (PEP 562), so ``import provrepair.cli`` or
``import provrepair.solvers`` pays for torch and the repairers only when they are used.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import ProvRepairError
from .version import version

# public name -> "module:attribute" (attribute defaults to the name)
_LAZY = {
    "load_model": "provrepair.models", "save_model": "provrepair.models",
    "PointSpec": "provrepair.specs", "RegionSpec": "provrepair.specs", "OutputProperty": "provrepair.specs",
    "RepairResult": "provrepair.repair.protocol", "PointRepairOptions": "provrepair.repair.options",
    "deeppatch": "provrepair.api", "load_patched": "provrepair.api", "metarepair": "provrepair.api",
    "polish": "provrepair.api", "compare": "provrepair.evaluate.harness",
    "repair": "provrepair.repair", "certify": "provrepair.certify",
}

__all__ = ["ProvRepairError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        globals()[name] = version()
        return globals()[name]
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'provrepair' has no attribute {name!r}")
    module = importlib.import_module(target)
    value = module if target == f"{__name__}.{name}" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
