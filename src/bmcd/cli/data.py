"""The data commands: ``bmcd synth``, ``bmcd info``, ``bmcd preprocess`` (docs/cli.rst)."""

from __future__ import annotations

import argparse
import sys

from ..errors import BmcdError
from ._common import EXIT_OK, EXIT_PARTIAL, add_command


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add the synth, info, preprocess subcommands (in this order)."""
    _add_synth(sub)
    _add_info(sub)
    _add_preprocess(sub)


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "synth", _cmd_synth, "write a SYNTHETIC C-NMC-like dataset (for demos and tests)",
        "Write synthetic single-cell images (drawn, not patient data) into OUT/{all,hem}/ "
        "with C-NMC file names UID_<subject>_<image>_<cell>_<all|hem>.bmp.",
    )
    p.add_argument("out", metavar="OUT", help="output folder (created if needed)")
    p.add_argument("--per-class", type=int, required=True, metavar="N",
                   help="images per class")
    p.add_argument("--subjects", type=int, required=True, metavar="K",
                   help="total number of subjects, split evenly between the classes")
    p.add_argument("--image-size", type=int, default=450, metavar="S",
                   help="image side in pixels (default: 450, as in C-NMC)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


def _cmd_synth(args: argparse.Namespace) -> int:
    from ..synthetic import make_cells, subject_ids

    try:
        all_ids, hem_ids = subject_ids(args.subjects)
        files = make_cells(args.out, n_per_class=args.per_class, n_subjects=args.subjects,
                           image_size=args.image_size, seed=args.seed)
    except ValueError as exc:
        raise BmcdError(str(exc)) from exc
    print(
        f"Wrote {len(files)} SYNTHETIC images ({args.per_class} per class, "
        f"{args.image_size}x{args.image_size}) to {args.out}/{{all,hem}}/\n"
        f"  subjects: {len(all_ids)} leukemic ({', '.join(all_ids)}), "
        f"{len(hem_ids)} normal ({', '.join(hem_ids)}); seed {args.seed}\n"
        f"These are synthetic cells for demos and tests, not patient data."
    )
    return EXIT_OK


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "info", _cmd_info,
        "describe a dataset: layout, counts per class and subject, fingerprint",
        "Find the images in DATA (class folders, the Kaggle C-NMC folds, training_set/"
        "validation_set/test_set folders, or a CSV manifest) and print what was found.",
    )
    p.add_argument("data", metavar="DATA", help="dataset folder or CSV manifest")


def _cmd_info(args: argparse.Namespace) -> int:
    from ..data import load_dataset
    from ..synthetic import looks_synthetic

    ds = load_dataset(args.data)
    print(ds.summary(per_subject=True))
    if looks_synthetic(ds.root):
        print("note: these are SYNTHETIC images (bmcd synth), not patient data")
    return EXIT_OK


def _add_preprocess(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "preprocess", _cmd_preprocess,
        "write cropped, square-padded, resized copies of images (PNG)",
        "Run every image under IN (a folder, searched recursively, or a CSV manifest) "
        "through bmcd's preprocessing (crop to the cell, pad to a square, resize) and write "
        "PNGs under OUT with the same relative paths. Unreadable files are reported and "
        "skipped (exit status 3).",
    )
    p.add_argument("input", metavar="IN", help="image folder or CSV manifest")
    p.add_argument("output", metavar="OUT", help="output folder")
    p.add_argument("--image-size", type=int, default=224, metavar="S",
                   help="output side in pixels (default: 224)")
    p.add_argument("--threshold", type=int, default=10, metavar="T",
                   help="foreground gray-level threshold (default: 10)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker threads (default: the CPU count)")


def _cmd_preprocess(args: argparse.Namespace) -> int:
    from ..data import preprocess_folder
    from ..preprocessing import PreprocessConfig

    try:
        config = PreprocessConfig(image_size=args.image_size, threshold=args.threshold)
    except ValueError as exc:
        raise BmcdError(str(exc)) from exc
    if args.workers is not None and args.workers < 1:
        raise BmcdError(f"--workers must be >= 1; received {args.workers}.")
    result = preprocess_folder(args.input, args.output, config, workers=args.workers)
    for path, err in result.failures:
        print(f"bmcd preprocess: skipped {path}: {err}", file=sys.stderr)
    print(
        f"Wrote {result.written} of {result.n} images ({config.image_size}x{config.image_size} "
        f"PNG) to {result.out}"
        + (f"; {len(result.failures)} failed (listed above)" if result.failures else "")
        + (f"; manifest: {result.manifest}" if result.manifest is not None else "")
    )
    return EXIT_PARTIAL if result.failures else EXIT_OK
