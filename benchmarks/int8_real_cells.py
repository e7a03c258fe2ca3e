"""int8 export of a model trained on real cells with bmcd's default from-scratch recipe.

Trains with ``bmcd train`` on cnmc-dev (split by subject, seed 0), writes CSV manifests of
the split's test and training cells, runs ``bmcd export MODEL --int8`` with the test cells
as gate samples and the training cells for calibration (no ``--force``), and records the
exit status, the int8 gate from ``bmcd.json`` and the times in ``OUT/int8-gate.json``.
From the repository root::

    python benchmarks/int8_real_cells.py --out benchmarks/results/accuracy-cnmc-dev

About 15 minutes on 2 cores of an AMD EPYC (AVX2), most of it training.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = Path(os.environ.get("BMCD_SHARED_DATA", ROOT.parent / "shared" / "data")) / "cnmc-dev"


def _manifest(path: Path, part) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        for p, y in zip(part.absolute_paths(), part.labels, strict=True):
            w.writerow([p, "all" if int(y) == 1 else "hem"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--out", required=True, help="folder for int8-gate.json")
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="int8-gate", help="output file OUT/NAME.json")
    ap.add_argument("--train-flags", default="", metavar="FLAGS",
                    help="more bmcd train flags, e.g. '--average-epochs 5'")
    args = ap.parse_args(argv)
    data = Path(args.data)
    if not data.is_dir():
        print(f"no dataset at {data} (set --data or BMCD_SHARED_DATA)", file=sys.stderr)
        return 2
    from bmcd.artifact import ModelMeta
    from bmcd.data import load_dataset, split_dataset

    work = Path(tempfile.mkdtemp(prefix="bmcd-int8-"))
    model = work / "model"
    train_cmd = ["bmcd", "train", str(data), "--arch", "mobilenet_v2", "--weights", "none",
                 "--image-size", str(args.image_size), "--epochs", str(args.epochs),
                 "--fine-tune-epochs", "0", "--split", "subject", "--seed", str(args.seed),
                 "--out", str(model), "--quiet", *args.train_flags.split()]
    t0 = time.perf_counter()
    subprocess.run(train_cmd, check=True)
    train_s = time.perf_counter() - t0
    split = split_dataset(load_dataset(data), "subject", val=0.2, test=0.2, seed=args.seed)
    _manifest(work / "test.csv", split.test)
    _manifest(work / "train.csv", split.train)
    export_cmd = ["bmcd", "export", str(model), "--int8", "--samples", str(work / "test.csv"),
                  "--calibration", str(work / "train.csv")]
    t0 = time.perf_counter()
    proc = subprocess.run(export_cmd, capture_output=True, text=True)
    export_s = time.perf_counter() - t0
    meta = json.loads((model / "bmcd.json").read_text())
    report = json.loads((model / "report" / "metrics.json").read_text()) if (
        model / "report" / "metrics.json").is_file() else None
    record = {
        "model": " ".join(["bmcd", *train_cmd[1:]]).replace(str(data), "cnmc-dev").replace(
            str(model), "MODEL"),
        "preprocess": ModelMeta.from_dict(meta).preprocess.to_dict(),
        "split": {"test_subjects": split.test.subject_list(), "test_cells": len(split.test),
                  "train_cells": len(split.train)},
        "test_metrics": None if report is None else {
            k: report.get("metrics", {}).get(k) for k in ("roc_auc", "f1_weighted", "threshold")},
        "export_command": "bmcd export MODEL --int8 --samples test.csv --calibration train.csv",
        "export_exit_status": proc.returncode,
        "export_stderr_tail": proc.stderr.strip().splitlines()[-3:],
        "int8_file_written": (model / "model.int8.onnx").is_file(),
        "int8_gate": (meta.get("exports", {}).get("onnx_int8") or {}).get("gate"),
        "train_seconds": round(train_s, 1),
        "export_seconds": round(export_s, 1),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    print(json.dumps({k: record[k] for k in ("export_exit_status", "int8_file_written",
                                            "test_metrics")}, default=str))
    g = record["int8_gate"] or {}
    print({k: g.get(k) for k in ("passed", "n", "label_disagreements", "allowed_label_flips",
                                 "fp32_noise_label_flips", "roc_auc_change")})
    return 0 if proc.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
