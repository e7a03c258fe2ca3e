"""``bmcd.cv`` helpers without TensorFlow: the shared folds, the pooled row, the noise
record, and the peer recipe's crop (benchmarks/peer_recipe.py, used on the same folds)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from bmcd.cv import _noise_record, _recentre, cv_splits, pooled_row, prediction_row
from bmcd.data import Dataset


def _dataset() -> Dataset:
    names, labels = [], []
    for s, c in [(str(i), "all") for i in (1, 3, 4, 5, 11, 14)] + [
            (h, "hem") for h in ("H2", "H4", "H5", "H6", "H7", "H9")]:
        for i in range(6):
            names.append(f"UID_{s}_{i}_1_{c}.bmp")
            labels.append(c)
    return Dataset.from_arrays(names, labels)


def test_cv_splits_are_reproducible_and_subject_disjoint():
    ds = _dataset()
    a, b = cv_splits(ds, folds=3, seed=0), cv_splits(ds, folds=3, seed=0)
    assert [p["test"].paths for p in a] == [p["test"].paths for p in b]
    assert [p["fit"].paths for p in a] == [p["fit"].paths for p in b]
    tested = sorted(s for p in a for s in p["test"].subject_list())
    assert tested == sorted(ds.subject_list())
    for p in a:
        fit, val, test = (set(p["fit"].subject_list()), set(p["validation"].subject_list()),
                          set(p["test"].subject_list()))
        assert not fit & val and not fit & test and not val & test
        assert fit | val == set(p["train"].subject_list())
    assert all(p["validation"] is None for p in cv_splits(ds, folds=3, seed=0, val=0.0))


def test_pooled_row_keeps_each_folds_labels_and_noise_record_counts_flips():
    y1, p1 = np.array([1, 1, 0, 0]), np.array([0.9, 0.35, 0.32, 0.1])  # threshold 0.34
    y2, p2 = np.array([1, 0, 1, 0]), np.array([0.8, 0.6, 0.7, 0.2])    # threshold 0.65
    s1, s2 = ["1", "1", "H6", "H6"], ["3", "H7", "3", "H7"]
    row = pooled_row([(y1, p1, 0.34, s1), (y2, p2, 0.65, s2)])
    assert row["n"] == 8 and row["threshold"] == 0.5
    assert row["sensitivity"] == 1.0 and row["specificity"] == 1.0  # folds' own labels
    assert prediction_row(y1, p1, 0.34, s1)["roc_auc"] == 1.0
    assert ((_recentre(p2, 0.65) >= 0.5) == (p2 >= 0.65)).all()
    rec = _noise_record(np.array([0.49, 0.51, 0.9]), np.array([0.51, 0.51, 0.9]), 0.5)
    assert rec["label_flips"] == 1 and rec["n"] == 3
    assert rec["label_agreement"] == pytest.approx(2 / 3)


def test_peer_recipe_crops_the_first_contour_not_the_largest():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "peer_recipe.py"
    spec = importlib.util.spec_from_file_location("peer_recipe", path)
    peer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer)
    import cv2

    img = np.zeros((60, 60, 3), np.uint8)
    img[5:35, 5:35] = 200    # the cell, large, near the top
    img[50:54, 40:44] = 200  # a speck, small, lower: OpenCV lists it first
    g = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    contours, _ = cv2.findContours((g > 1).astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    first = cv2.boundingRect(contours[0])
    x = peer.peer_image_array(img, 16)
    assert x.shape == (16, 16, 3) and x.dtype == np.float32
    if first[2] == 4:  # the speck came first: the crop is all foreground
        assert x.min() > 100
    else:
        assert first[2] == 30
