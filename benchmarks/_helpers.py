"""Helpers shared by the benchmark suites (timing itself is pytest-benchmark's)."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

from bmcd.bench import process_cpu_seconds

IMAGE_SIZE = 224
BATCH_SIZE = 32
ARCHS = ("mobilenet_v2", "resnet50")

#: Results shared between tests of one session (for the ratios), and the summary rows.
RESULTS: dict[tuple, float] = {}
SUMMARY: list[tuple[str, str, str]] = []


class Rotation:
    """A benchmark target that gets a different input on every round.

    ``setup`` (passed to ``benchmark.pedantic``) picks the next input index; the call runs
    ``fn`` on that input and keeps its output per index for the parity checks after
    timing. Indexing into a pre-built list keeps the selection out of the timed call.
    """

    def __init__(self, fn: Callable[[Any], Any], inputs: Sequence[Any]):
        if not inputs:
            raise ValueError("Rotation needs at least one input.")
        self.fn = fn
        self.inputs = inputs
        self.outputs: dict[int, Any] = {}
        self.cpu: list[float] = []  # CPU seconds per call, warm-up included
        self._next = 0

    def setup(self) -> tuple[tuple[int], dict]:
        i = self._next % len(self.inputs)
        self._next += 1
        return (i,), {}

    def __call__(self, i: int) -> Any:
        c0 = process_cpu_seconds()
        out = self.fn(self.inputs[i])
        self.cpu.append(process_cpu_seconds() - c0)
        self.outputs[i] = out
        return out

    def cpu_ms_per_item(self, items_per_call: int) -> float | None:
        """Median CPU milliseconds (all threads of this process) per item per call."""
        if not self.cpu:
            return None
        return 1000.0 * statistics.median(self.cpu) / items_per_call


def run_rotation(benchmark, rotation: Rotation, *, rounds: int, warmup_rounds: int = 1) -> None:
    """``benchmark.pedantic`` over a :class:`Rotation` (one call per round)."""
    benchmark.pedantic(
        rotation,
        setup=rotation.setup,
        rounds=rounds,
        warmup_rounds=warmup_rounds,
        iterations=1,
    )


def median_seconds(benchmark) -> float | None:
    """The median round time, or None when benchmarking is disabled."""
    stats = getattr(benchmark, "stats", None)
    if stats is None:
        return None
    return float(stats.stats.median)


def record(benchmark, suite: str, name: str, images: int | None, **extra: Any) -> float | None:
    """Put images/s (from the median round) and ``extra`` into ``extra_info``.

    ``images`` is the number of images one round handles; None for benchmarks that do not
    process images (the summary then shows the median round time). Returns images/s.
    """
    med = median_seconds(benchmark)
    ips = images / med if (med and images) else None
    if ips is not None:
        benchmark.extra_info["images_per_second"] = round(ips, 2)
        benchmark.extra_info["ms_per_image"] = round(1000 * med / images, 3)
    for k, v in extra.items():
        benchmark.extra_info[k] = round(v, 6) if isinstance(v, float) else v
    if med is None:
        text = "(timing disabled)"
    elif ips is not None:
        text = f"{ips:9.1f} img/s"
    else:
        text = f"{1000 * med:9.1f} ms"
    notes = ", ".join(
        f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
        for k, v in extra.items()
        if v is not None
    )
    SUMMARY.append((suite, name, f"{text}  {notes}".rstrip()))
    return ips
