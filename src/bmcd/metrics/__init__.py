"""Metrics and the evaluation report's data; rendering lives in :mod:`bmcd.report`.

The numbers are plain numpy; matplotlib (the ``report`` extra) is imported only when a
report is saved with its plots, by :mod:`bmcd.report`. As in scikit-learn, where
``sklearn.metrics`` computes and its display classes draw, this package computes
(:mod:`bmcd.metrics._scores`: labels and scores in, numbers out;
:mod:`bmcd.metrics._evaluation`: the :class:`EvaluationReport` data and its JSON round
trip) and :mod:`bmcd.report` renders (Markdown, HTML, PNG plots, the report folder).
Conventions used throughout:

- ``y_true`` holds 0 for ``"hem"`` (normal) and 1 for ``"all"`` (leukemic blast), the positive
  class. The class names ``"hem"`` / ``"all"`` and booleans are accepted as well.
- ``p_all`` is the model's probability of ``"all"``. A cell is predicted ``"all"`` when
  ``p_all >= threshold`` (see :func:`apply_threshold`).
- The confusion matrix is ``[[TN, FP], [FN, TP]]``: rows are the true class, columns the
  predicted class, both ordered ``(hem, all)``.
- A ratio whose denominator is zero (for example the precision of a model that never predicts
  ``"all"``) is 0.0, never an error. ROC AUC is undefined with a single class: it is NaN and a
  :class:`UndefinedMetricWarning` is issued.
- Invalid inputs raise :class:`~bmcd.errors.ConfigError` (a ``ValueError``).

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

from ._evaluation import (
    CONFUSION_PNG,
    CURVES_PNG,
    METRICS_JSON,
    RELIABILITY_PNG,
    REPORT_HTML,
    ROC_PNG,
    EvaluationReport,
)
from ._intervals import (
    INTERVAL_METRICS,
    N_BOOTSTRAP,
    binomial_upper_bound,
    bootstrap_intervals,
    p_spread,
    reliability,
    subject_table,
)
from ._scores import (
    UndefinedMetricWarning,
    apply_threshold,
    classification_metrics,
    confusion_matrix,
    precision_recall_f1,
    roc_auc,
    roc_curve,
    tune_threshold,
)

__all__ = [
    "UndefinedMetricWarning",
    "apply_threshold",
    "confusion_matrix",
    "roc_curve",
    "roc_auc",
    "precision_recall_f1",
    "classification_metrics",
    "tune_threshold",
    "INTERVAL_METRICS",
    "N_BOOTSTRAP",
    "binomial_upper_bound",
    "bootstrap_intervals",
    "p_spread",
    "reliability",
    "subject_table",
    "EvaluationReport",
    "METRICS_JSON",
    "ROC_PNG",
    "CONFUSION_PNG",
    "CURVES_PNG",
    "RELIABILITY_PNG",
    "REPORT_HTML",
]
