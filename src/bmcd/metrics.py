"""Metrics, plots and the evaluation report.

The numbers are plain numpy; matplotlib (the ``report`` extra) is imported only when a
report is saved with its plots. Conventions used throughout:

- ``y_true`` holds 0 for ``"hem"`` (normal) and 1 for ``"all"`` (leukemic blast), the positive
  class. The class names ``"hem"`` / ``"all"`` and booleans are accepted as well.
- ``p_all`` is the model's probability of ``"all"``. A cell is predicted ``"all"`` when
  ``p_all >= threshold`` (see :func:`apply_threshold`).
- The confusion matrix is ``[[TN, FP], [FN, TP]]``: rows are the true class, columns the
  predicted class, both ordered ``(hem, all)``.
- A ratio whose denominator is zero (for example the precision of a model that never predicts
  ``"all"``) is 0.0, never an error. ROC AUC is undefined with a single class: it is NaN and a
  :class:`UndefinedMetricWarning` is issued.

Examples
--------
>>> import numpy as np
>>> from bmcd.metrics import classification_metrics, roc_auc
>>> y = np.array([0, 0, 1, 1])
>>> p = np.array([0.1, 0.6, 0.4, 0.9])
>>> roc_auc(y, p)
0.75
>>> m = classification_metrics(y, p, threshold=0.5)
>>> m["accuracy"], m["confusion_matrix"]
(0.5, [[1, 1], [1, 1]])
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._deps import optional_import
from ._version import __version__
from .artifact import CLASSES, atomic_write_bytes

__all__ = [
    "UndefinedMetricWarning",
    "apply_threshold",
    "confusion_matrix",
    "roc_curve",
    "roc_auc",
    "precision_recall_f1",
    "classification_metrics",
    "tune_threshold",
    "EvaluationReport",
    "METRICS_JSON",
    "ROC_PNG",
    "CONFUSION_PNG",
    "CURVES_PNG",
    "REPORT_HTML",
]

METRICS_JSON = "metrics.json"
ROC_PNG = "roc.png"
CONFUSION_PNG = "confusion.png"
CURVES_PNG = "curves.png"
REPORT_HTML = "report.html"

_REPORT_FORMAT = 1
SYNTHETIC_BANNER = "Data: SYNTHETIC cells (not real patients)"


class UndefinedMetricWarning(UserWarning):
    """A metric is undefined for the given input (e.g. ROC AUC with one class present)."""


# --------------------------------------------------------------------------- input checks


def _as_labels(y: Any, name: str = "y_true") -> np.ndarray:
    """Coerce labels to a 1-D int64 array of 0 (hem) / 1 (all), or raise ValueError."""
    arr = np.asarray(y)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(
            f"{name} must be 1-D (one label per cell); received an array of shape {arr.shape}."
        )
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind in "USO":
        lookup = {c: i for i, c in enumerate(CLASSES)}
        try:
            return np.array([lookup[str(v)] for v in arr.tolist()], dtype=np.int64)
        except KeyError:
            bad = sorted({str(v) for v in arr.tolist()} - set(lookup))
            raise ValueError(
                f"{name} must hold 0/1 or the class names {list(CLASSES)}; received unknown "
                f"labels {bad[:5]}."
            ) from None
    if arr.dtype.kind == "b":
        return arr.astype(np.int64)
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be numeric 0/1 labels; received dtype {arr.dtype}.")
    bad = np.setdiff1d(np.unique(arr), [0, 1])
    if bad.size:
        raise ValueError(
            f"{name} must contain only 0 (hem) and 1 (all); received other values "
            f"{bad[:5].tolist()}. Threshold probabilities with apply_threshold() first."
        )
    return arr.astype(np.int64)


def _as_scores(p: Any, name: str = "p_all") -> np.ndarray:
    """Coerce scores to a 1-D finite float64 array, or raise ValueError."""
    arr = np.asarray(p, dtype=np.float64)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim == 2 and arr.shape[1] == 2:
        raise ValueError(
            f"{name} must be 1-D p(all); received shape {arr.shape}, which looks like "
            f"predict_proba output. Pass its column 1 (proba[:, 1])."
        )
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D; received an array of shape {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(
            f"{name} must be finite; received {int((~np.isfinite(arr)).sum())} NaN/inf values."
        )
    return arr


def _check_same_length(a: np.ndarray, b: np.ndarray, names: tuple[str, str]) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same length; received "
            f"{a.shape[0]} and {b.shape[0]}."
        )


def _div(num: float, den: float) -> float:
    """``num / den`` as float, 0.0 when ``den`` is 0."""
    return float(num) / float(den) if den else 0.0


# --------------------------------------------------------------------------- pure functions


def apply_threshold(p_all: Any, threshold: float = 0.5) -> np.ndarray:
    """Turn probabilities of ``"all"`` into 0/1 labels: 1 where ``p_all >= threshold``.

    Parameters
    ----------
    p_all : array-like of shape (n,)
        Probability (or any score) of the positive class ``"all"``.
    threshold : float, default 0.5
        Decision threshold; ties go to ``"all"``.

    Returns
    -------
    numpy.ndarray of shape (n,), int64
    """
    p = _as_scores(p_all)
    return (p >= float(threshold)).astype(np.int64)


def confusion_matrix(y_true: Any, y_pred: Any) -> np.ndarray:
    """The 2x2 confusion matrix ``[[TN, FP], [FN, TP]]``.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n,)
        0 (hem) / 1 (all) labels. Rows of the result are the true class, columns the
        predicted class, both in the order (hem, all).

    Returns
    -------
    numpy.ndarray of shape (2, 2), int64

    Examples
    --------
    >>> confusion_matrix([0, 0, 1, 1, 1], [0, 1, 1, 1, 0]).tolist()
    [[1, 1], [1, 2]]
    """
    t = _as_labels(y_true, "y_true")
    p = _as_labels(y_pred, "y_pred")
    _check_same_length(t, p, ("y_true", "y_pred"))
    return np.bincount(2 * t + p, minlength=4).reshape(2, 2).astype(np.int64)


def _binary_clf_curve(t: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative (fps, tps) at each distinct score, scores in decreasing order."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    t_sorted = t[order]
    # last index of each run of equal scores: ties are crossed together
    distinct = np.where(np.diff(s_sorted))[0]
    ends = np.r_[distinct, s_sorted.size - 1]
    tps = np.cumsum(t_sorted)[ends]
    fps = (ends + 1) - tps
    return fps, tps, s_sorted[ends]


def roc_curve(y_true: Any, p: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Receiver operating characteristic curve.

    One point per distinct score: tied scores move the curve diagonally in one step, so
    ties never favour either class. The first point is ``(0, 0)`` with threshold ``inf``.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        0 (hem) / 1 (all) labels.
    p : array-like of shape (n,)
        Score of ``"all"`` (higher means more likely ``"all"``).

    Returns
    -------
    fpr, tpr : numpy.ndarray
        False and true positive rates (increasing) when predicting ``"all"`` for
        ``p >= thresholds[i]``. An axis whose class is absent is NaN (with an
        :class:`UndefinedMetricWarning`).
    thresholds : numpy.ndarray
        Decreasing; ``thresholds[0]`` is ``inf``.

    Examples
    --------
    >>> fpr, tpr, thr = roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    >>> fpr.tolist(), tpr.tolist()
    ([0.0, 0.0, 0.5, 0.5, 1.0], [0.0, 0.5, 0.5, 1.0, 1.0])
    """
    t = _as_labels(y_true)
    s = _as_scores(p, "p")
    _check_same_length(t, s, ("y_true", "p"))
    fps, tps, thr = _binary_clf_curve(t, s)
    fps = np.r_[0, fps].astype(np.float64)
    tps = np.r_[0, tps].astype(np.float64)
    thresholds = np.r_[np.inf, thr]
    n_pos, n_neg = tps[-1], fps[-1]
    if n_neg == 0:
        warnings.warn(
            "No 'hem' (negative) samples in y_true: the false positive rate is undefined (NaN).",
            UndefinedMetricWarning,
            stacklevel=2,
        )
        fpr = np.full_like(fps, np.nan)
    else:
        fpr = fps / n_neg
    if n_pos == 0:
        warnings.warn(
            "No 'all' (positive) samples in y_true: the true positive rate is undefined (NaN).",
            UndefinedMetricWarning,
            stacklevel=2,
        )
        tpr = np.full_like(tps, np.nan)
    else:
        tpr = tps / n_pos
    return fpr, tpr, thresholds


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks (midranks)."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)  # rank of the last element of each tie group
    mid = upper - (counts - 1) / 2.0
    return mid[inverse.reshape(-1)]


