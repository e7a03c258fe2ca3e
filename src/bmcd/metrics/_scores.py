"""The numbers: labels and scores in, classification metrics, ROC / AUC and thresholds out.

The metrics scikit-learn provides (confusion matrix, ROC curve and AUC, precision / recall
/ F1, balanced accuracy) come from ``sklearn.metrics`` (docs/architecture.rst, "bmcd.metrics
and bmcd.report"); this module checks the inputs, fixes the class order ``(hem, all)`` and
turns scikit-learn's warnings for undefined values into :class:`UndefinedMetricWarning`.
No plotting. The conventions are those of :mod:`bmcd.metrics`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from ..artifact import CLASSES
from ..errors import ConfigError


class UndefinedMetricWarning(UserWarning):
    """A metric is undefined for the given input (e.g. ROC AUC with one class present)."""


# --------------------------------------------------------------------------- input checks


def _as_labels(y: Any, name: str = "y_true") -> np.ndarray:
    """Coerce labels to a 1-D int64 array of 0 (hem) / 1 (all), or raise ConfigError."""
    arr = np.asarray(y)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ConfigError(
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
            raise ConfigError(
                f"{name} must hold 0/1 or the class names {list(CLASSES)}; received unknown "
                f"labels {bad[:5]}."
            ) from None
    if arr.dtype.kind == "b":
        return arr.astype(np.int64)
    if arr.dtype.kind not in "iuf":
        raise ConfigError(f"{name} must be numeric 0/1 labels; received dtype {arr.dtype}.")
    bad = np.setdiff1d(np.unique(arr), [0, 1])
    if bad.size:
        raise ConfigError(
            f"{name} must contain only 0 (hem) and 1 (all); received other values "
            f"{bad[:5].tolist()}. Threshold probabilities with apply_threshold() first."
        )
    return arr.astype(np.int64)


def _as_scores(p: Any, name: str = "p_all") -> np.ndarray:
    """Coerce scores to a 1-D finite float64 array, or raise ConfigError."""
    arr = np.asarray(p, dtype=np.float64)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim == 2 and arr.shape[1] == 2:
        raise ConfigError(
            f"{name} must be 1-D p(all); received shape {arr.shape}, which looks like "
            f"predict_proba output. Pass its column 1 (proba[:, 1])."
        )
    if arr.ndim != 1:
        raise ConfigError(f"{name} must be 1-D; received an array of shape {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise ConfigError(
            f"{name} must be finite; received {int((~np.isfinite(arr)).sum())} NaN/inf values."
        )
    return arr


def _check_same_length(a: np.ndarray, b: np.ndarray, names: tuple[str, str]) -> None:
    if a.shape[0] != b.shape[0]:
        raise ConfigError(
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
    from sklearn.metrics import confusion_matrix as _sk_confusion_matrix

    t = _as_labels(y_true, "y_true")
    p = _as_labels(y_pred, "y_pred")
    _check_same_length(t, p, ("y_true", "y_pred"))
    if t.size == 0:
        return np.zeros((2, 2), dtype=np.int64)
    return _sk_confusion_matrix(t, p, labels=[0, 1]).astype(np.int64)


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
    from sklearn.metrics import roc_curve as _sk_roc_curve

    t = _as_labels(y_true)
    s = _as_scores(p, "p")
    _check_same_length(t, s, ("y_true", "p"))
    n_pos = int(t.sum())
    n_neg = int(t.size - n_pos)
    if t.size:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bmcd warns below, with its own class
            fpr, tpr, thresholds = _sk_roc_curve(t, s, pos_label=1, drop_intermediate=False)
        thresholds = np.asarray(thresholds, dtype=np.float64)
        thresholds[0] = np.inf  # scikit-learn's convention since 1.3, older ones used max+1
    else:
        fpr = tpr = np.zeros(1)
        thresholds = np.array([np.inf])
    if n_neg == 0:
        warnings.warn(
            "No 'hem' (negative) samples in y_true: the false positive rate is undefined (NaN).",
            UndefinedMetricWarning,
            stacklevel=2,
        )
        fpr = np.full(len(thresholds), np.nan)
    else:
        fpr = np.asarray(fpr, dtype=np.float64)
    if n_pos == 0:
        warnings.warn(
            "No 'all' (positive) samples in y_true: the true positive rate is undefined (NaN).",
            UndefinedMetricWarning,
            stacklevel=2,
        )
        tpr = np.full(len(thresholds), np.nan)
    else:
        tpr = np.asarray(tpr, dtype=np.float64)
    return fpr, tpr, thresholds


def roc_auc(y_true: Any, p: Any) -> float:
    """Area under the ROC curve (``sklearn.metrics.roc_auc_score``).

    Equals the Mann-Whitney U statistic: the probability that a random ``"all"`` cell scores higher than a random
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
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(t, s))


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
            raise ConfigError(
                f"pos_label must be one of {list(CLASSES)} or 0/1; received {pos_label!r}."
            )
        k = CLASSES.index(pos_label)
    else:
        if pos_label not in (0, 1):
            raise ConfigError(f"pos_label must be 0 (hem) or 1 (all); received {pos_label!r}.")
        k = int(pos_label)
    from sklearn.metrics import precision_recall_fscore_support

    t = _as_labels(y_true, "y_true")
    p = _as_labels(y_pred, "y_pred")
    _check_same_length(t, p, ("y_true", "y_pred"))
    if t.size == 0:
        return 0.0, 0.0, 0.0
    prec, rec, f1, _ = precision_recall_fscore_support(
        t, p, labels=[k], average=None, zero_division=0.0
    )
    return float(prec[0]), float(rec[0]), float(f1[0])


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
    if n:
        from sklearn.metrics import balanced_accuracy_score

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
            balanced = float(balanced_accuracy_score(t, pred))
    else:
        balanced = 0.0
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
        "balanced_accuracy": balanced,
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
    ConfigError
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
        raise ConfigError(
            f"tune_threshold takes exactly one rule; received method={method!r} and "
            f"sensitivity={sensitivity!r}. Pass method=... or sensitivity=..., not both."
        )
    if sensitivity is None and method is None:
        raise ConfigError(
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
            raise ConfigError(f"sensitivity must be in (0, 1]; received {sensitivity!r}.")
        if n_pos == 0:
            raise ConfigError(
                "tune_threshold(sensitivity=...) needs 'all' samples in y_true; received none."
            )
        _, tps, thr = _binary_clf_curve(t, p)
        # thresholds decrease and tps increase: the first one reaching the target is the highest
        need = math.ceil(s * n_pos - 1e-9)
        i = int(np.argmax(tps >= need))
        return float(thr[i])

    if method not in _TUNE_METHODS:
        raise ConfigError(f"Unknown method {method!r}; expected one of {list(_TUNE_METHODS)}.")
    if n_pos == 0 or n_neg == 0:
        raise ConfigError(
            f"tune_threshold(method='youden') needs both classes in y_true; received "
            f"{n_neg} 'hem' and {n_pos} 'all'."
        )
    fps, tps, thr = _binary_clf_curve(t, p)
    # compare J with exact integer arithmetic: J * n_pos * n_neg = tps * n_neg - fps * n_pos
    j = tps.astype(np.int64) * n_neg - fps.astype(np.int64) * n_pos
    return float(thr[int(np.argmax(j))])  # argmax: the first (highest threshold) maximiser

