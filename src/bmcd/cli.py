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


@_command
def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="write a SYNTHETIC C-NMC-like dataset (for demos and tests)",
        description=(
            "Write synthetic single-cell images (drawn, not patient data) into "
            "OUT/{all,hem}/ with C-NMC file names UID_<subject>_<image>_<cell>_<all|hem>.bmp."
        ),
    )
    p.add_argument("out", metavar="OUT", help="output folder (created if needed)")
    p.add_argument("--per-class", type=int, required=True, metavar="N",
                   help="images per class")
    p.add_argument("--subjects", type=int, required=True, metavar="K",
                   help="total number of subjects, split evenly between the classes")
    p.add_argument("--image-size", type=int, default=450, metavar="S",
                   help="image side in pixels (default: 450, as in C-NMC)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.set_defaults(func=_cmd_synth)


def _cmd_synth(args: argparse.Namespace) -> int:
    from .synthetic import make_cells, subject_ids

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


@_command
def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="describe a dataset: layout, counts per class and subject, fingerprint",
        description=(
            "Find the images in DATA (class folders, the Kaggle C-NMC folds, "
            "training_set/validation_set/test_set folders, or a CSV manifest) and print "
            "what was found."
        ),
    )
    p.add_argument("data", metavar="DATA", help="dataset folder or CSV manifest")
    p.set_defaults(func=_cmd_info)


def _cmd_info(args: argparse.Namespace) -> int:
    from .data import load_dataset

    ds = load_dataset(args.data)
    print(ds.summary(per_subject=True))
    readme = ds.root / "README.txt" if ds.root is not None else None
    if readme is not None and readme.is_file() and "SYNTHETIC" in readme.read_text(errors="ignore"):
        print("note: these are SYNTHETIC images (bmcd synth), not patient data")
    return EXIT_OK


@_command
def _add_preprocess(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "preprocess",
        help="write cropped, square-padded, resized copies of images (PNG)",
        description=(
            "Run every image under IN (a folder, searched recursively, or a CSV manifest) "
            "through bmcd's preprocessing (crop to the cell, pad to a square, resize) and "
            "write PNGs under OUT with the same relative paths. Unreadable files are "
            "reported and skipped (exit status 3)."
        ),
    )
    p.add_argument("input", metavar="IN", help="image folder or CSV manifest")
    p.add_argument("output", metavar="OUT", help="output folder")
    p.add_argument("--image-size", type=int, default=224, metavar="S",
                   help="output side in pixels (default: 224)")
    p.add_argument("--threshold", type=int, default=10, metavar="T",
                   help="foreground gray-level threshold (default: 10)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker threads (default: the CPU count)")
    p.set_defaults(func=_cmd_preprocess)


