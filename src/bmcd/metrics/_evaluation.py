"""The evaluation report's data: numbers, predictions, per-subject table, JSON round trip.

Rendering (Markdown, HTML, PNG plots, the report folder) lives in :mod:`bmcd.report`; the
rendering methods of :class:`EvaluationReport` delegate to it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..artifact import CLASSES
from ..errors import ConfigError, MissingFileError, ModelFormatError
from ._intervals import bootstrap_intervals, reliability, subject_table
from ._scores import _as_labels, _as_scores, _check_same_length, classification_metrics

METRICS_JSON = "metrics.json"
ROC_PNG = "roc.png"
CONFUSION_PNG = "confusion.png"
CURVES_PNG = "curves.png"
RELIABILITY_PNG = "reliability.png"
REPORT_HTML = "report.html"

_REPORT_FORMAT = 1


# --------------------------------------------------------------------------- JSON helpers


def jsonable(obj: Any) -> Any:
    """A deep copy of ``obj`` that ``json.dumps(allow_nan=False)`` accepts (NaN/inf -> None)."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [jsonable(v) for v in obj.tolist()]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "history") and isinstance(obj.history, Mapping):  # keras History
        return jsonable(obj.history)
    return str(obj)


def _nan_if_none(x: Any) -> float:
    return float("nan") if x is None else float(x)


def _intervals_from_json(d: Any) -> dict[str, Any]:
    """``None`` interval ends (NaN in JSON) back to NaN."""
    if not isinstance(d, Mapping):
        return {}
    out = dict(d)
    out["metrics"] = {k: [_nan_if_none(v) for v in lohi]
                      for k, lohi in (d.get("metrics") or {}).items()}
    return out


def format_value(v: Any) -> str:
    """A metric as text: floats with 4 decimals, NaN / inf as ``"n/a"``."""
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else f"{v:.4f}"
    return str(v)


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
        subject -> {n, hem, all, correct, accuracy, mean_p_all, frac_called_all, call,
        true_class} (see :func:`~bmcd.metrics.subject_table`: the subject-level call is
        ``"all"`` when the subject's mean p(all) >= threshold); empty without subjects.
    intervals : dict
        95% bootstrap intervals of the headline metrics
        (:func:`~bmcd.metrics.bootstrap_intervals`): over subjects when they are known,
        else over cells (``intervals["unit"]`` says which).
    calibration : dict
        Reliability diagram bins and expected calibration error
        (:func:`~bmcd.metrics.reliability`).
    history : dict, optional
        Training history (Keras ``History.history``, or ``{"phases": [...]}``).
    model_info, dataset_info : dict
        Free-form descriptions; ``dataset_info["synthetic"]`` adds a banner.
    gallery : list of dict
        Cells with overlays for the report (:func:`bmcd.explain.build_gallery`).

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
    intervals: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    history: Any = None
    model_info: dict[str, Any] = field(default_factory=dict)
    dataset_info: dict[str, Any] = field(default_factory=dict)
    #: Cells shown with their class activation map overlay in ``report.html`` (set by
    #: ``Classifier.evaluate`` when the model can explain, see
    #: :func:`bmcd.explain.build_gallery`; not written to ``metrics.json``).
    gallery: list[dict[str, Any]] = field(default_factory=list)

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
                raise ConfigError(
                    f"{name} must have one entry per cell ({t.size}); received {len(seq)}."
                )
        metrics = classification_metrics(t, p, threshold=threshold)
        per_subject: dict[str, dict[str, Any]] = {}
        # "?" marks a cell of unknown subject (Classifier.evaluate): not a subject
        known = subj is not None and any(s != "?" for s in subj)
        if subj is not None and t.size:
            per_subject = subject_table(p, subj, metrics["threshold"], y_true=t)
        intervals = bootstrap_intervals(t, p, metrics["threshold"],
                                        subjects=subj if known else None) if t.size else {}
        calibration = reliability(t, p) if t.size else {}
        return cls(
            metrics=metrics,
            y_true=t,
            p_all=p,
            subjects=subj,
            paths=pths,
            per_subject=per_subject,
            intervals=intervals,
            calibration=calibration,
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
            f"EvaluationReport(n={self.n}, accuracy={format_value(self.accuracy)}, "
            f"f1_weighted={format_value(self.f1_weighted)}, roc_auc={format_value(self.roc_auc)}, "
            f"threshold={self.threshold:.4g}{syn})"
        )

    # ---------------------------------------------------------------- serialisation
    def summary(self) -> dict[str, Any]:
        """The main numbers only, JSON-safe (NaN -> None): what goes into ``bmcd.json``."""
        keys = ("n", "counts", "threshold", "accuracy", "balanced_accuracy", "precision",
                "recall", "sensitivity", "specificity", "f1", "f1_weighted", "f1_macro",
                "roc_auc", "confusion_matrix")
        out = {k: self.metrics[k] for k in keys if k in self.metrics}
        if self.intervals:
            out["intervals"] = self.intervals
        if self.calibration:
            out["ece"] = self.calibration.get("ece")
        if self.per_subject:
            calls = [r for r in self.per_subject.values() if r.get("true_class") in CLASSES]
            out["subjects"] = {
                "n": len(self.per_subject),
                "called_correctly": sum(r["call"] == r["true_class"] for r in calls),
                "with_known_class": len(calls),
                "accuracy_min": min(r.get("accuracy", float("nan"))
                                    for r in self.per_subject.values()),
                "accuracy_max": max(r.get("accuracy", float("nan"))
                                    for r in self.per_subject.values()),
            }
        if self.synthetic:
            out["synthetic"] = True
        return jsonable(out)

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
            "intervals": self.intervals,
            "calibration": self.calibration,
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
        return jsonable(d)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvaluationReport:
        """Inverse of :meth:`to_dict` (``None`` ROC AUC back to NaN)."""
        if not isinstance(d, Mapping) or not isinstance(d.get("metrics"), Mapping):
            raise ConfigError(
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
            intervals=_intervals_from_json(d.get("intervals")),
            calibration=dict(d.get("calibration") or {}),
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
            raise MissingFileError(
                f"No {METRICS_JSON} at '{f}'. Expected a directory written by "
                f"EvaluationReport.save() (e.g. <model>/report)."
            )
        try:
            d = json.loads(f.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelFormatError(
                f"'{f}' is not valid JSON: {exc}. Expected the {METRICS_JSON} written by "
                f"EvaluationReport.save(); save the report again."
            ) from exc
        return cls.from_dict(d)

    # ---------------------------------------------------------------- rendering (bmcd.report)
    def to_markdown(self) -> str:
        """A Markdown summary: metrics table, confusion matrix, per-subject table.

        See :func:`bmcd.report.to_markdown`.
        """
        from ..report import to_markdown  # report renders metrics, never the reverse

        return to_markdown(self)

    def to_html(self, images: Mapping[str, bytes] | None = None) -> str:
        """A self-contained HTML page; ``images`` maps file name -> PNG bytes to embed.

        See :func:`bmcd.report.to_html`.
        """
        from ..report import to_html

        return to_html(self, images)

    def save(self, directory: str | os.PathLike, plots: bool = True) -> Path:
        """Write the report files into ``directory`` (created if needed).

        Writes ``metrics.json``, ``roc.png``, ``confusion.png``, ``curves.png`` and
        ``report.html`` (which links the PNGs by file name and also embeds them as base64,
        so it is self-contained). See :func:`bmcd.report.save_report`.

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
        from ..report import save_report

        return save_report(self, directory, plots=plots)
