"""provrepair: repair trained neural networks and prove the repair.

>>> import provrepair
>>> net = provrepair.load_model("mnist_relu_9_100.tf")
>>> spec = provrepair.PointSpec.load("points.npz", where={"group": 0})
>>> result = provrepair.repair(net, spec, layer=5)
>>> result.certified, result.timings["total"]
"""

from .api import RepairResult, certify, repair
from .errors import ProvRepairError
from .models import load_model, save_model
from .repair.aprnn import PointRepairOptions
from .specs import PointSpec

__all__ = ["load_model", "save_model", "PointSpec", "PointRepairOptions", "repair", "certify", "RepairResult",
           "ProvRepairError"]
