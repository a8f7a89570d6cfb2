"""Cohorts on Ray: ``spinect segment-batch ... --ray [ADDRESS]``.

The same cases, resume, per-case CSV and failure handling as :func:`spinect.batch.run_batch`, spread
over Ray actors:

- **Cluster**: without an address (``--ray``), a local Ray instance is started with the machine's
  CPUs (and GPUs) and shut down at the end; with one (``--ray auto``, ``--ray HOST:6379``,
  ``--ray ray://HOST:10001``), the driver connects to that cluster and disconnects at the end.
  When Ray is already initialised in the calling process, that session is used and left open.
- **Actors**: one per GPU when the cluster has GPUs and ``device`` allows CUDA (``auto``, ``cuda``,
  ``cuda:N``); otherwise one per group of ``cpus_per_actor`` CPUs (default: 4, at most the
  cluster's CPUs). Each actor keeps its loaded model for every case it is given
  (:func:`spinect.model_file.reuse_loaded_models`), and runs PyTorch with its group's threads.
  Cases go to whichever actor is free; an actor that dies (out of memory, node lost) fails its
  case, with the reason in the CSV, and is replaced.
- **Resume and outputs**: cases already written (output and provenance sidecar) are skipped by the
  driver and never sent; each actor writes its outputs atomically (:mod:`spinect.io.atomic`) to the
  cases' output paths, so on a multi-machine cluster the inputs and the output folder must be on a
  file system every node sees. The driver writes the CSV (rows in case order, rewritten atomically
  after every case), with the same columns as the serial path.

Ray is optional (``pip install 'spinect[ray]'``); ``import spinect`` never imports it.
"""

from __future__ import annotations

import contextvars
import logging
import os
from typing import Callable, Sequence

from spinect.batch import (BatchCase, BatchResult, _is_done, _old_rows, _row_of, _write_csv, check_options, log_row,
                           prepare_outputs, segment_case, skipped_row)
from spinect.errors import SpinectError

__all__ = ["run_batch_ray", "import_ray", "DEFAULT_CPUS_PER_ACTOR"]

log = logging.getLogger("spinect")

#: CPUs per actor on a cluster without GPUs (PyTorch's convolutions scale well up to about this many threads).
DEFAULT_CPUS_PER_ACTOR = 4

#: Spellings of "start a local Ray instance" (``--ray`` without an address gives the first).
LOCAL = ("local", "")


def import_ray():
    """The ``ray`` module, or a :class:`SpinectError` that names the fix when it is not installed."""
    try:
        import ray
    except ImportError as exc:
        raise SpinectError(f"--ray needs the Ray package, which is not installed here ({exc}). Install it with "
                           "`pip install 'spinect[ray]'` (or `pip install ray`), or run segment-batch without --ray "
                           "(one process on this machine)") from None
    return ray


class _Segmenter:
    """Ray actor body: segments the cases it is given with one loaded model (kept between cases)."""

    def __init__(self, segment_options: dict, threads: int | None) -> None:
        from spinect.model_file import reuse_loaded_models

        if threads:
            import torch

            torch.set_num_threads(int(threads))
        logging.getLogger("spinect").setLevel(logging.WARNING)
        self.options = dict(segment_options)
        # Every call runs in this one context, where the model cache of reuse_loaded_models stays open.
        self.context = contextvars.Context()
        self.models = reuse_loaded_models()
        self.context.run(self.models.__enter__)

    def segment(self, case: BatchCase) -> dict[str, str]:
        return self.context.run(segment_case, case, self.options)

    def pid(self) -> int:
        return os.getpid()


def _wants_gpu(segment_options: dict) -> bool:
    device = str(segment_options.get("device") or "auto").lower()
    return device == "auto" or device.startswith("cuda")


