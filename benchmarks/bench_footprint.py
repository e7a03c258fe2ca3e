"""Footprint: ``import bmcd`` time, memory after loading an ONNX model, peak RSS of scoring.

Everything runs in fresh subprocesses, so nothing imported by the test session counts.

* ``import bmcd``: the subprocess times the import itself (``perf_counter`` around it);
  pytest-benchmark times the whole subprocess (interpreter start included). Check: no
  heavy optional module (TensorFlow, Keras, tf2onnx, onnx, Dask, matplotlib) is imported.
* resident memory (psutil) before and after ``OnnxRuntimeBackend.load`` for each
  architecture and precision, and after a first batch-1 call. Check: the subprocess's
  prediction equals this process's.
* peak RSS (``VmHWM`` in ``/proc/self/status``, Linux) of ``score`` over 2,000 and over
  20,000 files. The 20,000 are the same few hundred distinct 450 px BMPs, symlinked, to
  save disk; the model is the
  tiny ONNX test model at 224 px (mean -> affine -> sigmoid), so the run is decode and
  preprocessing bound and takes seconds instead of minutes, and any memory that grows with
  the number of files shows up undiluted by a large model's weights. Check: one row per
  file, p_all equal to the tiny model computed in numpy.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from _helpers import IMAGE_SIZE, RESULTS, median_seconds, record

pytestmark = pytest.mark.benchmark(group="footprint")

HEAVY = ("tensorflow", "keras", "tf2onnx", "onnx", "dask", "distributed", "matplotlib")


def run_python(code: str, *args: str, timeout: float = 600) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line last."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


IMPORT_CODE = """
import json, sys, time
t0 = time.perf_counter()
import bmcd
dt = time.perf_counter() - t0
heavy = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY_MODULES)
print(json.dumps({"seconds": dt, "heavy": heavy, "onnxruntime": "onnxruntime" in sys.modules}))
""".replace("HEAVY_MODULES", repr(HEAVY))


def test_import_bmcd(benchmark):
    results = []
    benchmark.pedantic(
        lambda: results.append(run_python(IMPORT_CODE)), rounds=7, warmup_rounds=1, iterations=1
    )
    for r in results:
        assert r["heavy"] == [], f"`import bmcd` imported heavy modules: {r['heavy']}"
    inner = [r["seconds"] for r in results]
    record(
        benchmark,
        "footprint",
        "import bmcd (subprocess, incl. python start)",
        None,
        import_seconds_median=float(np.median(inner)),
        import_seconds_min=float(np.min(inner)),
        target_import_seconds=0.3,
        imports_onnxruntime=results[-1]["onnxruntime"],
    )


RSS_CODE = """
import json, sys
import numpy as np
import psutil
proc = psutil.Process()
import bmcd
from bmcd.runtimes.onnx import OnnxRuntimeBackend
rss0 = proc.memory_info().rss
be = OnnxRuntimeBackend.load(sys.argv[1], precision=sys.argv[2])
rss1 = proc.memory_info().rss
x = np.load(sys.argv[3])
p = be.predict_batch(x)
rss2 = proc.memory_info().rss
print(json.dumps({"before": rss0, "loaded": rss1, "after_call": rss2, "p": p.tolist()}))
"""


@pytest.mark.train
@pytest.mark.parametrize("precision", ["fp32", "int8"])
@pytest.mark.parametrize("arch", ["mobilenet_v2", "resnet50"])
def test_rss_after_loading_onnx(benchmark, bench_model, images224, tmp_path, arch, precision):
    pytest.importorskip("psutil")
    from bmcd.runtimes.onnx import OnnxRuntimeBackend

    model_dir = bench_model(arch)
    x = images224[:1]
    np.save(tmp_path / "x.npy", x)
    results = []
    benchmark.pedantic(
        lambda: results.append(
            run_python(RSS_CODE, str(model_dir), precision, str(tmp_path / "x.npy"))
        ),
        rounds=3,
        warmup_rounds=0,
        iterations=1,
    )
    expected = OnnxRuntimeBackend.load(model_dir, precision=precision).predict_batch(x)
    for r in results:
        np.testing.assert_allclose(r["p"], expected, atol=1e-6)
    mib = 1 << 20
    last = results[-1]
    record(
        benchmark,
        "footprint",
        f"load ONNX {arch} {precision} (subprocess)",
        None,
        rss_before_load_mib=last["before"] / mib,
        rss_loaded_mib=last["loaded"] / mib,
        rss_after_first_call_mib=last["after_call"] / mib,
        model_rss_mib=(last["after_call"] - last["before"]) / mib,
    )


#: Peak RSS scoring many files may be at most this many times that of few files.
PEAK_RSS_TARGET_RATIO = 1.2

SCORE_CODE = """
import json, sys
from bmcd.scoring import score
s = score(sys.argv[1], [sys.argv[2]], sys.argv[3], batch_size=32, progress=False)
# VmHWM: peak RSS of this process image. (ru_maxrss would also count the pytest parent,
# which Linux carries over through fork/vfork + exec.)
status = open("/proc/self/status").read()
peak_kib = int(next(l.split()[1] for l in status.splitlines() if l.startswith("VmHWM:")))
print(json.dumps({"peak_kib": peak_kib, "n_scored": s.n_scored, "n_errors": s.n_errors,
                  "seconds": s.seconds}))
