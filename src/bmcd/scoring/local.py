"""The local engine behind ``bmcd.scoring.score(..., engine="local")``.

This process runs the shared :class:`~bmcd.scoring._pipeline.Pipeline`: a preprocessing
thread pool feeding the backend (by default two single-thread inference calls at once on
2+ cores), rows written chunk by chunk to the sink.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from ..preprocessing import PreprocessConfig, default_workers
from ..runtimes import Backend
from ._pipeline import Pipeline, progress_bar
from ._sink import CsvSink

__all__ = ["run_local", "default_local_threads", "default_inference_workers"]


def default_local_threads() -> int:
    """Default ONNX Runtime intra-op threads for the local engine: the CPU count.

    The scoring session is created with thread spinning off, so inference threads that
    wait leave the cores to the preprocessing threads. Measured on 2 cores (MobileNetV2
    int8 at 224 px, 2,000 BMP files): 2 threads without spinning scored 238 images/s
    against 143 with 1 thread (ratio to model-only ORT 0.80 instead of 0.48); with
    spinning on, 2 + 2 threads oversubscribed the cores and was slower than 2 + 1.
    """
    return default_workers()


def default_inference_workers() -> int:
    """Chunks the local engine infers at once by default: 2 where there are 2+ cores.

    Each gets ``cores // 2`` inference threads (one each on 2 cores). Two single-thread
    calls waste less CPU on synchronising threads than one two-thread call, and they
    leave gaps that the preprocessing threads fill (docs/benchmarks.rst, end to end).
    """
    return 2 if default_workers() >= 2 else 1


def run_local(
    backend: Backend,
    config: PreprocessConfig,
    paths: Iterable[str],
    sink: CsvSink,
    *,
    batch_size: int,
    workers: int | None,
    progress: bool,
    predictors: Sequence[Callable[[np.ndarray], np.ndarray]] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Score ``paths`` in this process, writing rows in input order to ``sink``.

    ``predictors`` (default: ``[backend.predict_batch]``) infer that many chunks at once.
    Returns the peak number of chunks in flight (bounded by ``PREFETCH_CHUNKS + 1``) and
    a dict of details (``buffers_allocated``, ``inference_workers``).
    """
    predictors = list(predictors) if predictors else [backend.predict_batch]
    pipe = Pipeline(
        predictors,
        config,
        batch_size=batch_size,
        workers=workers or default_workers(),
    )
    with progress_bar(progress, "img", "scoring") as bar:
        for rows in pipe.run(paths):
            sink.write_rows(rows)
            bar.update(len(rows))
    return pipe.peak_in_flight, {
        "buffers_allocated": pipe.buffers_allocated,
        "inference_workers": len(predictors),
    }
