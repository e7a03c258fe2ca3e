"""Accuracy on real cells: bmcd's default recipe against the peer recipe, same folds.

Runs subject-grouped k-fold cross-validation (:func:`bmcd.cv.cross_validate`) of bmcd's
default from-scratch recipe and of the research report's own plain-Keras recipe
(``benchmarks/peer_recipe.py``) on identical folds (:func:`bmcd.cv.cv_splits`), scores both
with the same metric code (:func:`bmcd.cv.prediction_row`: ROC-AUC, weighted F1, balanced
accuracy, sensitivity, specificity, each with a 95% interval by bootstrap over subjects),
and writes ``OUT/<recipe>-seed<N>.json`` per run plus ``OUT/accuracy.json`` and
``OUT/accuracy.md`` (the tables of docs/accuracy.rst) over every run found in ``OUT``.

A finished run is not repeated: call the script again with more ``--seeds`` (or another
``--recipes``) and the tables are rebuilt from all runs in ``OUT``. From the repository
root::

    python benchmarks/accuracy_cv.py --out accuracy-cnmc-dev            # seed 0, both
    python benchmarks/accuracy_cv.py --out accuracy-cnmc-dev --seeds 1 2 --recipes bmcd

The folds are fixed by ``--fold-seed`` (default 0); ``--seeds`` are the training seeds.
The default settings (5 folds, 96 px, 15 epochs, both recipes, one seed) took about
30 minutes on 2 Xeon cores with the previous default recipe; bmcd's current recipe alone
took 79 minutes on 2 AVX2-only AMD EPYC cores (docs/accuracy.rst). bmcd's recipe is the
library's default from scratch (crop window 320 px, weight averaging over the last third
of the epochs) with every training subject of a fold training (``--val 0``);
``--crop-size none`` gives the tight crop, ``--set`` any TrainConfig field.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_DATA = Path(os.environ.get("BMCD_SHARED_DATA", ROOT.parent / "shared" / "data")) / "cnmc-dev"
KEYS = ("roc_auc", "f1_weighted", "balanced_accuracy", "sensitivity", "specificity")
KEY_NAMES = ("ROC-AUC", "weighted F1", "balanced acc.", "sensitivity", "specificity")


def _machine() -> dict[str, Any]:
    from bmcd.bench import machine_info

    m = machine_info()
    return {k: m.get(k) for k in ("cpu_model", "logical_cores", "usable_cores", "platform",
                                  "python", "bmcd", "tensorflow", "loadavg")}


def _parse_set(items: list[str]) -> dict[str, Any]:
    """``key=value`` TrainConfig overrides (values read as JSON when they parse)."""
    out: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def run_bmcd(ds, args, seed: int, settings: dict[str, Any]) -> dict[str, Any]:
    """bmcd's recipe through the library's own cross-validation (TTA and noise included)."""
    from bmcd.cv import cross_validate

    train = {"epochs": args.epochs, "fine_tune_epochs": 0, "batch_size": args.batch_size,
             **settings}
    from bmcd import PreprocessConfig

    pre = None
    if args.crop_size != "default":
        crop = None if args.crop_size == "none" else int(args.crop_size)
        pre = PreprocessConfig(image_size=args.image_size, crop_size=crop)
    return cross_validate(
        ds, preprocess=pre, folds=args.folds, arch="mobilenet_v2", image_size=args.image_size, weights=None,
        seed=seed, fold_seed=args.fold_seed, val=args.val, tta=True, verbose=args.verbose,
        **train)


def run_peer(ds, args, seed: int) -> dict[str, Any]:
    """The peer recipe on the same folds: trained on each fold's ``fit`` cells (the cells
    bmcd trains on), scored on its ``test`` cells at the report's threshold 0.5."""
    sys.path.insert(0, str(HERE))
    import peer_recipe
    from bmcd.cv import cv_splits, pooled_row, prediction_row

    t_all = time.perf_counter()
    rows, parts = [], []
    for i, part in enumerate(cv_splits(ds, folds=args.folds, seed=args.fold_seed, val=args.val)):
        t0 = time.perf_counter()
        fit, test = part["fit"], part["test"]
        p, rec = peer_recipe.fit_predict(
            fit.absolute_paths(), fit.labels, test.absolute_paths(), size=args.image_size,
            epochs=args.epochs, batch_size=args.batch_size, seed=seed,
            verbose=2 if args.verbose else 0)
        thr = peer_recipe.PEER_THRESHOLD
        row = {"fold": i, "train_subjects": fit.subject_list(),
               "test_subjects": test.subject_list(), "threshold": thr,
               "plain": prediction_row(test.labels, p, thr, test.subjects), **rec,
               "seconds": round(time.perf_counter() - t0, 2)}
        rows.append(row)
        parts.append((np.asarray(test.labels), p, thr, test.subjects))
        print(f"peer: fold {i}: ROC-AUC {row['plain']['roc_auc']:.3f} ({row['seconds']:.0f} s)",
              flush=True)
    return {
        "settings": {"recipe": "peer", "folds": args.folds, "fold_seed": args.fold_seed,
                     "seed": seed, "val": args.val, "image_size": args.image_size,
                     "epochs": args.epochs, "batch_size": args.batch_size,
                     "bn_momentum": peer_recipe.PEER_BN_MOMENTUM,
                     "gray_threshold": peer_recipe.PEER_GRAY_THRESHOLD,
                     "threshold": peer_recipe.PEER_THRESHOLD, "n": len(ds),
                     "subjects": ds.subject_list()},
        "folds": rows,
        "pooled": {"plain": pooled_row(parts)},
        "seconds": round(time.perf_counter() - t_all, 2),
    }


