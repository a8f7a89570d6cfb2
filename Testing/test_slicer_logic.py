"""The Slicer module's logic without Slicer's GUI.

Process runner and options are plain Python. The MRML part runs on Slicer's real MRML and
segmentation classes from the ``slicer-core`` wheel (no Qt, no ``slicer.app``); those tests are
skipped if the wheel is missing. Truth: label maps made here, the backend's own output
(``spinect.api.segment``) and Slicer's own terminology parser.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import io
import os
import shutil
import signal
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

MODULE_DIR = Path(__file__).resolve().parents[1] / "SpineCTSegmentation"
sys.path.insert(0, str(MODULE_DIR))  # SpineCTSegmentationLib, as Slicer puts the module folder on sys.path

from SpineCTSegmentationLib import dependencies  # noqa: E402
from SpineCTSegmentationLib.options import Device, ExistingSegments  # noqa: E402
from SpineCTSegmentationLib.process import (  # noqa: E402
    BackendProcess,
    backend_environment,
    build_segment_command,
    parse_progress_line,
)
from SpineCTSegmentationLib.terminology import SEGMENTS, terminology_entry  # noqa: E402

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


# --------------------------------------------------------------------------- process runner


def test_progress_lines_written_by_the_backend_parse_back():
    from spinect.commands.progress import progress_lines_callback

    stream = io.StringIO()
    callback = progress_lines_callback(stream)
    sent = [("read", 0.0, "reading ct.nrrd"), ("infer", 0.5, "window 3/6"), ("done", 1.0, "finished")]
    for stage, fraction, message in sent:
        callback(stage, fraction, message)
    parsed = [parse_progress_line(line) for line in stream.getvalue().splitlines()]
    assert [(p.stage, p.fraction, p.message) for p in parsed] == sent


def test_progress_parser_ignores_other_lines_and_clips_fraction():
    assert parse_progress_line("wrote labels.nrrd (bone 12 voxels)") is None
    assert parse_progress_line("SPINECT_PROGRESS {not json") is None
    assert parse_progress_line('SPINECT_PROGRESS {"stage": "infer", "fraction": 1.7}').fraction == 1.0
    assert parse_progress_line('  SPINECT_PROGRESS {"stage": "read", "fraction": -2}\n').fraction == 0.0


@pytest.mark.parametrize("device", list(Device))
def test_segment_command_is_accepted_by_the_backend_parser(tmp_path, device):
    from spinect.cli import build_parser

    model = tmp_path / "user model.pt"
    command = build_segment_command(
        "PythonSlicer", tmp_path / "in.nrrd", tmp_path / "out.nrrd", model_path=model, device=device.value, smoothing_mm=2.5
    )
    assert command[:4] == ["PythonSlicer", "-m", "spinect", "segment"]
    args = build_parser().parse_args(command[3:])
    assert (args.input, args.output) == (str(tmp_path / "in.nrrd"), str(tmp_path / "out.nrrd"))
    assert (args.model, args.device, args.smoothing_mm, args.progress_lines) == (str(model), device.value, 2.5, True)
    default = build_parser().parse_args(build_segment_command("py", "a.nrrd", "b.nrrd")[3:])
    assert default.model is None and default.smoothing_mm is None


def test_backend_environment_hides_gpus_only_when_cpu_is_forced(tmp_path):
    base = {"PYTHONPATH": os.pathsep.join(["/opt/a", "/opt/b"]), "HOME": "/home/x"}
    env = backend_environment(base, backend_dir=tmp_path, device="cpu")
    assert env["PYTHONPATH"].split(os.pathsep) == [str(tmp_path), "/opt/a", "/opt/b"]
    assert env["CUDA_VISIBLE_DEVICES"] == "-1" and env["HOME"] == "/home/x"
    assert "CUDA_VISIBLE_DEVICES" not in backend_environment({}, backend_dir=tmp_path, device="auto")
    assert base == {"PYTHONPATH": os.pathsep.join(["/opt/a", "/opt/b"]), "HOME": "/home/x"}  # not modified


def test_backend_process_reports_progress_output_and_error(tmp_path):
    script = textwrap.dedent(
        """
        import sys
        print('SPINECT_PROGRESS {"stage": "read", "fraction": 0.1, "message": "reading"}', flush=True)
        print("some log line", file=sys.stderr, flush=True)
        print('SPINECT_PROGRESS {"stage": "infer", "fraction": 0.6, "message": "window 3/5"}', flush=True)
        print("spinect segment: error: model file x.pt is corrupt; retrain it", file=sys.stderr, flush=True)
        sys.exit(5)
        """
    )
    proc = BackendProcess([sys.executable, "-c", script])
    assert not proc.running and proc.returncode is None
    proc.start()
    events = proc.wait(timeout_s=30)
    assert [e.progress.fraction for e in events if e.progress] == [0.1, 0.6]
    assert "some log line" in [e.line for e in events]
    assert proc.returncode == 5 and not proc.running and not proc.cancelled
    assert proc.error_line == "spinect segment: error: model file x.pt is corrupt; retrain it"


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state  # a zombie has exited


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to check the grandchild")
def test_cancel_kills_the_whole_process_tree(tmp_path):
    # The child starts a grandchild, as the PythonSlicer launcher starts the real Python.
    pid_file = tmp_path / "grandchild.pid"
    script = textwrap.dedent(
        f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        print("started", flush=True)
        child.wait()
        """
    )
    proc = BackendProcess([sys.executable, "-c", script])
    proc.start()
    deadline = time.monotonic() + 30
    while not (pid_file.is_file() and pid_file.read_text(encoding="utf-8")) and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = int(pid_file.read_text(encoding="utf-8"))
    assert _pid_alive(grandchild)
    proc.cancel(grace_s=2.0)
    proc.wait(timeout_s=10)
    deadline = time.monotonic() + 5
    while _pid_alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _pid_alive(grandchild)
    assert proc.cancelled and proc.returncode in (-signal.SIGTERM, -signal.SIGKILL)


