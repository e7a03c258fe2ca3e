"""The model commands: ``bmcd train``, ``bmcd evaluate``, ``bmcd predict``, ``bmcd demo`` (docs/cli.rst)."""

from __future__ import annotations

import argparse
import sys

from ..errors import BmcdError
from ._common import (
    EXIT_OK,
    EXIT_PARTIAL,
    add_command,
    add_training_settings,
    fraction,
    load_options,
    positive_int,
    preprocess_from_args,
)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add the train, evaluate, predict, demo subcommands (in this order)."""
    _add_train(sub)
    _add_evaluate(sub)
    _add_predict(sub)
    _add_demo(sub)


def printable_path(path: str) -> str:
    """``path`` with every non-printable character escaped, so one name stays one line.

    A newline becomes ``\\n``, a tab ``\\t``, a byte that is not UTF-8 (kept by Python
    as a surrogate) ``\\xNN``; printable text, non-ASCII letters included, is unchanged.

    Examples
    --------
    >>> printable_path("a\\nb.bmp"), printable_path("café.bmp")
    ('a\\\\nb.bmp', 'café.bmp')
    """
    if path.isprintable():
        return path
    out = []
    for c in path:
        if c.isprintable():
            out.append(c)
        elif 0xDC80 <= ord(c) <= 0xDCFF:  # os.fsdecode's surrogateescape of one raw byte
            out.append(f"\\x{ord(c) - 0xDC00:02x}")
        else:
            out.append(c.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def _add_prediction_args(p: argparse.ArgumentParser) -> None:
    """``--batch-size``, ``--tta``, ``--backend`` and ``--int8`` / ``--bf16``."""
    from ..runtimes import available_backends

    p.add_argument("--batch-size", type=positive_int, default=32, metavar="N")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: mean p(all) over the 8 flips/rotations "
                        "(8x the compute)")
    p.add_argument("--backend", default="keras", choices=available_backends(),
                   help="inference backend (default: keras; onnx and openvino need an exported "
                   "model)")
    prec = p.add_mutually_exclusive_group()
    prec.add_argument("--int8", action="store_true",
                      help="use the int8-quantised ONNX model (with --backend onnx or openvino)")
    prec.add_argument("--bf16", action="store_true",
                      help="run in bf16 (with --backend openvino, on a CPU with native bf16, "
                      "after a passed gate: bmcd export MODEL --bf16)")


def _check_precision_args(args: argparse.Namespace) -> None:
    """--int8 / --bf16 against --backend: a usage error (exit 2) before anything is loaded."""
    if args.int8 and args.backend not in ("onnx", "openvino"):
        args.parser.error(
            f"--int8 needs --backend onnx or openvino (the {args.backend} model is float32)"
        )
    if getattr(args, "bf16", False) and args.backend != "openvino":
        args.parser.error(f"--bf16 needs --backend openvino, received --backend {args.backend}")


def _load_classifier(args: argparse.Namespace):
    from ..classifier import Classifier

    _check_precision_args(args)
    return Classifier.load(args.model, backend=args.backend, **load_options(args))


def _add_train(sub: argparse._SubParsersAction) -> None:
    from ..data import SPLIT_METHODS

    p = add_command(
        sub, "train", _cmd_train,
        "train a model, evaluate it on held-out subjects, write the model directory",
        "Find the images in DATA, split them (by subject by default, so no patient is on two "
        "sides), train ARCH (frozen backbone, then fine-tuning; from scratch with --weights "
        "none), tune the threshold on the validation part, evaluate on the test part at that "
        "threshold and write OUT/ (model.keras, bmcd.json, report/).",
    )
    p.add_argument("data", metavar="DATA", help="dataset folder or CSV manifest")
    p.add_argument("--arch", required=True, choices=["resnet50", "mobilenet_v2"])
    p.add_argument("--out", required=True, metavar="DIR", help="model directory to write")
    p.add_argument("--split", default="subject", choices=list(SPLIT_METHODS),
                   help="subject (default, honest), random (leaks subjects), or given "
                        "(training_set/validation_set/test_set folders)")
    p.add_argument("--val", type=fraction, default=0.2, metavar="F",
                   help="validation fraction (default: 0.2)")
    p.add_argument("--test", type=fraction, default=0.2, metavar="F",
                   help="test fraction (default: 0.2)")
    add_training_settings(p)
    p.add_argument("--threshold-rule", choices=["youden", "none"], default="youden",
                   help="youden (default): tune the decision threshold on the validation "
                        "part (never on the test part), recorded in bmcd.json; none: keep "
                        "0.5")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _cmd_train(args: argparse.Namespace) -> int:
    from ..classifier import Classifier
    from ..data import load_dataset, split_dataset
    from ..training.config import TrainConfig
    from ..training.evaluate import train_and_evaluate

    ds = load_dataset(args.data)
    split = split_dataset(ds, args.split, val=args.val, test=args.test, seed=args.seed)
    verbose = 0 if args.quiet else (1 if sys.stdout.isatty() else 2)
    if verbose:
        print(ds.summary())
        print("split: " + ", ".join(
            f"{name} {len(part)} ({len(part.subject_list())} subjects)"
            for name, part in split.parts().items()) + f" [{split.method}]", flush=True)
    try:
        clf = Classifier(arch=args.arch, image_size=args.image_size, weights=args.weights,
                         seed=args.seed, preprocess=preprocess_from_args(args))
        config = TrainConfig.from_namespace(args, verbose=verbose)
        rule = None if args.threshold_rule == "none" else args.threshold_rule
        result = train_and_evaluate(clf, split, args.out, config=config, threshold_rule=rule)
    except ValueError as exc:
        if isinstance(exc, BmcdError):
            raise
        raise BmcdError(str(exc)) from exc
    report = result["report"]
    print(f"\nEvaluated on the {result['evaluated_on']} part ({report.n} images):")
    print(report.to_markdown())
    print(f"\nmodel:  {result['model_dir']}")
    print(f"report: {result['report_dir'] / 'report.html'}")
    return EXIT_OK


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "evaluate", _cmd_evaluate,
                    "score a model on labelled data and print (or write) the report",
                    "Evaluate MODEL (a model directory) on the labelled images in DATA.")
    p.add_argument("model", metavar="MODEL", help="model directory")
    p.add_argument("data", metavar="DATA", help="dataset folder or CSV manifest")
    p.add_argument("--report", default=None, metavar="DIR",
                   help="write metrics.json, plots and report.html here")
    _add_prediction_args(p)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    clf = _load_classifier(args)
    report = clf.evaluate(args.data, batch_size=args.batch_size, tta=args.tta)
    if report.synthetic:
        print("NOTE: these data are SYNTHETIC; the scores check the pipeline only.")
    print(report.to_markdown())
    if args.report:
        out = report.save(args.report)
        print(f"\nreport: {out / 'report.html'}")
    return EXIT_OK


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "predict", _cmd_predict, "print p(all) and the label for images",
        "Print one line per image: path<TAB>p(all)<TAB>label, where label is 'all' when p(all) "
        ">= the model's threshold, else 'hem'; a fourth field 'no_cell' marks an image in "
        "which no cell was found (all black, or a speck), whose label means little. "
        "Non-printable characters in paths are escaped (\\n, \\xNN). Folders are searched "
        "for images. Unreadable images are reported on stderr (exit status 3).",
    )
    p.add_argument("model", metavar="MODEL", help="model directory")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files or folders")
    _add_prediction_args(p)


def _cmd_predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .._classifier_inputs import predict_files
    from ..data import iter_image_files

    _check_precision_args(args)  # the usage error before any file is walked
    files: list[str] = []
    for item in args.images:
        path = Path(item)
        if path.is_dir():
            found = sorted(iter_image_files(path))
            if not found:
                raise BmcdError(f"No images found in folder '{path}'.")
            files.extend(found)
        else:
            files.append(str(path))
    clf = _load_classifier(args)
    failed: list[Exception] = []

    def unreadable(exc: Exception) -> None:
        failed.append(exc)
        print(f"bmcd predict: {printable_path(str(exc))}", file=sys.stderr)

    for f, p, label, no_cell in predict_files(clf, files, args.batch_size, args.tta,
                                              on_error=unreadable):
        flag = "\tno_cell" if no_cell else ""
        print(f"{printable_path(f)}\t{p:.6f}\t{label}{flag}")
    sys.stdout.flush()
    return EXIT_PARTIAL if failed else EXIT_OK


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "demo", _cmd_demo,
        "train and evaluate on SYNTHETIC cells, offline, in a few minutes",
        "Draw a few hundred SYNTHETIC C-NMC-like cells, split them by subject, train "
        "MobileNetV2 from scratch at a small image size, evaluate on held-out subjects and "
        "write OUT/model (with report/report.html). No download needed.",
    )
    p.add_argument("--out", default="bmcd-demo", metavar="DIR",
                   help="output folder (default: bmcd-demo)")
    p.add_argument("--arch", default="mobilenet_v2", choices=["mobilenet_v2", "resnet50"])
    p.add_argument("--quick", action="store_true", help="a smaller, faster smoke run")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


def _cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    run_demo(args.out, arch=args.arch, quick=args.quick, seed=args.seed)
    return EXIT_OK
