"""Unit tests for bmcd.scoring: input listing, the output file, the streaming pipeline."""

from __future__ import annotations

import pickle
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from _tiny_models import tiny_model_expected, write_cell_images
from bmcd.errors import DatasetError, MissingDependencyError
from bmcd.preprocessing import PreprocessConfig, preprocess_batch
from bmcd.scoring import (
    OUTPUT_COLUMNS,
    PREFETCH_CHUNKS,
    OutputExistsError,
    iter_inputs,
    read_scored_paths,
    score,
)
from bmcd.scoring._output import prepare_output as _prepare_output
from bmcd.scoring._pipeline import Pipeline as _Pipeline
from bmcd.scoring._sink import CsvSink as _CsvSink

HEADER = ",".join(OUTPUT_COLUMNS) + "\n"


@pytest.fixture(scope="module")
def small_images(tmp_path_factory) -> list[Path]:
    return write_cell_images(tmp_path_factory.mktemp("imgs"), 12, size=64, seed=1)


# -- inputs ------------------------------------------------------------------------------


def test_iter_inputs_is_lazy_sorted_recursive_and_skips_non_images(tmp_path):
    (tmp_path / "b" / "deep").mkdir(parents=True)
    (tmp_path / "a").mkdir()
    for rel in ["b/deep/z.PNG", "b/y.bmp", "a/x.jpg", "a/notes.txt", "a/.hidden.bmp", "c.tif"]:
        (tmp_path / rel).write_bytes(b"x")
    it = iter_inputs(tmp_path)
    assert iter(it) is it and not isinstance(it, (list, tuple))  # a generator, not a list
    got = [Path(p).relative_to(tmp_path).as_posix() for p in it]
    # os.walk order: files of a folder (sorted) before its sub-folders (sorted)
    assert got == ["c.tif", "a/x.jpg", "b/y.bmp", "b/deep/z.PNG"]


