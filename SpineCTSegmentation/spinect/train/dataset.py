"""Training data: cases read and resampled to the network grid, and deterministic splits.

SPINECT resamples every CT and its manual mask to 1 x 1 x 1 mm (nearest neighbour for both; we
follow the plan's ``image_interpolation`` for the CT and always use nearest for labels) and
splits its 50 cases 32:8:10 into training, validation and testing, rotating the test share over
five folds. :func:`split_cases` does the same for any number of cases: fold ``k`` of ``folds``
holds out the ``k``-th fifth for testing and splits the rest 32:8 (4:1) into training and
validation, all from one seeded permutation so that a given seed always gives the same split.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk

from spinect.errors import InputError
from spinect.manifest import DatasetCase
from spinect.plan import CLASS_NAMES
from spinect.preprocess import resample_to_reference, resample_to_spacing

__all__ = ["LoadedCase", "DataSplit", "load_case", "load_cases", "check_label_grid", "split_cases", "SPLIT_NAMES"]

log = logging.getLogger("spinect")

#: Values of a manifest case's optional ``split`` field that :func:`split_cases` honours.
SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class LoadedCase:
    """One case on the network grid.

    Attributes:
        id: case identifier from the manifest.
        image_hu: float32 (z, y, x) CT in HU on the plan's grid (1 mm).
        labels: uint8 (z, y, x) class indices on the same grid.
        spacing_zyx_mm: voxel size of that grid, mm.
        structures: uint8 (z, y, x) phantom structure codes on the same grid, when asked for
            and the case has a structure map (training re-renders images from it,
            :mod:`spinect.phantom.rerender`); else None.
    """

    id: str
    image_hu: np.ndarray
    labels: np.ndarray
    spacing_zyx_mm: tuple[float, float, float]
    structures: np.ndarray | None = None


@dataclass(frozen=True)
class DataSplit:
    """Case ids of each subset; disjoint, each sorted in permutation order."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def as_dict(self) -> dict[str, list[str]]:
        return {"train": list(self.train), "val": list(self.val), "test": list(self.test)}


def load_case(
    case: DatasetCase,
    *,
    spacing_zyx_mm: Sequence[float] = (1.0, 1.0, 1.0),
    image_interpolation: str = "linear",
    class_names: Sequence[str] = CLASS_NAMES,
    with_structures: bool = False,
) -> LoadedCase:
    """Read one case and put CT and labels on the same ``spacing_zyx_mm`` grid.

    ``with_structures``: also read a phantom case's structure map (manifest field ``structures``),
    resampled with nearest neighbour like the labels.

    The labels are read by class name (Slicer ``.seg.nrrd`` segments included) and resampled
    with nearest neighbour onto the resampled CT's grid, so a label file cropped from the CT's
    grid (Slicer crops segmentations to their extent) still lines up voxel for voxel. Any other
    grid is refused (:func:`check_label_grid`): a header with the wrong spacing or origin would
    teach the network labels in the wrong place.

    Raises:
        InputError: unreadable files, a label map off its CT's grid, or one that does not overlap its CT.
    """
    from spinect.io import read_ct

    ct = read_ct(case.image)
    labels = _read_case_labels(case, tuple(class_names))
    check_label_grid(labels, ct, case=case)
    spacing_xyz = tuple(float(s) for s in reversed(tuple(spacing_zyx_mm)))
    ct_grid = resample_to_spacing(ct, spacing_xyz, interpolation=image_interpolation, default_value=-1024.0,
                                  orient_lps=True)  # as inference: the network sees axial (LPS-ordered) volumes
    label_grid = resample_to_reference(labels, ct_grid, interpolation="nearest", default_value=0)
    label_array = sitk.GetArrayFromImage(label_grid).astype(np.uint8, copy=False)
    if not label_array.any() and sitk.GetArrayViewFromImage(labels).any():
        raise InputError(f"case {case.id}: label {case.label} does not overlap its CT {case.image}; check that both come from the same scan")
    structures = None
    if with_structures and case.extra.get("structures"):
        codes = sitk.ReadImage(str(_structures_path(case)))  # written by the generator on its CT's grid
        codes_grid = resample_to_reference(codes, ct_grid, interpolation="nearest", default_value=0)
        structures = sitk.GetArrayFromImage(codes_grid).astype(np.uint8, copy=False)
    return LoadedCase(
        id=case.id,
        image_hu=sitk.GetArrayFromImage(ct_grid).astype(np.float32, copy=False),
        labels=label_array,
        spacing_zyx_mm=tuple(float(s) for s in spacing_zyx_mm),
        structures=structures,
    )


