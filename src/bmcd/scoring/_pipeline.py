"""The scoring pipeline both engines run: preprocessing threads overlapping inference.

:class:`Pipeline` cuts a stream of paths into chunks, preprocesses the next chunks in a
thread pool (the one image path, :func:`bmcd.preprocessing.preprocess`) while the current
chunk is inferred, and yields one :data:`Row` per path, in input order. The local engine
runs it in this process; the Dask engine runs it inside each task (docs/scaling.rst).
"""

from __future__ import annotations

import collections
import itertools
import queue
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from ..errors import ConfigError, ImageReadError
from ..preprocessing import PreprocessConfig, preprocess_with_info

__all__ = ["Pipeline", "Row", "PREFETCH_CHUNKS", "batched", "progress_bar"]

#: Chunks preprocessed ahead of the one being inferred. At most ``PREFETCH_CHUNKS + 1``
#: chunk buffers of ``(batch_size, S, S, 3)`` float32 are alive at any time.
PREFETCH_CHUNKS = 2

#: One scored row before formatting: ``(path, p_all or None, error or None, no_cell)``;
#: ``no_cell`` is :attr:`bmcd.preprocessing.PreprocessInfo.no_cell` (no foreground, or one too small for a cell).
Row = tuple[str, float | None, str | None, bool]

_T = TypeVar("_T")


def batched(it: Iterable[_T], n: int) -> Iterator[list[_T]]:
    """Consecutive lists of ``n`` items (the last one shorter), pulled lazily."""
    it = iter(it)
    while batch := list(itertools.islice(it, n)):
        yield batch


def progress_bar(progress: bool, unit: str, desc: str) -> Any:
    """A tqdm bar on stderr, shown only when ``progress`` and stderr is a terminal."""
    from tqdm.auto import tqdm

    return tqdm(
        unit=unit,
        desc=desc,
        disable=None if progress else True,
        file=sys.stderr,
        dynamic_ncols=True,
        smoothing=0.1,
    )


def _preprocess_into(
    buf: np.ndarray, i: int, path: str, config: PreprocessConfig
) -> tuple[str | None, bool]:
    """Preprocess one file into ``buf[i]``; return (None or the error message, no_cell)."""
    try:
        _, info = preprocess_with_info(path, config, out=buf[i])
        return None, info.no_cell
    except ImageReadError as exc:
        return str(exc), False
    except Exception as exc:  # one bad file must never stop a run of millions
        return f"{exc.__class__.__name__}: {exc} (while preprocessing '{path}')", False


