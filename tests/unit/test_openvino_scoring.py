"""The OpenVINO backend behind score (local and Dask), the CLI flags and the export gate.

The model is the tiny convolutional ONNX model of ``tests/_tiny_conv_model.py`` (no
TensorFlow), with bmcd's int8 file beside it; the images are synthetic cells.
"""

from __future__ import annotations

import csv
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("onnx")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _tiny_conv_model import build_tiny_conv_model  # noqa: E402
from bmcd.cli import main  # noqa: E402
from bmcd.errors import ConfigError, ConfigTypeError, ModelFormatError  # noqa: E402
from bmcd.preprocessing import PreprocessConfig, preprocess_batch  # noqa: E402
from bmcd.runtimes.onnx import OnnxRuntimeBackend  # noqa: E402
from bmcd.runtimes.openvino import OpenVINOBackend, cpu_supports_bf16  # noqa: E402
from bmcd.scoring import score  # noqa: E402
from bmcd.scoring.dask import score_partition, worker_backend, worker_spec_options  # noqa: E402

S = 32
#: CSV p_all vs the same backend on preprocess_batch: only batch composition differs.
SAME_BACKEND_ATOL = 1e-5
needs_bf16 = pytest.mark.skipif(
    not cpu_supports_bf16(), reason="this CPU has no native bf16 (OpenVINO lacks BF16)"
)


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    from bmcd.data import load_dataset
    from bmcd.synthetic import make_cells

    out = tmp_path_factory.mktemp("ovs_cells")
    make_cells(out, n_per_class=24, n_subjects=4, image_size=96, seed=11, progress=False)
    ds = load_dataset(out)
    paths = [str(p) for p in ds.absolute_paths()]
    return ds, paths, preprocess_batch(paths, PreprocessConfig(image_size=S))


