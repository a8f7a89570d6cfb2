"""The model plan: everything inference needs besides the weights (nnU-Net's idea).

A plan travels inside the model file and as a JSON sidecar, so ``spinect segment --model X``
needs nothing else: spacing, HU window, normalisation statistics, patch, stride, classes,
architecture and provenance.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ModelPlan", "CLASS_NAMES", "LEVEL_NAMES", "LEVEL_CLASS_NAMES", "LEVEL_CLASS_GROUPS", "LEVEL_MAP_NAMES",
           "TRAINING_STATUSES", "PLAN_SCHEMA_VERSION"]

PLAN_SCHEMA_VERSION = 1

#: Label values of SPINECT's three classes (background, bone, nerve).
CLASS_NAMES: tuple[str, ...] = ("background", "bone", "nerve")

#: Vertebral levels a level model names, cranial to caudal (``sacrum`` includes S1).
LEVEL_NAMES: tuple[str, ...] = ("L1", "L2", "L3", "L4", "L5", "sacrum")
#: Output channels of a level model: the levels, the other bones, and the nerve tissue split in
#: dural sac and roots (one forward pass gives SPINECT's classes and the level).
LEVEL_CLASS_NAMES: tuple[str, ...] = ("background", *LEVEL_NAMES, "ilium", "other_bone", "dural_sac", "nerve_root")
#: Which of a level model's classes make up SPINECT's ``bone`` and ``nerve``.
LEVEL_CLASS_GROUPS: dict[str, tuple[str, ...]] = {
    "bone": (*LEVEL_NAMES, "ilium", "other_bone"),
    "nerve": ("dural_sac", "nerve_root"),
}
#: Values of the level map ``segment(..., levels=True)`` returns: 0 = no level, k = ``LEVEL_NAMES[k - 1]``.
LEVEL_MAP_NAMES: tuple[str, ...] = ("background", *LEVEL_NAMES)

#: ``trained``: usable by anyone; ``test-only``: tiny models made by the test suite (accepted,
#: with a warning); ``untrained``: random weights, refused by the CLI.
TRAINING_STATUSES = ("trained", "test-only", "untrained")


@dataclass(frozen=True)
class ModelPlan:
    """Self-description of a SPINECT model.

    Attributes:
        architecture: keyword arguments of :func:`spinect.nets.build_network`
            (``name``, ``base_width``, ``levels``, ``in_channels``, ``num_classes``, ...).
        class_names: names of the output channels; index = label value.
        class_groups: for a network whose classes are not SPINECT's three: which classes make
            up ``bone`` and which ``nerve`` (class name -> tuple of class names). Empty for a
            3-class (background, bone, nerve) model. A model with the classes of
            :data:`LEVEL_NAMES` can also label vertebral levels (:attr:`has_levels`).
        spacing_zyx_mm: the grid the network works on (SPINECT: 1 x 1 x 1 mm).
        hu_window: HU clipping range applied before normalisation.
        intensity_mean / intensity_std: z-score statistics of the clipped training images (HU).
        patch_size_zyx: sliding-window patch (SPINECT: 32 x 64 x 64 voxels).
        stride_zyx: sliding-window stride (SPINECT: 20 x 40 x 40 voxels).
        blend: ``sum`` (SPINECT: summed probabilities, then argmax) or ``gaussian``.
        smoothing_mm: median smoothing kernel on the native grid (SPINECT: 1.5 mm, Slicer's rule).
        image_interpolation: ``linear`` or ``nearest`` for resampling the CT to ``spacing_zyx_mm``.
        training_status: one of :data:`TRAINING_STATUSES`.
        provenance: free-form facts (training data, command, date, metrics, code version).
        model_version: bumps whenever results change.
    """

    architecture: dict[str, Any]
    class_names: tuple[str, ...] = CLASS_NAMES
    class_groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    spacing_zyx_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    hu_window: tuple[float, float] = (-1000.0, 2000.0)
    intensity_mean: float = 0.0
    intensity_std: float = 1.0
    patch_size_zyx: tuple[int, int, int] = (32, 64, 64)
    stride_zyx: tuple[int, int, int] = (20, 40, 40)
    blend: str = "sum"
    smoothing_mm: float = 1.5
    image_interpolation: str = "linear"
    training_status: str = "untrained"
    provenance: dict[str, Any] = field(default_factory=dict)
    model_version: str = "0"
    schema_version: int = PLAN_SCHEMA_VERSION

    def __post_init__(self) -> None:
        """Refuse values that would crash deep inside inference or silently give empty labels."""
        if len(self.class_names) < 2:
            raise ValueError(f"class_names needs background and at least one class, got {list(self.class_names)}")
        self._check_class_groups()
        if len(self.spacing_zyx_mm) != 3 or not all(_finite(v) and v > 0 for v in self.spacing_zyx_mm):
            raise ValueError(f"spacing_zyx_mm must be 3 finite voxel sizes > 0 mm, got {list(self.spacing_zyx_mm)}")
        if len(self.hu_window) != 2 or not all(_finite(v) for v in self.hu_window) or not self.hu_window[0] < self.hu_window[1]:
            raise ValueError(f"hu_window must be (low, high) finite HU with low < high, got {list(self.hu_window)} "
                             "(a reversed window clips every voxel to one value: empty labels)")
        if not _finite(self.intensity_mean):
            raise ValueError(f"intensity_mean must be a finite number, got {self.intensity_mean!r}")
        if not _finite(self.smoothing_mm) or self.smoothing_mm < 0:
            raise ValueError(f"smoothing_mm must be a finite number >= 0 mm, got {self.smoothing_mm!r}")
        if self.training_status not in TRAINING_STATUSES:
            raise ValueError(f"training_status must be one of {TRAINING_STATUSES}, got {self.training_status!r}")
        if not _finite(self.intensity_std) or self.intensity_std <= 0:
            raise ValueError(f"intensity_std must be > 0, got {self.intensity_std}")
        if self.blend not in ("sum", "gaussian"):
            raise ValueError(f"blend must be 'sum' or 'gaussian', got {self.blend!r}")
        if self.image_interpolation not in ("linear", "nearest"):
            raise ValueError(f"image_interpolation must be 'linear' or 'nearest', got {self.image_interpolation!r}")

    def _check_class_groups(self) -> None:
        names = tuple(self.class_names)
        if not self.class_groups:
            # Without a class map the label value is the class index (older 3-class models).
            if "bone" not in names[1:]:
                raise ValueError(f"the plan's classes {list(names)} include no 'bone' class and the plan has no "
                                 "class map (class_groups) saying which classes are bone and which nerve; "
                                 "add class_groups to the plan (model sidecar JSON) or retrain")
            return
        if set(self.class_groups) != {"bone", "nerve"}:
            raise ValueError(f"class_groups must map exactly 'bone' and 'nerve' to class names, got {sorted(self.class_groups)}")
        grouped = [n for group in self.class_groups.values() for n in group]
        unknown = sorted(set(grouped) - set(names[1:]))
        if unknown or len(grouped) != len(set(grouped)) or not all(self.class_groups.values()):
            raise ValueError(f"class_groups {dict(self.class_groups)} must give each of bone and nerve at least one "
                             f"foreground class of {list(names[1:])}, each class at most once (unknown: {unknown})")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def label_names(self) -> tuple[str, ...]:
        """Names of the values of the label maps ``segment`` writes (index = label value):
        SPINECT's three for a model with a class map, else the network's classes."""
        return CLASS_NAMES if self.class_groups else tuple(self.class_names)

    @property
    def has_levels(self) -> bool:
        """True if the network names vertebral levels (its classes include :data:`LEVEL_NAMES`)."""
        return bool(self.class_groups) and all(n in self.class_groups["bone"] for n in LEVEL_NAMES)

    def spinect_lookup(self) -> "list[int]":
        """Class index -> SPINECT label (0 background, 1 bone, 2 nerve), as a list indexed by class."""
        if not self.class_groups:
            return list(range(len(self.class_names)))
        table = [0] * len(self.class_names)
        for value, group in ((1, "bone"), (2, "nerve")):
            for name in self.class_groups[group]:
                table[self.class_names.index(name)] = value
        return table

    def level_lookup(self) -> "list[int]":
        """Class index -> value in :data:`LEVEL_MAP_NAMES` (0 for classes that are no level)."""
        return [LEVEL_MAP_NAMES.index(n) if n in LEVEL_NAMES else 0 for n in self.class_names]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelPlan":
        """Inverse of :meth:`to_dict`; rejects plans written by a newer schema."""
        data = dict(data)
        version = int(data.get("schema_version", 1))
        if version > PLAN_SCHEMA_VERSION:
            raise ValueError(
                f"plan schema {version} is newer than this spinect understands ({PLAN_SCHEMA_VERSION}); "
                "upgrade spinect"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown plan fields: {sorted(unknown)}")
        for key in ("class_names", "spacing_zyx_mm", "hu_window", "patch_size_zyx", "stride_zyx"):
            if key in data:
                data[key] = tuple(data[key])
        if "class_groups" in data:
            data["class_groups"] = {str(k): tuple(v) for k, v in dict(data["class_groups"]).items()}
        return cls(**data)

    def replace(self, **changes: Any) -> "ModelPlan":
        return dataclasses.replace(self, **changes)


def _finite(value: Any) -> bool:
    """A real number (not a bool, string or None) that is neither NaN nor infinite."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
