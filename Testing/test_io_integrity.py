"""No silent damage on output: a file that does not read back is never published, an existing
file is never replaced by a bad one, and --no-overwrite cannot race (reliability issue).

A full disk is simulated by a writer that leaves a truncated file without an error, which is
what SimpleITK's NIfTI writer does on ENOSPC.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from spinect.errors import OutputError
from spinect.io import write_image, write_labelmap
from spinect.io.atomic import atomic_output
from spinect.io.writing import check_gzip_stream, verify_image_file


def _labels(shape=(12, 20, 24)) -> sitk.Image:
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.integers(0, 3, shape).astype(np.uint8))
    image.SetSpacing((0.8, 0.8, 2.0))
    return image


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


@pytest.fixture
def truncating_writer(monkeypatch):
    """SimpleITK writes, then the file loses its second half, and no error is raised."""
    real = sitk.WriteImage

    def write(image, name, *args, **kwargs):
        real(image, name, *args, **kwargs)
        size = os.path.getsize(name)
        with open(name, "r+b") as stream:
            stream.truncate(size // 2)

    monkeypatch.setattr(sitk, "WriteImage", write)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_truncated_output_is_refused_and_the_existing_file_kept(tmp_path, truncating_writer, suffix):
    target = tmp_path / f"labels{suffix}"
    target.write_bytes(b"the user's good file")
    with pytest.raises(OutputError, match="does not read back"):
        write_labelmap(_labels(), target)
    assert target.read_bytes() == b"the user's good file"
    assert _leftovers(tmp_path, {target.name}) == []


def test_truncated_new_output_leaves_nothing(tmp_path, truncating_writer):
    with pytest.raises(OutputError):
        write_image(_labels(), tmp_path / "new.nii.gz")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".seg.nrrd"])
def test_good_outputs_still_write_and_read_back(tmp_path, suffix):
    target = tmp_path / f"labels{suffix}"
    write_labelmap(_labels(), target)
    assert target.is_file()
    assert _leftovers(tmp_path, {target.name}) == []
    if suffix != ".seg.nrrd":
        verify_image_file(target, _labels())  # the published file holds exactly the voxels


def test_verify_detects_zero_filled_voxels(tmp_path):
    image = _labels()
    path = tmp_path / "x.nrrd"
    zeros = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    zeros.CopyInformation(image)
    sitk.WriteImage(zeros, str(path))  # right header, zero voxels
    with pytest.raises(ValueError, match="differ"):
        verify_image_file(path, image)


def test_gzip_crc_error_is_detected(tmp_path):
    path = tmp_path / "x.nii.gz"
    sitk.WriteImage(sitk.Cast(_labels(), sitk.sitkFloat32), str(path), True)
    assert check_gzip_stream(path) > 0
    data = bytearray(path.read_bytes())
    data[-6] ^= 0xFF  # inside the CRC32 trailer
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged gzip"):
        check_gzip_stream(path)


def test_no_overwrite_publishes_with_a_link_that_cannot_replace(tmp_path):
    """Check-then-replace would lose a file created by a concurrent run between the two steps."""
    target = tmp_path / "out.txt"
    with pytest.raises(OutputError, match="already exists"):
        with atomic_output(target, overwrite=False) as tmp:
            tmp.write_text("mine")
            target.write_text("the other run's result")  # appears while we were writing
    assert target.read_text() == "the other run's result"
    assert _leftovers(tmp_path, {target.name}) == []
    fresh = tmp_path / "fresh.txt"
    with atomic_output(fresh, overwrite=False) as tmp:
        tmp.write_text("new")
    assert fresh.read_text() == "new"
    assert _leftovers(tmp_path, {target.name, fresh.name}) == []


# --- damaged inputs: never segmented as if they were whole ----------------------------------------


def _ct_file(tmp_path: Path, suffix: str) -> Path:
    from conftest import make_synthetic_ct

    path = tmp_path / f"ct{suffix}"
    sitk.WriteImage(make_synthetic_ct(), str(path), True)
    return path


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_crc(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-6] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("suffix,damage", [(".nii.gz", _truncate), (".nii", _truncate), (".nii.gz", _flip_crc)])
def test_damaged_nifti_ct_is_refused_by_segment(tmp_path, tiny_model, capsys, suffix, damage):
    from spinect.cli import main

    ct = _ct_file(tmp_path, suffix)
    damage(ct)
    out = tmp_path / "out.nii.gz"
    code = main(["segment", str(ct), str(out), "--model", str(tiny_model), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code != 0
    assert "truncated or corrupted" in err and "Traceback" not in err
    assert not out.exists() and _leftovers(tmp_path, {ct.name, tiny_model.name, tiny_model.name.replace(".pt", ".json")}) == []


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_damaged_nifti_label_map_is_refused(tmp_path, suffix):
    from spinect.errors import InputError
    from spinect.io import read_labelmap

    path = tmp_path / f"labels{suffix}"
    sitk.WriteImage(_labels(), str(path), True)
    read_labelmap(path)  # whole file: fine
    _truncate(path)
    with pytest.raises(InputError, match="truncated or corrupted"):
        read_labelmap(path)


# --- outputs may never destroy inputs -------------------------------------------------------------


@pytest.mark.parametrize("clash", ["output=input", "uncertainty=output", "review=uncertainty", "hardlink"])
def test_segment_refuses_paths_that_name_one_file(tmp_path, tiny_model, capsys, clash):
    from spinect.cli import main

    ct = _ct_file(tmp_path, ".nii.gz")
    original = ct.read_bytes()
    out, unc, review = tmp_path / "out.nii.gz", tmp_path / "unc.nii.gz", tmp_path / "review.csv"
    if clash == "output=input":
        out = ct
    elif clash == "uncertainty=output":
        unc = out
    elif clash == "review=uncertainty":
        review = tmp_path / "unc.csv"
        unc = tmp_path / "sub" / ".." / "unc.csv"
        (tmp_path / "sub").mkdir()
    else:
        alias = tmp_path / "alias.nii.gz"
        os.link(ct, alias)
        out = alias
    code = main(["segment", str(ct), str(out), "--model", str(tiny_model), "--device", "cpu", "--tta",
                 "--uncertainty", str(unc), "--review", str(review)])
    err = capsys.readouterr().err
    assert code != 0 and "same file" in err and "Traceback" not in err
    assert ct.read_bytes() == original


# --- damaged model files ----------------------------------------------------------------------------


def _flip_weight_byte(model: Path) -> None:
    """Flip one byte inside a stored tensor of the archive (the CRC in the zip directory stays)."""
    import zipfile

    with zipfile.ZipFile(model) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(model.read_bytes())
    header = info.header_offset
    name_len, extra_len = int.from_bytes(data[header + 26:header + 28], "little"), int.from_bytes(data[header + 28:header + 30], "little")
    start = header + 30 + name_len + extra_len
    data[start + info.file_size // 2] ^= 0x40
    model.write_bytes(bytes(data))


def test_bit_flip_in_weights_without_sidecar_is_refused(tmp_path, tiny_model):
    from spinect.errors import ModelError
    from spinect.model_file import load_model, sidecar_path

    sidecar_path(tiny_model).unlink(missing_ok=True)
    load_model(tiny_model, allow_untrained=True)  # intact
    _flip_weight_byte(tiny_model)
    with pytest.raises(ModelError, match="corrupt"):
        load_model(tiny_model, allow_untrained=True)


def test_nan_weights_are_refused(tmp_path):
    import torch

    from conftest import make_tiny_model
    from spinect.errors import ModelError
    from spinect.model_file import load_model, save_model

    path = make_tiny_model(tmp_path / "m.pt")
    network, plan = load_model(path, allow_untrained=True)
    with torch.no_grad():
        next(network.parameters()).fill_(float("nan"))
    save_model(tmp_path / "nan.pt", network, plan)
    with pytest.raises(ModelError, match="non-finite"):
        load_model(tmp_path / "nan.pt", allow_untrained=True)


def test_sigterm_while_writing_leaves_no_partial_file(tmp_path):
    """Slicer's Cancel sends SIGTERM: the temporary file must go as with Ctrl-C, exit code 143."""
    import signal
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        import spinect.cli as cli
        from spinect.io.atomic import atomic_output

        def slow_write(args):
            with atomic_output(Path({str(tmp_path / 'out.nii.gz')!r})) as tmp:
                tmp.write_bytes(b"partial")
                print("writing", flush=True)
                time.sleep(60)
            return 0

        parser = cli.build_parser
        def fake_parser():
            p = parser()
            p.set_defaults(func=slow_write, command="segment")
            return p
        cli.build_parser = fake_parser
        sys.exit(cli.main([]))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert "terminated" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


