"""Honest numbers: binomial bounds, bootstrap intervals over subjects, calibration, subjects.

* :func:`binomial_upper_bound` — the one-sided Clopper-Pearson upper bound of a rate, used
  by the int8 / bf16 gates (docs/models.rst, "Export tolerances").
* :func:`bootstrap_intervals` — 95% intervals of the headline metrics by resampling whole
  subjects (cells of one subject are not independent: subjects differ far more than cells
  do); over cells only when no subject is known, and the result says which.
* :func:`reliability` — the reliability diagram's bins and the expected calibration error
  (bins from ``sklearn.calibration.calibration_curve``).
* :func:`subject_table` — one row per subject with a subject-level call.

The conventions are those of :mod:`bmcd.metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError
from ._scores import _as_labels, _as_scores, _check_same_length, _div

#: The metrics that get an interval (keys of :func:`~bmcd.metrics.classification_metrics`).
INTERVAL_METRICS = ("roc_auc", "f1_weighted", "balanced_accuracy", "sensitivity",
                    "specificity", "accuracy")
#: Bootstrap resamples (percentile method); 1000 gives the 2.5/97.5% points to ~0.005.
N_BOOTSTRAP = 1000


def binomial_upper_bound(k: int, n: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson (exact) upper confidence bound of a binomial rate.

    Parameters
    ----------
    k, n : int
        Events and trials (``0 <= k <= n``, ``n >= 1``).
    confidence : float, default 0.95

    Returns
    -------
    float
        The rate ``u`` with ``P(Binomial(n, u) <= k) = 1 - confidence``; 1.0 when ``k == n``.

    Examples
    --------
    >>> round(binomial_upper_bound(0, 200), 4)   # "rule of three": about 3/n
    0.0149
    """
    k, n = int(k), int(n)
    if n < 1 or not 0 <= k <= n:
        raise ConfigError(f"binomial_upper_bound needs 0 <= k <= n and n >= 1; received k={k}, "
                          f"n={n}.")
    if not 0.0 < float(confidence) < 1.0:
        raise ConfigError(f"confidence must be in (0, 1); received {confidence!r}.")
    if k == n:
        return 1.0
    from scipy.stats import beta

    return float(beta.ppf(float(confidence), k + 1, n - k))


def _resampled_metrics(t: np.ndarray, s: np.ndarray, threshold: float,
                       w: np.ndarray) -> dict[str, np.ndarray]:
    """The :data:`INTERVAL_METRICS` for a block of resamples given as cell weights.

    ``w`` (B, n) holds how often each cell is drawn in each of B resamples. The numbers are
    those of :func:`~bmcd.metrics.classification_metrics` on the resampled cells (ratios with
    a zero denominator are 0, ROC-AUC with one class NaN, ties count one half), computed
    for all resamples at once; a unit test checks them against scikit-learn resample by
    resample.
    """
    pos = t == 1
    pred = s >= threshold
    tp = w @ (pos & pred).astype(np.float64)
    fn = w @ (pos & ~pred).astype(np.float64)
    fp = w @ (~pos & pred).astype(np.float64)
    tn = w @ (~pos & ~pred).astype(np.float64)
    n_pos, n_neg = tp + fn, tn + fp
    total = n_pos + n_neg
    with np.errstate(divide="ignore", invalid="ignore"):
        def div(a, b):
            return np.where(b > 0, a / np.where(b > 0, b, 1.0), 0.0)

        sens, spec = div(tp, n_pos), div(tn, n_neg)
        f1_all, f1_hem = div(2 * tp, 2 * tp + fp + fn), div(2 * tn, 2 * tn + fn + fp)
        present = (n_pos > 0).astype(float) + (n_neg > 0).astype(float)
        balanced = div(sens * (n_pos > 0) + spec * (n_neg > 0), present)
        # ROC-AUC: per distinct score, the weighted negatives strictly below + half of ties
        order = np.argsort(s, kind="mergesort")
        s_sorted = s[order]
        starts = np.r_[0, np.flatnonzero(np.diff(s_sorted)) + 1]
        w_sorted = w[:, order]
        neg_d = np.add.reduceat(w_sorted * (~pos[order]), starts, axis=1)
        pos_d = np.add.reduceat(w_sorted * pos[order], starts, axis=1)
        below = np.cumsum(neg_d, axis=1) - neg_d
        u = np.sum(pos_d * (below + 0.5 * neg_d), axis=1)
        auc = np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)
    return {
        "roc_auc": auc,
        "f1_weighted": div(f1_hem * n_neg + f1_all * n_pos, total),
        "balanced_accuracy": balanced,
        "sensitivity": sens,
        "specificity": spec,
        "accuracy": div(tp + tn, total),
    }


