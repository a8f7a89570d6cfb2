"""Typed requests: one frozen class per ``spinect`` verb, the one place where its options live.

Each request class names every option of its verb once: its type, default, allowed values and
help text (the field's metadata), and checks the values when it is made. Everything else is
derived from it:

* the CLI's argparse options (:func:`add_arguments`, :func:`from_args`): same names (the flag
  is in the metadata), same defaults, same help;
* the API (:func:`spinect.api.segment` and the other verbs take a request, or keyword
  arguments that build one);
* JSON (:meth:`Request.to_json`, :meth:`Request.from_json`; unknown keys are refused), which
  ``spinect serve`` takes for its ``segment`` and ``triangles`` verbs;
* a command line (:meth:`Request.to_argv`), e.g. for the Slicer module's child process.

``spinect train`` (:class:`TrainRequest`, whose :meth:`TrainRequest.to_config` makes the
trainer's config) and ``spinect segment-batch`` (:class:`SegmentBatchRequest`: the batch's own
options plus :class:`SegmentRequest`'s per-case fields, copied with their defaults, help and
checks) are derived the same way.

>>> from spinect.requests import SegmentRequest
>>> request = SegmentRequest(input="ct.nii.gz", output="ct.seg.nrrd", smoothing_mm=0.0)
>>> SegmentRequest.from_json(request.to_json()) == request
True
>>> request.to_argv()
['ct.nii.gz', 'ct.seg.nrrd', '--smoothing-mm', '0']

Wrong values raise :class:`RequestError` (a :class:`spinect.errors.SpinectError`: the CLI prints
it and exits non-zero) naming the option, what is wrong and what to do. Checks that need files or
the model (does the input exist, is the stride larger than the model's window) stay where those
are read.

This module imports only the standard library (the CLI's ``--help`` stays fast, and the Slicer
module can import it without PyTorch).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import numbers
import os
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

from spinect.errors import InputError, SpinectError

__all__ = [
    "Request",
    "RequestError",
    "RequestInputError",
    "SegmentRequest",
    "TrianglesRequest",
    "EvaluateRequest",
    "PhantomRequest",
    "ReportRequest",
    "TrainRequest",
    "SegmentBatchRequest",
    "REQUESTS",
    "SEGMENT_BATCH_OPTIONS",
    "TRAIN_PRECISIONS",
    "option",
    "add_arguments",
    "from_args",
    "build_request",
    "PRECISIONS",
    "MIRRORS",
]

#: ``precision`` values of :class:`SegmentRequest` -> the ``amp`` switch of the inference
#: (:func:`spinect.inference.autocast_dtype`): auto = reduced precision where the device computes
#: it natively, fp32 = never, bf16 = always.
PRECISIONS: dict[str, bool | None] = {"auto": None, "fp32": False, "bf16": True}

#: ``mirror`` values of :class:`SegmentRequest` -> the axes (0 z, 1 y, 2 x) each window is also
#: run flipped along (:func:`spinect.inference.predict_labels`' ``mirror_axes_zyx``); ``auto`` is
#: ``lr`` on a GPU and ``none`` on the CPU (where it roughly doubles the network time).
MIRRORS: dict[str, tuple[int, ...] | None] = {"auto": None, "none": (), "lr": (2,), "lr-ap": (1, 2)}


class RequestError(SpinectError):
    """An option has a wrong type, is out of range, or does not go with another option."""

    exit_code = 2


class RequestInputError(RequestError, InputError):
    """A :class:`RequestError` of a verb whose option errors are input errors (exit code 3)."""

    exit_code = 3


# --------------------------------------------------------------------------------------- fields


def option(default: Any = MISSING, *, help: str, kind: str = "str", flag: str | None = None,
           aliases: Sequence[str] = (), positional: bool = False, count: int | str | None = None,
           metavar: str | Sequence[str] | None = None, choices: Sequence[str] | None = None,
           bounds: tuple[float, float] | None = None, unit: str = "", describe: str | None = None,
           cli: bool = True, cli_required: bool = False, group: str | None = None, negative_flag: str | None = None,
           separator: str | None = None, image: bool = False, default_text: str | None = None,
           coordinates: bool = False, negative_help: str | None = None, what: str | None = None,
           const: str | None = None) -> Any:
    """A request field with everything the CLI, the API and JSON need to know about it.

    Args:
        default: the default (omit for a required option).
        help: one line for ``--help`` (the default is appended from ``default`` or ``default_text``).
        kind: ``str``, ``int``, ``float``, ``bool``, ``path``, ``paths`` (several paths),
            ``ints``/``floats`` (``count`` numbers), ``strs`` (names; ``separator`` splits a
            string), ``points`` (``count`` x y z triples, or ``"+"``: one or more).
        flag: the CLI option (default ``--`` + the name with dashes); ``aliases``: more spellings.
        positional: a positional CLI argument (always given on the command line).
        count: how many numbers (``ints``/``floats``) or points (``points``).
        choices: allowed values (strings, matched without regard to case).
        bounds: (low, high), inclusive, for numbers; ``unit`` names their unit in messages;
            ``describe`` replaces the generated "a number within ..." in messages.
        cli: False for API-only options (objects, test switches).
        cli_required: required on the command line although the API has a default (an output).
        group: name of a group of options of which the CLI takes at most one (see
            :attr:`Request.required_groups`).
        negative_flag: for a bool whose default is True: the CLI flag that turns it off (e.g.
            ``--no-overwrite``); for a bool defaulting to None (three states): the flag for False.
            ``negative_help`` is that flag's help.
        what: the option in words, put before the flag in messages ("instrument radius (--instrument-radius)").
        separator: ``strs`` given as one string on the CLI are split at this character.
        image: a ``path`` that may also be an in-memory SimpleITK image (API only).
        default_text: how ``--help`` states a default of None ("the model's").
        coordinates: a point option (LPS mm) that ``--ras`` flips.
        const: for a ``str`` option whose value may be left out on the CLI: the value then
            (``--ray`` alone means ``--ray local``).

    A positional ``paths`` option takes zero or more paths on the CLI.
    """
    metadata = {key: value for key, value in dict(
        help=help, kind=kind, flag=flag, aliases=tuple(aliases), positional=positional, count=count, metavar=metavar,
        choices=None if choices is None else tuple(choices), bounds=bounds, unit=unit, describe=describe, cli=cli,
        cli_required=cli_required, group=group, negative_flag=negative_flag, separator=separator, image=image,
        default_text=default_text, coordinates=coordinates, negative_help=negative_help, what=what,
        const=const).items()}
    if default is MISSING:
        return field(metadata=metadata)
    return field(default=default, metadata=metadata)


def option_name(f: dataclasses.Field) -> str:
    """How messages name an option: its CLI flag (``--smoothing-mm``), or the field name for API-only ones."""
    m = f.metadata
    if m.get("positional") or not m.get("cli", True):
        return f.name
    return m.get("flag") or "--" + f.name.replace("_", "-")


def _is_image(value: Any) -> bool:
    return hasattr(value, "GetSize") and hasattr(value, "GetPixelID")


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _sequence(value: Any) -> list | None:
    """``value`` as a list if it is a list, tuple or array (not a string), else None."""
    if isinstance(value, (str, bytes, bytearray)):
        return None
    if hasattr(value, "tolist") and not _is_real(value):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return list(value)
    return None


def _within(value: Any, bounds) -> bool:
    if bounds is None:
        return True
    try:
        return bool(bounds[0] <= value <= bounds[1])  # False for NaN; ints of any size compare exactly
    except TypeError:
        return False


def _number_text(kind: str, bounds, unit: str) -> str:
    what = "an integer" if kind in ("int", "ints") else "a number"
    if bounds is None:
        return what if kind in ("int", "ints") else f"a finite number{' of ' + unit if unit else ''}"
    lo, hi = bounds
    if hi == math.inf:
        return f"{what} >= {lo:g}{' ' + unit if unit else ''}"
    return f"{what} within {lo:g}-{hi:g}{' ' + unit if unit else ''}"


class _Checker:
    """Normalises one field's value (types, shapes) or raises the request's error naming the option."""

    def __init__(self, cls: type[Request], f: dataclasses.Field) -> None:
        self.cls, self.f, self.m = cls, f, f.metadata
        self.name = option_name(f) if not f.metadata.get("what") else f"{f.metadata['what']} ({option_name(f)})"

    def fail(self, what: str, value: Any) -> None:
        raise self.cls.error(f"{self.name} must be {what}, got {value!r}")

    def __call__(self, value: Any) -> Any:
        m = self.m
        kind = m.get("kind", "str")
        if value is None:
            if self.f.default is None:
                return None
            if self.f.default is MISSING:
                raise self.cls.error(f"{self.name} is required")
            self.fail(self._describe(kind), value)
        return getattr(self, f"_{kind}")(value)

    def _describe(self, kind: str) -> str:
        m = self.m
        if m.get("describe"):
            return m["describe"]
        if kind in ("int", "float"):
            return _number_text(kind, m.get("bounds"), m.get("unit", ""))
        if kind in ("ints", "floats"):
            each = _number_text(kind, m.get("bounds"), m.get("unit", "")).replace("an integer", "integers").replace(
                "a number", "numbers").replace("a finite number", "finite numbers")
            return f"{m['count']} {each}"
        return {"bool": "true or false", "path": "a file path", "paths": "file paths", "strs": "names",
                "points": "x y z coordinates (mm)", "str": "a string"}.get(kind, kind)

    def _bool(self, value):
        if isinstance(value, bool):
            return value
        self.fail("true or false", value)

    def _str(self, value):
        if not isinstance(value, str):
            self.fail("a string", value)
        choices = self.m.get("choices")
        if choices:
            for choice in choices:
                if value.lower() == choice.lower():
                    return choice
            raise self.cls.error(f"{self.name} {value!r} is not valid; use one of: {', '.join(choices)}")
        if not value:
            self.fail("a non-empty string", value)
        return value

    def _strs(self, value):
        if isinstance(value, str) and self.m.get("separator"):
            value = value.split(self.m["separator"])
        items = _sequence(value)
        if items is None or not all(isinstance(v, str) for v in items):
            self.fail("names" + (f" separated by {self.m['separator']!r}" if self.m.get("separator") else ""), value)
        return tuple(v.strip() for v in items if v.strip())

    def _path(self, value):
        if self.m.get("image") and _is_image(value):
            return value
        if isinstance(value, (str, os.PathLike)) and os.fspath(value) != "":
            return Path(value)
        self.fail("a file path" + (" or an image" if self.m.get("image") else ""), value)

    def _paths(self, value):
        if isinstance(value, (str, os.PathLike)):
            value = [value]
        items = _sequence(value)
        if items is None or not all(isinstance(v, (str, os.PathLike)) and os.fspath(v) != "" for v in items):
            self.fail("file paths", value)
        return tuple(Path(v) for v in items)

    def _scalar(self, value, kind: str):
        ok = _is_integer(value) if kind in ("int", "ints") else _is_real(value)
        if not ok or not _within(value, self.m.get("bounds")) or (kind in ("float", "floats") and not _finite(value)):
            return None
        return int(value) if kind in ("int", "ints") else float(value)

    def _int(self, value):
        number = self._scalar(value, "int")
        if number is None:
            self.fail(self._describe("int"), value)
        return number

    def _float(self, value):
        number = self._scalar(value, "float")
        if number is None:
            self.fail(self._describe("float"), value)
        return number

    def _numbers(self, value, kind: str):
        items = _sequence(value)
        numbers_ = None if items is None or len(items) != self.m["count"] else [self._scalar(v, kind) for v in items]
        if numbers_ is None or any(v is None for v in numbers_):
            self.fail(self._describe(kind), value)
        return tuple(numbers_)

    def _ints(self, value):
        return self._numbers(value, "ints")

    def _floats(self, value):
        return self._numbers(value, "floats")

    def _points(self, value):
        count = self.m["count"]
        items = _sequence(value)
        flat: list | None = None
        if items is not None:
            flat = []
            for item in items:
                inner = _sequence(item)
                if inner is None:
                    flat.append(item)
                elif len(inner) == 3:
                    flat.extend(inner)
                else:
                    flat = None
                    break
        wanted = "one or more" if count == "+" else str(count)
        plural = "" if count == 1 else "s"
        if (flat is None or not flat or len(flat) % 3 or not all(_is_real(v) and _finite(v) for v in flat)
                or (count != "+" and len(flat) != 3 * count)):
            raise self.cls.error(f"{self.name} needs {wanted} point{plural} of 3 finite coordinates (x y z, mm), "
                                 f"got {value!r}")
        triples = tuple(tuple(float(v) for v in flat[i:i + 3]) for i in range(0, len(flat), 3))
        return triples[0] if count == 1 else triples


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


# ------------------------------------------------------------------------------------- requests


@dataclass(frozen=True, kw_only=True)
class Request:
    """Base of the request classes: normalises and checks the fields, converts to and from JSON and argv.

    Class attributes:
        verb: the ``spinect`` verb.
        error: the error class the checks raise.
        required_groups: option groups (``group`` metadata) of which exactly one must be given.
    """

    verb: ClassVar[str] = ""
    error: ClassVar[type[SpinectError]] = RequestError
    required_groups: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            normalised = _Checker(type(self), f)(value)
            if normalised is not value:
                object.__setattr__(self, f.name, normalised)
        for group in self.required_groups:
            members = [f for f in dataclasses.fields(self) if f.metadata.get("group") == group]
            given = [f for f in members if getattr(self, f.name) not in (None, False)]
            if len(given) != 1:
                names = ", ".join(option_name(f) for f in members)
                raise self.error(f"give exactly one of: {names}" + (f" (got {', '.join(option_name(f) for f in given)})"
                                                                    if given else ""))
        self._check()

    def _check(self) -> None:
        """Checks that involve several options (subclasses)."""

    # -- conversions

    def replace(self, **changes: Any) -> "Request":
        """A copy with ``changes`` (checked like a new request)."""
        _refuse_unknown(type(self), changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types: paths as strings, tuples as lists. An in-memory image cannot be written."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if _is_image(value):
                raise self.error(f"{option_name(f)} is an in-memory image, which JSON cannot hold; write it to a "
                                 "file and give the file's path")
            out[f.name] = _plain(value)
        return out

    def to_json(self, **dumps: Any) -> str:
        return json.dumps(self.to_dict(), **dumps)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        """The request ``data`` (from :meth:`to_dict`, or a client's JSON) describes.

        Raises:
            RequestError: not an object, unknown keys (named, with the accepted ones), missing
                required options, or wrong values.
        """
        if not isinstance(data, Mapping):
            raise cls.error(f"a {cls.verb} request must be a JSON object of options, not {type(data).__name__}")
        _refuse_unknown(cls, data)
        missing = [option_name(f) for f in dataclasses.fields(cls)
                   if f.default is MISSING and f.default_factory is MISSING and f.name not in data]
        if missing:
            raise cls.error(f"a {cls.verb} request needs {', '.join(missing)}")
        return cls(**dict(data))

    @classmethod
    def from_json(cls, text: str):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise cls.error(f"a {cls.verb} request must be JSON: {exc}") from None
        return cls.from_dict(data)

    def to_argv(self) -> list[str]:
        """The ``spinect <verb>`` arguments (after the verb) that make this request: positionals,
        then every option whose value differs from the default (and required ones)."""
        argv: list[str] = []
        for f in cli_fields(type(self)):
            m, value = f.metadata, getattr(self, f.name)
            if _is_image(value):
                raise self.error(f"{option_name(f)} is an in-memory image; a command line needs a file path")
            if m.get("positional"):
                argv += [os.fspath(v) for v in value] if m.get("kind") == "paths" else [os.fspath(value)]
                continue
            if value == f.default and not (m.get("cli_required") and value is not None):
                continue
            flag = option_name(f)
            if m.get("kind") == "bool":
                argv.append(flag if value else m["negative_flag"])
                continue
            if value is None:
                continue
            argv.append(flag)
            kind = m.get("kind")
            if kind == "strs" and m.get("separator"):
                argv.append(m["separator"].join(value))
            elif kind == "points":
                argv += [_arg_text(v) for point in (value if isinstance(value[0], tuple) else (value,)) for v in point]
            elif kind in ("ints", "floats", "paths", "strs"):
                argv += [_arg_text(v) for v in value]
            else:
                argv.append(_arg_text(value))
        return argv


def _arg_text(value: Any) -> str:
    if isinstance(value, float):
        text = repr(value)  # the shortest text that reads back as the same float
        return text[:-2] if text.endswith(".0") else text
    return os.fspath(value) if isinstance(value, os.PathLike) else str(value)


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _refuse_unknown(cls: type[Request], data: Mapping[str, Any]) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise cls.error(f"{cls.verb}: unknown option(s) {', '.join(unknown)}; accepted: {', '.join(sorted(known))}")


def build_request(cls: type[Request], **values: Any):
    """``cls(**values)``, with unknown keyword names refused by name (a :class:`RequestError`)."""
    _refuse_unknown(cls, values)
    return cls(**values)


# ---------------------------------------------------------------------------------- the verbs


@dataclass(frozen=True, kw_only=True)
class SegmentRequest(Request):
    """``spinect segment INPUT OUTPUT`` / :func:`spinect.api.segment`: the options of one segmentation.

    ``smoothing_mm``, ``blend`` and ``stride_zyx`` default to the model's plan (None). The
    label-changing options (smoothing, blending, stride, tta/ensemble, precision, island removal,
    window skipping, levels) are recorded, as applied, in the result and in every output's
    provenance sidecar (:class:`spinect.pipeline.InferenceSettings`).
    """

    verb: ClassVar[str] = "segment"

    input: Any = option(kind="path", positional=True, image=True,
                        help="CT: NIfTI, NRRD, MHA file or a DICOM series folder (API: also a SimpleITK image in HU)")
    output: Path | None = option(None, kind="path", positional=True,
                                 help="output: .seg.nrrd (Slicer segmentation), .nii.gz/.nrrd/.mha label map, or .dcm "
                                      "(DICOM SEG; needs a DICOM series as input); API: None = only return the labels")
    model: Path | None = option(None, kind="path", help="model file from `spinect train`",
                                default_text="the shipped model")
    device: str = option("auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    smoothing_mm: float | None = option(None, kind="float", flag="--smoothing-mm", bounds=(0.0, 10.0),
                                        describe="a number of mm within 0-10 (0 = off)",
                                        help="median smoothing kernel in mm (0 = off)", default_text="the model's, 1.5")
    blend: str | None = option(None, choices=("sum", "gaussian"), help="window blending",
                               default_text="the model's, SPINECT 'sum'")
    stride_zyx: tuple[int, int, int] | None = option(
        None, kind="ints", count=3, flag="--stride", metavar=("D", "H", "W"), bounds=(1, 100_000),
        describe="3 positive integers (voxels along z y x)", help="sliding-window stride in voxels",
        default_text="the model's, 20 40 40")
    batch_size: int = option(4, kind="int", bounds=(1, 1024), help="windows per network call")
    precision: str = option("auto", choices=tuple(PRECISIONS),
                            help="network arithmetic: auto = bfloat16 where the CPU computes it natively and mixed "
                                 "precision on CUDA, else float32; fp32 = always float32 (reproducible); bf16 = always "
                                 "reduced precision. Recorded in the provenance sidecar")
    mirror: str = option("auto", choices=tuple(MIRRORS),
                         help="mirroring test-time augmentation: each window also runs flipped left-right (lr) or "
                              "left-right and front-back (lr-ap), probabilities averaged; on three real CTs lr raised "
                              "bone Dice by 0.001-0.016 for 1.8x the end-to-end time on 2 CPU cores "
                              "(docs/real_ct_validation.md). "
                              "auto = lr on a GPU, none on the CPU. Recorded in the provenance sidecar")
    tta: bool = option(False, kind="bool",
                       help="flip test-time augmentation: 4 predictions per model, fused; gives uncertainty")
    ensemble: tuple[Path, ...] = option((), kind="paths", metavar="MODEL",
                                        help="further model files to fuse with --model (e.g. other folds)")
    uncertainty_output: Path | None = option(None, kind="path", flag="--uncertainty", metavar="OUT_MAP",
                                             help="write the voxel-wise uncertainty (vote entropy, nats) here; needs "
                                                  "--tta or --ensemble")
    review_output: Path | None = option(None, kind="path", flag="--review", metavar="OUT.csv",
                                        help="write the top uncertain regions (CSV or JSON) here; needs --tta or --ensemble")
    review_top_k: int = option(20, kind="int", bounds=(1, 10_000), help="how many regions the --review list holds")
    keep_islands: bool = option(False, kind="bool",
                                help="keep isolated false-positive islands (removed and reported by default)")
    whole_volume: bool = option(False, kind="bool",
                                help="run the network on every window in the body (default: skip windows > 30 mm "
                                     "from bone-dense tissue)")
    nearest_labels: bool = option(False, kind="bool",
                                  help="put the labels back on the CT's grid by copying the nearest 1 mm label (the "
                                       "behaviour before December 2026; default: interpolate the class probabilities "
                                       "and take the argmax there, nnU-Net's way, 0.003-0.009 more bone Dice on real CT)")
    levels: bool = option(False, kind="bool",
                          help="also label vertebral levels L1-L5 and sacrum (from a level model, or by counting "
                               "from the sacrum or the last rib: see --levels-by): "
                               ".seg.nrrd gets level segments in a second layer; a label image gets OUT_levels.<suffix>")
    dicom_seg_output: Path | None = option(None, kind="path", flag="--dicom-seg", metavar="OUT.dcm",
                                           help="also write a DICOM SEG referencing the input DICOM series (needs a "
                                                "DICOM input)")
    level_model: Path | None = option(None, kind="path", metavar="MODEL.pt",
                                      help="with --levels: the level model to use",
                                      default_text="the model itself if it has level classes, else the shipped level model")
    levels_by: str = option("auto", choices=("auto", "model", "counting"),
                            help="with --levels: where the levels come from: model = a level model (the model's own "
                                 "level classes or --level-model); counting = count the vertebrae of the bone "
                                 "segmentation up from the sacrum or down from the last rib (refused when neither is "
                                 "in view); auto = a level model when one is available, else counting up from the "
                                 "sacrum only (a missed short 12th rib would shift every level by one); levels past "
                                 "a vertebra of implausible height are left unnamed")
    overwrite: bool = option(True, kind="bool", negative_flag="--no-overwrite",
                             help="replace an existing output file (always atomically)",
                             negative_help="refuse to replace an existing output file")
    allow_gaps: bool = option(False, kind="bool",
                              help="resample a DICOM series with missing slices onto an even grid (interpolating "
                                   "across the gap, with a warning; noted in the provenance sidecar) instead of "
                                   "refusing it")
    force: bool = option(False, kind="bool",
                         help="run even when the work is beyond sane bounds (> 200,000 sliding windows, or > 16 GiB "
                              "of estimated working memory on the network's 1 mm grid); refused otherwise")
    allow_untrained: bool = option(False, kind="bool", cli=False,
                                   help="accept a model whose plan says untrained (tests only)")

    def _check(self) -> None:
        if (self.uncertainty_output is not None or self.review_output is not None) and not (self.tta or self.ensemble):
            raise self.error("an uncertainty map or review list needs --tta or --ensemble MODEL (several predictions "
                             "to compare)")
        if self.level_model is not None and not self.levels:
            raise self.error("--level-model is used only with --levels; add --levels or leave out --level-model")
        if self.levels_by != "auto" and not self.levels:
            raise self.error("--levels-by is used only with --levels; add --levels or leave out --levels-by")
        if self.levels_by == "counting" and self.level_model is not None:
            raise self.error("--levels-by counting uses no level model; leave out --level-model or use --levels-by "
                             "model")

    @property
    def amp(self) -> bool | None:
        """The inference's mixed-precision switch for :attr:`precision` (see :data:`PRECISIONS`)."""
        return PRECISIONS[self.precision]


@dataclass(frozen=True, kw_only=True)
class TrianglesRequest(Request):
    """``spinect triangles SEG`` / :func:`spinect.api.triangles`: one Kambin or safe triangle measurement.

    Coordinates are LPS mm (the CLI's ``--ras`` flips Slicer's RAS before the request is made:
    :meth:`from_ras`). Exactly one of ``points_lps_mm`` (A, B, C), ``seed_lps_mm`` or ``auto``.
    """

    verb: ClassVar[str] = "triangles"
    error: ClassVar[type[SpinectError]] = RequestInputError
    required_groups: ClassVar[tuple[str, ...]] = ("mode",)

    seg: Any = option(kind="path", positional=True, image=True,
                      help="label map (0 background, 1 bone, 2 nerve) or .seg.nrrd")
    ct: Any = option(None, kind="path", image=True, help="CT (for the skin entry point and path length)")
    level: str = option(choices=("L4L5", "L5S1"), help="disc level")
    side: str = option(choices=("left", "right"), help="side of the target")
    triangle: str = option("kambin", choices=("kambin", "safe"), help="which triangle")
    points_lps_mm: tuple | None = option(None, kind="points", count=3, flag="--points", metavar="X", group="mode",
                                         coordinates=True, help="vertices A B C: Ax Ay Az Bx By Bz Cx Cy Cz")
    seed_lps_mm: tuple | None = option(None, kind="points", count=1, flag="--seed", metavar="X", group="mode",
                                       coordinates=True, help="one point inside the window: x y z")
    auto: bool = option(False, kind="bool", group="mode", help="find the vertices from a level map (--structures)")
    structures: Any = option(None, kind="path", image=True, help="level/structure map (codes of docs/phantom.md)")
    endplate_lps_mm: tuple | None = option(None, kind="points", count="+", flag="--endplate", metavar="X",
                                           coordinates=True,
                                           help="one point on the lower vertebra's superior endplate (x y z), or 3+ "
                                                "points to fit its plane")
    upper_line_lps_mm: tuple | None = option(None, kind="points", count=1, flag="--pedicle", metavar="X",
                                             coordinates=True,
                                             help="lowest point of the upper pedicle (bounds a seed window)")
    theta_deg: float = option(0.0, kind="float", flag="--theta", what="theta", bounds=(0.0, 90.0), unit="degrees",
                              help="obliquity in degrees (0 = PA)")
    phi_deg: float = option(0.0, kind="float", flag="--phi", what="phi", bounds=(-60.0, 60.0), unit="degrees",
                            help="cranio-caudal tilt in degrees (0 = endplate squared)")
    optimize: bool = option(False, kind="bool", help="search theta in [0, 60], phi in [-25, 25] for the best view")
    step_deg: float = option(2.5, kind="float", flag="--step", what="search step", bounds=(0.1, 30.0), unit="degrees",
                             help="coarse search grid step in degrees")
    objective: str = option("radius", choices=("radius", "free_area", "usable_area"),
                            help="search objective (radius = r*)")
    reachable: bool = option(False, kind="bool",
                             help="measure the window from the skin (default: 15 mm before the target)")
    instrument_radius_mm: float = option(0.36, kind="float", flag="--instrument-radius", what="instrument radius", bounds=(0.0, 10.0), unit="mm",
                                         help="needle/cannula radius in mm (0.36 = 22 G)")
    pixel_mm: float = option(0.25, kind="float", flag="--pixel", what="pixel size", bounds=(0.01, 5.0), unit="mm",
                             help="in-plane sampling of the projection in mm")
    allow_missing_nerve: bool = option(False, kind="bool",
                                       help="measure even when no nerve is labelled near the target (window bounded "
                                            "by bone only; flagged)")
    json_path: Path | None = option(None, kind="path", flag="--json", cli_required=True, help="JSON report to write")
    heatmap_path: Path | None = option(None, kind="path", flag="--heatmap",
                                       help="heat map PNG of the search",
                                       default_text="next to the JSON with --optimize")

    def _check(self) -> None:
        if self.auto and self.structures is None:
            raise self.error("--auto needs a level map: give --structures (codes of docs/phantom.md), or use "
                             "--points or --seed")

    @property
    def mode(self) -> str:
        return "points" if self.points_lps_mm is not None else "seed" if self.seed_lps_mm is not None else "auto"

    def heatmap_output(self) -> Path | None:
        """Where the heat map goes: ``heatmap_path``, else (with ``optimize`` and a JSON report)
        ``<json stem>_heatmap.png`` beside the report."""
        if self.heatmap_path is not None or not self.optimize or self.json_path is None:
            return self.heatmap_path
        return self.json_path.with_name(self.json_path.stem + "_heatmap.png")

    def from_ras(self) -> "TrianglesRequest":
        """The same request with its coordinates read as RAS (Slicer) and turned into LPS."""
        changes = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("coordinates") and value is not None:
                changes[f.name] = _flip_xy(value)
        return dataclasses.replace(self, **changes)


def _flip_xy(value: tuple) -> tuple:
    if value and isinstance(value[0], tuple):
        return tuple(_flip_xy(v) for v in value)
    x, y, z = value
    return (-x if x else 0.0, -y if y else 0.0, z)


@dataclass(frozen=True, kw_only=True)
class EvaluateRequest(Request):
    """``spinect evaluate`` / :func:`spinect.api.evaluate`: score predictions, or a model on a dataset.

    Give ``pred`` and ``labels`` (files or folders matched by case id), or ``data`` (a dataset
    folder; ``model`` defaults to the shipped model), not both.
    """

    verb: ClassVar[str] = "evaluate"
    error: ClassVar[type[SpinectError]] = RequestInputError

    pred: Path | None = option(None, kind="path", help="prediction label map, or a folder of them")
    labels: Path | None = option(None, kind="path", help="manual label map, or a folder of them")
    model: Path | None = option(None, kind="path", help="model-on-dataset mode: model file to segment --data with",
                                default_text="the shipped model")
    data: Path | None = option(None, kind="path",
                               help="model-on-dataset mode: dataset folder (manifest.json or <id>_ct/<id>_labels pairs)")
    cases: tuple[str, ...] = option((), kind="strs", separator=",",
                                    help="model-on-dataset mode: comma-separated case ids to use", default_text="all")
    device: str = option("auto", help="model-on-dataset mode: auto, cpu or cuda")
    out_dir: Path = option(kind="path", flag="--out", help="output folder for the report (created if missing)")
    class_names: tuple[str, ...] = option(("background", "bone", "nerve"), kind="strs", separator=",", flag="--classes",
                                          help="comma-separated names of label values 0, 1, ...")
    resample_prediction: bool = option(False, kind="bool", flag="--resample-pred",
                                       help="resample predictions that are off the label grid (nearest neighbour) "
                                            "instead of failing")
    overwrite: bool = option(False, kind="bool", help="replace a report already in --out (refused by default)")

    def _check(self) -> None:
        if len(self.class_names) < 2:
            raise self.error(f"--classes {','.join(self.class_names)!r} needs background and at least one class, "
                             "e.g. background,bone,nerve")
        if self.data is not None or self.model is not None:
            if self.pred is not None or self.labels is not None:
                raise self.error("give either --pred/--labels (score files) or --model/--data (segment a dataset), "
                                 "not both")
            if self.data is None:
                raise self.error("--model needs --data DATASET_FOLDER to segment")
        elif self.pred is None or self.labels is None:
            raise self.error("give --pred PRED and --labels LABELS (score files), or --data DATASET (and optionally "
                             "--model MODEL)")
        elif self.cases:
            raise self.error("--cases selects cases of --data; with --pred/--labels every matched case is scored")

    @property
    def mode(self) -> str:
        return "files" if self.pred is not None else "model"


@dataclass(frozen=True, kw_only=True)
class PhantomRequest(Request):
    """``spinect phantom OUT_DIR`` / :func:`spinect.api.phantom`: synthetic lumbosacral CT cases with truth."""

    verb: ClassVar[str] = "phantom"

    out_dir: Path = option(kind="path", positional=True, help="output folder (created if missing)")
    n: int = option(1, kind="int", bounds=(1, math.inf), help="number of cases")
    seed: int = option(0, kind="int", help="run seed; case i uses a seed derived from (seed, i)")
    shape_zyx: tuple[int, int, int] | None = option(None, kind="ints", count=3, flag="--shape", bounds=(1, 100_000),
                                                    metavar=("D", "H", "W"), help="grid size in voxels, z y x",
                                                    default_text="200 300 300")
    spacing_zyx_mm: tuple[float, float, float] | None = option(
        None, kind="floats", count=3, flag="--spacing", bounds=(1e-3, 100.0), unit="mm", metavar=("Z", "Y", "X"),
        help="voxel size in mm, z y x (e.g. 3 0.8 0.8 for thick slices)", default_text="1 1 1")
    appearance: str | None = option(None, choices=("ct", "v1", "random"),
                                    help="ct: CT-realistic HU, kernels and noise; v1: the first phantom's HU; random: "
                                         "domain-randomised intensities (SynthSeg-style)", default_text="ct")
    randomise_appearance: bool = option(False, kind="bool", aliases=("--randomize-appearance",),
                                        help="same as --appearance random")
    degeneration: bool | None = option(None, kind="bool", negative_flag="--no-degeneration",
                                       help="give every case one degenerated level", negative_help="no degeneration",
                                       default_text="30% of cases")
    anatomy: str = option("mesh", choices=("primitive", "mesh"),
                          help="mesh: phantom v2, real bone shapes (Visible Human Male, a mean L2-L5, a second pelvis) "
                               "with fitted nerves and triangles; primitive: bones made of geometric primitives (v1)")
    preview: bool = option(False, kind="bool", help="also write a PNG per case through the left L5/S1 foramen")
    field: str = option("lumbosacral", choices=("lumbosacral", "thoracolumbar", "chest"),
                        help="field of view: lumbosacral (L4-S1, no thorax), thoracolumbar (T12/L1) or chest (T7/T8); "
                             "the last two add T1-T12, ribs, sternum, lungs and heart")


@dataclass(frozen=True, kw_only=True)
class ReportRequest(Request):
    """``spinect report OUT.html`` / :func:`spinect.api.report`: one HTML page (and PDF) for a case."""

    verb: ClassVar[str] = "report"

    output: Path = option(kind="path", positional=True, help="the HTML page to write (.html)")
    seg: Path | None = option(None, kind="path", help="segmentation from `spinect segment` (.seg.nrrd or label map)")
    triangles: tuple[Path, ...] = option((), kind="paths", metavar="JSON",
                                         help="measurement files from `spinect triangles --json`")
    provenance: Path | None = option(None, kind="path", help="provenance sidecar of the segmentation",
                                     default_text="SEG.provenance.json when present")
    ct: Path | None = option(None, kind="path", help="the CT, named as the input", default_text="from the provenance")
    case_id: str | None = option(None, help="title of the page", default_text="the segmentation's file name")
    pdf: Path | None = option(None, kind="path", help="also print the page to this PDF (needs a headless Chromium)")
    overwrite: bool = option(True, kind="bool", negative_flag="--no-overwrite", help="replace existing files",
                             negative_help="refuse to replace existing files")


#: ``spinect train --precision`` values -> :attr:`spinect.train.TrainingConfig.amp` (the same as
#: :data:`spinect.train.PRECISIONS`, which ``test_requests`` checks): fp32 = float32 (reproducible),
#: auto = bfloat16 where the device computes it natively, bf16 = always.
TRAIN_PRECISIONS: dict[str, bool | None] = {"fp32": False, "auto": None, "bf16": True}

#: Training window and stride of SPINECT (a stride is checked against the window when no ``--patch`` is given).
_SPINECT_PATCH_ZYX = (32, 64, 64)


@dataclass(frozen=True, kw_only=True)
class TrainRequest(Request):
    """``spinect train DATA --out RUN_DIR``: the options of one training run.

    :meth:`to_config` turns it into the :class:`spinect.train.TrainingConfig` that
    :func:`spinect.api.train` runs (``epochs`` None = 100; ``spacing_zyx_mm``, ``patch_size_zyx``
    and ``stride_zyx`` None = SPINECT's grid, or the ``--init`` model's). Option errors are input
    errors (exit code 3), as the dataset checks are.
    """

    verb: ClassVar[str] = "train"
    error: ClassVar[type[SpinectError]] = RequestInputError

    data: Path = option(kind="path", positional=True,
                        help="dataset folder: manifest.json, or <id>_ct.nii.gz + <id>_labels.nii.gz (or <id>.seg.nrrd) "
                             "pairs")
    out: Path = option(kind="path", help="run folder for checkpoints and logs")
    fold: int = option(0, kind="int", bounds=(0, math.inf), help="test fold held out (0..folds-1)")
    folds: int = option(5, kind="int", bounds=(1, math.inf), help="number of folds (5: 32:8:10 of 50 cases)")
    epochs: int | None = option(None, kind="int", bounds=(1, math.inf), group="length",
                                help="epochs of --iterations-per-epoch iterations", default_text="100")
    iterations: int | None = option(None, kind="int", bounds=(1, math.inf), group="length",
                                    help="training iterations (instead of --epochs)")
    iterations_per_epoch: int = option(100, kind="int", bounds=(1, math.inf), help="iterations per epoch")
    val_every: int = option(100, kind="int", bounds=(1, math.inf),
                            help="validate every N iterations (100 as SPINECT)")
    max_val_cases: int | None = option(None, kind="int", bounds=(1, math.inf),
                                       help="validate on at most N validation cases", default_text="all")
    base_width: int = option(32, kind="int", bounds=(1, math.inf),
                             help="channels of the first U-Net level (32: the paper's 22.6 M parameters)")
    norm: str = option("batch", choices=("batch", "instance", "none"), help="normalisation layers")
    device: str = option("auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    resume: bool = option(False, kind="bool", help="continue the run in --out from its last_state.pt")
    init: Path | None = option(None, kind="path", metavar="MODEL.pt",
                               help="fine-tune: start from this model's weights ('default': the shipped model; its "
                                    "architecture, grid and HU normalisation are kept; e.g. the default model, then "
                                    "your own corrected cases)")
    classes: str = option("spinect", choices=("spinect", "levels"),
                          help="spinect: background, bone, nerve; levels: L1-L5, sacrum, ilium, other bone, dural sac, "
                               "roots (phantom cases take them from their structure maps); a level model still gives "
                               "bone and nerve, and `segment --levels` the vertebral levels. --init with a 3-class model "
                               "starts each class as its bone or nerve")
    spacing_zyx_mm: tuple[float, float, float] | None = option(
        None, kind="floats", count=3, flag="--spacing", bounds=(0.3, 10.0), unit="mm", metavar=("Z", "Y", "X"),
        describe="3 voxel sizes within 0.3-10 mm",
        help="grid the network works on, mm (e.g. 3 3 3 for a level model that sees 96x192x192 mm per window)",
        default_text="1 1 1, SPINECT's, or the --init model's")
    patch_size_zyx: tuple[int, int, int] | None = option(
        None, kind="ints", count=3, flag="--patch", bounds=(16, 256), metavar=("Z", "Y", "X"),
        describe="3 multiples of 16 within 16-256 voxels (the U-Net halves it 4 times)",
        help="training and inference window in voxels", default_text="32 64 64, SPINECT's")
    stride_zyx: tuple[int, int, int] | None = option(
        None, kind="ints", count=3, flag="--stride", bounds=(1, 100_000), metavar=("Z", "Y", "X"),
        describe="3 positive integers no larger than the window",
        help="sliding-window stride of the model's inference, voxels", default_text="20 40 40")
    early_nerve_weight: float = option(20.0, kind="float", bounds=(0.0, math.inf), describe="a finite number > 0",
                                       help="nerve class weight for the first 40 % of iterations (SPINECT's; then 2)")
    stop_at: int | None = option(None, kind="int", bounds=(1, math.inf),
                                 help="pause after N iterations (checkpointed; continue later with --resume)")
    time_limit_min: float | None = option(None, kind="float", bounds=(0.0, math.inf), describe="minutes > 0",
                                          help="pause once this many minutes of training have passed (checkpointed "
                                               "at that step; continue later with --resume): for a lent GPU's budget")
    seed: int = option(0, kind="int", help="seed of the split, the network and the sampling")
    rerender: float = option(0.0, kind="float", bounds=(0.0, 1.0), describe="a share in 0..1",
                             help="share of training patches painted anew from their phantom structure map (SynthSeg-"
                                  "style: new tissue values, bone sub-regions, blur, slice thickness, noise; "
                                  "spinect.phantom.rerender); cases without a structure map keep their CT")
    rerender_mode: str = option("mixed", choices=("ct", "random", "mixed"),
                                help="ct: physical HU and a CT scanner; random: any contrast, bias field and gamma; "
                                     "mixed: either, half each")
    batch_size: int = option(4, kind="int", bounds=(1, math.inf), help="patches per iteration and process")
    lr: float = option(5e-4, kind="float", bounds=(0.0, math.inf), help="Adam learning rate")
    num_threads: int | None = option(None, kind="int", flag="--threads", bounds=(1, math.inf),
                                     help="CPU threads for torch", default_text="torch's choice")
    precision: str = option("fp32", choices=tuple(TRAIN_PRECISIONS),
                            help="fp32: reproducible; auto: bfloat16 mixed precision where the GPU/CPU computes it "
                                 "natively (about 1.6x faster per step on such CPUs, not bit-reproducible); bf16: always")
    show_progress: bool = option(True, kind="bool", negative_flag="--no-progress", help="progress bar",
                                 negative_help="no progress bar")

    def _check(self) -> None:
        if self.fold >= self.folds:
            raise self.error(f"--fold must be in 0..{self.folds - 1}, got {self.fold}")
        if self.epochs is not None and self.iterations is not None:
            raise self.error("give --epochs or --iterations, not both")
        if self.early_nerve_weight <= 0:
            raise self.error(f"--early-nerve-weight must be a finite number > 0, got {self.early_nerve_weight!r}")
        if self.patch_size_zyx is not None and any(v % 16 for v in self.patch_size_zyx):
            raise self.error("--patch must be 3 multiples of 16 within 16-256 voxels (the U-Net halves it 4 times), "
                             f"got {list(self.patch_size_zyx)}")
        window = self.patch_size_zyx or _SPINECT_PATCH_ZYX
        if self.stride_zyx is not None and any(st > pa for st, pa in zip(self.stride_zyx, window)):
            raise self.error(f"--stride must be 3 positive integers no larger than the window {list(window)}, "
                             f"got {list(self.stride_zyx)}")

    @property
    def amp(self) -> bool | None:
        """The trainer's mixed-precision switch for :attr:`precision` (see :data:`TRAIN_PRECISIONS`)."""
        return TRAIN_PRECISIONS[self.precision]

    def to_config(self, *, command: str = ""):
        """The :class:`spinect.train.TrainingConfig` of this request (imports PyTorch).

        ``command`` is recorded in the model's provenance. Checks the files: the dataset folder,
        and the ``init`` model (``default`` names the shipped model).

        Raises:
            RequestInputError: no dataset folder, or no ``init`` model file.
        """
        from spinect.train import TrainingConfig

        if not self.data.is_dir():
            raise self.error(f"dataset folder {self.data} not found; pass a folder with manifest.json or "
                             "<id>_ct/<id>_labels pairs")
        init = None
        if self.init is not None:
            from spinect.model_file import default_model_path

            init = default_model_path() if os.fspath(self.init) == "default" else self.init
            if not init.is_file():
                raise self.error(f"--init model {os.fspath(self.init)} not found; pass a .pt model file (or 'default' "
                                 "for the shipped model)")
        grid = {name: getattr(self, name) for name in ("spacing_zyx_mm", "patch_size_zyx", "stride_zyx")
                if getattr(self, name) is not None}
        return TrainingConfig(
            data=self.data, out=self.out, fold=self.fold, folds=self.folds,
            epochs=self.epochs if self.epochs is not None else 100, iterations_per_epoch=self.iterations_per_epoch,
            iterations=self.iterations, val_every=self.val_every, max_val_cases=self.max_val_cases,
            base_width=self.base_width, norm=self.norm, device=self.device, resume=self.resume, stop_at=self.stop_at,
            time_limit_s=None if self.time_limit_min is None else 60.0 * self.time_limit_min,
            seed=self.seed, batch_size=self.batch_size, lr=self.lr, num_threads=self.num_threads,
            show_progress=self.show_progress, amp=self.amp, init=init, classes=self.classes,
            early_nerve_weight=self.early_nerve_weight, **grid, grid_from_init=not grid, command=command,
            rerender=self.rerender, rerender_mode=self.rerender_mode)


def _per_case(name: str) -> Any:
    """A :class:`SegmentBatchRequest` field that is :class:`SegmentRequest`'s ``name`` (default, help, checks)."""
    f = SegmentRequest.__dataclass_fields__[name]
    return field(default=f.default, metadata=f.metadata)


@dataclass(frozen=True, kw_only=True)
class SegmentBatchRequest(Request):
    """``spinect segment-batch INPUTS... | --list cases.csv --out DIR``: a cohort with one loaded model.

    The batch's own options (inputs, case list, output folder and format, CSV, Ray), and the
    :class:`SegmentRequest` options that apply to every case (:data:`SEGMENT_BATCH_OPTIONS`:
    same defaults, help and checks, taken from :class:`SegmentRequest`'s fields). Each case is
    ``SegmentRequest(input=case, output=OUT/<case><suffix>, overwrite=True, **segment_options())``.
    """

    verb: ClassVar[str] = "segment-batch"

    inputs: tuple[Path, ...] = option((), kind="paths", positional=True, metavar="INPUT",
                                      help="CT files (NIfTI, NRRD, MHA) or DICOM series folders")
    list_file: Path | None = option(None, kind="path", flag="--list", metavar="CASES.csv",
                                    help="CSV with an 'input' column (and optionally 'case', the output name); relative "
                                         "paths are relative to the CSV's folder")
    out_dir: Path = option(kind="path", flag="--out", metavar="DIR", help="output folder (created if missing)")
    suffix: str = option(".nii.gz", choices=(".nii.gz", ".nii", ".nrrd", ".seg.nrrd", ".mha"),
                         help="output format (.nii.gz: label maps)")
    csv_path: Path | None = option(None, kind="path", flag="--csv", metavar="PATH", help="per-case CSV",
                                   default_text="DIR/segment-batch.csv")
    ray: str | None = option(None, const="local", metavar="ADDRESS",
                             help="run the cases on Ray actors (one per GPU or per group of CPUs, each loading the "
                                  "model once): without ADDRESS a local Ray instance on this machine's CPUs/GPUs, with "
                                  "one (auto, HOST:6379, ray://HOST:10001) an existing cluster whose nodes all see the "
                                  "inputs and --out. Needs `pip install 'spinect[ray]'`")
    ray_cpus_per_actor: int | None = option(None, kind="int", bounds=(1, math.inf), metavar="N",
                                            help="with --ray on CPUs: CPUs per actor (at most the cluster's CPUs)",
                                            default_text="4")
    # -- the per-case options: SegmentRequest's
    model: Path | None = _per_case("model")
    device: str = _per_case("device")
    smoothing_mm: float | None = _per_case("smoothing_mm")
    blend: str | None = _per_case("blend")
    stride_zyx: tuple[int, int, int] | None = _per_case("stride_zyx")
    batch_size: int = _per_case("batch_size")
    precision: str = _per_case("precision")
    mirror: str = _per_case("mirror")
    tta: bool = _per_case("tta")
    ensemble: tuple[Path, ...] = _per_case("ensemble")
    keep_islands: bool = _per_case("keep_islands")
    whole_volume: bool = _per_case("whole_volume")
    nearest_labels: bool = _per_case("nearest_labels")
    levels: bool = _per_case("levels")
    level_model: Path | None = _per_case("level_model")
    levels_by: str = _per_case("levels_by")
    allow_gaps: bool = _per_case("allow_gaps")
    force: bool = _per_case("force")
    allow_untrained: bool = _per_case("allow_untrained")

    def _check(self) -> None:
        if self.ray_cpus_per_actor is not None and self.ray is None:
            raise self.error("--ray-cpus-per-actor is for --ray runs; add --ray or leave it out")
        self.segment_request(input="case")  # SegmentRequest's checks of several options (--level-model, ...)

    def segment_options(self) -> dict[str, Any]:
        """The :class:`SegmentRequest` options of every case (keywords of :func:`spinect.api.segment_batch`)."""
        return {name: getattr(self, name) for name in SEGMENT_BATCH_OPTIONS}

    def segment_request(self, input: Any, output: Any = None) -> SegmentRequest:
        """The request of one case (its outputs replaced atomically, as a batch resumes by them)."""
        return SegmentRequest(input=input, output=output, overwrite=True, **self.segment_options())


#: The :class:`SegmentRequest` options a batch passes on to every case (its outputs are the batch's own).
SEGMENT_BATCH_OPTIONS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(SegmentBatchRequest) if f.name in SegmentRequest.__dataclass_fields__)


#: Request class per verb.
REQUESTS: dict[str, type[Request]] = {cls.verb: cls for cls in
                                      (SegmentRequest, TrianglesRequest, EvaluateRequest, PhantomRequest, ReportRequest,
                                       TrainRequest, SegmentBatchRequest)}


# ----------------------------------------------------------------------------------- argparse


def cli_fields(cls: type[Request]) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]


