"""Repair sets (what the repaired network must do): points, and later polytopes and boxes."""

from .builders import pixel_box, rotation_hull, rotations, segment
from .points import PointSpec, validate_point_spec
from .regions import Box, HPolytope, OutputProperty, Region, RegionSpec, VPolytope
from .vnnlib import format_vnnlib, read_vnnlib, write_vnnlib

__all__ = [
    "Box",
    "HPolytope",
    "OutputProperty",
    "PointSpec",
    "Region",
    "RegionSpec",
    "VPolytope",
    "format_vnnlib",
    "pixel_box",
    "read_vnnlib",
    "rotation_hull",
    "rotations",
    "segment",
    "validate_point_spec",
    "write_vnnlib",
]
