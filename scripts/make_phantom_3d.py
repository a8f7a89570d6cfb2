"""Render ``phantom_3d.png``: a segmented lumbosacral phantom as Slicer's 3D view shows it.

The phantom's labels go through the module's own import path (``import_labelmap_segments``:
fixed ``bone``/``nerve`` segments, terminology colours, closed surfaces made by Slicer's
segmentation converter from the ``slicer-core`` wheel); VTK then renders the surfaces
off-screen (EGL/OSMesa). Run from the repository root::

    python scripts/make_phantom_3d.py [--seed 0] [--labels FILE] [--out PNG]

``--labels`` renders a label map instead (e.g. a ``spinect segment`` result on the phantom CT).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "SpineCTSegmentation"))


def _labelmap_node(slicer, scene, image: sitk.Image):
    """Label map node holding ``image`` with its geometry (LPS -> RAS)."""
    import vtk

    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = lps_to_ras @ np.array(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    ijk_to_ras[:3, 3] = lps_to_ras @ np.array(image.GetOrigin())
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, ijk_to_ras[r, c])
    node.SetIJKToRASMatrix(matrix)
    slicer.util.updateVolumeFromArray(node, sitk.GetArrayFromImage(image).astype(np.uint8))
    return node


def segment_surfaces(labels: sitk.Image):
    """{segment id: (vtkPolyData in RAS mm, colour)} built by Slicer's converter."""
    import slicer

    from SpineCTSegmentationLib.mrml_io import import_labelmap_segments

    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if not any(r.GetName() == "Binary labelmap to closed surface" for r in factory.GetConverterRules()):
        factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
    scene = slicer.vtkMRMLScene()
    node = import_labelmap_segments(_labelmap_node(slicer, scene, labels), None)
    segmentation = node.GetSegmentation()
    name = slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()
    surfaces = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetSegment(segment_id)
        import vtk

        poly = vtk.vtkPolyData()
        poly.DeepCopy(segment.GetRepresentation(name))
        surfaces[segment_id] = (poly, segment.GetColor())
    return surfaces, scene


def render(surfaces, out: Path, *, size=(900, 900)) -> None:
    """Off-screen render, left-anterior-oblique view with a slight tilt, white background."""
    import vtk

    renderer = vtk.vtkRenderer()
    renderer.SetBackground(1, 1, 1)
    for poly, colour in surfaces.values():
        mapper = vtk.vtkPolyDataMapper()
        mapper.SetInputData(poly)
        mapper.ScalarVisibilityOff()
        actor = vtk.vtkActor()
        actor.SetMapper(mapper)
        actor.GetProperty().SetColor(*colour)
        actor.GetProperty().SetSpecular(0.2)
        renderer.AddActor(actor)
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(*size)
    window.AddRenderer(renderer)
    camera = renderer.GetActiveCamera()
    camera.SetFocalPoint(0, 0, 0)
    camera.SetPosition(-1.0, 1.6, 0.35)  # RAS: from the left, anterior, a little above
    camera.SetViewUp(0, 0, 1)
    renderer.ResetCamera()
    camera.Zoom(1.4)
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.Update()
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(str(out))
    writer.SetInputConnection(grab.GetOutputPort())
    writer.Write()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--labels", type=Path, default=None, help="label map to render instead of the phantom's labels")
    parser.add_argument("--out", type=Path, default=REPO / "Resources" / "Screenshots" / "phantom_3d.png")
    args = parser.parse_args(argv)
    if args.labels is not None:
        labels = sitk.ReadImage(str(args.labels))
    else:
        from spinect.phantom import generate_case

        labels = generate_case(args.seed).labels
    surfaces, _scene = segment_surfaces(labels)
    render(surfaces, args.out)
    counts = {k: v[0].GetNumberOfPoints() for k, v in surfaces.items()}
    print(f"wrote {args.out} (surface points: {counts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