def _cmd_preprocess(args: argparse.Namespace) -> int:
    import os
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    import cv2
    import numpy as np
    from tqdm.auto import tqdm

    from .data import _scan_images, load_dataset
    from .errors import DatasetError, ImageReadError
    from .preprocessing import IMAGE_EXTENSIONS, PreprocessConfig, default_workers, preprocess

    try:
        config = PreprocessConfig(image_size=args.image_size, threshold=args.threshold)
    except ValueError as exc:
        raise BmcdError(str(exc)) from exc
    src = Path(args.input)
    out = Path(args.output)
    manifest = None
    if src.is_file():
        ds = load_dataset(src)
        sources = ds.absolute_paths()
        rels = ds.relative_paths()
        manifest = ds
    elif src.is_dir():
        sources = _scan_images(os.fspath(src))
        rels = [os.path.relpath(p, src).replace(os.sep, "/") for p in sources]
    else:
        raise DatasetError(f"Input not found: '{src}'; expected an image folder or a CSV manifest.")
    if not sources:
        raise DatasetError(
            f"No images found under '{src}' (looked for {', '.join(IMAGE_EXTENSIONS)})."
        )
    if out.resolve() == src.resolve():
        raise DatasetError("OUT must differ from IN; preprocess never overwrites its input.")
    targets = [out / (os.path.splitext(r)[0] + ".png") for r in rels]
    workers = default_workers() if args.workers is None else args.workers
    if workers < 1:
        raise BmcdError(f"--workers must be >= 1; received {workers}.")

    def work(i: int) -> str | None:
        try:
            arr = preprocess(sources[i], config)
            bgr = cv2.cvtColor(np.clip(np.rint(arr), 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
            ok, buf = cv2.imencode(".png", bgr)
            if not ok:
                return "PNG encoding failed"
            targets[i].parent.mkdir(parents=True, exist_ok=True)
            targets[i].write_bytes(buf.tobytes())
        except (ImageReadError, OSError) as exc:
            return str(exc)
        return None

    failures: list[tuple[str, str]] = []
    with ThreadPoolExecutor(max_workers=workers) as pool, tqdm(
        total=len(sources), desc="preprocess", unit="img", disable=None
    ) as bar:
        for i, err in enumerate(pool.map(work, range(len(sources)))):
            if err is not None:
                failures.append((sources[i], err))
            bar.update()
    for path, err in failures:
        print(f"bmcd preprocess: skipped {path}: {err}", file=sys.stderr)
    written = len(sources) - len(failures)
    readme = (src.parent if src.is_file() else src) / "README.txt"
    if readme.is_file() and "SYNTHETIC" in readme.read_text(errors="ignore"):
        out.mkdir(parents=True, exist_ok=True)  # keep the label on synthetic data
        (out / "README.txt").write_text(readme.read_text(errors="ignore"), encoding="utf-8")
    if manifest is not None:
        import csv

        failed = {s for s, _ in failures}
        with open(out / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "label", "subject"])
            for s, t, label, subject in zip(sources, targets, manifest.labels.tolist(),
                                            manifest.subjects, strict=True):
                if s not in failed:
                    writer.writerow([t.relative_to(out).as_posix(), manifest.classes[label],
                                     subject or ""])
    print(
        f"Wrote {written} of {len(sources)} images ({config.image_size}x{config.image_size} "
        f"PNG) to {out}" + (f"; {len(failures)} failed (listed above)" if failures else "")
        + (f"; manifest: {out / 'manifest.csv'}" if manifest is not None else "")
    )
    return EXIT_PARTIAL if failures else EXIT_OK


# ---------------------------------------------------------------------------------------
# commands: model (train, evaluate, predict, demo)
# ---------------------------------------------------------------------------------------


def _weights_arg(text: str) -> str | None:
    return None if text.lower() == "none" else text


def _balance_arg(text: str) -> str | None:
    if text.lower() == "none":
        return None
    if text not in ("augment", "class_weight"):
        raise argparse.ArgumentTypeError(
            f"expected augment, class_weight or none; received {text!r}"
        )
    return text


def _fraction_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1); received {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1); received {text!r}")
    return value


def _add_backend_args(p: argparse.ArgumentParser) -> None:
    from .runtimes import available_backends

    p.add_argument("--backend", default="keras", choices=available_backends(),
                   help="inference backend (default: keras; onnx needs an exported model)")
    p.add_argument("--int8", action="store_true",
                   help="use the int8-quantised ONNX model (with --backend onnx)")


def _load_classifier(args: argparse.Namespace):
    from .classifier import Classifier

    options = {}
    if args.int8:
        if args.backend != "onnx":
            raise BmcdError("--int8 needs --backend onnx (the Keras model is float32).")
        options["precision"] = "int8"
    return Classifier.load(args.model, backend=args.backend, **options)


