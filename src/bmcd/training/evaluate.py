"""``train_and_evaluate``: fit, evaluate on held-out data, save the model directory.

The pipeline shared by ``bmcd train`` and the demo (:func:`bmcd.demo.run_demo`); see
docs/architecture.rst.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ..artifact import REPORT_DIR
from .config import TrainConfig

__all__ = ["train_and_evaluate"]


def train_and_evaluate(
    clf,
    split,
    model_dir: str | os.PathLike,
    *,
    config: TrainConfig | None = None,
    dataset_info: dict[str, Any] | None = None,
    verbose: int | None = None,
    **fit_kwargs: Any,
) -> dict[str, Any]:
    """Fit on ``split.train`` (early stopping on ``split.val``), evaluate, save, report.

    The test part is scored at the classifier's own threshold (nothing is tuned here).
    When the split has no test part, the validation part is reported instead, and the
    report says so. ``model_dir`` receives ``model.keras``, ``bmcd.json`` (with the split,
    the validation and test metrics) and ``report/``.

    Parameters
    ----------
    clf : Classifier
        Unfitted.
    split : bmcd.data.Split
    model_dir : path
    config : TrainConfig, optional
        The training settings (default: ``TrainConfig()``).
    dataset_info : dict, optional
        Added to the reports (e.g. ``{"synthetic": True}``).
    verbose : int, optional
        Overrides ``config.verbose``.
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
        clf.meta_["metrics"]["validation"] = val_report.summary()
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