# ------------------------------------------------------------------------------ tables
def _cell(row: dict[str, Any], key: str) -> str:
    v = row.get(key)
    if v is None or not np.isfinite(v):
        return "n/a"
    lo, hi = (row.get("intervals", {}).get("metrics") or {}).get(key, [None, None])
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return f"{v:.3f}"
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def _runs(out: Path) -> list[dict[str, Any]]:
    runs = []
    for f in sorted(out.glob("*-seed*.json")):
        r = json.loads(f.read_text())
        r["_name"] = f.stem.rsplit("-seed", 1)[0]
        runs.append(r)
    return sorted(runs, key=lambda r: (r["_name"] != "bmcd", r["_name"], r["settings"]["seed"]))


def summarize(out: Path) -> dict[str, Any]:
    """Seed means and spreads, per-fold and per-subject ranges over every run in ``out``."""
    runs = _runs(out)
    summary: dict[str, Any] = {"runs": [], "seeds": {}}
    by: dict[tuple[str, str], list] = {}
    for r in runs:
        for kind, row in r["pooled"].items():
            fold_auc = [f[kind]["roc_auc"] for f in r["folds"]]
            subj = {s: v.get("accuracy") for s, v in row["per_subject"].items()}
            lo = min(subj, key=lambda s: subj[s])
            hi = max(subj, key=lambda s: subj[s])
            summary["runs"].append({
                "recipe": r["_name"], "seed": r["settings"]["seed"], "kind": kind,
                "pooled": {k: row[k] for k in KEYS},
                "intervals": {k: row["intervals"]["metrics"].get(k) for k in KEYS},
                "fold_roc_auc": fold_auc,
                "fold_roc_auc_mean": float(np.mean(fold_auc)),
                "fold_roc_auc_min": float(np.min(fold_auc)),
                "fold_roc_auc_max": float(np.max(fold_auc)),
                "subject_accuracy_min": [lo, subj[lo]],
                "subject_accuracy_max": [hi, subj[hi]],
                "noise_label_agreement": (r.get("noise") or {}).get("label_agreement")
                if kind == "plain" else None,
                "seconds": r["seconds"],
                "seconds_predict": sum(f.get(f"seconds_predict_{kind}", f.get("seconds_predict", 0))
                                       for f in r["folds"]),
            })
            by.setdefault((r["_name"], kind), []).append(row)
    for (name, kind), rows in by.items():
        s = {}
        for k in KEYS:
            v = np.array([row[k] for row in rows], dtype=float)
            s[k] = {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max()),
                    "spread": float(v.max() - v.min())}
        s["n_seeds"] = len(rows)
        summary["seeds"][f"{name} {kind}"] = s
    return summary