def _structures_path(case: DatasetCase) -> Path:
    """The case's structure map (manifest field ``structures``: :func:`spinect.manifest.read_manifest`
    makes it absolute; a relative path in a hand-made :class:`DatasetCase` is taken from its label's folder).

    Raises:
        InputError: the manifest names a file that is not there.
    """
    structures = str(case.extra["structures"])
    path = Path(structures) if Path(structures).is_absolute() else (case.label.parent / structures).resolve()
    if not path.is_file():
        raise InputError(f"case {case.id}: structure map {path} (manifest field 'structures') is missing")
    return path


def _read_case_labels(case: DatasetCase, class_names: tuple[str, ...]) -> sitk.Image:
    """The case's label map in ``class_names``' indices.

    For a level model's classes (:data:`spinect.plan.LEVEL_CLASS_NAMES`) a phantom case's
    structure map (manifest field ``structures``) gives the levels; any other case must name
    its segments by class (``L1`` ... ``sacrum``, ``ilium``, ``other_bone``, ``dural_sac``,
    ``nerve_root`` in a ``.seg.nrrd``, or a label image with those indices).
    """
    from spinect.io import read_labelmap
    from spinect.plan import LEVEL_CLASS_NAMES

    structures = case.extra.get("structures")
    if class_names == LEVEL_CLASS_NAMES and structures:
        from spinect.phantom.structures import level_classes_from_structures

        codes = sitk.ReadImage(str(_structures_path(case)))
        image = sitk.GetImageFromArray(level_classes_from_structures(sitk.GetArrayFromImage(codes).astype(np.uint8)))
        image.CopyInformation(codes)
        return image
    labels = read_labelmap(case.label, class_names=class_names)
    if class_names == LEVEL_CLASS_NAMES and not sitk.GetArrayViewFromImage(labels).any():
        raise InputError(f"case {case.id}: {case.label} has no level labels ({', '.join(class_names[1:])}) and no phantom "
                         "structure map; train a level model on phantom cases or on segmentations with level segments")
    return labels


#: Tolerances of :func:`check_label_grid`: relative spacing, direction cosines, and the label
#: origin's offset from a CT voxel centre (fraction of a voxel; Slicer stores float32 matrices).
GRID_SPACING_RTOL = 1e-3
GRID_DIRECTION_ATOL = 1e-3
GRID_OFFSET_VOXELS = 0.01


def check_label_grid(labels: sitk.Image, ct: sitk.Image, *, case: DatasetCase) -> None:
    """Refuse a label map that is not on its CT's grid or a crop of it.

    The label map must have the CT's spacing and direction, an origin on a CT voxel centre, and
    lie inside the CT: the CT's own grid, or the extent Slicer crops a segmentation to. Anything
    else (twice the spacing, a shifted origin, a header without geometry) means the header is
    wrong, and resampling would put the labels on the wrong anatomy without a word.

    Raises:
        InputError: naming the case, both files and both grids.
    """
    ct_spacing, label_spacing = np.asarray(ct.GetSpacing(), float), np.asarray(labels.GetSpacing(), float)
    offset = np.asarray(ct.TransformPhysicalPointToContinuousIndex(labels.GetOrigin()), float)
    first, last = np.round(offset), np.round(offset) + np.asarray(labels.GetSize()) - 1
    problem = None
    if not np.allclose(label_spacing, ct_spacing, rtol=GRID_SPACING_RTOL, atol=0.0):
        problem = (f"its voxel size {tuple(round(float(v), 4) for v in label_spacing)} mm differs from the CT's "
                   f"{tuple(round(float(v), 4) for v in ct_spacing)} mm")
    elif not np.allclose(labels.GetDirection(), ct.GetDirection(), atol=GRID_DIRECTION_ATOL):
        problem = "its axis directions differ from the CT's"
    elif np.max(np.abs(offset - np.round(offset))) > GRID_OFFSET_VOXELS:
        problem = (f"its origin {tuple(round(float(v), 3) for v in labels.GetOrigin())} mm is not on a CT voxel "
                   f"(offset {tuple(round(float(v), 3) for v in offset)} voxels from the CT's origin)")
    elif np.any(first < 0) or np.any(last > np.asarray(ct.GetSize()) - 1):
        problem = (f"it covers CT voxels {tuple(int(v) for v in first)} to {tuple(int(v) for v in last)}, beyond the "
                   f"CT's {tuple(ct.GetSize())} (origin shifted?)")
    if problem is not None:
        raise InputError(
            f"case {case.id}: label map {case.label} is not on the grid of its CT {case.image}: {problem}. Its header "
            "geometry is wrong, so the labels would be placed on the wrong anatomy; export the label map on the "
            "CT's grid (in Slicer: the segmentation's source geometry is the CT) and check both come from the same scan"
        )


