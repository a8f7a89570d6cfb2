"""``spinect`` command line: parses arguments and calls the API, nothing more.

User-facing errors (:class:`spinect.errors.SpinectError`) print one clear message and exit
with a non-zero code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
from typing import Sequence

from spinect import __version__
from spinect.errors import SpinectError

__all__ = ["main", "build_parser"]

#: Subcommand modules under ``spinect.commands``, in the order ``--help`` lists them.
_COMMANDS = ("segment", "segment_batch", "phantom", "train", "evaluate", "triangles", "report", "serve")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spinect",
        description="Lumbosacral bone and nerve segmentation on CT (SPINECT 3D U-Net).",
    )
    parser.add_argument("--version", action="version", version=f"spinect {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMANDS:
        try:
            module = importlib.import_module(f"spinect.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"spinect.commands.{name}":
                continue  # verb not built yet
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    previous = _terminate_like_interrupt()
    try:
        return int(args.func(args) or 0)
    except SpinectError as exc:
        print(f"spinect {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Terminated:
        print(f"spinect {args.command}: terminated (SIGTERM); no output was written", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"spinect {args.command}: interrupted; no output was written", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class Terminated(BaseException):
    """SIGTERM arrived (Slicer's Cancel sends it): unwinds like Ctrl-C, so temporary files go."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def _terminate_like_interrupt():
    """Turn SIGTERM into an exception (only possible in the main thread); returns the old handler."""
    try:
        return signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread (e.g. called from a worker in Slicer)
        return None


if __name__ == "__main__":
    sys.exit(main())
