"""Cohort throughput and whole-process cost: a loop of ``spinect segment`` processes vs one ``spinect segment-batch``.

Segments small phantom CTs (``spinect phantom DIR --n 4 --shape 96 160 160`` unless ``--phantoms``
gives a folder of ``*_ct.nii.gz``) with the shipped default model on the CPU, three ways, each as
the user runs it (a fresh process, wall clock):

1. serial: one ``python -m spinect segment CT OUT --device cpu --verbose`` process per case; its
   ``--verbose`` stage table gives the in-process time of the same run, so the difference is what
   a process adds (interpreter start, imports, model load, interpreter exit);
2. batch: one ``python -m spinect segment-batch CT... --out DIR --device cpu`` process;
2b. ray: the same with ``--ray`` (a local Ray instance with this machine's CPUs, one actor per
   group of up to 4 CPUs), when Ray is installed (``--no-ray`` skips it);
3. start-up alone: ``python -c pass``, ``python -c "import spinect.api, spinect.pipeline, ..."``,
   and the model load, to explain the difference.

    python benchmarks/bench_batch.py                     # 4 phantoms, 1 repeat
    python benchmarks/bench_batch.py --phantoms DIR --repeats 2

Prints Markdown tables with cases per hour and the batch / serial ratio. The machine's other load
changes the figures; the script prints the CPU and the load average before and after.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_islands import _cpu  # noqa: E402


def _run(command: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"command failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-3000:]}")
    return seconds, done.stderr


def _stage_table(stderr: str) -> dict[str, float]:
    """The ``--verbose`` stage timings of ``spinect segment`` (name -> seconds, with 'total')."""
    text = stderr.split("stage timings:", 1)[-1]
    return {m.group(1).strip(): float(m.group(2)) for m in re.finditer(r"^\s{2}(\S.*?)\s+([0-9.]+) s$", text, re.M)}


#: A child process that does what ``spinect segment`` does, with timestamps between the parts.
_CHILD = r"""
import json, sys, time
t_start = time.time()
import spinect.cli
parser = spinect.cli.build_parser()  # imports every command module, as the CLI does
t_cli = time.time()
import spinect.api, spinect.pipeline, spinect.io, spinect.inference, spinect.model_file  # what segment imports
t_imports = time.time()
from spinect.model_file import load_model, default_model_path
load_model(default_model_path(), device="cpu")
t_model = time.time()
from spinect.api import segment
first = segment(sys.argv[1], sys.argv[2], device="cpu")
t_first = time.time()
second = segment(sys.argv[1], sys.argv[2], device="cpu")
t_second = time.time()
counts = second.voxel_counts()
t_counts = time.time()
print(json.dumps(dict(start=t_start, cli=t_cli, imports=t_imports, model=t_model, first=t_first, second=t_second,
                      counts=t_counts, first_stages=sum(first.timings_s.values()),
                      second_stages=sum(second.timings_s.values()))), flush=True)
