"""``python -m bmcd.serving MODEL ...``: the ``bmcd serve`` command before it is registered."""

from __future__ import annotations

import argparse
import sys

from .cli import add_parser, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bmcd.serving")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