"""


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    pytest.importorskip("onnx", reason="the tiny test model is written with the onnx package")
    from _tiny_models import build_tiny_onnx_model

    return build_tiny_onnx_model(tmp_path_factory.mktemp("tiny224"), image_size=IMAGE_SIZE)


@pytest.mark.slow
@pytest.mark.parametrize("n_files", [2000, 20000])
def test_peak_rss_scoring(benchmark, request, tiny_model, tmp_path, n_files):
    from _tiny_models import tiny_model_expected
    from bmcd.bench import check_score_output
    from bmcd.data import iter_image_files

    files_dir = request.getfixturevalue("files_2000" if n_files == 2000 else "files_20000")
    files = [Path(p) for p in iter_image_files(files_dir)]  # what score() lists, in order
    assert len(files) == n_files
    out = tmp_path / "scores.csv"
    results = []
    benchmark.pedantic(
        lambda: results.append(run_python(SCORE_CODE, str(tiny_model), str(files_dir), str(out))),
        setup=lambda: out.unlink(missing_ok=True),
        rounds=1,
        warmup_rounds=0,
        iterations=1,
    )
    r = results[-1]
    assert r["n_scored"] == n_files and r["n_errors"] == 0
    diff = check_score_output(
        out, tiny_model, files, predictor=tiny_model_expected, label="score (tiny model)"
    )
    peak_mib = r["peak_kib"] / 1024
    RESULTS[("peak_rss_mib", n_files)] = peak_mib
    extra = {"peak_rss_mib": peak_mib, "parity_max_abs_diff": diff}
    if n_files != 2000:
        small = RESULTS.get(("peak_rss_mib", 2000))
        if small is None:  # run alone (-k 20000): measure the small case now
            small_dir = request.getfixturevalue("files_2000")
            small_out = tmp_path / "scores-2000.csv"
            small = run_python(SCORE_CODE, str(tiny_model), str(small_dir), str(small_out))[
                "peak_kib"] / 1024
        ratio = peak_mib / small
        extra["peak_rss_ratio_to_2000_files"] = ratio
        extra["target_ratio"] = PEAK_RSS_TARGET_RATIO
        # docs/scaling.rst: memory stays flat however many files there are
        assert ratio <= PEAK_RSS_TARGET_RATIO, (
            f"peak RSS scoring {n_files} files is {peak_mib:.1f} MiB, {ratio:.2f}x the "
            f"{small:.1f} MiB of 2,000 files; the target is <= {PEAK_RSS_TARGET_RATIO}x"
        )
    if median_seconds(benchmark) is None:
        extra["seconds"] = r["seconds"]
    record(
        benchmark, "footprint", f"score {n_files} files, tiny model (subprocess)", n_files, **extra
    )