# --------------------------------------------------------------------------- dependencies


def test_requirements_check_uses_installed_metadata(tmp_path):
    numpy_version = importlib.metadata.version("numpy")
    assert dependencies.find_missing(["numpy", f"numpy=={numpy_version}"]) == []
    assert dependencies.find_missing(["numpy<1.0", "no-such-package-spinect-test"]) == ["numpy<1.0", "no-such-package-spinect-test"]
    listed = dependencies.read_requirements()
    assert listed and not any(r.lower().startswith(("numpy", "simpleitk", "vtk", "torch")) for r in listed)
    constraints = dependencies.protected_constraints(tmp_path)
    assert f"numpy=={numpy_version}" in constraints.read_text(encoding="utf-8").splitlines()
    assert f"SimpleITK=={importlib.metadata.version('SimpleITK')}" in constraints.read_text(encoding="utf-8").splitlines()


# --------------------------------------------------------------------------- MRML (slicer-core)


@pytest.fixture(scope="module")
def slicer():
    """Slicer's MRML classes from the ``slicer-core`` wheel, with the surface converter registered.

    In Slicer the Segmentations module registers the conversion rules at startup.
    """
    slicer = pytest.importorskip("slicer", reason="pip install slicer-core (Slicer's MRML without Qt)")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("'slicer' is not the slicer-core package")
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    names = {rule.GetName() for rule in factory.GetConverterRules()}
    for rule in (slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule, slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule):
        if rule().GetName() not in names:
            factory.RegisterConverterRule(rule())
    return slicer


@pytest.fixture
def scene(slicer):
    return slicer.vtkMRMLScene()


def volume_node_from_image(slicer, scene, image: sitk.Image, name: str, node_class="vtkMRMLScalarVolumeNode"):
    """A volume node holding ``image``'s voxels with its geometry (LPS -> RAS)."""
    import vtk

    node = scene.AddNewNodeByClass(node_class, name)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = _LPS_TO_RAS @ direction @ np.diag(image.GetSpacing())
    ijk_to_ras[:3, 3] = _LPS_TO_RAS @ np.array(image.GetOrigin())
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, ijk_to_ras[r, c])
    node.SetIJKToRASMatrix(matrix)
    slicer.util.updateVolumeFromArray(node, sitk.GetArrayFromImage(image))
    return node