# --- geometry that would mislead, and inputs that would hang ----------------------------------------


def _ct_image(spacing=(0.8, 0.8, 2.0), direction=None) -> sitk.Image:
    from conftest import make_synthetic_ct

    image = make_synthetic_ct()
    image.SetSpacing(spacing)
    if direction is not None:
        image.SetDirection(direction)
    return image


@pytest.mark.parametrize("spacing", [(0.0, 0.8, 2.0), (0.8, 0.8, 50.0), (0.8, 0.05, 1.0)])
def test_implausible_voxel_size_is_refused(tmp_path, spacing):
    from spinect.errors import InputError
    from spinect.io import read_ct

    path = tmp_path / "ct.nrrd"
    image = _ct_image()
    sitk.WriteImage(image, str(path))
    # SimpleITK refuses to set a zero spacing, so edit the header text itself
    text = path.read_bytes()
    head, sep, body = text.partition(b"\n\n")
    lines = [line for line in head.split(b"\n") if not line.startswith(b"space directions")]
    lines.append(b"space directions: (%g,0,0) (0,%g,0) (0,0,%g)" % spacing)
    path.write_bytes(b"\n".join(lines) + sep + body)
    with pytest.raises(InputError, match="voxel size|spacing"):  # SimpleITK itself refuses a zero spacing
        read_ct(path)


