"""The end-to-end demo on SYNTHETIC cells, and the train -> evaluate -> save pipeline.

:func:`run_demo` is what ``bmcd demo`` runs: it draws a few hundred synthetic C-NMC-like
cells (:mod:`bmcd.synthetic`), splits them by subject, trains MobileNetV2 from scratch
(``weights=None``, so it runs offline) at a small image size, evaluates on held-out
subjects and writes the model directory with its report. Its steps are plain functions
returning one dict, so later steps (ONNX export, int8, batch scoring) can be appended.

:func:`bmcd.training.train_and_evaluate` (re-exported here) is the pipeline shared with
``bmcd train``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from .artifact import ModelMeta
from .errors import ConfigTypeError
from .labels import label_indices
from .preprocessing import PreprocessConfig
from .training import TrainConfig, train_and_evaluate

__all__ = ["DEMO_SETTINGS", "REAL_DATA_COMMAND", "run_demo", "train_and_evaluate"]

#: The command to run on the real C-NMC 2019 data instead of the synthetic cells.
REAL_DATA_COMMAND = (
    "bmcd train /path/to/C-NMC_Leukemia --arch resnet50 --weights imagenet --out model"
)

#: Demo sizes. "full" is tuned to reach a held-out-subject ROC-AUC around 0.9+ on the
#: synthetic cells in about two minutes on 2 CPU cores; "quick" is a smoke run.
DEMO_SETTINGS: dict[str, dict[str, Any]] = {
    "full": {"n_per_class": 300, "n_subjects": 12, "image_size": 64, "epochs": 6,
             "batch_size": 32},
    "quick": {"n_per_class": 100, "n_subjects": 8, "image_size": 48, "epochs": 3,
              "batch_size": 32},
}

_BANNER = "=" * 78


def run_demo(
    out: str | os.PathLike = "bmcd-demo",
    *,
    arch: str = "mobilenet_v2",
    quick: bool = False,
    seed: int = 0,
    verbose: int = 1,
    **overrides: Any,
) -> dict[str, Any]:
    """Train and evaluate a model on SYNTHETIC cells, end to end, offline.

    Steps: draw cells into ``out/data`` -> split by subject (60/20/20) -> train ``arch``
    from scratch -> evaluate on the held-out subjects -> write ``out/model`` (model.keras,
    bmcd.json, report/) -> export to ONNX with the parity check -> int8 with its gate ->
    score the held-out test files with ONNX Runtime into ``out/scores.csv`` and compare
    with Keras. Nothing is tuned on the test subjects.

    Parameters
    ----------
    out : path
        Output folder (created).
    arch : {"mobilenet_v2", "resnet50"}
    quick : bool
        A smaller, faster smoke run (fewer cells, smaller images, fewer epochs).
    seed : int
        Seeds the synthetic data, the split and the training.
    verbose : int
        0 silent, 1 progress, 2 one line per epoch.
    **overrides
        Replace any of :data:`DEMO_SETTINGS` (``n_per_class``, ``n_subjects``,
        ``image_size``, ``epochs``, ``batch_size``).

    Returns
    -------
    dict
        ``out``, ``data_dir``, ``model_dir``, ``report_dir``, ``settings``, ``split``
        (the :class:`~bmcd.data.Split`), ``classifier``, ``report`` (test),
        ``validation_report``, ``metrics`` {test, validation} summaries, ``synthetic``
        (True), ``export`` (the fp32 parity record), ``int8`` (the int8 record, or None
        when its gate failed), ``scoring`` (ScoreSummary), ``serving_agreement`` (ONNX vs
        Keras on the test files), ``seconds`` per step and in total.

    Examples
    --------
    >>> from bmcd.demo import run_demo
    >>> result = run_demo("bmcd-demo", quick=True)          # doctest: +SKIP
    >>> result["report"].roc_auc                            # doctest: +SKIP
    """
    from .classifier import Classifier
    from .data import load_dataset, split_by_subject
    from .synthetic import make_cells

    settings = dict(DEMO_SETTINGS["quick" if quick else "full"])
    unknown = set(overrides) - set(settings)
    if unknown:
        raise ConfigTypeError(f"run_demo got unknown settings {sorted(unknown)}; known: {sorted(settings)}.")
    settings.update(overrides)
    out = Path(out)
    data_dir, model_dir = out / "data", out / "model"
    seconds: dict[str, float] = {}
    t_start = time.perf_counter()

    def say(msg: str) -> None:
        if verbose:
            print(msg, flush=True)

    say(_BANNER)
    say("bmcd demo: the data below are SYNTHETIC (drawn cells, not patient images).")
    say("Numbers from this demo show that the pipeline works; they say nothing about")
    say("real leukemia images. For the real C-NMC 2019 data run:")
    say(f"    {REAL_DATA_COMMAND}")
    say(_BANNER)

    t = time.perf_counter()
    say(f"[1/7] drawing {2 * settings['n_per_class']} synthetic cells of "
        f"{settings['n_subjects']} subjects into {data_dir}")
    make_cells(data_dir, n_per_class=settings["n_per_class"], n_subjects=settings["n_subjects"],
               seed=seed, progress=None if verbose else False)
    seconds["data"] = round(time.perf_counter() - t, 2)

    ds = load_dataset(data_dir)
    split = split_by_subject(ds, val=0.2, test=0.2, seed=seed)
    parts = ", ".join(
        f"{name} {len(part)} images / {len(part.subject_list())} subjects"
        for name, part in split.parts().items()
    )
    say(f"[2/7] split by subject (no subject on two sides): {parts}")

    say(f"[3/7] training {arch} from scratch (weights=None) at {settings['image_size']} px "
        f"(tight crop: synthetic cells' size carries no class)")
    # From scratch bmcd keeps each cell at its own scale by default (crop_size=320), because
    # on real C-NMC cells size tells "all" from "hem". Synthetic cells draw their size per
    # subject, not per class, so there the window would only teach the model to tell
    # subjects apart: the demo crops tightly (docs/models.rst).
    clf = Classifier(arch=arch, image_size=settings["image_size"], weights=None, seed=seed,
                     preprocess=PreprocessConfig(image_size=settings["image_size"]))
    config = TrainConfig(epochs=settings["epochs"], fine_tune_epochs=0,
                         batch_size=settings["batch_size"],
                         verbose=verbose if verbose != 1 else 2)
    result = train_and_evaluate(
        clf, split, model_dir, config=config,
        dataset_info={"synthetic": True, "name": "bmcd synthetic cells"},
    )
    seconds.update(result["seconds"])
    report = result["report"]
    tuning = ModelMeta.from_dict(clf.meta_).training.get("threshold_tuning") or {}
    how = ("tuned on the validation subjects" if tuning.get("method") and "previous" in tuning
           else "not tuned")
    say(f"[4/7] evaluated on the {len(split.test)} test images of held-out subjects "
        f"(threshold {clf.threshold_:.4g}, {how}):")
    say("")
    say(report.to_markdown())
    say("")

    serving = _export_quantize_score(
        clf, split, out, model_dir, precision="int8", say=say, seconds=seconds
    )

    seconds["total"] = round(time.perf_counter() - t_start, 2)
    say(_BANNER)
    say("SYNTHETIC data: these scores are a pipeline check, not a medical result.")
    files = ("bmcd.json, model.keras" + (", model.onnx" if serving["export"] else "")
             + (", model.int8.onnx" if serving["int8"] else ""))
    say(f"model:  {model_dir}  ({files})")
    say(f"report: {result['report_dir'] / 'report.html'}")
    say(f"scores: {serving['scores_csv'] or 'none (the ONNX export was refused)'}")
    say(f"time:   {seconds['total']:.0f} s")
    say("For real C-NMC 2019 data (ImageNet weights, downloaded once):")
    say(f"    {REAL_DATA_COMMAND}")
    say(_BANNER)
    return {
        "out": out,
        "data_dir": data_dir,
        "model_dir": model_dir,
        "report_dir": result["report_dir"],
        "settings": settings,
        "split": split,
        "classifier": clf,
        "report": report,
        "validation_report": result["validation_report"],
        "metrics": {
            "test": report.summary(),
            "validation": (result["validation_report"].summary()
                           if result["validation_report"] is not None else None),
        },
        "synthetic": True,
        "export": serving["export"],
        "int8": serving["int8"],
        "scoring": serving["scoring"],
        "serving_agreement": serving["agreement"],
        "seconds": seconds,
    }


def _export_quantize_score(clf, split, out: Path, model_dir: Path, *, precision: str, say,
                           seconds: dict[str, float]) -> dict[str, Any]:
    """Demo steps 5-7: export with parity check, int8 with its gate, score the test cells.

    The held-out test subjects are scored from their files by ONNX Runtime
    (:func:`bmcd.scoring.score`), and the result is compared with the Keras model's own
    probabilities on the same files, so the demo shows end to end that serving agrees with
    training.
    """
    import csv

    import numpy as np

    from .errors import ExportValidationError
    from .exporters.onnx import export_onnx, quantize_int8
    from .scoring import score

    t = time.perf_counter()
    say(f"[5/7] exporting to ONNX, checked against Keras on the {len(split.val)} validation "
        f"images")
    try:
        exp = export_onnx(model_dir, samples=split.val)
    except ExportValidationError as exc:  # e.g. a degenerate model: loud, but the demo ends
        say(f"      ONNX export REFUSED, nothing to quantize or score: {exc}")
        seconds["export"] = round(time.perf_counter() - t, 2)
        return {"export": None, "int8": None, "scoring": None, "agreement": None,
                "scores_csv": None}
    par = exp["parity"]
    say(f"      fp32 parity: max |p_keras - p_onnx| = {par['max_abs_diff']:.2e} (limit "
        f"{par.get('atol', 1e-4):g}), labels identical on {par['label_agreement']:.0%} of "
        f"{par['n']} images")
    seconds["export"] = round(time.perf_counter() - t, 2)

    t = time.perf_counter()
    say(f"[6/7] int8 quantization, calibrated on {len(split.train)} training images, gated "
        f"on the validation images")
    int8: dict[str, Any] | None
    try:
        int8 = quantize_int8(model_dir, calibration=split.train, validation=split.val)
        gate = int8["gate"]
        auc = (f", ROC-AUC {gate['roc_auc_fp32']:.4f} -> {gate['roc_auc_int8']:.4f}"
               if "roc_auc_int8" in gate else "")
        say(f"      int8 gate passed: label agreement {gate['label_agreement']:.2%} with fp32 "
            f"({gate['label_disagreements']} flipped, allowed {gate['allowed_label_flips']}: "
            f"fp32 itself flips {gate.get('fp32_noise_label_flips', '?')} under +-1 gray "
            f"level of noise){auc}")
    except ExportValidationError as exc:  # the demo goes on with the fp32 model
        int8, precision = None, "fp32"
        say(f"      int8 gate FAILED, scoring with fp32 instead: {exc}")
    seconds["int8"] = round(time.perf_counter() - t, 2)

    t = time.perf_counter()
    scores_csv = out / "scores.csv"
    scores_csv.unlink(missing_ok=True)  # the demo owns its output folder
    test_paths = [str(p) for p in split.test.paths]
    say(f"[7/7] scoring the {len(test_paths)} held-out test files with ONNX Runtime "
        f"({precision}) -> {scores_csv}")
    summary = score(model_dir, test_paths, scores_csv, precision=precision, progress=False)
    with open(scores_csv, newline="") as f:
        rows = {r["path"]: r for r in csv.DictReader(f)}
    p_onnx = np.array([float(rows[p]["p_all"]) for p in test_paths])
    p_keras = clf.predict_proba(test_paths)[:, 1]
    thr = clf.threshold_
    agreement = {
        "precision": precision,
        "n": len(test_paths),
        "max_abs_diff": float(np.max(np.abs(p_onnx - p_keras))),
        "label_agreement": float(np.mean(label_indices(p_onnx, thr)
                                         == label_indices(p_keras, thr))),
    }
    say(f"      {summary}")
    say(f"      ONNX Runtime {precision} vs Keras on these files: max |dp| = "
        f"{agreement['max_abs_diff']:.2e}, same label on {agreement['label_agreement']:.1%}")
    seconds["score"] = round(time.perf_counter() - t, 2)
    return {
        "export": exp,
        "int8": int8,
        "scoring": summary,
        "agreement": agreement,
        "scores_csv": scores_csv,
    }
