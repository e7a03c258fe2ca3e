"""Classifier and Keras backend: estimator habits, input forms, model directory, phases.

Tests that need a trained network share the session fixture ``fitted_mobilenet``
(conftest.py): MobileNetV2 trained from scratch at 64 px on SYNTHETIC cells.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bmcd import Classifier, PreprocessConfig
from bmcd._classifier_inputs import _as_dataset, _resolve_inputs, predict_files
from bmcd.errors import (
    BmcdError,
    DatasetError,
    ModelFormatError,
    NotFittedError,
    WeightsUnavailableError,
)
from bmcd.preprocessing import preprocess_batch, read_image

# --------------------------------------------------------------------------- no TensorFlow


def test_init_only_stores_arguments_and_get_params_round_trips():
    clf = Classifier(arch="resnet50", image_size=48, weights=None, threshold=0.3, seed=7)
    params = clf.get_params()
    assert params == {
        "arch": "resnet50", "image_size": 48, "weights": None, "threshold": 0.3,
        "preprocess": None, "seed": 7, "pooling": "avg", "head_units": (), "dropout": 0.2,
    }
    assert Classifier(**params).get_params() == params
    # nothing learned yet, and nothing validated in __init__ (sklearn habit)
    assert not hasattr(clf, "backend_") and not hasattr(clf, "classes_")
    Classifier(arch="no-such-arch")
    assert clf.set_params(seed=3) is clf and clf.seed == 3
    with pytest.raises(ValueError, match="Invalid parameter 'colour'"):
        clf.set_params(colour="red")


def test_repr_shows_changed_parameters_only():
    assert repr(Classifier()) == "Classifier()"
    assert repr(Classifier(image_size=64, weights=None)) == "Classifier(image_size=64, weights=None)"


@pytest.mark.parametrize("method, args", [
    ("predict", (["x.bmp"],)),
    ("predict_proba", (["x.bmp"],)),
    ("evaluate", ("data",)),
    ("tune_threshold", ("data",)),
    ("save", ("model",)),
])
def test_unfitted_model_raises_not_fitted_error(method, args):
    clf = Classifier(image_size=64, weights=None)
    with pytest.raises(NotFittedError, match=r"not fitted.*fit\(train_data\).*Classifier\.load"):
        getattr(clf, method)(*args)
    # also catchable as the builtins sklearn users expect
    with pytest.raises(AttributeError):
        getattr(clf, method)(*args)


def test_fit_rejects_bad_parameters_before_any_work(synthetic_small):
    with pytest.raises(ValueError, match="disagrees with preprocess.image_size"):
        Classifier(image_size=64, preprocess=PreprocessConfig(image_size=96)).fit(synthetic_small)
    with pytest.raises(ValueError, match="Unknown arch 'vgg16'"):
        Classifier(arch="vgg16").fit(synthetic_small)
    with pytest.raises(ValueError, match="image_size must be an int >= 32"):
        Classifier(image_size=16).fit(synthetic_small)
    with pytest.raises(ValueError, match="threshold must be a number in"):
        Classifier(threshold=1.5).fit(synthetic_small)


def test_fit_needs_both_classes(synthetic_small):
    from bmcd.data import load_dataset

    ds = load_dataset(synthetic_small)
    only_all = ds.subset(ds.labels == 1)
    with pytest.raises(DatasetError, match="both classes"):
        Classifier(image_size=32, weights=None).fit(only_all)


def test_training_data_forms(synthetic_small):
    from bmcd.data import Dataset

    ds = _as_dataset(synthetic_small, "train")
    assert isinstance(ds, Dataset) and ds.class_counts() == {"hem": 40, "all": 40}
    pairs = _as_dataset((ds.paths[:4], ["all", "hem", "all", "hem"]), "train")
    assert pairs.labels.tolist() == [1, 0, 1, 0]
    assert _as_dataset(ds, "train") is ds
    with pytest.raises(DatasetError, match="train must be a Dataset"):
        _as_dataset(np.zeros((2, 8, 8, 3)), "train")


def test_resolve_inputs_forms(synthetic_small, tmp_path):
    files = sorted(str(p) for p in synthetic_small.rglob("*.bmp"))[:3]
    image = read_image(files[0])
    assert _resolve_inputs(files) == (files, files)
    assert _resolve_inputs(files[0]) == ([files[0]], [files[0]])
    items, paths = _resolve_inputs(synthetic_small)  # a labelled dataset folder
    assert len(items) == 80 and paths == items
    loose = tmp_path / "loose"  # an unlabelled folder of images
    loose.mkdir()
    for f in files:
        shutil.copy(f, loose)
    items, _ = _resolve_inputs(loose)
    assert sorted(Path(i).name for i in items) == sorted(Path(f).name for f in files)
    items, paths = _resolve_inputs(image)
    assert len(items) == 1 and items[0] is image and paths is None
    items, _ = _resolve_inputs(np.stack([image, image]))
    assert len(items) == 2 and items[0].shape == image.shape
    assert len(_resolve_inputs(image[:, :, 0])[0]) == 1  # one grayscale image
    assert _resolve_inputs(b"raw-bytes")[0] == [b"raw-bytes"]
    with pytest.raises(ValueError, match=r"received an array of shape \(2, 5, 5, 5, 3\)"):
        _resolve_inputs(np.zeros((2, 5, 5, 5, 3)))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="No images found"):
        _resolve_inputs(empty)


def test_predict_files_skips_unreadable_files_and_keeps_order():
    from bmcd.errors import ImageReadError

    class Fake:  # p(all) = position / 10; "bad*" files cannot be read
        calls = []

        def predict_details(self, files, batch_size, tta):
            self.calls.append((len(files), batch_size))
            bad = [f for f in files if f.startswith("bad")]
            if bad:
                raise ImageReadError(f"cannot read {bad[0]}")
            p = np.array([int(f[-1]) / 10 for f in files])
            return {"p_all": p, "label": np.where(p >= 0.5, "all", "hem"),
                    "no_cell": np.zeros(len(files), bool)}

    errors = []
    files = ["f1", "bad2", "f3", "f7"]
    rows = list(predict_files(Fake(), files, 8, on_error=errors.append))
    assert [(r[0], r[2]) for r in rows] == [("f1", "hem"), ("f3", "hem"), ("f7", "all")]
    assert [str(e) for e in errors] == ["cannot read bad2"]
    assert Fake.calls == [(4, 8), (1, 1), (1, 1), (1, 1), (1, 1)]  # the chunk, then one by one


def test_cache_images_is_lossless_uint8(synthetic_small):
    from bmcd.training.sequence import cache_images

    files = sorted(synthetic_small.rglob("*.bmp"))[:10]
    cfg = PreprocessConfig(image_size=40)
    cached = cache_images(files, cfg, progress=False, chunk_size=4)
    ref = preprocess_batch(files, cfg)
    assert cached.dtype == np.uint8 and cached.shape == (10, 40, 40, 3)
    assert np.array_equal(cached.astype(np.float32), ref)  # integral floats: exact


def test_cache_images_memmap_is_reused(synthetic_small, tmp_path, monkeypatch):
    import bmcd.training.sequence as kb

    files = sorted(synthetic_small.rglob("*.bmp"))[:6]
    cfg = PreprocessConfig(image_size=32)
    first = kb.cache_images(files, cfg, cache_dir=tmp_path, name="train", progress=False)
    assert isinstance(first, np.memmap) and len(list(tmp_path.glob("train-*.npy"))) == 1

    def boom(*a, **k):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(kb, "preprocess_batch", boom)
    again = kb.cache_images(files, cfg, cache_dir=tmp_path, name="train", progress=False)
    assert np.array_equal(np.asarray(first), np.asarray(again))
    with pytest.raises(AssertionError, match="reused"):  # another config is another key
        kb.cache_images(files, PreprocessConfig(image_size=36), cache_dir=tmp_path,
                        name="train", progress=False)


def test_load_errors_before_tensorflow(tmp_path):
    with pytest.raises(ModelFormatError, match="does not exist"):
        Classifier.load(tmp_path / "nope")
    with pytest.raises(ModelFormatError, match="no bmcd.json"):
        Classifier.load(tmp_path)
    with pytest.raises(ValueError, match="Unknown backend 'torch'.*'keras', 'onnx'"):
        Classifier.load(tmp_path, backend="torch")


def test_importing_classifier_does_not_import_tensorflow():
    code = (
        "import sys, bmcd, bmcd.classifier, bmcd.demo, bmcd.runtimes.keras, bmcd.training; "
        "from bmcd import Classifier; Classifier(weights=None).get_params(); "
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False False"


# --------------------------------------------------------------------------- Keras needed


@pytest.fixture(scope="module")
def keras():
    pytest.importorskip("tensorflow")
    from bmcd.runtimes.keras import keras_module

    return keras_module()


def _recording_fit(model, calls):
    """Replace ``model.fit`` by a recorder of the trainable state of each phase."""
    backbone = model.get_layer("backbone")

    def fit(x, validation_data=None, epochs=1, class_weight=None, callbacks=(), verbose=0,
            shuffle=False):
        trainable = [layer.name for layer in backbone.layers if layer.trainable]
        frozen_bn = [layer.name for layer in backbone.layers
                     if type(layer).__name__ == "BatchNormalization" and not layer.trainable]
        calls.append({
            "epochs": epochs,
            "lr": float(model.optimizer.learning_rate.numpy()),
            "trainable": trainable,
            "frozen_bn": frozen_bn,
            "n_layers": len(backbone.layers),
            "head_trainable": model.get_layer("p_all").trainable,
            "class_weight": class_weight,
            "batch": x[0],
        })

        class H:
            history = {"loss": [0.5] * epochs, "val_loss": [0.6] * epochs}

        return H()

    model.fit = fit


def _tiny_xy(n=12, size=32):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    y = np.array([0, 1] * (n // 2))
    return x, y


def test_scratch_training_is_one_full_phase_with_fast_bn_momentum(keras):
    from bmcd.training import SCRATCH_BN_MOMENTUM, build_model, train_model

    model = build_model("mobilenet_v2", 32, weights=None)
    bns = [layer for layer in model.get_layer("backbone").layers
           if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and all(layer.momentum == SCRATCH_BN_MOMENTUM == 0.8 for layer in bns)
    assert build_model("mobilenet_v2", 32, weights=None, bn_momentum=0.5).get_layer(
        "backbone").get_layer("bn_Conv1").momentum == 0.5
    calls = []
    _recording_fit(model, calls)
    x, y = _tiny_xy()
    with pytest.warns(UserWarning, match="fine_tune_from='block_1_expand' is ignored"):
        record = train_model(model, x, y, x[:4], y[:4], arch="mobilenet_v2", pretrained=False,
                             epochs=3, fine_tune_epochs=2, fine_tune_from="block_1_expand",
                             learning_rate=1e-3, verbose=0)
    assert len(calls) == 1  # no frozen-backbone phase
    assert calls[0]["epochs"] == 5 and calls[0]["lr"] == pytest.approx(1e-3)
    assert len(calls[0]["trainable"]) == calls[0]["n_layers"] and calls[0]["head_trainable"]
    assert record["mode"] == "scratch" and "nothing to transfer" in record["note"]
    assert [p["name"] for p in record["phases"]] == ["full"]
    assert record["epochs_run"] == {"full": 5}
    assert record["history"]["phases"][0]["history"]["loss"] == [0.5] * 5


def _spy_fit(model, calls):
    """Wrap the REAL ``model.fit``: record each phase's settings and the weights before and
    after it, then train for real."""
    backbone = model.get_layer("backbone")
    real_fit = model.fit

    def snapshot():
        return {w.path: np.array(w.numpy()) for w in model.weights}

    def fit(x, validation_data=None, epochs=1, class_weight=None, callbacks=(), verbose=0,
            shuffle=False):
        call = {
            "epochs": epochs,
            "lr": float(model.optimizer.learning_rate.numpy()),
            "trainable": [layer.name for layer in backbone.layers if layer.trainable],
            "frozen_bn": [layer.name for layer in backbone.layers
                          if type(layer).__name__ == "BatchNormalization"
                          and not layer.trainable],
            "head_trainable": model.get_layer("p_all").trainable,
            "class_weight": class_weight,
            "before": snapshot(),
        }
        history = real_fit(x, validation_data=validation_data, epochs=epochs,
                           class_weight=class_weight, callbacks=callbacks, verbose=verbose,
                           shuffle=shuffle)
        call["after"] = snapshot()
        calls.append(call)
        return history

    model.fit = fit


def _layer_weights(model, layer_name: str) -> list[str]:
    layer = model.get_layer("backbone").get_layer(layer_name)
    return [w.path for w in layer.weights]


def test_transfer_training_freezes_then_fine_tunes_from_named_layer(keras, tmp_path):
    """A REAL 1 + 1 epoch transfer fit at 32 px from a local (random) weights file."""
    from bmcd.training import build_model, train_model

    weights = tmp_path / "mobilenet_v2_notop.weights.h5"
    keras.applications.MobileNetV2(include_top=False, weights=None,
                                   input_shape=(32, 32, 3)).save_weights(weights)
    model = build_model("mobilenet_v2", 32, weights=str(weights), bn_momentum=0.99)
    calls = []
    _spy_fit(model, calls)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(12, 32, 32, 3), dtype=np.uint8)
    y = np.array([1] * 9 + [0] * 3)  # imbalanced: 9 "all", 3 "hem"
    record = train_model(model, x, y, x[:4], y[:4], arch="mobilenet_v2", pretrained=True,
                         epochs=1, fine_tune_epochs=1, learning_rate=1e-2,
                         fine_tune_learning_rate=1e-2, balance="class_weight", batch_size=4,
                         verbose=0)
    head, fine = calls
    assert head["epochs"] == 1 and fine["epochs"] == 1
    assert head["trainable"] == [] and head["head_trainable"]  # backbone frozen
    names = [layer.name for layer in model.get_layer("backbone").layers]
    start = names.index("block_13_expand")  # the default for mobilenet_v2
    assert fine["trainable"] == names[start:]
    assert fine["frozen_bn"] and all(names.index(n) < start for n in fine["frozen_bn"])
    # inverse-frequency class weights: n / (2 * count) = 12/6 for hem, 12/18 for all
    for call in (head, fine):
        assert call["class_weight"][0] == pytest.approx(2.0)
        assert call["class_weight"][1] == pytest.approx(2 / 3)
    assert record["balance"]["class_weight"] == {"0": pytest.approx(2.0),
                                                 "1": pytest.approx(2 / 3)}

    def changed(call, paths):
        return [p for p in paths if not np.array_equal(call["before"][p], call["after"][p])]

    backbone_paths = [w.path for w in model.get_layer("backbone").weights]
    head_paths = [w.path for w in model.get_layer("p_all").weights]
    # phase 1: every backbone weight (BatchNorm statistics included) is bit-identical,
    # the head learns
    assert changed(head, backbone_paths) == []
    assert changed(head, head_paths) == head_paths
    # phase 2: layers before block_13_expand stay bit-identical, the unfrozen ones change
    frozen = [p for n in names[:start] for p in _layer_weights(model, n)]
    unfrozen_convs = [p for n in names[start:] if "BN" not in n and "bn" not in n.lower()
                      for p in _layer_weights(model, n)]
    assert frozen and unfrozen_convs
    assert changed(fine, frozen) == []
    assert changed(fine, unfrozen_convs) == unfrozen_convs
    assert record["mode"] == "transfer" and record["epochs_run"] == {"head": 1, "fine_tune": 1}
    with pytest.raises(ValueError, match="'no_such_layer' is not a layer of the backbone"):
        train_model(model, x, y, arch="mobilenet_v2", pretrained=True, epochs=1,
                    fine_tune_epochs=1, fine_tune_from="no_such_layer", verbose=0)


def test_cell_sequence_batches_shuffle_and_augment(keras):
    from bmcd.data import balance_augment
    from bmcd.training.sequence import sequence_class

    n = 10
    # image i is constant i (flips/rotations leave it unchanged), plus a marker pixel
    images = np.repeat(np.arange(n, dtype=np.uint8)[:, None, None, None], 8, axis=1)
    images = np.repeat(np.repeat(images, 8, axis=2), 3, axis=3).copy()
    images[:, 0, 0, :] = 255
    labels = np.array([1] * 7 + [0] * 3)
    idx, transforms = balance_augment(labels, seed=0)
    Seq = sequence_class()
    seq = Seq(images, labels, 4, indices=idx, transforms=transforms, shuffle=True,
              augment=True, seed=3)
    assert len(seq) == -(-len(idx) // 4) == 4
    xs, ys = zip(*(seq[i] for i in range(len(seq))), strict=True)
    x, yb = np.concatenate(xs), np.concatenate(ys)
    assert x.dtype == np.float32 and yb.dtype == np.float32 and x.shape == (14, 8, 8, 3)
    ids = x[:, 4, 4, 0].astype(int)  # which image each item is
    assert np.array_equal(yb, labels[ids])  # labels stay with their images
    assert sorted(ids.tolist()) == sorted(idx.tolist())  # one epoch = every item once
    assert np.bincount(yb.astype(int)).tolist() == [7, 7]  # balanced
    corners = {tuple(np.argwhere(img[:, :, 0] == 255)[0]) for img in x}
    assert len(corners) > 1  # the marker moved: flips / rotations were applied
    again = Seq(images, labels, 4, indices=idx, transforms=transforms, shuffle=True,
                augment=True, seed=3)
    assert np.array_equal(again[1][0], seq[1][0])  # reproducible
    seq.on_epoch_end()
    x2 = np.concatenate([seq[i][0] for i in range(len(seq))])
    assert not np.array_equal(x2[:, 4, 4, 0], x[:, 4, 4, 0])  # reshuffled per epoch
    plain = Seq(images, labels, 4)
    assert np.array_equal(np.concatenate([plain[i][0] for i in range(3)]), images)


@pytest.mark.filterwarnings("ignore:`input_shape` is undefined:UserWarning")
def test_imagenet_weights_offline_raise_clear_error(keras, tmp_path, monkeypatch,
                                                    synthetic_small):
    import urllib.error

    import keras.src.backend.config as kconfig
    import keras.src.utils.file_utils as file_utils

    from bmcd.training import build_model

    home = tmp_path / "keras_home"  # an empty Keras cache
    home.mkdir()
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.setattr(kconfig, "_KERAS_DIR", str(home))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(file_utils, "urlretrieve", offline)
    with pytest.raises(WeightsUnavailableError) as err:
        build_model("resnet50", 32, weights="imagenet")
    msg = str(err.value)
    assert isinstance(err.value, BmcdError)
    assert "weights=None" in msg and str(home / "models") in msg and "offline" in msg
    with pytest.raises(WeightsUnavailableError, match="weights=None"):
        Classifier(arch="mobilenet_v2", image_size=32, weights="imagenet").fit(
            synthetic_small, epochs=1, fine_tune_epochs=0, verbose=0)
    with pytest.raises(WeightsUnavailableError, match="not an existing file"):
        build_model("mobilenet_v2", 32, weights=str(tmp_path / "missing.weights.h5"))


def test_predict_proba_shape_and_rows(fitted_mobilenet, learnable_split):
    paths = learnable_split.test.absolute_paths()[:7]
    proba = fitted_mobilenet.predict_proba(paths)
    assert proba.shape == (7, 2) and proba.dtype == np.float64
    assert np.allclose(proba.sum(axis=1), 1.0)
    assert ((proba >= 0) & (proba <= 1)).all()
    assert fitted_mobilenet.classes_ == ["hem", "all"]


def test_every_input_form_gives_the_same_probabilities(fitted_mobilenet, learnable_split,
                                                       tmp_path):
    from bmcd.data import Dataset

    clf = fitted_mobilenet
    paths = learnable_split.test.absolute_paths()[:4]
    ref = clf.predict_proba(paths)[:, 1]
    # Same images in the same batch give bit-identical results. Across batch sizes oneDNN
    # may pick other kernels, so a single image vs. the same image in a batch of 4 agree
    # to float32 round-off only (measured ~2e-8).
    single = [clf.predict_proba([p])[0, 1] for p in paths[:3]]
    assert np.allclose(single, ref[:3], rtol=0, atol=1e-6)
    img = read_image(paths[0])
    assert img.dtype == np.uint8 and img.shape == (450, 450, 3)
    one = clf.predict_proba(img)
    assert one.shape == (1, 2) and one[0, 1] == single[0]
    assert clf.predict_proba(img.astype(np.float32))[0, 1] == single[0]  # float [0, 255]
    assert clf.predict_proba(img.astype(np.float64) / 255.0)[0, 1] == single[0]  # [0, 1]
    batch = np.stack([read_image(p) for p in paths])
    assert np.array_equal(clf.predict_proba(batch)[:, 1], ref)
    assert clf.predict_proba(Path(paths[1]).read_bytes())[0, 1] == single[1]
    assert clf.predict_proba(Path(paths[2]))[0, 1] == single[2]
    ds = Dataset.from_arrays(paths, learnable_split.test.labels[:4])
    assert np.array_equal(clf.predict_proba(ds)[:, 1], ref)
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    for p in paths:
        shutil.copy(p, folder)
    by_name = dict(zip([Path(p).name for p in paths], ref, strict=True))
    got = clf.predict_proba(folder)[:, 1]
    names = sorted(Path(p).name for p in paths)
    assert np.array_equal(got, [by_name[n] for n in names])


def test_separating_model_predicts_both_labels_by_threshold(fitted_mobilenet, learnable_split):
    """Guards the research report's bug: argmax over one sigmoid output is always 'hem'."""
    clf = fitted_mobilenet
    test = learnable_split.test
    labels = clf.predict(test)
    p = clf.predict_proba(test)[:, 1]
    assert set(labels.tolist()) == {"hem", "all"}
    assert np.array_equal(labels, np.where(p >= clf.threshold_, "all", "hem"))
    assert (labels == np.array(["hem", "all"])[test.labels]).mean() > 0.75
    old = clf.threshold_
    try:
        clf.threshold_ = 0.0
        assert set(clf.predict(test.absolute_paths()[:5]).tolist()) == {"all"}
        clf.threshold_ = 1.0 + 1e-9
        assert set(clf.predict(test.absolute_paths()[:5]).tolist()) == {"hem"}
    finally:
        clf.threshold_ = old


