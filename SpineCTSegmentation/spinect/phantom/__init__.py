"""Lumbosacral CT phantom with exact truth (bone, nerves, levels, Kambin and safe triangles).

Labels come from implicit geometry (signed-distance functions in mm) evaluated at voxel
centres, never from thresholding the image. See docs/phantom.md for definitions, parameter
ranges with sources, the structure-code table and the truth JSON schema.

>>> from spinect.phantom import generate_case
>>> case = generate_case(0, shape_zyx=(96, 128, 128))        # doctest: +SKIP
>>> case.truth["levels"]["L5S1"]["left"]["kambin"]["area_3d_mm2"]  # doctest: +SKIP
"""

from spinect.phantom.case import DEFAULT_SHAPE_ZYX, PHANTOM_VERSION, PhantomCase, case_seed, generate_case
from spinect.phantom.landmarks import projected_triangle_area_mm2, triangle_area_mm2, triangle_normal
from spinect.phantom.structures import (
    BONE_CODES,
    LABEL_BACKGROUND,
    LABEL_BONE,
    LABEL_NERVE,
    NERVE_CODES,
    STRUCTURE_CODES,
    STRUCTURE_NAMES,
    labels_from_structures,
    root_code,
)
from spinect.phantom.truth import view_direction, viewing_frame
from spinect.phantom.writer import make_phantom, write_case

__all__ = [
    "generate_case",
    "make_phantom",
    "write_case",
    "PhantomCase",
    "case_seed",
    "projected_triangle_area_mm2",
    "triangle_area_mm2",
    "triangle_normal",
    "view_direction",
    "viewing_frame",
    "STRUCTURE_CODES",
    "STRUCTURE_NAMES",
    "BONE_CODES",
    "NERVE_CODES",
    "LABEL_BACKGROUND",
    "LABEL_BONE",
    "LABEL_NERVE",
    "labels_from_structures",
    "root_code",
    "DEFAULT_SHAPE_ZYX",
    "PHANTOM_VERSION",
]
