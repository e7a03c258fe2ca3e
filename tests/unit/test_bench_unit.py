"""bmcd.bench and `bmcd bench` at a tiny size (32 px), so the command runs in CI.

The real benchmarks (224 px, random-weight ResNet50 / MobileNetV2) live in benchmarks/ and
are not part of the test run. Here a tiny ONNX model (mean -> affine -> sigmoid) stands in,
with an equivalent tiny Keras model for the Keras rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from _tiny_models import build_tiny_onnx_model, tiny_model_expected, write_cell_images
from bmcd import bench
from bmcd.bench import (
    BenchError,
    Timing,
    check_int8_sanity,
    check_parity,
    check_targets,
    cpu_flags,
    dihedral,
    evaluate_targets,
    find_image_files,
    format_report,
    kernel_report,
    load_targets,
    make_input_batches,
    time_calls,
)
from bmcd.cli import main
from bmcd.errors import ConfigError

S = 32
ROOT = Path(__file__).resolve().parents[2]

#: Goals of the kind benchmarks/targets.py holds (the library ships none).
TARGETS = (
    {"key": "ratio_fp32_keras:{arch}", "what": "ORT fp32 / keras predict @B ({arch})",
     "op": ">=", "value": 2.0},
    {"key": "ratio_int8_fp32:resnet50", "what": "ORT int8 / ORT fp32 @B (resnet50)",
     "op": ">=", "value": 2.5},
    {"key": "ratio_int8_fp32:mobilenet_v2", "what": "ORT int8 / ORT fp32 @B (mobilenet_v2)",
     "op": ">=", "value": 2.2},
    {"key": "ms_fp32_b1:mobilenet_v2", "what": "ORT fp32 mobilenet_v2 @1, ms/image",
     "op": "<=", "value": 10.0},
    {"key": "ratio_e2e_model:mobilenet_v2:int8",
     "what": "score / model-only ORT, mobilenet_v2 int8", "op": ">=", "value": 0.85},
)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    pytest.importorskip("onnx")
    return build_tiny_onnx_model(tmp_path_factory.mktemp("tiny"), image_size=S)


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cells")
    write_cell_images(d, 6, size=96)
    return d


# ---------------------------------------------------------------------------------------
# small pure pieces
# ---------------------------------------------------------------------------------------


def test_timing_statistics():
    t = Timing("x", batch_size=8, times=[0.5, 0.1, 0.2, 0.3, 9.0])
    assert t.rounds == 5
    assert t.median == pytest.approx(0.3)
    assert t.minimum == pytest.approx(0.1)
    assert t.images_per_second == pytest.approx(8 / 0.3)
    assert t.ms_per_image == pytest.approx(300 / 8)
    assert Timing("empty", 1).images_per_second != Timing("empty", 1).images_per_second  # nan


def test_time_calls_rotates_inputs_and_keeps_outputs():
    seen = []
    inputs = [np.full(2, i, np.float32) for i in range(3)]

    def fn(x):
        seen.append(float(x[0]))
        return x * 2

    timing, outputs = time_calls(fn, inputs, batch_size=2, seconds=0.0, min_rounds=5, warmup=2)
    assert seen == [0, 1, 0, 1, 2, 0, 1]  # 2 warm-up calls, then 5 timed in rotation
    assert timing.rounds == 5
    assert sorted(outputs) == [0, 1, 2]
    np.testing.assert_array_equal(outputs[2], [4, 4])
    with pytest.raises(ValueError, match="at least one input"):
        time_calls(fn, [], batch_size=1)


def test_time_interleaved_runs_one_call_of_each_per_round():
    calls = []
    inputs = [np.full(1, i, np.float32) for i in range(2)]
    fns = {
        "a": lambda x: calls.append(("a", float(x[0]))) or x,
        "b": lambda x: calls.append(("b", float(x[0]))) or -x,
    }
    res = bench.time_interleaved(fns, inputs, batch_size=1, seconds=0.0, min_rounds=3, warmup=1)
    assert calls == [("a", 0), ("b", 0), ("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 0), ("b", 0)]
    assert res["a"][0].rounds == res["b"][0].rounds == 3
    np.testing.assert_array_equal(res["b"][1][1], [-1])
    assert res["a"][0].cpu_ms_per_image is None or res["a"][0].cpu_ms_per_image >= 0


def test_cpu_flags_and_kernel_report():
    info = "processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu sse4_2 avx2 fma avx512f avx512bw avx512_vnni amx_tile amx_int8\n"
    flags = cpu_flags(info)
    assert {"avx2", "avx512_vnni", "amx_int8"} <= flags
    k = kernel_report(flags)
    assert k["fp32"] == "AVX-512F"
    assert k["int8"].startswith("AVX-512 VNNI") and "AMX" in k["int8"]
    assert kernel_report({"avx2", "fma"}) == {
        "fp32": "AVX2+FMA",
        "int8": "AVX2 (no VNNI: multiply-add emulated)",
    }
    assert kernel_report({"avx2", "fma", "avx_vnni"})["int8"] == "AVX-VNNI"
    assert cpu_flags("no flags here") == set()


def test_machine_info_names_cpu_cores_and_ort():
    m = bench.machine_info()
    assert m["usable_cores"] >= 1 and m["cpu_model"]
    assert m["onnxruntime"]
    assert set(m["ort_kernels"]) == {"fp32", "int8"}
    json.dumps(m)


def test_dihedral_gives_eight_distinct_views():
    img = np.arange(4 * 4 * 3, dtype=np.float32).reshape(4, 4, 3)
    views = [dihedral(img, k) for k in range(8)]
    assert len({v.tobytes() for v in views}) == 8
    np.testing.assert_array_equal(views[0], img)
    # k quarter turns counter-clockwise, then a left-right mirror for k >= 4 (the order
    # make_input_batches and write_bench_files have always used)
    rect = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3)
    for k in range(8):
        want = np.rot90(rect, k % 4, axes=(0, 1))
        want = want[:, ::-1] if k >= 4 else want
        got = dihedral(rect, k)
        np.testing.assert_array_equal(got, want)
        assert got.flags.c_contiguous


def test_find_image_files_walks_nested_folders_and_skips_hidden(tmp_path):
    for rel in ("b.bmp", "a/x.png", "a/.hidden.bmp", ".cache/y.bmp", "notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    assert find_image_files(tmp_path) == [tmp_path / "a" / "x.png", tmp_path / "b.bmp"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchError, match="No image files"):
        find_image_files(tmp_path / "empty")
    with pytest.raises(BenchError, match="does not exist"):
        find_image_files(tmp_path / "missing")


def test_make_input_batches_are_distinct():
    images = np.random.default_rng(0).random((3, 8, 8, 3)).astype(np.float32)
    batches = make_input_batches(images, batch_size=4, n_batches=5)
    assert len(batches) == 5 and all(b.shape == (4, 8, 8, 3) for b in batches)
    # 3 images x 8 views = 24 distinct inputs, dealt out without repetition: 20 used
    rows = {b[i].tobytes() for b in batches for i in range(4)}
    assert len(rows) == 20
    with pytest.raises(ValueError):
        make_input_batches(np.empty((0, 8, 8, 3)), 2, 1)


def test_parity_checks_catch_wrong_answers():
    ref = np.array([0.1, 0.5, 0.9])
    assert check_parity("ok", ref + 1e-6, ref, 1e-4) == pytest.approx(1e-6)
    with pytest.raises(BenchError, match="max \\|dp\\|"):
        check_parity("wrong", ref[::-1], ref, 1e-4)
    with pytest.raises(BenchError, match="probabilities"):
        check_parity("nan", np.array([np.nan, 0.5, 0.5]), ref, 1.0)
    with pytest.raises(BenchError, match="outputs"):
        check_parity("short", ref[:2], ref, 1.0)
    refs = [np.linspace(0.1, 0.9, 8), np.linspace(0.9, 0.1, 8)]
    assert check_int8_sanity("int8", [r + 0.01 for r in refs], refs) == pytest.approx(0.01)
    near = [np.linspace(0.4, 0.6, 8), np.linspace(0.6, 0.4, 8)]
    with pytest.raises(BenchError, match="correlate"):  # close, but constant
        check_int8_sanity("const", [np.full(8, 0.5), np.full(8, 0.5)], near)


def test_bench_inference_fails_a_fast_wrong_backend():
    images = np.random.default_rng(1).random((4, 8, 8, 3)).astype(np.float32) * 255

    def right(x):
        return tiny_model_expected(x).astype(np.float32)

    def wrong(x):
        return np.full(len(x), 0.5, np.float32)

    rows = bench.bench_inference(
        {"keras_predict": right, "ort_fp32": right}, images, batch_sizes=(2,), seconds=0.0
    )
    assert [r["backend"] for r in rows] == ["keras_predict", "ort_fp32"]
    assert rows[1]["ratio_to_reference"] > 0 and rows[1]["parity_max_abs_diff"] == 0
    with pytest.raises(BenchError, match="ort_fp32 disagrees"):
        bench.bench_inference(
            {"keras_predict": right, "ort_fp32": wrong}, images, batch_sizes=(2,), seconds=0.0
        )


def test_evaluate_targets_and_format_report():
    def row(arch, backend, bs, ips):
        return {
            "arch": arch, "backend": backend, "batch_size": bs, "images_per_second": ips,
            "ms_per_image": 1000 / ips, "ratio_to_reference": None,
            "parity_max_abs_diff": 0.0, "parity_against": "keras_predict",
        }  # fmt: skip

    report = {
        "bmcd_version": "0",
        "settings": {"image_size": 224, "batch_size": 32, "seconds": 1.0, "n_files": 10,
                     "images": "x"},
        "inference": [
            row("resnet50", "keras_predict", 32, 10.0),
            row("resnet50", "ort_fp32", 32, 25.0),
            row("resnet50", "ort_int8", 32, 50.0),
            row("mobilenet_v2", "ort_fp32", 1, 125.0),
        ],
        "end_to_end": [
            {"arch": "mobilenet_v2", "precision": "int8", "engine": "local",
             "images_per_second": 90.0, "seconds": 1.0, "ratio_to_model_only": 0.9},
        ],
    }  # fmt: skip
    got = {t["what"]: (t["measured"], t["met"]) for t in evaluate_targets(report, TARGETS)}
    assert got["ORT fp32 / keras predict @32 (resnet50)"] == (2.5, True)
    assert got["ORT int8 / ORT fp32 @32 (resnet50)"] == (2.0, False)
    assert got["ORT fp32 mobilenet_v2 @1, ms/image"] == (8.0, True)
    assert got["score / model-only ORT, mobilenet_v2 int8"] == (0.9, True)
    assert len(got) == 4  # nothing invented for what was not measured
    assert evaluate_targets(report, []) == []  # no goals given, none checked
    report["targets"] = evaluate_targets(report, TARGETS)
    text = format_report(report)
    assert "ORT int8" in text and "MISSED" in text and "end to end" in text

    # the OpenVINO quantities: bf16 / ORT fp32, best int8 / ORT int8, e2e per backend
    report["inference"] += [
        row("resnet50", "ov_bf16", 32, 50.0),
        row("resnet50", "ov_int8", 32, 40.0),  # slower than ORT int8: the best is ORT's
        row("mobilenet_v2", "ort_int8", 32, 200.0),
        row("mobilenet_v2", "ov_int8", 32, 260.0),
    ]
    report["end_to_end"].append(
        {"arch": "mobilenet_v2", "precision": "int8", "engine": "local", "bench_backend": "ov_int8",
         "label": "OpenVINO int8", "images_per_second": 200.0, "seconds": 1.0,
         "ratio_to_model_only": 0.8}
    )  # fmt: skip
    ov_goals = [
        {"key": "ratio_ov_bf16_fp32:{arch}", "what": "bf16 ({arch})", "op": ">=", "value": 1.8},
        {"key": "ratio_best_int8:{arch}", "what": "int8 ({arch})", "op": ">=", "value": 1.2},
        {"key": "ratio_e2e_model:{arch}:ov_int8", "what": "e2e ({arch})", "op": ">=", "value": 0.9},
        {"key": "ratio_e2e_model:{arch}:int8", "what": "e2e ort ({arch})", "op": ">=", "value": 0.9},
    ]  # fmt: skip
    got = {t["what"]: (t["measured"], t["met"]) for t in evaluate_targets(report, ov_goals)}
    assert got == {
        "bf16 (resnet50)": (2.0, True),
        "int8 (resnet50)": (1.0, False),
        "int8 (mobilenet_v2)": (1.3, True),
        "e2e (mobilenet_v2)": (0.8, False),
        "e2e ort (mobilenet_v2)": (0.9, True),  # the ORT row keeps its own key
    }
    assert "OpenVINO int8" in format_report(report)


def test_targets_are_checked_and_loaded_from_files(tmp_path):
    # the reference machine's goals live with the benchmarks, not in the library
    assert not hasattr(bench, "TARGETS")
    shipped = load_targets(ROOT / "benchmarks" / "targets.py")
    assert len(shipped) == 7 and {t["op"] for t in shipped} == {">=", "<="}
    as_json = tmp_path / "targets.json"
    as_json.write_text(json.dumps({"targets": list(TARGETS)}))
    assert load_targets(as_json) == [dict(t) for t in TARGETS]
    good = dict(TARGETS[0])
    for bad, message in (
        ({**good, "op": ">"}, "op one of"),
        ({**good, "key": "ratio_fp32_keras"}, "key of the form"),
        ({**good, "key": "speed:{arch}"}, "key of the form"),
        ({**good, "value": "2"}, "value as a number"),
        ({"key": good["key"]}, "keys key, what, op and value"),
    ):
        with pytest.raises(ConfigError, match=message):
            check_targets([bad])
    with pytest.raises(ConfigError, match="list of"):
        check_targets(good)  # one dict, not a list of them
    with pytest.raises(ConfigError, match="No targets file"):
        load_targets(tmp_path / "missing.json")
    (tmp_path / "empty.py").write_text("GOALS = []\n")
    with pytest.raises(ConfigError, match="defines no TARGETS"):
        load_targets(tmp_path / "empty.py")


# ---------------------------------------------------------------------------------------
# the whole command, tiny
# ---------------------------------------------------------------------------------------


def test_run_bench_with_an_onnx_only_model(tiny_dir, cells, tmp_path):
    report = bench.run_bench(
        model=tiny_dir,
        seconds=0.05,
        batch_size=4,
        n_files=60,
        dask=False,
        images=cells,
        cache_dir=tmp_path / "cache",
        matmul_size=256,
        targets=[
            {"key": "ms_fp32_b1:{arch}", "what": "ms @1 ({arch})", "op": "<=", "value": 1e9},
            {"key": "ms_fp32_b1:{arch}", "what": "impossible ({arch})", "op": "<=", "value": 0},
            {"key": "ratio_int8_fp32:{arch}", "what": "not measured", "op": ">=", "value": 1},
        ],
    )
    assert report["machine"]["matmul_gflops"] > 0
    # only what was measured is checked: ORT fp32 at batch 1, not int8 (no int8 model)
    assert [(t["what"], t["met"]) for t in report["targets"]] == [
        ("ms @1 (tiny-mean)", True), ("impossible (tiny-mean)", False)
    ]
    inf = report["inference"]
    # no model.keras / model.int8.onnx: only the fp32 rows (ORT, and OpenVINO where it is
    # installed; bf16 is skipped without a passed gate), at batch 4 and 1
    import importlib.util

    fp32 = ["ort_fp32"] + (["ov_f32"] if importlib.util.find_spec("openvino") else [])
    assert [(r["backend"], r["batch_size"]) for r in inf] == [(b, n) for n in (4, 1) for b in fp32]
    assert all(r["images_per_second"] > 0 and r["rounds"] >= 3 for r in inf)
    (e2e,) = report["end_to_end"]
    assert e2e["engine"] == "local" and e2e["precision"] == "fp32" and e2e["n_files"] == 60
    assert e2e["parity_max_abs_diff"] <= bench.SCORE_PARITY_TOLERANCE
    assert e2e["ratio_to_model_only"] > 0
    files = sorted((tmp_path / "cache" / "files-60").glob("*.bmp"))
    assert len(files) == 60 and sum(f.is_symlink() for f in files) == 60 - 8 * 6
    json.dumps(report)


@pytest.mark.train
@pytest.mark.slow  # imports TensorFlow (shared with the other Keras tests in a session)
def test_bench_command_with_keras_rows(tiny_dir, cells, tmp_path, capsys):
    """Keras predict and tf.function rows against an equivalent tiny Keras model."""
    pytest.importorskip("tensorflow")
    import shutil

    from bmcd.runtimes.keras import keras_module

    keras = keras_module()
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_dir, model_dir)
    # sigmoid(0.08 * mean(x) - 8), the tiny ONNX model, as a Keras graph
    inp = keras.Input((S, S, 3), name="image")
    pooled = keras.layers.GlobalAveragePooling2D()(inp)
    out = keras.layers.Dense(1, activation="sigmoid", name="p_all")(pooled)
    model = keras.Model(inp, out)
    model.get_layer("p_all").set_weights(
        [np.full((3, 1), 0.08 / 3, np.float32), np.array([-8.0], np.float32)]
    )
    model.save(model_dir / "model.keras")

    out_json = tmp_path / "bench.json"
    status = main(
        [
            "bench", "--model", str(model_dir), "--seconds", "0.05", "--batch-size", "4",
            "--n-files", "12", "--no-dask", "--images", str(cells),
            "--cache-dir", str(tmp_path / "cache"), "--json", str(out_json),
        ]
    )  # fmt: skip
    assert status == 0
    text = capsys.readouterr().out
    for label in ("keras predict", "tf.function", "ORT fp32", "machine:", "instruction sets"):
        assert label in text
    report = json.loads(out_json.read_text())
    backends = [(r["backend"], r["batch_size"]) for r in report["inference"]]
    import importlib.util

    # OpenVINO f32 beside them where the extra is installed (bf16: no gate, skipped)
    ov = ["ov_f32"] if importlib.util.find_spec("openvino") else []
    names = ["keras_predict", "tf_function", "ort_fp32", *ov]
    assert backends == [(b, n) for n in (4, 1) for b in names]
    for r in report["inference"]:
        assert r["parity_max_abs_diff"] <= bench.PARITY_TOLERANCE[r["backend"]]
    assert report["targets"] == []  # bmcd ships no speed goals; none were given


def test_bench_command_rejects_bad_arguments(capsys):
    assert main(["bench", "--seconds", "0"]) == 1
    assert "--seconds must be positive" in capsys.readouterr().err
    assert main(["bench", "--batch-size", "0"]) == 1
    with pytest.raises(SystemExit):
        main(["bench", "--arch", "vgg16"])


def test_check_score_output_checks_labels_and_thresholds(tiny_onnx_model_dir, tmp_path):
    """A CSV with one inverted label or one wrong threshold is caught (issue 12)."""
    from _tiny_models import tiny_model_expected, write_cell_images
    from bmcd.bench import check_score_output
    from bmcd.errors import BenchError
    from bmcd.scoring import score

    files = write_cell_images(tmp_path / "cells", 8, size=64, seed=3)
    out = tmp_path / "s.csv"
    score(tiny_onnx_model_dir, files, out, progress=False)
    assert check_score_output(out, tiny_onnx_model_dir, files, predictor=tiny_model_expected) < 1e-5
    lines = out.read_text().splitlines(keepends=True)
    flipped = lines[3].replace(",hem,", ",ALL,").replace(",all,", ",hem,").replace(",ALL,", ",all,")
    assert flipped != lines[3]
    bad = tmp_path / "bad_label.csv"
    bad.write_text("".join(lines[:3] + [flipped] + lines[4:]))
    with pytest.raises(BenchError, match="wrong labels"):
        check_score_output(bad, tiny_onnx_model_dir, files, predictor=tiny_model_expected)
    bad = tmp_path / "bad_threshold.csv"
    bad.write_text("".join(lines[:3] + [lines[3].replace(",0.5,", ",0.6,")] + lines[4:]))
    with pytest.raises(BenchError, match="thresholds"):
        check_score_output(bad, tiny_onnx_model_dir, files, predictor=tiny_model_expected)


def test_run_bench_openvino_rows_side_by_side(tiny_dir, cells, tmp_path):
    """OpenVINO rows beside ORT in one run: model only and end to end, parity checked."""
    pytest.importorskip("openvino")
    report = bench.run_bench(
        model=tiny_dir,
        seconds=0.05,
        batch_size=4,
        n_files=20,
        dask=False,
        images=cells,
        cache_dir=tmp_path / "cache",
        matmul_size=256,
        backends=("ort_fp32", "ov_f32", "ov_bf16"),
        e2e_runtimes=("onnx", "openvino"),
        targets=[{"key": "ratio_e2e_model:{arch}:ov_f32", "what": "ov e2e", "op": ">=", "value": 0}],
    )
    rows = {(r["backend"], r["batch_size"]): r for r in report["inference"]}
    assert ("ov_bf16", 4) not in rows  # no passed bf16 gate in the tiny model's bmcd.json
    ov = rows[("ov_f32", 4)]
    assert ov["label"] == "OpenVINO f32" and ov["parity_max_abs_diff"] <= 1e-4
    e2e = {r["bench_backend"]: r for r in report["end_to_end"]}
    assert sorted(e2e) == ["ort_fp32", "ov_f32"]
    assert e2e["ov_f32"]["backend"] == "openvino"
    assert e2e["ov_f32"]["parity_max_abs_diff"] <= bench.SCORE_PARITY_TOLERANCE
    assert [t["met"] for t in report["targets"]] == [True]
    assert "OpenVINO f32" in bench.format_report(report)


def test_backend_available_says_why(tiny_dir):
    ok, why = bench.backend_available(tiny_dir, "ort_int8")
    assert not ok and "model.int8.onnx" in why
    with pytest.raises(ConfigError, match="Unknown benchmark backend"):
        bench.backend_available(tiny_dir, "ov_f16")
