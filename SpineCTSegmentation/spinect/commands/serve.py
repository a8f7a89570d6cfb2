"""``spinect serve``: a JSON-lines worker on stdin/stdout (see :mod:`spinect.serve`).

Only sets up the streams and calls :func:`spinect.api.serve`. The protocol gets the original
stdout; anything else written to stdout (a library's print, C code writing to file descriptor 1)
goes to stderr, so it cannot break a JSON line.
"""

from __future__ import annotations

import argparse
import io
import os
import sys

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``serve`` verb to the ``spinect`` parser."""
    p = subparsers.add_parser(
        "serve",
        help="long-lived worker: JSON-lines requests on stdin, answers on stdout (Slicer uses it)",
        description=(
            "Answer JSON-lines requests (open_triangles, measure, optimize, close, segment, cancel, ping, "
            "shutdown) on stdin with one JSON line each on stdout, keeping triangle sessions open and models "
            "loaded between requests. Errors are answered, never fatal. Stop it with a shutdown request, by "
            "closing stdin, or by killing its process group. See docs/triangles.md."
        ),
    )
    p.add_argument("--idle-exit", type=float, default=None, metavar="S", dest="idle_exit_s",
                   help="exit when no request came for S seconds (default: serve until shutdown or end of input)")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages (stderr)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spinect.api import serve

    if args.idle_exit_s is not None and not args.idle_exit_s > 0:  # before the streams are rearranged
        from spinect.errors import InputError

        raise InputError(f"--idle-exit must be > 0 seconds, got {args.idle_exit_s}")

    sys.stdout.flush()
    try:
        protocol_fd = os.dup(1)
        os.dup2(2, 1)  # fd 1 (C code, subprocesses) now goes to stderr
        protocol = io.TextIOWrapper(os.fdopen(protocol_fd, "wb", buffering=0), encoding="utf-8", line_buffering=True,
                                    write_through=True)
    except (OSError, ValueError):  # no real file descriptors (embedded interpreter): use the stream
        protocol = sys.stdout
    previous_stdout = sys.stdout
    sys.stdout = sys.stderr  # Python-level prints go to stderr too
    try:
        stdin = _FdLines(sys.stdin.fileno())
    except (OSError, ValueError, AttributeError):
        stdin = sys.stdin
    try:
        return serve(stdin, protocol, idle_exit_s=args.idle_exit_s)
    finally:
        sys.stdout = previous_stdout


class _FdLines:
    """Lines of a file descriptor read with ``os.read`` (no buffered reader: the reading thread,
    still blocked in it when the worker exits on idle, holds no lock the interpreter's shutdown
    needs)."""

    def __init__(self, fd: int):
        self.fd = fd
        os.fstat(fd)  # raises OSError for a closed descriptor

    def __iter__(self):
        pending = b""
        while True:
            chunk = os.read(self.fd, 65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.decode("utf-8", errors="replace")
        if pending:
            yield pending.decode("utf-8", errors="replace")
