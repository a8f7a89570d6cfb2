"""Cohorts: segment many CTs with one loaded model (``spinect segment-batch``, :func:`spinect.api.segment_batch`).

Each case goes through :func:`spinect.api.segment` (the same checks, atomic output and provenance
sidecar as ``spinect segment``) inside :func:`spinect.model_file.reuse_loaded_models`, so the
model is read and built once per batch, and Python, PyTorch and MONAI are imported once.

- **Resume**: a case whose output and provenance sidecar both exist is skipped. Outputs are
  published atomically (:mod:`spinect.io.atomic`) and the sidecar after the output, so both
  existing means the case finished; a run killed in the middle of a case left neither under the
  final names (or the output without its sidecar: that case is redone).
- **Per-case CSV** (``segment-batch.csv`` in the output folder by default), rewritten atomically
  after every case: case, input, output, status (``ok``, ``failed``, ``skipped``), error,
  seconds, the main stage timings, class volumes (mm³) and the number of removed islands. A
  skipped case keeps the figures of the run that wrote it when the old CSV has them.
- **Failures**: a case that fails (unreadable or missing file, not a CT, ...) is recorded with
  its error and the batch goes on; the CLI exits non-zero when any case failed.

- **Ray** (``--ray [ADDRESS]``, :mod:`spinect.batch_ray`): the same cases, resume, CSV and failure
  handling, with one model-holding actor per GPU or per group of CPUs on a local or existing Ray
  cluster (the optional ``ray`` extra).

Not built: overlapping the next case's reading with this case's inference within one process.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from spinect.errors import InputError, SpinectError
from spinect.requests import SEGMENT_BATCH_OPTIONS

__all__ = ["BatchCase", "BatchResult", "collect_cases", "run_batch", "segment_case", "CSV_NAME", "SEGMENT_OPTIONS"]

log = logging.getLogger("spinect")

#: The per-case CSV's default name in the output folder.
CSV_NAME = "segment-batch.csv"

#: :func:`spinect.api.segment` options a batch passes on to every case (outputs are the batch's own):
#: those of :class:`spinect.requests.SegmentBatchRequest`, which takes them from :class:`SegmentRequest`.
SEGMENT_OPTIONS = SEGMENT_BATCH_OPTIONS

#: Stage timings copied into the CSV (seconds), when the run has them.
_TIMED_STAGES = ("read", "network", "islands", "write")

_BASE_COLUMNS = ["case", "input", "output", "status", "error", "seconds"] + [f"{s}_s" for s in _TIMED_STAGES]


@dataclass(frozen=True)
class BatchCase:
    """One CT to segment: its id (output name stem), input file or DICOM folder, output file."""

    case_id: str
    input: Path
    output: Path


@dataclass
class BatchResult:
    """What :func:`run_batch` did: one CSV row (dict of strings) per case, in order."""

    rows: list[dict[str, str]]
    csv_path: Path
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return self.counts.get("failed", 0)


def case_id_of(path: Path) -> str:
    """``/data/ct_001.nii.gz`` -> ``ct_001``; a DICOM folder -> its name."""
    from spinect.io.atomic import full_suffix

    if path.is_dir():
        return path.name
    suffix = full_suffix(path)
    return path.name[: len(path.name) - len(suffix)] if suffix else path.name


def read_case_list(list_file: str | os.PathLike) -> list[tuple[str | None, Path]]:
    """(case id or None, input path) per row of a cases CSV.

    Columns: ``input`` (required: a CT file or DICOM folder; relative paths are relative to the
    CSV's folder) and ``case`` (optional: the output name stem; default the input's name).

    Raises:
        InputError: the file is missing or unreadable, has no ``input`` column, or lists no case.
    """
    path = Path(list_file)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"case list {path} not found; give a CSV with an 'input' column (one CT per row)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read case list {path} ({exc}); give a UTF-8 CSV with an 'input' column") from None
    reader = csv.DictReader(io.StringIO(text))
    columns = [c.strip().lower() for c in (reader.fieldnames or [])]
    if "input" not in columns:
        raise InputError(f"case list {path} has no 'input' column (columns: {', '.join(columns) or 'none'}); its first "
                         "line must name the columns, e.g. 'case,input', one CT file or DICOM folder per row after it")
    cases = []
    for row in reader:
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
        if not row.get("input"):
            continue
        source = Path(row["input"]).expanduser()
        cases.append((row.get("case") or None, source if source.is_absolute() else path.parent / source))
    if not cases:
        raise InputError(f"case list {path} lists no case (no row with an 'input' value)")
    return cases


def collect_cases(inputs: Iterable[str | os.PathLike] = (), *, list_file: str | os.PathLike | None = None,
                  out_dir: str | os.PathLike, suffix: str = ".nii.gz") -> list[BatchCase]:
    """The batch's cases from input paths and/or a case list; outputs ``OUT_DIR/<case><suffix>``.

    Raises:
        InputError: no case given, or two cases would write the same output (named).
        OutputError: an output suffix spinect cannot write.
    """
    from spinect.errors import OutputError

    if suffix not in (".nii.gz", ".nii", ".nrrd", ".seg.nrrd", ".mha"):
        raise OutputError(f"--suffix {suffix!r} is not an output format; use .nii.gz, .nii, .nrrd, .seg.nrrd or .mha")
    listed: list[tuple[str | None, Path]] = [(None, Path(p)) for p in inputs]
    if list_file is not None:
        listed += read_case_list(list_file)
    if not listed:
        raise InputError("no case to segment: give CT files or DICOM folders, or --list cases.csv")
    out = Path(out_dir)
    cases, seen = [], {}
    for case_id, source in listed:
        case_id = case_id or case_id_of(source)
        if not case_id or case_id in (".", "..") or os.sep in case_id or "/" in case_id:
            raise InputError(f"case id {case_id!r} (input {source}) cannot name an output file; give a 'case' column "
                             "with plain names in the case list")
        if case_id in seen:
            raise InputError(f"two cases are named {case_id!r} ({seen[case_id]} and {source}); their outputs would "
                             "overwrite each other. Give them distinct names in a 'case' column of a --list CSV")
        seen[case_id] = source
        cases.append(BatchCase(case_id, source, out / f"{case_id}{suffix}"))
    return cases


def _is_done(case: BatchCase) -> bool:
    from spinect.io.provenance import provenance_path

    return case.output.is_file() and provenance_path(case.output).is_file()


def _old_rows(csv_path: Path) -> dict[str, dict[str, str]]:
    try:
        with open(csv_path, newline="", encoding="utf-8") as handle:
            return {row.get("case", ""): row for row in csv.DictReader(handle)}
    except (OSError, UnicodeDecodeError, csv.Error):
        return {}


def _write_csv(csv_path: Path, rows: Sequence[dict[str, str]]) -> None:
    from spinect.io.atomic import atomic_output

    columns = list(_BASE_COLUMNS)
    for row in rows:
        columns += [k for k in row if k not in columns]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_output(csv_path) as tmp:
        tmp.write_text(text.getvalue(), encoding="utf-8")


def _row_of(case: BatchCase, status: str, seconds: float, *, error: str = "", result=None) -> dict[str, str]:
    row = {"case": case.case_id, "input": str(case.input), "output": str(case.output), "status": status,
           "error": error, "seconds": f"{seconds:.2f}"}
    if result is not None:
        row.update({f"{s}_s": f"{result.timings_s[s]:.2f}" for s in _TIMED_STAGES if s in result.timings_s})
        import SimpleITK as sitk

        voxel_mm3 = float(np.prod(result.labels.GetSpacing()))
        labels = sitk.GetArrayViewFromImage(result.labels)
        for index, name in enumerate(result.plan.label_names):
            if index > 0:
                row[f"{name}_mm3"] = f"{np.count_nonzero(labels == index) * voxel_mm3:.1f}"
        row["removed_islands"] = str(len(result.removed_islands))
    return row


def check_options(segment_options: dict) -> None:
    """Raise :class:`SpinectError` naming any option that is not a :data:`SEGMENT_OPTIONS` option."""
    unknown = sorted(set(segment_options) - set(SEGMENT_OPTIONS))
    if unknown:
        raise SpinectError(f"segment-batch does not take {', '.join(unknown)}; its options are {', '.join(SEGMENT_OPTIONS)}")


def prepare_outputs(cases: Sequence[BatchCase], csv_path: str | os.PathLike | None) -> Path:
    """Create the cases' output folders; the per-case CSV's path (default :data:`CSV_NAME` in the first folder).

    Raises:
        InputError: no case; OutputError: a folder that cannot be created.
    """
    from spinect.errors import OutputError

    if not cases:
        raise InputError("no case to segment")
    out_dirs = sorted({c.output.parent for c in cases})
    for folder in out_dirs:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create the output folder {folder} ({exc.strerror}); choose a writable folder") from exc
    return Path(csv_path) if csv_path is not None else out_dirs[0] / CSV_NAME


def skipped_row(case: BatchCase, old: dict[str, dict[str, str]]) -> dict[str, str]:
    """The CSV row of a case already written by an earlier run (keeping that run's figures)."""
    previous = old.get(case.case_id, {})
    row = {**previous, **_row_of(case, "skipped", 0.0)}
    row["seconds"] = previous.get("seconds", "")
    row["error"] = "output already written (earlier run)"
    return row


def segment_case(case: BatchCase, segment_options: dict) -> dict[str, str]:
    """Segment one case (:func:`spinect.api.segment`, atomic outputs); its CSV row, ``failed`` with the error
    when it fails (never raises for the case's own problems)."""
    from spinect.api import segment

    started = time.perf_counter()
    try:
        result = segment(case.input, case.output, overwrite=True, **segment_options)
    except SpinectError as exc:
        return _row_of(case, "failed", time.perf_counter() - started, error=str(exc))
    except Exception as exc:  # noqa: BLE001 - one bad case must not stop a cohort; the trace is logged
        log.debug("case %s failed", case.case_id, exc_info=True)
        return _row_of(case, "failed", time.perf_counter() - started, error=f"{type(exc).__name__}: {exc}")
    return _row_of(case, "ok", time.perf_counter() - started, result=result)


def log_row(number: int, total: int, row: dict[str, str]) -> None:
    log.info("[%d/%d] %s: %s%s", number, total, row["case"], row["status"],
             f" ({row['seconds']} s)" if row["status"] == "ok" else f": {row['error']}" if row["error"] else "")


def run_batch(cases: Sequence[BatchCase], *, csv_path: str | os.PathLike | None = None,
              progress: Callable[[int, int, dict[str, str]], None] | None = None, **segment_options) -> BatchResult:
    """Segment ``cases`` one after the other with one loaded model; see the module docstring.

    Args:
        cases: from :func:`collect_cases` (their output folder is created if missing).
        csv_path: the per-case CSV (default: :data:`CSV_NAME` in the first case's output folder).
        progress: optional ``progress(done, total, row)`` after each case.
        segment_options: :data:`SEGMENT_OPTIONS` of :func:`spinect.api.segment`.

    Raises:
        SpinectError: an option that is not a segment option, or an output folder that cannot be
            created; per-case errors are recorded in the CSV, not raised.
    """
    from spinect.model_file import reuse_loaded_models

    check_options(segment_options)
    csv_path = prepare_outputs(cases, csv_path)
    old = _old_rows(csv_path)
    rows: list[dict[str, str]] = []
    counts = {"ok": 0, "failed": 0, "skipped": 0}
    with reuse_loaded_models():
        for number, case in enumerate(cases, 1):
            row = skipped_row(case, old) if _is_done(case) else segment_case(case, segment_options)
            counts[row["status"]] += 1
            rows.append(row)
            _write_csv(csv_path, rows)
            log_row(number, len(cases), row)
            if progress is not None:
                progress(number, len(cases), row)
    return BatchResult(rows, csv_path, counts)
