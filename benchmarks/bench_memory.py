"""Peak memory of ``spinect segment`` as a whole process, against the CT's slice count.

Issue 17: the peak resident memory of ``spinect segment big.nii.gz out.nii.gz --device cpu`` grew
by about 13 bytes per input voxel and passed 2 GB beyond 512 x 512 x 334; it must stay at or
below 2 GB up to 512 x 512 x 600 (0.7 x 0.7 x 1.0 mm). For each ``--slices`` count this script
makes a phantom CT of 512 x 512 x N voxels (``spinect.phantom.generate_case``, seed ``--seed``,
int16 HU, written as ``.nii.gz`` the way a user hands one to the command; not timed, cached in
``--inputs`` when given), then runs ``spinect segment CT OUT.nii.gz --device cpu`` in a fresh
Python process with the shipped default model and reports its peak resident memory (``VmHWM`` of
``/proc/self/status``, read as the command returns: the whole process, imports, model, read ->
write). The child also records ``VmHWM`` and ``VmRSS`` at the end of each pipeline stage, which
shows the stage that sets the peak, and the stage times (shared CPU: times are indicative;
memory figures do not depend on the load). Fitting peak = a + b * voxels over the slice counts
gives the bytes per input voxel.

    python benchmarks/bench_memory.py                         # 300 and 600 slices
    python benchmarks/bench_memory.py --slices 300 450 600 --inputs /tmp/ct --labels-hash

Prints a Markdown table (and the machine: CPU model, flags, the precision the network ran in).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "SpineCTSegmentation"))

#: The child: ``spinect segment`` (the CLI's own ``main``) with VmHWM / VmRSS noted after every stage.
CHILD = r"""
import json, sys, time
started = time.perf_counter()
def status():
    values = {}
    with open('/proc/self/status') as f:
        for line in f:
            key, _, rest = line.partition(':')
            if key in ('VmHWM', 'VmRSS'):
                values[key] = int(rest.split()[0]) / 1024
    return values
from spinect import profiling
stages = []
_stage = profiling.StageTimer.stage
import contextlib
@contextlib.contextmanager
def stage(self, name):
    stages.append(dict(stage=name + ' (start)', **status()))
    with _stage(self, name):
        yield
    stages.append(dict(stage=name, **status()))