def _oblique_image(array: np.ndarray) -> sitk.Image:
    """``array`` (z, y, x) on an anisotropic, rotated, offset grid."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.9, 2.0))
    image.SetOrigin((-30.0, 12.5, 100.0))
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    image.SetDirection(tuple(rotation.ravel()))
    return image


def _block_labels(shape=(12, 20, 24)) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    labels[2:9, 4:14, 5:15] = 1  # "vertebral body"
    labels[4:7, 6:9, 16:21] = 2  # "nerve root"
    return labels


@pytest.fixture
def ct_and_labels(slicer, scene):
    labels = _block_labels()
    hu = np.where(labels == 1, 700, np.where(labels == 2, 30, -50)).astype(np.int16)
    ct = volume_node_from_image(slicer, scene, _oblique_image(hu), "ct")
    labelmap = volume_node_from_image(slicer, scene, _oblique_image(labels), "labels", "vtkMRMLLabelMapVolumeNode")
    return ct, labelmap, labels


def _segment_ids(node) -> list[str]:
    segmentation = node.GetSegmentation()
    return [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]


def test_terminology_entries_are_read_by_slicers_terminology_logic(slicer):
    logic = slicer.vtkSlicerTerminologiesModuleLogic
    for spec in SEGMENTS:
        entry = slicer.vtkSlicerTerminologyEntry()
        assert logic.DeserializeTerminologyEntry(terminology_entry(spec), entry)
        category, type_ = entry.GetCategoryObject(), entry.GetTypeObject()
        assert (category.GetCodingSchemeDesignator(), category.GetCodeValue(), category.GetCodeMeaning()) == spec.category
        assert (type_.GetCodingSchemeDesignator(), type_.GetCodeValue(), type_.GetCodeMeaning()) == spec.type
        assert logic.SerializeTerminologyEntry(entry) == terminology_entry(spec)


def test_labelmap_becomes_fixed_segments_voxel_for_voxel(slicer, ct_and_labels):
    from SpineCTSegmentationLib.mrml_io import import_labelmap_segments, segment_label_array

    ct, labelmap, labels = ct_and_labels
    node = import_labelmap_segments(labelmap, None, reference_volume=ct)
    assert _segment_ids(node) == ["bone", "nerve"]
    np.testing.assert_array_equal(segment_label_array(node, ct), labels)
    for spec in SEGMENTS:
        segment = node.GetSegmentation().GetSegment(spec.segment_id)
        assert segment.GetName() == spec.segment_id
        assert segment.GetTerminology() == terminology_entry(spec)
        assert segment.GetColor() == pytest.approx(spec.color_rgb)
    surface_name = slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()
    assert node.GetSegmentation().ContainsRepresentation(surface_name)
    assert node.GetSegmentation().GetSegment("bone").GetRepresentation(surface_name).GetNumberOfPoints() > 0


def _add_user_segment(slicer, node, reference, name: str, mask: np.ndarray) -> str:
    """A user's segment drawn on ``reference``'s grid (as a Segment Editor stroke would be)."""
    from SpineCTSegmentationLib.mrml_io import _binary_image

    scene = reference.GetScene()
    tmp = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    import vtk

    matrix = vtk.vtkMatrix4x4()
    reference.GetIJKToRASMatrix(matrix)
    tmp.SetIJKToRASMatrix(matrix)
    slicer.util.updateVolumeFromArray(tmp, mask.astype(np.uint8))
    image = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(tmp)
    scene.RemoveNode(tmp)
    segment = slicer.vtkSegment()
    segment.SetName(name)
    segment.AddRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName(), _binary_image(image, 1))
    node.GetSegmentation().AddSegment(segment, name)
    return name


def _user_mask(shape) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[0:6, 0:10, 0:10] = True  # overlaps the bone block
    return mask


def test_users_segments_survive_and_bone_nerve_need_an_explicit_choice(slicer, ct_and_labels):
    from SpineCTSegmentationLib.mrml_io import (
        ExistingSegmentsError,
        import_labelmap_segments,
        new_segmentation_node,
        segment_label_array,
    )
    from SpineCTSegmentationLib.terminology import BONE

    ct, labelmap, labels = ct_and_labels
    mask = _user_mask(labels.shape)
    node = new_segmentation_node(ct, name="annotations")
    _add_user_segment(slicer, node, ct, "L4_landmark", mask)

    # No bone/nerve yet: nothing to overwrite, the user's segment stays voxel for voxel.
    assert import_labelmap_segments(labelmap, node, reference_volume=ct) is node
    assert _segment_ids(node) == ["L4_landmark", "bone", "nerve"]
    np.testing.assert_array_equal(segment_label_array(node, ct, [_spec("L4_landmark")]), mask)

    # The user corrects "bone"; segmenting again must not silently undo that.
    corrected = labels == 1
    corrected[2:4] = False
    node.GetSegmentation().RemoveSegment("bone")
    _add_user_segment(slicer, node, ct, "bone", corrected)
    before = segment_label_array(node, ct, [BONE])
    with pytest.raises(ExistingSegmentsError, match="bone"):
        import_labelmap_segments(labelmap, node, reference_volume=ct, existing=ExistingSegments.ASK)
    np.testing.assert_array_equal(segment_label_array(node, ct, [BONE]), before)

    new_node = import_labelmap_segments(labelmap, node, reference_volume=ct, existing=ExistingSegments.NEW_NODE)
    assert new_node is not node and _segment_ids(new_node) == ["bone", "nerve"]
    np.testing.assert_array_equal(segment_label_array(node, ct, [BONE]), before)

    assert import_labelmap_segments(labelmap, node, reference_volume=ct, existing=ExistingSegments.REPLACE) is node
    assert sorted(_segment_ids(node)) == ["L4_landmark", "bone", "nerve"]
    np.testing.assert_array_equal(segment_label_array(node, ct), labels)
    np.testing.assert_array_equal(segment_label_array(node, ct, [_spec("L4_landmark")]), mask)


def _spec(segment_id: str):
    from SpineCTSegmentationLib.terminology import SegmentSpec

    return SegmentSpec(segment_id, 1, (1.0, 0.0, 0.0), ("", "", ""), ("", "", ""))


def test_export_for_training_round_trips_through_spinect_readers(slicer, ct_and_labels, tmp_path):
    from spinect.io import read_ct, read_labelmap
    from spinect.manifest import read_manifest
    from spinect.train.dataset import load_case
    from SpineCTSegmentationLib.mrml_io import import_labelmap_segments, segment_label_array
    from SpineCTSegmentationLib.mrml_io import export_for_training

    ct, labelmap, labels = ct_and_labels
    node = import_labelmap_segments(labelmap, None, reference_volume=ct)
    manifest = export_for_training(ct, node, tmp_path / "dataset", "patient_001")
    export_for_training(ct, node, tmp_path / "dataset", "patient_002")
    (case, second) = read_manifest(tmp_path / "dataset")
    assert manifest == tmp_path / "dataset" / "manifest.json"
    assert (case.id, case.source, second.id) == ("patient_001", "slicer-export", "patient_002")
    assert sorted(p.name for p in (tmp_path / "dataset").iterdir()) == [
        "manifest.json", "patient_001_ct.nii.gz", "patient_001_labels.nii.gz", "patient_002_ct.nii.gz", "patient_002_labels.nii.gz"
    ]

    image, exported = read_ct(case.image), read_labelmap(case.label)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(exported), labels)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), slicer.util.arrayFromVolume(ct))
    expected = _oblique_image(labels)
    for got in (image, exported):
        assert got.GetSpacing() == pytest.approx(expected.GetSpacing())
        assert got.GetOrigin() == pytest.approx(expected.GetOrigin(), abs=1e-4)
        assert got.GetDirection() == pytest.approx(expected.GetDirection(), abs=1e-6)
    loaded = load_case(case)  # what `spinect train` does with it
    assert set(np.unique(loaded.labels)) == {0, 1, 2}

    # Back into Slicer: the same segments.
    back = volume_node_from_image(slicer, ct.GetScene(), exported, "back", "vtkMRMLLabelMapVolumeNode")
    np.testing.assert_array_equal(segment_label_array(import_labelmap_segments(back, None, reference_volume=ct), ct), labels)


def test_export_for_training_refuses_bad_ids_and_missing_segments(slicer, ct_and_labels, tmp_path):
    from SpineCTSegmentationLib.mrml_io import export_for_training, new_segmentation_node

    ct, _, _ = ct_and_labels
    empty = new_segmentation_node(ct)
    with pytest.raises(ValueError, match="case ID"):
        export_for_training(ct, empty, tmp_path, "../escape")
    with pytest.raises(ValueError, match="no 'bone' segment"):
        export_for_training(ct, empty, tmp_path, "case_1")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- job failures (fake backend)

_FAKE_BACKEND = """
import json, os, sys, time
mode = os.environ["FAKE_SPINECT"]
print("SPINECT_PROGRESS " + json.dumps({"stage": "read", "fraction": 0.05, "message": "reading"}), flush=True)
if mode == "fail":
    print("spinect segment: error: input is not a CT (all values >= 0); export it in HU", file=sys.stderr, flush=True)
    sys.exit(3)