@_command
def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model, evaluate it on held-out subjects, write the model directory",
        description=(
            "Find the images in DATA, split them (by subject by default, so no patient is "
            "on two sides), train ARCH (frozen backbone, then fine-tuning; from scratch "
            "with --weights none), evaluate on the test part at threshold 0.5 and write "
            "OUT/ (model.keras, bmcd.json, report/)."
        ),
    )
    p.add_argument("data", metavar="DATA", help="dataset folder or CSV manifest")
    p.add_argument("--arch", required=True, choices=["resnet50", "mobilenet_v2"])
    p.add_argument("--out", required=True, metavar="DIR", help="model directory to write")
    p.add_argument("--split", default="subject", choices=["subject", "random", "given"],
                   help="subject (default, honest), random (leaks subjects), or given "
                        "(training_set/validation_set/test_set folders)")
    p.add_argument("--val", type=_fraction_arg, default=0.2, metavar="F",
                   help="validation fraction (default: 0.2)")
    p.add_argument("--test", type=_fraction_arg, default=0.2, metavar="F",
                   help="test fraction (default: 0.2)")
    p.add_argument("--image-size", type=int, default=224, metavar="S",
                   help="network input side in pixels (default: 224)")
    p.add_argument("--epochs", type=int, default=5, metavar="N",
                   help="frozen-backbone epochs (default: 5)")
    p.add_argument("--fine-tune-epochs", type=int, default=5, metavar="N",
                   help="fine-tuning epochs (default: 5); with --weights none the network "
                        "trains for epochs + fine-tune-epochs")
    p.add_argument("--fine-tune-from", default=None, metavar="LAYER",
                   help="first backbone layer unfrozen when fine-tuning (default per arch)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default: 1e-3)")
    p.add_argument("--fine-tune-lr", type=float, default=1e-5,
                   help="fine-tuning learning rate (default: 1e-5)")
    p.add_argument("--weights", type=_weights_arg, default="imagenet", metavar="W",
                   help="imagenet (default; downloaded once), none (from scratch) or a "
                        "local weights file")
    p.add_argument("--balance", type=_balance_arg, default="augment", metavar="B",
                   help="augment (default), class_weight or none")
    p.add_argument("--no-augment", dest="augment", action="store_false",
                   help="no random flips / rotations while training")
    p.add_argument("--patience", type=int, default=5, metavar="N",
                   help="early-stopping patience in epochs (default: 5)")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="keep preprocessed images in a memory map here (large sets)")
    p.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                   help="keep the best model of each training phase here")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from .classifier import Classifier
    from .data import load_dataset, split_by_subject, split_given, split_random
    from .demo import train_and_evaluate

    ds = load_dataset(args.data)
    if args.split == "subject":
        split = split_by_subject(ds, val=args.val, test=args.test, seed=args.seed)
    elif args.split == "random":
        split = split_random(ds, val=args.val, test=args.test, seed=args.seed)
    else:
        split = split_given(ds)
    verbose = 0 if args.quiet else (1 if sys.stdout.isatty() else 2)
    if verbose:
        print(ds.summary())
        print("split: " + ", ".join(
            f"{name} {len(part)} ({len(part.subject_list())} subjects)"
            for name, part in split.parts().items()) + f" [{split.method}]", flush=True)
    try:
        clf = Classifier(arch=args.arch, image_size=args.image_size, weights=args.weights,
                         seed=args.seed)
        result = train_and_evaluate(
            clf, split, args.out, verbose=verbose, epochs=args.epochs,
            fine_tune_epochs=args.fine_tune_epochs, fine_tune_from=args.fine_tune_from,
            batch_size=args.batch_size, learning_rate=args.lr,
            fine_tune_learning_rate=args.fine_tune_lr, balance=args.balance,
            augment=args.augment, early_stopping_patience=args.patience,
            cache_dir=args.cache_dir, checkpoint_dir=args.checkpoint_dir,
        )
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


@_command
def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a model on labelled data and print (or write) the report",
        description="Evaluate MODEL (a model directory) on the labelled images in DATA.",
    )
    p.add_argument("model", metavar="MODEL", help="model directory")
    p.add_argument("data", metavar="DATA", help="dataset folder or CSV manifest")
    p.add_argument("--report", default=None, metavar="DIR",
                   help="write metrics.json, plots and report.html here")
    p.add_argument("--batch-size", type=int, default=32, metavar="N")
    _add_backend_args(p)
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    clf = _load_classifier(args)
    report = clf.evaluate(args.data, batch_size=args.batch_size)
    if report.synthetic:
        print("NOTE: these data are SYNTHETIC; the scores check the pipeline only.")
    print(report.to_markdown())
    if args.report:
        out = report.save(args.report)
        print(f"\nreport: {out / 'report.html'}")
    return EXIT_OK


