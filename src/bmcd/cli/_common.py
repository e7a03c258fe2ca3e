"""Exit statuses shared by the ``bmcd`` command modules (docs/cli.rst)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3

#: A command group's ``add_commands(subparsers)``.
Adder = Callable[[argparse._SubParsersAction], None]