def markdown(out: Path, summary: dict[str, Any], machine: dict[str, Any]) -> str:
    runs = _runs(out)
    st = runs[0]["settings"] if runs else {}
    lines = [
        f"## Accuracy on real cells: {st.get('n')} cells, {len(st.get('subjects', []))} "
        f"subjects, {st.get('folds')} subject-grouped folds (fold seed {st.get('fold_seed')})",
        "",
        f"CPU: {machine.get('cpu_model')} ({machine.get('usable_cores')} usable cores), "
        f"load average at the end {machine.get('loadavg')}. 95% intervals by bootstrap over "
        "subjects; pooled rows put every held-out cell of every fold together.",
        "",
        "### Pooled",
        "",
        "| recipe | seed | scoring | " + " | ".join(KEY_NAMES) + " | noise stability | "
        "scoring time | CV wall time |",
        "|" + "---|" * (len(KEYS) + 6),
    ]
    for r in summary["runs"]:
        row = {**r["pooled"], "intervals": {"metrics": r["intervals"]}}
        ns = r["noise_label_agreement"]
        lines.append(f"| {r['recipe']} | {r['seed']} | {r['kind']} | "
                     + " | ".join(_cell(row, k) for k in KEYS)
                     + f" | {'' if ns is None else f'{ns:.4f}'} | {r['seconds_predict']:.0f} s"
                     f" | {r['seconds'] / 60:.1f} min |")
    lines += ["", "### Per fold and per subject (ROC-AUC over folds; accuracy per subject)", "",
              "| recipe | seed | scoring | fold ROC-AUC | mean | min | max | "
              "worst subject | best subject |", "|" + "---|" * 9]
    for r in summary["runs"]:
        lo, hi = r["subject_accuracy_min"], r["subject_accuracy_max"]
        lines.append(
            f"| {r['recipe']} | {r['seed']} | {r['kind']} | "
            + ", ".join(f"{a:.3f}" for a in r["fold_roc_auc"])
            + f" | {r['fold_roc_auc_mean']:.3f} | {r['fold_roc_auc_min']:.3f} | "
              f"{r['fold_roc_auc_max']:.3f} | {lo[0]} {lo[1]:.3f} | {hi[0]} {hi[1]:.3f} |")
    lines += ["", "### Over training seeds (same folds)", "",
              "| recipe, scoring | seeds | " + " | ".join(f"{n} mean (spread)" for n in KEY_NAMES)
              + " |", "|" + "---|" * (len(KEYS) + 2)]
    for name, s in summary["seeds"].items():
        lines.append(f"| {name} | {s['n_seeds']} | " + " | ".join(
            f"{s[k]['mean']:.3f} ({s[k]['spread']:.3f})" for k in KEYS) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="labelled folder (cnmc-dev)")
    ap.add_argument("--out", default="accuracy-cnmc-dev", help="output folder")
    ap.add_argument("--recipes", nargs="+", default=["bmcd", "peer"], choices=["bmcd", "peer"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0], help="training seeds")
    ap.add_argument("--fold-seed", type=int, default=0, help="seed of the fold assignment")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--val", type=float, default=0.0,
                    help="inner validation fraction of each fold's training subjects "
                         "(default: 0, as bmcd cv)")
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--crop-size", default="default", metavar="N|none|default",
                    help="PreprocessConfig.crop_size of bmcd's recipe (default: the library's "
                         "default for weights=None)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--name", default="bmcd",
                    help="name of the bmcd run in the tables (a variant: with --set)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="TrainConfig overrides for the bmcd recipe (a variant)")
    ap.add_argument("--force", action="store_true", help="rerun runs already in OUT")
    ap.add_argument("--verbose", type=int, default=0, help="Keras verbosity of each fit")
    args = ap.parse_args(argv)

    data = Path(args.data)
    if not data.is_dir():
        print(f"no dataset at {data} (set --data or BMCD_SHARED_DATA)", file=sys.stderr)
        return 2
    from bmcd.data import load_dataset
    from bmcd.metrics._evaluation import jsonable

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(data)
    print(ds.summary(), flush=True)
    settings = _parse_set(args.set)
    for seed in args.seeds:
        for recipe in args.recipes:
            name = args.name if recipe == "bmcd" else "peer"
            path = out / f"{name}-seed{seed}.json"
            if path.exists() and not args.force:
                print(f"{path} exists: skipped", flush=True)
                continue
            print(f"== {name}, seed {seed}: load {os.getloadavg()[0]:.2f}", flush=True)
            res = run_bmcd(ds, args, seed, settings) if recipe == "bmcd" else run_peer(ds, args, seed)
            res["machine"] = _machine()
            res["command"] = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
            path.write_text(json.dumps(jsonable(res), indent=1, allow_nan=False) + "\n")
            print(f"{path}: pooled ROC-AUC {res['pooled']['plain']['roc_auc']:.3f} "
                  f"({res['seconds'] / 60:.1f} min)", flush=True)
    summary = summarize(out)
    machine = _machine()
    (out / "accuracy.json").write_text(json.dumps(
        jsonable({"machine": machine, **summary}), indent=1, allow_nan=False) + "\n")
    text = markdown(out, summary, machine)
    (out / "accuracy.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