@_command
def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="print p(all) and the label for images",
        description=(
            "Print one line per image: path<TAB>p(all)<TAB>label, where label is 'all' when "
            "p(all) >= the model's threshold, else 'hem'. Folders are searched for images. "
            "Unreadable images are reported on stderr (exit status 3)."
        ),
    )
    p.add_argument("model", metavar="MODEL", help="model directory")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files or folders")
    p.add_argument("--batch-size", type=int, default=32, metavar="N")
    _add_backend_args(p)
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .errors import ImageReadError
    from .preprocessing import IMAGE_EXTENSIONS

    files: list[str] = []
    for item in args.images:
        path = Path(item)
        if path.is_dir():
            found = sorted(str(f) for f in path.rglob("*")
                           if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise BmcdError(f"No images found in folder '{path}'.")
            files.extend(found)
        else:
            files.append(str(path))
    clf = _load_classifier(args)
    failed = 0
    chunk = 256
    for start in range(0, len(files), chunk):
        group = files[start : start + chunk]
        try:
            probs = clf.predict_proba(group, batch_size=args.batch_size)[:, 1]
            rows = list(zip(group, probs, strict=True))
        except ImageReadError:
            rows = []
            for f in group:  # find the unreadable ones, keep the rest
                try:
                    rows.append((f, clf.predict_proba([f])[0, 1]))
                except ImageReadError as exc:
                    failed += 1
                    print(f"bmcd predict: {exc}", file=sys.stderr)
        for f, p in rows:
            label = "all" if p >= clf.threshold_ else "hem"
            print(f"{f}\t{p:.6f}\t{label}")
    sys.stdout.flush()
    return EXIT_PARTIAL if failed else EXIT_OK


@_command
def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="train and evaluate on SYNTHETIC cells, offline, in a few minutes",
        description=(
            "Draw a few hundred SYNTHETIC C-NMC-like cells, split them by subject, train "
            "MobileNetV2 from scratch at a small image size, evaluate on held-out subjects "
            "and write OUT/model (with report/report.html). No download needed."
        ),
    )
    p.add_argument("--out", default="bmcd-demo", metavar="DIR",
                   help="output folder (default: bmcd-demo)")
    p.add_argument("--arch", default="mobilenet_v2", choices=["mobilenet_v2", "resnet50"])
    p.add_argument("--quick", action="store_true", help="a smaller, faster smoke run")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, arch=args.arch, quick=args.quick, seed=args.seed)
    return EXIT_OK


# ---------------------------------------------------------------------------------------
# commands: export
# ---------------------------------------------------------------------------------------


def _nonneg_float_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, received {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, received {text}")
    return value


@_command
def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a trained model to ONNX (checked against Keras), optionally int8",
        description=(
            "Convert MODEL/model.keras to MODEL/model.onnx with tf2onnx, check it against "
            "Keras on preprocessed images (max |p_keras - p_onnx| and labels, at two batch "
            "sizes), and record the numbers in MODEL/bmcd.json. With --int8, also write "
            "MODEL/model.int8.onnx (ONNX Runtime static QDQ quantization) and gate it against "
            "the fp32 model. A check that fails writes no file and exits with status 1."
        ),
    )
    p.add_argument("model", metavar="MODEL", help="model directory (bmcd.json + model.keras)")
    p.add_argument("--int8", action="store_true", help="also quantize to model.int8.onnx")
    p.add_argument("--opset", type=int, default=None, metavar="N",
                   help="ONNX opset (default: 17, checked against the installed onnxruntime)")
    p.add_argument("--samples", metavar="DIR", default=None,
                   help="images for the parity check and the int8 gate: a dataset folder or "
                   "CSV manifest (labels enable the ROC-AUC gate) or any folder of images "
                   "(default: synthetic cells made on the fly)")
    p.add_argument("--atol", type=_nonneg_float_arg, default=None, metavar="X",
                   help="largest accepted |p_keras - p_onnx| (default: 1e-4)")
    p.add_argument("--calibration", metavar="DIR", default=None,
                   help="int8 calibration images, ideally the training set (default: 200 "
                   "synthetic cells)")
    p.add_argument("--force", action="store_true",
                   help="keep model.int8.onnx even if it fails its gate (recorded as forced)")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ banner quiet
    from .exporters.onnx import FP32_ATOL, export_onnx, quantize_int8

    atol = FP32_ATOL if args.atol is None else args.atol
    rec = export_onnx(args.model, opset=args.opset, samples=args.samples, atol=atol)
    par = rec["parity"]
    print(f"wrote {rec['path']} (opset {rec['opset']}, IR {rec['ir_version']}, "
          f"{rec['bytes'] / 1e6:.1f} MB, sha256 {rec['sha256'][:16]})")
    print(f"parity vs Keras on {par['n']} images [{rec['samples']}], batch sizes "
          f"{'/'.join(map(str, par['batch_sizes']))}:")
    print(f"  max |p_keras - p_onnx| = {par['max_abs_diff']:.3g} (atol {par['atol']:g}), "
          f"mean {par['mean_abs_diff']:.3g}; labels identical "
          f"{par['n'] - par['label_disagreements']}/{par['n']} at threshold {par['threshold']:g}")
    if args.int8:
        q = quantize_int8(args.model, calibration=args.calibration, validation=args.samples,
                          force=args.force)
        g = q["gate"]
        print(f"wrote {q['path']} ({q['quant_format']}, "
              f"{'per-channel' if q['per_channel'] else 'per-tensor'} int8, "
              f"{q['bytes'] / 1e6:.1f} MB), calibrated on {q['calibration']['n']} images "
              f"[{q['calibration']['source']}]")
        print(f"int8 gate vs fp32 on {g['n']} images [{q['validation']}]:")
        print(f"  label agreement {g['label_agreement']:.4f} (need >= "
              f"{g['min_label_agreement']:g}); max |dp| {g['max_abs_diff']:.3g}, "
              f"mean {g['mean_abs_diff']:.3g}")
        if "roc_auc_change" in g:
            print(f"  ROC-AUC {g['roc_auc_fp32']:.4f} -> {g['roc_auc_int8']:.4f} (change "
                  f"{g['roc_auc_change']:+.4f}, limit {g['max_auc_change']:g}); weighted F1 "
                  f"{g['f1_weighted_fp32']:.4f} -> {g['f1_weighted_int8']:.4f} (change "
                  f"{g['f1_weighted_change']:+.4f})")
        if q["forced"]:
            print("  GATE FAILED: file kept because of --force (recorded as forced)")
    return EXIT_OK

