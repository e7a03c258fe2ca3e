"""Micro-batching: single images submitted together run as one inference call.

Requests that arrive within ``max_wait_ms`` of the first waiting image (or until
``max_batch`` images wait) are stacked into one batch and run in a worker thread, so the
event loop stays free to accept and decode the next requests while the model runs. While
one batch runs, the next one gathers. The wait is adaptive: callers :meth:`announce` an
image when they start decoding it, and a batch waits only while announced images are still
on their way, so a lone request is never delayed by ``max_wait_ms``. See
``docs/serving.rst``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError, ServiceError

__all__ = ["MicroBatcher", "BatchStats"]


@dataclass
class BatchStats:
    """Counters of a :class:`MicroBatcher` (read them for monitoring and tests).

    Attributes
    ----------
    calls : int
        Inference calls made (one per batch).
    images : int
        Images scored.
    max_seen : int
        The largest batch so far.
    sizes : dict
        Batch size -> number of calls with that size.
    """

    calls: int = 0
    images: int = 0
    max_seen: int = 0
    sizes: dict[int, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "calls": self.calls,
            "images": self.images,
            "max_batch_seen": self.max_seen,
            "mean_batch": round(self.images / self.calls, 3) if self.calls else 0.0,
            "sizes": {str(k): v for k, v in sorted(self.sizes.items())},
        }


class MicroBatcher:
    """Gather single preprocessed images into batches for one predict function.

    Parameters
    ----------
    predict : callable
        ``predict(x) -> p`` for a float32 batch ``(n, S, S, 3)``; returns ``n`` values.
        It runs in one dedicated worker thread (ONNX Runtime parallelises inside a call).
    max_batch : int
        The most images in one call; 1 disables batching.
    max_wait_ms : float
        How long the first waiting image may wait for others to join it.

    Examples
    --------
    >>> b = MicroBatcher(backend.predict_batch, max_batch=32, max_wait_ms=5)  # doctest: +SKIP
    >>> p = await b.submit(x)                                                  # doctest: +SKIP
    """

    def __init__(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
    ):
        if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
            raise ConfigError(f"max_batch must be an int >= 1; received {max_batch!r}.")
        if not isinstance(max_wait_ms, (int, float)) or isinstance(max_wait_ms, bool) or not (
            0 <= max_wait_ms <= 10_000
        ):
            raise ConfigError(
                f"max_wait_ms must be a number of milliseconds in [0, 10000]; received "
                f"{max_wait_ms!r}."
            )
        self.predict = predict
        self.max_batch = int(max_batch)
        self.max_wait_ms = float(max_wait_ms)
        self.stats = BatchStats()
        self._lock = threading.Lock()
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._incoming = 0  # announced images not yet submitted (being decoded)
        self._arrived: asyncio.Event | None = None

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Start the gathering task on the running loop (idempotent)."""
        if self._task is not None and not self._task.done():
            return
        self._queue = asyncio.Queue()
        self._incoming = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bmcd-infer")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="bmcd-batcher")

    async def stop(self) -> None:
        """Stop gathering; waiting submissions fail with ``RuntimeError``."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        if self._queue is not None:
            while not self._queue.empty():
                entry = self._queue.get_nowait()
                if entry is None:
                    continue
                _, fut = entry
                if not fut.done():
                    fut.set_exception(RuntimeError("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    # -- use ----------------------------------------------------------------------------
    def announce(self) -> None:
        """Say that an image is being prepared and will be submitted (or withdrawn) soon."""
        self._incoming += 1

    def withdraw(self) -> None:
        """Cancel one :meth:`announce` (the image failed before it could be submitted)."""
        self._incoming = max(0, self._incoming - 1)
        if self._queue is not None:
            self._queue.put_nowait(None)  # wakes a gathering batch to re-check what is coming

    async def submit(self, x: np.ndarray, *, announced: bool = False) -> float:
        """p(all) for one preprocessed image ``(S, S, 3)``, scored in some batch.

        ``announced=True`` settles an earlier :meth:`announce` for this image.
        """
        if self._task is None or self._queue is None:
            raise ServiceError("MicroBatcher.start() was not called (the app's lifespan starts it).")
        if announced:
            self._incoming = max(0, self._incoming - 1)  # the put below wakes the gatherer
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put((x, fut))
        return await fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        q = self._queue
        assert q is not None
        while True:
            first = await q.get()
            if first is None:  # a wake-up from withdraw(), nothing to score
                continue
            items = [first]
            deadline = loop.time() + self.max_wait_ms / 1000.0
            while len(items) < self.max_batch:
                # take what is already waiting without yielding to the clock
                try:
                    got = q.get_nowait()
                    if got is not None:
                        items.append(got)
                    continue
                except asyncio.QueueEmpty:
                    pass
                left = deadline - loop.time()
                if left <= 0 or self._incoming == 0:
                    break  # out of time, or nothing announced is on its way
                try:
                    got = await asyncio.wait_for(q.get(), timeout=left)
                except (asyncio.TimeoutError, TimeoutError):
                    break
                if got is not None:
                    items.append(got)
            items = [(x, f) for x, f in items if not f.cancelled()]
            if not items:
                continue
            batch = np.stack([x for x, _ in items]).astype(np.float32, copy=False)
            try:
                p = await loop.run_in_executor(self._executor, self._call, batch)
            except Exception as exc:  # the model failed: every waiting image gets the error
                for _, f in items:
                    if not f.done():
                        f.set_exception(exc)
                continue
            for (_, f), value in zip(items, p, strict=True):
                if not f.done():
                    f.set_result(float(value))

    def _call(self, batch: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        p = np.asarray(self.predict(batch), dtype=np.float64).reshape(len(batch))
        n = len(batch)
        with self._lock:
            s = self.stats
            s.calls += 1
            s.images += n
            s.max_seen = max(s.max_seen, n)
            s.sizes[n] = s.sizes.get(n, 0) + 1
            self.last_call_s = time.perf_counter() - t0
        return p
