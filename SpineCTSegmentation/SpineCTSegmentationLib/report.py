"""The module's "Write report" action: segments + measurements -> ``spinect report`` -> one HTML page.

The segmentation node (every segment: bone, nerve, levels, the user's own) is written as a
``.seg.nrrd`` to a private temporary folder, the triangle measurements the module made are written there as the
JSON that ``spinect triangles --json`` writes, and the backend CLI renders the page (and a PDF
when a headless Chromium is installed). The page is written atomically by the backend; the
temporary folder is removed whatever the outcome.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

from SpineCTSegmentationLib.process import backend_environment

__all__ = ["build_report_command", "write_case_report", "ReportFailed"]

#: Folder holding the ``spinect`` package (the module folder).
BACKEND_DIR = Path(__file__).resolve().parents[1]


class ReportFailed(RuntimeError):
    """The backend could not write the report (message: its one-line error)."""


def build_report_command(
    python_executable: str,
    output_html: str | os.PathLike,
    *,
    seg_path: str | os.PathLike,
    triangle_jsons: Sequence[str | os.PathLike] = (),
    case_id: str | None = None,
    pdf_path: str | os.PathLike | None = None,
) -> list[str]:
    """Argument list of ``python -m spinect report``."""
    command = [str(python_executable), "-m", "spinect", "report", str(output_html), "--seg", str(seg_path)]
    if triangle_jsons:
        command += ["--triangles", *(str(p) for p in triangle_jsons)]
    if case_id:
        command += ["--case-id", str(case_id)]
    if pdf_path is not None:
        command += ["--pdf", str(pdf_path)]
    return command


def write_case_report(
    segmentation_node,
    reference_volume,
    output_html: str | os.PathLike,
    *,
    python_executable: str,
    base_env: Mapping[str, str],
    measurements: Sequence[dict] = (),
    case_id: str | None = None,
    pdf_path: str | os.PathLike | None = None,
    work_dir: str | os.PathLike | None = None,
    backend_dir: str | os.PathLike = BACKEND_DIR,
    timeout_s: float = 300.0,
) -> Path:
    """Write the case report of ``segmentation_node`` (on ``reference_volume``'s grid).

    Args:
        segmentation_node: the segmentation (every segment's volume is reported).
        reference_volume: the CT (its name titles the page).
        output_html: the ``.html`` page to write.
        python_executable: ``PythonSlicer`` in Slicer.
        base_env: environment of the child (Slicer's startup environment).
        measurements: triangle results as the module's triangle jobs return them.
        case_id: title of the page (default: the CT's name).
        pdf_path: also print the page to this PDF (needs a headless Chromium).

    Returns:
        The page's path.

    Raises:
        ValueError: the output is not ``.html``, or the segmentation is empty.
        ReportFailed: the backend failed (its error line).
    """
    output_html = Path(output_html)
    if output_html.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"the report is an HTML page: choose a file name ending in .html, not {output_html.name}")
    temp = Path(tempfile.mkdtemp(prefix="SpineCTSegmentation-report-", dir=work_dir))
    try:
        seg_path = _write_segmentation(segmentation_node, temp / "segments.seg.nrrd")
        jsons = []
        for index, measurement in enumerate(measurements):
            path = temp / f"triangle_{index}.json"
            path.write_text(json.dumps(measurement), encoding="utf-8")
            jsons.append(path)
        command = build_report_command(python_executable, output_html, seg_path=seg_path, triangle_jsons=jsons,
                                       case_id=case_id or reference_volume.GetName(), pdf_path=pdf_path)
        env = backend_environment(base_env, backend_dir=backend_dir, device="cpu")
        done = subprocess.run(command, env=env, cwd=str(temp), capture_output=True, text=True, timeout=timeout_s)
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if "error:" in line] or done.stderr.strip().splitlines()[-1:]
            raise ReportFailed(lines[-1] if lines else f"spinect report exited with code {done.returncode}")
        return output_html
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _write_segmentation(segmentation_node, path: Path) -> Path:
    """Write the node as a ``.seg.nrrd`` with a temporary storage node (the node's own is untouched)."""
    if segmentation_node is None or segmentation_node.GetSegmentation().GetNumberOfSegments() == 0:
        raise ValueError("the segmentation has no segments; segment the CT first")
    scene = segmentation_node.GetScene()
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    try:
        storage.SetFileName(str(path))
        if not storage.WriteData(segmentation_node) or not path.is_file():
            raise OSError(f"could not write the segmentation to {path}")
    finally:
        scene.RemoveNode(storage)
    return path