def test_iter_inputs_globs_manifests_files_and_dedupe(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    for name in ["1.bmp", "2.bmp", "3.png"]:
        (d / name).write_bytes(b"x")
    (tmp_path / "m.csv").write_text(
        "Patient_ID,new_names,labels\n"
        "p1,imgs/3.png,1\n"
        "p1,imgs/1.bmp,0\n"  # duplicate of a glob match
        "p2,,1\n"  # blank cell: ignored
        f"p3,{d / 'missing.bmp'},0\n"  # absolute, missing: still listed (error row later)
    )
    inputs = [str(d / "*.bmp"), str(tmp_path / "m.csv"), str(d / "2.bmp"), str(d)]
    got = [Path(p).name for p in iter_inputs(inputs)]
    assert got == ["1.bmp", "2.bmp", "3.png", "missing.bmp"]


def test_iter_inputs_manifest_column_names(tmp_path):
    (tmp_path / "a.bmp").write_bytes(b"x")
    for col in ["path", "File", "filename", "new_names"]:
        m = tmp_path / f"m_{col}.csv"
        m.write_text(f"label,{col}\n1,a.bmp\n")
        assert [Path(p).name for p in iter_inputs([m])] == ["a.bmp"]
    bad = tmp_path / "bad.csv"
    bad.write_text("label,image\n1,a.bmp\n")
    with pytest.raises(DatasetError, match="new_names"):
        list(iter_inputs([bad]))


def test_iter_inputs_fails_up_front_on_missing_input(tmp_path):
    (tmp_path / "a.bmp").write_bytes(b"x")
    with pytest.raises(DatasetError, match="does not exist"):
        iter_inputs([tmp_path / "a.bmp", tmp_path / "nope"])  # raised before iterating
    with pytest.raises(DatasetError, match="matches no files"):
        iter_inputs([str(tmp_path / "*.jpeg")])
    with pytest.raises(DatasetError, match="No inputs"):
        iter_inputs([])


# -- output file -------------------------------------------------------------------------


def test_sink_rows_and_float32_round_trip(tmp_path):
    out = tmp_path / "o.csv"
    sink = _CsvSink(out, 0.5, write_header=True)
    assert not out.exists()  # opened lazily
    p = float(np.float32(0.123456789))
    sink.write_rows([("a.bmp", p, None, False), ("b.bmp", 0.5, None, True),
                     ("c,d.bmp", None, "bad\nfile", False)])
    sink.close()
    lines = out.read_text().splitlines()
    assert lines[0] == ",".join(OUTPUT_COLUMNS)
    assert np.float32(lines[1].split(",")[1]) == np.float32(p)  # exact float32 round trip
    assert lines[1].endswith(",hem,0.5,,")
    # ties go to "all", as in metrics.apply_threshold; no cell found -> the warning column
    assert lines[2] == "b.bmp,0.5,all,0.5,,no_cell"
    assert lines[3] == '"c,d.bmp",,,0.5,bad file,'  # quoted path, one-line error
    assert (sink.n_scored, sink.n_errors) == (2, 1)


def test_read_scored_paths_truncates_torn_line(tmp_path):
    out = tmp_path / "o.csv"
    out.write_text(HEADER + "a.bmp,0.1,hem,0.5,\nb.bmp,,,0.5,broken\nc.bmp,0.7")
    done, n_err = read_scored_paths(out)
    assert {Path(p).name for p in done} == {"a.bmp", "b.bmp"}
    assert n_err == 1
    assert out.read_text() == HEADER + "a.bmp,0.1,hem,0.5,\nb.bmp,,,0.5,broken\n"
    # a header torn by a kill leaves an empty file that is started afresh
    out.write_text("path,p_a")
    assert read_scored_paths(out) == (set(), 0) and out.read_bytes() == b""


def test_prepare_output_refuses_to_overwrite(tmp_path):
    out = tmp_path / "o.csv"
    out.write_text(HEADER)
    with pytest.raises(OutputExistsError, match="--resume"):
        _prepare_output(out, resume=False)
    assert out.read_text() == HEADER
    with pytest.raises(OutputExistsError, match="directory"):
        _prepare_output(tmp_path, resume=True)
    foreign = tmp_path / "other.csv"
    foreign.write_text("a,b\n1,2\n")
    with pytest.raises(OutputExistsError, match="not a bmcd scores CSV"):
        _prepare_output(foreign, resume=True)
    assert foreign.read_text() == "a,b\n1,2\n"


# -- the streaming pipeline --------------------------------------------------------------


def test_pipeline_streams_with_bounded_chunks_in_flight(small_images):
    """Input is pulled lazily and at most PREFETCH_CHUNKS + 1 chunks are ever alive."""
    batch, n_chunks = 4, 60
    pulled = 0
    alive = 0
    peak_alive = 0
    lock = threading.Lock()
    cfg = PreprocessConfig(image_size=16)

    def source():
        nonlocal pulled
        for i in range(batch * n_chunks):
            pulled += 1
            yield str(small_images[i % len(small_images)])

    inferred = 0

    def predict(x):
        nonlocal inferred
        # at inference of chunk k, no more than k + 1 + PREFETCH_CHUNKS chunks were listed
        assert pulled <= (inferred + 1 + PREFETCH_CHUNKS) * batch
        inferred += 1
        return np.full(len(x), 0.25, np.float32)

    pipe = _Pipeline(predict, cfg, batch_size=batch, workers=2)
    original_buffer = pipe._buffer

    def counting_buffer():
        nonlocal alive, peak_alive
        with lock:
            alive += 1
            peak_alive = max(peak_alive, alive)
        return original_buffer()

    pipe._buffer = counting_buffer
    n_rows = 0
    for rows in pipe.run(source()):
        n_rows += len(rows)
        with lock:
            alive -= 1
    assert n_rows == batch * n_chunks and inferred == n_chunks
    assert peak_alive <= PREFETCH_CHUNKS + 1
    assert pipe.peak_in_flight <= PREFETCH_CHUNKS + 1
    assert pipe.buffers_allocated <= PREFETCH_CHUNKS + 1  # reused, not one per chunk


def test_pipeline_keeps_order_and_isolates_errors(small_images, tmp_path):
    bad = tmp_path / "bad.bmp"
    bad.write_bytes(b"BM not really")
    paths = [str(p) for p in small_images[:5]] + [str(bad)] + [str(p) for p in small_images[5:]]
    cfg = PreprocessConfig(image_size=32)
    pipe = _Pipeline(lambda x: tiny_model_expected(x).astype(np.float32), cfg, batch_size=4, workers=3)
    rows = [r for chunk in pipe.run(paths) for r in chunk]
    assert [r[0] for r in rows] == paths
    assert rows[5][1] is None and "decode" in rows[5][2]
    good = [r for r in rows if r[2] is None]
    expected = tiny_model_expected(preprocess_batch([r[0] for r in good], cfg))
    np.testing.assert_allclose([r[1] for r in good], expected, atol=1e-6)


# -- model and arguments -----------------------------------------------------------------


def test_onnx_backend_pickle_round_trip_identical(tiny_onnx_model_dir, small_images):
    from bmcd.runtimes.onnx import OnnxRuntimeBackend

    be = OnnxRuntimeBackend.load(tiny_onnx_model_dir, intra_op_threads=1)
    x = preprocess_batch(small_images, PreprocessConfig(image_size=32))
    before = OnnxRuntimeBackend.sessions_created
    clone = pickle.loads(pickle.dumps(be))
    assert OnnxRuntimeBackend.sessions_created == before + 1  # session rebuilt on unpickle
    np.testing.assert_array_equal(clone.predict_batch(x), be.predict_batch(x))
    np.testing.assert_allclose(be.predict_batch(x), tiny_model_expected(x), atol=1e-6)


def test_score_accepts_a_loaded_backend(tiny_onnx_model_dir, small_images, tmp_path):
    from bmcd.runtimes.onnx import OnnxRuntimeBackend

    be = OnnxRuntimeBackend.load(tiny_onnx_model_dir / "model.onnx")  # bare file: metadata
    s = score(be, small_images, tmp_path / "o.csv", batch_size=5, progress=False)
    assert (s.n_total, s.n_scored, s.n_errors, s.exit_status) == (12, 12, 0, 0)


def test_score_argument_errors(tiny_onnx_model_dir, small_images, tmp_path):
    out = tmp_path / "o.csv"
    with pytest.raises(ValueError, match="engine='dask'"):
        score(tiny_onnx_model_dir, small_images, out, scheduler="tcp://x:1")
    with pytest.raises(ValueError, match="batch_size"):
        score(tiny_onnx_model_dir, small_images, out, batch_size=0)
    with pytest.raises(ValueError, match="engine must be"):
        score(tiny_onnx_model_dir, small_images, out, engine="spark")
    with pytest.raises(TypeError, match="model directory"):
        score(object(), small_images, out)
    assert not out.exists()


def test_dask_engine_without_scale_extra(monkeypatch, tiny_onnx_model_dir, small_images, tmp_path):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'bmcd\[scale\]'"):
        score(tiny_onnx_model_dir, small_images, tmp_path / "o.csv", engine="dask")
    assert not (tmp_path / "o.csv").exists()


def test_preflight_names_an_unreadable_path_and_plans_threads():
    from bmcd.scoring.dask import _preflight, probe_worker

    class FakeClient:
        def __init__(self, probes, nthreads):
            self.probes, self._nthreads = probes, nthreads

        def run(self, fn, sample):
            return self.probes

        def nthreads(self):
            return self._nthreads

    ok = {"host": "h1", "cpus": 8, "pid": 1, "unreadable": []}
    two = FakeClient({"tcp://a:1": ok, "tcp://b:1": dict(ok), "tcp://c:1": dict(ok, host="h2")},
                     {"tcp://a:1": 1, "tcp://b:1": 3, "tcp://c:1": 2})
    # h1: 8 cores / (1 + 3) Dask threads = 2 ORT threads; h2: 8 / 2 = 4
    assert _preflight(two, ["/m"]) == {"h1": 2, "h2": 4}
    blind = dict(ok, unreadable=[("/data/x.bmp", "FileNotFoundError: No such file")])
    with pytest.raises(DatasetError, match=r"tcp://b:1.*cannot read '/data/x.bmp'"):
        _preflight(FakeClient({"tcp://a:1": ok, "tcp://b:1": blind}, {}), ["/data/x.bmp"])
    probe = probe_worker([__file__, "/definitely/not/here.bmp"])
    assert probe["unreadable"] == [("/definitely/not/here.bmp", "FileNotFoundError: No such file or directory")]


def test_score_accepts_a_classifier_loaded_with_the_onnx_backend(
    tiny_onnx_model_dir, small_images, tmp_path
):
    classifier = pytest.importorskip("bmcd.classifier")
    clf = classifier.Classifier.load(tiny_onnx_model_dir, backend="onnx")
    out = tmp_path / "o.csv"
    s = score(clf, small_images, out, batch_size=5, progress=False)
    assert (s.n_scored, s.n_errors) == (12, 0)
    x = preprocess_batch(small_images, PreprocessConfig(image_size=32))
    p = [float(line.split(",")[1]) for line in out.read_text().splitlines()[1:]]
    np.testing.assert_allclose(p, clf.predict_proba(x)[:, 1], atol=1e-6)
