"""Real training on SYNTHETIC cells: both architectures learn, on held-out subjects.

MobileNetV2 (64 px) is the session fixture ``fitted_mobilenet`` (conftest.py), trained
from scratch with the learnability settings of :mod:`bmcd.synthetic`; ResNet50 is trained
here at 32 px to keep it short. Every score is measured on subjects never seen in
training (split by subject).
"""

from __future__ import annotations

import numpy as np
import pytest

from bmcd import Classifier

pytestmark = [pytest.mark.slow, pytest.mark.train]


def test_mobilenet_v2_learns_held_out_subjects(fitted_mobilenet, learnable_split):
    report = fitted_mobilenet.evaluate(learnable_split.test)
    test_subjects = set(learnable_split.test.subject_list())
    assert not test_subjects & set(learnable_split.train.subject_list())
    assert report.roc_auc >= 0.85, f"held-out-subject ROC-AUC {report.roc_auc:.3f} < 0.85"
    assert report.accuracy > 0.75
    assert report.synthetic  # the folder's README marks it, and the report says so
    assert set(report.per_subject) == test_subjects
    assert sum(s["n"] for s in report.per_subject.values()) == len(learnable_split.test)
    assert report.history == fitted_mobilenet.history_


def test_training_provenance(fitted_mobilenet, learnable_split):
    meta = fitted_mobilenet.meta_
    training = meta["training"]
    assert training["data"]["train"]["fingerprint"] == learnable_split.train.fingerprint()
    assert training["data"]["validation"]["fingerprint"] == learnable_split.val.fingerprint()
    assert training["split"]["method"] == "subject"
    assert training["seeds"] == {"python": 0, "numpy": 0, "keras": 0, "shuffle": 0,
                                 "balance": 0, "augment": 0}
    (phase,) = training["phases"]
    assert phase["name"] == "full" and phase["trainable"] == "all layers"
    assert 1 <= phase["epochs_run"] <= phase["epochs_requested"] == 5
    assert len(phase["history"]["val_loss"]) == phase["epochs_run"]
    assert {"loss", "auc", "accuracy", "val_loss", "val_auc", "val_accuracy"} <= set(
        phase["history"])
    assert training["balance"]["method"] == "augment"
    assert training["params"]["weights"] is None and training["weights"] is None
    assert training["environment"]["tensorflow"]


def test_tune_threshold_on_validation(fitted_mobilenet, learnable_split):
    from bmcd.metrics import tune_threshold

    clf = fitted_mobilenet
    old = clf.threshold_
    try:
        p = clf.predict_proba(learnable_split.val)[:, 1]
        thr = clf.tune_threshold(learnable_split.val)
        assert thr == clf.threshold_ == clf.meta_["threshold"]
        assert thr == tune_threshold(learnable_split.val.labels, p, method="youden")
        assert clf.meta_["training"]["threshold_tuning"]["method"] == "youden"
        thr95 = clf.tune_threshold(learnable_split.val, sensitivity=0.95)
        pred = p >= thr95
        assert pred[learnable_split.val.labels == 1].mean() >= 0.95
    finally:
        clf.threshold_ = old
        clf.meta_["threshold"] = old
        clf.meta_["training"].pop("threshold_tuning", None)


def test_resnet50_trains_and_beats_chance(learnable_split):
    """ResNet50 from scratch at 32 px, 4 epochs: slow on 2 cores, so a short run.

    Measured on this split (seed 0): held-out-subject AUC ~0.8 (see the closing note of
    the classifier issue); the bar is set to what a short from-scratch run clearly clears.
    """
    clf = Classifier(arch="resnet50", image_size=32, weights=None, seed=0)
    clf.fit(learnable_split.train, validation=learnable_split.val, epochs=4,
            fine_tune_epochs=0, batch_size=32, verbose=0)
    report = clf.evaluate(learnable_split.test)
    assert clf.meta_["training"]["mode"] == "scratch"
    assert report.roc_auc >= 0.75, f"ResNet50 held-out-subject AUC {report.roc_auc:.3f}"
    labels = clf.predict(learnable_split.test)
    # both labels appear, and they beat chance on held-out subjects (issue 12: a label set
    # alone passed with a constant model)
    assert set(np.unique(labels)) == {"hem", "all"}
    truth = np.asarray(learnable_split.test.classes)[learnable_split.test.labels]
    assert float(np.mean(labels == truth)) > 0.5
