"""``bmcd explain``: class activation map overlays of images as PNG files (docs/explain.rst).

Thin: parse, call :meth:`bmcd.Classifier.explain`, write the files, print a summary.
BmcdErrors propagate to the main CLI, which maps them to exit codes.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
from pathlib import Path

from ..errors import ConfigError, OutputWriteError
from ._common import add_command, load_options

__all__ = ["add_commands"]


def _add_explain(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "explain", _cmd_explain,
        "write class activation map overlays (where the model looked) as PNG files",
        "For each image: preprocess it like the model does, compute p(all) and the class "
        "activation map, and write DIR/<name>.cam.png (the map over the preprocessed cell; "
        "red = strongest evidence for the predicted label) plus DIR/explain.csv.",
    )
    p.add_argument("model", metavar="MODEL", help="model directory")
    p.add_argument("images", metavar="IMAGES", nargs="+",
                   help="image files and/or folders (searched recursively)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the PNG files")
    p.add_argument("--backend", default="auto", choices=("auto", "onnx", "keras"),
                   help="auto (default): ONNX Runtime when model.onnx has the cam output, "
                        "else Keras")
    p.add_argument("--int8", action="store_true", help="use model.int8.onnx (ONNX backend)")


def _load(args: argparse.Namespace):
    from ..artifact import ONNX_FILE
    from ..classifier import Classifier

    backend = args.backend
    if args.int8 and backend == "keras":
        raise ConfigError("--int8 needs the ONNX backend (--backend onnx or auto).")
    options = load_options(args)
    if backend == "auto":
        if args.int8 or (Path(args.model) / ONNX_FILE).is_file():
            clf = Classifier.load(args.model, backend="onnx", **options)
            if clf.backend_.has_cam or args.int8:
                return clf
        return Classifier.load(args.model, backend="keras")
    return Classifier.load(args.model, backend=backend, **options)


def _cmd_explain(args: argparse.Namespace) -> int:
    from ..data import resolve_image_paths
    from ..explain import to_png
    from ..labels import label_names

    paths: list[str] = []
    for item in args.images:
        paths += resolve_image_paths(item)[0] if Path(item).is_dir() else [os.path.abspath(item)]
    clf = _load(args)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputWriteError(f"Cannot create the output folder '{out}' ({exc}).") from exc
    p_all = clf.predict_proba(paths)[:, 1]
    labels = label_names(p_all, clf.threshold_)
    maps, overlays = clf.explain(paths, overlay=True)
    rows, used = [], set()
    for path, p, label, cam, img in zip(paths, p_all, labels, maps, overlays, strict=False):
        stem = Path(path).stem
        name = f"{stem}.cam.png"
        k = 1
        while name in used:  # same file name in two folders
            k += 1
            name = f"{stem}-{k}.cam.png"
        used.add(name)
        try:
            (out / name).write_bytes(to_png(img))
        except OSError as exc:
            raise OutputWriteError(f"Cannot write '{out / name}' ({exc}).") from exc
        rows.append([path, name, f"{p:.6f}", label, f"{float(cam.mean()):.6f}"])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "overlay", "p_all", "label", "cam_mean_logit"])
    w.writerows(rows)
    (out / "explain.csv").write_text(buf.getvalue(), encoding="utf-8")
    h, w_ = maps.shape[1:]
    print(f"bmcd explain: {len(rows)} overlays ({h}x{w_} maps, {clf.backend_.name} backend) "
          f"in {out}/ ; table: {out / 'explain.csv'}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add the ``explain`` subcommand."""
    _add_explain(sub)
