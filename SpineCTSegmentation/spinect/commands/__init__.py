"""CLI subcommands: one module per ``spinect`` verb, each a thin layer over one API call.

Each module defines ``register(subparsers)`` which adds its parser and sets
``func=<callable(args) -> int>`` as the parser default.
"""
