"""provrepair: repair trained neural networks and prove the repair.

>>> import provrepair
>>> net = provrepair.load_model("mnist_relu_9_100.tf")
>>> spec = provrepair.PointSpec.load("points.npz", where={"group": 0})
>>> result = provrepair.repair(net, spec, layer=5)
>>> result.certified, result.timings["total"]
"""

import types as _types

from . import certify as _certify_package
from . import repair as _repair_package
from .api import MetaRepairResult, RepairResult, StatisticalRepairResult, deeppatch, load_patched, metarepair
from .api import certify as _certify
from .api import repair as _repair
from .errors import ProvRepairError
from .evaluate.harness import compare
from .models import load_model, save_model
from .repair.aprnn import PointRepairOptions
from .repair.pipeline import polish
from .specs import OutputProperty, PointSpec, RegionSpec


class _CallablePackage(_types.ModuleType):
    """``provrepair.repair`` and ``provrepair.certify`` are both the API functions the product
    promises and the subpackages the layout promises; calling the package calls the function."""

    def __call__(self, *args, **kwargs):
        return self.__call_target__(*args, **kwargs)


for _pkg, _fn in ((_repair_package, _repair), (_certify_package, _certify)):
    _pkg.__class__ = _CallablePackage
    _pkg.__call_target__ = _fn
repair = _repair_package
certify = _certify_package

__all__ = ["load_model", "save_model", "PointSpec", "RegionSpec", "OutputProperty", "deeppatch", "load_patched", "metarepair", "MetaRepairResult",
           "StatisticalRepairResult", "PointRepairOptions", "repair", "certify", "RepairResult",
           "ProvRepairError", "compare", "polish"]
