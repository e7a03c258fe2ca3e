"""End to end: ``bmcd.score`` over 2,000 BMP files on disk into a CSV.

Each round scores every file into a new CSV: list, load the model, decode, crop, pad,
resize, infer, write. Rows: mobilenet_v2 fp32 and int8 and resnet50 int8 with the local
engine, the same with OpenVINO (mobilenet_v2 int8, resnet50 bf16), and mobilenet_v2 int8
on a Dask local cluster (started and closed by ``score``,
as ``bmcd score --engine dask`` does; skipped without the ``scale`` extra).

Parity after timing: one row per file in input order, no error rows, and ``p_all`` of 16
rows spread over the file equal to the same backend and model on ``preprocess_batch`` of
those files (:func:`bmcd.bench.check_score_output`). ``extra_info`` holds images/s and the ratio
to model-only inference with the same backend at the same batch size, measured right after the score rounds
with :func:`bmcd.bench.time_calls`.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from _helpers import BATCH_SIZE, RESULTS, median_seconds, record
from bmcd.bench import check_score_output, make_input_batches, time_calls
from bmcd.data import iter_image_files

pytestmark = [pytest.mark.benchmark(group="end to end"), pytest.mark.train, pytest.mark.slow]

N_FILES = 2000
CASES = [
    pytest.param("mobilenet_v2", "fp32", "local", 2, id="mobilenet_v2-fp32-local"),
    pytest.param("mobilenet_v2", "int8", "local", 2, id="mobilenet_v2-int8-local"),
    pytest.param(
        "mobilenet_v2", "int8", "dask", 1, id="mobilenet_v2-int8-dask", marks=pytest.mark.dask
    ),
    pytest.param("resnet50", "int8", "local", 1, id="resnet50-int8-local"),
    # OpenVINO side by side (skipped without the openvino extra / native bf16)
    pytest.param("mobilenet_v2", "ov_int8", "local", 2, id="mobilenet_v2-ov_int8-local"),
    pytest.param("resnet50", "ov_bf16", "local", 1, id="resnet50-ov_bf16-local"),
]
#: precision column -> (score backend, score precision, bench backend name)
RUNTIME = {
    "fp32": ("onnx", "fp32", "ort_fp32"),
    "int8": ("onnx", "int8", "ort_int8"),
    "ov_f32": ("openvino", "fp32", "ov_f32"),
    "ov_bf16": ("openvino", "bf16", "ov_bf16"),
    "ov_int8": ("openvino", "int8", "ov_int8"),
}


def model_only(model_dir, name: str):
    """The model-only predictor of bench backend ``name`` (bf16 forced: random weights)."""
    from bmcd.bench import load_predictors

    return load_predictors(model_dir, [name], force_bf16=True)[name]


def model_only_images_per_second(predict, images) -> float:
    """Model-only images/s at BATCH_SIZE, measured now (right after the score rounds),
    so that the ratio compares the same moments of a possibly shared machine."""
    inputs = make_input_batches(images, BATCH_SIZE, 4, seed=7)
    timing, _ = time_calls(predict, inputs, batch_size=BATCH_SIZE, seconds=3.0)
    return timing.images_per_second


@pytest.mark.parametrize("arch,precision,engine,rounds", CASES)
def test_score(
    benchmark, bench_model, files_2000, images224, tmp_path, arch, precision, engine, rounds
):
    if engine == "dask":
        pytest.importorskip("distributed", reason="the Dask row needs the 'scale' extra")
    from bmcd.bench import backend_available
    from bmcd.scoring import score

    model_dir = bench_model(arch)
    runtime, score_precision, name = RUNTIME[precision]
    ok, why = backend_available(model_dir, name, force_bf16=True)
    if not ok:
        pytest.skip(why)
    predict = model_only(model_dir, name)
    options = {"force_bf16": True} if score_precision == "bf16" else None
    files = [Path(p) for p in iter_image_files(files_2000)]  # what score() lists, in order
    assert len(files) == N_FILES
    counter = itertools.count()
    outs = []

    def setup():
        out = tmp_path / f"scores-{next(counter)}.csv"
        outs.append(out)
        return (out,), {}

    def run(out):
        return score(
            model_dir,
            [str(files_2000)],
            out,
            batch_size=BATCH_SIZE,
            precision=score_precision,
            engine=engine,
            progress=False,
            backend=runtime,
            backend_options=options,
        )

    benchmark.pedantic(run, setup=setup, rounds=rounds, warmup_rounds=0, iterations=1)
    diff = 0.0
    for out in outs:
        diff = max(
            diff,
            check_score_output(
                out, model_dir, files, predictor=predict, label=f"score {engine} {precision}"
            ),
        )
    extra: dict = {"n_files": N_FILES, "batch_size": BATCH_SIZE, "parity_max_abs_diff": diff}
    med = median_seconds(benchmark)
    if med:
        ips = N_FILES / med
        RESULTS[("score", arch, precision, engine)] = ips
        mo = model_only_images_per_second(predict, images224)
        extra["model_only_images_per_second"] = mo
        extra["ratio_to_model_only"] = ips / mo
        local = RESULTS.get(("score", arch, precision, "local"))
        if engine == "dask" and local:
            extra["ratio_to_local_engine"] = ips / local
    record(
        benchmark,
        "end to end",
        f"score {N_FILES} files {arch} {precision} {engine}",
        N_FILES,
        **extra,
    )
