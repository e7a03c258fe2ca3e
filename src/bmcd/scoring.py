"""Streaming batch scoring: many image files in, one CSV row per file out.

:func:`score` lists the inputs once, lazily (folders, globs, files, CSV manifests), and
streams them through the one preprocessing path and an ONNX Runtime session in chunks of
``batch_size`` files, so memory does not grow with the number of files. Preprocessing of
the next chunks runs in a thread pool while ONNX Runtime infers the current one.

Every input gets exactly one row in the output CSV::

    path,p_all,label,threshold,error

A file that cannot be read gets a row with an empty ``p_all`` and ``label`` and the reason
in ``error``; the run goes on. Rows are appended, flushed and fsynced chunk by chunk, so a
killed run keeps what it scored, and ``resume=True`` carries on from there: after a kill
and a resume the file is the same as after one uninterrupted run.

Two engines run the same pipeline:

``engine="local"``
    this process: a preprocessing thread pool feeding one ONNX Runtime session.
``engine="dask"``
    Dask distributed (the ``scale`` extra): partitions of paths are scored on the workers
    of a :class:`distributed.LocalCluster` or of an existing scheduler, each worker
    keeping one session. See :mod:`bmcd.scoring_dask`.
"""

from __future__ import annotations

import collections
import csv
import glob
import io
import itertools
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BmcdError, DatasetError, ImageReadError, OutputExistsError
from .preprocessing import IMAGE_EXTENSIONS, PreprocessConfig, default_workers, preprocess

__all__ = [
    "score",
    "ScoreSummary",
    "OutputExistsError",
    "iter_inputs",
    "read_scored_paths",
    "OUTPUT_COLUMNS",
    "MANIFEST_COLUMNS",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_PARTITION_SIZE",
    "PREFETCH_CHUNKS",
    "ENGINES",
    "default_local_threads",
]

#: The output CSV's columns, in order.
OUTPUT_COLUMNS = ("path", "p_all", "label", "threshold", "error")
#: Column names recognised in CSV manifests (case-insensitive, first match wins).
MANIFEST_COLUMNS = ("path", "file", "filename", "new_names")
DEFAULT_BATCH_SIZE = 64
DEFAULT_PARTITION_SIZE = 1024
#: Chunks preprocessed ahead of the one being inferred. At most ``PREFETCH_CHUNKS + 1``
#: chunk buffers of ``(batch_size, S, S, 3)`` float32 are alive at any time.
PREFETCH_CHUNKS = 2
ENGINES = ("local", "dask")

# One scored row before formatting: (path, p_all or None, error or None)
_Row = tuple[str, float | None, str | None]


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

    @property
    def exit_status(self) -> int:
        """0 when every row in the output has a probability, 3 when some carry errors."""
        return 3 if (self.n_errors or self.n_previous_errors) else 0

    def __str__(self) -> str:
        prev = f" ({self.n_previous_errors} earlier)" if self.n_previous_errors else ""
        skipped = f", {self.n_skipped} already done" if self.n_skipped else ""
        return (
            f"scored {self.n_scored}, errors {self.n_errors}{prev}{skipped} in "
            f"{self.seconds:.1f} s ({self.images_per_second:.1f} images/s, engine "
            f"{self.engine}) -> {self.out}"
        )


# ---------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------


def _path_key(path: str) -> str:
    """Identity of a path for de-duplication and resume (absolute, normalised)."""
    return os.path.normcase(os.path.abspath(path))


def _walk_images(folder: str) -> Iterator[str]:
    """Image files under ``folder``, recursively; names sorted within each folder."""
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                yield os.path.join(root, name)


def _read_manifest(csv_path: str) -> Iterator[str]:
    """Paths listed in a CSV manifest, relative ones taken from the CSV's folder."""
    base = os.path.dirname(csv_path)
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return
        lowered = [h.strip().lower() for h in header]
        col = next((lowered.index(c) for c in MANIFEST_COLUMNS if c in lowered), None)
        if col is None:
            raise DatasetError(
                f"CSV manifest '{csv_path}' has no column naming the image files; expected "
                f"one of {list(MANIFEST_COLUMNS)}, received columns {header}."
            )
        for row in reader:
            if col >= len(row) or not row[col].strip():
                continue
            value = row[col].strip()
            yield value if os.path.isabs(value) else os.path.join(base, value)


