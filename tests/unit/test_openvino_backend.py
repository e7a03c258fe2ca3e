"""The OpenVINO backend and the bf16 gate, on tiny real CNNs (no TensorFlow, seconds).

Models come from tests/_tiny_conv_model.py: a genuine 2-convolution network written with
the onnx helper, its output spread over the test cells, plus a deliberately fragile variant
(exact in fp32, destroyed by bf16 rounding) for the gate's failure path. The int8 file is
made by bmcd's own quantizer (ONNX Runtime, QDQ), as for real models.
"""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("onnx")

from _tiny_conv_model import build_tiny_conv_model  # noqa: E402
from bmcd.errors import (  # noqa: E402
    BmcdError,
    ConfigError,
    ExportValidationError,
    MissingDependencyError,
    ModelFormatError,
)
from bmcd.runtimes.onnx import OnnxRuntimeBackend  # noqa: E402
from bmcd.runtimes.openvino import OpenVINOBackend, cpu_supports_bf16  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
S = 32

# fp32 OpenVINO vs fp32 ONNX Runtime on the same graph: both are float32 arithmetic with
# different kernels and summation orders (measured max |dp| ~1e-6 on these cells); 1e-5
# leaves a margin for other CPUs while any real difference (a wrong layout, bf16 sneaking
# in: ~1e-2 here) is far above it.
FP32_ATOL = 1e-5
# int8: the same QDQ file run by two runtimes whose integer kernels requantize differently
# (measured max |dp| 0.025 between them, 0.006 to fp32); a broken graph gives ~0.5.
INT8_ATOL = 0.06

needs_bf16 = pytest.mark.skipif(
    not cpu_supports_bf16(), reason="this CPU has no native bf16 (OpenVINO lacks BF16)"
)


# ---------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    """120 SYNTHETIC cells (60 per class, 6 subjects) and their preprocessed 32 px input."""
    from bmcd.data import load_dataset
    from bmcd.preprocessing import PreprocessConfig, preprocess_batch
    from bmcd.synthetic import make_cells

    out = tmp_path_factory.mktemp("ov_cells")
    make_cells(out, n_per_class=60, n_subjects=6, image_size=128, seed=3, progress=False)
    ds = load_dataset(out)
    x = preprocess_batch(ds.absolute_paths(), PreprocessConfig(image_size=S))
    return ds, x


@pytest.fixture(scope="module")
def sound_dir(cells, tmp_path_factory):
    """A sound tiny CNN with model.onnx and model.int8.onnx (bmcd's quantizer)."""
    pytest.importorskip("sympy")
    from bmcd.exporters.onnx import quantize_int8

    ds, x = cells
    d = build_tiny_conv_model(tmp_path_factory.mktemp("ov_sound"), x)
    with warnings.catch_warnings():
        # a random tiny network may miss the int8 gate by a cell or two; the int8 file is
        # what is tested here (both runtimes read the same one)
        warnings.simplefilter("ignore")
        quantize_int8(d, calibration=x, validation=ds, force=True)
    return d


@pytest.fixture()
def sound_copy(sound_dir, tmp_path):
    """A private copy of the sound model (tests that write bmcd.json use it)."""
    return Path(shutil.copytree(sound_dir, tmp_path / "model"))


@pytest.fixture()
def fragile_dir(cells, tmp_path):
    """The same network with a feature offset that bf16 cannot hold (see _tiny_conv_model)."""
    return build_tiny_conv_model(tmp_path / "fragile", cells[1], feature_offset=2000.0)


# ---------------------------------------------------------------------------------------
# registry, fp32 parity, options
# ---------------------------------------------------------------------------------------


def test_registered_by_name():
    from bmcd.runtimes import available_backends, get_backend

    assert "openvino" in available_backends()
    assert get_backend("openvino") is OpenVINOBackend
    assert OpenVINOBackend.name == "openvino"


