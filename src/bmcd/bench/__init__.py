"""Throughput benchmarks: the engine behind ``bmcd bench``.

Everything is compared side by side in one process, on the same inputs, with warm-up,
fresh inputs on every call and a parity check beside every timing, so a fast wrong answer
cannot pass:

* **inference (model only)**: Keras ``model.predict``, a compiled ``tf.function`` call,
  ONNX Runtime fp32 and int8, and OpenVINO f32, bf16 (where the CPU has native bf16) and
  int8 (with the ``openvino`` extra), on the same exported files, at batch ``B`` and at
  batch 1. Reported as
  images/s, ms/image and the ratio to Keras ``predict``.
* **end to end**: :func:`bmcd.scoring.score` over ``n`` image files on disk into a CSV
  (decode, crop, pad, resize, infer, write), with the local engine and, when the
  ``scale`` extra is installed, the Dask local-cluster engine. Reported as images/s and
  the ratio to model-only ONNX Runtime at the same batch size.

Without a trained model a network with random weights is built (throughput does not
depend on the values of the weights), its BatchNorm statistics are set from the benchmark
images so that its outputs vary from image to image (a constant output would make the
parity checks vacuous), and it is exported and quantized with the bmcd exporter. The int8
accuracy gate is skipped (``force=True``) because accuracy means nothing for random
weights; the int8 model is still checked against fp32 here with a sanity bound.

bmcd ships no speed goals (they belong to a machine): ``run_bench(targets=...)`` and
:func:`evaluate_targets` compare a report with goals given to them, such as those of the
reference machine in ``benchmarks/targets.py``.

The ``benchmarks/`` pytest-benchmark suites reuse the helpers of this package; timing
there is done by pytest-benchmark. The modules: ``_machine`` (CPU, instruction sets,
matmul ceiling, load), ``_timing``, ``_inputs`` (images, batches, files), ``_parity``
(backends, parity checks), ``_models`` (benchmark models, predictors), ``_run`` (the
benchmarks and the whole run) and ``_report`` (targets, the printed table). See
docs/benchmarks.rst.

Examples
--------
>>> from bmcd.bench import run_bench, format_report
>>> report = run_bench(archs=["mobilenet_v2"], image_size=96, seconds=1.0)  # doctest: +SKIP
>>> print(format_report(report))                                            # doctest: +SKIP
"""

from __future__ import annotations

from ..errors import BenchError
from ._inputs import (
    dihedral,
    find_image_files,
    make_input_batches,
    source_images,
    write_bench_files,
)
from ._machine import (
    ISA_FLAGS,
    MODEL_GFLOP_224,
    cpu_flags,
    kernel_report,
    machine_info,
    matmul_gflops,
    process_cpu_seconds,
)
from ._models import (
    backend_available,
    build_bench_model,
    default_cache_dir,
    ensure_bench_model,
    load_keras_model,
    load_predictors,
)
from ._parity import (
    BACKEND_LABELS,
    BACKEND_RUNTIMES,
    BACKENDS,
    INT8_SANITY_MAX_ABS_DIFF,
    INT8_SANITY_MIN_CORRELATION,
    PARITY_TOLERANCE,
    REDUCED_PRECISION,
    SCORE_PARITY_TOLERANCE,
    check_int8_sanity,
    check_parity,
)
from ._report import (
    TARGET_QUANTITIES,
    check_targets,
    evaluate_targets,
    format_report,
    load_targets,
)
from ._run import bench_inference, bench_score, check_score_output, run_bench
from ._timing import Timing, time_calls, time_interleaved

__all__ = [
    "BACKENDS",
    "BACKEND_LABELS",
    "BACKEND_RUNTIMES",
    "REDUCED_PRECISION",
    "backend_available",
    "PARITY_TOLERANCE",
    "INT8_SANITY_MAX_ABS_DIFF",
    "INT8_SANITY_MIN_CORRELATION",
    "SCORE_PARITY_TOLERANCE",
    "MODEL_GFLOP_224",
    "ISA_FLAGS",
    "TARGET_QUANTITIES",
    "BenchError",
    "Timing",
    "machine_info",
    "matmul_gflops",
    "cpu_flags",
    "kernel_report",
    "time_calls",
    "time_interleaved",
    "process_cpu_seconds",
    "find_image_files",
    "source_images",
    "make_input_batches",
    "dihedral",
    "write_bench_files",
    "build_bench_model",
    "ensure_bench_model",
    "load_keras_model",
    "load_predictors",
    "check_parity",
    "check_int8_sanity",
    "bench_inference",
    "bench_score",
    "check_score_output",
    "run_bench",
    "check_targets",
    "load_targets",
    "evaluate_targets",
    "format_report",
    "default_cache_dir",
]
