"""Streaming batch scoring: many image files in, one CSV row per file out.

:func:`score` lists the inputs once, lazily (folders, globs, files, CSV manifests), and
streams them through the one preprocessing path and an inference backend (ONNX Runtime or
OpenVINO, ``backend=``) in chunks of ``batch_size`` files, so memory does not grow with
the number of files. Preprocessing of
the next chunks runs in a thread pool while ONNX Runtime infers the current one.

Every input gets exactly one row in the output CSV::

    path,p_all,label,threshold,error,warning

A file that cannot be read gets a row with an empty ``p_all`` and ``label`` and the reason
in ``error``; the run goes on. ``warning`` is ``no_cell`` when preprocessing found no cell
(an all-black or tiny image): the label is then not to be trusted. Rows are appended,
flushed and fsynced chunk by chunk, so a killed run keeps what it scored, and
``resume=True`` carries on from there: after a kill and a resume the file is the same as
after one uninterrupted run. The model that wrote the rows is recorded next to them in
``<out>.json``, a run holds ``<out>.lock`` while it writes, and resuming with another
model, or while another run writes the same file, is refused (docs/scaling.rst).

Two engines run the same pipeline:

``engine="local"``
    this process: a preprocessing thread pool feeding one ONNX Runtime session.
``engine="dask"``
    Dask distributed (the ``scale`` extra): partitions of paths are scored on the workers
    of a :class:`distributed.LocalCluster` or of an existing scheduler, each worker
    keeping one session. See :mod:`bmcd.scoring.dask`.

The package is split by concern (docs/architecture.rst): ``_inputs`` lists the inputs,
``_sink`` writes the CSV and reads it back on resume, ``_pipeline`` is the preprocessing
and inference pipeline both engines run, and ``local`` and ``dask`` are the engines; ``_output`` guards the output (lock,
model record, header check, torn records) before anything is written. The
engines share those three modules and never import each other; this module validates the
arguments, resolves the model and dispatches to an engine.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._deps import optional_import
from ..artifact import ModelMeta
from ..errors import ConfigError, ConfigTypeError, DatasetError, OutputExistsError
from ..preprocessing import IMAGE_EXTENSIONS, PreprocessConfig
from ..runtimes import Backend, get_backend
from ._inputs import MANIFEST_COLUMNS, iter_inputs, path_key
from ._output import (
    STDOUT,
    OutputLock,
    ensure_parent,
    model_identity,
    prepare_output,
    read_scored_paths,
    write_sidecar,
)
from ._pipeline import PREFETCH_CHUNKS
from ._sink import LEGACY_COLUMNS, NO_CELL, OUTPUT_COLUMNS, CsvSink
from .dask import run_dask
from .local import default_inference_workers, default_local_threads, run_local

__all__ = [
    "score",
    "ScoreSummary",
    "OutputExistsError",
    "iter_inputs",
    "read_scored_paths",
    "OUTPUT_COLUMNS",
    "LEGACY_COLUMNS",
    "NO_CELL",
    "MANIFEST_COLUMNS",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_PARTITION_SIZE",
    "PREFETCH_CHUNKS",
    "ENGINES",
    "default_local_threads",
    "default_inference_workers",
    "SCORE_BACKENDS",
]

DEFAULT_BATCH_SIZE = 64
DEFAULT_PARTITION_SIZE = 1024
ENGINES = ("local", "dask")


@dataclass
class ScoreSummary:
    """What a :func:`score` run did.

    Attributes
    ----------
    n_total : int
        Inputs listed (after de-duplication), including those skipped on resume.
    n_scored : int
        Rows written with a probability in this run.
    n_errors : int
        Rows written with an error (unreadable file) in this run.
    n_skipped : int
        Inputs already in the output file and skipped (``resume=True``).
    seconds : float
        Wall-clock time of the run.
    images_per_second : float
        ``(n_scored + n_errors) / seconds``.
    out : Path
        The output CSV.
    engine : str
        ``"local"`` or ``"dask"``.
    n_previous_errors : int
        Error rows already in the output before a resumed run.
    peak_chunks_in_flight : int
        Local engine: the most chunks alive at once (preprocessing or inferring); bounded
        by ``PREFETCH_CHUNKS + 1`` whatever the number of files. Dask engine: the most
        partitions submitted or buffered at once.
    n_no_cell : int
        Rows of this run scored with the ``no_cell`` warning (no foreground found).

    Examples
    --------
    >>> s = ScoreSummary(n_total=10, n_scored=9, n_errors=1, n_skipped=0, seconds=0.5,
    ...                  images_per_second=20.0, out=Path("scores.csv"))
    >>> s.exit_status
    3
    """

    n_total: int
    n_scored: int
    n_errors: int
    n_skipped: int
    seconds: float
    images_per_second: float
    out: Path
    engine: str = "local"
    n_previous_errors: int = 0
    peak_chunks_in_flight: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    n_no_cell: int = 0

    @property
    def exit_status(self) -> int:
        """0 when every row in the output has a probability, 3 when some carry errors."""
        return 3 if (self.n_errors or self.n_previous_errors) else 0

    def __str__(self) -> str:
        prev = f" ({self.n_previous_errors} earlier)" if self.n_previous_errors else ""
        skipped = f", {self.n_skipped} already done" if self.n_skipped else ""
        no_cell = f", {self.n_no_cell} without a cell (warning {NO_CELL})" if self.n_no_cell else ""
        return (
            f"scored {self.n_scored}, errors {self.n_errors}{prev}{skipped}{no_cell} in "
            f"{self.seconds:.1f} s ({self.images_per_second:.1f} images/s, engine "
            f"{self.engine}) -> {self.out}"
        )


# ---------------------------------------------------------------------------------------
# arguments and model resolution
# ---------------------------------------------------------------------------------------


#: Backends :func:`score` loads from a path (both read the exported ONNX files).
SCORE_BACKENDS = ("onnx", "openvino")


def _resolve_backend(
    model: Any,
    backend: str,
    precision: str,
    intra_op_threads: int | None,
    options: dict[str, Any] | None = None,
) -> Backend:
    """A loaded :class:`~bmcd.runtimes.Backend`: the one given, the one a Classifier
    holds, or one loaded from a path with ``backend`` (docs/scaling.rst)."""
    if isinstance(model, Backend):
        return model
    for attr in ("backend_", "_backend"):
        inner = getattr(model, attr, None)
        if isinstance(inner, Backend):
            return inner
    if isinstance(model, (str, os.PathLike)):
        if backend not in SCORE_BACKENDS:
            raise ConfigError(
                f"backend must be one of {list(SCORE_BACKENDS)} to score from a model path, "
                f"received {backend!r}. Other backends: load the model yourself and pass it."
            )
        if precision == "bf16" and backend != "openvino":
            raise ConfigError(
                "precision='bf16' runs only with backend='openvino' (ONNX Runtime has no bf16 "
                "CPU kernels); pass backend='openvino' (--backend openvino --bf16)."
            )
        opts = dict(options or {})
        if backend == "onnx":
            opts.setdefault("allow_spinning", False)  # waiting threads leave the cores
        return get_backend(backend).load(
            model, precision=precision, intra_op_threads=intra_op_threads, **opts
        )
    raise ConfigTypeError(
        f"score() needs a model directory, an .onnx file, or a loaded backend "
        f"(bmcd.runtimes.Backend, or a Classifier holding one); received "
        f"{type(model).__name__}."
    )


def _model_config(backend: Backend) -> tuple[PreprocessConfig, float]:
    meta = ModelMeta.from_dict(backend.meta, source=str(getattr(backend, "model_path", backend)))
    return meta.preprocess, float(meta.threshold)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, received {value!r}.")
    return int(value)


# ---------------------------------------------------------------------------------------
# the public entry point
# ---------------------------------------------------------------------------------------


def score(
    model: Any,
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    out: str | os.PathLike,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    resume: bool = False,
    precision: str = "fp32",
    engine: str = "local",
    scheduler: Any = None,
    partition_size: int = DEFAULT_PARTITION_SIZE,
    intra_op_threads: int | None = None,
    progress: bool = True,
    *,
    connect_timeout: float = 5.0,
    retries: int = 3,
    backend: str = "onnx",
    backend_options: dict[str, Any] | None = None,
    inference_workers: int | None = None,
) -> ScoreSummary:
    """Score image files with an exported ONNX model, streaming rows to a CSV.

    Parameters
    ----------
    model : path or Backend
        A model directory (uses ``model.onnx``, or ``model.int8.onnx`` with
        ``precision="int8"``), a bare ``.onnx`` file carrying bmcd metadata, a loaded
        :class:`~bmcd.runtimes.Backend` (e.g. an
        :class:`~bmcd.runtimes.onnx.OnnxRuntimeBackend` or
        :class:`~bmcd.runtimes.openvino.OpenVINOBackend`), or a Classifier holding one.
    inputs : path, glob, or iterable of them
        Folders (recursive), glob patterns, image files and CSV manifests, mixed; see
        :func:`iter_inputs`. Listed once, lazily; duplicates are scored once.
    out : path
        The output CSV (``path,p_all,label,threshold,error,warning``), one row per input,
        or ``"-"`` for standard output (no resume). The model is recorded in
        ``<out>.json`` and ``<out>.lock`` is locked while the run writes.
    batch_size : int
        Files per chunk: the unit of preprocessing, inference and flushing to disk.
    workers : int, optional
        Local engine: preprocessing threads (default: the usable CPU count; they only run
        while chunks are missing, so they never pile up). Dask engine
        without ``scheduler``: worker processes of the local cluster (default: the CPU
        count). Ignored when connecting to a scheduler.
    resume : bool
        Skip the files already in ``out`` (after removing a record torn by a killed run)
        and append the rest. Without it an existing ``out`` raises
        :class:`OutputExistsError`, and so does resuming a file that is not a bmcd scores
        CSV (nothing is written to it) or one written by another model (other sha256,
        precision, threshold or preprocessing in ``<out>.json``). Older five-column
        files are resumed with five columns.
    precision : {"fp32", "bf16", "int8"}
        Which exported file of a model directory to run, and how. ``"bf16"`` needs
        ``backend="openvino"``, a CPU with native bf16 and a passed bf16 gate
        (``bmcd export MODEL --bf16``).
    engine : {"local", "dask"}
        Where to run; ``"dask"`` needs the ``scale`` extra.
    scheduler : str or distributed.Client, optional
        Dask engine only: a scheduler address (``"tcp://host:8786"``) or a connected
        client. Default: start a ``LocalCluster`` sized to this machine and close it after.
    partition_size : int
        Dask engine: files per task.
    intra_op_threads : int, optional
        Inference threads per session (ONNX Runtime intra-op, OpenVINO). Local default:
        :func:`default_local_threads` (the CPU count) divided by ``inference_workers``; an
        ONNX Runtime session does not spin, so waiting inference threads leave the cores to
        preprocessing. Dask default: the host's CPU count divided by the Dask threads on
        that host, so workers x threads <= cores. Ignored when ``model`` is already loaded.
    progress : bool
        Show a tqdm progress bar (images/s; partitions for Dask) when stderr is a terminal.
    connect_timeout : float
        Dask engine: seconds to wait for the scheduler (and for its first worker).
    retries : int
        Dask engine: extra attempts for a partition whose task raised.
    backend : {"onnx", "openvino"}
        The runtime that loads a model path (ignored when ``model`` is already loaded).
        ``"openvino"`` needs the ``openvino`` extra.
    backend_options : dict, optional
        Extra keyword arguments for the backend's ``load`` (e.g. ``{"num_streams": 2}``
        for OpenVINO fp32/bf16); Dask workers get them too.
    inference_workers : int, optional
        Local engine: chunks inferred at once, each with ``intra_op_threads`` threads
        (default with ONNX Runtime from a model path without ``intra_op_threads``:
        :func:`default_inference_workers`, 2 single-thread calls on 2+ cores; otherwise
        1). ONNX Runtime shares one session between them; OpenVINO compiles one model per
        worker (several streams of one compiled int8 model are refused), so for OpenVINO
        it pays off only on long runs. A loaded backend is shared as it is.

    Returns
    -------
    ScoreSummary
        Counts, timing and images/s; ``summary.exit_status`` is 0 when every row has a
        probability and 3 when some rows carry errors.

    Raises
    ------
    ConfigError
        An argument is out of range (``batch_size``, ``engine`` ...); a ``ValueError``.
    ConfigTypeError
        ``model`` is neither a path nor a loaded backend; a ``TypeError``.
    ModelFormatError
        The model is missing or not a bmcd ONNX model.
    DatasetError
        An input does not exist, the inputs name no image file, a manifest is unreadable,
        or (Dask) a worker cannot read the model or the images.
    OutputExistsError
        ``out`` exists and ``resume`` is False; it is not a bmcd scores CSV; it was
        written by another model; or another run is writing it.
    OutputWriteError
        ``out`` or its folder cannot be written (checked before scoring), or a write
        failed mid-run (the rows written before are kept).
    SchedulerUnavailableError
        (Dask) the scheduler did not answer within ``connect_timeout`` seconds.
    MissingDependencyError
        ``engine="dask"`` without the ``scale`` extra.

    Examples
    --------
    >>> from bmcd.scoring import score
    >>> s = score("model/", ["slides/", "extra/*.bmp"], "scores.csv")  # doctest: +SKIP
    >>> print(s)                                                       # doctest: +SKIP
    scored 10480, errors 2 in 41.3 s (253.8 images/s, engine local) -> scores.csv
    """
    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {list(ENGINES)}, received {engine!r}.")
    if scheduler is not None and engine != "dask":
        raise ConfigError(
            "A scheduler was given but engine='local'; pass engine='dask' (--engine dask) to "
            "score on a Dask cluster."
        )
    batch_size = _positive_int("batch_size", batch_size)
    partition_size = _positive_int("partition_size", partition_size)
    if workers is not None:
        workers = _positive_int("workers", workers)
    if intra_op_threads is not None:
        intra_op_threads = _positive_int("intra_op_threads", intra_op_threads)

    if engine == "dask":
        # fail on a missing extra before touching the model or the output
        optional_import("distributed", purpose="engine='dask'")

    to_stdout = os.fspath(out) == STDOUT
    if to_stdout and resume:
        raise ConfigError(
            "resume needs an output file: --out - writes to standard output, which cannot be "
            "resumed. Give --out FILE."
        )
    paths = iter_inputs(inputs)  # checks that every input exists, lists nothing yet
    first = next(paths, None)
    if first is None:
        raise DatasetError(
            f"The inputs name no image file (folders are searched for "
            f"{', '.join(IMAGE_EXTENSIONS)}; manifests need at least one path): "
            f"{_shown(inputs)}. Nothing was scored."
        )
    paths = itertools.chain([first], paths)
    from_path = isinstance(model, (str, os.PathLike))
    n_infer = 1
    if engine == "local":
        if inference_workers is not None:
            n_infer = _positive_int("inference_workers", inference_workers)
        elif from_path and intra_op_threads is None and backend == "onnx":
            # OpenVINO would need a second compiled model (several streams of one int8
            # model are refused), which costs more CPU than it saves on runs of thousands
            # of files (docs/benchmarks.rst, end to end); ask for it explicitly
            n_infer = default_inference_workers()
        threads = intra_op_threads or max(1, default_local_threads() // n_infer)
    else:  # the driver only reads the model's config; workers size their own sessions
        threads = 1
    loaded = _resolve_backend(model, backend, precision, threads, backend_options)
    predictors = [loaded.predict_batch] * n_infer
    if n_infer > 1 and from_path and loaded.name == "openvino":
        # one compiled model per inference worker: requests of one single-stream model
        # run one after the other
        predictors[1:] = [
            _resolve_backend(model, backend, precision, threads, backend_options).predict_batch
            for _ in range(n_infer - 1)
        ]
    config, threshold = _model_config(loaded)

    lock = None
    if to_stdout:
        output = None
        sink = CsvSink(None, threshold, write_header=True)
    else:
        out_path = Path(out)
        if out_path.is_dir():
            prepare_output(out_path, resume)  # the directory error
        ensure_parent(out_path)
        lock = OutputLock(out_path)  # also proves the folder writable, before scoring
    try:
        if not to_stdout:
            identity = model_identity(
                loaded.model_path, loaded.meta, loaded.precision, threshold,
                config.to_dict(),
            )
            output = prepare_output(out_path, resume, identity)
            columns = output.columns
            record = None
            if output.recorded is None:
                def record() -> None:
                    write_sidecar(out_path, identity, columns)
            sink = CsvSink(
                out_path, threshold, write_header=output.write_header, columns=columns,
                before_open=record,
            )
        done = output.done if output else set()
        n_total = 0
        n_skipped = 0

        def todo() -> Iterator[str]:
            nonlocal n_total, n_skipped
            for p in paths:
                n_total += 1
                if done and path_key(p) in done:
                    n_skipped += 1
                    continue
                yield p

        t0 = time.perf_counter()
        try:
            if engine == "local":
                peak, extra = run_local(
                    loaded, config, todo(), sink,
                    batch_size=batch_size, workers=workers, progress=progress,
                    predictors=predictors,
                )
            else:
                peak, extra = run_dask(
                    loaded, todo(), sink, backend_options=backend_options,
                    batch_size=batch_size, partition_size=partition_size, workers=workers,
                    scheduler=scheduler, intra_op_threads=intra_op_threads,
                    progress=progress, connect_timeout=connect_timeout, retries=retries,
                )
            sink.finish()
        finally:
            sink.close()
    finally:
        if lock is not None:
            lock.release()
    seconds = time.perf_counter() - t0
    done_now = sink.n_scored + sink.n_errors
    return ScoreSummary(
        n_total=n_total,
        n_scored=sink.n_scored,
        n_errors=sink.n_errors,
        n_skipped=n_skipped,
        seconds=seconds,
        images_per_second=done_now / seconds if seconds > 0 else 0.0,
        out=output.path if output else Path(STDOUT),
        engine=engine,
        n_previous_errors=output.n_previous_errors if output else 0,
        peak_chunks_in_flight=peak,
        extra=extra,
        n_no_cell=sink.n_no_cell,
    )


def _shown(inputs: Any) -> str:
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    text = ", ".join(repr(os.fspath(i)) for i in items[:3])
    return text + (f" and {len(items) - 3} more" if len(items) > 3 else "")
