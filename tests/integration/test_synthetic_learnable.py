"""The synthetic cells carry a morphology signal, not a colour signal.

Guards the tuning of :mod:`bmcd.synthetic` that the classifier tests rely on (a small CNN
trained from scratch on these cells reaches held-out-subject ROC-AUC >= 0.90): a logistic
regression on the mean colour of each preprocessed cell must stay near chance on held-out
subjects, while a one-number morphology feature (the share of dark, nuclear pixels in the
cell) must separate the classes well. No TensorFlow needed.

The data are the settings the classifier engineer uses (12 subjects, 450 px, split by
subject with seed 0), at 150 images per class: thanks to per-image seeding these are the
first half of the 300-per-class set, with the same held-out subjects.
"""

from __future__ import annotations

import numpy as np
import pytest

from bmcd.data import load_dataset, split_by_subject
from bmcd.preprocessing import PreprocessConfig, preprocess_batch
from bmcd.synthetic import make_cells

N_PER_CLASS = 150
N_SUBJECTS = 12
IMAGE_SIZE = 450
INPUT_SIZE = 64


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney ROC-AUC with average ranks for ties."""
    y = np.asarray(y).astype(bool)
    score = np.asarray(score, dtype=float)
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    sorted_scores = score[order]
    i = 0
    while i < len(score):
        j = i
        while j + 1 < len(score) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    n1, n0 = y.sum(), (~y).sum()
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def test_roc_auc_helper():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5


def fit_logistic(x: np.ndarray, y: np.ndarray, steps: int = 2000, lr: float = 0.5):
    """Plain gradient-descent logistic regression on standardised features."""
    mu, sd = x.mean(0), x.std(0) + 1e-9
    z = (x - mu) / sd
    w, b = np.zeros(z.shape[1]), 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(z @ w + b)))
        g = p - y
        w -= lr * z.T @ g / len(y)
        b -= lr * g.mean()
    return lambda x_new: ((x_new - mu) / sd) @ w + b


def dark_fraction(batch: np.ndarray) -> np.ndarray:
    """Share of cell pixels darker than the midpoint of the cell's 5th/95th percentiles."""
    out = []
    for gray in batch.mean(axis=-1):
        cell = gray[gray > 10]
        lo, hi = np.percentile(cell, [5, 95])
        out.append(float((cell < (lo + hi) / 2).mean()))
    return np.array(out)


@pytest.fixture(scope="module", params=[0, 1], ids=lambda s: f"seed{s}")
def features(request, tmp_path_factory):
    seed = request.param
    root = tmp_path_factory.mktemp(f"learnable{seed}")
    make_cells(root, n_per_class=N_PER_CLASS, n_subjects=N_SUBJECTS, image_size=IMAGE_SIZE,
               seed=seed)
    split = split_by_subject(load_dataset(root), val=0.2, test=0.2, seed=0)
    cfg = PreprocessConfig(image_size=INPUT_SIZE)
    out = {}
    for name in ("train", "test"):
        part = getattr(split, name)
        x = preprocess_batch(part.absolute_paths(), cfg)
        out[name] = {"colour": x.mean(axis=(1, 2)), "dark": dark_fraction(x), "y": part.labels}
    out["test_subjects"] = split.test.subject_list()
    return out


def test_mean_colour_does_not_predict_class_on_held_out_subjects(features):
    tr, te = features["train"], features["test"]
    assert set(te["y"]) == {0, 1}
    predict = fit_logistic(tr["colour"], tr["y"].astype(float))
    auc = roc_auc(te["y"], predict(te["colour"]))
    assert auc < 0.70, (
        f"mean colour separates held-out subjects {features['test_subjects']} with AUC "
        f"{auc:.3f}; the synthetic generator must not put the class signal in colour"
    )
    # nor do the class-mean colours differ much against the image-to-image spread (with
    # 6 subjects per class, sampling alone gives gaps of about 0.2 standard deviations)
    both = np.concatenate([tr["colour"], te["colour"]])
    labels = np.concatenate([tr["y"], te["y"]])
    gap = np.abs(both[labels == 1].mean(0) - both[labels == 0].mean(0))
    assert (gap < 0.5 * both.std(0)).all(), f"class mean colour gap {gap} vs sd {both.std(0)}"


def test_morphology_separates_classes_better_than_colour(features):
    te = features["test"]
    dark_auc = roc_auc(te["y"], te["dark"])
    colour_auc = roc_auc(te["y"], fit_logistic(features["train"]["colour"],
                                               features["train"]["y"].astype(float))(te["colour"]))
    assert dark_auc > 0.85, f"dark-pixel (nucleus) fraction AUC {dark_auc:.3f} too low"
    assert dark_auc > max(colour_auc, 1 - colour_auc) + 0.15
    # and the feature is not perfect on its own: the classes overlap
    tr = features["train"]
    assert roc_auc(tr["y"], tr["dark"]) < 0.995
