"""Subject-grouped k-fold cross-validation of a training recipe (``bmcd cv``).

Each fold trains a fresh :class:`~bmcd.Classifier` on the other folds (an inner
subject-disjoint validation part for early stopping and the threshold, as ``bmcd train``
does), scores its held-out subjects, and reports the headline metrics with 95% intervals by
bootstrap over subjects. The pooled row puts every held-out cell of every fold together:
each fold's p(all) is first moved by a monotone logit shift that puts that fold's own
threshold at 0.5 (ranking within a fold unchanged), so the pooled labels are exactly the
folds' own labels. Folds keep linked subjects together (:data:`bmcd.data.LINKED_SUBJECTS`).
Each held-out fold is also scored with +-1 gray level of uniform noise on every pixel, and
the share of cells keeping their label is reported (the yardstick of the int8 gate,
:mod:`bmcd.exporters.quantize`). :func:`cv_splits` and :func:`prediction_row` are public so
that another recipe (benchmarks/peer_recipe.py) can be scored on the same folds with the
same metric code. See docs/accuracy.rst for the settings and how to reproduce the table.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from .artifact import atomic_write_bytes
from .errors import DatasetError
from .metrics import INTERVAL_METRICS, EvaluationReport
from .metrics._evaluation import jsonable

__all__ = ["cross_validate", "cv_markdown", "cv_splits", "pooled_row", "prediction_row",
           "CV_JSON", "CV_MARKDOWN", "NOISE_SEED"]

CV_JSON = "cv.json"
CV_MARKDOWN = "cv.md"
#: Seed of the +-1 gray level noise drawn for the label-stability check.
NOISE_SEED = 20190


def _recentre(p: np.ndarray, threshold: float) -> np.ndarray:
    """Monotone map of p(all) that sends ``threshold`` to 0.5 (a logit shift)."""
    eps = 1e-7
    q = np.clip(p, eps, 1 - eps)
    t = float(np.clip(threshold, eps, 1 - eps))
    z = np.log(q / (1 - q)) - np.log(t / (1 - t))
    return 1.0 / (1.0 + np.exp(-z))


def _row(rep: EvaluationReport) -> dict[str, Any]:
    out = {k: float(rep.metrics[k]) for k in INTERVAL_METRICS}
    out["n"] = rep.n
    out["threshold"] = rep.threshold
    out["intervals"] = rep.intervals
    out["subjects"] = sorted(rep.per_subject)
    out["per_subject"] = rep.per_subject
    return out


def prediction_row(y: Any, p: Any, threshold: float, subjects: Any) -> dict[str, Any]:
    """The metrics row of one set of predictions (95% intervals by bootstrap over subjects)."""
    return _row(EvaluationReport.from_predictions(
        np.asarray(y), np.asarray(p, dtype=np.float64), threshold=float(threshold),
        subjects=list(subjects)))


def pooled_row(parts: list[tuple[Any, Any, float, Any]]) -> dict[str, Any]:
    """One row over several folds' ``(y, p, threshold, subjects)``.

    Each fold's p(all) is moved by the monotone logit shift that puts its threshold at 0.5,
    so the pooled labels are the folds' own labels.
    """
    return prediction_row(
        np.concatenate([np.asarray(y) for y, _, _, _ in parts]),
        np.concatenate([_recentre(np.asarray(p, dtype=np.float64), t) for _, p, t, _ in parts]),
        0.5, [s for _, _, _, subj in parts for s in subj])


def cv_splits(ds: Any, folds: int = 5, seed: int = 0, val: float = 0.2) -> list[dict[str, Any]]:
    """The folds of :func:`cross_validate`: per fold ``train`` (all training subjects),
    ``fit`` (what the model trains on), ``validation`` (inner subject-disjoint part, or
    None) and ``test`` (held-out subjects), as :class:`~bmcd.data.Dataset`.

    The same ``(ds, folds, seed, val)`` always give the same parts, so another recipe can be
    trained and scored on exactly these cells.
    """
    from .data import split_by_subject, subject_folds

    out = []
    for train, test in subject_folds(ds, folds=folds, seed=seed):
        inner = split_by_subject(train, val=val, test=0.0, seed=seed) if val > 0 else None
        out.append({
            "train": train,
            "fit": inner.train if inner is not None else train,
            "validation": inner.val if inner is not None and len(inner.val) else None,
            "test": test,
        })
    return out


def _scores(clf: Any, test: Any, kinds: list[str]) -> tuple[dict[str, np.ndarray], dict]:
    """p(all) of the test cells per kind ("plain", "tta"), and the noise check.

    Images are preprocessed once; "noise" is p(all) of the same inputs plus uniform noise
    of +-1 gray level per pixel (clipped to [0, 255]).
    """
    from .data import tta_views
    from .preprocessing import preprocess_batch

    backend, config = clf.backend_, clf._config()
    paths = test.absolute_paths()
    rng = np.random.default_rng(NOISE_SEED)
    out: dict[str, list] = {k: [] for k in [*kinds, "noise"]}
    secs = {k: 0.0 for k in out}
    t = time.perf_counter()
    chunks = []
    for start in range(0, len(paths), 256):
        chunks.append(preprocess_batch(paths[start : start + 256], config))
    pre = time.perf_counter() - t
    for x in chunks:
        for kind in out:
            t = time.perf_counter()
            if kind == "plain":
                p = backend.predict_batch(x)
            elif kind == "tta":
                p = np.mean([backend.predict_batch(v) for v in tta_views(x)], axis=0)
            else:
                noisy = np.clip(x + rng.uniform(-1.0, 1.0, x.shape), 0.0, 255.0)
                p = backend.predict_batch(noisy.astype(np.float32))
            out[kind].append(np.asarray(p, dtype=np.float64).reshape(-1))
            secs[kind] += time.perf_counter() - t
    return ({k: np.concatenate(v) for k, v in out.items()},
            {k: round(v + pre, 2) for k, v in secs.items()})


def _noise_record(p: np.ndarray, p_noisy: np.ndarray, threshold: float) -> dict[str, Any]:
    flips = int(np.sum((p >= threshold) != (p_noisy >= threshold)))
    n = int(len(p))
    return {"n": n, "label_flips": flips,
            "label_agreement": 1.0 - flips / n if n else float("nan"),
            "max_abs_p_change": float(np.max(np.abs(p - p_noisy))) if n else float("nan"),
            "noise": "uniform +-1 gray level per pixel on the preprocessed input"}


def cross_validate(
    data: Any,
    folds: int = 5,
    *,
    arch: str = "mobilenet_v2",
    image_size: int | None = None,
    weights: Any = None,
    seed: int = 0,
    fold_seed: int | None = None,
    val: float = 0.0,
    threshold_rule: str | None = "youden",
    tta: bool = False,
    out: str | os.PathLike | None = None,
    verbose: int = 0,
    config: Any = None,
    preprocess: Any = None,
    **train_settings: Any,
) -> dict[str, Any]:
    """Cross-validate the training recipe over subject-grouped folds.

    Parameters
    ----------
    data : Dataset, folder or CSV
        Labelled images whose names (or manifest) give the subject.
    folds : int, default 5
    arch, image_size, weights, seed :
        As :class:`~bmcd.Classifier` (``weights=None``: from scratch, offline).
    fold_seed : int, optional
        Seed of the fold assignment and the inner validation split (default: ``seed``).
        Fix it to vary only the training seed over the same folds.
    val : float, default 0
        Inner validation fraction of each fold's training subjects (early stopping, unless
        weight averaging switches it off, and the threshold). 0 (default): every training
        subject trains and the threshold stays at 0.5, the setting measured best on real
        cells (docs/accuracy.rst).
    threshold_rule : {"youden", None}
        As :func:`bmcd.training.train_and_evaluate`.
    tta : bool
        Also score each held-out fold with test-time augmentation (8 flips/rotations)
        and report it as a second set of rows.
    out : path, optional
        Folder for ``cv.json`` and ``cv.md``.
    verbose : int
        Keras verbosity of each fit (0 silent).
    config : bmcd.training.config.TrainConfig, optional
        The training settings (``train_settings`` are merged over it).
    preprocess : PreprocessConfig, optional
        As :class:`~bmcd.Classifier` (default: the Classifier's default for ``weights``).
    **train_settings
        :class:`~bmcd.training.config.TrainConfig` fields (epochs, learning_rate, ...).

    Returns
    -------
    dict
        ``settings``, ``folds`` (per fold: rows ``plain`` and, with ``tta``, ``tta``; train
        and test subjects; ``noise``, the label stability under +-1 gray level of input
        noise; ``cells``, each test cell's name, label, subject and p(all) per kind, the
        noisy input's included; seconds), ``pooled`` ({plain, tta}), ``noise`` (pooled), ``seconds``.
    """
    from ._classifier_inputs import _as_dataset
    from .classifier import Classifier
    from .training.evaluate import _tune_threshold, _warn_if_constant

    ds = _as_dataset(data, "data")
    if len(ds) == 0:
        raise DatasetError("Cannot cross-validate on an empty dataset.")
    fseed = int(seed if fold_seed is None else fold_seed)
    parts = cv_splits(ds, folds=folds, seed=fseed, val=val)
    if image_size is None:
        image_size = Classifier().image_size
    kinds = ["plain", "tta"] if tta else ["plain"]
    t_all = time.perf_counter()
    fold_rows: list[dict[str, Any]] = []
    pooled: dict[str, list] = {k: [] for k in kinds}
    noise_parts: list[tuple[np.ndarray, np.ndarray, float]] = []
    for i, part in enumerate(parts):
        t0 = time.perf_counter()
        train, fit_on, val_part, test = part["train"], part["fit"], part["validation"], part["test"]
        clf = Classifier(arch=arch, image_size=image_size, weights=weights, seed=seed,
                         preprocess=preprocess)
        clf.fit(fit_on, validation=val_part, config=config, verbose=verbose, **train_settings)
        t_fit = time.perf_counter() - t0
        if val_part is not None:
            vrep = clf.evaluate(val_part)
            _warn_if_constant(vrep.p_all)
            _tune_threshold(clf, val_part, vrep, threshold_rule)
        thr = float(clf.threshold_)
        row: dict[str, Any] = {
            "fold": i,
            "train_subjects": train.subject_list(),
            "validation_subjects": val_part.subject_list() if val_part is not None else [],
            "test_subjects": test.subject_list(),
            "threshold": thr,
            "epochs_run": clf.meta_["training"].get("epochs_run"),
        }
        p, secs = _scores(clf, test, kinds)
        for kind in kinds:
            row[f"seconds_predict_{kind}"] = secs[kind]
            row[kind] = prediction_row(test.labels, p[kind], thr, test.subjects)
            pooled[kind].append((np.asarray(test.labels), p[kind], thr, test.subjects))
        row["noise"] = _noise_record(p["plain"], p["noise"], thr)
        row["cells"] = {
            "names": [Path(x).name for x in test.absolute_paths()],
            "labels": [int(v) for v in np.asarray(test.labels).reshape(-1)],
            "subjects": [str(v) for v in test.subjects],
            **{f"p_all_{kind}": np.round(p[kind], 6).tolist() for kind in [*kinds, "noise"]},
        }
        noise_parts.append((_recentre(p["plain"], thr), _recentre(p["noise"], thr), 0.5))
        row["seconds_fit"] = round(t_fit, 2)
        row["seconds"] = round(time.perf_counter() - t0, 2)
        fold_rows.append(row)
        if verbose:
            print(f"bmcd cv: fold {i}: ROC-AUC {row['plain']['roc_auc']:.3f} "
                  f"({row['seconds']:.0f} s)", flush=True)
    pooled_rows = {kind: pooled_row(acc) for kind, acc in pooled.items()}
    noise = _noise_record(np.concatenate([a for a, _, _ in noise_parts]),
                          np.concatenate([b for _, b, _ in noise_parts]), 0.5)
    # the flips are the folds' own (monotone shift); the largest change of p(all) is taken
    # on the folds' own scale, not the shifted one
    noise["max_abs_p_change"] = max(f["noise"]["max_abs_p_change"] for f in fold_rows)
    result = {
        "settings": {
            "folds": int(folds), "arch": arch, "image_size": image_size,
            "weights": None if weights is None else str(weights), "seed": int(seed),
            "fold_seed": fseed,
            "preprocess": clf._config().to_dict() if parts else None,
            "val": float(val), "threshold_rule": threshold_rule, "tta": bool(tta),
            "train_settings": jsonable({**(config.to_dict() if config is not None else {}),
                                        **train_settings}),
            "n": len(ds),
            "subjects": ds.subject_list(),
        },
        "folds": fold_rows,
        "pooled": pooled_rows,
        "noise": noise,
        "seconds": round(time.perf_counter() - t_all, 2),
    }
    if out is not None:
        d = Path(out)
        d.mkdir(parents=True, exist_ok=True)
        text = json.dumps(jsonable(result), indent=1, allow_nan=False) + "\n"
        atomic_write_bytes(d / CV_JSON, text.encode("utf-8"))
        atomic_write_bytes(d / CV_MARKDOWN, cv_markdown(result).encode("utf-8"))
    return result


def _fmt(row: dict[str, Any], key: str) -> str:
    v = row[key]
    lo, hi = (row.get("intervals", {}).get("metrics") or {}).get(key, [float("nan")] * 2)
    lo = float("nan") if lo is None else lo
    hi = float("nan") if hi is None else hi
    if v is None or not np.isfinite(v):
        return "n/a"
    iv = f" [{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) and np.isfinite(hi) else ""
    return f"{v:.3f}{iv}"


def cv_markdown(result: dict[str, Any]) -> str:
    """The cross-validation table (per fold and pooled, 95% subject-bootstrap intervals)."""
    keys = ("roc_auc", "f1_weighted", "balanced_accuracy", "sensitivity", "specificity")
    head = "| rows | cells | subjects | " + " | ".join(keys) + " |"
    lines = [
        f"## bmcd cv: {result['settings']['folds']} subject-grouped folds, "
        f"{result['settings']['arch']}",
        "",
        "Values with 95% intervals by bootstrap over subjects.",
        "",
        head,
        "|" + "---|" * (3 + len(keys)),
    ]
    kinds = list(result["pooled"])
    for f in result["folds"]:
        for kind in kinds:
            r = f[kind]
            lines.append(f"| fold {f['fold']} {kind} | {r['n']} | {len(r['subjects'])} | "
                         + " | ".join(_fmt(r, k) for k in keys) + " |")
    for kind in kinds:
        r = result["pooled"][kind]
        lines.append(f"| **pooled {kind}** | {r['n']} | {len(r['subjects'])} | "
                     + " | ".join(_fmt(r, k) for k in keys) + " |")
    nz = result.get("noise")
    if nz:
        lines += ["", f"Label stability under +-1 gray level of uniform input noise: "
                      f"{nz['label_agreement']:.4f} ({nz['label_flips']} of {nz['n']} cells "
                      f"change label)."]
    lines += ["", "### Per subject (pooled, plain)", "",
              "| subject | cells | true class | mean p(all) | called 'all' | accuracy |",
              "|---|---|---|---|---|---|"]
    for s, r in result["pooled"]["plain"]["per_subject"].items():
        lines.append(f"| {s} | {r['n']} | {r.get('true_class', '?')} | {r['mean_p_all']:.3f} "
                     f"| {r['frac_called_all']:.3f} | {r.get('accuracy', float('nan')):.3f} |")
    return "\n".join(lines) + "\n"
