"""bmcd.metrics: hand-checked numbers on tiny arrays, brute-force AUC, report files."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from bmcd.metrics import (
    EvaluationReport,
    UndefinedMetricWarning,
    apply_threshold,
    classification_metrics,
    confusion_matrix,
    precision_recall_f1,
    roc_auc,
    roc_curve,
    tune_threshold,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def brute_force_auc(y, p) -> float:
    """P(score_all > score_hem) + 0.5 P(tie), over all (all, hem) pairs: O(n^2)."""
    pos = [s for t, s in zip(y, p, strict=True) if t == 1]
    neg = [s for t, s in zip(y, p, strict=True) if t == 0]
    total = 0.0
    for a in pos:
        for b in neg:
            total += 1.0 if a > b else 0.5 if a == b else 0.0
    return total / (len(pos) * len(neg))


def trapezoid_area(fpr, tpr) -> float:
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


# ----------------------------------------------------------------- confusion / P R F1


def test_confusion_matrix_by_hand():
    y_true = [0, 0, 0, 1, 1, 1, 1]
    y_pred = [0, 1, 0, 1, 0, 1, 1]
    # TN: idx 0,2 -> 2; FP: idx 1 -> 1; FN: idx 4 -> 1; TP: idx 3,5,6 -> 3
    cm = confusion_matrix(y_true, y_pred)
    assert cm.tolist() == [[2, 1], [1, 3]]
    assert cm.shape == (2, 2) and cm.dtype == np.int64


def test_confusion_matrix_accepts_class_names_and_bools():
    cm = confusion_matrix(["hem", "all", "all"], np.array([False, True, False]))
    assert cm.tolist() == [[1, 0], [1, 1]]


def test_precision_recall_f1_by_hand():
    y_true = [0, 0, 0, 1, 1, 1, 1]
    y_pred = [0, 1, 0, 1, 0, 1, 1]
    p, r, f = precision_recall_f1(y_true, y_pred)  # class "all": TP 3, FP 1, FN 1
    assert p == pytest.approx(3 / 4)
    assert r == pytest.approx(3 / 4)
    assert f == pytest.approx(3 / 4)
    p0, r0, f0 = precision_recall_f1(y_true, y_pred, pos_label="hem")  # TP 2, FP 1, FN 1
    assert (p0, r0) == pytest.approx((2 / 3, 2 / 3))
    assert f0 == pytest.approx(2 / 3)


def test_zero_division_gives_zero():
    # never predicts "all": precision of "all" has a zero denominator
    p, r, f = precision_recall_f1([0, 1, 1], [0, 0, 0])
    assert (p, r, f) == (0.0, 0.0, 0.0)
    m = classification_metrics([0, 1, 1], [0.1, 0.2, 0.3], threshold=0.9)
    assert m["precision"] == 0.0 and m["f1"]["all"] == 0.0
    assert m["specificity"] == 1.0


def test_classification_metrics_by_hand():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.6, 0.4, 0.9, 0.8, 0.3, 0.7, 0.55, 0.45])
    m = classification_metrics(y, p, threshold=0.5)
    # hem: 0.1 0.2 0.4 -> TN 3, 0.6 -> FP 1 ; all: 0.9 0.8 0.7 0.55 -> TP 4, 0.3 0.45 -> FN 2
    assert m["confusion_matrix"] == [[3, 1], [2, 4]]
    assert m["n"] == 10
    assert m["counts"] == {"hem": 4, "all": 6}
    assert m["predicted_counts"] == {"hem": 5, "all": 5}
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["precision"] == pytest.approx(4 / 5)
    assert m["recall"] == m["sensitivity"] == pytest.approx(4 / 6)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["balanced_accuracy"] == pytest.approx((4 / 6 + 3 / 4) / 2)
    f1_all = 2 * 4 / (2 * 4 + 1 + 2)  # 2TP / (2TP + FP + FN) = 8/11
    f1_hem = 2 * 3 / (2 * 3 + 2 + 1)  # TN plays TP for hem: 6/9
    assert m["f1"]["all"] == pytest.approx(f1_all)
    assert m["f1"]["hem"] == pytest.approx(f1_hem)
    # C-NMC weighted F1: support-weighted mean of per-class F1
    assert m["f1_weighted"] == pytest.approx((4 * f1_hem + 6 * f1_all) / 10)
    assert m["f1_macro"] == pytest.approx((f1_hem + f1_all) / 2)
    assert m["threshold"] == 0.5
    assert m["roc_auc"] == pytest.approx(brute_force_auc(y, p))
    assert m["per_class"]["hem"]["support"] == 4


def test_threshold_tie_goes_to_all():
    assert apply_threshold([0.49, 0.5, 0.51], 0.5).tolist() == [0, 1, 1]
    m = classification_metrics([0, 1], [0.5, 0.5], threshold=0.5)
    assert m["confusion_matrix"] == [[0, 1], [0, 1]]


@pytest.mark.parametrize(
    "y, p, message",
    [
        ([0, 1, 2], [0.1, 0.2, 0.3], "only 0"),
        ([0, 1], [0.1, 0.2, 0.3], "same length"),
        ([0, 1], [0.1, float("nan")], "finite"),
        ([0, 1], [[0.9, 0.1], [0.2, 0.8]], "proba"),
        (["hem", "blast"], [0.1, 0.2], "unknown labels"),
    ],
)
def test_bad_inputs_raise_clear_value_errors(y, p, message):
    with pytest.raises(ValueError, match=message):
        classification_metrics(y, p)


# ----------------------------------------------------------------- ROC / AUC


@pytest.mark.parametrize("seed", range(8))
def test_auc_matches_pairwise_definition(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]  # both classes present
    # even seeds: continuous scores; odd seeds: coarse scores with many ties
    p = rng.random(n) if seed % 2 == 0 else np.round(rng.random(n), 1)
    p = p + 0.3 * y * rng.random()  # some signal
    expected = brute_force_auc(y.tolist(), p.tolist())
    assert roc_auc(y, p) == pytest.approx(expected, abs=1e-12)
    fpr, tpr, thr = roc_curve(y, p)
    # the ROC curve's trapezoidal area is the same number (ties are diagonal segments)
    assert trapezoid_area(fpr, tpr) == pytest.approx(expected, abs=1e-12)
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.isinf(thr[0]) and np.all(np.diff(thr) < 0)


def test_roc_curve_ties_are_one_step():
    fpr, tpr, thr = roc_curve([0, 1, 0, 1], [0.3, 0.3, 0.1, 0.9])
    assert thr[1:].tolist() == [0.9, 0.3, 0.1]
    assert fpr.tolist() == [0.0, 0.0, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 1.0, 1.0]


def test_auc_constant_scores_is_half():
    assert roc_auc([0, 1, 1, 0, 1], [0.7] * 5) == 0.5
    fpr, tpr, _ = roc_curve([0, 1, 1, 0, 1], [0.7] * 5)
    assert fpr.tolist() == [0.0, 1.0] and tpr.tolist() == [0.0, 1.0]


def test_auc_perfect_and_inverted():
    y = np.array([0, 0, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    assert roc_auc(y, p) == 1.0
    assert roc_auc(y, 1 - p) == 0.0
    assert roc_auc(y, p * 100 - 7) == 1.0  # any monotone score works


def test_auc_one_class_is_nan_with_warning():
    with pytest.warns(UndefinedMetricWarning, match="single class"):
        assert math.isnan(roc_auc([1, 1, 1], [0.2, 0.5, 0.9]))


def test_one_class_metrics_do_not_crash():
    with pytest.warns(UndefinedMetricWarning):
        m = classification_metrics([1, 1, 1, 1], [0.9, 0.8, 0.3, 0.6])
    assert m["accuracy"] == 0.75
    assert m["specificity"] == 0.0  # no hem: zero denominator -> 0.0
    assert m["f1"]["hem"] == 0.0
    assert m["balanced_accuracy"] == 0.75  # mean recall over the classes present
    assert math.isnan(m["roc_auc"])
    with pytest.warns(UndefinedMetricWarning):
        m0 = classification_metrics([], [])
    assert m0["n"] == 0 and m0["accuracy"] == 0.0 and m0["f1_weighted"] == 0.0


# ----------------------------------------------------------------- threshold tuning


def test_tune_threshold_youden_visible_answer():
    # hem scores all below 0.35, all scores from 0.6 up, except one hem outlier at 0.65:
    # thresholds 0.6 -> TPR 1, FPR 1/4 (J = .75); 0.7 -> TPR 2/3, FPR 0 (J = .667)
    y = [0, 0, 0, 0, 1, 1, 1]
    p = [0.1, 0.2, 0.35, 0.65, 0.6, 0.7, 0.9]
    assert tune_threshold(y, p) == 0.6
    assert tune_threshold(y, p, method="youden") == 0.6
    # perfectly separable: the lowest "all" score
    assert tune_threshold([0, 0, 1, 1], [0.1, 0.3, 0.6, 0.8]) == 0.6


def test_tune_threshold_sensitivity():
    y = [0, 0, 0, 0, 1, 1, 1, 1]
    p = [0.05, 0.3, 0.5, 0.7, 0.2, 0.6, 0.8, 0.9]
    # all-scores sorted: 0.9 0.8 0.6 0.2 -> sensitivity 1/4, 2/4, 3/4, 4/4
    assert tune_threshold(y, p, sensitivity=0.75) == 0.6
    assert tune_threshold(y, p, sensitivity=0.7) == 0.6
    assert tune_threshold(y, p, sensitivity=0.5) == 0.8
    assert tune_threshold(y, p, sensitivity=1.0) == 0.2
    for s in (0.5, 0.75, 1.0):
        t = tune_threshold(y, p, sensitivity=s)
        assert classification_metrics(y, p, threshold=t)["sensitivity"] >= s
    assert tune_threshold(y, p, method=None, sensitivity=0.5) == 0.8


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "youden", "sensitivity": 0.9}, "not both"),
        ({"method": None}, "needs one rule"),
        ({"method": "f1"}, "Unknown method"),
        ({"sensitivity": 0.0}, r"\(0, 1\]"),
        ({"sensitivity": 1.5}, r"\(0, 1\]"),
    ],
)
def test_tune_threshold_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tune_threshold([0, 1, 0, 1], [0.1, 0.8, 0.3, 0.6], **kwargs)


def test_tune_threshold_needs_classes():
    with pytest.raises(ValueError, match="both classes"):
        tune_threshold([1, 1], [0.2, 0.8])
    with pytest.raises(ValueError, match="'all' samples"):
        tune_threshold([0, 0], [0.2, 0.8], sensitivity=0.9)


# ----------------------------------------------------------------- report


@pytest.fixture()
def report() -> EvaluationReport:
    rng = np.random.default_rng(0)
    y = np.array([0] * 20 + [1] * 30)
    p = np.clip(0.35 * y + 0.65 * rng.random(50), 0, 1)
    subjects = ["H1"] * 10 + ["H2"] * 10 + ["3"] * 15 + ["7"] * 15
    paths = [f"cells/{s}/{i}.bmp" for i, s in enumerate(subjects)]
    history = {
        "phases": [
            {"name": "head", "loss": [0.7, 0.6], "val_loss": [0.72, 0.65], "auc": [0.6, 0.7],
             "val_auc": [0.55, 0.66]},
            {"name": "fine-tune", "history": {"loss": [0.5, 0.4, 0.35], "val_loss": [0.6, 0.55,
             None], "auc": [0.8, 0.85, 0.9], "val_auc": [0.7, 0.75, 0.77], "lr": [1e-4] * 3}},
        ]
    }
    return EvaluationReport.from_predictions(
        y, p, threshold=0.5, subjects=subjects, paths=paths, history=history,
        model_info={"arch": "mobilenet_v2", "image_size": 96},
        dataset_info={"synthetic": True, "name": "synthetic_small"},
    )


def test_report_attributes_match_metrics(report):
    m = classification_metrics(report.y_true, report.p_all, 0.5)
    assert report.accuracy == m["accuracy"]
    assert report.f1_weighted == m["f1_weighted"]
    assert report.roc_auc == m["roc_auc"]
    assert report.confusion_matrix.tolist() == m["confusion_matrix"]
    assert report.sensitivity == m["sensitivity"] and report.specificity == m["specificity"]
    assert report.n == 50 and report.counts == {"hem": 20, "all": 30}
    assert "EvaluationReport(n=50" in repr(report) and "synthetic" in repr(report)


def test_report_per_subject(report):
    ps = report.per_subject
    assert list(ps) == ["3", "7", "H1", "H2"]
    assert ps["H1"]["n"] == 10 and ps["H1"]["hem"] == 10 and ps["H1"]["all"] == 0
    assert ps["3"]["all"] == 15
    pred = report.p_all >= 0.5
    assert ps["7"]["correct"] == int(pred[35:50].sum())
    assert ps["7"]["accuracy"] == pytest.approx(pred[35:50].mean())
    assert sum(r["correct"] for r in ps.values()) == round(report.accuracy * 50)


def test_report_subject_call_and_fraction(report):
    ps = report.per_subject
    for s, r in ps.items():
        idx = [j for j, x in enumerate(report.subjects) if x == s]
        p = report.p_all[idx]
        assert r["mean_p_all"] == pytest.approx(p.mean())
        assert r["frac_called_all"] == pytest.approx((p >= 0.5).mean())
        assert r["call"] == ("all" if p.mean() >= 0.5 else "hem")
    assert ps["3"]["true_class"] == "all" and ps["H1"]["true_class"] == "hem"
    summ = report.summary()
    assert summ["subjects"]["n"] == 4 and 0 <= summ["subjects"]["called_correctly"] <= 4
    assert summ["intervals"]["unit"] == "subject" and "ece" in summ


def test_intervals_over_subjects_and_over_cells():
    from bmcd.metrics import bootstrap_intervals

    rng = np.random.default_rng(5)
    y = np.repeat([0, 1, 0, 1, 0, 1, 0, 1], 25)
    # subjects differ a lot (a per-subject offset), cells within a subject little
    offs = np.repeat(rng.normal(0, 0.25, 8), 25)
    p = np.clip(0.3 + 0.3 * y + offs + rng.normal(0, 0.05, y.size), 0, 1)
    subj = np.repeat([f"s{i}" for i in range(8)], 25)
    by_subj = bootstrap_intervals(y, p, 0.5, subjects=subj, n_boot=400, seed=1)
    by_cell = bootstrap_intervals(y, p, 0.5, n_boot=400, seed=1)
    assert by_subj["unit"] == "subject" and by_subj["n_units"] == 8
    assert by_cell["unit"] == "cell" and by_cell["n_units"] == 200
    point = classification_metrics(y, p, 0.5)
    for k in ("roc_auc", "f1_weighted", "balanced_accuracy", "sensitivity", "specificity"):
        lo, hi = by_subj["metrics"][k]
        clo, chi = by_cell["metrics"][k]
        assert lo <= point[k] <= hi and clo <= point[k] <= chi, k
        # resampling whole subjects shows the between-subject spread cells hide
        assert hi - lo > chi - clo, k
    # the same seed gives the same interval
    assert bootstrap_intervals(y, p, 0.5, subjects=subj, n_boot=400, seed=1) == by_subj


def test_resampled_metrics_match_scikit_learn():
    """The vectorised bootstrap computes exactly classification_metrics on each resample."""
    from bmcd.metrics._intervals import INTERVAL_METRICS, _resampled_metrics

    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 120)
    p = np.round(rng.random(120) * 0.6 + 0.3 * y, 2)  # rounded: many ties
    w = np.stack([np.bincount(rng.integers(0, 120, 120), minlength=120) for _ in range(6)])
    got = _resampled_metrics(y, p, 0.5, w.astype(float))
    for b in range(6):
        idx = np.repeat(np.arange(120), w[b])
        ref = classification_metrics(y[idx], p[idx], 0.5)
        for k in INTERVAL_METRICS:
            assert got[k][b] == pytest.approx(ref[k], abs=1e-12), k


def test_reliability_and_ece():
    from bmcd.metrics import reliability

    y = np.array([0] * 10 + [1] * 10)
    p = np.array([0.1] * 10 + [0.9] * 10)
    r = reliability(y, p)
    assert r["ece"] == pytest.approx(0.1) and r["count"] == [10, 10]
    assert r["frac_all"] == [0.0, 1.0] and r["mean_p"] == pytest.approx([0.1, 0.9])
    y2 = np.array([0, 1] * 10)  # p 0.5 for half-and-half: perfectly calibrated
    assert reliability(y2, np.full(20, 0.5))["ece"] == pytest.approx(0.0)


def test_binomial_upper_bound():
    from scipy.stats import binom

    from bmcd.metrics import binomial_upper_bound

    assert binomial_upper_bound(0, 200) == pytest.approx(1 - 0.05 ** (1 / 200))
    u = binomial_upper_bound(7, 150)
    assert binom.cdf(7, 150, u) == pytest.approx(0.05, abs=1e-9) and u > 7 / 150
    assert binomial_upper_bound(5, 5) == 1.0
    with pytest.raises(ValueError, match="0 <= k <= n"):
        binomial_upper_bound(3, 2)


def test_report_markdown(report):
    md = report.to_markdown()
    (tn, fp), (fn, tp) = report.confusion_matrix.tolist()
    assert "accuracy" in md and f"{report.accuracy:.4f}" in md
    for count, tag in ((tn, "TN"), (fp, "FP"), (fn, "FN"), (tp, "TP")):
        assert f"{count} ({tag})" in md
    h1 = report.per_subject["H1"]
    assert (f"| H1 | 10 | hem | {h1['mean_p_all']:.4f} | {h1['frac_called_all']:.4f} | "
            f"{h1['accuracy']:.4f} | {h1['call']} |") in md
    assert "SYNTHETIC" in md
    lo, hi = report.intervals["metrics"]["roc_auc"]
    assert f"| ROC AUC | {report.roc_auc:.4f} | [{lo:.4f}, {hi:.4f}] |" in md
    assert "bootstrap over the 4 subjects" in md
    assert f"| expected calibration error | {report.calibration['ece']:.4f} |" in md


def test_report_save_and_load(report, tmp_path):
    out = report.save(tmp_path / "nested" / "report")
    names = {"metrics.json", "roc.png", "confusion.png", "curves.png", "reliability.png",
             "report.html"}
    assert names <= {f.name for f in out.iterdir()}
    for png in ("roc.png", "confusion.png", "curves.png", "reliability.png"):
        data = (out / png).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
    d = json.loads((out / "metrics.json").read_text())  # strict JSON parses
    assert d["metrics"]["accuracy"] == report.accuracy
    assert d["metrics"]["f1_weighted"] == report.f1_weighted
    assert d["metrics"]["roc_auc"] == report.roc_auc
    assert d["metrics"]["confusion_matrix"] == report.confusion_matrix.tolist()
    page = (out / "report.html").read_text()
    assert "Data: SYNTHETIC cells (not real patients)" in page
    for png in ("roc.png", "confusion.png", "curves.png", "reliability.png"):
        assert f'href="{png}"' in page
    assert page.count("data:image/png;base64,") == 4
    assert "95% interval" in page and "bootstrap over the 4 subjects" in page
    assert "subject call" in page and "fraction called &#x27;all&#x27;" in page
    assert "expected calibration error" in page
    assert f"{report.f1_weighted:.4f}" in page
    back = EvaluationReport.load(out)
    assert back.accuracy == report.accuracy and back.roc_auc == report.roc_auc
    assert back.per_subject == report.per_subject
    assert back.intervals == report.intervals and back.calibration == report.calibration
    np.testing.assert_array_equal(back.y_true, report.y_true)
    np.testing.assert_array_equal(back.p_all, report.p_all)
    assert EvaluationReport.load(out / "metrics.json").f1_weighted == report.f1_weighted


def test_report_without_history_or_subjects_and_one_class(tmp_path):
    with pytest.warns(UndefinedMetricWarning):
        rep = EvaluationReport.from_predictions([0, 0, 0], [0.2, 0.7, 0.1])
    assert math.isnan(rep.roc_auc) and rep.per_subject == {}
    assert rep.accuracy == pytest.approx(2 / 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # saving must not warn again or crash
        out = rep.save(tmp_path)
    d = json.loads((out / "metrics.json").read_text())
    assert d["metrics"]["roc_auc"] is None  # NaN is not valid JSON
    assert (out / "curves.png").read_bytes().startswith(PNG_SIGNATURE)
    assert "SYNTHETIC" not in (out / "report.html").read_text()
    assert math.isnan(EvaluationReport.load(out).roc_auc)
    assert rep.summary()["roc_auc"] is None
    json.dumps(rep.summary(), allow_nan=False)


def test_report_plain_history_and_bad_lengths(tmp_path):
    rep = EvaluationReport.from_predictions(
        [0, 1, 0, 1], [0.2, 0.9, 0.4, 0.3],
        history={"loss": np.array([0.9, 0.5]), "val_loss": [1.0, 0.8], "note": "x"},
    )
    rep.save(tmp_path, plots=False)
    assert {f.name for f in tmp_path.iterdir()} == {"metrics.json", "report.html"}
    assert json.loads((tmp_path / "metrics.json").read_text())["history"]["loss"] == [0.9, 0.5]
    with pytest.raises(ValueError, match="one entry per cell"):
        EvaluationReport.from_predictions([0, 1], [0.1, 0.9], subjects=["a"])
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        EvaluationReport.load(tmp_path / "missing")


def test_missing_matplotlib_fails_before_writing(tmp_path, monkeypatch):
    from bmcd.errors import MissingDependencyError

    rep = EvaluationReport.from_predictions([0, 1], [0.2, 0.8])
    for mod in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(__import__("sys").modules, mod, None)  # import now fails
    with pytest.raises(MissingDependencyError, match=r"bmcd\[report\]"):
        rep.save(tmp_path / "r")
    assert not (tmp_path / "r").exists()
    rep.save(tmp_path / "r", plots=False)  # numbers and html need no matplotlib
    assert (tmp_path / "r" / "metrics.json").is_file()


def test_import_is_light():
    import subprocess
    import sys

    code = (
        "import sys, bmcd, bmcd.metrics; "
        "bad = [m for m in ('matplotlib', 'tensorflow', 'keras') if m in sys.modules]; "
        "assert not bad, bad; assert bmcd.EvaluationReport is bmcd.metrics.EvaluationReport"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_intervals_are_stratified_and_flag_few_subjects():
    from bmcd.metrics import bootstrap_intervals

    y = np.array([1] * 20 + [0] * 20)
    p = np.r_[np.linspace(0.3, 0.95, 20), np.linspace(0.05, 0.6, 20)]
    two = bootstrap_intervals(y, p, 0.5, subjects=["3"] * 20 + ["H1"] * 20, n_boot=200)
    m = classification_metrics(y, p, 0.5)
    # one subject per class: every resample is the data itself (no made-up 0 sensitivity)
    for k in ("roc_auc", "sensitivity", "specificity", "f1_weighted"):
        assert two["metrics"][k] == pytest.approx([m[k], m[k]]), k
    assert two["units_per_class"] == {"hem": 1, "all": 1}
    rep = EvaluationReport.from_predictions(y, p, 0.5, subjects=["3"] * 20 + ["H1"] * 20)
    assert "Only 1 'hem' and 1 'all' subjects: too few" in rep.to_markdown()
