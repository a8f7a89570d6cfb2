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

__all__ = ["ModelPlan", "CLASS_NAMES", "TRAINING_STATUSES", "PLAN_SCHEMA_VERSION"]

PLAN_SCHEMA_VERSION = 1

#: Label values of SPINECT's three classes (background, bone, nerve).
CLASS_NAMES: tuple[str, ...] = ("background", "bone", "nerve")

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

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

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
        return cls(**data)

    def replace(self, **changes: Any) -> "ModelPlan":
        return dataclasses.replace(self, **changes)


def _finite(value: Any) -> bool:
    """A real number (not a bool, string or None) that is neither NaN nor infinite."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
