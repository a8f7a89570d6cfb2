"""Triangle measurement latency: a TriangleSession held open against one process per request.

Issue 16: each view change or point move in Slicer starts ``PythonSlicer -m spinect triangles``,
which re-imports, re-reads the label map and rebuilds the distance fields. This script times, on
one phantom case (1 mm, 300 x 300 x 200 voxels, written to disk as the Slicer module writes it):

* the session path (in this process, as a long-lived worker would run it): time to open a
  session and get the first measurement, then the median time per view change (θ, φ) and per
  point move (B dragged by 0.5-2 mm), and Optimize (the default search, 2.5° steps, with the
  CT; its first call also builds the large crop that reaches the skin);
* the worker path: the same requests as JSON lines through ``spinect serve`` with the module's
  client (``SpineCTSegmentationLib.worker.WorkerClient``, what Slicer uses): worker start,
  ``open_triangles`` + the first ``measure``, then one ``measure`` per view change and point move
  (each sent and waited for, as the widget's scheduler runs one at a time), and ``optimize``;
* the old path, in the same run: ``python -m spinect triangles ...`` as a subprocess per request
  (the same views and moves; Optimize once).

for points mode (no level map: the frame from the bone through B and C), seed mode and auto mode
(with the level map; auto mode on the primitive phantom, the others on phantom v2). Both paths give the same numbers (checked here for every request; a test
checks it bit for bit, Testing/test_triangle_session.py).

    python benchmarks/bench_triangle_latency.py                  # all modes, 8 views, 8 moves
    python benchmarks/bench_triangle_latency.py --modes points --views 4 --moves 4 --old-runs 2
    python benchmarks/bench_triangle_latency.py --no-optimize

Prints a Markdown table (wall-clock seconds) and the machine's CPU, core count and load average
before and after: on a shared machine the figures are noisy, so compare rows of one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BACKEND = HERE.parent / "SpineCTSegmentation"
sys.path.insert(0, str(BACKEND))

from spinect.profiling import cpu_model_name  # noqa: E402

VIEWS = [(0.0, 0.0), (30.0, 0.0), (45.0, -10.0), (20.0, 15.0), (10.0, 5.0), (35.0, -5.0), (50.0, 10.0), (25.0, -15.0)]
MOVES_MM = [(0.5, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.5), (-1.0, 0.5, 0.0), (1.0, 1.0, 0.5), (-0.5, -1.0, 1.0),
            (2.0, 0.0, -0.5), (0.0, -2.0, 0.0)]


def moved_target(mode: str, target: dict, pts, seed, offset) -> dict:
    """``target`` with vertex B (points mode) or the seed moved by ``offset`` (mm, LPS)."""
    moved = dict(target)
    if mode == "points":
        p = pts.copy()
        p[1] += offset
        moved["points_lps_mm"] = p
    else:
        moved["seed_lps_mm"] = seed + np.asarray(offset)
    return moved


def load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def write_case(folder: Path, seed: int, anatomy: str = "mesh"):
    import SimpleITK as sitk

    from spinect import phantom

    folder.mkdir(parents=True, exist_ok=True)
    case = phantom.generate_case(phantom.case_seed(seed, 0), window_tables=False, anatomy=anatomy)
    files = {name: folder / f"{name}.nrrd" for name in ("labels", "ct", "structures")}
    sitk.WriteImage(case.labels, str(files["labels"]))
    sitk.WriteImage(case.ct, str(files["ct"]))
    sitk.WriteImage(case.structures, str(files["structures"]))
    return case, files


def request(mode: str, pts: np.ndarray, seed: np.ndarray, files: dict) -> dict:
    """Session keyword arguments and CLI arguments of one mode."""
    if mode == "points":
        return dict(session=dict(points_lps_mm=pts), open=dict(around_lps_mm=pts),
                    cli=["--points", *map(str, pts.ravel())])
    if mode == "seed":
        return dict(session=dict(seed_lps_mm=seed), open=dict(around_lps_mm=seed, structures=files["structures"]),
                    cli=["--seed", *map(str, seed), "--structures", str(files["structures"])])
    return dict(session={}, open=dict(auto=True, structures=files["structures"]),
                cli=["--auto", "--structures", str(files["structures"])])


def run_cli(files: dict, out: Path, mode_args: list[str], theta: float, phi: float, *, optimize: bool = False) -> tuple[float, dict]:
    command = [sys.executable, "-m", "spinect", "triangles", str(files["labels"]), "--level", "L5S1", "--side", "left",
               *mode_args, "--theta", str(theta), "--phi", str(phi), "--json", str(out), "--progress-lines"]
    if optimize:
        command += ["--optimize", "--ct", str(files["ct"])]
    env = dict(os.environ, PYTHONPATH=str(BACKEND))
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"spinect triangles failed: {done.stderr[-1500:]}")
    return elapsed, json.loads(out.read_text())


def same(a: dict, b: dict) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def worker_args(mode: str, req: dict, theta: float, phi: float) -> dict:
    """A ``measure`` request's args for the session keyword arguments of one mode."""
    args = {"mode": mode, "theta_deg": theta, "phi_deg": phi}
    if "points_lps_mm" in req:
        args["points"] = np.asarray(req["points_lps_mm"], float).tolist()
    if "seed_lps_mm" in req:
        args["seed"] = np.asarray(req["seed_lps_mm"], float).tolist()
    return args