def _check_input(item: str) -> None:
    if os.path.exists(item):
        return
    if glob.has_magic(item):
        if next(glob.iglob(item, recursive=True), None) is None:
            raise DatasetError(f"The pattern '{item}' matches no files. Check the pattern.")
        return
    raise DatasetError(
        f"Input '{item}' does not exist. Pass image files, folders (searched recursively), "
        f"glob patterns (quote them in the shell) or CSV manifests."
    )


def _expand(item: str) -> Iterator[str]:
    if os.path.isdir(item):
        yield from _walk_images(item)
    elif os.path.exists(item):
        if item.lower().endswith(".csv"):
            yield from _read_manifest(item)
        else:
            yield item
    else:  # a glob (checked up front by _check_input)
        for match in sorted(glob.iglob(item, recursive=True)):
            if os.path.isdir(match):
                yield from _walk_images(match)
            else:
                yield match


def iter_inputs(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> Iterator[str]:
    """List the files named by ``inputs`` once, lazily, de-duplicated, keeping order.

    Parameters
    ----------
    inputs : path, glob or iterable of them
        Each item is a folder (image files with :data:`~bmcd.preprocessing.IMAGE_EXTENSIONS`
        found recursively, names sorted, hidden files skipped), a glob pattern (``**``
        allowed; matches sorted), a file (scored whatever its extension), or a CSV manifest
        (``*.csv``; a column named one of :data:`MANIFEST_COLUMNS`, relative paths taken
        from the CSV's folder). Items may be mixed.

    Yields
    ------
    str
        Each file once, in the order given (the first occurrence wins).

    Raises
    ------
    DatasetError
        An item does not exist, a pattern matches nothing, or a manifest has no path
        column. Items are checked before anything is yielded.

    Examples
    --------
    >>> from bmcd.scoring import iter_inputs
    >>> paths = iter_inputs(["slides/", "extra/*.png", "more.csv"])  # doctest: +SKIP
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    items = [os.fspath(i) for i in inputs]
    if not items:
        raise DatasetError("No inputs given: pass image files, folders, globs or CSV manifests.")
    for item in items:
        _check_input(item)
    return _iter_unique(items)


def _iter_unique(items: Sequence[str]) -> Iterator[str]:
    seen: set[str] = set()
    for item in items:
        for path in _expand(item):
            key = _path_key(path)
            if key not in seen:
                seen.add(key)
                yield path


# ---------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------


def _truncate_torn_line(path: Path) -> int:
    """Cut a partial last line (a run killed mid-write); return the new size."""
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as f:
        end, pos, block = 0, size, 1 << 16
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            idx = f.read(pos - start).rfind(b"\n")
            if idx >= 0:
                end = start + idx + 1
                break
            pos = start
        if end < size:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    return end


def read_scored_paths(out: str | os.PathLike) -> tuple[set[str], int]:
    """Paths already in a scoring CSV, and how many of those rows carry an error.

    A partial last line left by a killed run is removed from the file first.

    Raises
    ------
    DatasetError
        The file is not a bmcd scoring CSV (wrong header).
    """
    path = Path(out)
    if _truncate_torn_line(path) == 0:
        return set(), 0
    done: set[str] = set()
    n_errors = 0
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if tuple(header or ()) != OUTPUT_COLUMNS:
            raise DatasetError(
                f"'{path}' is not a bmcd scoring CSV: expected the header "
                f"{','.join(OUTPUT_COLUMNS)}, received {','.join(header or [])!r}. Choose "
                f"another --out."
            )
        for row in reader:
            if not row:
                continue
            done.add(_path_key(row[0]))
            if len(row) >= 5 and row[4]:
                n_errors += 1
    return done, n_errors


class _CsvSink:
    """Appends formatted rows chunk by chunk, each chunk flushed and fsynced.

    The file is opened on the first write (or by :meth:`finish`), so a run that fails
    before scoring anything (no scheduler, unreadable inputs) leaves no output behind.
    """

    def __init__(self, path: Path, threshold: float, write_header: bool):
        self.path = path
        self.threshold = float(threshold)
        self._thr_text = str(self.threshold)
        self._write_header = write_header
        self._f: io.TextIOBase | None = None
        self.n_scored = 0
        self.n_errors = 0

    def _write(self, text: str) -> None:
        if self._f is None:
            self._f = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115
            if self._write_header:
                text = ",".join(OUTPUT_COLUMNS) + "\n" + text
        self._f.write(text)
        self._f.flush()
        os.fsync(self._f.fileno())

    def write_rows(self, rows: Sequence[_Row]) -> None:
        if not rows:
            return
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        for path, p, err in rows:
            if err is None:
                label = "all" if p >= self.threshold else "hem"
                # shortest text that round-trips the float32 ONNX Runtime returned
                w.writerow((path, str(np.float32(p)), label, self._thr_text, ""))
                self.n_scored += 1
            else:
                w.writerow((path, "", "", self._thr_text, _one_line(err)))
                self.n_errors += 1
        self._write(buf.getvalue())

    def finish(self) -> None:
        """Make sure the file exists with its header, even when there was nothing to score."""
        if self._f is None:
            self._write("")

    def close(self) -> None:
        if self._f is not None:
            self._f.close()


def _one_line(message: str) -> str:
    return " ".join(str(message).split()) or "error"


def _prepare_output(out: str | os.PathLike, resume: bool) -> tuple[Path, set[str], int, bool]:
    """Check the output path; returns (path, done keys, earlier errors, write header?)."""
    path = Path(out)
    if path.is_dir():
        raise OutputExistsError(
            f"--out '{path}' is a directory; give a CSV file path such as '{path / 'scores.csv'}'."
        )
    if path.exists():
        if not resume:
            raise OutputExistsError(
                f"The output '{path}' already exists. Pass resume=True (--resume) to skip the "
                f"files already scored in it and carry on, or choose another --out."
            )
        done, n_prev = read_scored_paths(path)
        return path, done, n_prev, path.stat().st_size == 0
    path.parent.mkdir(parents=True, exist_ok=True)
    return path, set(), 0, True


# ---------------------------------------------------------------------------------------
# the pipeline: preprocessing threads overlapping inference
# ---------------------------------------------------------------------------------------


def _batched(it: Iterable[Any], n: int) -> Iterator[list[Any]]:
    it = iter(it)
    while batch := list(itertools.islice(it, n)):
        yield batch


def _preprocess_into(buf: np.ndarray, i: int, path: str, config: PreprocessConfig) -> str | None:
    """Preprocess one file into ``buf[i]``; return None, or the error message."""
    try:
        buf[i] = preprocess(path, config)
        return None
    except ImageReadError as exc:
        return str(exc)
    except Exception as exc:  # one bad file must never stop a run of millions
        return f"{exc.__class__.__name__}: {exc} (while preprocessing '{path}')"


class _Pipeline:
    """Preprocess chunks in a thread pool while the previous chunk is being inferred.

    At most ``prefetch + 1`` chunks (and buffers) are alive: one being inferred and up to
    ``prefetch`` being preprocessed. Buffers are reused, so memory is flat.
    """

    def __init__(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        config: PreprocessConfig,
        *,
        batch_size: int,
        workers: int,
        prefetch: int = PREFETCH_CHUNKS,
    ):
        self.predict = predict
        self.config = config
        self.batch_size = int(batch_size)
        self.workers = int(workers)
        self.prefetch = max(1, int(prefetch))
        self.peak_in_flight = 0
        self.buffers_allocated = 0
        self._free: list[np.ndarray] = []

    def _buffer(self) -> np.ndarray:
        if self._free:
            return self._free.pop()
        S = self.config.image_size
        self.buffers_allocated += 1
        return np.empty((self.batch_size, S, S, 3), dtype=np.float32)

    def run(self, paths: Iterable[str]) -> Iterator[list[_Row]]:
        """Yield the rows of each chunk, in input order."""
        chunks = _batched(paths, self.batch_size)
        pending: collections.deque = collections.deque()
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="bmcd-prep")

        def submit() -> bool:
            batch = next(chunks, None)
            if batch is None:
                return False
            buf = self._buffer()
            futs = [
                pool.submit(_preprocess_into, buf, i, p, self.config) for i, p in enumerate(batch)
            ]
            pending.append((batch, buf, futs))
            return True

        try:
            for _ in range(self.prefetch):
                if not submit():
                    break
            while pending:
                batch, buf, futs = pending.popleft()
                errors = [f.result() for f in futs]
                # start preprocessing the next chunk before this one is inferred
                submit()
                self.peak_in_flight = max(self.peak_in_flight, len(pending) + 1)
                yield self._infer(batch, buf, errors)
                self._free.append(buf)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _infer(self, batch: list[str], buf: np.ndarray, errors: list[str | None]) -> list[_Row]:
        n = len(batch)
        ok = [i for i, e in enumerate(errors) if e is None]
        p = np.empty(n, dtype=np.float32)
        if len(ok) == n:
            p[:] = self.predict(buf[:n])
        elif ok:
            p[ok] = self.predict(buf[ok])
        return [
            (path, float(p[i]), None) if err is None else (path, None, err)
            for i, (path, err) in enumerate(zip(batch, errors, strict=True))
        ]


# ---------------------------------------------------------------------------------------
# model resolution
# ---------------------------------------------------------------------------------------


def default_local_threads() -> int:
    """Default ONNX Runtime intra-op threads for the local engine: the CPU count.

    The scoring session is created with thread spinning off, so inference threads that
    wait leave the cores to the preprocessing threads. Measured on 2 cores (MobileNetV2
    int8 at 224 px, 2,000 BMP files): 2 threads without spinning scored 238 images/s
    against 143 with 1 thread (ratio to model-only ORT 0.80 instead of 0.48); with
    spinning on, 2 + 2 threads oversubscribed the cores and was slower than 2 + 1.
    """
    return default_workers()


def _resolve_backend(model: Any, precision: str, intra_op_threads: int | None):
    """An OnnxRuntimeBackend from a path, a backend, or a Classifier holding one."""
    from .runtimes.onnx import OnnxRuntimeBackend

    if isinstance(model, OnnxRuntimeBackend):
        return model
    for attr in ("backend_", "_backend", "backend"):
        inner = getattr(model, attr, None)
        if isinstance(inner, OnnxRuntimeBackend):
            return inner
    if isinstance(model, (str, os.PathLike)):
        return OnnxRuntimeBackend.load(
            model, precision=precision, intra_op_threads=intra_op_threads, allow_spinning=False
        )
    raise TypeError(
        f"score() needs a model directory, an .onnx file, or a model loaded with the ONNX "
        f"backend (Classifier.load(dir, backend='onnx')); received {type(model).__name__}."
    )


def _model_config(backend: Any) -> tuple[PreprocessConfig, float]:
    meta = backend.meta
    return PreprocessConfig.from_dict(meta["preprocess"]), float(meta["threshold"])


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, received {value!r}.")
    return int(value)


def _progress(progress: bool, unit: str, desc: str):
    from tqdm.auto import tqdm

    return tqdm(
        unit=unit,
        desc=desc,
        disable=None if progress else True,
        file=sys.stderr,
        dynamic_ncols=True,
        smoothing=0.1,
    )


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
) -> ScoreSummary:
    """Score image files with an exported ONNX model, streaming rows to a CSV.

    Parameters
    ----------
    model : path or OnnxRuntimeBackend
        A model directory (uses ``model.onnx``, or ``model.int8.onnx`` with
        ``precision="int8"``), a bare ``.onnx`` file carrying bmcd metadata, an
        :class:`~bmcd.runtimes.onnx.OnnxRuntimeBackend`, or a Classifier loaded with the
        ONNX backend.
    inputs : path, glob, or iterable of them
        Folders (recursive), glob patterns, image files and CSV manifests, mixed; see
        :func:`iter_inputs`. Listed once, lazily; duplicates are scored once.
    out : path
        The output CSV (``path,p_all,label,threshold,error``), one row per input.
    batch_size : int
        Files per chunk: the unit of preprocessing, inference and flushing to disk.
    workers : int, optional
        Local engine: preprocessing threads (default: the usable CPU count; they only run
        while chunks are missing, so they never pile up). Dask engine
        without ``scheduler``: worker processes of the local cluster (default: the CPU
        count). Ignored when connecting to a scheduler.
    resume : bool
        Skip the files already in ``out`` (after removing a line torn by a killed run) and
        append the rest. Without it an existing ``out`` raises :class:`OutputExistsError`.
    precision : {"fp32", "int8"}
        Which exported file of a model directory to run.
    engine : {"local", "dask"}
        Where to run; ``"dask"`` needs the ``scale`` extra.
    scheduler : str or distributed.Client, optional
        Dask engine only: a scheduler address (``"tcp://host:8786"``) or a connected
        client. Default: start a ``LocalCluster`` sized to this machine and close it after.
    partition_size : int
        Dask engine: files per task.
    intra_op_threads : int, optional
        ONNX Runtime threads per session. Local default: :func:`default_local_threads`
        (the CPU count minus one, so inference and preprocessing overlap without fighting
        for cores). Dask default: the host's CPU count divided by the Dask threads on that
        host, so workers x threads <= cores. Ignored when ``model`` is already loaded.
    progress : bool
        Show a tqdm progress bar (images/s; partitions for Dask) when stderr is a terminal.
    connect_timeout : float
        Dask engine: seconds to wait for the scheduler (and for its first worker).
    retries : int
        Dask engine: extra attempts for a partition whose task raised.

    Returns
    -------
    ScoreSummary
        Counts, timing and images/s; ``summary.exit_status`` is 0 when every row has a
        probability and 3 when some rows carry errors.

    Raises
    ------
    ModelFormatError
        The model is missing or not a bmcd ONNX model.
    DatasetError
        An input does not exist, or (Dask) a worker cannot read the model or the images.
    OutputExistsError
        ``out`` exists and ``resume`` is False.
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
        raise ValueError(f"engine must be one of {list(ENGINES)}, received {engine!r}.")
    if scheduler is not None and engine != "dask":
        raise ValueError(
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
        from ._deps import optional_import

        optional_import("distributed", purpose="engine='dask'")

    paths = iter_inputs(inputs)  # checks that every input exists, lists nothing yet
    if engine == "local":
        threads = intra_op_threads or default_local_threads()
    else:  # the driver only reads the model's config; workers size their own sessions
        threads = 1
    backend = _resolve_backend(model, precision, threads)
    out_path, done, n_prev, header = _prepare_output(out, resume)

    n_total = 0
    n_skipped = 0

    def todo() -> Iterator[str]:
        nonlocal n_total, n_skipped
        for p in paths:
            n_total += 1
            if done and _path_key(p) in done:
                n_skipped += 1
                continue
            yield p

    config, threshold = _model_config(backend)
    sink = _CsvSink(out_path, threshold, write_header=header)
    t0 = time.perf_counter()
    try:
        if engine == "local":
            pipe = _Pipeline(
                backend.predict_batch,
                config,
                batch_size=batch_size,
                workers=workers or default_workers(),
            )
            with _progress(progress, "img", "scoring") as bar:
                for rows in pipe.run(todo()):
                    sink.write_rows(rows)
                    bar.update(len(rows))
            peak = pipe.peak_in_flight
            extra: dict[str, Any] = {"buffers_allocated": pipe.buffers_allocated}
        else:
            from .scoring_dask import run_dask

            peak, extra = run_dask(
                backend,
                todo(),
                sink,
                batch_size=batch_size,
                partition_size=partition_size,
                workers=workers,
                scheduler=scheduler,
                intra_op_threads=intra_op_threads,
                progress=progress,
                connect_timeout=connect_timeout,
                retries=retries,
            )
        sink.finish()
    finally:
        sink.close()
    seconds = time.perf_counter() - t0
    done_now = sink.n_scored + sink.n_errors
    return ScoreSummary(
        n_total=n_total,
        n_scored=sink.n_scored,
        n_errors=sink.n_errors,
        n_skipped=n_skipped,
        seconds=seconds,
        images_per_second=done_now / seconds if seconds > 0 else 0.0,
        out=out_path,
        engine=engine,
        n_previous_errors=n_prev,
        peak_chunks_in_flight=peak,
        extra=extra,
    )
