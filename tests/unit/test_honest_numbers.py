"""Issue 13: threshold tuned on validation only, constant-model warning, per-subject scores.

No TensorFlow: the training helpers are exercised with real datasets and reports and a
plain object in place of the fitted classifier (they only read and set its threshold and
``bmcd.json`` dictionary).
"""

from __future__ import annotations

import csv
import types
import warnings

import numpy as np
import pytest

from bmcd.data import Dataset
from bmcd.metrics import EvaluationReport, tune_threshold
from bmcd.training import evaluate as tev


def _val_dataset(n_per_subject: int = 10) -> Dataset:
    names, labels = [], []
    for s, c in (("1", "all"), ("3", "all"), ("H1", "hem"), ("H2", "hem")):
        for i in range(n_per_subject):
            names.append(f"UID_{s}_{i}_1_{c}.bmp")
            labels.append(c)
    return Dataset.from_arrays(names, labels)


def _clf(threshold: float = 0.5):
    return types.SimpleNamespace(threshold_=threshold, meta_={"threshold": threshold,
                                                              "training": {}})


def test_threshold_is_tuned_on_validation_and_recorded():
    ds = _val_dataset()
    rng = np.random.default_rng(0)
    y = np.asarray(ds.labels)
    p = np.clip(0.2 + 0.15 * y + rng.normal(0, 0.08, len(ds)), 0, 1)  # 'all' above ~0.35
    rep = EvaluationReport.from_predictions(y, p, 0.5, subjects=ds.subjects)
    clf = _clf()
    out = tev._tune_threshold(clf, ds, rep, "youden")
    thr = tune_threshold(y, p, method="youden")
    assert clf.threshold_ == thr == clf.meta_["threshold"] == out.threshold != 0.5
    tt = clf.meta_["training"]["threshold_tuning"]
    assert tt["method"] == "youden" and tt["part"] == "validation" and tt["n"] == len(ds)
    assert tt["previous"] == 0.5 and tt["subjects"] == ds.subject_list()
    assert out.balanced_accuracy >= rep.balanced_accuracy  # Youden maximises it on these cells

    clf = _clf()
    tev._tune_threshold(clf, ds, rep, None)
    assert clf.threshold_ == 0.5 and clf.meta_["training"]["threshold_tuning"]["method"] is None
    # a (nearly) constant model: nothing to tune, the threshold stays and the record says why
    flat = EvaluationReport.from_predictions(y, np.full(len(y), 0.4986), 0.5,
                                             subjects=ds.subjects)
    clf = _clf()
    tev._tune_threshold(clf, ds, flat, "youden")
    tt = clf.meta_["training"]["threshold_tuning"]
    assert clf.threshold_ == 0.5 and tt["method"] is None and "constant" in tt["note"]

    with pytest.raises(ValueError, match="threshold_rule must be one of"):
        tev.train_and_evaluate(clf, types.SimpleNamespace(val=[], test=[]), "x",
                               threshold_rule="f1")


def test_constant_validation_predictions_warn():
    with pytest.warns(UserWarning, match=r"nearly one value .*std of p\(all\) .* < 0.01"):
        tev._warn_if_constant(np.full(30, 0.73))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tev._warn_if_constant(np.linspace(0.1, 0.9, 30))


def test_score_by_subject_writes_one_row_per_subject(tmp_path):
    from bmcd.scoring._subjects import write_subject_table

    scores = tmp_path / "scores.csv"
    rows = [("a/UID_1_1_1_all.bmp", 0.9, "all"), ("a/UID_1_2_1_all.bmp", 0.4, "hem"),
            ("b/UID_H2_1_1_hem.bmp", 0.2, "hem"), ("c/unnamed.png", 0.7, "all"),
            ("b/UID_H2_2_1_hem.bmp", "", "")]  # a failed row (no p_all) is skipped
    with open(scores, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "p_all", "label"])
        w.writerows(rows)
    out = tmp_path / "subjects.csv"
    res = write_subject_table(scores, out, threshold=0.5)
    got = list(csv.DictReader(open(out)))
    assert [r["subject"] for r in got] == ["1", "H2", "?"]
    one = got[0]
    assert one["cells"] == "2" and float(one["mean_p_all"]) == pytest.approx(0.65)
    assert float(one["frac_called_all"]) == 0.5 and one["call"] == "all"
    assert got[1]["call"] == "hem" and got[1]["cells"] == "1"
    assert res["subjects"] == 3 and res["cells"] == 4 and res["unknown_subject_cells"] == 1