@pytest.fixture(scope="module")
def model_dir(cells, tmp_path_factory):
    pytest.importorskip("sympy")
    from bmcd.exporters.onnx import quantize_int8

    ds, _, x = cells
    d = build_tiny_conv_model(tmp_path_factory.mktemp("ovs_model"), x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a random tiny network may miss the int8 gate
        quantize_int8(d, calibration=x, validation=ds, force=True)
    return d


def _read(out: Path) -> tuple[list[str], np.ndarray]:
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert all(not r["error"] for r in rows)
    return [r["path"] for r in rows], np.array([float(r["p_all"]) for r in rows])


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_score_local_with_openvino(model_dir, cells, tmp_path, precision):
    _, paths, x = cells
    summary = score(
        model_dir, paths, tmp_path / "s.csv", batch_size=7, precision=precision,
        backend="openvino", progress=False,
    )
    assert summary.n_scored == len(paths) and summary.exit_status == 0
    got_paths, p = _read(tmp_path / "s.csv")
    assert got_paths == paths
    expected = OpenVINOBackend.load(model_dir, precision=precision).predict_batch(x)
    np.testing.assert_allclose(p, expected, atol=SAME_BACKEND_ATOL)
    if precision == "fp32":  # and the same numbers as ONNX Runtime on the same file
        ort = OnnxRuntimeBackend.load(model_dir).predict_batch(x)
        np.testing.assert_allclose(p, ort, atol=1e-5)


def test_score_accepts_loaded_backends_and_classifiers(model_dir, cells, tmp_path):
    from bmcd import Classifier

    _, paths, x = cells
    be = OpenVINOBackend.load(model_dir, precision="int8")
    score(be, paths[:10], tmp_path / "a.csv", progress=False)
    np.testing.assert_allclose(_read(tmp_path / "a.csv")[1], be.predict_batch(x[:10]), atol=1e-5)
    clf = Classifier.load(model_dir, backend="openvino")
    score(clf, paths[:10], tmp_path / "b.csv", progress=False)
    np.testing.assert_allclose(
        _read(tmp_path / "b.csv")[1], clf.backend_.predict_batch(x[:10]), atol=1e-5
    )
    with pytest.raises(ConfigTypeError, match="loaded backend"):
        score(object(), paths[:1], tmp_path / "c.csv", progress=False)


def test_score_refuses_bad_backend_and_precision(model_dir, cells, tmp_path):
    _, paths, _ = cells
    with pytest.raises(ConfigError, match="only with backend='openvino'"):
        score(model_dir, paths[:2], tmp_path / "a.csv", precision="bf16", progress=False)
    with pytest.raises(ConfigError, match="backend must be one of"):
        score(model_dir, paths[:2], tmp_path / "b.csv", backend="keras", progress=False)
    with pytest.raises(ConfigError, match="num_streams"):
        score(
            model_dir, paths[:2], tmp_path / "c.csv", backend="openvino", precision="int8",
            backend_options={"num_streams": 2}, progress=False,
        )


@needs_bf16
def test_score_bf16_needs_a_passed_gate(model_dir, cells, tmp_path):
    from bmcd.exporters.bf16 import gate_bf16

    ds, paths, x = cells
    d = Path(shutil.copytree(model_dir, tmp_path / "m"))
    with pytest.raises(ModelFormatError, match="bf16 gate"):
        score(d, paths[:4], tmp_path / "a.csv", backend="openvino", precision="bf16",
              progress=False)
    assert gate_bf16(d, samples=ds)["passed"]
    score(d, paths, tmp_path / "b.csv", backend="openvino", precision="bf16", progress=False)
    p = _read(tmp_path / "b.csv")[1]
    p32 = OnnxRuntimeBackend.load(d).predict_batch(x)
    assert 0 < np.max(np.abs(p - p32)) < 0.05  # bf16 ran, and changed little


def test_dask_worker_builds_and_caches_the_drivers_backend(model_dir, cells):
    _, paths, x = cells
    ov = OpenVINOBackend.load(model_dir, precision="int8", intra_op_threads=1)
    spec = {
        "backend": "openvino", "model_file": str(ov.model_path), "meta": ov.meta,
        "precision": "int8", "threads": 1, "threads_by_host": {},
        "stamp": (1, 2), "options": worker_spec_options(ov, None), "instance": None,
    }
    assert spec["options"]["num_streams"] == 1 and spec["options"]["force_bf16"] is False
    a = worker_backend(spec)
    assert isinstance(a, OpenVINOBackend) and a.precision == "int8"
    assert worker_backend(dict(spec)) is a  # cached per process
    onnx_spec = {**spec, "backend": "onnx", "options": {"allow_spinning": False}}
    b = worker_backend(onnx_spec)
    assert isinstance(b, OnnxRuntimeBackend) and b is not a  # the key includes the backend
    res = score_partition(spec, paths[:9], 4)
    np.testing.assert_allclose([r[0] for r in res], a.predict_batch(x[:9]), atol=1e-5)


@pytest.mark.slow  # starts a Dask LocalCluster (worker processes)
def test_score_dask_with_openvino(model_dir, cells, tmp_path):
    pytest.importorskip("distributed")
    _, paths, x = cells
    summary = score(
        model_dir, paths, tmp_path / "d.csv", engine="dask", workers=1, partition_size=16,
        backend="openvino", precision="int8", progress=False,
    )
    assert summary.n_scored == len(paths)
    expected = OpenVINOBackend.load(model_dir, precision="int8").predict_batch(x)
    np.testing.assert_allclose(_read(tmp_path / "d.csv")[1], expected, atol=1e-5)


def test_cli_score_predict_evaluate_with_openvino(model_dir, cells, tmp_path, capsys):
    _, paths, x = cells
    out = tmp_path / "cli.csv"
    rc = main(["score", str(model_dir), *paths[:8], "-o", str(out), "--backend", "openvino",
               "--int8", "--no-progress"])
    assert rc == 0
    expected = OpenVINOBackend.load(model_dir, precision="int8").predict_batch(x[:8])
    np.testing.assert_allclose(_read(out)[1], expected, atol=1e-5)

    capsys.readouterr()
    assert main(["predict", str(model_dir), *paths[:3], "--backend", "openvino", "--int8"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    got = np.array([float(line.split("\t")[1]) for line in lines])
    np.testing.assert_allclose(got, expected[:3], atol=1e-4)

    # --bf16 belongs to OpenVINO; --int8 and --bf16 exclude each other
    with pytest.raises(SystemExit) as exc:  # a usage error: exit 2
        main(["predict", str(model_dir), paths[0], "--backend", "onnx", "--bf16"])
    assert exc.value.code == 2
    assert "--bf16 needs --backend openvino" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["score", str(model_dir), paths[0], "-o", str(tmp_path / "x.csv"), "--int8",
              "--bf16"])


def test_cli_export_bf16_runs_the_gate(model_dir, cells, tmp_path, capsys, monkeypatch):
    """``bmcd export MODEL --bf16``: export as usual, then gate bf16 and print the result."""
    import bmcd.exporters.bf16 as bf16
    import bmcd.exporters.onnx as onnx_exp

    d = Path(shutil.copytree(model_dir, tmp_path / "m"))
    # the Keras -> ONNX step needs TensorFlow; it is tested elsewhere, here only the wiring
    fake = {"path": str(d / "model.onnx"), "opset": 17, "ir_version": 8, "bytes": 1,
            "sha256": "0" * 64, "samples": "x",
            "parity": {"n": 1, "batch_sizes": [1], "max_abs_diff": 0.0, "atol": 1e-4,
                       "mean_abs_diff": 0.0, "label_disagreements": 0, "threshold": 0.5}}
    monkeypatch.setattr(onnx_exp, "export_onnx", lambda *a, **k: fake)
    calls = []

    def gate(model, samples=None, force=False, **kw):
        calls.append((Path(model), samples, force))
        return {"stub": True}

    monkeypatch.setattr(bf16, "gate_bf16", gate)
    monkeypatch.setattr(bf16, "format_bf16_gate", lambda rec: f"GATE {rec}")
    assert main(["export", str(d), "--bf16", "--samples", str(tmp_path), "--force"]) == 0
    assert calls == [(d, str(tmp_path), True)]
    assert "GATE {'stub': True}" in capsys.readouterr().out
    assert main(["export", str(d)]) == 0 and len(calls) == 1  # no --bf16, no gate


@pytest.mark.parametrize("backend,precision", [("onnx", "int8"), ("openvino", "int8"),
                                               ("openvino", "fp32")])
def test_two_inference_workers_give_the_same_rows(model_dir, cells, tmp_path, backend, precision):
    """Two chunks inferred at once (two single-thread calls) change nothing in the output."""
    _, paths, x = cells
    rows = {}
    for k in (1, 2):
        s = score(model_dir, paths, tmp_path / f"{k}.csv", batch_size=5, precision=precision,
                  backend=backend, inference_workers=k, progress=False)
        assert s.extra["inference_workers"] == k
        assert s.peak_chunks_in_flight <= 3  # PREFETCH_CHUNKS + 1, as with one worker
        rows[k] = _read(tmp_path / f"{k}.csv")
    assert rows[1][0] == rows[2][0] == paths
    np.testing.assert_allclose(rows[2][1], rows[1][1], atol=1e-5)
    be = (OpenVINOBackend if backend == "openvino" else OnnxRuntimeBackend).load(
        model_dir, precision=precision
    )
    np.testing.assert_allclose(rows[2][1], be.predict_batch(x), atol=1e-5 if precision == "fp32" else 0.03)


def test_cli_score_inference_workers(model_dir, cells, tmp_path):
    _, paths, x = cells
    out = tmp_path / "w.csv"
    assert main(["score", str(model_dir), *paths[:6], "-o", str(out), "--inference-workers", "2",
                 "--no-progress"]) == 0
    expected = OnnxRuntimeBackend.load(model_dir).predict_batch(x[:6])
    np.testing.assert_allclose(_read(out)[1], expected, atol=1e-5)