def test_fp32_matches_onnx_runtime(sound_dir, cells):
    x = cells[1]
    ort = OnnxRuntimeBackend.load(sound_dir)
    ov = OpenVINOBackend.load(sound_dir)
    # f32 forced: this CPU plugin defaults to bf16 where the CPU has it
    assert str(ov.compiled_property("INFERENCE_PRECISION_HINT")) in ("<Type: 'float32'>", "f32")
    assert all(set(p) == {"f32"} for p in ov.layer_precisions().values()), ov.layer_precisions()
    p_ort = ort.predict_batch(x)
    assert p_ort.std() > 0.1  # the comparison is not vacuous
    for batch in (1, 7, len(x)):  # the batch axis is dynamic
        p_ov = np.concatenate([ov.predict_batch(x[i : i + batch]) for i in range(0, len(x), batch)])
        assert p_ov.dtype == np.float32 and p_ov.shape == (len(x),)
        assert np.max(np.abs(p_ov - p_ort)) <= FP32_ATOL
        np.testing.assert_array_equal(p_ov >= 0.5, p_ort >= 0.5)


def test_bare_onnx_file_is_self_describing(sound_dir, cells):
    be = OpenVINOBackend.load(sound_dir / "model.onnx")
    dir_meta = json.loads((sound_dir / "bmcd.json").read_text())
    for key in ("arch", "image_size", "preprocess", "threshold", "classes"):
        assert be.meta[key] == dir_meta[key]
    assert be.image_size == S
    np.testing.assert_allclose(
        be.predict_batch(cells[1][:5]), OpenVINOBackend.load(sound_dir).predict_batch(cells[1][:5]),
        atol=1e-7,
    )


def test_threads_and_streams_are_applied(sound_dir, cells):
    x = cells[1]
    one = OpenVINOBackend.load(sound_dir, intra_op_threads=1)
    assert int(one.compiled_property("INFERENCE_NUM_THREADS")) == 1
    assert int(one.compiled_property("NUM_STREAMS")) == 1
    assert str(one.compiled_property("PERFORMANCE_HINT")).endswith("LATENCY")
    two = OpenVINOBackend.load(
        sound_dir, intra_op_threads=2, num_streams=2, performance_hint="THROUGHPUT"
    )
    assert int(two.compiled_property("NUM_STREAMS")) == 2
    assert str(two.compiled_property("PERFORMANCE_HINT")).endswith("THROUGHPUT")
    # a batch split over two streams comes back whole and in order
    np.testing.assert_allclose(two.predict_batch(x[:9]), one.predict_batch(x[:9]), atol=1e-6)
    np.testing.assert_allclose(two.predict_batch(x[:1]), one.predict_batch(x[:1]), atol=1e-6)


def test_bad_arguments_and_inputs(sound_dir, tmp_path):
    with pytest.raises(ConfigError, match="precision must be one of"):
        OpenVINOBackend.load(sound_dir, precision="fp16")
    with pytest.raises(ConfigError, match="performance_hint"):
        OpenVINOBackend.load(sound_dir, performance_hint="FAST")
    with pytest.raises(ConfigError, match="num_streams"):
        OpenVINOBackend.load(sound_dir, num_streams=0)
    # several streams gave wrong int8 results in OpenVINO 2026.4 (see the backend)
    with pytest.raises(ConfigError, match="refused for precision='int8'"):
        OpenVINOBackend.load(sound_dir, precision="int8", num_streams=2)
    be = OpenVINOBackend.load(sound_dir)
    with pytest.raises(ValueError, match=r"\(n, 32, 32, 3\)"):
        be.predict_batch(np.zeros((2, 64, 64, 3), np.float32))
    assert be.predict_batch(np.zeros((0, S, S, 3), np.float32)).shape == (0,)
    with pytest.raises(ModelFormatError, match="does not exist"):
        OpenVINOBackend.load(tmp_path / "nowhere")
    (tmp_path / "m").mkdir()
    shutil.copy(sound_dir / "bmcd.json", tmp_path / "m")
    shutil.copy(sound_dir / "model.onnx", tmp_path / "m")
    with pytest.raises(ModelFormatError, match=r"--int8"):
        OpenVINOBackend.load(tmp_path / "m", precision="int8")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(ModelFormatError, match="OpenVINO could not read"):
        OpenVINOBackend.load(bad)


