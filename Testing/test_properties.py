"""Property-based tests (hypothesis) of the option validators and the label-map reader (issue 18).

Properties:

* Option validators (``segment``'s ``--smoothing-mm``, ``--stride``, ``--batch-size`` and the
  window count; ``triangles``' ``--theta``, ``--phi``, ``--pixel``, ``--instrument-radius``,
  ``--step``): any value is either accepted, and then lies within the documented range, or
  refused with a :class:`SpinectError` whose message names the option. Never another exception.
* Label maps: a small random array of a random pixel type (integers of every width, floats with
  NaN, infinities, fractions, negative and huge values) written as ``.nii.gz``, ``.nii``,
  ``.nrrd`` or ``.mha`` is read back exactly when every value is a class number (0, 1, 2), and
  otherwise refused with an :class:`InputError` that names the file and the bad values.

The truth each example is compared with is computed independently of spinect, from the value or
array itself.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from spinect.api import _check_segment_options, _check_window_count  # noqa: E402
from spinect.errors import InputError, SpinectError  # noqa: E402
from spinect.geometry.measure import measure_triangle  # noqa: E402
from spinect.geometry.trajectory import SearchSettings  # noqa: E402
from spinect.geometry.window import WindowSettings  # noqa: E402
from spinect.io.labels import check_labelmap, read_labelmap  # noqa: E402
from spinect.plan import CLASS_NAMES, ModelPlan  # noqa: E402

# database=None: no .hypothesis/ folder in the checkout; failures print the example to reproduce.
FAST = settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# Anything a caller might pass: numbers of every kind and size, non-numbers, containers.
ANY_NUMBER = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-20, max_value=20),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.integers(min_value=-5, max_value=2000),
    st.just(10**400),
    st.booleans(),
    st.none(),
    st.text(max_size=5),
    st.binary(max_size=3),
    st.complex_numbers(max_magnitude=10),
    st.lists(st.integers(-3, 50), max_size=4),
    st.sampled_from([np.float32("nan"), np.float64(1.5), np.int64(3), np.uint8(7), np.float32(-0.0)]),
)


def _real(value) -> float | None:
    """The value as a float if it is a real, non-boolean number (independent of spinect), else None."""
    if isinstance(value, (bool, np.bool_, str, bytes, complex, list, type(None))):
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _accepts(check, value) -> tuple[bool, str]:
    """(accepted, message); any exception other than a SpinectError fails the test."""
    try:
        check(value)
    except SpinectError as exc:
        return False, str(exc)
    return True, ""


# --- segment options --------------------------------------------------------------------------


@FAST
@given(ANY_NUMBER)
def test_smoothing_is_accepted_within_0_to_10_mm_or_refused_by_name(value):
    accepted, message = _accepts(lambda v: _check_segment_options(v, None, 4), value)
    number = _real(value)
    if value is None:
        assert accepted  # None = the plan's default
        return
    assert accepted == (number is not None and 0.0 <= number <= 10.0), (value, message)
    if not accepted:
        assert "--smoothing-mm" in message and "0-10" in message


@FAST
@given(ANY_NUMBER)
def test_batch_size_is_an_integer_within_1_to_1024_or_refused_by_name(value):
    accepted, message = _accepts(lambda v: _check_segment_options(None, None, v), value)
    integer = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    assert accepted == (integer and 1 <= value <= 1024), (value, message)
    if not accepted:
        assert "--batch-size" in message and "1-1024" in message


STRIDES = st.one_of(
    st.lists(st.integers(min_value=-3, max_value=200), min_size=0, max_size=5).map(tuple),
    st.lists(st.one_of(st.integers(-(10**20), 10**20), st.floats(), st.booleans(), st.text(max_size=2)),
             min_size=3, max_size=3),
    ANY_NUMBER,
)


@FAST
@given(STRIDES)
def test_stride_is_three_positive_integers_or_refused_by_name(value):
    accepted, message = _accepts(lambda v: _check_segment_options(None, v, 4), value)
    if value is None:
        assert accepted
        return
    good = (isinstance(value, (tuple, list)) and len(value) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value))
    if not good:
        assert not accepted, value
        assert "--stride" in message
    elif not accepted:  # an absurd stride (beyond 100,000 voxels) may be refused, by name
        assert "--stride" in message and max(value) > 100_000


@FAST
@given(stride=st.lists(st.integers(1, 200), min_size=3, max_size=3).map(tuple),
       size=st.tuples(st.integers(2, 600), st.integers(2, 600), st.integers(2, 600)),
       spacing=st.tuples(st.floats(0.1, 10), st.floats(0.1, 10), st.floats(0.1, 10)))
def test_window_count_accepts_only_strides_within_the_window_and_sane_counts(stride, size, spacing):
    plan = ModelPlan(architecture={"name": "spinect_unet", "base_width": 4})
    ct = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    ct.SetSpacing(spacing)
    accepted, message = _accepts(lambda s: _check_window_count(ct, plan, s), stride)
    patch = np.asarray(plan.patch_size_zyx)
    voxels = np.ceil(np.asarray(size[::-1]) * np.asarray(spacing[::-1]) / np.asarray(plan.spacing_zyx_mm))
    windows = int(np.prod(np.ceil(np.maximum(voxels - patch, 0) / np.asarray(stride)) + 1))
    if np.any(np.asarray(stride) > patch):
        assert not accepted and "--stride" in message and "window" in message
    elif windows > 200_000:
        assert not accepted and "sliding windows" in message and "--stride" not in message.split("with stride")[0]
    else:
        assert accepted, message


# --- triangles options ------------------------------------------------------------------------


@pytest.mark.parametrize("field, option, lo, hi", [
    ("pixel_mm", "--pixel", 0.01, 5.0),
    ("instrument_radius_mm", "--instrument-radius", 0.0, 10.0),
])
@FAST
@given(value=ANY_NUMBER)
def test_window_settings_accept_the_documented_range_or_refuse_by_name(field, option, lo, hi, value):
    accepted, message = _accepts(lambda v: WindowSettings(**{field: v}), value)
    number = _real(value)
    assert accepted == (number is not None and lo <= number <= hi), (value, message)
    if not accepted:
        assert option in message


@FAST
@given(value=ANY_NUMBER)
def test_search_step_accepts_0_1_to_30_degrees_or_refuses_by_name(value):
    accepted, message = _accepts(lambda v: SearchSettings(step_deg=v), value)
    number = _real(value)
    assert accepted == (number is not None and 0.1 <= number <= 30.0), (value, message)
    if not accepted:
        assert "--step" in message


@pytest.mark.parametrize("angle, option, lo, hi", [("theta_deg", "--theta", 0.0, 90.0), ("phi_deg", "--phi", -60.0, 60.0)])
@FAST
@given(value=ANY_NUMBER)
def test_view_angles_accept_the_documented_range_or_refuse_by_name(angle, option, lo, hi, value):
    """No points, seed or --auto: an accepted angle reaches the next check (the mode), a refused one names itself."""
    with pytest.raises(InputError) as caught:
        measure_triangle("no-such-labels.nii.gz", level="L4L5", side="left", **{angle: value})
    message = str(caught.value)
    number = _real(value)
    if number is not None and lo <= number <= hi:
        assert "give exactly one of" in message, (value, message)
    else:
        assert option in message, (value, message)


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(-200, 200).map(lambda v: f"{v:.3f}"),
    st.sampled_from(["nan", "-inf", "1e400", "-0", "90", "90.0001", "-60", "60.5"]),
))
def test_triangles_cli_never_tracebacks_on_an_angle(text, capsys):
    """Through the CLI: exit 3 naming --theta when out of range, else it goes on to the (missing) label map."""
    from spinect.cli import main

    with tempfile.TemporaryDirectory() as folder:
        code = main(["triangles", str(Path(folder) / "missing.nii.gz"), "--level", "L4L5", "--side", "left",
                     "--seed", "0", "0", "0", f"--theta={text}", "--json", str(Path(folder) / "out.json")])
        assert list(Path(folder).iterdir()) == []  # nothing written
    err = capsys.readouterr().err  # read (and cleared) after every example
    assert code == 3 and "Traceback" not in err, err
    if 0.0 <= float(text) <= 90.0:
        assert "does not exist" in err and "--theta" not in err, err
    else:
        assert "--theta" in err and "0-90" in err, err


# --- label maps -------------------------------------------------------------------------------

DTYPES = [np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64, np.int64, np.float32, np.float64]
SUFFIXES = [".nii.gz", ".nii", ".nrrd", ".mha"]


@st.composite
def label_arrays(draw):
    """Small arrays; mostly class numbers 0-2 so that both outcomes are common, sometimes anything."""
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = draw(hnp.array_shapes(min_dims=3, max_dims=3, min_side=2, max_side=4))
    classes = draw(hnp.arrays(dtype, shape, elements=st.integers(0, len(CLASS_NAMES) - 1)))
    if draw(st.booleans()):
        return classes
    if dtype.kind == "f":
        info = np.finfo(dtype)
        odd = st.one_of(st.floats(width=dtype.itemsize * 8, allow_nan=True, allow_infinity=True),
                        st.sampled_from([np.nan, np.inf, -np.inf, 0.5, -1.0, 3.0, 2.0000002, float(info.max), 1e-40]))
    else:
        info = np.iinfo(dtype)
        odd = st.integers(int(info.min), int(info.max))
    spoiled = classes.copy()
    for _ in range(draw(st.integers(1, 3))):
        index = tuple(draw(st.integers(0, n - 1)) for n in shape)
        spoiled[index] = draw(odd)
    return spoiled


def _truth(array: np.ndarray) -> tuple[bool, list[float]]:
    """(all values are class numbers, the values that are not)."""
    values = np.unique(array.astype(np.float64)) if array.dtype.kind == "f" else np.unique(array)
    bad = [v for v in values.tolist() if not (math.isfinite(v) and float(v).is_integer() and 0 <= v < len(CLASS_NAMES))]
    return not bad, bad


@FAST
@given(array=label_arrays(), suffix=st.sampled_from(SUFFIXES),
       spacing=st.tuples(st.floats(0.2, 5), st.floats(0.2, 5), st.floats(0.2, 5)))
def test_label_map_round_trips_exactly_or_is_refused_naming_file_and_values(array, suffix, spacing):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((-12.5, 3.0, 40.0))
    good, bad = _truth(array)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"case{suffix}"
        sitk.WriteImage(image, str(path))
        if good:
            label = read_labelmap(path)
            assert label.GetPixelID() == sitk.sitkUInt8
            np.testing.assert_array_equal(sitk.GetArrayFromImage(label), array.astype(np.uint8))
            np.testing.assert_allclose(label.GetSpacing(), spacing, rtol=1e-6)
            np.testing.assert_allclose(label.GetOrigin(), (-12.5, 3.0, 40.0), atol=1e-4)
        else:
            with pytest.raises(InputError) as caught:
                read_labelmap(path)
            message = str(caught.value)
            assert str(path) in message
            non_finite = [v for v in bad if not math.isfinite(v)]
            if non_finite and suffix in (".nii", ".nii.gz"):
                assert "NaN or infinite" in message  # the NIfTI reader would have read them as 0
            else:
                assert "outside the classes" in message
                assert f"{bad[0]:g}" in message, (bad, message)


@FAST
@given(array=label_arrays())
def test_check_labelmap_accepts_exactly_the_class_numbers(array):
    good, bad = _truth(array)
    accepted, message = _accepts(lambda a: check_labelmap(sitk.GetImageFromArray(a), source="case 7"), array)
    assert accepted == good, (bad, message)
    if not accepted:
        assert message.startswith("case 7 has label values") and f"{bad[0]:g}" in message


def test_nifti_gz_beside_an_uncompressed_twin_is_refused(tmp_path):
    """niftilib reads ``x.nii`` when asked for ``x.nii.gz`` if both exist: a silently wrong read."""
    stale = np.full((2, 3, 4), 2, np.uint8)
    wanted = np.ones((2, 3, 4), np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(stale), str(tmp_path / "case.nii"))
    sitk.WriteImage(sitk.GetImageFromArray(wanted), str(tmp_path / "case.nii.gz"))
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "case.nii.gz"))).max() == 2  # the trap itself
    with pytest.raises(InputError, match="uncompressed twin case.nii"):
        read_labelmap(tmp_path / "case.nii.gz")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_labelmap(tmp_path / "case.nii")), stale)
    (tmp_path / "case.nii").unlink()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_labelmap(tmp_path / "case.nii.gz")), wanted)