profiling.StageTimer.stage = stage
timers = []
_init = profiling.StageTimer.__init__
def init(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    timers.append(self)
profiling.StageTimer.__init__ = init
from spinect.cli import main
code = main(sys.argv[2:])
report = dict(code=code, wall_s=time.perf_counter() - started, stages=stages,
              timings_s=dict(timers[0].seconds) if timers else {}, **status())
with open(sys.argv[1], 'w') as f:
    json.dump(report, f)
sys.exit(code)
"""


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, nargs="+", default=[300, 600], help="slice counts (default 300 600)")
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("Y", "X"),
                        help="in-plane voxels (default 512 512)")
    parser.add_argument("--spacing", type=float, nargs=3, default=(1.0, 0.7, 0.7), metavar=("Z", "Y", "X"),
                        help="voxel size in mm (default 1.0 0.7 0.7)")
    parser.add_argument("--seed", type=int, default=0, help="phantom case seed")
    parser.add_argument("--model", help="model file (.pt); default: the shipped default model")
    parser.add_argument("--device", default="cpu", help="device for the command (default cpu)")
    parser.add_argument("--inputs", help="folder to keep the phantom CTs in (reused when present)")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="further options for `spinect segment` (last on the line)")
    parser.add_argument("--outputs", help="keep the label files in this folder (default: a temporary folder)")
    parser.add_argument("--labels-hash", action="store_true",
                        help="print the sha256 of each output's label voxels (to compare code versions)")
    parser.add_argument("--json", help="also write the measurements as JSON here")
    return parser.parse_args(argv)


def phantom_ct(folder: Path, slices: int, size_yx, spacing_zyx, seed: int) -> Path:
    """The phantom CT of ``slices`` x ``size_yx`` voxels as ``.nii.gz`` in ``folder`` (made once)."""
    path = folder / f"phantom_seed{seed}_{slices}x{size_yx[0]}x{size_yx[1]}.nii.gz"
    if path.exists():
        return path
    import SimpleITK as sitk

    from spinect.phantom import generate_case

    print(f"making phantom CT {slices}x{size_yx[0]}x{size_yx[1]} (z y x) ...", flush=True)
    case = generate_case(seed, shape_zyx=(slices, *size_yx), spacing_zyx_mm=spacing_zyx)
    ct = case.ct if case.ct.GetPixelID() == sitk.sitkInt16 else sitk.Cast(case.ct, sitk.sitkInt16)
    partial = path.with_name(path.name + ".part.nii.gz")
    sitk.WriteImage(ct, str(partial), True)
    partial.replace(path)
    return path


def run_segment(ct: Path, out: Path, args) -> dict:
    """``spinect segment CT OUT --device D --verbose`` in a fresh interpreter; its memory report."""
    command = ["segment", str(ct), str(out), "--device", args.device, "--verbose"]
    if args.model:
        command += ["--model", args.model]
    command += list(args.extra)
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        report_path = Path(handle.name)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, str(report_path), *command], capture_output=True, text=True)
    process_s = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"spinect segment failed ({done.returncode}):\n{done.stderr[-3000:]}")
    report = json.loads(report_path.read_text())
    report_path.unlink()
    report["process_s"] = process_s
    return report


def labels_hash(path: Path) -> str:
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))  # held while its voxels are viewed
    return hashlib.sha256(sitk.GetArrayViewFromImage(image).tobytes()).hexdigest()[:16]


def machine() -> dict:
    import torch

    from spinect.inference.device import autocast_dtype

    flags = set()
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    dtype = autocast_dtype(torch.device("cpu"), None)
    return {"cpu": model, "cpu_flags": ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
                                                 if f in flags) or "n/a",
            "logical_cpus": os.cpu_count(), "precision": "float32" if dtype is None else str(dtype).replace("torch.", ""),
            "torch": torch.__version__, "python": platform.python_version()}


def fit(rows: list[dict]) -> tuple[float, float] | None:
    """(MiB at zero voxels, bytes per input voxel) of the line through the rows' peaks."""
    points = sorted((r["voxels"], r["VmHWM"] * 2**20) for r in rows)
    if len(points) < 2 or points[0][0] == points[-1][0]:
        return None
    (v0, p0), (v1, p1) = points[0], points[-1]
    slope = (p1 - p0) / (v1 - v0)
    return (p0 - slope * v0) / 2**20, slope


def render(rows: list[dict], info: dict, args) -> str:
    lines = [f"CPU: {info['cpu']} ({info['cpu_flags']}), {info['logical_cpus']} logical CPUs; network precision on "
             f"this CPU: {info['precision']}; torch {info['torch']}, Python {info['python']}; device {args.device}",
             "",
             "| CT (x×y×z voxels) | input voxels | peak RSS, whole process | peak set during | ≤ 2 GB | "
             "process wall clock (s) | labels sha256 |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        peak_stage = next((s["stage"] for s in r["stages"] if s["VmHWM"] >= r["VmHWM"] - 1), "after the stages")
        if peak_stage.endswith(" (start)"):  # set between the end of one stage and the start of this one
            peak_stage = "before " + peak_stage[: -len(" (start)")]
        lines.append(f"| {r['size_xyz']} | {r['voxels'] / 1e6:.1f} M | {r['VmHWM']:.0f} MiB ({r['VmHWM'] * 2**20 / 1e9:.2f} GB) "
                     f"| {peak_stage} | {'yes' if r['VmHWM'] * 2**20 <= 2e9 else '**no**'} | {r['process_s']:.1f} | "
                     f"{r.get('labels_sha256', '–')} |")
    line = fit(rows)
    if line:
        lines += ["", f"Fit: peak ≈ {line[0]:.0f} MiB + {line[1]:.2f} bytes per input voxel."]
    for r in rows:
        lines += ["", f"Stages of {r['size_xyz']} (MiB after each stage: peak so far / resident):", "",
                  "| stage | peak so far | resident |", "|---|---|---|"]
        lines += [f"| {s['stage']} | {s['VmHWM']:.0f} | {s['VmRSS']:.0f} |" for s in r["stages"]]
    return "\n".join(lines)


def main(argv=None) -> None:
    args = _parse_args(argv)
    info = machine()
    rows = []
    with tempfile.TemporaryDirectory(prefix="spinect-mem-") as tmp:
        folder = Path(args.inputs) if args.inputs else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for slices in args.slices:
            ct = phantom_ct(folder, slices, args.size, args.spacing, args.seed)
            out = Path(args.outputs or tmp) / f"labels_{slices}.nii.gz"
            print(f"spinect segment {ct.name} ...", flush=True)
            report = run_segment(ct, out, args)
            report["slices"] = slices
            report["voxels"] = slices * args.size[0] * args.size[1]
            report["size_xyz"] = f"{args.size[1]}×{args.size[0]}×{slices}"
            if args.labels_hash:
                report["labels_sha256"] = labels_hash(out)
            print(f"  peak {report['VmHWM']:.0f} MiB, {report['process_s']:.1f} s", flush=True)
            rows.append(report)
    text = render(rows, info, args)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