def run_batch_ray(cases: Sequence[BatchCase], *, address: str | None = None, csv_path: str | os.PathLike | None = None,
                  progress: Callable[[int, int, dict[str, str]], None] | None = None,
                  cpus_per_actor: int | None = None, num_cpus: int | None = None,
                  **segment_options) -> BatchResult:
    """Segment ``cases`` on Ray actors; see the module docstring.

    Args:
        cases: from :func:`spinect.batch.collect_cases`.
        address: None or ``"local"``: start a local Ray instance; otherwise a cluster address for
            ``ray.init`` (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``).
        csv_path, progress, segment_options: as :func:`spinect.batch.run_batch`.
        cpus_per_actor: CPUs per actor without GPUs (default :data:`DEFAULT_CPUS_PER_ACTOR`, at most
            the cluster's CPUs).
        num_cpus: CPUs of a local instance (default: this machine's).

    Raises:
        SpinectError: Ray not installed, the cluster not reachable, a bad option or output folder;
            per-case errors are recorded in the CSV, not raised.
    """
    check_options(segment_options)
    if cpus_per_actor is not None and int(cpus_per_actor) < 1:
        raise SpinectError(f"--ray-cpus-per-actor must be at least 1, got {cpus_per_actor}")
    csv_path = prepare_outputs(cases, csv_path)
    ray = import_ray()
    old = _old_rows(csv_path)
    rows: list[dict[str, str] | None] = [None] * len(cases)
    counts = {"ok": 0, "failed": 0, "skipped": 0}
    done = 0

    def record(index: int, row: dict[str, str]) -> None:
        nonlocal done
        rows[index] = row
        counts[row["status"]] += 1
        done += 1
        _write_csv(csv_path, [r for r in rows if r is not None])
        log_row(done, len(cases), row)
        if progress is not None:
            progress(done, len(cases), row)

    todo = []
    for index, case in enumerate(cases):
        if _is_done(case):
            record(index, skipped_row(case, old))
        else:
            todo.append(index)
    if not todo:
        return BatchResult([r for r in rows if r is not None], csv_path, counts)

    started_here = not ray.is_initialized()
    if started_here:
        _init(ray, address, num_cpus)
    try:
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
        if gpus and _wants_gpu(segment_options):
            count, options, threads = gpus, {"num_gpus": 1, "num_cpus": 1}, None
        else:
            group = min(int(cpus_per_actor or DEFAULT_CPUS_PER_ACTOR), cpus)
            count, options, threads = max(1, cpus // group), {"num_cpus": group}, group
        count = min(count, len(todo))
        actor_class = ray.remote(**options)(_Segmenter)
        log.info("segment-batch on Ray: %d actor(s) (%s) for %d case(s); cluster: %s", count, options, len(todo),
                 {k: resources[k] for k in ("CPU", "GPU") if k in resources})
        actors = [actor_class.remote(segment_options, threads) for _ in range(count)]
        waiting = list(todo)
        running: dict = {}  # object ref -> (actor, case index)

        def submit(actor) -> None:
            index = waiting.pop(0)
            running[actor.segment.remote(cases[index])] = (actor, index)

        for actor in actors:
            if waiting:
                submit(actor)
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            actor, index = running.pop(ready[0])
            try:
                row = ray.get(ready[0])
            except ray.exceptions.RayError as exc:  # the actor died (killed, out of memory, node lost)
                row = _row_of(cases[index], "failed", 0.0, error=f"Ray worker failed: {type(exc).__name__}: {exc}")
                ray.kill(actor, no_restart=True)
                actor = actor_class.remote(segment_options, threads)
            record(index, row)
            if waiting:
                submit(actor)
    finally:
        if started_here:
            ray.shutdown()
    return BatchResult([r for r in rows if r is not None], csv_path, counts)


def _init(ray, address: str | None, num_cpus: int | None) -> None:
    """Start a local Ray instance (``address`` None or ``local``) or connect to a cluster; clear errors."""
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING,
             "configure_logging": False}
    try:
        if address is None or address.strip().lower() in LOCAL:
            ray.init(num_cpus=int(num_cpus or os.cpu_count() or 1), **quiet)
        else:
            ray.init(address=address, **{k: v for k, v in quiet.items() if k != "include_dashboard"})
    except ConnectionError as exc:
        raise SpinectError(f"cannot connect to the Ray cluster at {address!r} ({exc}); start it first (`ray start "
                           "--head` on its head node) and give its address (HOST:6379, ray://HOST:10001 or auto), "
                           "or give --ray without an address to start a local one") from None
    except Exception as exc:  # noqa: BLE001 - Ray raises many kinds; name the step that failed
        where = "start a local Ray instance" if address is None or address.strip().lower() in LOCAL else \
            f"connect to the Ray cluster at {address!r}"
        raise SpinectError(f"could not {where}: {type(exc).__name__}: {exc}") from None