t_end = time.time()
print(t_end, flush=True)
"""


def _anatomy(python: str, ct: Path, out: Path) -> dict[str, float]:
    """Where the seconds of one whole process go (wall clock, from timestamps in a child process)."""
    import json

    spawned = time.time()
    done = subprocess.run([python, "-c", _CHILD, str(ct), str(out)], capture_output=True, text=True)
    ended = time.time()
    if done.returncode != 0:
        raise SystemExit(f"anatomy child failed:\n{done.stderr[-3000:]}")
    lines = done.stdout.strip().splitlines()
    t, t_end = json.loads(lines[-2]), float(lines[-1])
    return {
        "interpreter start (spawn to first statement)": t["start"] - spawned,
        "`import spinect.cli` + argument parser (all command modules)": t["cli"] - t["start"],
        "imports for segmenting (api, pipeline, io, inference: torch, SimpleITK, MONAI)": t["imports"] - t["cli"],
        "model load (default model, first time)": t["model"] - t["imports"],
        "first `segment()` call: in-process stages (read ... write)": t["first_stages"],
        "first `segment()` call: the rest (model load again, checks, provenance, first-call warm-up)":
            t["first"] - t["model"] - t["first_stages"],
        "second `segment()` call, same case: stages": t["second_stages"],
        "second `segment()` call: the rest": t["second"] - t["first"] - t["second_stages"],
        "`voxel_counts()` (the CLI's summary line)": t["counts"] - t["second"],
        "interpreter exit (last statement to process end)": ended - t_end,
        "whole child process (wall clock)": ended - spawned,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phantoms", type=Path, default=None, help="folder with *_ct.nii.gz (default: make 4)")
    parser.add_argument("--n", type=int, default=4, help="phantoms to make (default 4)")
    parser.add_argument("--shape", type=int, nargs=3, default=[96, 160, 160])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--no-ray", action="store_true", help="skip the `segment-batch --ray` row")
    parser.add_argument("--anatomy-only", type=Path, default=None, metavar="CT",
                        help="only time one whole process on this CT (e.g. a 512x512x300 phantom), parts inside")
    args = parser.parse_args(argv)

    python = sys.executable
    work = Path(tempfile.mkdtemp(prefix="spinect-bench-batch-"))
    if args.anatomy_only is not None:
        try:
            print(f"CPU: {_cpu()}; Python {sys.version.split()[0]}; load average before: {os.getloadavg()[0]:.2f}")
            print(f"CT: {args.anatomy_only}; device cpu; default model\n")
            anatomy = [_anatomy(python, args.anatomy_only, work / "anatomy.nii.gz") for _ in range(args.repeats)]
            print("| part of the process | seconds |")
            print("|---|---|")
            for name in anatomy[0]:
                print(f"| {name} | {statistics.median(a[name] for a in anatomy):.2f} |")
            print(f"\nload average after: {os.getloadavg()[0]:.2f}")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return 0
    try:
        phantoms = args.phantoms
        if phantoms is None:
            phantoms = work / "phantoms"
            _run([python, "-m", "spinect", "phantom", str(phantoms), "--n", str(args.n), "--shape", *map(str, args.shape)])
        cts = sorted(phantoms.glob("*_ct.nii.gz"))
        if not cts:
            raise SystemExit(f"no *_ct.nii.gz in {phantoms}")
        print(f"CPU: {_cpu()}; Python {sys.version.split()[0]}; load average before: {os.getloadavg()[0]:.2f}")
        print(f"cases: {len(cts)} phantom CTs from {phantoms}, shape (z y x) {args.shape}; device cpu; default model\n")

        anatomy = [_anatomy(python, cts[0], work / "anatomy.nii.gz") for _ in range(args.repeats)]

        import importlib.util

        with_ray = not args.no_ray and importlib.util.find_spec("ray") is not None
        serial_total, batch_total, ray_total, whole, inproc, batch_case = [], [], [], [], [], []
        for repeat in range(args.repeats):
            out = work / f"serial{repeat}"
            out.mkdir()
            started = time.perf_counter()
            for ct in cts:
                seconds, err = _run([python, "-m", "spinect", "segment", str(ct), str(out / ct.name), "--device", "cpu",
                                     "--verbose"])
                whole.append(seconds)
                inproc.append(_stage_table(err).get("total", float("nan")))
            serial_total.append(time.perf_counter() - started)
            out = work / f"batch{repeat}"
            seconds, _ = _run([python, "-m", "spinect", "segment-batch", *map(str, cts), "--out", str(out), "--device", "cpu"])
            batch_total.append(seconds)
            with open(out / "segment-batch.csv", newline="", encoding="utf-8") as handle:
                batch_case += [float(r["seconds"]) for r in csv.DictReader(handle)]
            if with_ray:
                seconds, _ = _run([python, "-m", "spinect", "segment-batch", *map(str, cts), "--out",
                                   str(work / f"ray{repeat}"), "--device", "cpu", "--ray"])
                ray_total.append(seconds)

        n = len(cts)
        serial, batch = statistics.median(serial_total), statistics.median(batch_total)
        print("| way | wall clock for the cases (s) | per case (s) | cases per hour |")
        print("|---|---|---|---|")
        print(f"| serial: {n} `spinect segment` processes | {serial:.1f} | {serial / n:.2f} | {3600 * n / serial:.0f} |")
        print(f"| batch: one `spinect segment-batch` process | {batch:.1f} | {batch / n:.2f} | {3600 * n / batch:.0f} |")
        if ray_total:
            on_ray = statistics.median(ray_total)
            print(f"| ray: one `spinect segment-batch --ray` process (local Ray instance, {os.cpu_count()} CPUs) | "
                  f"{on_ray:.1f} | {on_ray / n:.2f} | {3600 * n / on_ray:.0f} |")
        else:
            print("| ray: not run (Ray not installed, or --no-ray) | | | |")
        print(f"\nbatch / serial throughput: **{serial / batch:.2f}×** (median of {args.repeats} repeat(s))\n")
        print("| per case | median (s) |")
        print("|---|---|")
        print(f"| `spinect segment` as a whole process (wall clock) | {statistics.median(whole):.2f} |")
        print(f"| the same runs in-process (`--verbose` stage total: read ... write) | {statistics.median(inproc):.2f} |")
        print(f"| difference: what the process adds | {statistics.median(whole) - statistics.median(inproc):.2f} |")
        print(f"| a case inside `segment-batch` (CSV `seconds`, model already loaded) | {statistics.median(batch_case):.2f} |")
        print("\nOne `spinect segment`-like process, timed inside (median of the repeats; the first case):\n")
        print("| part of the process | seconds |")
        print("|---|---|")
        for name in anatomy[0]:
            print(f"| {name} | {statistics.median(a[name] for a in anatomy):.2f} |")
        print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work folder kept: {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
