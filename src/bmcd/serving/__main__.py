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
    from ..errors import BmcdError

    try:
        return run(args)
    except BmcdError as exc:  # the same message the bmcd CLI prints, exit code 1
        print(f"bmcd serve: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
