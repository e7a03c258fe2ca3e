"""What the ``bmcd`` command modules share (docs/cli.rst): exit statuses, the declaration
of a subcommand, argument types and the flags that several commands take."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3

#: A command group's ``add_commands(subparsers)``.
Adder = Callable[[argparse._SubParsersAction], None]


def add_command(
    sub: argparse._SubParsersAction,
    name: str,
    func: Callable[[argparse.Namespace], int],
    help: str,
    description: str,
) -> argparse.ArgumentParser:
    """Declare the subcommand ``name``, run by ``func(args) -> exit status``.

    ``args.parser`` is its parser, for usage errors (exit 2) found after parsing.
    """
    p = sub.add_parser(name, help=help, description=description)
    p.set_defaults(func=func, parser=p)
    return p


def _checked(convert: Callable[[str], Any], valid: Callable[[Any], bool], expected: str):
    """An argparse ``type``: ``convert(text)``, a usage error unless ``valid``."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not valid(value):
            raise argparse.ArgumentTypeError(f"expected {expected}; received {text!r}")
        return value

    return parse


#: ``--batch-size`` and the like: an int >= 1.
positive_int = _checked(int, lambda v: v >= 1, "a whole number >= 1")
#: ``--val`` / ``--test``: a fraction in [0, 1).
fraction = _checked(float, lambda v: 0.0 <= v < 1.0, "a fraction in [0, 1)")
#: ``--atol``: a number >= 0.
non_negative_float = _checked(float, lambda v: v >= 0, "a non-negative number")


def weights_arg(text: str) -> str | None:
    """``--weights``: ``none`` (any case) is None, anything else is kept."""
    return None if text.lower() == "none" else text


def _crop_size_arg(text: str) -> str | int | None:
    if text.lower() in ("default", "none"):
        return text.lower()
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 8:
        raise argparse.ArgumentTypeError(
            f"expected a window side in source pixels (>= 8), 'none' or 'default'; "
            f"received {text!r}")
    return value


def preprocess_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~bmcd.PreprocessConfig` of ``--image-size``/``--crop-size`` (None: the
    Classifier's default for its weights)."""
    from ..preprocessing import PreprocessConfig

    crop = getattr(args, "crop_size", "default")
    if crop == "default":
        return None
    return PreprocessConfig(image_size=args.image_size, crop_size=None if crop == "none" else crop)


def add_training_settings(p: argparse.ArgumentParser) -> None:
    """``--image-size``, ``--crop-size``, ``--weights`` and the
    :class:`~bmcd.training.TrainConfig` flags."""
    from ..training.config import TrainConfig

    p.add_argument("--image-size", type=int, default=224, metavar="S",
                   help="network input side in pixels (default: 224)")
    p.add_argument("--crop-size", type=_crop_size_arg, default="default", metavar="N",
                   help="side of the window around the cell, in source pixels, that keeps "
                        "cells at their own scale; 'none' crops tightly to each cell "
                        "(default: 320 with --weights none, else none)")
    p.add_argument("--weights", type=weights_arg, default="imagenet", metavar="W",
                   help="imagenet (default; downloaded once), none (from scratch) or a "
                        "local weights file")
    TrainConfig.add_arguments(p)


def precision(args: argparse.Namespace) -> str:
    """``"int8"``, ``"bf16"`` or ``"fp32"`` from the ``--int8`` / ``--bf16`` flags."""
    return "int8" if args.int8 else "bf16" if getattr(args, "bf16", False) else "fp32"


def load_options(args: argparse.Namespace) -> dict[str, str]:
    """The :meth:`bmcd.Classifier.load` options for those flags (none for fp32)."""
    prec = precision(args)
    return {} if prec == "fp32" else {"precision": prec}
