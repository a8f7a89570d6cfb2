"""User choices shared by the parameter node, the widget and the logic (plain enums).

Slicer's ``parameterNodeWrapper`` stores enums by value and shows ``label()`` in combo boxes.
"""

from __future__ import annotations

import enum

__all__ = ["Device", "ExistingSegments", "Level", "Side", "TriangleMode", "DEFAULT_SMOOTHING_MM"]

#: Median smoothing kernel in mm (SPINECT's post-processing; 0 turns it off).
DEFAULT_SMOOTHING_MM = 1.5


class Device(enum.Enum):
    """Where the backend runs the network (``spinect segment --device``)."""

    AUTO = "auto"
    CUDA = "cuda"
    CPU = "cpu"

    def label(self) -> str:
        return {"auto": "Auto (GPU if available)", "cuda": "GPU (CUDA)", "cpu": "CPU"}[self.value]


class ExistingSegments(enum.Enum):
    """What to do when the output segmentation already has ``bone``/``nerve`` segments.

    ``ASK``: the widget asks; the logic refuses (raises) rather than overwrite anything.
    ``REPLACE``: replace the ``bone`` and ``nerve`` segments only; every other segment stays.
    ``NEW_NODE``: leave the node alone and write into a new segmentation node.
    """

    ASK = "ask"
    REPLACE = "replace"
    NEW_NODE = "new-node"

    def label(self) -> str:
        return {
            "ask": "Ask me",
            "replace": "Replace bone and nerve segments only",
            "new-node": "Write to a new segmentation",
        }[self.value]


class Level(enum.Enum):
    """Disc level of a Kambin/safe triangle (``spinect triangles --level``)."""

    L4L5 = "L4L5"
    L5S1 = "L5S1"

    def label(self) -> str:
        return {"L4L5": "L4/L5", "L5S1": "L5/S1"}[self.value]


class Side(enum.Enum):
    """Side of the target (``spinect triangles --side``)."""

    LEFT = "left"
    RIGHT = "right"

    def label(self) -> str:
        return {"left": "Left", "right": "Right"}[self.value]


class TriangleMode(enum.Enum):
    """How the triangle's window is bounded: three clicked points, one seed, or automatic."""

    POINTS = "points"
    SEED = "seed"
    AUTO = "auto"

    def label(self) -> str:
        return {"points": "Three points (A, B, C)", "seed": "One seed point", "auto": "Automatic (level map)"}[self.value]