def test_missing_openvino_gives_the_install_hint(sound_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'bmcd\[openvino\]'") as exc:
        OpenVINOBackend.load(sound_dir)
    assert isinstance(exc.value, ImportError) and isinstance(exc.value, BmcdError)


# ---------------------------------------------------------------------------------------
# int8
# ---------------------------------------------------------------------------------------


def test_int8_file_runs_in_int8_and_agrees(sound_dir, cells):
    x = cells[1]
    ov8 = OpenVINOBackend.load(sound_dir, precision="int8")
    assert ov8.model_path.name == "model.int8.onnx"
    convs = ov8.layer_precisions()["Convolution"]
    assert convs.get("u8", 0) + convs.get("i8", 0) >= 1, convs  # integer kernels really run
    p_ov8 = ov8.predict_batch(x)
    p_ort8 = OnnxRuntimeBackend.load(sound_dir, precision="int8").predict_batch(x)
    p32 = OnnxRuntimeBackend.load(sound_dir).predict_batch(x)
    assert np.max(np.abs(p_ov8 - p_ort8)) <= INT8_ATOL
    assert np.max(np.abs(p_ov8 - p32)) <= INT8_ATOL
    assert np.corrcoef(p_ov8, p32)[0, 1] >= 0.99
    assert np.mean((p_ov8 >= 0.5) == (p32 >= 0.5)) >= 0.95


# ---------------------------------------------------------------------------------------
# bf16 refusals and the gate
# ---------------------------------------------------------------------------------------


def test_bf16_refused_without_a_gate(sound_copy, monkeypatch):
    import bmcd.runtimes.openvino as ovmod

    # a CPU with native bf16, so that the missing gate, not the CPU, is what refuses (on a
    # CPU without it the CPU check comes first: the next test)
    monkeypatch.setattr(ovmod, "cpu_capabilities", lambda: ("FP32", "BF16", "INT8"))
    with pytest.raises(ModelFormatError) as exc:
        OpenVINOBackend.load(sound_copy, precision="bf16")
    msg = str(exc.value)
    assert "bmcd export" in msg and "--bf16" in msg and "force_bf16" in msg
    assert "records no bf16 gate" in msg


def test_bf16_refused_on_a_cpu_without_bf16(sound_copy, cells, monkeypatch):
    import bmcd.runtimes.openvino as ovmod
    from bmcd.exporters.bf16 import gate_bf16

    monkeypatch.setattr(ovmod, "cpu_capabilities", lambda: ("FP32", "INT8", "EXPORT_IMPORT"))
    before = (sound_copy / "bmcd.json").read_text()
    for force in (False, True):  # forcing skips the gate, never the CPU check
        with pytest.raises(ConfigError, match="native bf16"):
            OpenVINOBackend.load(sound_copy, precision="bf16", force_bf16=force)
    with pytest.raises(ConfigError, match="native bf16"):
        gate_bf16(sound_copy, samples=cells[0])
    assert (sound_copy / "bmcd.json").read_text() == before  # nothing recorded
    OpenVINOBackend.load(sound_copy, precision="fp32")  # the other precisions still work


@needs_bf16
def test_gate_passes_on_a_sound_model_and_unlocks_bf16(sound_copy, cells):
    from bmcd.exporters.bf16 import format_bf16_gate, gate_bf16

    ds, x = cells
    rec = gate_bf16(sound_copy, samples=ds)
    assert rec["passed"] is True and rec["forced"] is False
    assert rec["n"] == len(ds) and rec["label_agreement"] >= 0.99
    assert abs(rec["delta_auc"]) <= 0.01
    assert 0 < rec["max_abs_diff"] < 0.05  # bf16 really ran (not f32), and changed little
    assert rec["p_all_spread"]["std"] > 0.1
    assert "BF16" in rec["cpu"]["capabilities"]
    stored = json.loads((sound_copy / "bmcd.json").read_text())["exports"]["openvino_bf16"]
    assert stored["source_sha256"] == rec["source_sha256"] and stored["passed"] is True
    assert "passed" in format_bf16_gate(rec)

    be = OpenVINOBackend.load(sound_copy, precision="bf16")
    assert be.bf16_gate["passed"] is True
    assert "bf16" in be.layer_precisions()["Convolution"]
    p16 = be.predict_batch(x)
    p32 = OnnxRuntimeBackend.load(sound_copy).predict_batch(x)
    assert 0 < np.max(np.abs(p16 - p32)) < 0.05


@needs_bf16
def test_gate_is_tied_to_the_model_file(sound_copy, cells):
    from bmcd.exporters.bf16 import gate_bf16

    gate_bf16(sound_copy, samples=cells[0])
    OpenVINOBackend.load(sound_copy, precision="bf16")
    # a new model.onnx (another network) in the same directory: the record no longer counts
    meta = (sound_copy / "bmcd.json").read_text()
    build_tiny_conv_model(sound_copy / "other", cells[1], seed=5)
    shutil.copy(sound_copy / "other" / "model.onnx", sound_copy / "model.onnx")
    (sound_copy / "bmcd.json").write_text(meta)
    with pytest.raises(ModelFormatError, match="different model.onnx"):
        OpenVINOBackend.load(sound_copy, precision="bf16")


@needs_bf16
def test_gate_fails_on_a_fragile_model(fragile_dir, cells):
    from bmcd.exporters.bf16 import gate_bf16

    ds, x = cells
    # fp32 is fine: ONNX Runtime and OpenVINO f32 agree on every label
    p32 = OnnxRuntimeBackend.load(fragile_dir).predict_batch(x)
    np.testing.assert_array_equal(OpenVINOBackend.load(fragile_dir).predict_batch(x) >= 0.5,
                                  p32 >= 0.5)
    with pytest.raises(ExportValidationError, match="labels flipped.*The rule: bf16 may flip") as exc:
        gate_bf16(fragile_dir, samples=ds)
    d = exc.value.details
    assert d["label_agreement"] < 0.99 and d["label_disagreements"] > d["allowed_label_flips"]
    assert "roc_auc_change" in exc.value.details
    stored = json.loads((fragile_dir / "bmcd.json").read_text())["exports"]["openvino_bf16"]
    assert stored["passed"] is False and stored["forced"] is False
    with pytest.raises(ModelFormatError, match="bf16 gate failed"):
        OpenVINOBackend.load(fragile_dir, precision="bf16")
    # forced: recorded as such; the backend then runs bf16 with a warning
    with pytest.warns(UserWarning, match="allowed anyway"):
        rec = gate_bf16(fragile_dir, samples=ds, force=True)
    assert rec["passed"] is False and rec["forced"] is True
    with pytest.warns(UserWarning, match="although its bf16 gate failed"):
        OpenVINOBackend.load(fragile_dir, precision="bf16")


@needs_bf16
def test_gate_refuses_a_model_with_one_output_for_everything(cells, tmp_path):
    from bmcd.exporters.bf16 import gate_bf16

    d = build_tiny_conv_model(tmp_path / "flat", cells[1], logit_spread=1e-4)
    with pytest.raises(ExportValidationError, match="nearly one value"):
        gate_bf16(d, samples=cells[0])


@needs_bf16
def test_force_bf16_runs_without_a_gate_with_a_warning(sound_copy, cells):
    with pytest.warns(UserWarning, match="without a passed gate"):
        be = OpenVINOBackend.load(sound_copy, precision="bf16", force_bf16=True)
    assert be.bf16_gate is None
    assert be.predict_batch(cells[1][:4]).shape == (4,)


# ---------------------------------------------------------------------------------------
# pickling, Classifier, no TensorFlow
# ---------------------------------------------------------------------------------------


def test_pickle_round_trip_rebuilds_the_compiled_model(sound_dir, cells):
    x = cells[1][:10]
    be = OpenVINOBackend.load(sound_dir, precision="fp32", intra_op_threads=1, num_streams=2,
                              performance_hint="THROUGHPUT")
    p = be.predict_batch(x)
    n0 = OpenVINOBackend.sessions_created
    data = pickle.dumps(be)
    assert len(data) < 20_000  # the path and options, not the model
    be2 = pickle.loads(data)
    assert OpenVINOBackend.sessions_created == n0 + 1
    assert (be2.precision, be2.intra_op_threads, be2.num_streams, be2.performance_hint) == (
        "fp32", 1, 2, "THROUGHPUT")
    assert be2.meta == be.meta
    np.testing.assert_array_equal(be2.predict_batch(x), p)


def test_classifier_load_with_the_openvino_backend(sound_dir, cells):
    from bmcd import Classifier

    ds, _ = cells
    paths = ds.absolute_paths()[:12]
    ov = Classifier.load(sound_dir, backend="openvino")
    ort = Classifier.load(sound_dir, backend="onnx")
    assert isinstance(ov.backend_, OpenVINOBackend)
    np.testing.assert_allclose(ov.predict_proba(paths), ort.predict_proba(paths), atol=FP32_ATOL)
    np.testing.assert_array_equal(ov.predict(paths), ort.predict(paths))
    rep_ov, rep_ort = ov.evaluate(ds), ort.evaluate(ds)
    assert rep_ov.roc_auc == pytest.approx(rep_ort.roc_auc, abs=1e-6)
    assert rep_ov.accuracy == rep_ort.accuracy
    ov8 = Classifier.load(sound_dir, backend="openvino", precision="int8")
    assert ov8.backend_.precision == "int8" and ov8.predict(paths).shape == (12,)


def test_runs_with_tensorflow_unimportable(sound_dir, cells):
    import os

    x = cells[1][:6]
    paths = [str(p) for p in cells[0].absolute_paths()[:6]]
    np.save(sound_dir.parent / "x.npy", x)
    expected = OpenVINOBackend.load(sound_dir).predict_batch(x)
    from bmcd import Classifier

    expected_paths = Classifier.load(sound_dir, backend="onnx").predict_proba(paths)[:, 1]
    code = textwrap.dedent(
        f"""
        import sys
        for name in ("tensorflow", "keras", "tf2onnx"):
            sys.modules[name] = None  # any import of them raises ImportError
        import numpy as np
        from bmcd import Classifier
        from bmcd.runtimes import get_backend
        x = np.load({str(sound_dir.parent / "x.npy")!r})
        be = get_backend("openvino").load({str(sound_dir)!r})
        p = be.predict_batch(x)
        p8 = get_backend("openvino").load({str(sound_dir)!r}, precision="int8").predict_batch(x)
        assert p8.shape == p.shape
        clf = Classifier.load({str(sound_dir)!r}, backend="openvino")
        q = clf.predict_proba({paths!r})[:, 1]
        assert sys.modules["tensorflow"] is None
        print(" ".join(repr(float(v)) for v in p))
        print(" ".join(repr(float(v)) for v in q))
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.strip().splitlines()
    got = np.array([float(v) for v in lines[-2].split()], np.float32)
    got_paths = np.array([float(v) for v in lines[-1].split()])
    np.testing.assert_allclose(got, expected, atol=1e-7)
    np.testing.assert_allclose(got_paths, expected_paths, atol=FP32_ATOL)