def load_cases(
    cases: Sequence[DatasetCase],
    *,
    progress: Callable[[int, int], None] | None = None,
    **options,
) -> list[LoadedCase]:
    """:func:`load_case` for each case; ``progress(done, total)`` after each one."""
    loaded = []
    for index, case in enumerate(cases):
        loaded.append(load_case(case, **options))
        if progress is not None:
            progress(index + 1, len(cases))
    return loaded


def split_cases(
    cases: Sequence[DatasetCase],
    *,
    seed: int = 0,
    fold: int = 0,
    folds: int = 5,
    val_share: float = 0.2,
) -> DataSplit:
    """Deterministic train/validation/test split (SPINECT's 32:8:10 with 5 folds).

    If every case of the manifest has a ``split`` field (``train``, ``val`` or ``test``) it is
    used as given. Otherwise the case ids are permuted with ``seed``; the permutation is cut
    into ``folds`` near-equal chunks, chunk ``fold`` is the test set, and ``val_share`` of the
    remaining cases (at least one) are the validation set. With 50 cases this gives 32:8:10.
    Fewer than 3 cases leave the test set empty; a single case is used for training and
    validation alike (only useful for smoke tests).

    Raises:
        InputError: duplicate ids, an unknown ``split`` value, a bad fold, or no cases.
    """
    ids = [c.id for c in cases]
    if not ids:
        raise InputError("the dataset has no cases")
    if len(set(ids)) != len(ids):
        raise InputError(f"the dataset lists duplicate case ids: {sorted({i for i in ids if ids.count(i) > 1})}")
    if not 0 <= fold < folds:
        raise InputError(f"--fold must be in 0..{folds - 1}, got {fold}")
    given = [c.extra.get("split") for c in cases]
    if all(s is not None for s in given):
        return _split_from_manifest(ids, given)
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    if len(order) == 1:
        return DataSplit(train=tuple(order), val=tuple(order), test=())
    if len(order) == 2:
        return DataSplit(train=(order[0],), val=(order[1],), test=())
    chunks = np.array_split(np.arange(len(order)), folds)
    test_idx = set(chunks[fold].tolist())
    test = [order[i] for i in sorted(test_idx)]
    rest = [order[i] for i in range(len(order)) if i not in test_idx]
    n_val = min(len(rest) - 1, max(1, int(round(val_share * len(rest)))))
    return DataSplit(train=tuple(rest[n_val:]), val=tuple(rest[:n_val]), test=tuple(test))


def _split_from_manifest(ids: list[str], given: list[str]) -> DataSplit:
    unknown = sorted({str(s) for s in given if s not in SPLIT_NAMES})
    if unknown:
        raise InputError(f"manifest split values {unknown} are not one of {SPLIT_NAMES}")
    subsets = {name: tuple(i for i, s in zip(ids, given) if s == name) for name in SPLIT_NAMES}
    if not subsets["train"] or not subsets["val"]:
        raise InputError("the manifest's split fields must give at least one 'train' and one 'val' case")
    return DataSplit(**subsets)
