"""The ``bmcd`` command line (docs/cli.rst).

The CLI only parses arguments, calls the library, prints and maps errors to exit
statuses. Each command group is a module with ``add_commands(subparsers)``; each
subcommand inside it is a pair of functions: ``_add_<name>(subparsers)`` declares its
arguments, and ``_cmd_<name>(args) -> int`` runs it and returns the exit status. Heavy
modules are imported inside the ``_cmd_`` functions, so ``bmcd --help`` stays fast.

Exit statuses: 0 success; 1 a :class:`~bmcd.errors.BmcdError` (bad input, missing
model, ...), printed as one clear line; 2 bad command-line usage (argparse);
3 ``bmcd score`` finished but some rows carry errors.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from .._version import __version__
from ..errors import BmcdError
from . import bench, cv, data, explain, export, model, score, serve
from ._common import EXIT_ERROR, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE

__all__ = ["EXIT_ERROR", "EXIT_OK", "EXIT_PARTIAL", "EXIT_USAGE", "build_parser", "main"]

#: Command groups, in the order their commands appear in ``bmcd --help``.
_GROUPS = (data, model, export, explain, score, serve, bench, cv)


def build_parser() -> argparse.ArgumentParser:
    """The ``bmcd`` argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="bmcd",
        description=(
            "Classify single-cell microscopy images as leukemic lymphoblast ('all') or "
            "normal ('hem'): train with Keras, export to ONNX, score with ONNX Runtime."
        ),
    )
    parser.add_argument("--version", action="version", version=f"bmcd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in _GROUPS:
        group.add_commands(sub)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings on the command line are one line each, without a source excerpt."""
    return f"bmcd: warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``bmcd`` command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    saved_format, warnings.formatwarning = warnings.formatwarning, _one_line_warning
    try:
        return int(args.func(args) or EXIT_OK)
    except BmcdError as exc:
        print(f"bmcd {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"bmcd {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `bmcd info DATA | head`: the reader went away; stop quietly like other CLI tools
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    finally:
        warnings.formatwarning = saved_format
