"""Independent checks of a network (never trusts the repairer): exact points, bound propagation
(IBP, CROWN), and the complete MILP check of input regions."""

from ..callable_package import make_callable
from .bounds import BoundPropagator, InputSet, NetworkBounds
from .points import PointCertificate, certify_points
from .regions import RegionCertificate, RegionVerdict, certify_regions

__all__ = [
           "BoundPropagator",
           "InputSet",
           "NetworkBounds",
           "PointCertificate",
           "RegionCertificate",
           "RegionVerdict",
           "certify_points",
           "certify_regions",
]

make_callable(__name__, "provrepair.api:certify")
