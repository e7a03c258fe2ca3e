"""Subject-grouped k-fold cross-validation of a training recipe (``bmcd cv``).

Each fold trains a fresh :class:`~bmcd.Classifier` on the other folds (an inner
subject-disjoint validation part for early stopping and the threshold, as ``bmcd train``
does), scores its held-out subjects, and reports the headline metrics with 95% intervals by
bootstrap over subjects. The pooled row puts every held-out cell of every fold together:
each fold's p(all) is first moved by a monotone logit shift that puts that fold's own
threshold at 0.5 (ranking within a fold unchanged), so the pooled labels are exactly the
folds' own labels. Folds keep linked subjects together (:data:`bmcd.data.LINKED_SUBJECTS`).
See docs/accuracy.rst for the settings and how to reproduce the table.
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

__all__ = ["cross_validate", "cv_markdown", "CV_JSON", "CV_MARKDOWN"]

CV_JSON = "cv.json"
CV_MARKDOWN = "cv.md"


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


def cross_validate(
    data: Any,
    folds: int = 5,
    *,
    arch: str = "mobilenet_v2",
    image_size: int | None = None,
    weights: Any = None,
    seed: int = 0,
    val: float = 0.2,
    threshold_rule: str | None = "youden",
    tta: bool = False,
    out: str | os.PathLike | None = None,
    verbose: int = 0,
    config: Any = None,
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
    val : float, default 0.2
        Inner validation fraction of each fold's training subjects (early stopping and
        the threshold); 0 trains without one and keeps the threshold at 0.5.
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
    **train_settings
        :class:`~bmcd.training.config.TrainConfig` fields (epochs, learning_rate, ...).

    Returns
    -------
    dict
        ``settings``, ``folds`` (per fold: rows ``plain`` and, with ``tta``, ``tta``; train
        and test subjects; seconds), ``pooled`` ({plain, tta}), ``seconds``.
    """
    from ._classifier_inputs import _as_dataset
    from .classifier import Classifier
    from .data import split_by_subject, subject_folds
    from .training.evaluate import _tune_threshold, _warn_if_constant

    ds = _as_dataset(data, "data")
    if len(ds) == 0:
        raise DatasetError("Cannot cross-validate on an empty dataset.")
    parts = subject_folds(ds, folds=folds, seed=seed)
    t_all = time.perf_counter()
    fold_rows: list[dict[str, Any]] = []
    pooled: dict[str, dict[str, list]] = {}
    for i, (train, test) in enumerate(parts):
        t0 = time.perf_counter()
        inner = split_by_subject(train, val=val, test=0.0, seed=seed) if val > 0 else None
        clf = Classifier(arch=arch, image_size=image_size, weights=weights, seed=seed)
        fit_on = inner.train if inner is not None else train
        val_part = inner.val if inner is not None and len(inner.val) else None
        clf.fit(fit_on, validation=val_part, config=config, verbose=verbose, **train_settings)
        if val_part is not None:
            vrep = clf.evaluate(val_part)
            _warn_if_constant(vrep.p_all)
            _tune_threshold(clf, val_part, vrep, threshold_rule)
        row: dict[str, Any] = {
            "fold": i,
            "train_subjects": train.subject_list(),
            "validation_subjects": val_part.subject_list() if val_part is not None else [],
            "test_subjects": test.subject_list(),
            "threshold": float(clf.threshold_),
        }
        for kind in (["plain", "tta"] if tta else ["plain"]):
            t1 = time.perf_counter()
            p = clf._p_all(test, tta=(kind == "tta"))
            row[f"seconds_predict_{kind}"] = round(time.perf_counter() - t1, 2)
            rep = EvaluationReport.from_predictions(
                test.labels, p, threshold=clf.threshold_, subjects=test.subjects)
            row[kind] = _row(rep)
            acc = pooled.setdefault(kind, {"y": [], "p": [], "s": []})
            acc["y"].append(np.asarray(test.labels))
            acc["p"].append(_recentre(p, clf.threshold_))
            acc["s"].extend(test.subjects)
        row["seconds"] = round(time.perf_counter() - t0, 2)
        fold_rows.append(row)
    pooled_rows = {}
    for kind, acc in pooled.items():
        rep = EvaluationReport.from_predictions(
            np.concatenate(acc["y"]), np.concatenate(acc["p"]), threshold=0.5,
            subjects=acc["s"])
        pooled_rows[kind] = _row(rep)
    result = {
        "settings": {
            "folds": int(folds), "arch": arch, "image_size": image_size,
            "weights": None if weights is None else str(weights), "seed": int(seed),
            "val": float(val), "threshold_rule": threshold_rule, "tta": bool(tta),
            "train_settings": jsonable({**(config.to_dict() if config is not None else {}),
                                        **train_settings}),
            "n": len(ds),
            "subjects": ds.subject_list(),
        },
        "folds": fold_rows,
        "pooled": pooled_rows,
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
    lines += ["", "### Per subject (pooled, plain)", "",
              "| subject | cells | true class | mean p(all) | called 'all' | accuracy |",
              "|---|---|---|---|---|---|"]
    for s, r in result["pooled"]["plain"]["per_subject"].items():
        lines.append(f"| {s} | {r['n']} | {r.get('true_class', '?')} | {r['mean_p_all']:.3f} "
                     f"| {r['frac_called_all']:.3f} | {r.get('accuracy', float('nan')):.3f} |")
    return "\n".join(lines) + "\n"
