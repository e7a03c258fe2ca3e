"""``train_and_evaluate``: fit, evaluate on held-out data, save the model directory.

The pipeline shared by ``bmcd train`` and the demo (:func:`bmcd.demo.run_demo`); see
docs/architecture.rst.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact import REPORT_DIR
from ..errors import ConfigError
from .config import TrainConfig

__all__ = ["train_and_evaluate", "MIN_VALIDATION_P_STD", "THRESHOLD_RULES"]

#: Below this standard deviation of p(all) on the validation part, training warns that the
#: model is (nearly) constant: it gives about one value for every cell, whatever the cell.
#: Trained models spread p(all) over most of [0, 1] (std 0.2-0.45); the same bound as the
#: export checks (bmcd.exporters.quantize.MIN_P_ALL_STD, docs/models.rst).
MIN_VALIDATION_P_STD = 0.01
#: How ``train_and_evaluate`` sets the threshold: tuned on the validation part ("youden")
#: or kept as the classifier's own (None).
THRESHOLD_RULES = ("youden", None)


def train_and_evaluate(
    clf,
    split,
    model_dir: str | os.PathLike,
    *,
    config: TrainConfig | None = None,
    dataset_info: dict[str, Any] | None = None,
    verbose: int | None = None,
    threshold_rule: str | None = "youden",
    **fit_kwargs: Any,
) -> dict[str, Any]:
    """Fit on ``split.train`` (early stopping on ``split.val``), evaluate, save, report.

    When the split has a validation part with both classes, the decision threshold is
    tuned on it (``threshold_rule="youden"``: maximise sensitivity + specificity - 1), and
    ``bmcd.json`` records how (``training.threshold_tuning``: rule, threshold, part, cells,
    subjects); the test part is then scored at that threshold and never used for tuning.
    Without a validation part (or with ``threshold_rule=None``) the classifier's own
    threshold is kept, and that is recorded too. A validation p(all) with a standard
    deviation below :data:`MIN_VALIDATION_P_STD` gives a warning: the model is (nearly)
    constant. When the split has no test part, the validation part is reported instead,
    and the report says so. ``model_dir`` receives ``model.keras``, ``bmcd.json`` (with the split,
    the validation and test metrics) and ``report/``.

    Parameters
    ----------
    clf : Classifier
        Unfitted.
    split : bmcd.data.Split
    model_dir : path
    config : bmcd.training.config.TrainConfig, optional
        The training settings (default: ``TrainConfig()``).
    dataset_info : dict, optional
        Added to the reports (e.g. ``{"synthetic": True}``).
    verbose : int, optional
        Overrides ``config.verbose``.
    threshold_rule : {"youden", None}
        Tune the threshold on the validation part (default), or keep the classifier's.
    **fit_kwargs
        :class:`TrainConfig` fields merged over ``config``, passed to
        :meth:`Classifier.fit`.

    Returns
    -------
    dict
        ``classifier``, ``report`` (the test, or else validation, EvaluationReport),
        ``validation_report`` (or None), ``evaluated_on`` ("test" / "validation"),
        ``model_dir``, ``report_dir``, ``seconds`` {fit, evaluate, save}.
    """
    if threshold_rule not in THRESHOLD_RULES:
        raise ConfigError(f"threshold_rule must be one of {list(THRESHOLD_RULES)}; received "
                          f"{threshold_rule!r}.")
    model_dir = Path(model_dir)
    val = split.val if len(split.val) else None
    t0 = time.perf_counter()
    if verbose is not None:
        fit_kwargs["verbose"] = verbose
    clf.fit(split.train, validation=val, config=config, split=split, **fit_kwargs)
    t1 = time.perf_counter()
    extra = dict(dataset_info or {})
    extra["split"] = split.method
    val_report = None
    if val is not None:
        val_report = clf.evaluate(val, dataset_info={**extra, "part": "validation"})
        _warn_if_constant(val_report.p_all)
        val_report = _tune_threshold(clf, val, val_report, threshold_rule)
        clf.meta_["metrics"]["validation"] = val_report.summary()
    else:
        clf.meta_.setdefault("training", {})["threshold_tuning"] = {
            "method": None, "threshold": float(clf.threshold_),
            "note": "no validation part: the classifier's own threshold is kept",
        }
    if len(split.test):
        report = clf.evaluate(split.test, dataset_info={**extra, "part": "test"})
        clf.meta_["metrics"]["test"] = report.summary()
        evaluated_on = "test"
    elif val_report is not None:
        report, evaluated_on = val_report, "validation"
    else:
        report = clf.evaluate(split.train, dataset_info={**extra, "part": "train"})
        evaluated_on = "train"
    t2 = time.perf_counter()
    clf.save(model_dir)
    report_dir = model_dir / REPORT_DIR
    report.save(report_dir)
    t3 = time.perf_counter()
    return {
        "classifier": clf,
        "report": report,
        "validation_report": val_report,
        "evaluated_on": evaluated_on,
        "model_dir": model_dir,
        "report_dir": report_dir,
        "seconds": {"fit": round(t1 - t0, 2), "evaluate": round(t2 - t1, 2),
                    "save": round(t3 - t2, 2)},
    }


def _warn_if_constant(p: np.ndarray) -> None:
    std = float(np.std(np.asarray(p, dtype=np.float64))) if len(p) else float("nan")
    if len(p) > 1 and not std >= MIN_VALIDATION_P_STD:
        warnings.warn(
            f"The trained model gives nearly one value for every validation cell (std of "
            f"p(all) {std:.2g} < {MIN_VALIDATION_P_STD:g}, range {float(np.min(p)):.4f}.."
            f"{float(np.max(p)):.4f} over {len(p)} cells): it has learned nothing that "
            f"separates the cells. Check the data and labels, lower the learning rate or "
            f"train longer; its export checks will refuse to pass.",
            UserWarning,
            stacklevel=3,
        )


def _tune_threshold(clf, val, val_report, rule: str | None):
    """Set the classifier's threshold on the validation predictions; return the report at it."""
    from ..metrics import EvaluationReport, tune_threshold

    tuning: dict[str, Any] = {"method": rule, "part": "validation", "n": len(val),
                              "subjects": val.subject_list()}
    y = val_report.y_true
    if rule is None:
        tuning.update(threshold=float(clf.threshold_), note="threshold_rule=None: kept as given")
    elif len(np.unique(y)) < 2:
        tuning.update(threshold=float(clf.threshold_), method=None,
                      note="the validation part has one class: threshold kept as given")
    elif not float(np.std(val_report.p_all)) >= MIN_VALIDATION_P_STD:
        tuning.update(threshold=float(clf.threshold_), method=None,
                      note=f"validation p(all) is (nearly) constant (std < "
                           f"{MIN_VALIDATION_P_STD:g}): threshold kept as given")
    else:
        thr = float(tune_threshold(y, val_report.p_all, method=rule))
        tuning.update(threshold=thr, previous=float(clf.threshold_),
                      data_fingerprint=val.fingerprint())
        clf.threshold_ = thr
        clf.meta_["threshold"] = thr
        val_report = EvaluationReport.from_predictions(
            y, val_report.p_all, threshold=thr, subjects=val_report.subjects,
            paths=val_report.paths, history=val_report.history,
            model_info={**val_report.model_info, "threshold": thr},
            dataset_info=val_report.dataset_info,
        )
    clf.meta_.setdefault("training", {})["threshold_tuning"] = tuning
    return val_report