def bench_worker(mode: str, req: dict, files: dict, folder: Path, views, moves, pts, seed, args, expected) -> dict:
    """Times through ``spinect serve`` with the module's client; checks the numbers against the session's."""
    from SpineCTSegmentationLib.worker import WorkerClient

    client = WorkerClient(python_executable=sys.executable, base_env=dict(os.environ), backend_dir=BACKEND, cwd=folder,
                          idle_exit_s=None)
    try:
        t = time.perf_counter()
        client.call("ping", timeout_s=600)
        start_s = time.perf_counter() - t
        open_args = {"seg": str(files["labels"]), "level": "L5S1", "side": "left", "ct": str(files["ct"])}
        for key, value in req["open"].items():
            name = {"around_lps_mm": "around"}.get(key, key)
            open_args[name] = np.asarray(value, float).tolist() if key == "around_lps_mm" else (
                value if isinstance(value, bool) else str(value))
        t = time.perf_counter()
        client.call("open_triangles", open_args, session="bench", timeout_s=600)
        first = client.call("measure", worker_args(mode, req["session"], *views[0]), session="bench", timeout_s=600)
        open_s = time.perf_counter() - t
        checked = int(same(first["measurement"], expected[0]))
        view_s = []
        for k, (theta, phi) in enumerate(views[1:], start=1):
            t = time.perf_counter()
            got = client.call("measure", worker_args(mode, req["session"], theta, phi), session="bench", timeout_s=600)
            view_s.append(time.perf_counter() - t)
            checked += same(got["measurement"], expected[k])
        move_s = []
        if mode != "auto":
            for offset in moves:
                moved = moved_target(mode, req["session"], pts, seed, offset)
                t = time.perf_counter()
                client.call("measure", worker_args(mode, moved, 30.0, 0.0), session="bench", timeout_s=600)
                move_s.append(time.perf_counter() - t)
        optimize_s = None
        if not args.no_optimize and mode == "points":
            time.sleep(args.pause_before_optimize)  # the user reads the readout before clicking Optimize
            t = time.perf_counter()
            client.call("optimize", worker_args(mode, req["session"], 0.0, 0.0), session="bench", timeout_s=600)
            optimize_s = time.perf_counter() - t
    finally:
        client.stop()
    print(f"# {mode}: worker == session numbers in {checked}/{len(views)} views", file=sys.stderr)
    return dict(start_s=start_s, open_s=open_s, view_s=view_s, move_s=move_s, optimize_s=optimize_s)