def cli_dest(f: dataclasses.Field) -> str:
    """The argparse attribute of a field: argparse's own name for its flag (``--theta`` ->
    ``theta``), so code reading a parsed namespace keeps working; the field name for positionals
    and for bools set by a negative flag (``--no-overwrite`` -> ``overwrite``)."""
    m = f.metadata
    if m.get("positional") or (m.get("kind") == "bool" and f.default is not False):
        return f.name
    return option_name(f).lstrip("-").replace("-", "_")


def _help(f: dataclasses.Field) -> str:
    m = f.metadata
    text = m["help"]
    if m.get("default_text"):
        default = m["default_text"]
    elif f.default is MISSING or f.default is None or f.default is False or f.default == () or m.get("positional"):
        default = None
    elif f.default is True:
        default = None  # a negative flag turns it off; the help says so
    elif isinstance(f.default, tuple):
        default = " ".join(_arg_text(v) for v in f.default) if m.get("separator") is None else \
            m["separator"].join(f.default)
    else:
        default = _arg_text(f.default)
    if default is not None:
        text += f" (default: {default})"
    return text.replace("%", "%%")  # argparse formats help with %


def add_arguments(parser: argparse.ArgumentParser, cls: type[Request]) -> argparse.ArgumentParser:
    """Add one argparse option per CLI field of ``cls`` (names, defaults, choices, help from the fields)."""
    groups: dict[str, Any] = {}
    for f in cli_fields(cls):
        m = f.metadata
        kind = m.get("kind", "str")
        target = parser
        if m.get("group"):
            if m["group"] not in groups:
                groups[m["group"]] = parser.add_mutually_exclusive_group(required=m["group"] in cls.required_groups)
            target = groups[m["group"]]
        kwargs: dict[str, Any] = {"help": _help(f)}
        if m.get("metavar") is not None:
            kwargs["metavar"] = m["metavar"]
        if m.get("choices"):
            kwargs["choices"] = m["choices"]
            kwargs.setdefault("metavar", "{" + ",".join(m["choices"]) + "}")
        if m.get("positional"):
            if kind == "paths":
                kwargs.update(nargs="*", default=[] if f.default is MISSING else list(f.default))
            target.add_argument(f.name, **kwargs)
            continue
        names = [option_name(f), *m.get("aliases", ())]
        kwargs["dest"] = cli_dest(f)
        if kind == "bool":
            kwargs.pop("metavar", None)
            if f.default is None:  # three states: flag, negative flag, neither
                both = target.add_mutually_exclusive_group()
                both.add_argument(*names, action="store_const", const=True, default=None, **kwargs)
                both.add_argument(m["negative_flag"], dest=f.name, action="store_const", const=False,
                                  help=m["negative_help"].replace("%", "%%"))
            elif f.default is True:
                kwargs["help"] = m["negative_help"].replace("%", "%%")
                target.add_argument(m["negative_flag"], action="store_false", **kwargs)
            else:
                target.add_argument(*names, action="store_true", **kwargs)
            continue
        kwargs.setdefault("metavar", names[0].lstrip("-").upper().replace("-", "_"))
        kwargs["default"] = None if f.default is MISSING else f.default
        if f.default is MISSING or m.get("cli_required"):
            kwargs["required"] = True
        kwargs["type"] = {"int": int, "ints": int, "float": float, "floats": float, "points": float}.get(kind, str)
        if kind in ("ints", "floats"):
            kwargs["nargs"] = m["count"]
        elif kind == "points":
            kwargs["nargs"] = "+" if m["count"] == "+" else 3 * m["count"]
        elif kind in ("paths",) or (kind == "strs" and not m.get("separator")):
            kwargs["nargs"] = "+"
        elif m.get("const") is not None:
            kwargs.update(nargs="?", const=m["const"])
        target.add_argument(*names, **kwargs)
    return parser


def from_args(cls: type[Request], namespace: argparse.Namespace, **extra: Any):
    """The ``cls`` request an argparse namespace (from :func:`add_arguments`) describes; ``extra``
    sets API-only fields."""
    values = {f.name: getattr(namespace, cli_dest(f)) for f in cli_fields(cls) if hasattr(namespace, cli_dest(f))}
    values.update(extra)
    return build_request(cls, **values)
