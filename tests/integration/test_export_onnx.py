"""Keras -> ONNX export and int8 quantization on real (small, briefly trained) networks.

Parity is checked for {resnet50, mobilenet_v2} x {fp32, int8} on synthetic cells and on
the real C-NMC sample images (skipped when ../shared/data is absent). The networks are
trained, because int8 agreement on a random network (all outputs ~0.5) would say nothing:

* MobileNetV2: the session fixture ``fitted_mobilenet`` (a Classifier trained at 64 px,
  shared with the classifier tests), exported through the Classifier path;
* ResNet50: trained here at 32 px for a few seconds on the session's synthetic cells and
  exported from its model directory, without the Classifier.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")
onnx = pytest.importorskip("onnx")
pytest.importorskip("sympy")

from onnx import numpy_helper  # noqa: E402

from bmcd.artifact import (  # noqa: E402
    KERAS_FILE,
    MODEL_JSON,
    ONNX_FILE,
    ONNX_INT8_FILE,
    file_sha256,
    new_model_json,
    parse_onnx_metadata,
    read_model_json,
    write_model_json,
)
from bmcd.errors import ExportValidationError, ModelFormatError  # noqa: E402
from bmcd.exporters import _common as common  # noqa: E402
from bmcd.exporters import onnx as ex  # noqa: E402
from bmcd.exporters import quantize as qz  # noqa: E402
from bmcd.preprocessing import PreprocessConfig, preprocess_batch  # noqa: E402
from bmcd.runtimes.onnx import make_session  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.train]

ARCHS = ["mobilenet_v2", "resnet50"]
RESNET_SIZE = 32  # the smallest input ResNet50 accepts: keeps its training and export fast
RESNET_EPOCHS = 4


def _train_resnet_dir(x: np.ndarray, y: np.ndarray, out: Path) -> Path:
    """A briefly trained ResNet50 model directory (bmcd.json + model.keras), no Classifier.

    Trains the whole network from scratch (20 steps), then re-estimates the BatchNorm
    statistics as exact averages over training batches: after so few steps the moving
    averages are still far from the data, and inference-mode outputs would be constant.
    """
    from bmcd.runtimes.keras import keras_module
    from bmcd.training import build_model

    keras = keras_module()
    keras.utils.set_random_seed(0)
    model = build_model("resnet50", RESNET_SIZE, weights=None)
    # jit_compile=False: XLA-compiling ResNet50's train step costs more than the training
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy",
                  jit_compile=False)
    model.fit(x, y.astype("float32"), epochs=RESNET_EPOCHS, batch_size=16, shuffle=True,
              verbose=0)
    bns = [layer for layer in model.get_layer("backbone").layers
           if isinstance(layer, keras.layers.BatchNormalization)]
    # all 8 flips/rotations of the training images: 640 images give steadier statistics
    # (measured int8 label agreement 0.985 vs 0.955 with 160 images)
    xa = np.concatenate([np.rot90(x, k, axes=(1, 2)) for k in range(4)]
                        + [np.rot90(x[:, ::-1], k, axes=(1, 2)) for k in range(4)])
    xa = np.ascontiguousarray(xa)
    order = np.random.default_rng(0).permutation(len(xa))
    for k, i in enumerate(range(0, len(xa), 32), 1):
        for layer in bns:
            layer.momentum = (k - 1) / k  # cumulative average of the batch statistics
        model(xa[order[i : i + 32]], training=True)
    clean = build_model("resnet50", RESNET_SIZE, weights=None)  # uncompiled: no optimizer
    clean.set_weights(model.get_weights())
    out.mkdir(parents=True, exist_ok=True)
    clean.save(out / KERAS_FILE)
    cfg = PreprocessConfig(image_size=RESNET_SIZE)
    write_model_json(out, new_model_json(arch="resnet50", preprocess=cfg))
    return out


@pytest.fixture(scope="module")
def train_arrays(synthetic_small):
    from bmcd.data import load_dataset

    ds = load_dataset(synthetic_small)
    return preprocess_batch(ds.absolute_paths(), PreprocessConfig(image_size=RESNET_SIZE)), ds.labels


@pytest.fixture(scope="module", params=ARCHS)
def exported(request, tmp_path_factory):
    """Export one trained architecture (fp32, default synthetic samples) and quantize it.

    The converter's output is kept, so other tests can damage or reuse it without paying
    for another tf2onnx conversion.
    """
    arch = request.param
    d = tmp_path_factory.mktemp(f"export_{arch}")
    converted = {}
    real_convert = ex._convert

    def recording(*args, **kwargs):
        converted["proto"] = real_convert(*args, **kwargs)
        return converted["proto"]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ex, "_convert", recording)
        if arch == "mobilenet_v2":
            clf = request.getfixturevalue("fitted_mobilenet")
            before = getattr(clf, "model_dir_", None)
            try:
                fp32 = ex.export_onnx(clf, out=d)  # saves the classifier into d first
            finally:
                clf.model_dir_ = before  # leave the shared fixture as it was
        else:
            _train_resnet_dir(*request.getfixturevalue("train_arrays"), d)
            fp32 = ex.export_onnx(d)
    proto = onnx.ModelProto()
    proto.CopyFrom(converted["proto"])
    # force=True so both architectures report their gate numbers; whether the gate passed
    # is asserted in test_int8_gate
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "failed the int8 gate", when it did
        int8 = ex.quantize_int8(d, n=100, force=True)
    keras_model = ex._load_keras(d)
    size = int(read_model_json(d)["image_size"])
    return {"arch": arch, "dir": d, "size": size, "fp32": fp32, "int8": int8,
            "keras": keras_model, "proto": proto}


def _tmp_files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith(".") or p.suffix == ".tmp")


# ---------------------------------------------------------------------------------------
# fp32
# ---------------------------------------------------------------------------------------


def test_fp32_parity_on_synthetic_cells(exported):
    rec = exported["fp32"]
    par = rec["parity"]
    print(f"\n{exported['arch']} fp32 parity ({exported['size']} px, synthetic): "
          f"max |dp| {par['max_abs_diff']:.3g}, mean {par['mean_abs_diff']:.3g}")
    assert par["passed"] and par["n"] == ex.DEFAULT_PARITY_SAMPLES
    assert par["max_abs_diff"] <= 1e-4 and par["label_disagreements"] == 0
    assert par["label_agreement"] == 1.0 and par["batch_sizes"] == [16, 32]
    assert rec["samples"].startswith("synthetic: 32 cells")
    # a trained model, not a constant one: the check compared real decisions
    assert par["p_keras_max"] - par["p_keras_min"] > 0.5
    stored = read_model_json(exported["dir"])["exports"]["onnx"]
    assert stored["parity"] == par


def test_bmcd_json_records_the_file_and_the_file_describes_itself(exported, tmp_path):
    from bmcd.runtimes.onnx import OnnxRuntimeBackend

    d = exported["dir"]
    stored = read_model_json(d)["exports"]["onnx"]
    path = d / ONNX_FILE
    assert stored["file"] == ONNX_FILE and stored["sha256"] == file_sha256(path)
    assert stored["bytes"] == path.stat().st_size
    assert (stored["opset"], stored["ir_version"]) == (ex.DEFAULT_OPSET, 8)
    assert not _tmp_files(d)
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    meta = parse_onnx_metadata(props, source=str(path))
    assert meta["arch"] == exported["arch"] and meta["image_size"] == exported["size"]
    assert props["classes"] == "hem,all" and props["bmcd_version"] == meta["bmcd_version"]
    assert [i.name for i in model.graph.input] == ["image"]
    # p_all first, then the class activation map (docs/explain.rst)
    assert [o.name for o in model.graph.output] == ["p_all", "cam"]
    assert stored["cam"]["available"] and stored["cam"]["parity"]["passed"]

    bare = tmp_path / "copy.onnx"  # no bmcd.json anywhere near it
    shutil.copy(path, bare)
    be = OnnxRuntimeBackend.load(bare)
    assert be.meta["arch"] == exported["arch"] and be.image_size == exported["size"]


def test_batch_axis_is_dynamic(exported, synthetic_small):
    from bmcd.runtimes.onnx import OnnxRuntimeBackend

    files = sorted(synthetic_small.rglob("*.bmp"))[::16][:5]
    x = preprocess_batch(files, PreprocessConfig(image_size=exported["size"]))
    be = OnnxRuntimeBackend.load(exported["dir"])
    p1 = np.concatenate([be.predict_batch(x[i : i + 1]) for i in range(len(x))])
    p5 = be.predict_batch(x)
    p_keras = np.asarray(exported["keras"](x, training=False)).reshape(-1)
    assert p5.shape == (5,)
    np.testing.assert_allclose(p1, p5, atol=1e-6)
    np.testing.assert_allclose(p5, p_keras, atol=1e-4)


def test_fp32_parity_on_real_cnmc_images(exported, cnmc_sample_files):
    x = preprocess_batch(cnmc_sample_files, PreprocessConfig(image_size=exported["size"]))
    rec = ex.validate_parity(exported["keras"], exported["dir"] / ONNX_FILE, x, batch_size=8)
    print(f"\n{exported['arch']} fp32 parity ({exported['size']} px, {rec['n']} real images): "
          f"max |dp| {rec['max_abs_diff']:.3g}, mean {rec['mean_abs_diff']:.3g}")
    assert rec["passed"] and rec["n"] == len(cnmc_sample_files)
    assert rec["max_abs_diff"] <= 1e-4 and rec["label_disagreements"] == 0
    # the outputs vary over the real cells, so parity compared decisions, not a constant
    assert rec["p_keras_max"] - rec["p_keras_min"] > 0.01


def test_damaged_export_fails_and_leaves_no_file(exported, tmp_path, monkeypatch):
    damaged = onnx.ModelProto()
    damaged.CopyFrom(exported["proto"])
    # the weight of the output Dense layer (the initializer feeding the last MatMul/Gemm)
    last = [n for n in damaged.graph.node if n.op_type in ("MatMul", "Gemm")][-1]
    inits = {t.name: t for t in damaged.graph.initializer}
    name = next(i for i in last.input if i in inits)
    w = numpy_helper.to_array(inits[name])
    inits[name].CopyFrom(numpy_helper.from_array((-w).astype(w.dtype), name))
    monkeypatch.setattr(ex, "_convert", lambda *a, **k: damaged)

    serve = tmp_path / "serve"  # export into a fresh serving directory
    with pytest.raises(ExportValidationError) as err:
        ex.export_onnx(exported["dir"], out=serve)
    d = err.value.details
    assert d["passed"] is False and d["max_abs_diff"] > 1e-2 and d["label_disagreements"] > 0
    assert d["n"] == ex.DEFAULT_PARITY_SAMPLES
    assert "max |p_keras - p_onnx|" in str(err.value) and "was not" in str(err.value)
    assert not (serve / ONNX_FILE).exists() and not _tmp_files(serve)
    assert "onnx" not in read_model_json(serve)["exports"]


def test_export_without_validation_is_recorded_as_such(exported, tmp_path, monkeypatch):
    proto = exported["proto"]
    monkeypatch.setattr(ex, "_convert", lambda *a, **k: proto)
    rec = ex.export_onnx(exported["dir"], out=tmp_path / "serve", validate=False)
    stored = read_model_json(tmp_path / "serve")["exports"]["onnx"]
    assert stored["validated"] is False and stored["parity"] is None and stored["samples"] is None
    assert stored["sha256"] == file_sha256(Path(rec["path"]))
    assert not (tmp_path / "serve" / KERAS_FILE).exists()  # a serving directory


def test_unsupported_opset_fails_before_converting(exported, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("converted although the opset is unsupported")

    monkeypatch.setattr(ex, "_convert", boom)
    with pytest.raises(ModelFormatError, match="opset must be an integer from 13 to 18"):
        ex.export_onnx(exported["dir"], opset=40)


# ---------------------------------------------------------------------------------------
# int8
# ---------------------------------------------------------------------------------------


def test_int8_gate(exported, tmp_path):
    rec = exported["int8"]
    g = rec["gate"]
    path = exported["dir"] / ONNX_INT8_FILE
    stored = read_model_json(exported["dir"])["exports"]["onnx_int8"]
    assert stored["sha256"] == file_sha256(path) and stored["gate"] == g
    assert stored["source_sha256"] == read_model_json(exported["dir"])["exports"]["onnx"]["sha256"]
    assert g["n"] == qz.DEFAULT_INT8_VALIDATION and g["labels_known"]
    # the gate's verdict is exactly the stated rule (issue 13: int8 may flip no more labels
    # than the upper 95% bound of the fp32 model's own flips under +-1 gray level of noise,
    # and |ROC-AUC change| <= 0.01), and forced == failed
    rule = (g["label_disagreements"] <= g["allowed_label_flips"]
            and abs(g["roc_auc_change"]) <= 0.01 and g["p_all_spread"]["std"] >= 0.01)
    assert g["passed"] == rule and rec["forced"] == (not rule)
    assert g["allowed_label_flips"] == int(np.floor(g["n"] * g["fp32_noise_flip_bound"] + 1e-9))
    print(f"\n{exported['arch']} int8 gate: {json.dumps(g, indent=1)}")
    # What these small, briefly trained networks attain (measured on this project's 2-core
    # machine, 200 held-out synthetic cells): ROC-AUC moves by < 0.01 (MobileNetV2 +0.002,
    # ResNet50 -0.003) and label agreement is 0.97-0.985, which the former fixed 0.99 rule
    # refused although their own fp32 labels move about as often under +-1 gray level of
    # input noise (fp32_noise_label_agreement 0.95-1.0; ResNet50 at 32 px ends in a 1x1
    # feature map, so pooling averages no rounding away). The gate logic itself is tested
    # exactly in the unit tests; here the numbers must stay within what was measured.
    assert abs(g["roc_auc_change"]) <= 0.01
    assert g["label_agreement"] >= 0.95
    assert g["label_agreement"] >= g["fp32_noise_label_agreement"] - 0.05
    if rec["forced"]:
        # without force, the same failing quantization raises and writes no file (issue
        # 12: the fixture's force=True alone never showed that the gate can refuse)
        import shutil

        from bmcd.errors import ExportValidationError

        copy = tmp_path / "unforced"
        copy.mkdir()
        for name in ("bmcd.json", ONNX_FILE):
            shutil.copy(exported["dir"] / name, copy / name)
        with pytest.raises(ExportValidationError, match="failed its gate") as err:
            ex.quantize_int8(copy, n=100)
        assert err.value.details["passed"] is False
        assert not (copy / ONNX_INT8_FILE).exists()
        assert "onnx_int8" not in read_model_json(copy)["exports"] or read_model_json(
            copy)["exports"]["onnx_int8"] == stored  # the old record, not a new one


def test_int8_parity_on_real_cnmc_images(exported, cnmc_sample_dir):
    from bmcd.data import load_dataset

    ds = load_dataset(cnmc_sample_dir)
    x = preprocess_batch(ds.absolute_paths(), PreprocessConfig(image_size=exported["size"]))
    s32 = make_session(exported["dir"] / ONNX_FILE)
    p32 = common._run_session(s32, x, 8)
    p8 = common._run_session(make_session(exported["dir"] / ONNX_INT8_FILE), x, 8)
    g = qz._gate(p32, p8, ds.labels, 0.5, 0.99, 0.01)  # fixed rule: only the numbers matter
    print(f"\n{exported['arch']} int8 vs fp32 on {len(x)} real images: {json.dumps(g)}")
    assert g["finite"] and g["n"] == len(ds) == 30
    assert float(np.ptp(p32)) > 0.01  # outputs vary: the comparison is not of a constant
    # The networks were trained on synthetic cells only, so real cells are off their
    # distribution and sit nearer the threshold: measured agreement 27-28 of 30. Allow 4
    # flips, and require the mean change in p to stay small.
    assert g["label_agreement"] >= 26 / 30
    assert g["mean_abs_diff"] < 0.1


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Kept .* although it failed the int8 gate")
def test_cli_export_round_trip(exported, synthetic_small, tmp_path, monkeypatch, capsys):
    """`bmcd export MODEL --int8 --samples DIR` (conversion reused from the fixture)."""
    from bmcd.cli import main

    if exported["arch"] != "mobilenet_v2":
        pytest.skip("one architecture is enough for the command line")
    d = tmp_path / "model"
    d.mkdir()
    for name in (KERAS_FILE, MODEL_JSON):
        shutil.copy(exported["dir"] / name, d / name)
    proto = exported["proto"]
    monkeypatch.setattr(ex, "_convert", lambda *a, **k: proto)
    rc = main(["export", str(d), "--int8", "--force", "--samples", str(synthetic_small)])
    out = capsys.readouterr().out
    assert rc == 0, out
    meta = read_model_json(d)
    par = meta["exports"]["onnx"]["parity"]
    gate = meta["exports"]["onnx_int8"]["gate"]
    assert par["n"] == 80 and par["passed"]
    assert f"max |p_keras - p_onnx| = {par['max_abs_diff']:.3g}" in out
    assert f"label agreement {gate['label_agreement']:.4f}" in out and "ROC-AUC" in out
    assert (d / ONNX_FILE).is_file() and (d / ONNX_INT8_FILE).is_file()
    assert meta["exports"]["onnx"]["samples"].startswith("dataset: 80 images")

    rc = main(["export", str(d), "--opset", "99"])
    assert rc == 1 and "opset must be an integer" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# from a Classifier
# ---------------------------------------------------------------------------------------


def test_export_from_a_classifier(exported, tmp_path, monkeypatch):
    """A Classifier is saved into ``out`` first, then exported (conversion reused)."""
    classifier = pytest.importorskip("bmcd.classifier")
    if exported["arch"] != "mobilenet_v2":
        pytest.skip("one architecture is enough here")
    proto = exported["proto"]
    monkeypatch.setattr(ex, "_convert", lambda *a, **k: proto)
    src = tmp_path / "loaded"
    src.mkdir()
    for name in (KERAS_FILE, MODEL_JSON):
        shutil.copy(exported["dir"] / name, src / name)
    clf = classifier.Classifier.load(src, backend="keras")
    rec = ex.export_onnx(clf, n_samples=8)  # into the directory it was loaded from
    assert Path(rec["path"]) == src / ONNX_FILE and rec["parity"]["passed"]

    out = tmp_path / "from_clf"  # a new directory: the classifier is saved there first
    rec = ex.export_onnx(clf, out=out, n_samples=8)
    assert (out / KERAS_FILE).is_file() and (out / ONNX_FILE).is_file()
    assert rec["parity"]["passed"] and rec["parity"]["n"] == 8
    assert read_model_json(out)["exports"]["onnx"]["sha256"] == file_sha256(out / ONNX_FILE)

    clf.model_dir_ = None
    with pytest.raises(ValueError, match="needs out="):
        ex.export_onnx(clf)

    onnx_clf = classifier.Classifier.load(out, backend="onnx")
    with pytest.raises(ModelFormatError, match="no Keras model to convert"):
        ex.export_onnx(onnx_clf, out=tmp_path / "x")
