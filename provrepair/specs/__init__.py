"""Repair sets (what the repaired network must do): points, and later polytopes and boxes."""

from .points import PointSpec, validate_point_spec

__all__ = ["PointSpec", "validate_point_spec"]