def test_cli_score_by_subject(tiny_onnx_model_dir, synthetic_small, tmp_path, capsys):
    from bmcd.cli import main
    from bmcd.data import load_dataset

    out, subj = tmp_path / "scores.csv", tmp_path / "subjects.csv"
    rc = main(["score", str(tiny_onnx_model_dir), str(synthetic_small), "--out", str(out),
               "--by-subject", str(subj), "--no-progress"])
    assert rc == 0
    assert "per subject: 8 subject(s) from 80 cell(s)" in capsys.readouterr().out
    rows = list(csv.DictReader(open(subj)))
    ds = load_dataset(synthetic_small)
    assert sorted(r["subject"] for r in rows) == sorted(ds.subject_list())
    assert sum(int(r["cells"]) for r in rows) == len(ds)
    scored = list(csv.DictReader(open(out)))
    for r in rows:  # each row is the mean of that subject's scored cells
        ps = [float(x["p_all"]) for x in scored if f"UID_{r['subject']}_" in x["path"]]
        assert float(r["mean_p_all"]) == pytest.approx(np.mean(ps), abs=1e-6)
        assert r["call"] == ("all" if np.mean(ps) >= float(r["threshold"]) else "hem")


def _weighted_mean_model(out_dir, S: int = 32):
    """p_all = sigmoid(mean(image * W) / 40 - 2) with a fixed random W: not invariant to
    flips or rotations, so test-time augmentation changes its output."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from _tiny_models import TINY_IR_VERSION, TINY_OPSET
    from bmcd.artifact import ONNX_FILE, new_model_json, onnx_metadata, write_model_json
    from bmcd.preprocessing import PreprocessConfig

    out_dir.mkdir(parents=True, exist_ok=True)
    w = np.random.default_rng(11).uniform(0, 2, (1, S, S, 3)).astype(np.float32)
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", S, S, 3])
    y = helper.make_tensor_value_info("p_all", TensorProto.FLOAT, ["N", 1])
    inits = [numpy_helper.from_array(w, "w"),
             helper.make_tensor("scale", TensorProto.FLOAT, [], [1 / 40]),
             helper.make_tensor("bias", TensorProto.FLOAT, [], [-2.0])]
    nodes = [
        helper.make_node("Mul", ["image", "w"], ["xw"]),
        helper.make_node("ReduceMean", ["xw"], ["m"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Flatten", ["m"], ["m2"], axis=1),
        helper.make_node("Mul", ["m2", "scale"], ["z0"]),
        helper.make_node("Add", ["z0", "bias"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["p_all"]),
    ]
    model = helper.make_model(helper.make_graph(nodes, "wmean", [x], [y], initializer=inits),
                              opset_imports=[helper.make_opsetid("", TINY_OPSET)])
    model.ir_version = TINY_IR_VERSION
    meta = new_model_json(arch="tiny-wmean", preprocess=PreprocessConfig(image_size=S))
    for k, v in onnx_metadata(meta).items():
        e = model.metadata_props.add()
        e.key, e.value = k, v
    onnx.save(model, str(out_dir / ONNX_FILE))
    write_model_json(out_dir, meta)
    return out_dir


def test_tta_is_the_mean_over_the_8_orientations(synthetic_small, tmp_path):
    pytest.importorskip("onnx")
    from bmcd import Classifier
    from bmcd.data import load_dataset, tta_views
    from bmcd.preprocessing import preprocess_batch

    clf = Classifier.load(_weighted_mean_model(tmp_path / "m"), backend="onnx")
    ds = load_dataset(synthetic_small)
    paths = ds.absolute_paths()[:6]
    x = preprocess_batch(paths, clf._config())
    # the 8 orientations made independently of bmcd.data.apply_transform
    views = [np.rot90(x, k, axes=(1, 2)) for k in range(4)]
    views += [np.flip(v, axis=2) for v in views]
    ref = np.mean([clf.backend_.predict_batch(np.ascontiguousarray(v)) for v in views], axis=0)
    plain = clf.predict_proba(paths)[:, 1]
    p = clf.predict_proba(paths, tta=True)[:, 1]
    np.testing.assert_allclose(p, ref, atol=1e-6)
    assert np.max(np.abs(p - plain)) > 1e-3  # the model is not invariant: TTA matters
    # the set of views is the same whatever the orientation of the input
    mine = sorted(tuple(np.round(v[0, :2, :2, 0], 3).ravel()) for v in tta_views(x))
    theirs = sorted(tuple(np.round(v[0, :2, :2, 0], 3).ravel()) for v in views)
    assert mine == theirs
    labels = clf.predict(paths, tta=True)
    assert list(labels) == ["all" if v >= clf.threshold_ else "hem" for v in p]
    rep = clf.evaluate(ds.subset(np.arange(len(ds)) % 7 == 0), tta=True)
    assert "8 flips/rotations" in rep.dataset_info["tta"]


def test_subject_folds_keep_subjects_and_linked_subjects_together():
    from bmcd.data import Dataset, subject_folds

    names, labels = [], []
    for s, c in [("1", "all"), ("3", "all"), ("4", "all"), ("5", "all"), ("H2", "hem"),
                 ("H4", "hem"), ("H5", "hem"), ("H6", "hem"), ("H7", "hem")]:
        for i in range(6):
            names.append(f"UID_{s}_{i}_1_{c}.bmp")
            labels.append(c)
    names[-25] = "UID_H2_26_1_hem.bmp"  # a C-NMC duplicate name: H2/H4/H5 are linked
    ds = Dataset.from_arrays(names, labels)
    folds = subject_folds(ds, folds=3, seed=0)
    seen = []
    for train, test in folds:
        assert not set(train.subject_list()) & set(test.subject_list())
        linked = {"H2", "H4", "H5"} & set(test.subject_list())
        assert linked in (set(), {"H2", "H4", "H5"})
        seen += test.subject_list()
    assert sorted(seen) == sorted(ds.subject_list())  # each subject tested exactly once
    with pytest.raises(ValueError, match="folds <= subject groups"):
        subject_folds(ds, folds=8)


def test_split_by_subject_keeps_linked_subjects_together():
    from bmcd.data import split_by_subject

    names, labels = [], []
    for s, c in [("1", "all"), ("3", "all"), ("4", "all"), ("5", "all"), ("11", "all"),
                 ("H2", "hem"), ("H4", "hem"), ("H5", "hem"), ("H6", "hem"), ("H7", "hem"),
                 ("H9", "hem")]:
        for i in range(6):
            names.append(f"UID_{s}_{i}_1_{c}.bmp")
            labels.append(c)
    names.append("UID_H4_7_1_hem.png")  # a C-NMC duplicate (= UID_H2_26_1): link them
    labels.append("hem")
    ds = Dataset.from_arrays(names, labels)
    # without a duplicate (e.g. synthetic cells named H2, H4, H5) they stay apart
    plain = Dataset.from_arrays(names[:-1], labels[:-1])
    assert any(
        len([n for n, part in split_by_subject(plain, 0.2, 0.2, seed=k).parts().items()
             if {"H2", "H4", "H5"} & set(part.subject_list())]) > 1 for k in range(8))
    for seed in range(8):
        split = split_by_subject(ds, val=0.2, test=0.2, seed=seed)
        sides = [name for name, part in split.parts().items()
                 if {"H2", "H4", "H5"} & set(part.subject_list())]
        assert len(sides) == 1, (seed, sides)
        assert split.shared_subjects() == []