def test_non_orthonormal_direction_is_refused():
    from spinect.errors import InputError
    from spinect.io import validate_ct

    sheared = _ct_image(direction=(1.0, 0.3, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    with pytest.raises(InputError, match="not orthonormal"):
        validate_ct(sheared)
    validate_ct(_ct_image(direction=(0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)))  # a rotation is fine


def test_fifo_input_is_refused_without_blocking(tmp_path):
    from spinect.errors import InputError
    from spinect.io import read_ct

    fifo = tmp_path / "ct.nii.gz"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        read_ct(fifo)


def test_existing_segmentation_with_other_segments_is_never_replaced(tmp_path):
    """A user's .seg.nrrd holding a liver segment must not silently become bone + nerve."""
    path = tmp_path / "case.seg.nrrd"
    write_labelmap(_labels(), path, class_names=("background", "liver", "tumour"))
    before = path.read_bytes()
    with pytest.raises(OutputError, match="other segments.*liver"):
        write_labelmap(_labels(), path)
    assert path.read_bytes() == before
    # our own earlier result (bone, nerve) may be replaced
    own = tmp_path / "own.seg.nrrd"
    write_labelmap(_labels(), own)
    write_labelmap(_labels(), own)
    assert own.is_file() and _leftovers(tmp_path, {path.name, own.name}) == []


# --- option values: a clear refusal, never a traceback or an hours-long run ------------------------


@pytest.mark.parametrize("extra,words", [
    (["--smoothing-mm", "-1"], "smoothing"), (["--smoothing-mm", "nan"], "smoothing"),
    (["--stride", "1", "1", "1"], "sliding windows"), (["--stride", "0", "40", "40"], "stride"),
    (["--stride", "64", "40", "40"], "larger than the network's window"),
])
def test_bad_segment_options_are_refused_before_work(tmp_path, tiny_model, capsys, extra, words):
    from spinect.cli import main

    ct = tmp_path / "ct.nrrd"
    big = sitk.Image([400, 400, 400], sitk.sitkInt16) - 1000  # 400^3 mm at 1 mm: millions of windows at stride 1
    sitk.WriteImage(big, str(ct), True)
    out = tmp_path / "out.nii.gz"
    code = main(["segment", str(ct), str(out), "--model", str(tiny_model), "--device", "cpu", *extra])
    err = capsys.readouterr().err
    assert code != 0 and words in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("extra,words", [
    (["--theta", "nan"], "theta"), (["--theta", "1000"], "theta"), (["--phi", "-90"], "phi"),
    (["--pixel", "0"], "pixel"), (["--instrument-radius", "-1"], "instrument radius"), (["--optimize", "--step", "0"], "step"),
])
def test_bad_triangle_options_are_refused(tmp_path, capsys, extra, words):
    from spinect.cli import main

    labels = np.zeros((20, 20, 20), np.uint8)
    labels[5:8] = 1
    labels[10, 10, 10] = 2
    seg = tmp_path / "seg.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(labels), str(seg))
    out = tmp_path / "tri.json"
    code = main(["triangles", str(seg), "--level", "L5S1", "--side", "left", "--seed", "10", "10", "10",
                 "--json", str(out), "--progress-lines", *extra])
    err = capsys.readouterr().err
    assert code != 0 and words in err and "Traceback" not in err
    assert not out.exists()


def test_no_array_view_of_a_temporary_image():
    """``sitk.GetArrayViewFromImage`` does not keep its image alive: a view of a temporary (a call's
    result) reads freed memory. CI once saw nerve voxels in a bone-only label map that way. Every
    view must be of a named image that outlives it."""
    import ast

    root = Path(__file__).resolve().parents[1]
    offenders = []
    for path in [*(root / "SpineCTSegmentation").rglob("*.py"), *(root / "benchmarks").rglob("*.py"),
                 *(root / "scripts").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "GetArrayViewFromImage"
                    and node.args and isinstance(node.args[0], ast.Call)):
                offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert offenders == []


def test_the_nerve_check_reads_the_label_map_not_freed_memory():
    """Bone-only label maps are refused many times over, whatever the allocator left behind."""
    import numpy as np

    from spinect.errors import InputError
    from spinect.geometry.measure import _nerve_near_target

    labels = sitk.GetImageFromArray(np.ones((60, 60, 60), np.uint8))
    for _ in range(30):
        junk = [sitk.Image(40, 40, 40, sitk.sitkUInt8) + 2 for _ in range(3)]  # freed memory full of 2s
        del junk
        with pytest.raises(InputError, match="no nerve"):
            _nerve_near_target(labels, np.zeros(3), allow_missing=False)