def bench_mode(mode: str, case, files: dict, folder: Path, args) -> list[tuple[str, ...]]:
    from spinect.geometry.session import TriangleSession

    entry = case.truth["levels"]["L5S1"]["left"]["kambin"]
    pts = np.array(list(entry["points_lps_mm"].values()), float)
    seed = pts.mean(axis=0)
    req = request(mode, pts, seed, files)
    views = VIEWS[: args.views]
    rows = []

    # --- session path
    start = time.perf_counter()
    session = TriangleSession.open(files["labels"], level="L5S1", side="left", ct=files["ct"], **req["open"])
    first = session.measure(mode, theta_deg=views[0][0], phi_deg=views[0][1], **req["session"])
    open_s = time.perf_counter() - start
    view_s, results = [], [first]
    for theta, phi in views[1:]:
        t = time.perf_counter()
        results.append(session.measure(mode, theta_deg=theta, phi_deg=phi, **req["session"]))
        view_s.append(time.perf_counter() - t)
    move_s = []
    if mode != "auto":
        for offset in MOVES_MM[: args.moves]:
            moved = moved_target(mode, req["session"], pts, seed, offset)
            t = time.perf_counter()
            session.measure(mode, theta_deg=30.0, phi_deg=0.0, **moved)
            move_s.append(time.perf_counter() - t)
    optimize_s = None
    if not args.no_optimize and mode == "points":
        t = time.perf_counter()
        session.optimize(mode, **req["session"])
        optimize_first_s = time.perf_counter() - t
        t = time.perf_counter()
        trajectory = session.optimize(mode, **req["session"])
        optimize_s = (optimize_first_s, time.perf_counter() - t)

    # --- through the worker, as the Slicer module runs it
    expected = [json.loads(json.dumps(r.to_dict()))["measurement"] for r in results]
    worker = bench_worker(mode, req, files, folder, views, MOVES_MM[: args.moves] if mode != "auto" else [], pts, seed,
                          args, expected)

    # --- one process per request
    old_view_s, checked = [], 0
    for k, (theta, phi) in enumerate(views[: args.old_runs]):
        elapsed, report = run_cli(files, folder / f"{mode}_{k}.json", req["cli"], theta, phi)
        old_view_s.append(elapsed)
        checked += same(report["measurement"], json.loads(json.dumps(results[k].to_dict()))["measurement"])
    old_opt = None
    if not args.no_optimize and mode == "points":
        old_opt, report = run_cli(files, folder / f"{mode}_opt.json", req["cli"], 0.0, 0.0, optimize=True)
        assert report["trajectory"]["theta_deg"] == trajectory.theta_deg and report["trajectory"]["phi_deg"] == trajectory.phi_deg

    med = lambda xs: f"{statistics.median(xs):.3f}" if xs else "-"  # noqa: E731
    old_med = statistics.median(old_view_s) if old_view_s else float("nan")

    def speedup(xs) -> str:
        return f" (x{old_med / statistics.median(xs):.0f})" if xs and old_view_s else ""

    rows.append((mode, "worker start (python -m spinect serve, ready line)", "-", f"{worker['start_s']:.2f}", "-"))
    rows.append((mode, "open + first measurement", f"{open_s:.2f}", f"{worker['open_s']:.2f}",
                 f"{old_view_s[0]:.2f}" if old_view_s else "-"))
    rows.append((mode, f"view change (median of {len(view_s)})", med(view_s) + speedup(view_s),
                 med(worker["view_s"]) + speedup(worker["view_s"]), f"{old_med:.2f}" if old_view_s else "-"))
    if move_s:
        rows.append((mode, f"point move (median of {len(move_s)})", med(move_s) + speedup(move_s),
                     med(worker["move_s"]) + speedup(worker["move_s"]), f"{old_med:.2f}" if old_view_s else "-"))
    if optimize_s is not None:
        rows.append((mode, "Optimize, first (session: builds the 110 mm crop; worker: clicked "
                     f"{args.pause_before_optimize:g} s after the last move, crop built in the background)",
                     f"{optimize_s[0]:.2f}", f"{worker['optimize_s']:.2f}", f"{old_opt:.2f}"))
        rows.append((mode, "Optimize, again (crop held)", f"{optimize_s[1]:.2f}", "-", "-"))
    print(f"# {mode}: session fields built {session.fields_built}x; session == CLI numbers in {checked}/{len(old_view_s)} "
          f"requests", file=sys.stderr)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", default=["points", "seed", "auto"], choices=["points", "seed", "auto"])
    parser.add_argument("--views", type=int, default=8, help="views per mode on the session (max 8)")
    parser.add_argument("--moves", type=int, default=8, help="point moves per mode on the session (max 8)")
    parser.add_argument("--old-runs", type=int, default=3, help="subprocess runs per mode (the first views)")
    parser.add_argument("--no-optimize", action="store_true")
    parser.add_argument("--pause-before-optimize", type=float, default=5.0,
                        help="seconds between the last point move and Optimize on the worker path (the user "
                             "reading the readout; the worker builds the 110 mm crop in the background after "
                             "a 1 s pause); 0 clicks at once")
    parser.add_argument("--case", type=int, default=0, help="phantom case seed")
    args = parser.parse_args()

    print(f"CPU: {cpu_model_name()}; {os.cpu_count()} logical cores; Python {platform.python_version()}; "
          f"load average before: {load()}")
    with tempfile.TemporaryDirectory(prefix="bench_triangles-") as tmp:
        folder = Path(tmp)
        rows = []
        for mode in args.modes:
            # automatic vertices are tuned on the primitive skeleton (docs/triangles.md, known limits)
            anatomy = "primitive" if mode == "auto" else "mesh"
            case, files = write_case(folder / anatomy, args.case, anatomy)
            rows += bench_mode(mode, case, files, folder / anatomy, args)
    print()
    print("| mode | step | session, in process (s) | worker protocol (s) | one process per request (s) |")
    print("|---|---|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nload average after: {load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