time.sleep(120)
"""


@pytest.fixture
def fake_backend_dir(tmp_path):
    """A folder with a ``spinect`` package whose ``__main__`` fails or hangs (no torch needed)."""
    package = tmp_path / "fake" / "spinect"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(_FAKE_BACKEND)
    return package.parent


@pytest.mark.parametrize("mode", ["fail", "cancel"])
def test_failed_or_cancelled_job_changes_nothing_and_removes_its_files(slicer, ct_and_labels, fake_backend_dir, tmp_path, mode):
    from SpineCTSegmentationLib.mrml_io import new_segmentation_node
    from SpineCTSegmentationLib.pipeline import BackendFailed, SegmentationJob

    ct, _, _ = ct_and_labels
    node = new_segmentation_node(ct, name="annotations")
    env = dict(os.environ, FAKE_SPINECT=mode)
    job = SegmentationJob(ct, python_executable=sys.executable, base_env=env, backend_dir=fake_backend_dir, work_dir=tmp_path)
    job.start()
    assert job.input_path.is_file()  # the volume was exported for the backend
    if mode == "cancel":
        deadline = time.monotonic() + 30
        while job.progress.fraction == 0.0 and time.monotonic() < deadline:
            job.poll()
            time.sleep(0.05)
        assert job.progress.stage == "read" and job.running
        job.cancel()
    job.wait(timeout_s=30)
    expected = "cancelled" if mode == "cancel" else "spinect segment: error: input is not a CT"
    with pytest.raises(BackendFailed, match=expected):
        job.finish(node)
    assert node.GetSegmentation().GetNumberOfSegments() == 0
    job.cleanup()
    assert not job.temp_dir.exists()


# --------------------------------------------------------------------------- end to end


def _phantom_ct() -> sitk.Image:
    try:
        from spinect.phantom import generate_case
    except ImportError:  # phantom generator not there yet: the suite's synthetic CT
        from conftest import make_synthetic_ct

        return make_synthetic_ct(size_xyz=(48, 40, 20), spacing_xyz=(0.8, 0.8, 2.0))
    return generate_case(0, shape_zyx=(20, 48, 48), spacing_zyx_mm=(2.0, 1.0, 1.0)).ct


@pytest.fixture(scope="module")
def backend_run(slicer, tmp_path_factory):
    """One real backend run: phantom volume node -> `python -m spinect segment` -> segments."""
    from conftest import make_tiny_model
    from SpineCTSegmentationLib.mrml_io import new_segmentation_node
    from SpineCTSegmentationLib.pipeline import SegmentationJob

    folder = tmp_path_factory.mktemp("slicer_backend")
    model = make_tiny_model(folder / "tiny.pt")
    image = _phantom_ct()
    scene = slicer.vtkMRMLScene()
    ct = volume_node_from_image(slicer, scene, image, "phantom")
    node = new_segmentation_node(ct, name="annotations")
    user_mask = np.zeros(sitk.GetArrayViewFromImage(image).shape, bool)
    user_mask[2:6, 5:15, 5:15] = True
    _add_user_segment(slicer, node, ct, "my_segment", user_mask)

    env = dict(os.environ, PYTHONPROFILEIMPORTTIME="1")  # lists every module the child imports
    job = SegmentationJob(
        ct, python_executable=sys.executable, base_env=env, device=Device.CPU,
        model_path=model, smoothing_mm=1.5, work_dir=folder,
    )
    job.start()
    events = []
    code = job.wait(timeout_s=120, on_event=events.append)
    assert code == 0, "\n".join(e.line for e in events if not e.line.startswith("import time:"))
    backend_input = Path(shutil.copy(job.input_path, folder / "backend_input.nrrd"))  # what the backend read ...
    backend_labels = sitk.ReadImage(str(job.output_path))  # ... and wrote
    result = job.finish(node, existing=ExistingSegments.ASK)
    temp_dir = job.temp_dir
    job.cleanup()
    return dict(scene=scene, backend_input=backend_input, backend_labels=backend_labels, ct=ct, image=image, model=model, node=result, events=events, user_mask=user_mask, temp_dir=temp_dir,
                command=job.process.command)


def test_backend_result_matches_the_backend_voxel_for_voxel(slicer, backend_run):
    from spinect.api import segment
    from SpineCTSegmentationLib.mrml_io import segment_label_array

    node, ct = backend_run["node"], backend_run["ct"]
    assert _segment_ids(node) == ["my_segment", "bone", "nerve"]
    written = sitk.GetArrayFromImage(backend_run["backend_labels"])
    np.testing.assert_array_equal(segment_label_array(node, ct), written)
    np.testing.assert_array_equal(segment_label_array(node, ct, [_spec("my_segment")]), backend_run["user_mask"])
    for spec in SEGMENTS:
        assert node.GetSegmentation().GetSegment(spec.segment_id).GetTerminology() == terminology_entry(spec)
    assert not backend_run["temp_dir"].exists()

    # The file the backend read is the volume node (voxels exact; geometry to rounding), and
    # the CLI in the subprocess gives what the Python API gives on that file.
    read, image = sitk.ReadImage(str(backend_run["backend_input"])), backend_run["image"]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read), sitk.GetArrayFromImage(image))
    assert read.GetOrigin() == pytest.approx(image.GetOrigin(), abs=1e-9)
    assert read.GetSpacing() == pytest.approx(image.GetSpacing(), abs=1e-9)
    assert read.GetDirection() == pytest.approx(image.GetDirection(), abs=1e-9)
    expected = segment(backend_run["backend_input"], model=backend_run["model"], device="cpu", smoothing_mm=1.5).labels
    np.testing.assert_array_equal(written, sitk.GetArrayFromImage(expected))


def test_backend_progress_reaches_done_in_order(backend_run):
    progress = [e.progress for e in backend_run["events"] if e.progress]
    assert progress[-1].stage == "done" and progress[-1].fraction == 1.0
    fractions = [p.fraction for p in progress]
    assert fractions == sorted(fractions)
    assert "--device" in backend_run["command"] and "cpu" in backend_run["command"]


def test_requirements_txt_covers_what_the_backend_imports(backend_run):
    """Third-party packages that spinect imported in the child are Slicer's, PyTorch's or listed.

    The child ran with ``PYTHONPROFILEIMPORTTIME``: one line per import, nested imports indented
    under the module that made them. A package counts when a ``spinect`` module imported it,
    directly at import time or lazily at run time (a top-level entry that spinect's source imports).
    """
    entries = _import_tree([e.line for e in backend_run["events"]])
    names = {name for _, name in entries}
    assert "spinect.api" in names and "torch" in names
    spinect_imports = _source_imports(sorted(n for n in names if n.split(".")[0] == "spinect"))
    needed = set()
    for i, (depth, name) in enumerate(entries):
        parent = next((n for d, n in entries[i + 1:] if d == depth - 1), None) if depth else None
        top = name.split(".")[0]
        if (parent or "").split(".")[0] == "spinect" or (depth == 0 and top in spinect_imports):
            needed.add(top)
    needed -= set(sys.stdlib_module_names) | {"spinect", "__future__"}
    owners = importlib.metadata.packages_distributions()
    allowed = {"numpy", "scipy", "simpleitk", "torch"} | {_requirement_name(r) for r in dependencies.read_requirements()}
    unlisted = sorted(n for n in needed if not {d.lower() for d in owners.get(n, [n])} & allowed)
    assert unlisted == [], f"add to SpineCTSegmentation/Resources/requirements.txt: {unlisted}"


def _import_tree(lines: list[str]) -> list[tuple[int, str]]:
    """(depth, module) of ``-X importtime`` lines, in their printed (post-)order."""
    entries = []
    for line in lines:
        if line.startswith("import time:") and line.count("|") == 2 and "imported package" not in line:
            column = line.rsplit("|", 1)[1]
            name = column.strip()
            entries.append(((len(column) - len(column.lstrip()) - 1) // 2, name))
    return entries


def _source_imports(modules: list[str]) -> set[str]:
    """Top-level names imported anywhere in the source of these spinect modules."""
    import ast

    found = set()
    for module in modules:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            continue
        for node in ast.walk(ast.parse(Path(spec.origin).read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


def _requirement_name(requirement: str) -> str:
    import re

    return re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement).group(0).lower()


def test_segment_command_passes_island_and_whole_volume_choices_to_the_backend():
    from spinect.cli import build_parser

    default = build_parser().parse_args(build_segment_command("py", "a.nrrd", "b.nrrd")[3:])
    assert default.keep_islands is False and default.whole_volume is False
    chosen = build_parser().parse_args(
        build_segment_command("py", "a.nrrd", "b.nrrd", keep_islands=True, whole_volume=True)[3:])
    assert chosen.keep_islands is True and chosen.whole_volume is True


def test_segment_command_passes_the_mirror_choice_to_the_backend():
    from spinect.cli import build_parser

    assert build_parser().parse_args(build_segment_command("py", "a.nrrd", "b.nrrd")[3:]).mirror == "auto"
    assert build_parser().parse_args(build_segment_command("py", "a.nrrd", "b.nrrd", mirror="lr")[3:]).mirror == "lr"
    with pytest.raises(Exception, match="mirror"):
        build_segment_command("py", "a.nrrd", "b.nrrd", mirror="sideways")


def test_segment_command_passes_counting_from_the_last_rib_to_the_backend():
    from spinect.cli import build_parser

    plain = build_parser().parse_args(build_segment_command("py", "a.nrrd", "b.nrrd", levels=True)[3:])
    assert plain.levels is True and plain.levels_by == "auto"
    rib = build_parser().parse_args(
        build_segment_command("py", "a.nrrd", "b.nrrd", levels=True, levels_by="counting")[3:])
    assert rib.levels is True and rib.levels_by == "counting"
    with pytest.raises(Exception, match="levels-by is used only with --levels"):
        build_segment_command("py", "a.nrrd", "b.nrrd", levels_by="counting")


# --- vertebral levels (``--levels``) --------------------------------------------------------


def _tiny_level_model(path: Path) -> Path:
    """A test-only level model made from the tiny 3-class model (every bone voxel starts as L1)."""
    import torch

    from conftest import make_tiny_model
    from spinect.model_file import load_model, save_model
    from spinect.nets import build_network
    from spinect.plan import LEVEL_CLASS_GROUPS, LEVEL_CLASS_NAMES
    from spinect.train.trainer import expand_head_to_levels

    three, plan = load_model(make_tiny_model(path.with_name("three.pt")), device="cpu", allow_untrained=True)
    arch = dict(plan.architecture, num_classes=len(LEVEL_CLASS_NAMES))
    network = build_network(**arch)
    network.load_state_dict(expand_head_to_levels(three.state_dict()))
    with torch.no_grad():  # make bone common enough to be seen in a small phantom
        network.head.bias[1:9] += 2.0
    save_model(path, network, plan.replace(architecture=arch, class_names=LEVEL_CLASS_NAMES,
                                           class_groups=dict(LEVEL_CLASS_GROUPS)))
    return path


def test_level_segments_terminology_matches_the_backend_and_slicer_reads_it(slicer):
    from spinect.io.labels import SEGMENT_STYLES
    from SpineCTSegmentationLib.terminology import LEVEL_SEGMENTS

    logic = slicer.vtkSlicerTerminologiesModuleLogic
    assert [s.segment_id for s in LEVEL_SEGMENTS] == ["L1", "L2", "L3", "L4", "L5", "sacrum"]
    for value, spec in enumerate(LEVEL_SEGMENTS, start=1):
        assert spec.label_value == value
        style = SEGMENT_STYLES[spec.segment_id]
        assert list(spec.type) == style.terminology["type"] and list(spec.category) == style.terminology["category"]
        assert spec.color_rgb == pytest.approx(style.color_rgb)
        entry = slicer.vtkSlicerTerminologyEntry()
        assert logic.DeserializeTerminologyEntry(terminology_entry(spec), entry)
        assert entry.GetTypeObject().GetCodeValue() == spec.type[1]


def test_levels_run_adds_level_segments_and_never_replaces_a_users_level_segment(slicer, tmp_path):
    from SpineCTSegmentationLib.mrml_io import ExistingSegmentsError, new_segmentation_node, segment_label_array
    from SpineCTSegmentationLib.pipeline import SegmentationJob
    from SpineCTSegmentationLib.terminology import LEVEL_SEGMENTS

    model = _tiny_level_model(tmp_path / "level.pt")
    image = _phantom_ct()
    scene = slicer.vtkMRMLScene()
    ct = volume_node_from_image(slicer, scene, image, "phantom")
    node = new_segmentation_node(ct, name="annotations")
    user_mask = np.zeros(sitk.GetArrayViewFromImage(image).shape, bool)
    user_mask[2:6, 5:15, 5:15] = True
    _add_user_segment(slicer, node, ct, "L3", user_mask)  # the user's own L3, e.g. from TotalSegmentator

    job = SegmentationJob(ct, python_executable=sys.executable, base_env=dict(os.environ), device=Device.CPU,
                          model_path=model, work_dir=tmp_path, levels=True)
    assert "--levels" in job.process.command
    job.start()
    try:
        assert job.wait(timeout_s=120) == 0
        levels_written = sitk.GetArrayFromImage(sitk.ReadImage(str(job.levels_path)))
        labels_written = sitk.GetArrayFromImage(sitk.ReadImage(str(job.output_path)))
        with pytest.raises(ExistingSegmentsError, match="L3"):
            job.finish(node, existing=ExistingSegments.ASK)
        assert _segment_ids(node) == ["L3"]  # nothing was written
        result = job.finish(node, existing=ExistingSegments.NEW_NODE)
    finally:
        job.cleanup()
    assert result is not node and _segment_ids(node) == ["L3"]
    np.testing.assert_array_equal(segment_label_array(node, ct, [_spec("L3")]), user_mask)
    assert _segment_ids(result) == ["bone", "nerve", *(s.segment_id for s in LEVEL_SEGMENTS)]
    np.testing.assert_array_equal(segment_label_array(result, ct), labels_written)
    np.testing.assert_array_equal(segment_label_array(result, ct, list(LEVEL_SEGMENTS)), levels_written)
    assert (levels_written == 1).any() and np.all(labels_written[levels_written > 0] == 1)
    for spec in LEVEL_SEGMENTS:
        assert result.GetSegmentation().GetSegment(spec.segment_id).GetTerminology() == terminology_entry(spec)


def test_write_report_gives_every_segments_volume_and_leaves_no_temp_files(slicer, ct_and_labels, tmp_path):
    from SpineCTSegmentationLib.mrml_io import import_labelmap_segments
    from SpineCTSegmentationLib.report import ReportFailed, write_case_report

    ct, labelmap, labels = ct_and_labels
    node = import_labelmap_segments(labelmap, None, reference_volume=ct, closed_surfaces=False)
    page = write_case_report(node, ct, tmp_path / "case.html", python_executable=sys.executable,
                             base_env=dict(os.environ), work_dir=tmp_path, case_id="case 7")
    html = page.read_text(encoding="utf-8")
    voxel_mm3 = 0.8 * 0.9 * 2.0  # the CT's grid (_oblique_image)
    for value in (1, 2):
        voxels = int(np.count_nonzero(labels == value))
        assert f"{voxels:,}" in html and f"{voxels * voxel_mm3 / 1000:.2f}" in html
    assert "case 7" in html and "synthetic" in html.lower()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.html"]  # the private folder is gone
    with pytest.raises(ValueError, match=r"\.html"):
        write_case_report(node, ct, tmp_path / "case.pdf", python_executable=sys.executable, base_env=dict(os.environ))
    with pytest.raises(ReportFailed, match="triangle|measurement|JSON|json"):
        write_case_report(node, ct, tmp_path / "bad.html", python_executable=sys.executable, base_env=dict(os.environ),
                          measurements=[{"not": "a measurement"}], work_dir=tmp_path)
    assert not (tmp_path / "bad.html").exists()
