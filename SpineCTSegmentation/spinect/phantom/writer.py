"""Write phantom cases to a dataset folder (NIfTI + truth JSON + manifest, optional previews)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk

from spinect.errors import OutputError
from spinect.io.atomic import atomic_output
from spinect.manifest import DatasetCase, write_manifest
from spinect.phantom.case import DEFAULT_SHAPE_ZYX, PhantomCase, case_seed, check_grid, generate_case

__all__ = ["make_phantom", "write_case", "case_centre_zyx"]


def _write_image(image: sitk.Image, path: Path) -> None:
    with atomic_output(path) as tmp:
        sitk.WriteImage(image, str(tmp), True)


def case_centre_zyx(case: PhantomCase, *, level: str = "L5S1", side: str = "left") -> tuple[int, int, int]:
    """Voxel (z, y, x) at the centre of the ``level``/``side`` foramen (between the pedicles)."""
    foramen = case.truth["levels"][level][side]["foramen"]
    pts = np.array([foramen["upper_pedicle_inferior_margin_lps_mm"], foramen["lower_pedicle_superior_margin_lps_mm"]])
    idx = np.rint(case.grid.world_to_index_zyx(pts.mean(axis=0)[None])[0]).astype(int)
    return tuple(int(np.clip(v, 0, n - 1)) for v, n in zip(idx, case.grid.shape_zyx))


def write_case(case: PhantomCase, out_dir: Path, name: str, *, preview: bool = False) -> dict[str, Path]:
    """Write one case as ``<name>_ct.nii.gz``, ``_labels``, ``_structures``, ``_truth.json``
    (and ``_preview.png``); returns the paths by kind."""
    paths = {"ct": out_dir / f"{name}_ct.nii.gz", "labels": out_dir / f"{name}_labels.nii.gz",
             "structures": out_dir / f"{name}_structures.nii.gz", "truth": out_dir / f"{name}_truth.json"}
    _write_image(case.ct, paths["ct"])
    _write_image(case.labels, paths["labels"])
    _write_image(case.structures, paths["structures"])
    with atomic_output(paths["truth"]) as tmp:
        tmp.write_text(json.dumps(case.truth, indent=1) + "\n")
    if preview:
        from spinect.phantom.preview import save_preview

        marks = np.array([v for t in ("kambin", "safe") for v in case.truth["levels"]["L5S1"]["left"][t]["points_lps_mm"].values()])
        paths["preview"] = save_preview(
            sitk.GetArrayViewFromImage(case.ct), sitk.GetArrayViewFromImage(case.labels), case.grid.spacing_zyx_mm,
            case_centre_zyx(case), out_dir / f"{name}_preview.png",
            title=f"{name} (seed {case.seed}): slices through the left L5/S1 foramen; + = triangle vertices",
            marks_zyx=case.grid.world_to_index_zyx(marks))
    return paths


def make_phantom(
    out_dir: str | os.PathLike,
    *,
    n: int,
    seed: int,
    shape_zyx: Sequence[int] | None = None,
    spacing_zyx_mm: Sequence[float] | None = None,
    randomise_appearance: bool = False,
    appearance: str | None = None,
    preview: bool = False,
    degeneration: bool | None = None,
    progress: Callable[[str, float, str], None] | None = None,
    anatomy: str = "mesh",
    field: str = "lumbosacral",
) -> list[Path]:
    """Generate ``n`` cases into ``out_dir`` (created if missing) with a ``manifest.json``.

    Case ``i`` uses :func:`case_seed` (``seed``, ``i``), so cases are independent and any one can
    be regenerated alone. The manifest lists ``image`` (CT) and ``label`` (labels) per case plus
    ``structures``, ``truth``, ``seed`` (and ``preview``), readable by
    :func:`spinect.manifest.read_manifest`.

    Args:
        out_dir: output folder. n: number of cases (>= 1). seed: run seed.
        shape_zyx: grid (default :data:`DEFAULT_SHAPE_ZYX`). spacing_zyx_mm: default 1 mm.
        randomise_appearance: legacy switch for ``appearance="random"``.
        appearance: ``ct`` (default), ``v1`` or ``random`` (see :func:`generate_case`).
        preview: also write PNG previews.
        degeneration: True/False/None (random, 30 %).
        progress: ``progress(stage, fraction, message)`` after each case.
        anatomy: ``mesh`` (default: real bone shapes) or ``primitive`` (see :func:`generate_case`).
        field: ``lumbosacral`` (default), ``thoracolumbar`` or ``chest`` (with a thorax; see
            :func:`generate_case`).

    Returns:
        Paths written: per case CT, labels, structures, truth (and preview), then the manifest.

    Raises:
        OutputError: ``out_dir`` cannot be created or written. SpinectError: bad n, shape, spacing
            anatomy or field.
    """
    from spinect.errors import SpinectError
    from spinect.phantom.meshes import check_anatomy
    from spinect.phantom.thorax import check_field

    check_anatomy(anatomy)
    check_field(field)

    if int(n) < 1:
        raise SpinectError(f"number of cases must be >= 1, got {n}")
    shape_zyx, spacing_zyx_mm = check_grid(shape_zyx or DEFAULT_SHAPE_ZYX, spacing_zyx_mm or (1.0, 1.0, 1.0))
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {out}: {exc.strerror}; choose a writable folder") from exc
    written: list[Path] = []
    cases: list[DatasetCase] = []
    for i in range(int(n)):
        name = f"case_{i:03d}"
        if progress:
            progress("phantom", i / n, f"{name}: generating")
        case = generate_case(case_seed(seed, i), shape_zyx=shape_zyx, spacing_zyx_mm=spacing_zyx_mm,
                             randomise_appearance=randomise_appearance, appearance=appearance, degeneration=degeneration,
                             anatomy=anatomy, field=field)
        paths = write_case(case, out, name, preview=preview)
        written += list(paths.values())
        extra = {"structures": paths["structures"].name, "truth": paths["truth"].name, "seed": case.seed}
        if "preview" in paths:
            extra["preview"] = paths["preview"].name
        cases.append(DatasetCase(name, paths["ct"], paths["labels"], source="phantom", extra=extra))
    written.append(write_manifest(out, cases))
    if progress:
        progress("done", 1.0, f"{n} cases in {out}")
    return written
