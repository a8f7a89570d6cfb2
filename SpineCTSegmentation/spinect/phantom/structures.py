"""Structure codes of the phantom's level/structure map and their tissue classes.

The structure map (UInt8) names every voxel: bones by level, discs by level, the dural sac,
each nerve root by level, side and segment, and the soft tissues. Codes 1-59 are the anatomy
a measurement tool needs; codes >= 100 are soft tissues used for appearance (and for
domain randomisation). The SPINECT label map follows from it: bone codes -> 1, nerve codes -> 2,
everything else (discs, fat, muscle, air...) -> 0.

Root segments: ``root_L5_left_traversing`` is the intradural-exit-to-pedicle part of the L5
root (it traverses the L4/5 level in the lateral recess, medial to the L5 pedicle);
``root_L5_left_exiting`` is the rest, from under the L5 pedicle through the L5/S1 foramen and
beyond. S1 exits through the S1 anterior sacral foramen.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "STRUCTURE_CODES",
    "STRUCTURE_NAMES",
    "STRUCTURE_TISSUE",
    "TISSUE_FALLBACK",
    "VERTEBRA_NAMES",
    "DISC_NAMES",
    "ROOT_NAMES",
    "SIDES",
    "BONE_CODES",
    "LEGACY_BONE_CODES",
    "THORAX_STRUCTURES",
    "NERVE_CODES",
    "LABEL_BACKGROUND",
    "LABEL_BONE",
    "LABEL_NERVE",
    "root_code",
    "labels_from_structures",
    "level_classes_from_structures",
    "structure_lookup",
]

LABEL_BACKGROUND, LABEL_BONE, LABEL_NERVE = 0, 1, 2

#: Vertebrae from cranial to caudal; S1 includes its alae, pedicles, SAPs and arch.
VERTEBRA_NAMES: tuple[str, ...] = ("L1", "L2", "L3", "L4", "L5", "S1")
#: Discs between consecutive vertebrae.
DISC_NAMES: tuple[str, ...] = ("L1L2", "L2L3", "L3L4", "L4L5", "L5S1")
#: Roots, each named by the vertebra under whose pedicle it exits (S1, S2: sacral foramina).
ROOT_NAMES: tuple[str, ...] = ("L1", "L2", "L3", "L4", "L5", "S1", "S2")
#: Sides; ``left`` is +x in LPS.
SIDES: tuple[str, ...] = ("left", "right")


def _build_table() -> dict[str, int]:
    codes: dict[str, int] = {"air": 0}
    for i, name in enumerate(VERTEBRA_NAMES):
        codes[name] = 1 + i  # 1..6
    codes["sacrum"] = 7  # S2 and below
    codes["ilium_left"] = 8
    codes["ilium_right"] = 9
    # surroundings (phantom v2): real CTs show ribs and femora, and they are bone
    for i, name in enumerate(("rib_left", "rib_right", "femur_left", "femur_right")):
        codes[name] = 10 + i  # 10..13
    # thorax (generate_case(field="thoracolumbar" | "chest") only): bone
    codes["thoracic_vertebra"] = 14  # T1-T12
    codes["sternum"] = 15
    codes["scapula"] = 16
    codes["clavicle"] = 17
    for i, name in enumerate(DISC_NAMES):
        codes[f"disc_{name}"] = 20 + i
    codes["disc_thoracic"] = 25  # T1/T2 ... T12/L1 (thorax only)
    codes["dural_sac"] = 30
    for r, root in enumerate(ROOT_NAMES):
        for s, side in enumerate(SIDES):
            for g, segment in enumerate(("traversing", "exiting")):
                codes[f"root_{root}_{side}_{segment}"] = 31 + (2 * r + s) * 2 + g
    codes["cauda_equina_sacral"] = 59
    soft = (
        "skin", "subcutaneous_fat", "abdominal_wall_muscle", "visceral_fat", "bowel", "bowel_gas",
        "blood_vessel", "vessel_calcification", "psoas_left", "psoas_right", "paraspinal_left",
        "paraspinal_right", "quadratus_lumborum", "iliacus", "gluteal_muscle", "epidural_fat",
        "foraminal_fat", "ligamentum_flavum", "facet_capsule", "sacroiliac_joint",
    )
    for i, name in enumerate(soft):  # ligamentum_flavum is reserved (not painted in version 1)
        codes[name] = 100 + i
    # surroundings (phantom v2); metal is implant, not bone (label 0)
    for i, name in enumerate(("liver", "kidney", "bowel_contrast", "ct_table", "metal", "lung")):
        codes[name] = 120 + i  # 120..125
    # thorax soft tissue (thorax fields only; label 0)
    for i, name in enumerate(("costal_cartilage", "mediastinal_fat", "heart", "heart_chamber", "airway")):
        codes[name] = 126 + i  # 126..130
    return codes


#: name -> code (UInt8). Stable within a phantom version; documented in docs/phantom.md.
STRUCTURE_CODES: dict[str, int] = _build_table()
#: code -> name.
STRUCTURE_NAMES: dict[int, str] = {v: k for k, v in STRUCTURE_CODES.items()}

#: Structures that only the thorax fields paint (``generate_case(field=...)``); a default
#: (lumbosacral) case's truth lists the codes without them, as before the thorax.
THORAX_STRUCTURES: tuple[str, ...] = ("thoracic_vertebra", "sternum", "scapula", "clavicle", "disc_thoracic",
                                      "costal_cartilage", "mediastinal_fat", "heart", "heart_chamber", "airway")
#: Vertebrae, sacrum, ilia (1-9), ribs and femora (10-13), thoracic vertebrae (14), sternum (15),
#: scapulae (16), clavicles (17): label 1.
BONE_CODES: tuple[int, ...] = tuple(range(1, 18))
#: The bone codes before the thorax (1-13): the appearance draws per-bone values for these only,
#: so the random streams of every case stay as they were.
LEGACY_BONE_CODES: tuple[int, ...] = tuple(range(1, 14))
NERVE_CODES: tuple[int, ...] = tuple(range(30, 60))

_SOFT_TISSUE = {
    "air": "air", "skin": "skin", "subcutaneous_fat": "fat", "abdominal_wall_muscle": "muscle",
    "visceral_fat": "fat", "bowel": "viscera", "bowel_gas": "gas", "blood_vessel": "blood",
    "vessel_calcification": "calcium", "quadratus_lumborum": "muscle", "iliacus": "muscle",
    "gluteal_muscle": "muscle", "epidural_fat": "fat", "foraminal_fat": "fat",
    "ligamentum_flavum": "ligament", "facet_capsule": "ligament", "sacroiliac_joint": "ligament",
    "liver": "liver", "kidney": "kidney", "bowel_contrast": "oral_contrast", "ct_table": "table", "metal": "metal",
    "lung": "lung", "costal_cartilage": "cartilage", "mediastinal_fat": "fat", "heart": "myocardium",
    "heart_chamber": "blood", "airway": "gas",
}

#: Tissue classes added with the surroundings (HU ranges in ``surroundings.SURROUNDING_HU_RANGES``)
#: -> an older class used by :func:`structure_lookup` while a value mapping lacks them, so an
#: appearance model that predates them still gives plausible HU (not the default).
TISSUE_FALLBACK: dict[str, str] = {
    "liver": "viscera", "kidney": "viscera", "oral_contrast": "calcium", "table": "ligament", "metal": "bone",
    "lung": "gas", "cartilage": "disc", "myocardium": "muscle",
}


def _tissue_of(name: str, code: int) -> str:
    if code in BONE_CODES:
        return "bone"
    if name.startswith("disc_"):
        return "disc"
    if name == "dural_sac":
        return "csf"
    if code in NERVE_CODES:
        return "nerve"
    if name.startswith(("psoas", "paraspinal")):
        return "muscle"
    return _SOFT_TISSUE[name]


#: code -> tissue class used by the appearance model (``bone`` has cortical/cancellous layers).
STRUCTURE_TISSUE: dict[int, str] = {c: _tissue_of(n, c) for n, c in STRUCTURE_CODES.items()}


def root_code(root: str, side: str, segment: str) -> int:
    """Structure code of one root segment, e.g. ``root_code("L5", "left", "exiting")``."""
    return STRUCTURE_CODES[f"root_{root}_{side}_{segment}"]


def structure_lookup(values: dict[str, float], default: float = 0.0) -> np.ndarray:
    """A 256-entry float32 lookup table code -> value from a tissue -> value mapping.

    Args:
        values: value per tissue class (``STRUCTURE_TISSUE`` values) or per structure name;
            a structure name wins over its tissue, a tissue over its ``TISSUE_FALLBACK`` class.
        default: value of unused codes.

    Returns:
        (256,) float32 array indexed by structure code.
    """
    table = np.full(256, default, np.float32)
    for code, tissue in STRUCTURE_TISSUE.items():
        name = STRUCTURE_NAMES[code]
        if name in values:
            table[code] = values[name]
        elif tissue in values:
            table[code] = values[tissue]
        elif TISSUE_FALLBACK.get(tissue) in values:
            table[code] = values[TISSUE_FALLBACK[tissue]]
    return table


def labels_from_structures(structures: np.ndarray) -> np.ndarray:
    """SPINECT label map (0 background, 1 bone, 2 nerve) from a structure map.

    Args:
        structures: (Z, Y, X) uint8 structure codes.

    Returns:
        (Z, Y, X) uint8 labels.
    """
    table = np.zeros(256, np.uint8)
    table[list(BONE_CODES)] = LABEL_BONE
    table[list(NERVE_CODES)] = LABEL_NERVE
    return table[structures]


def level_classes_from_structures(structures: np.ndarray) -> np.ndarray:
    """Class indices of a level model (:data:`spinect.plan.LEVEL_CLASS_NAMES`) from a structure map.

    L1-L5 -> their level, S1 and the rest of the sacrum -> ``sacrum``, ilia -> ``ilium``, ribs,
    femora, thoracic vertebrae, sternum, scapulae and clavicles -> ``other_bone``, dural sac ->
    ``dural_sac``, every root segment (and the sacral cauda equina) -> ``nerve_root``; the rest (discs, soft tissue, metal) -> background. The union of the
    bone classes is exactly :func:`labels_from_structures`' bone, and likewise for nerve.

    Args:
        structures: (Z, Y, X) uint8 structure codes.

    Returns:
        (Z, Y, X) uint8 class indices.
    """
    from spinect.plan import LEVEL_CLASS_NAMES

    index = {name: i for i, name in enumerate(LEVEL_CLASS_NAMES)}
    table = np.zeros(256, np.uint8)
    for level in ("L1", "L2", "L3", "L4", "L5"):
        table[STRUCTURE_CODES[level]] = index[level]
    table[[STRUCTURE_CODES["S1"], STRUCTURE_CODES["sacrum"]]] = index["sacrum"]
    table[[STRUCTURE_CODES["ilium_left"], STRUCTURE_CODES["ilium_right"]]] = index["ilium"]
    table[[STRUCTURE_CODES[n] for n in ("rib_left", "rib_right", "femur_left", "femur_right", "thoracic_vertebra",
                                                 "sternum", "scapula", "clavicle")]] = index["other_bone"]
    table[STRUCTURE_CODES["dural_sac"]] = index["dural_sac"]
    table[[c for c in NERVE_CODES if c != STRUCTURE_CODES["dural_sac"]]] = index["nerve_root"]
    return table[structures]