def test_save_load_reproduces_predict_proba_exactly(fitted_mobilenet, learnable_split,
                                                    tmp_path):
    clf = fitted_mobilenet
    out = clf.save(tmp_path / "model")
    assert out == tmp_path / "model"
    assert sorted(p.name for p in out.iterdir()) == ["bmcd.json", "model.keras"]
    meta = json.loads((out / "bmcd.json").read_text())
    assert meta["arch"] == "mobilenet_v2" and meta["image_size"] == 64
    assert meta["preprocess"] == PreprocessConfig(image_size=64).to_dict()
    assert meta["training"]["mode"] == "scratch"
    paths = learnable_split.test.absolute_paths()[:10]
    assert clf.model_dir_ == out
    loaded = Classifier.load(out)
    assert loaded.model_dir_ == out
    assert np.array_equal(loaded.predict_proba(paths), clf.predict_proba(paths))
    assert loaded.get_params()["arch"] == "mobilenet_v2" and loaded.threshold_ == clf.threshold_
    assert loaded.classes_ == ["hem", "all"] and loaded.history_ == clf.history_
    # a model without optimizer state: the file holds weights only (about 9 MB for 2.3M
    # float32 parameters; Adam moments would triple that)
    assert (out / "model.keras").stat().st_size < 12e6
    assert os.stat(out / "model.keras").st_mode & 0o044  # readable by others, like any file


