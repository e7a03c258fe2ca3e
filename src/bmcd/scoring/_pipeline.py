"""The scoring pipeline both engines run: preprocessing threads overlapping inference.

:class:`Pipeline` cuts a stream of paths into chunks, preprocesses the next chunks in a
thread pool (the one image path, :func:`bmcd.preprocessing.preprocess`) while the current
chunk is inferred, and yields one :data:`Row` per path, in input order. The local engine
runs it in this process; the Dask engine runs it inside each task (docs/scaling.rst).
"""

from __future__ import annotations

import collections
import itertools
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from ..errors import ImageReadError
from ..preprocessing import PreprocessConfig, preprocess_with_info

__all__ = ["Pipeline", "Row", "PREFETCH_CHUNKS", "batched", "progress_bar"]

#: Chunks preprocessed ahead of the one being inferred. At most ``PREFETCH_CHUNKS + 1``
#: chunk buffers of ``(batch_size, S, S, 3)`` float32 are alive at any time.
PREFETCH_CHUNKS = 2

#: One scored row before formatting: ``(path, p_all or None, error or None)``.
Row = tuple[str, float | None, str | None]

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


def _preprocess_into(buf: np.ndarray, i: int, path: str, config: PreprocessConfig) -> str | None:
    """Preprocess one file into ``buf[i]``; return None, or the error message."""
    try:
        preprocess_with_info(path, config, out=buf[i])  # straight into the chunk buffer
        return None
    except ImageReadError as exc:
        return str(exc)
    except Exception as exc:  # one bad file must never stop a run of millions
        return f"{exc.__class__.__name__}: {exc} (while preprocessing '{path}')"


class Pipeline:
    """Preprocess chunks in a thread pool while the previous chunk is being inferred.

    At most ``prefetch + 1`` chunks (and buffers) are alive: one being inferred and up to
    ``prefetch`` being preprocessed. Buffers are reused, so memory is flat.

    Parameters
    ----------
    predict : callable
        ``(n, S, S, 3)`` float32 batch -> ``(n,)`` p(all), e.g.
        :meth:`bmcd.runtimes.onnx.OnnxRuntimeBackend.predict_batch`.
    config : PreprocessConfig
        The model's preprocessing.
    batch_size : int
        Files per chunk.
    workers : int
        Preprocessing threads.
    prefetch : int
        Chunks preprocessed ahead of the one being inferred.

    Attributes
    ----------
    peak_in_flight : int
        The most chunks alive at once during :meth:`run`.
    buffers_allocated : int
        Chunk buffers allocated (reused afterwards).
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

    def run(self, paths: Iterable[str]) -> Iterator[list[Row]]:
        """Yield the rows of each chunk, in input order."""
        chunks = batched(paths, self.batch_size)
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

    def _infer(self, batch: list[str], buf: np.ndarray, errors: list[str | None]) -> list[Row]:
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
