"""Independent checks of a repaired network (never trusts the repairer)."""

from .points import PointCertificate, certify_points

__all__ = ["PointCertificate", "certify_points"]
