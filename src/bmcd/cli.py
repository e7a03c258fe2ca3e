"""The ``bmcd`` command line.

Each subcommand is a pair of functions: ``_add_<name>(subparsers)`` declares its
arguments, and ``_cmd_<name>(args) -> int`` runs it and returns the exit status. Heavy
modules are imported inside the ``_cmd_`` functions, so ``bmcd --help`` stays fast.

Exit statuses: 0 success; 1 a :class:`~bmcd.errors.BmcdError` (bad input, missing
model, ...), printed as one clear line; 2 bad command-line usage (argparse);
3 ``bmcd score`` finished but some rows carry errors.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from ._version import __version__
from .errors import BmcdError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3

_Adder = Callable[[argparse._SubParsersAction], None]
_ADDERS: list[_Adder] = []


def _command(fn: _Adder) -> _Adder:
    """Register a subparser-adding function (order = order in ``bmcd --help``)."""
    _ADDERS.append(fn)
    return fn


# ---------------------------------------------------------------------------------------
# commands: data (synth, info, preprocess)
# ---------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------
# commands: model (train, evaluate, predict, demo)
# ---------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------
# commands: export
# ---------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------
# commands: score
# ---------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------
# commands: bench
# ---------------------------------------------------------------------------------------


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
    for add in _ADDERS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``bmcd`` command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or EXIT_OK)
    except BmcdError as exc:
        print(f"bmcd {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"bmcd {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