def bootstrap_intervals(
    y_true: Any,
    p_all: Any,
    threshold: float = 0.5,
    subjects: Sequence[Any] | None = None,
    n_boot: int = N_BOOTSTRAP,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Percentile bootstrap intervals of the headline metrics, over subjects when known.

    Each resample draws whole subjects with replacement (all their cells come along),
    within each class (a subject's majority class), so the interval reflects how much the
    numbers would move on other patients and every resample has both classes. With few
    subjects of a class (``units_per_class``) the interval cannot show their variation:
    one subject per class gives a zero-width interval. Without
    subjects (or with a single one) cells are resampled instead, and ``unit`` says
    ``"cell"``: such an interval is too narrow when cells of one patient are alike.

    Parameters
    ----------
    y_true, p_all : array-like of shape (n,)
    threshold : float, default 0.5
    subjects : sequence of length n, optional
    n_boot : int, default :data:`N_BOOTSTRAP`
    confidence : float, default 0.95
    seed : int, default 0

    Returns
    -------
    dict
        ``unit`` ("subject" or "cell"), ``n_units``, ``units_per_class`` {hem, all},
        ``n_boot``, ``confidence``, ``method``
        and ``metrics``: {name: [low, high]} for :data:`INTERVAL_METRICS` (NaN where a
        metric is undefined in too many resamples, e.g. ROC-AUC with one class).

    Examples
    --------
    >>> ci = bootstrap_intervals([0, 0, 1, 1, 0, 1], [.1, .6, .7, .9, .2, .4],
    ...                          subjects=["a", "a", "b", "b", "c", "c"], n_boot=200)
    >>> ci["unit"], ci["n_units"], len(ci["metrics"]["roc_auc"])
    ('subject', 3, 2)
    """
    t = _as_labels(y_true)
    p = _as_scores(p_all)
    _check_same_length(t, p, ("y_true", "p_all"))
    if int(n_boot) < 10:
        raise ConfigError(f"n_boot must be >= 10; received {n_boot!r}.")
    unit = "cell"
    groups = np.arange(t.size)
    if subjects is not None:
        subj = np.asarray([str(s) for s in subjects], dtype=object)
        if subj.size != t.size:
            raise ConfigError(f"subjects must have one entry per cell ({t.size}); received "
                              f"{subj.size}.")
        _, groups = np.unique(subj, return_inverse=True)
        if groups.max(initial=0) >= 1:
            unit = "subject"
        else:
            groups = np.arange(t.size)
    n_units = int(groups.max(initial=-1) + 1)
    # stratified by class: each resample draws as many units of each class (a unit's
    # majority class; C-NMC subjects are all of one class) as the data hold, so every
    # resample has both classes and ROC-AUC, sensitivity and specificity stay defined
    unit_pos = np.bincount(groups, weights=t, minlength=n_units)
    unit_n = np.bincount(groups, minlength=n_units)
    unit_class = (unit_pos * 2 >= unit_n).astype(int) if n_units else np.zeros(0, int)
    strata = [np.flatnonzero(unit_class == c) for c in (0, 1)]
    strata = [u for u in strata if u.size]
    rng = np.random.default_rng(seed)
    values: dict[str, list[np.ndarray]] = {k: [] for k in INTERVAL_METRICS}
    # resamples in blocks of at most ~4M cell weights (memory stays small for big sets)
    block = max(1, min(int(n_boot), 4_000_000 // max(1, t.size)))
    done = 0
    while n_units and done < int(n_boot):
        b = min(block, int(n_boot) - done)
        counts = np.zeros((b, n_units))
        for units in strata:
            picks = units[rng.integers(0, units.size, (b, units.size))]
            np.add.at(counts, (np.repeat(np.arange(b), units.size), picks.reshape(-1)), 1.0)
        for k, v in _resampled_metrics(t, p, float(threshold), counts[:, groups]).items():
            values[k].append(v)
        done += b
    a = (1.0 - float(confidence)) / 2.0
    out: dict[str, list[float]] = {}
    for k, vs in values.items():
        v = np.concatenate(vs) if vs else np.zeros(0)
        v = v[np.isfinite(v)]
        # a metric undefined in more than half the resamples gets no interval
        if v.size < max(1, int(n_boot) // 2):
            out[k] = [float("nan"), float("nan")]
        else:
            lo, hi = np.quantile(v, [a, 1.0 - a])
            out[k] = [float(lo), float(hi)]
    return {
        "unit": unit,
        "n_units": n_units,
        "units_per_class": {"hem": int(np.sum(unit_class == 0)),
                            "all": int(np.sum(unit_class == 1))},
        "n_boot": int(n_boot),
        "confidence": float(confidence),
        "method": f"percentile bootstrap over {unit}s, stratified by class",
        "metrics": out,
    }


def reliability(y_true: Any, p_all: Any, n_bins: int = 10) -> dict[str, Any]:
    """Reliability diagram data and expected calibration error (ECE).

    Equal-width bins of p(all) on [0, 1]; per non-empty bin the mean p(all) and the
    fraction of ``"all"`` cells (``sklearn.calibration.calibration_curve``). ECE is the
    cell-weighted mean of ``|fraction of "all" - mean p(all)|`` over the bins.

    Returns
    -------
    dict
        ``n_bins``, ``mean_p`` and ``frac_all`` (per non-empty bin), ``count`` (cells per
        non-empty bin) and ``ece``.

    Examples
    --------
    >>> r = reliability([0, 0, 1, 1], [0.05, 0.05, 0.95, 0.95])
    >>> round(r["ece"], 4)
    0.05
    """
    from sklearn.calibration import calibration_curve

    t = _as_labels(y_true)
    p = np.clip(_as_scores(p_all), 0.0, 1.0)
    _check_same_length(t, p, ("y_true", "p_all"))
    if t.size == 0:
        return {"n_bins": int(n_bins), "mean_p": [], "frac_all": [], "count": [],
                "ece": float("nan")}
    frac, mean_p = calibration_curve(t, p, n_bins=int(n_bins), strategy="uniform")
    # the same bins as calibration_curve (its non-empty bins, in order) to weight by count
    edges = np.linspace(0.0, 1.0, int(n_bins) + 1)
    ids = np.searchsorted(edges[1:-1], p)
    count = np.bincount(ids, minlength=int(n_bins))
    count = count[count > 0]
    ece = float(np.sum(count * np.abs(frac - mean_p)) / t.size)
    return {"n_bins": int(n_bins), "mean_p": mean_p.tolist(), "frac_all": frac.tolist(),
            "count": count.astype(int).tolist(), "ece": ece}


def subject_table(
    p_all: Any, subjects: Sequence[Any], threshold: float = 0.5, y_true: Any = None,
) -> dict[str, dict[str, Any]]:
    """One row per subject: cells, mean p(all), fraction called "all", accuracy, the call.

    The subject-level call is ``"all"`` when the subject's mean p(all) is at least
    ``threshold`` (the cell rule applied to the mean), else ``"hem"``.

    Parameters
    ----------
    p_all : array-like of shape (n,)
    subjects : sequence of length n
    threshold : float, default 0.5
    y_true : array-like of shape (n,), optional
        With labels, each row also has ``hem``, ``all`` (true counts), ``correct``,
        ``accuracy`` and ``true_class`` (the majority class, ``"mixed"`` on a tie).

    Returns
    -------
    dict
        subject -> {n, mean_p_all, frac_called_all, call, ...}, sorted by subject.

    Examples
    --------
    >>> rows = subject_table([0.9, 0.7, 0.2], ["3", "3", "H1"], 0.5, y_true=[1, 0, 0])
    >>> rows["3"]["call"], rows["3"]["frac_called_all"], rows["H1"]["accuracy"]
    ('all', 1.0, 1.0)
    """
    p = _as_scores(p_all)
    subj = np.asarray([str(s) for s in subjects], dtype=object)
    if subj.size != p.size:
        raise ConfigError(f"subjects must have one entry per cell ({p.size}); received "
                          f"{subj.size}.")
    t = None if y_true is None else _as_labels(y_true)
    if t is not None:
        _check_same_length(t, p, ("y_true", "p_all"))
    thr = float(threshold)
    pred = (p >= thr).astype(np.int64)
    rows: dict[str, dict[str, Any]] = {}
    for s in sorted(set(subj.tolist())):
        m = subj == s
        n = int(m.sum())
        mean_p = float(p[m].mean())
        row: dict[str, Any] = {
            "n": n,
            "mean_p_all": mean_p,
            "frac_called_all": _div(int(pred[m].sum()), n),
            "call": "all" if mean_p >= thr else "hem",
        }
        if t is not None:
            n_all = int((t[m] == 1).sum())
            n_hem = n - n_all
            correct = int((pred[m] == t[m]).sum())
            row.update({
                "hem": n_hem,
                "all": n_all,
                "correct": correct,
                "accuracy": _div(correct, n),
                "true_class": "all" if n_all > n_hem else "hem" if n_hem > n_all else "mixed",
            })
        rows[s] = row
    return rows


def p_spread(p: Any) -> dict[str, float]:
    """Spread of p(all): min, 5/50/95% quantiles, max and standard deviation."""
    a = np.asarray(p, dtype=np.float64).reshape(-1)
    if a.size == 0:
        return {k: float("nan") for k in ("min", "p05", "median", "p95", "max", "std")}
    q = np.quantile(a, [0.05, 0.5, 0.95])
    return {"min": float(a.min()), "p05": float(q[0]), "median": float(q[1]),
            "p95": float(q[2]), "max": float(a.max()), "std": float(a.std())}