class Pipeline:
    """Preprocess chunks in a thread pool while earlier chunks are being inferred.

    At most ``prefetch + 1`` chunks (and buffers) are alive: up to ``len(predict)`` being
    inferred at once, the others being preprocessed. Buffers are reused, so memory is flat.

    Parameters
    ----------
    predict : callable or sequence of callables
        ``(n, S, S, 3)`` float32 batch -> ``(n,)`` p(all), e.g.
        :meth:`bmcd.runtimes.onnx.OnnxRuntimeBackend.predict_batch`. With several, that
        many chunks are inferred at once, each by one of them (e.g. two single-thread
        sessions on two cores: single-thread inference wastes less CPU on synchronisation
        than one two-thread call; docs/benchmarks.rst). Each callable is used by one
        thread at a time.
    config : PreprocessConfig
        The model's preprocessing.
    batch_size : int
        Files per chunk.
    workers : int
        Preprocessing threads.
    prefetch : int
        Chunks alive besides the oldest one (preprocessed ahead, or inferred at once).

    Attributes
    ----------
    peak_in_flight : int
        The most chunks alive at once during :meth:`run`.
    buffers_allocated : int
        Chunk buffers allocated (reused afterwards).
    """

    def __init__(
        self,
        predict: Callable[[np.ndarray], np.ndarray] | Sequence[Callable[[np.ndarray], np.ndarray]],
        config: PreprocessConfig,
        *,
        batch_size: int,
        workers: int,
        prefetch: int = PREFETCH_CHUNKS,
    ):
        self.predictors = list(predict) if isinstance(predict, Sequence) else [predict]
        if not self.predictors:
            raise ConfigError("Pipeline needs at least one predict callable, received none.")
        self.predict = self.predictors[0]
        self.config = config
        self.batch_size = int(batch_size)
        self.workers = int(workers)
        self.prefetch = max(1, int(prefetch), len(self.predictors) - 1)
        self.peak_in_flight = 0
        self.buffers_allocated = 0
        self._free: list[np.ndarray] = []

    def _buffer(self) -> np.ndarray:
        if self._free:
            return self._free.pop()
        S = self.config.image_size
        self.buffers_allocated += 1
        return np.empty((self.batch_size, S, S, 3), dtype=np.float32)

    def run(self, paths: Iterable[str]) -> Iterator[list[Row]]:
        """Yield the rows of each chunk, in input order."""
        chunks = batched(paths, self.batch_size)
        # entries: [paths, buffer, preprocessing futures, inference future or None]
        alive: collections.deque = collections.deque()
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="bmcd-prep")
        n_infer = len(self.predictors)
        infer_pool = (
            ThreadPoolExecutor(max_workers=n_infer, thread_name_prefix="bmcd-infer")
            if n_infer > 1
            else None
        )
        idle: queue.SimpleQueue = queue.SimpleQueue()
        for fn in self.predictors:
            idle.put(fn)

        held = 0  # chunks taken off ``alive`` whose buffer is still in use

        def submit() -> bool:
            if len(alive) + held > self.prefetch:
                return False
            batch = next(chunks, None)
            if batch is None:
                return False
            buf = self._buffer()
            futs = [
                pool.submit(_preprocess_into, buf, i, p, self.config) for i, p in enumerate(batch)
            ]
            alive.append([batch, buf, futs, None])
            self.peak_in_flight = max(self.peak_in_flight, len(alive) + held)
            return True

        def infer(
            batch: list[str], buf: np.ndarray, results: list[tuple[str | None, bool]]
        ) -> list[Row]:
            fn = idle.get()  # one chunk per predictor at a time
            try:
                return self._infer(fn, batch, buf, results)
            finally:
                idle.put(fn)

        try:
            while submit():
                pass
            while alive:
                if infer_pool is None:
                    batch, buf, futs, _ = alive.popleft()
                    held = 1
                    results = [f.result() for f in futs]
                    submit()  # start preprocessing the next chunk before this one is inferred
                    yield self._infer(self.predict, batch, buf, results)
                    self._free.append(buf)
                    held = 0
                    continue
                # start inferring the oldest preprocessed chunks, up to one per predictor
                running = sum(1 for e in alive if e[3] is not None)
                for entry in list(alive):
                    if running >= n_infer:
                        break
                    if entry[3] is None:
                        results = [f.result() for f in entry[2]]
                        entry[3] = infer_pool.submit(infer, entry[0], entry[1], results)
                        running += 1
                batch, buf, _, fut = alive.popleft()
                rows = fut.result()
                self._free.append(buf)
                submit()
                yield rows
        finally:
            for entry in alive:
                if entry[3] is not None:
                    entry[3].cancel()
            if infer_pool is not None:
                infer_pool.shutdown(wait=True, cancel_futures=True)
            pool.shutdown(wait=True, cancel_futures=True)

    def _infer(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        batch: list[str],
        buf: np.ndarray,
        results: list[tuple[str | None, bool]],
    ) -> list[Row]:
        n = len(batch)
        errors = [e for e, _ in results]
        ok = [i for i, e in enumerate(errors) if e is None]
        p = np.empty(n, dtype=np.float32)
        if len(ok) == n:
            p[:] = predict(buf[:n])
        elif ok:
            p[ok] = predict(buf[ok])
        return [
            (path, float(p[i]), None, no_cell) if err is None else (path, None, err, False)
            for i, (path, (err, no_cell)) in enumerate(zip(batch, results, strict=True))
        ]
