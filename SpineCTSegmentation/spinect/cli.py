"""``spinect`` command line: parses arguments and calls the API, nothing more.

User-facing errors (:class:`spinect.errors.SpinectError`) print one clear message and exit
with a non-zero code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from spinect import __version__
from spinect.errors import SpinectError

__all__ = ["main", "build_parser"]

#: Subcommand modules under ``spinect.commands``, in the order ``--help`` lists them.
_COMMANDS = ("segment", "phantom", "train", "evaluate", "triangles")


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
    try:
        return int(args.func(args) or 0)
    except SpinectError as exc:
        print(f"spinect {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"spinect {args.command}: interrupted; no output was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
