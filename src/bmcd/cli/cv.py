"""``bmcd cv``: subject-grouped k-fold cross-validation of the training recipe
(docs/accuracy.rst)."""

from __future__ import annotations

import argparse
import sys

from ._common import EXIT_OK, add_command, add_training_settings, preprocess_from_args


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add the cv subcommand."""
    p = add_command(
        sub, "cv", _cmd_cv, "cross-validate the training recipe over subject-grouped folds",
        "Split DATA into K folds by subject (linked C-NMC subjects H2/H4/H5 together, "
        "stratified by class), train a fresh model on each K-1 folds (from scratch by default: "
        "offline), score the held-out subjects and print per-fold and pooled ROC-AUC, weighted "
        "F1, balanced accuracy, sensitivity and specificity with 95% intervals by bootstrap "
        "over subjects. Writes OUT/cv.json and OUT/cv.md.",
    )
    p.add_argument("data", metavar="DATA", help="dataset folder or CSV manifest")
    p.add_argument("--folds", type=int, default=5, metavar="K", help="folds (default: 5)")
    p.add_argument("--arch", default="mobilenet_v2", choices=["resnet50", "mobilenet_v2"])
    p.add_argument("--out", required=True, metavar="DIR", help="folder for cv.json and cv.md")
    p.add_argument("--val", type=float, default=0.0, metavar="F",
                   help="inner validation fraction of each fold's training subjects, which "
                        "tunes the threshold (default: 0: all train, threshold 0.5)")
    p.add_argument("--tta", action="store_true",
                   help="also score with test-time augmentation (8 flips/rotations)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--fold-seed", type=int, default=None, metavar="N",
                   help="seed of the fold assignment (default: --seed); fix it to compare "
                        "training seeds on the same folds")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    add_training_settings(p)
    p.set_defaults(weights=None)  # from scratch unless --weights says otherwise: offline


def _cmd_cv(args: argparse.Namespace) -> int:
    from ..cv import CV_JSON, CV_MARKDOWN, cross_validate, cv_markdown
    from ..data import load_dataset
    from ..training.config import TrainConfig

    verbose = 0 if args.quiet else 2
    config = TrainConfig.from_namespace(args, verbose=verbose)
    ds = load_dataset(args.data)
    if not args.quiet:
        print(ds.summary(), flush=True)
    result = cross_validate(
        ds, folds=args.folds, arch=args.arch, image_size=args.image_size,
        weights=args.weights, seed=args.seed, fold_seed=args.fold_seed, val=args.val,
        tta=args.tta, out=args.out, config=config, verbose=verbose,
        preprocess=preprocess_from_args(args),
    )
    print(cv_markdown(result))
    print(f"{args.out}/{CV_JSON}, {args.out}/{CV_MARKDOWN} ({result['seconds']:.0f} s)")
    sys.stdout.flush()
    return EXIT_OK