def roc_auc(y_true: Any, p: Any) -> float:
    """Area under the ROC curve, by the Mann-Whitney U statistic.

    Equals the probability that a random ``"all"`` cell scores higher than a random
    ``"hem"`` cell, ties counting one half (midranks), i.e. exactly the trapezoidal area
    under :func:`roc_curve`.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        0 (hem) / 1 (all) labels.
    p : array-like of shape (n,)
        Score of ``"all"``.

    Returns
    -------
    float
        In [0, 1]; NaN (with an :class:`UndefinedMetricWarning`) when only one class is present.

    Examples
    --------
    >>> roc_auc([0, 1, 0, 1], [0.2, 0.2, 0.2, 0.2])
    0.5
    """
    t = _as_labels(y_true)
    s = _as_scores(p, "p")
    _check_same_length(t, s, ("y_true", "p"))
    n_pos = int(t.sum())
    n_neg = int(t.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        warnings.warn(
            f"ROC AUC is undefined with a single class present (received {n_neg} 'hem' and "
            f"{n_pos} 'all'); returning NaN.",
            UndefinedMetricWarning,
            stacklevel=2,
        )
        return float("nan")
    ranks = _average_ranks(s)
    u = ranks[t == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def precision_recall_f1(
    y_true: Any, y_pred: Any, pos_label: int | str = 1
) -> tuple[float, float, float]:
    """Precision, recall and F1 of one class.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n,)
        0 (hem) / 1 (all) labels.
    pos_label : {1, 0, "all", "hem"}, default 1
        The class the scores are computed for (1 / ``"all"`` by default).

    Returns
    -------
    precision, recall, f1 : float
        Each 0.0 when its denominator is zero.

    Examples
    --------
    >>> precision_recall_f1([0, 0, 1, 1, 1], [0, 1, 1, 1, 0])
    (0.6666666666666666, 0.6666666666666666, 0.6666666666666666)
    """
    if isinstance(pos_label, str):
        if pos_label not in CLASSES:
            raise ValueError(
                f"pos_label must be one of {list(CLASSES)} or 0/1; received {pos_label!r}."
            )
        k = CLASSES.index(pos_label)
    else:
        if pos_label not in (0, 1):
            raise ValueError(f"pos_label must be 0 (hem) or 1 (all); received {pos_label!r}.")
        k = int(pos_label)
    cm = confusion_matrix(y_true, y_pred)
    tp = cm[k, k]
    predicted = cm[:, k].sum()
    actual = cm[k, :].sum()
    precision = _div(tp, predicted)
    recall = _div(tp, actual)
    f1 = _div(2 * tp, predicted + actual)  # = 2PR/(P+R), 0 when both are 0
    return precision, recall, f1


def classification_metrics(y_true: Any, p_all: Any, threshold: float = 0.5) -> dict[str, Any]:
    """All the headline numbers for probabilities ``p_all`` at one threshold.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        0 (hem) / 1 (all) labels.
    p_all : array-like of shape (n,)
        Probability of ``"all"``; predicted ``"all"`` where ``p_all >= threshold``.
    threshold : float, default 0.5

    Returns
    -------
    dict
        ``n``, ``counts`` {hem, all} (true), ``predicted_counts``, ``threshold``,
        ``accuracy``, ``balanced_accuracy`` (mean recall over the classes present),
        ``precision`` / ``recall`` / ``sensitivity`` (of ``"all"``), ``specificity``
        (recall of ``"hem"``), ``f1`` {hem, all}, ``f1_weighted`` (support-weighted mean of
        the per-class F1: the C-NMC 2019 challenge metric), ``f1_macro``, ``roc_auc`` (NaN
        when undefined), ``confusion_matrix`` ``[[TN, FP], [FN, TP]]`` as nested lists and
        ``per_class`` {hem|all: {precision, recall, f1, support}}.

    Examples
    --------
    >>> m = classification_metrics([0, 0, 0, 1], [0.1, 0.2, 0.7, 0.9])
    >>> m["accuracy"], m["f1"]["all"], m["specificity"]
    (0.75, 0.6666666666666666, 0.6666666666666666)
    """
    t = _as_labels(y_true)
    p = _as_scores(p_all)
    _check_same_length(t, p, ("y_true", "p_all"))
    threshold = float(threshold)
    pred = (p >= threshold).astype(np.int64)
    cm = confusion_matrix(t, pred)
    (tn, fp), (fn, tp) = cm.tolist()
    n = int(t.size)
    support = {"hem": tn + fp, "all": fn + tp}
    per_class: dict[str, dict[str, float]] = {}
    for k, name in enumerate(CLASSES):
        prec, rec, f1 = precision_recall_f1(t, pred, pos_label=k)
        per_class[name] = {"precision": prec, "recall": rec, "f1": f1, "support": support[name]}
    recalls_present = [per_class[c]["recall"] for c in CLASSES if support[c] > 0]
    if support["hem"] > 0 and support["all"] > 0:
        auc = roc_auc(t, p)
    else:
        warnings.warn(
            f"ROC AUC is undefined with a single class present (received {support['hem']} "
            f"'hem' and {support['all']} 'all'); reporting NaN.",
            UndefinedMetricWarning,
            stacklevel=2,
        )
        auc = float("nan")
    f1 = {c: per_class[c]["f1"] for c in CLASSES}
    return {
        "n": n,
        "counts": dict(support),
        "predicted_counts": {"hem": tn + fn, "all": fp + tp},
        "threshold": threshold,
        "accuracy": _div(tn + tp, n),
        "balanced_accuracy": float(np.mean(recalls_present)) if recalls_present else 0.0,
        "precision": per_class["all"]["precision"],
        "recall": per_class["all"]["recall"],
        "sensitivity": per_class["all"]["recall"],
        "specificity": per_class["hem"]["recall"],
        "f1": f1,
        "f1_weighted": _div(sum(f1[c] * support[c] for c in CLASSES), n),
        "f1_macro": float(np.mean([f1[c] for c in CLASSES])),
        "roc_auc": auc,
        "confusion_matrix": cm.tolist(),
        "per_class": per_class,
    }


class _Youden(str):
    """Default of ``tune_threshold(method=...)``: Youden unless ``sensitivity`` is given."""

    def __repr__(self) -> str:
        return "'youden'"


_YOUDEN_DEFAULT = _Youden("youden")
_TUNE_METHODS = ("youden",)


def tune_threshold(
    y_true: Any,
    p_all: Any,
    method: str | None = _YOUDEN_DEFAULT,
    sensitivity: float | None = None,
) -> float:
    """Choose a decision threshold on labelled (validation) probabilities.

    Exactly one rule is used: ``method="youden"`` (the default) maximises Youden's
    J = sensitivity + specificity - 1; ``sensitivity=s`` returns the highest threshold whose
    recall of ``"all"`` is at least ``s``. Passing ``sensitivity`` alone selects the second
    rule; passing both an explicit ``method`` and ``sensitivity``, or neither, is an error.

    The result is one of the scores in ``p_all``, so ``p_all >= threshold`` reproduces the
    chosen operating point exactly. Among thresholds with equal J, the highest is returned.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        0 (hem) / 1 (all) labels.
    p_all : array-like of shape (n,)
        Probability of ``"all"``.
    method : {"youden"} or None, default "youden"
    sensitivity : float in (0, 1], optional

    Returns
    -------
    float

    Raises
    ------
    ValueError
        For an unknown method, both or neither rule, a sensitivity outside (0, 1], or when
        the classes the rule needs are absent from ``y_true``.

    Examples
    --------
    >>> tune_threshold([0, 0, 1, 1], [0.1, 0.3, 0.6, 0.8])
    0.6
    >>> tune_threshold([0, 0, 1, 1], [0.1, 0.7, 0.6, 0.8], sensitivity=1.0)
    0.6
    """
    explicit_method = method is not None and method is not _YOUDEN_DEFAULT
    if sensitivity is not None and explicit_method:
        raise ValueError(
            f"tune_threshold takes exactly one rule; received method={method!r} and "
            f"sensitivity={sensitivity!r}. Pass method=... or sensitivity=..., not both."
        )
    if sensitivity is None and method is None:
        raise ValueError(
            "tune_threshold needs one rule; received method=None and sensitivity=None. "
            "Pass method='youden' or sensitivity=<target recall of 'all', e.g. 0.95>."
        )
    t = _as_labels(y_true)
    p = _as_scores(p_all)
    _check_same_length(t, p, ("y_true", "p_all"))
    n_pos = int(t.sum())
    n_neg = int(t.size - n_pos)

    if sensitivity is not None:
        s = float(sensitivity)
        if not (0.0 < s <= 1.0):
            raise ValueError(f"sensitivity must be in (0, 1]; received {sensitivity!r}.")
        if n_pos == 0:
            raise ValueError(
                "tune_threshold(sensitivity=...) needs 'all' samples in y_true; received none."
            )
        _, tps, thr = _binary_clf_curve(t, p)
        # thresholds decrease and tps increase: the first one reaching the target is the highest
        need = math.ceil(s * n_pos - 1e-9)
        i = int(np.argmax(tps >= need))
        return float(thr[i])

    if method not in _TUNE_METHODS:
        raise ValueError(f"Unknown method {method!r}; expected one of {list(_TUNE_METHODS)}.")
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"tune_threshold(method='youden') needs both classes in y_true; received "
            f"{n_neg} 'hem' and {n_pos} 'all'."
        )
    fps, tps, thr = _binary_clf_curve(t, p)
    # compare J with exact integer arithmetic: J * n_pos * n_neg = tps * n_neg - fps * n_pos
    j = tps.astype(np.int64) * n_neg - fps.astype(np.int64) * n_pos
    return float(thr[int(np.argmax(j))])  # argmax: the first (highest threshold) maximiser


# --------------------------------------------------------------------------- JSON helpers


def _jsonable(obj: Any) -> Any:
    """A deep copy of ``obj`` that ``json.dumps(allow_nan=False)`` accepts (NaN/inf -> None)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "history") and isinstance(obj.history, Mapping):  # keras History
        return _jsonable(obj.history)
    return str(obj)


def _nan_if_none(x: Any) -> float:
    return float("nan") if x is None else float(x)


# --------------------------------------------------------------------------- history


def _numeric_series(values: Any) -> list[float] | None:
    """A list of floats (None -> NaN) or None when ``values`` is not a numeric sequence."""
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, (Sequence, np.ndarray)):
        return None
    out: list[float] = []
    for v in list(values):
        if v is None:
            out.append(float("nan"))
            continue
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            return None
    return out or None


def _normalise_history(history: Any) -> list[tuple[str, dict[str, list[float]]]]:
    """Turn a Keras history (or several phases of it) into ``[(phase_name, {metric: values})]``.

    Accepts a dict of lists, a Keras ``History`` object, ``{"phases": [...]}`` where each phase
    is a dict of lists, optionally with a ``"name"``/``"phase"`` label and the lists under
    ``"history"``, or a list of such phases. Non-numeric entries are ignored.
    """
    if history is None:
        return []
    if hasattr(history, "history") and isinstance(history.history, Mapping):
        history = history.history
    phases_raw: list[Any]
    if isinstance(history, Mapping) and isinstance(history.get("phases"), (list, tuple)):
        phases_raw = list(history["phases"])
    elif isinstance(history, (list, tuple)):
        phases_raw = list(history)
    else:
        phases_raw = [history]
    out: list[tuple[str, dict[str, list[float]]]] = []
    for i, ph in enumerate(phases_raw):
        if hasattr(ph, "history") and isinstance(ph.history, Mapping):
            ph = ph.history
        if not isinstance(ph, Mapping):
            continue
        name = ph.get("name", ph.get("phase"))
        name = str(name) if isinstance(name, (str, int)) else f"phase {i + 1}"
        body = ph.get("history") if isinstance(ph.get("history"), Mapping) else ph
        series = {}
        for k, v in body.items():
            vals = _numeric_series(v)
            if vals is not None and k not in ("epoch", "epochs"):
                series[str(k)] = vals
        if series:
            out.append((name, series))
    return out


def _metric_groups(keys: Sequence[str]) -> list[tuple[str, list[str]]]:
    """Pair ``x`` with ``val_x``: ``[("loss", ["loss", "val_loss"]), ...]``, loss first."""
    bases: list[str] = []
    for k in keys:
        base = k[4:] if k.startswith("val_") else k
        if base not in bases:
            bases.append(base)
    bases.sort(key=lambda b: (b != "loss", b in ("lr", "learning_rate")))
    return [(b, [k for k in (b, f"val_{b}") if k in keys]) for b in bases]


# --------------------------------------------------------------------------- plots


def _mpl() -> tuple[Any, Any]:
    """``(Figure, FigureCanvasAgg)``: the object-oriented Agg API, no pyplot global state."""
    optional_import("matplotlib", purpose="report plots")
    figure = optional_import("matplotlib.figure", purpose="report plots")
    agg = optional_import("matplotlib.backends.backend_agg", purpose="report plots")
    return figure.Figure, agg.FigureCanvasAgg


def _fig_to_png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    fig.clear()  # Agg figures outside pyplot are freed with their last reference
    return buf.getvalue()


def _plot_roc(report: EvaluationReport) -> bytes:
    Figure, Canvas = _mpl()
    fig = Figure(figsize=(5, 5))
    Canvas(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", label="chance (AUC = 0.5)")
    auc = report.roc_auc
    if np.isnan(auc):
        ax.text(0.5, 0.55, "ROC undefined:\nonly one class present", ha="center", va="center")
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            fpr, tpr, _ = roc_curve(report.y_true, report.p_all)
        ax.plot(fpr, tpr, color="C0", lw=2, label=f"ROC (AUC = {auc:.3f})")
        (tn, fp), (fn, tp) = report.metrics["confusion_matrix"]
        ax.plot(
            [_div(fp, tn + fp)], [_div(tp, tp + fn)], "o", color="C3",
            label=f"threshold {report.threshold:.3g}",
        )
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("False positive rate (1 - specificity)")
    ax.set_ylabel("True positive rate (sensitivity, 'all')")
    ax.set_title("ROC curve" + (" - synthetic data" if report.synthetic else ""))
    ax.legend(loc="lower right")
    fig.tight_layout()
    return _fig_to_png(fig)


def _plot_confusion(report: EvaluationReport) -> bytes:
    Figure, Canvas = _mpl()
    cm = np.asarray(report.metrics["confusion_matrix"], dtype=np.int64)
    fig = Figure(figsize=(4.6, 4))
    Canvas(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=max(int(cm.max()), 1))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    row_sums = cm.sum(axis=1)
    for i in range(2):
        for j in range(2):
            pct = _div(cm[i, j], row_sums[i]) * 100
            dark = cm[i, j] > 0.5 * max(int(cm.max()), 1)
            ax.text(
                j, i, f"{cm[i, j]}\n({pct:.1f}%)", ha="center", va="center",
                color="white" if dark else "black", fontsize=12,
            )
    ax.set_xticks([0, 1], labels=list(CLASSES))
    ax.set_yticks([0, 1], labels=list(CLASSES))
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title(f"Confusion matrix (threshold {report.threshold:.3g})")
    fig.tight_layout()
    return _fig_to_png(fig)


def _plot_curves(report: EvaluationReport) -> bytes:
    Figure, Canvas = _mpl()
    ticker = optional_import("matplotlib.ticker", purpose="report plots")
    phases = _normalise_history(report.history)
    keys: list[str] = []
    for _, series in phases:
        keys.extend(k for k in series if k not in keys)
    groups = _metric_groups(keys)
    if not groups:
        fig = Figure(figsize=(5, 3))
        Canvas(fig)
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no training history", ha="center", va="center", fontsize=14)
        ax.set_axis_off()
        return _fig_to_png(fig)
    ncols = min(len(groups), 3)
    nrows = math.ceil(len(groups) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows))
    Canvas(fig)
    # epochs run on across phases; each phase starts where the previous one ended
    offsets, start = [], 0
    for _, series in phases:
        offsets.append(start)
        start += max(len(v) for v in series.values())
    for gi, (base, members) in enumerate(groups):
        ax = fig.add_subplot(nrows, ncols, gi + 1)
        for key in members:
            xs: list[float] = []
            ys: list[float] = []
            for (_, series), off in zip(phases, offsets, strict=True):
                vals = series.get(key, [])
                xs.extend(range(off + 1, off + len(vals) + 1))
                ys.extend(vals)
                xs.append(np.nan)  # break the line between phases
                ys.append(np.nan)
            style = "--" if key.startswith("val_") else "-"
            label = "validation" if key.startswith("val_") else "training"
            ax.plot(xs, ys, style, marker="o", markersize=3, label=label)
        for (name, _), off in zip(phases[1:], offsets[1:], strict=True):
            ax.axvline(off + 0.5, color="0.6", lw=1, linestyle=":")
            ax.text(off + 0.6, 1.0, name, transform=ax.get_xaxis_transform(),
                    va="top", fontsize=8, color="0.4")
        ax.set_title(base)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        if base in ("lr", "learning_rate") and all(
            v > 0 for _, s in phases for v in s.get(base, []) if math.isfinite(v)
        ):
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _fig_to_png(fig)


# --------------------------------------------------------------------------- report


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else f"{v:.4f}"
    return str(v)


_MAIN_ROWS = (
    ("n", "cells"),
    ("accuracy", "accuracy"),
    ("balanced_accuracy", "balanced accuracy"),
    ("f1_weighted", "F1 weighted (C-NMC metric)"),
    ("f1_macro", "F1 macro"),
    ("roc_auc", "ROC AUC"),
    ("precision", "precision ('all')"),
    ("sensitivity", "sensitivity / recall ('all')"),
    ("specificity", "specificity (recall 'hem')"),
    ("threshold", "threshold (p_all >= t -> 'all')"),
)


@dataclass(repr=False)
class EvaluationReport:
    """Evaluation of p(all) against true labels: numbers, per-subject table, plots, report.

    Build it with :meth:`from_predictions`; the main numbers are attributes
    (``.accuracy``, ``.roc_auc``, ``.f1_weighted``, ``.confusion_matrix`` ...) and the full
    dictionary is ``.metrics`` (see :func:`classification_metrics`). :meth:`save` writes
    ``metrics.json``, ``roc.png``, ``confusion.png``, ``curves.png`` and a self-contained
    ``report.html``; :meth:`load` reads ``metrics.json`` back.

    Parameters
    ----------
    metrics : dict
        Output of :func:`classification_metrics`.
    y_true : numpy.ndarray
        0 (hem) / 1 (all) labels.
    p_all : numpy.ndarray
        Probabilities of ``"all"``.
    subjects, paths : list of str, optional
        Subject id and image path of each cell.
    per_subject : dict
        subject -> {n, hem, all, correct, accuracy, mean_p_all}; empty without subjects.
    history : dict, optional
        Training history (Keras ``History.history``, or ``{"phases": [...]}``).
    model_info, dataset_info : dict
        Free-form descriptions; ``dataset_info["synthetic"]`` adds a banner.

    Examples
    --------
    >>> import numpy as np
    >>> from bmcd.metrics import EvaluationReport
    >>> rep = EvaluationReport.from_predictions(
    ...     np.array([0, 0, 1, 1]), np.array([0.2, 0.6, 0.7, 0.9]),
    ...     subjects=["H1", "H1", "3", "3"], dataset_info={"synthetic": True})
    >>> rep.accuracy, rep.roc_auc, rep.confusion_matrix.tolist()
    (0.75, 1.0, [[1, 1], [0, 2]])
    >>> rep.per_subject["H1"]["accuracy"]
    0.5
    >>> out = rep.save("report")                                    # doctest: +SKIP
    >>> EvaluationReport.load("report").f1_weighted == rep.f1_weighted  # doctest: +SKIP
    True
    """

    metrics: dict[str, Any]
    y_true: np.ndarray
    p_all: np.ndarray
    subjects: list[str] | None = None
    paths: list[str] | None = None
    per_subject: dict[str, dict[str, Any]] = field(default_factory=dict)
    history: Any = None
    model_info: dict[str, Any] = field(default_factory=dict)
    dataset_info: dict[str, Any] = field(default_factory=dict)

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_predictions(
        cls,
        y_true: Any,
        p_all: Any,
        threshold: float = 0.5,
        subjects: Sequence[Any] | None = None,
        paths: Sequence[Any] | None = None,
        history: Any = None,
        model_info: Mapping[str, Any] | None = None,
        dataset_info: Mapping[str, Any] | None = None,
    ) -> EvaluationReport:
        """Compute every metric for ``p_all`` against ``y_true`` at ``threshold``.

        Parameters
        ----------
        y_true : array-like of shape (n,)
            0 (hem) / 1 (all), or the class names.
        p_all : array-like of shape (n,)
            Probability of ``"all"``.
        threshold : float, default 0.5
        subjects, paths : sequence of length n, optional
            Subject id / image path per cell; subjects enable the per-subject table.
        history : dict or keras History, optional
            Training curves (dict of lists, optionally ``{"phases": [...]}``).
        model_info, dataset_info : dict, optional
            Shown in the report; ``dataset_info["synthetic"]`` truthy adds a banner.

        Returns
        -------
        EvaluationReport
        """
        t = _as_labels(y_true)
        p = _as_scores(p_all)
        _check_same_length(t, p, ("y_true", "p_all"))
        subj = None if subjects is None else [str(s) for s in subjects]
        pths = None if paths is None else [os.fspath(x) if isinstance(x, os.PathLike) else str(x)
                                           for x in paths]
        for name, seq in (("subjects", subj), ("paths", pths)):
            if seq is not None and len(seq) != t.size:
                raise ValueError(
                    f"{name} must have one entry per cell ({t.size}); received {len(seq)}."
                )
        metrics = classification_metrics(t, p, threshold=threshold)
        per_subject: dict[str, dict[str, Any]] = {}
        if subj is not None:
            pred = (p >= metrics["threshold"]).astype(np.int64)
            sub_arr = np.asarray(subj, dtype=object)
            for s in sorted(set(subj)):
                m = sub_arr == s
                n = int(m.sum())
                correct = int((pred[m] == t[m]).sum())
                per_subject[s] = {
                    "n": n,
                    "hem": int((t[m] == 0).sum()),
                    "all": int((t[m] == 1).sum()),
                    "correct": correct,
                    "accuracy": _div(correct, n),
                    "mean_p_all": float(p[m].mean()),
                }
        return cls(
            metrics=metrics,
            y_true=t,
            p_all=p,
            subjects=subj,
            paths=pths,
            per_subject=per_subject,
            history=history,
            model_info=dict(model_info or {}),
            dataset_info=dict(dataset_info or {}),
        )

    # ---------------------------------------------------------------- attribute access
    @property
    def n(self) -> int:
        """Number of cells."""
        return int(self.metrics["n"])

    @property
    def counts(self) -> dict[str, int]:
        """True class counts {hem, all}."""
        return dict(self.metrics["counts"])

    @property
    def threshold(self) -> float:
        """Decision threshold: ``p_all >= threshold`` is ``"all"``."""
        return float(self.metrics["threshold"])

    @property
    def accuracy(self) -> float:
        """Fraction of cells classified correctly."""
        return float(self.metrics["accuracy"])

    @property
    def balanced_accuracy(self) -> float:
        """Mean of the per-class recalls (of the classes present)."""
        return float(self.metrics["balanced_accuracy"])

    @property
    def precision(self) -> float:
        """Precision of ``"all"``."""
        return float(self.metrics["precision"])

    @property
    def recall(self) -> float:
        """Recall of ``"all"`` (= sensitivity)."""
        return float(self.metrics["recall"])

    @property
    def sensitivity(self) -> float:
        """Recall of ``"all"``."""
        return float(self.metrics["sensitivity"])

    @property
    def specificity(self) -> float:
        """Recall of ``"hem"``."""
        return float(self.metrics["specificity"])

    @property
    def f1(self) -> dict[str, float]:
        """Per-class F1 {hem, all}."""
        return dict(self.metrics["f1"])

    @property
    def f1_weighted(self) -> float:
        """Support-weighted mean of the per-class F1 (the C-NMC 2019 challenge metric)."""
        return float(self.metrics["f1_weighted"])

    @property
    def f1_macro(self) -> float:
        """Unweighted mean of the per-class F1."""
        return float(self.metrics["f1_macro"])

    @property
    def roc_auc(self) -> float:
        """ROC AUC, NaN when only one class is present."""
        return _nan_if_none(self.metrics["roc_auc"])

    @property
    def confusion_matrix(self) -> np.ndarray:
        """``[[TN, FP], [FN, TP]]``, rows true (hem, all), columns predicted."""
        return np.asarray(self.metrics["confusion_matrix"], dtype=np.int64)

    @property
    def synthetic(self) -> bool:
        """Whether the evaluated data are synthetic (``dataset_info["synthetic"]``)."""
        return bool(self.dataset_info.get("synthetic"))

    def __repr__(self) -> str:
        syn = ", synthetic" if self.synthetic else ""
        return (
            f"EvaluationReport(n={self.n}, accuracy={_fmt(self.accuracy)}, "
            f"f1_weighted={_fmt(self.f1_weighted)}, roc_auc={_fmt(self.roc_auc)}, "
            f"threshold={self.threshold:.4g}{syn})"
        )

    # ---------------------------------------------------------------- serialisation
    def summary(self) -> dict[str, Any]:
        """The main numbers only, JSON-safe (NaN -> None): what goes into ``bmcd.json``."""
        keys = ("n", "counts", "threshold", "accuracy", "balanced_accuracy", "precision",
                "recall", "sensitivity", "specificity", "f1", "f1_weighted", "f1_macro",
                "roc_auc", "confusion_matrix")
        out = {k: self.metrics[k] for k in keys if k in self.metrics}
        if self.synthetic:
            out["synthetic"] = True
        return _jsonable(out)

    def to_dict(self, include_predictions: bool = True) -> dict[str, Any]:
        """Everything as a JSON-serialisable dict (NaN becomes ``None``).

        Parameters
        ----------
        include_predictions : bool, default True
            Include ``y_true``, ``p_all`` (and subjects/paths) so the report can be rebuilt.
        """
        d: dict[str, Any] = {
            "format": _REPORT_FORMAT,
            "bmcd_version": __version__,
            "metrics": self.metrics,
            "per_subject": self.per_subject,
            "history": self.history,
            "model_info": self.model_info,
            "dataset_info": self.dataset_info,
        }
        if include_predictions:
            d["predictions"] = {
                "y_true": self.y_true,
                "p_all": self.p_all,
                "subjects": self.subjects,
                "paths": self.paths,
            }
        return _jsonable(d)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvaluationReport:
        """Inverse of :meth:`to_dict` (``None`` ROC AUC back to NaN)."""
        if not isinstance(d, Mapping) or not isinstance(d.get("metrics"), Mapping):
            raise ValueError(
                "Expected a report dict with a 'metrics' mapping (as written by "
                f"EvaluationReport.to_dict); received {type(d).__name__} with keys "
                f"{sorted(d)[:8] if isinstance(d, Mapping) else '-'}."
            )
        metrics = dict(d["metrics"])
        metrics["roc_auc"] = _nan_if_none(metrics.get("roc_auc"))
        preds = d.get("predictions") or {}
        y = np.asarray(preds.get("y_true") or [], dtype=np.int64)
        p = np.asarray([_nan_if_none(v) for v in preds.get("p_all") or []], dtype=np.float64)
        return cls(
            metrics=metrics,
            y_true=y,
            p_all=p,
            subjects=preds.get("subjects"),
            paths=preds.get("paths"),
            per_subject=dict(d.get("per_subject") or {}),
            history=d.get("history"),
            model_info=dict(d.get("model_info") or {}),
            dataset_info=dict(d.get("dataset_info") or {}),
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> EvaluationReport:
        """Read a report saved by :meth:`save` (the directory, or its ``metrics.json``)."""
        p = Path(path)
        f = p / METRICS_JSON if p.is_dir() else p
        if not f.is_file():
            raise FileNotFoundError(
                f"No {METRICS_JSON} at '{f}'. Expected a directory written by "
                f"EvaluationReport.save() (e.g. <model>/report)."
            )
        try:
            d = json.loads(f.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"'{f}' is not valid JSON: {exc}.") from exc
        return cls.from_dict(d)

    # ---------------------------------------------------------------- text / html
    def _errors(self, limit: int = 10) -> list[dict[str, Any]]:
        """The most confident mistakes (needs paths)."""
        if not self.paths or self.y_true.size == 0:
            return []
        pred = (self.p_all >= self.threshold).astype(np.int64)
        wrong = np.flatnonzero(pred != self.y_true)
        conf = np.abs(self.p_all[wrong] - self.threshold)
        rows = []
        for i in wrong[np.argsort(-conf, kind="mergesort")][:limit]:
            rows.append({
                "path": self.paths[i],
                "subject": self.subjects[i] if self.subjects else "",
                "true": CLASSES[self.y_true[i]],
                "p_all": float(self.p_all[i]),
            })
        return rows

    def to_markdown(self) -> str:
        """A Markdown summary: metrics table, confusion matrix, per-subject table."""
        lines = ["## bmcd evaluation", ""]
        if self.synthetic:
            lines += [f"**{SYNTHETIC_BANNER}**", ""]
        lines += ["| metric | value |", "|---|---|"]
        for key, label in _MAIN_ROWS:
            lines.append(f"| {label} | {_fmt(self.metrics.get(key))} |")
        c = self.counts
        lines.append(f"| true counts | hem {c.get('hem', 0)}, all {c.get('all', 0)} |")
        f1 = self.f1
        lines.append(f"| F1 per class | hem {_fmt(f1.get('hem'))}, all {_fmt(f1.get('all'))} |")
        (tn, fp), (fn, tp) = self.confusion_matrix.tolist()
        lines += [
            "",
            "### Confusion matrix (rows: true, columns: predicted)",
            "",
            "| | predicted hem | predicted all |",
            "|---|---|---|",
            f"| true hem | {tn} (TN) | {fp} (FP) |",
            f"| true all | {fn} (FN) | {tp} (TP) |",
        ]
        if self.per_subject:
            lines += [
                "",
                "### Per subject",
                "",
                "| subject | n | hem | all | correct | accuracy | mean p(all) |",
                "|---|---|---|---|---|---|---|",
            ]
            for s, r in self.per_subject.items():
                lines.append(
                    f"| {s} | {r['n']} | {r['hem']} | {r['all']} | {r['correct']} | "
                    f"{_fmt(r['accuracy'])} | {_fmt(r['mean_p_all'])} |"
                )
        return "\n".join(lines) + "\n"

    def to_html(self, images: Mapping[str, bytes] | None = None) -> str:
        """A self-contained HTML page; ``images`` maps file name -> PNG bytes to embed."""
        e = html.escape
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            "<title>bmcd evaluation report</title>",
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
            "table{border-collapse:collapse;margin:0.5em 0 1.5em}"
            "td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}"
            "th{background:#f3f3f3}.banner{background:#fff3cd;border:1px solid #e0b400;"
            "padding:0.6em 1em;font-weight:bold}img{max-width:100%}</style>",
            "</head><body>",
            "<h1>bmcd evaluation report</h1>",
        ]
        if self.synthetic:
            parts.append(f'<p class="banner">{e(SYNTHETIC_BANNER)}</p>')
        parts.append(f"<p>bmcd {e(__version__)}. Positive class: <b>all</b> "
                     "(leukemic blast); negative: <b>hem</b> (normal).</p>")

        def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
            h = "".join(f"<th>{e(str(x))}</th>" for x in header)
            body = "".join(
                "<tr>" + "".join(f"<td>{e(str(x))}</td>" for x in r) + "</tr>" for r in rows
            )
            return f"<table><tr>{h}</tr>{body}</table>"

        rows = [(label, _fmt(self.metrics.get(key))) for key, label in _MAIN_ROWS]
        for cls_name in CLASSES:
            pc = self.metrics.get("per_class", {}).get(cls_name, {})
            for k in ("precision", "recall", "f1"):
                if k in pc:
                    rows.append((f"{k} '{cls_name}'", _fmt(pc[k])))
        c = self.counts
        rows.append(("true counts", f"hem {c.get('hem', 0)}, all {c.get('all', 0)}"))
        parts += ["<h2>Metrics</h2>", table(rows, ("metric", "value"))]
        (tn, fp), (fn, tp) = self.confusion_matrix.tolist()
        parts += [
            "<h2>Confusion matrix</h2>",
            table([("true hem", f"{tn} (TN)", f"{fp} (FP)"), ("true all", f"{fn} (FN)",
                    f"{tp} (TP)")], ("", "predicted hem", "predicted all")),
        ]
        images = images or {}
        for fname, title in ((ROC_PNG, "ROC curve"), (CONFUSION_PNG, "Confusion matrix plot"),
                             (CURVES_PNG, "Training curves")):
            parts.append(f"<h2>{e(title)}</h2>")
            if fname in images:
                b64 = base64.b64encode(images[fname]).decode("ascii")
                parts.append(
                    f'<p><a href="{e(fname)}"><img alt="{e(fname)}" '
                    f'src="data:image/png;base64,{b64}"></a><br>'
                    f'<small>file: <a href="{e(fname)}">{e(fname)}</a></small></p>'
                )
            else:
                parts.append(f'<p><a href="{e(fname)}">{e(fname)}</a> (not embedded)</p>')
        if self.per_subject:
            parts.append("<h2>Per subject</h2>")
            parts.append(table(
                [(s, r["n"], r["hem"], r["all"], r["correct"], _fmt(r["accuracy"]),
                  _fmt(r["mean_p_all"])) for s, r in self.per_subject.items()],
                ("subject", "n", "hem", "all", "correct", "accuracy", "mean p(all)"),
            ))
        errs = self._errors()
        if errs:
            parts.append("<h2>Most confident mistakes</h2>")
            parts.append(table([(r["path"], r["subject"], r["true"], _fmt(r["p_all"]))
                                for r in errs], ("path", "subject", "true", "p(all)")))
        for title, info in (("Model", self.model_info), ("Dataset", self.dataset_info)):
            if info:
                parts.append(f"<h2>{title}</h2>")
                parts.append(table(
                    [(k, v if isinstance(v, (str, int, float, bool)) else
                      json.dumps(_jsonable(v))) for k, v in info.items()],
                    ("key", "value"),
                ))
        parts.append("</body></html>")
        return "\n".join(parts) + "\n"

    # ---------------------------------------------------------------- files
    def save(self, directory: str | os.PathLike, plots: bool = True) -> Path:
        """Write the report files into ``directory`` (created if needed).

        Writes ``metrics.json``, ``roc.png``, ``confusion.png``, ``curves.png`` and
        ``report.html`` (which links the PNGs by file name and also embeds them as base64,
        so it is self-contained).

        Parameters
        ----------
        directory : path
        plots : bool, default True
            With False, only ``metrics.json`` and an image-less ``report.html`` are written
            and matplotlib is not needed.

        Returns
        -------
        pathlib.Path
            The directory.

        Raises
        ------
        MissingDependencyError
            When ``plots`` is true and matplotlib is not installed (``pip install
            'bmcd[report]'``); nothing is written in that case.
        """
        out = Path(directory)
        images: dict[str, bytes] = {}
        if plots:
            _mpl()  # fail before writing anything when matplotlib is missing
            images = {
                ROC_PNG: _plot_roc(self),
                CONFUSION_PNG: _plot_confusion(self),
                CURVES_PNG: _plot_curves(self),
            }
        out.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n"
        atomic_write_bytes(out / METRICS_JSON, text.encode("utf-8"))
        for name, data in images.items():
            atomic_write_bytes(out / name, data)
        atomic_write_bytes(out / REPORT_HTML, self.to_html(images).encode("utf-8"))
        for name in (METRICS_JSON, REPORT_HTML, *images):
            # atomic_write_bytes goes through mkstemp (mode 0600); a report is meant to be read
            _chmod_readable(out / name)
        return out


def _chmod_readable(path: Path) -> None:
    try:
        os.chmod(path, 0o644)
    except OSError:  # pragma: no cover - e.g. filesystems without POSIX modes
        pass