def _tamper(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    meta = json.loads((dst / "bmcd.json").read_text())
    edit(meta)
    (dst / "bmcd.json").write_text(json.dumps(meta))
    return dst


@pytest.fixture(scope="module")
def saved_model(fitted_mobilenet, tmp_path_factory):
    return fitted_mobilenet.save(tmp_path_factory.mktemp("saved") / "model")


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.pop("arch"), r"missing required keys \['arch'\]"),
    (lambda m: m.pop("preprocess"), r"missing required keys \['preprocess'\]"),
    (lambda m: m.update(schema_version=99), "unknown schema_version 99"),
    (lambda m: m.update(image_size=96), "image_size 96 disagrees with preprocess"),
    (lambda m: (m.update(image_size=96), m["preprocess"].update(image_size=96)),
     r"takes input of shape \(64, 64, 3\) but .* says image_size 96"),
], ids=["missing-arch", "missing-preprocess", "schema", "size-vs-preprocess", "size-vs-model"])
def test_tampered_bmcd_json_raises_model_format_error(saved_model, tmp_path, edit, match):
    bad = _tamper(saved_model, tmp_path / "bad", edit)
    with pytest.raises(ModelFormatError, match=match):
        Classifier.load(bad)


def test_missing_or_corrupt_model_file(saved_model, tmp_path):
    no_keras = tmp_path / "no_keras"
    shutil.copytree(saved_model, no_keras)
    (no_keras / "model.keras").unlink()
    with pytest.raises(ModelFormatError, match="no model.keras"):
        Classifier.load(no_keras)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(saved_model, corrupt)
    (corrupt / "model.keras").write_bytes(b"not a zip file")
    with pytest.raises(ModelFormatError, match="safe mode"):
        Classifier.load(corrupt)


def test_keras_backend_predict_batch_contract(fitted_mobilenet, learnable_split):
    backend = fitted_mobilenet.backend_
    assert backend.name == "keras" and backend.image_size == 64
    # real (synthetic) cells, whose outputs vary, over three chunks of batch_size 64
    files = (learnable_split.test.absolute_paths() + learnable_split.val.absolute_paths())[:150]
    x = preprocess_batch(files, fitted_mobilenet._config())
    p = backend.predict_batch(x)
    assert p.shape == (150,) and p.dtype == np.float32
    assert backend.batch_size == 64 and float(p.std()) > 0.05 and p.min() < 0.5 < p.max()
    # row by row: each image alone gives its own row's value (a batch that re-read the
    # first rows, or shifted them, would fail here)
    alone = np.array([backend.predict_batch(x[i : i + 1])[0] for i in range(len(x))])
    np.testing.assert_allclose(p, alone, atol=1e-5)
    np.testing.assert_allclose(backend.predict_batch(x[::-1]), p[::-1], atol=1e-5)
    assert backend.predict_batch(x[:0]).shape == (0,)
    with pytest.raises(ValueError, match=r"expects preprocessed input of shape \(n, 64, 64, 3\)"):
        backend.predict_batch(x[:, :32, :32])
