"""Timing: repeated calls with warm-up and fresh inputs, alone or interleaved round-robin.

Part of :mod:`bmcd.bench` (see docs/benchmarks.rst).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ._machine import process_cpu_seconds


@dataclass
class Timing:
    """Wall-clock times of repeated calls on batches of ``batch_size`` images.

    Attributes
    ----------
    name : str
    batch_size : int
    times : list of float
        Seconds per call, warm-up excluded.
    cpu_seconds : float, optional
        CPU time (user + system, all threads of this process) spent over the timed calls.
        Unlike wall time it barely changes when other processes compete for the cores, so
        ratios of CPU time per image stay meaningful on a busy machine (spinning threads
        count as cost).

    Examples
    --------
    >>> t = Timing("demo", batch_size=4, times=[0.1, 0.2, 0.1])
    >>> t.median, t.images_per_second
    (0.1, 40.0)
    """

    name: str
    batch_size: int
    times: list[float] = field(default_factory=list)
    cpu_seconds: float | None = None

    @property
    def rounds(self) -> int:
        return len(self.times)

    @property
    def median(self) -> float:
        return float(statistics.median(self.times)) if self.times else float("nan")

    @property
    def minimum(self) -> float:
        return float(min(self.times)) if self.times else float("nan")

    @property
    def images_per_second(self) -> float:
        """``batch_size / median`` (the median resists outliers from other processes)."""
        m = self.median
        return self.batch_size / m if m > 0 else float("nan")

    @property
    def ms_per_image(self) -> float:
        return 1000.0 * self.median / self.batch_size

    @property
    def cpu_ms_per_image(self) -> float | None:
        """CPU milliseconds (all threads) per image over the timed calls."""
        if self.cpu_seconds is None or not self.times:
            return None
        return 1000.0 * self.cpu_seconds / (self.rounds * self.batch_size)

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "rounds": self.rounds,
            "median_s": self.median,
            "min_s": self.minimum,
            "images_per_second": self.images_per_second,
            "ms_per_image": self.ms_per_image,
            "cpu_ms_per_image": self.cpu_ms_per_image,
        }


def time_calls(
    fn: Callable[[Any], Any],
    inputs: Sequence[Any],
    *,
    batch_size: int,
    seconds: float = 3.0,
    min_rounds: int = 3,
    max_rounds: int = 10_000,
    warmup: int = 1,
    name: str = "",
) -> tuple[Timing, dict[int, Any]]:
    """Call ``fn`` on ``inputs`` in rotation until ``seconds`` have passed.

    Each call gets the next input (fresh data every round, so no result or cache line can
    be reused). ``warmup`` calls run first and are not timed. At least ``min_rounds``
    timed calls are made even when they take longer than ``seconds``.

    Returns
    -------
    timing : Timing
    outputs : dict
        ``{input index: output of the first timed call on it}``, for parity checks of the
        very calls that were timed.
    """
    if not inputs:
        raise ConfigError("time_calls needs at least one input; received an empty sequence.")
    n = len(inputs)
    for i in range(max(0, int(warmup))):
        fn(inputs[i % n])
    timing = Timing(name, batch_size)
    outputs: dict[int, Any] = {}
    cpu0 = process_cpu_seconds()
    start = time.perf_counter()
    r = 0
    while r < max_rounds and (r < min_rounds or time.perf_counter() - start < seconds):
        i = r % n
        x = inputs[i]
        t0 = time.perf_counter()
        y = fn(x)
        timing.times.append(time.perf_counter() - t0)
        if i not in outputs:
            outputs[i] = y
        r += 1
    cpu1 = process_cpu_seconds()
    if cpu0 is not None and cpu1 is not None:
        timing.cpu_seconds = cpu1 - cpu0
    return timing, outputs


def time_interleaved(
    fns: dict[str, Callable[[Any], Any]],
    inputs: Sequence[Any],
    *,
    batch_size: int,
    seconds: float = 12.0,
    min_rounds: int = 3,
    max_rounds: int = 10_000,
    warmup: int = 1,
    settle: float = 0.02,
) -> dict[str, tuple[Timing, dict[int, Any]]]:
    """Like :func:`time_calls` for several functions, one call of each per round.

    Round ``r`` calls every function in turn on input ``r % len(inputs)``. Rounds go on
    until ``seconds`` have passed in total (at least ``min_rounds``). Side by side like this,
    load from other processes falls on all functions alike, which keeps their ratios
    meaningful on a shared machine. Before each timed call the loop sleeps ``settle``
    seconds (untimed), so that threads the previous backend left spinning (ONNX Runtime and
    TensorFlow thread pools spin briefly before they sleep) do not slow the next one.
    Returns ``{name: (timing, outputs)}``.
    """
    if not inputs:
        raise ConfigError(
            "time_interleaved needs at least one input; received an empty sequence."
        )
    n = len(inputs)
    for i in range(max(0, int(warmup))):
        for fn in fns.values():
            fn(inputs[i % n])
    timings = {name: Timing(name, batch_size, cpu_seconds=0.0) for name in fns}
    outputs: dict[str, dict[int, Any]] = {name: {} for name in fns}
    start = time.perf_counter()
    r = 0
    while r < max_rounds and (r < min_rounds or time.perf_counter() - start < seconds):
        i = r % n
        for name, fn in fns.items():
            if settle > 0 and len(fns) > 1:
                time.sleep(settle)
            c0 = process_cpu_seconds()
            t0 = time.perf_counter()
            y = fn(inputs[i])
            timings[name].times.append(time.perf_counter() - t0)
            c1 = process_cpu_seconds()
            if c0 is None or c1 is None:
                timings[name].cpu_seconds = None
            elif timings[name].cpu_seconds is not None:
                timings[name].cpu_seconds += c1 - c0
            outputs[name].setdefault(i, y)
        r += 1
    return {name: (timings[name], outputs[name]) for name in fns}