# ---------------------------------------------------------------------------------------
# commands: score
# ---------------------------------------------------------------------------------------


def _positive_int_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, received {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, received {value}")
    return value


@_command
def _add_score(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="score many images with an exported ONNX model, streaming rows to a CSV",
        description=(
            "Score image files with an exported ONNX model. Writes one CSV row per input "
            "(path,p_all,label,threshold,error), flushed chunk by chunk; unreadable files get "
            "an error row and the run goes on. Exit status: 0 all scored, 3 some rows carry "
            "errors, 1 fatal error."
        ),
    )
    p.add_argument("model", metavar="MODEL", help="model directory or bare .onnx file")
    p.add_argument(
        "inputs",
        metavar="INPUT",
        nargs="+",
        help="folders (recursive), image files, quoted glob patterns, CSV manifests "
        "(column path/file/filename/new_names)",
    )
    p.add_argument("--out", "-o", required=True, metavar="FILE", help="output CSV file")
    p.add_argument("--int8", action="store_true", help="run model.int8.onnx")
    p.add_argument(
        "--batch-size", type=_positive_int_arg, default=64, metavar="N",
        help="files per chunk (default 64)",
    )
    p.add_argument(
        "--workers", type=_positive_int_arg, default=None, metavar="N",
        help="local: preprocessing threads; dask without --scheduler: local worker "
        "processes (default: CPU count)",
    )
    p.add_argument(
        "--threads", type=_positive_int_arg, default=None, metavar="N",
        help="ONNX Runtime intra-op threads per session (default: local: CPU count - 1; "
        "dask: cores / Dask threads per host)",
    )
    p.add_argument("--resume", action="store_true", help="skip files already in --out")
    p.add_argument(
        "--engine", choices=["local", "dask"], default=None,
        help="local (default) or dask (needs bmcd[scale]; implied by --scheduler)",
    )
    p.add_argument(
        "--scheduler", metavar="ADDR", default=None,
        help="Dask scheduler address, e.g. tcp://host:8786 (default: a local cluster)",
    )
    p.add_argument(
        "--partition-size", type=_positive_int_arg, default=1024, metavar="N",
        help="dask: files per task (default 1024)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_cmd_score)


def _cmd_score(args: argparse.Namespace) -> int:
    from .scoring import score

    engine = args.engine or ("dask" if args.scheduler else "local")
    if args.scheduler and engine != "dask":
        raise BmcdError("--scheduler needs --engine dask (or leave out --engine).")
    summary = score(
        args.model,
        args.inputs,
        args.out,
        batch_size=args.batch_size,
        workers=args.workers,
        resume=args.resume,
        precision="int8" if args.int8 else "fp32",
        engine=engine,
        scheduler=args.scheduler,
        partition_size=args.partition_size,
        intra_op_threads=args.threads,
        progress=not args.no_progress,
    )
    print(summary)
    if summary.exit_status:
        n = summary.n_errors + summary.n_previous_errors
        print(
            f"bmcd score: {n} file(s) could not be scored; see the 'error' column of "
            f"{summary.out}",
            file=sys.stderr,
        )
        return EXIT_PARTIAL
    return EXIT_OK

# ---------------------------------------------------------------------------------------
# commands: bench
# ---------------------------------------------------------------------------------------


@_command
def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="compare Keras, tf.function and ONNX Runtime fp32/int8 throughput side by side",
        description=(
            "Time Keras predict, a compiled tf.function, ONNX Runtime fp32 and ONNX Runtime "
            "int8 on the same fresh inputs in one process (warm-up first, parity checked "
            "beside every timing), then bmcd score end to end over files on disk. Prints a "
            "table (images/s, ms/image at batch 1, ratio to Keras predict) and the machine. "
            "Without --model, random-weight models are built, exported and quantized once "
            "and cached: throughput does not depend on the values of the weights."
        ),
    )
    p.add_argument(
        "--arch", nargs="+", default=["mobilenet_v2", "resnet50"],
        choices=["mobilenet_v2", "resnet50"], help="architectures (default: both)",
    )  # fmt: skip
    p.add_argument("--image-size", type=int, default=224, help="input side in pixels (224)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (32); batch 1 too")
    p.add_argument(
        "--seconds", type=float, default=3.0,
        help="time per backend and batch size (3; at least 3 timed calls each)",
    )  # fmt: skip
    p.add_argument("--json", metavar="FILE", help="also write the full report as JSON")
    p.add_argument("--no-e2e", action="store_true", help="skip the end-to-end score rows")
    p.add_argument(
        "--n-files", type=int, default=2000, help="files scored end to end (2000)"
    )
    p.add_argument(
        "--e2e-precision", nargs="+", default=["fp32", "int8"], choices=["fp32", "int8"],
        help="precisions scored end to end with the local engine (default: both)",
    )  # fmt: skip
    p.add_argument(
        "--no-dask", action="store_true",
        help="skip the Dask local-cluster row (default: run it when dask is installed)",
    )  # fmt: skip
    p.add_argument(
        "--images", metavar="DIR",
        help="images to benchmark on, e.g. real C-NMC BMPs (default: synthetic cells)",
    )  # fmt: skip
    p.add_argument(
        "--model", metavar="DIR",
        help="benchmark this model directory instead of random-weight models",
    )  # fmt: skip
    p.add_argument(
        "--cache-dir", metavar="DIR",
        help="where benchmark models and files are kept (default ~/.cache/bmcd/bench)",
    )  # fmt: skip
    p.add_argument("--rebuild", action="store_true", help="rebuild the cached benchmark models")
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    import json

    from . import bench

    for name in ("image_size", "batch_size", "n_files"):
        if getattr(args, name) < 1:
            raise BmcdError(
                f"--{name.replace('_', '-')} must be a positive integer, received "
                f"{getattr(args, name)}."
            )
    if args.seconds <= 0:
        raise BmcdError(f"--seconds must be positive, received {args.seconds}.")
    report = bench.run_bench(
        archs=args.arch,
        image_size=args.image_size,
        batch_size=args.batch_size,
        seconds=args.seconds,
        e2e=not args.no_e2e,
        n_files=args.n_files,
        e2e_precisions=args.e2e_precision,
        dask=False if args.no_dask else None,
        images=args.images,
        model=args.model,
        cache_dir=args.cache_dir,
        rebuild=args.rebuild,
        log=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    print(bench.format_report(report))
    if args.json:
        from .artifact import atomic_write_bytes

        atomic_write_bytes(args.json, json.dumps(report, indent=2).encode() + b"\n")
        print(f"report written to {args.json}")
    return EXIT_OK


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
    except BrokenPipeError:
        # `bmcd info DATA | head`: the reader went away; stop quietly like other CLI tools
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
