"""Throughput benchmarks: the engine behind ``bmcd bench``.

Everything is compared side by side in one process, on the same inputs, with warm-up,
fresh inputs on every call and a parity check beside every timing, so a fast wrong answer
cannot pass:

* **inference (model only)**: Keras ``model.predict``, a compiled ``tf.function`` call,
  ONNX Runtime fp32 and ONNX Runtime int8, at batch ``B`` and at batch 1. Reported as
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

The ``benchmarks/`` pytest-benchmark suites reuse the helpers in this module; timing
there is done by pytest-benchmark.

Examples
--------
>>> from bmcd.bench import run_bench, format_report
>>> report = run_bench(archs=["mobilenet_v2"], image_size=96, seconds=1.0)  # doctest: +SKIP
>>> print(format_report(report))                                            # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__
from .errors import BenchError, BmcdError
from .preprocessing import IMAGE_EXTENSIONS, PreprocessConfig, default_workers, preprocess_batch

__all__ = [
    "BACKENDS",
    "BACKEND_LABELS",
    "PARITY_TOLERANCE",
    "INT8_SANITY_MAX_ABS_DIFF",
    "INT8_SANITY_MIN_CORRELATION",
    "TARGETS",
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
    "load_predictors",
    "check_parity",
    "check_int8_sanity",
    "bench_inference",
    "bench_score",
    "check_score_output",
    "run_bench",
    "evaluate_targets",
    "format_report",
    "default_cache_dir",
]

#: Backends compared by the inference benchmark, in table order.
BACKENDS = ("keras_predict", "tf_function", "ort_fp32", "ort_int8")
BACKEND_LABELS = {
    "keras_predict": "keras predict",
    "tf_function": "tf.function",
    "ort_fp32": "ORT fp32",
    "ort_int8": "ORT int8",
}

#: max |p - p_keras_predict| allowed per backend. tf.function runs the same TensorFlow
#: kernels as predict (only float summation order may differ); the fp32 ONNX graph is
#: checked to the export tolerance of DESIGN.md; int8 changes the arithmetic, so only a
#: sanity bound applies (a broken graph gives differences of order 0.5).
PARITY_TOLERANCE = {"keras_predict": 1e-6, "tf_function": 1e-5, "ort_fp32": 1e-4}
#: Sanity bounds for int8 vs fp32 ONNX Runtime over all timed inputs. Accuracy is gated
#: by the exporter on validation data (DESIGN.md); this only catches a broken graph (a
#: constant or unrelated output). Random-weight benchmark models quantize worse than
#: trained ones (their images differ little in feature space), hence the loose bounds.
INT8_SANITY_MAX_ABS_DIFF = 0.35
INT8_SANITY_MIN_CORRELATION = 0.9
#: Scoring CSV vs the same ONNX session on the same files (float32 round trip through
#: text is exact; only batch composition can change float summation order).
SCORE_PARITY_TOLERANCE = 1e-5

#: The speed targets of the benchmark issue (measured on a 2-core machine), used by
#: :func:`evaluate_targets`. ``key`` names a measured quantity in the report.
TARGETS: tuple[dict[str, Any], ...] = (
    {
        "key": "ratio_fp32_keras:{arch}",
        "what": "ORT fp32 / keras predict @B ({arch})",
        "op": ">=",
        "value": 2.0,
    },
    {
        "key": "ratio_int8_fp32:resnet50",
        "what": "ORT int8 / ORT fp32 @B (resnet50)",
        "op": ">=",
        "value": 2.5,
    },
    {
        "key": "ratio_int8_fp32:mobilenet_v2",
        "what": "ORT int8 / ORT fp32 @B (mobilenet_v2)",
        "op": ">=",
        "value": 2.2,
    },
    {
        "key": "ms_fp32_b1:mobilenet_v2",
        "what": "ORT fp32 mobilenet_v2 @1, ms/image",
        "op": "<=",
        "value": 10.0,
    },
    {
        "key": "ratio_e2e_model:mobilenet_v2:int8",
        "what": "score / model-only ORT, mobilenet_v2 int8",
        "op": ">=",
        "value": 0.85,
    },
)


#: Approximate forward-pass cost in GFLOP per image at 224 px (2 x multiply-accumulates;
#: scales with the square of the image side). Used to put fp32 throughput next to the
#: machine's measured matmul rate.
MODEL_GFLOP_224 = {"resnet50": 7.7, "mobilenet_v2": 0.6}


# ---------------------------------------------------------------------------------------
# the machine
# ---------------------------------------------------------------------------------------

#: /proc/cpuinfo flags that decide which ONNX Runtime (MLAS) kernels run.
ISA_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU feature flags from ``/proc/cpuinfo`` (empty when unavailable)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def _cpu_model(cpuinfo: str | None) -> str:
    if cpuinfo:
        for line in cpuinfo.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Processor", "cpu model") and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def kernel_report(flags: set[str]) -> dict[str, str]:
    """Which ONNX Runtime CPU kernels these CPU flags select.

    MLAS (ONNX Runtime's CPU math library) picks its kernels from CPUID when the process
    starts: the fp32 GEMM / convolution kernels use AVX-512F when present, else AVX2+FMA;
    the quantized (u8 x s8) GEMMs and convolutions use AVX-512 VNNI (``vpdpbusd``) when
    present, else AVX-VNNI, else AVX-512BW / AVX2 emulation (three instructions per
    multiply-add, which is why VNNI matters for int8); u8 x s8 GEMMs additionally go to AMX
    tiles when AMX-INT8 is present, the kernel grants AMX state and the build has AMX
    support.
    """
    if "avx512f" in flags:
        fp32 = "AVX-512F"
    elif "avx2" in flags and "fma" in flags:
        fp32 = "AVX2+FMA"
    elif "avx" in flags:
        fp32 = "AVX"
    else:
        fp32 = "SSE"
    if "avx512_vnni" in flags:
        int8 = "AVX-512 VNNI"
    elif "avx_vnni" in flags:
        int8 = "AVX-VNNI"
    elif "avx512bw" in flags:
        int8 = "AVX-512BW (no VNNI: multiply-add emulated)"
    elif "avx2" in flags:
        int8 = "AVX2 (no VNNI: multiply-add emulated)"
    else:
        int8 = "SSE4.1"
    if "amx_int8" in flags and "amx_tile" in flags:
        int8 += "; AMX-INT8 tiles for u8s8 GEMM"
    return {"fp32": fp32, "int8": int8}


def machine_info() -> dict[str, Any]:
    """CPU model, cores, instruction sets, library versions and the current load.

    Imports onnxruntime (core dependency) but not TensorFlow; the TensorFlow version is
    included only when TensorFlow is already imported.
    """
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        cpuinfo = None
    flags = cpu_flags(cpuinfo)
    info: dict[str, Any] = {
        "cpu_model": _cpu_model(cpuinfo),
        "logical_cores": os.cpu_count(),
        "usable_cores": default_workers(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "bmcd": __version__,
        "isa": [f for f in ISA_FLAGS if f in flags],
        "ort_kernels": kernel_report(flags),
    }
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
        info["ort_providers"] = ort.get_available_providers()
    except ImportError:  # pragma: no cover - core dependency
        info["onnxruntime"] = None
    try:
        import cv2

        info["opencv"] = cv2.__version__
    except ImportError:  # pragma: no cover - core dependency
        pass
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        info["tensorflow"] = getattr(tf, "__version__", None)
    info["loadavg"] = _loadavg()
    return info


def matmul_gflops(n: int = 4096, repeats: int = 3) -> float:
    """Best-of-``repeats`` float32 ``n x n`` matmul rate (numpy's BLAS, all cores), GFLOP/s.

    A practical fp32 ceiling for convolution-heavy networks: a network of G GFLOP per image
    cannot run faster than about ``matmul_gflops() / G`` images/s on this machine.
    """
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(max(1, int(repeats))):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):  # pragma: no cover
        return None


# ---------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------


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
        raise ValueError("time_calls needs at least one input.")
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
        raise ValueError("time_interleaved needs at least one input.")
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


def process_cpu_seconds() -> float | None:
    """User + system CPU seconds of this process (all threads) and its waited-for children."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return None
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


# ---------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------


def find_image_files(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BenchError(f"Image folder '{folder}' does not exist or is not a folder.")
    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise BenchError(f"No image files ({', '.join(IMAGE_EXTENSIONS)}) found under '{folder}'.")
    return files


def source_images(
    folder: str | os.PathLike | None, work_dir: str | os.PathLike, n_synthetic: int = 32
) -> tuple[list[Path], str]:
    """Image files to benchmark on: those in ``folder``, else synthetic cells.

    Returns ``(files, description)``. Synthetic cells (450 px, C-NMC-like) are written
    once into ``work_dir/synthetic-cells``.
    """
    if folder is not None:
        files = find_image_files(folder)
        return files, f"{len(files)} images from {folder}"
    out = Path(work_dir) / "synthetic-cells"
    if out.is_dir() and any(out.rglob("*.bmp")):
        files = find_image_files(out)
    else:
        from .synthetic import make_cells

        files = sorted(
            make_cells(out, n_per_class=max(1, n_synthetic // 2), n_subjects=4, progress=False)
        )
    return files, f"{len(files)} synthetic 450 px cells (bmcd.synthetic)"


def dihedral(image: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 rotations / reflections of a square-or-not image (k in 0..7)."""
    out = np.rot90(image, k % 4, axes=(0, 1))
    if k % 8 >= 4:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def make_input_batches(
    images: np.ndarray, batch_size: int, n_batches: int, seed: int = 0
) -> list[np.ndarray]:
    """``n_batches`` distinct preprocessed batches built from ``images`` (m, S, S, 3).

    Each image of a batch is one of the 8 rotations / reflections of a source image, so
    ``8 m`` distinct inputs exist; they are dealt out without repetition until used up.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"images must be a non-empty (m, S, S, 3) array, received {images.shape}.")
    rng = np.random.default_rng(seed)
    pairs = [(i, k) for i in range(len(images)) for k in range(8)]
    order = rng.permutation(len(pairs))
    batches = []
    pos = 0
    for _ in range(int(n_batches)):
        batch = np.empty((batch_size,) + images.shape[1:], np.float32)
        for j in range(batch_size):
            i, k = pairs[order[pos % len(pairs)]]
            pos += 1
            batch[j] = dihedral(images[i], k)
        batches.append(batch)
    return batches


def write_bench_files(
    sources: Sequence[str | os.PathLike], out_dir: str | os.PathLike, n: int
) -> list[Path]:
    """Put ``n`` image files in ``out_dir`` for end-to-end scoring, reusing a complete set.

    The 8 rotations / reflections of each source image are written as distinct BMP files
    (``8 x len(sources)`` at most); the remaining files are symbolic links to them, so
    20,000 files cost no more disk than a few hundred. Every file is decoded for real
    when scored; the operating system's page cache serves repeated reads either way.
    """
    import cv2

    from .preprocessing import read_image

    out = Path(out_dir)
    done = out / ".complete"
    if done.is_file() and done.read_text().strip() == str(n):
        return sorted(out.glob("*.bmp"))
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.bmp"):
        old.unlink()
    n_distinct = min(int(n), 8 * len(sources))
    distinct: list[Path] = []
    for j in range(n_distinct):
        src = sources[j % len(sources)]
        k = j // len(sources)
        image = dihedral(read_image(src), k)
        ok, buf = cv2.imencode(".bmp", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        if not ok:  # pragma: no cover
            raise BenchError(f"Could not encode a BMP from '{src}'.")
        path = out / f"img_{j:06d}.bmp"
        path.write_bytes(buf.tobytes())
        distinct.append(path)
    for j in range(n_distinct, int(n)):
        os.symlink(distinct[j % n_distinct].name, out / f"img_{j:06d}.bmp")
    done.write_text(str(n))
    return sorted(out.glob("*.bmp"))


# ---------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """Where ``bmcd bench`` keeps its random-weight models and files between runs."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bmcd" / "bench"


def _bench_stamp(arch: str, image_size: int) -> dict[str, Any]:
    """What a cached benchmark model depends on; a change rebuilds it."""
    import hashlib
    import inspect

    import onnxruntime as ort

    here = Path(__file__).resolve().parent
    digest = hashlib.sha256(inspect.getsource(build_bench_model).encode())
    for rel in ("runtimes/keras.py", "exporters/onnx.py"):
        try:
            digest.update((here / rel).read_bytes())
        except OSError:
            digest.update(rel.encode())
    return {
        "bmcd": __version__,
        "arch": arch,
        "image_size": int(image_size),
        "onnxruntime": ort.__version__,
        "sources_sha256": digest.hexdigest(),
        "kind": "random weights, BN set from data",
    }


def build_bench_model(
    arch: str,
    image_size: int,
    out_dir: str | os.PathLike,
    calibration: np.ndarray,
    *,
    seed: int = 0,
    int8: bool = True,
) -> Path:
    """Write a benchmark model directory: random weights, exported, quantized.

    1. :func:`bmcd.runtimes.keras.build_model` with ``weights=None``.
    2. The BatchNorm moving statistics are set to those of ``calibration`` (one forward
       pass in training mode with momentum 0), and the output layer is rescaled so the
       logits have a spread of about 1.5. Otherwise a random network gives the same
       output for every image (MobileNetV2's activations vanish), which would make the
       parity checks vacuous. The cost of inference does not change.
    3. ``model.keras`` + ``bmcd.json``, then :func:`bmcd.exporters.onnx.export_onnx`
       (with its parity check) and, when ``int8``,
       :func:`bmcd.exporters.onnx.quantize_int8` with ``force=True``: the accuracy gate
       means nothing for random weights, and int8 speed does not depend on them.
    """
    from .artifact import KERAS_FILE, new_model_json, write_model_json
    from .exporters.onnx import export_onnx, quantize_int8
    from .runtimes.keras import build_model, keras_module

    keras = keras_module("building a benchmark model")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(int(seed))
    model = build_model(arch, int(image_size), weights=None)
    x = np.asarray(calibration, dtype=np.float32)[:32]
    bns = [
        layer
        for layer in model.get_layer("backbone").layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    momenta = [layer.momentum for layer in bns]
    for layer in bns:
        layer.momentum = 0.0
    model(x, training=True)  # moving mean/var := this batch's statistics, layer by layer
    for layer, m in zip(bns, momenta, strict=True):
        layer.momentum = m
    features = keras.Model(model.input, model.get_layer("pool").output)(x, training=False)
    features = np.asarray(features, dtype=np.float64)
    # Output layer along the features' first principal component: with random backbone
    # weights the images differ little from one another, and a random output direction
    # would mostly read noise (int8 rounding would then decide the output).
    dense = model.get_layer("p_all")
    kernel, bias = dense.get_weights()
    centred = features - features.mean(axis=0)
    direction = np.linalg.svd(centred, full_matrices=False)[2][0]
    spread = float((centred @ direction).std()) or 1.0
    kernel = (direction * (1.5 / spread)).reshape(kernel.shape)
    bias = np.full_like(bias, -float(features.mean(axis=0) @ kernel.reshape(-1)))
    dense.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])

    model.save(out / KERAS_FILE)
    meta = new_model_json(
        arch=arch,
        preprocess=PreprocessConfig(image_size=int(image_size)),
        training={
            "note": f"benchmark model: random weights (seed {seed}), BatchNorm statistics "
            "and output scale set from benchmark images; NOT a trained classifier"
        },
    )
    write_model_json(out, meta)
    # the 8 rotations / reflections of the images: more, still realistic, calibration data
    augmented = make_input_batches(x, min(8 * len(x), 128), 1, seed=seed)[0]
    export_onnx(out, samples=x)
    if int8:
        import warnings

        with warnings.catch_warnings():
            # the accuracy gate is expected to mean nothing here; the numbers stay in bmcd.json
            warnings.filterwarnings("ignore", message=".*failed the int8 gate.*")
            quantize_int8(out, calibration=augmented, validation=x, force=True)
    (out / "bench.json").write_text(json.dumps(_bench_stamp(arch, image_size), indent=1))
    return out


def ensure_bench_model(
    arch: str,
    image_size: int,
    cache_dir: str | os.PathLike,
    calibration: np.ndarray,
    *,
    rebuild: bool = False,
    log: Callable[[str], None] | None = None,
) -> Path:
    """A cached :func:`build_bench_model` directory under ``cache_dir/<arch>-<S>``."""
    from .artifact import KERAS_FILE, ONNX_FILE, ONNX_INT8_FILE

    d = Path(cache_dir) / f"{arch}-{int(image_size)}"
    stamp = d / "bench.json"
    files_ok = all((d / f).is_file() for f in (KERAS_FILE, ONNX_FILE, ONNX_INT8_FILE))
    if not rebuild and files_ok and stamp.is_file():
        try:
            if json.loads(stamp.read_text()) == _bench_stamp(arch, image_size):
                return d
        except ValueError:
            pass
    if log:
        log(f"building a random-weight {arch} at {image_size} px in {d} (export + int8) ...")
    if d.exists():
        import shutil

        shutil.rmtree(d)
    t0 = time.perf_counter()
    build_bench_model(arch, image_size, d, calibration)
    if log:
        log(f"  built in {time.perf_counter() - t0:.0f} s")
    return d


def load_keras_model(model_dir: str | os.PathLike):
    """The Keras model of a model directory (registers bmcd's custom layer first)."""
    from .artifact import KERAS_FILE
    from .runtimes.keras import image_preprocess_layer, keras_module

    keras = keras_module("the Keras benchmark rows")
    image_preprocess_layer()
    path = Path(model_dir) / KERAS_FILE
    if not path.is_file():
        raise BenchError(f"'{model_dir}' has no {KERAS_FILE}; the Keras rows need it.")
    return keras.saving.load_model(path, compile=False)


def load_predictors(
    model_dir: str | os.PathLike,
    backends: Iterable[str] = BACKENDS,
    *,
    intra_op_threads: int | None = None,
) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """``{backend: fn(x (n, S, S, 3) float32) -> (n,) p(all)}`` for a model directory.

    ``keras_predict`` is ``model.predict(x, batch_size=len(x))``; ``tf_function`` is
    ``tf.function(model)`` with a fixed input signature (traced once, graph mode);
    ``ort_fp32`` / ``ort_int8`` are :class:`~bmcd.runtimes.onnx.OnnxRuntimeBackend`
    sessions on ``model.onnx`` / ``model.int8.onnx``.
    """
    backends = list(backends)
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise ValueError(f"Unknown benchmark backends {unknown}; expected some of {BACKENDS}.")
    out: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    if "keras_predict" in backends or "tf_function" in backends:
        model = load_keras_model(model_dir)
        if "keras_predict" in backends:

            def keras_predict(x: np.ndarray, _m=model) -> np.ndarray:
                return np.asarray(_m.predict(x, batch_size=len(x), verbose=0)).reshape(len(x))

            out["keras_predict"] = keras_predict
        if "tf_function" in backends:
            import tensorflow as tf

            S = int(model.input.shape[1])
            graph_fn = tf.function(
                lambda t, _m=model: _m(t, training=False),
                input_signature=[tf.TensorSpec((None, S, S, 3), tf.float32)],
            )

            def tf_function(x: np.ndarray, _f=graph_fn) -> np.ndarray:
                return _f(tf.constant(x)).numpy().reshape(len(x))

            out["tf_function"] = tf_function
    from .runtimes.onnx import OnnxRuntimeBackend

    for name, precision in (("ort_fp32", "fp32"), ("ort_int8", "int8")):
        if name in backends:
            be = OnnxRuntimeBackend.load(
                model_dir, precision=precision, intra_op_threads=intra_op_threads
            )
            out[name] = be.predict_batch
    return {b: out[b] for b in backends}


def check_parity(
    name: str,
    got: np.ndarray,
    reference: np.ndarray,
    tolerance: float,
    *,
    what: str = "keras predict",
) -> float:
    """``max |got - reference|``; raises :class:`BenchError` above ``tolerance``."""
    got = np.asarray(got, dtype=np.float64).reshape(-1)
    reference = np.asarray(reference, dtype=np.float64).reshape(-1)
    if got.shape != reference.shape:
        raise BenchError(f"{name}: expected {reference.shape[0]} outputs, received {got.shape[0]}.")
    if not np.all(np.isfinite(got)) or np.any(got < 0) or np.any(got > 1):
        raise BenchError(f"{name}: outputs are not probabilities in [0, 1]: {got[:8]}...")
    diff = float(np.max(np.abs(got - reference))) if got.size else 0.0
    if diff > tolerance:
        raise BenchError(
            f"{name} disagrees with {what}: max |dp| = {diff:.3g} > {tolerance:g}. A fast "
            f"wrong answer does not count; check the exported model."
        )
    return diff


def check_int8_sanity(
    name: str,
    got: Sequence[np.ndarray],
    reference: Sequence[np.ndarray],
    *,
    max_abs_diff: float = INT8_SANITY_MAX_ABS_DIFF,
    min_correlation: float = INT8_SANITY_MIN_CORRELATION,
) -> float:
    """Sanity of int8 outputs against fp32 over several batches; returns max ``|dp|``.

    Raises :class:`BenchError` when an output is not a probability, when max ``|dp|``
    exceeds ``max_abs_diff``, or when the Pearson correlation of all outputs with the fp32
    ones is below ``min_correlation`` (a constant output counts as correlation 0).
    """
    g = np.concatenate([np.asarray(a, np.float64).reshape(-1) for a in got])
    r = np.concatenate([np.asarray(a, np.float64).reshape(-1) for a in reference])
    diff = check_parity(name, g, r, max_abs_diff, what="ORT fp32 (int8 sanity bound)")
    if len(g) >= 3 and np.std(r) > 0:
        corr = float(np.corrcoef(g, r)[0, 1]) if np.std(g) > 0 else 0.0
        if not corr >= min_correlation:
            raise BenchError(
                f"{name}: outputs correlate with ORT fp32 at r = {corr:.3f} over {len(g)} "
                f"images, below {min_correlation}; the int8 model looks broken."
            )
    return diff


# ---------------------------------------------------------------------------------------
# the two benchmarks
# ---------------------------------------------------------------------------------------


def bench_inference(
    predictors: dict[str, Callable[[np.ndarray], np.ndarray]],
    images: np.ndarray,
    *,
    batch_sizes: Sequence[int] = (32, 1),
    seconds: float = 3.0,
    min_rounds: int = 3,
    n_inputs: int = 4,
    warmup: int = 2,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Time every predictor at every batch size on the same fresh inputs; check parity.

    The predictors are timed round-robin (:func:`time_interleaved`), so a burst of load
    from another process slows all of them alike and the ratios stay fair. The reference
    is ``keras_predict`` when present, else the first predictor. Every timed call's output
    on every input is compared with the reference's output on the same input
    (``PARITY_TOLERANCE``; int8 against fp32 with :func:`check_int8_sanity`).
    """
    rows: list[dict[str, Any]] = []
    names = list(predictors)
    for bs in batch_sizes:
        n_batches = n_inputs if bs > 1 else max(n_inputs, 8)
        inputs = make_input_batches(images, bs, n_batches, seed=bs)
        if log:
            log(f"  batch {bs}: {', '.join(BACKEND_LABELS.get(n, n) for n in names)}, interleaved")
        results = time_interleaved(
            predictors,
            inputs,
            batch_size=bs,
            seconds=seconds * len(names),
            min_rounds=min_rounds,
            warmup=warmup,
        )
        ref_name = "keras_predict" if "keras_predict" in results else names[0]
        ref_out = results[ref_name][1]
        base = results[ref_name][0].images_per_second
        for name in names:
            timing, outs = results[name]
            if name == "ort_int8" and "ort_fp32" in results:
                against, tol, what = results["ort_fp32"][1], INT8_SANITY_MAX_ABS_DIFF, "ORT fp32"
                common = [i for i in outs if i in against]
                diffs = [
                    check_int8_sanity(name, [outs[i] for i in common], [against[i] for i in common])
                ]
            else:
                against, tol, what = ref_out, PARITY_TOLERANCE.get(name, 1e-4), ref_name
                diffs = [
                    check_parity(name, outs[i], against[i], tol, what=what)
                    for i in outs
                    if i in against
                ]
            row = {
                "backend": name,
                "label": BACKEND_LABELS.get(name, name),
                **timing.to_dict(),
                "ratio_to_reference": timing.images_per_second / base if base > 0 else None,
                "reference": ref_name,
                "parity_against": what,
                "parity_max_abs_diff": max(diffs) if diffs else None,
                "parity_tolerance": tol,
            }
            rows.append(row)
    return rows


def check_score_output(
    out_csv: str | os.PathLike,
    model_dir: str | os.PathLike,
    files: Sequence[str | os.PathLike],
    *,
    precision: str = "fp32",
    predictor: Callable[[np.ndarray], np.ndarray] | None = None,
    check: int = 16,
    label: str = "score",
) -> float:
    """Check a scoring CSV; return max ``|dp|`` on the checked rows.

    The CSV must hold one row per file of ``files``, in that order, with no error, and the
    ``p_all`` of ``check`` rows spread over the file must equal ``predictor`` (default: a
    fresh ONNX Runtime session of ``precision``) on
    :func:`~bmcd.preprocessing.preprocess_batch` of the same files, within
    ``SCORE_PARITY_TOLERANCE``. Raises :class:`BenchError` otherwise.
    """
    import csv

    from .artifact import read_model_json

    with open(out_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    expected_paths = [os.path.abspath(p) for p in files]
    got_paths = [os.path.abspath(r["path"]) for r in rows]
    n_err = sum(1 for r in rows if r.get("error"))
    if got_paths != expected_paths or n_err:
        raise BenchError(
            f"{label} wrote {len(rows)} rows ({n_err} with errors) for {len(files)} files; "
            f"expected one good row per file, in input order."
        )
    if not rows:
        return 0.0
    idx = np.unique(np.linspace(0, len(rows) - 1, num=min(check, len(rows))).astype(int))
    sample = [rows[i] for i in idx]
    if predictor is None:
        from .runtimes.onnx import OnnxRuntimeBackend

        predictor = OnnxRuntimeBackend.load(model_dir, precision=precision).predict_batch
    config = PreprocessConfig.from_dict(read_model_json(model_dir)["preprocess"])
    expected = predictor(preprocess_batch([r["path"] for r in sample], config))
    got = np.array([float(r["p_all"]) for r in sample])
    return check_parity(
        label, got, expected, SCORE_PARITY_TOLERANCE, what="the same model on preprocess_batch"
    )


def bench_score(
    model_dir: str | os.PathLike,
    files_dir: str | os.PathLike,
    out_csv: str | os.PathLike,
    *,
    precision: str = "int8",
    engine: str = "local",
    batch_size: int = 32,
    workers: int | None = None,
    check: int = 16,
    predictor: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, Any]:
    """Run :func:`bmcd.scoring.score` once over ``files_dir``, timed, and check its CSV.

    The time is the wall clock of the whole call, as a user sees it: listing the files,
    loading the model (and for Dask starting the local cluster), scoring, writing.
    See :func:`check_score_output` for the checks.
    """
    from .scoring import score

    out_csv = Path(out_csv)
    if out_csv.exists():
        out_csv.unlink()
    files = sorted(Path(files_dir).glob("*.bmp"))
    cpu0 = process_cpu_seconds()
    t0 = time.perf_counter()
    summary = score(
        model_dir,
        [str(files_dir)],
        out_csv,
        batch_size=batch_size,
        workers=workers,
        precision=precision,
        engine=engine,
        progress=False,
    )
    wall = time.perf_counter() - t0
    cpu1 = process_cpu_seconds()
    diff = check_score_output(
        out_csv,
        model_dir,
        files,
        precision=precision,
        predictor=predictor,
        check=check,
        label=f"score ({engine}, {precision})",
    )
    return {
        "precision": precision,
        "engine": engine,
        "n_files": len(files),
        "batch_size": batch_size,
        "seconds": wall,
        "images_per_second": len(files) / wall,
        "score_seconds": summary.seconds,
        "cpu_ms_per_image": (
            1000 * (cpu1 - cpu0) / len(files) if files and cpu0 is not None and cpu1 else None
        ),
        "parity_max_abs_diff": diff,
    }


# ---------------------------------------------------------------------------------------
# the whole run
# ---------------------------------------------------------------------------------------


def _has_dask() -> bool:
    import importlib.util

    return importlib.util.find_spec("distributed") is not None


def run_bench(
    archs: Sequence[str] = ("mobilenet_v2", "resnet50"),
    *,
    image_size: int = 224,
    batch_size: int = 32,
    seconds: float = 3.0,
    e2e: bool = True,
    n_files: int = 2000,
    e2e_precisions: Sequence[str] = ("fp32", "int8"),
    dask: bool | None = None,
    images: str | os.PathLike | None = None,
    model: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    rebuild: bool = False,
    backends: Sequence[str] = BACKENDS,
    matmul_size: int = 4096,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the inference and end-to-end benchmarks; return a JSON-serialisable report.

    Parameters
    ----------
    archs : sequence of str
        Architectures to build random-weight models for (ignored with ``model``).
    image_size, batch_size : int
    seconds : float
        Time budget per backend and batch size (at least 3 timed calls each); the
        backends of one batch size are timed interleaved, round by round.
    e2e : bool
        Also time :func:`bmcd.scoring.score` over ``n_files`` files.
    e2e_precisions : sequence of str
        Precisions scored end to end with the local engine.
    dask : bool, optional
        Add a Dask local-cluster row (int8) beside the local engine. Default: when the
        ``scale`` extra is installed.
    images : path, optional
        Folder of images to benchmark on (e.g. real C-NMC BMPs). Default: synthetic cells.
    model : path, optional
        An existing model directory to benchmark instead of random-weight models.
    cache_dir : path, optional
        Where benchmark models and files are kept (default :func:`default_cache_dir`).
    rebuild : bool
        Rebuild cached benchmark models.
    backends : sequence of str
        Subset of :data:`BACKENDS` to time.
    matmul_size : int
        Side of the float32 matmul that measures the fp32 ceiling (:func:`matmul_gflops`).
    log : callable, optional
        Called with progress messages.
    """
    say = log or (lambda _msg: None)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    if dask is None:
        dask = _has_dask()
    t_start = time.perf_counter()
    load_start = _loadavg()
    cpu_start = _cpu_times()
    say("measuring the fp32 matmul rate (the fp32 ceiling) ...")
    gflops = matmul_gflops(matmul_size)
    src_files, src_desc = source_images(images, cache)
    report: dict[str, Any] = {
        "bmcd_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {
            "image_size": int(image_size),
            "batch_size": int(batch_size),
            "seconds": float(seconds),
            "n_files": int(n_files) if e2e else 0,
            "images": src_desc,
        },
        "inference": [],
        "end_to_end": [],
    }
    if model is not None:
        from .artifact import read_model_json

        meta = read_model_json(model)
        models = [(meta["arch"], Path(model), int(meta["image_size"]))]
    else:
        models = [(a, None, int(image_size)) for a in archs]

    for arch, mdir, size in models:
        config = PreprocessConfig(image_size=size)
        imgs = preprocess_batch(src_files[:64], config)
        if mdir is None:
            mdir = ensure_bench_model(arch, size, cache, imgs, rebuild=rebuild, log=say)
        files_present = {
            "keras_predict": (mdir / "model.keras").is_file(),
            "tf_function": (mdir / "model.keras").is_file(),
            "ort_fp32": (mdir / "model.onnx").is_file(),
            "ort_int8": (mdir / "model.int8.onnx").is_file(),
        }
        avail = [b for b in backends if files_present[b]]
        skipped = [BACKEND_LABELS[b] for b in backends if not files_present[b]]
        if skipped:
            say(f"{arch}: skipping {', '.join(skipped)} (model file missing in {mdir})")
        if not avail:
            raise BenchError(f"'{mdir}' has none of model.keras, model.onnx, model.int8.onnx.")
        say(f"{arch} @ {size} px: inference, batch {batch_size} and 1 ...")
        predictors = load_predictors(mdir, avail)
        rows = bench_inference(
            predictors,
            imgs,
            batch_sizes=(batch_size, 1) if batch_size != 1 else (1,),
            seconds=seconds,
            log=say,
        )
        for r in rows:
            r["arch"] = arch
            r["image_size"] = size
        report["inference"].extend(rows)
        if e2e:
            files_dir = cache / f"files-{n_files}"
            write_bench_files(src_files, files_dir, n_files)
            runs = [(p, "local") for p in e2e_precisions if f"ort_{p}" in avail]
            if dask and "ort_int8" in avail:
                runs.append(("int8", "dask"))
            mo_inputs = make_input_batches(imgs, batch_size, 4, seed=7)
            with tempfile.TemporaryDirectory(prefix="bmcd-bench-") as tmp:
                for precision, engine in runs:
                    say(f"  score {n_files} files, {precision}, engine {engine} ...")
                    ort_fn = predictors[f"ort_{precision}"]
                    # model-only ORT right before and right after the run, so that the
                    # ratio compares the same moments of a possibly shared machine
                    before, _ = time_calls(
                        ort_fn, mo_inputs, batch_size=batch_size, seconds=seconds, warmup=1
                    )
                    res = bench_score(
                        mdir,
                        files_dir,
                        Path(tmp) / f"{precision}-{engine}.csv",
                        precision=precision,
                        engine=engine,
                        batch_size=batch_size,
                        predictor=ort_fn,
                    )
                    after, _ = time_calls(
                        ort_fn, mo_inputs, batch_size=batch_size, seconds=seconds, warmup=0
                    )
                    mo = (before.images_per_second + after.images_per_second) / 2
                    res.update(
                        arch=arch,
                        image_size=size,
                        model_only_images_per_second=mo,
                        ratio_to_model_only=res["images_per_second"] / mo if mo else None,
                    )
                    report["end_to_end"].append(res)
        del predictors

    report["machine"] = machine_info()
    # the machine's speed can drift (shared hosts): the ceiling is the faster of two tries
    gflops_end = matmul_gflops(matmul_size)
    report["machine"]["matmul_gflops"] = max(gflops, gflops_end)
    report["machine"]["matmul_gflops_start_end"] = [round(gflops, 1), round(gflops_end, 1)]
    report["contention"] = {
        "loadavg_start": load_start,
        "loadavg_end": _loadavg(),
        "wall_s": time.perf_counter() - t_start,
        **_cpu_share(cpu_start),
    }
    report["targets"] = evaluate_targets(report)
    return report


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    try:
        fields_ = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    vals = [float(v) for v in fields_]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0.0)
    return sum(vals) - idle, sum(vals)


def _cpu_share(start: tuple[float, float] | None) -> dict[str, Any]:
    """How busy the machine was, and how much of that was this process."""
    end = _cpu_times()
    if start is None or end is None:
        return {}
    busy, total = end[0] - start[0], end[1] - start[1]
    if total <= 0:
        return {}
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    ru_c = resource.getrusage(resource.RUSAGE_CHILDREN)
    mine = ru.ru_utime + ru.ru_stime + ru_c.ru_utime + ru_c.ru_stime
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    machine_busy_s = busy / hz
    return {
        "machine_busy_fraction": round(busy / total, 3),
        "other_processes_cpu_s": round(max(0.0, machine_busy_s - mine), 1),
        "this_process_cpu_s": round(mine, 1),
    }


def _measured(report: dict[str, Any]) -> dict[str, float]:
    """The quantities named by :data:`TARGETS` keys, from a report."""
    out: dict[str, float] = {}
    bs = report["settings"]["batch_size"]
    by = {(r["arch"], r["backend"], r["batch_size"]): r for r in report["inference"]}
    for arch in {r["arch"] for r in report["inference"]}:
        k = by.get((arch, "keras_predict", bs))
        f = by.get((arch, "ort_fp32", bs))
        q = by.get((arch, "ort_int8", bs))
        f1 = by.get((arch, "ort_fp32", 1))
        if k and f:
            out[f"ratio_fp32_keras:{arch}"] = f["images_per_second"] / k["images_per_second"]
        if f and q:
            out[f"ratio_int8_fp32:{arch}"] = q["images_per_second"] / f["images_per_second"]
        if f1:
            out[f"ms_fp32_b1:{arch}"] = f1["ms_per_image"]
    for r in report["end_to_end"]:
        if r["engine"] == "local" and r.get("ratio_to_model_only"):
            out[f"ratio_e2e_model:{r['arch']}:{r['precision']}"] = r["ratio_to_model_only"]
    return out


def evaluate_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Compare a report with :data:`TARGETS` (only the quantities it measured)."""
    measured = _measured(report)
    archs = sorted({r["arch"] for r in report["inference"]})
    results = []
    for t in TARGETS:
        keys = [t["key"].format(arch=a) for a in archs] if "{arch}" in t["key"] else [t["key"]]
        for key in keys:
            if key not in measured:
                continue
            arch = key.split(":")[1]
            value = measured[key]
            met = value >= t["value"] if t["op"] == ">=" else value <= t["value"]
            results.append(
                {
                    "what": t["what"]
                    .format(arch=arch)
                    .replace("@B", f"@{report['settings']['batch_size']}"),
                    "target": f"{t['op']} {t['value']:g}",
                    "measured": round(value, 3),
                    "met": bool(met),
                }
            )
    return results


def _fmt(v: Any, spec: str = ".1f") -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return format(v, spec)


def format_report(report: dict[str, Any]) -> str:
    """The human-readable table printed by ``bmcd bench``."""
    m = report.get("machine", {})
    s = report["settings"]
    c = report.get("contention", {})
    lines = [
        f"bmcd {report['bmcd_version']} bench: {s['image_size']} px, batch {s['batch_size']} "
        f"and 1, {s['seconds']:g} s per measurement, inputs: {s['images']}",
        f"machine: {m.get('cpu_model')}, {m.get('usable_cores')} usable cores "
        f"({m.get('logical_cores')} logical); {m.get('platform')}",
        f"onnxruntime {m.get('onnxruntime')}, tensorflow {m.get('tensorflow', '-')}, "
        f"numpy {m.get('numpy')}, opencv {m.get('opencv', '-')}, python {m.get('python')}",
        f"instruction sets: {' '.join(m.get('isa', [])) or 'unknown'}",
        f"ONNX Runtime kernels for these: fp32 {m.get('ort_kernels', {}).get('fp32')}; "
        f"int8 {m.get('ort_kernels', {}).get('int8')}",
    ]
    if c:
        busy = c.get("machine_busy_fraction")
        lines.append(
            f"load average {c.get('loadavg_start')} -> {c.get('loadavg_end')}; other "
            f"processes used {c.get('other_processes_cpu_s', '-')} CPU-s during this "
            f"{c.get('wall_s', 0):.0f} s run (machine busy {_fmt(busy and 100 * busy, '.0f')}%)"
        )
    bs = s["batch_size"]
    lines += [
        "",
        "inference, model only (images/s = batch / median call time; ratio vs keras predict)",
        f"{'arch':13s} {'backend':14s} {f'img/s @{bs}':>10s} {f'x keras @{bs}':>11s} "
        f"{'ms/img @1':>10s} {'x keras @1':>10s} {f'CPU ms/img @{bs}':>15s} {'max|dp|':>9s}"
        "  parity vs",
    ]
    by = {(r["arch"], r["backend"], r["batch_size"]): r for r in report["inference"]}
    for arch in dict.fromkeys(r["arch"] for r in report["inference"]):
        for b in dict.fromkeys(r["backend"] for r in report["inference"] if r["arch"] == arch):
            rb, r1 = by.get((arch, b, bs)), by.get((arch, b, 1))
            main = rb or r1
            lines.append(
                f"{arch:13s} {BACKEND_LABELS.get(b, b):14s} "
                f"{_fmt(rb and rb['images_per_second']):>10s} "
                f"{_fmt(rb and rb['ratio_to_reference'], '.2f'):>11s} "
                f"{_fmt(r1 and r1['ms_per_image'], '.2f'):>10s} "
                f"{_fmt(r1 and r1['ratio_to_reference'], '.2f'):>10s} "
                f"{_fmt(rb and rb.get('cpu_ms_per_image'), '.2f'):>15s} "
                f"{_fmt(main['parity_max_abs_diff'], '.1e'):>9s}  {main['parity_against']}"
            )
    gflops = m.get("matmul_gflops")
    if gflops:
        size = s["image_size"]
        notes = []
        for arch in dict.fromkeys(r["arch"] for r in report["inference"]):
            g = MODEL_GFLOP_224.get(arch)
            f = by.get((arch, "ort_fp32", bs))
            if g and f:
                ceiling = gflops / (g * (size / 224) ** 2)
                notes.append(
                    f"{arch} {ceiling:.0f} img/s (ORT fp32 reaches "
                    f"{100 * f['images_per_second'] / ceiling:.0f}%)"
                )
        lines.append(
            f"fp32 ceiling from a {gflops:.0f} GFLOP/s float32 matmul (best of the start "
            f"and the end of this run: {m.get('matmul_gflops_start_end')}): " + "; ".join(notes)
        )
    if report["end_to_end"]:
        n = report["settings"]["n_files"]
        lines += [
            "",
            f"end to end: bmcd.score over {n} BMP files on disk -> CSV, batch {bs} "
            "(ratio vs model-only ORT, same precision, timed right before and after)",
            f"{'arch':13s} {'precision':9s} {'engine':7s} {'img/s':>8s} {'seconds':>8s} "
            f"{'x model-only':>12s} {'CPU ms/img':>10s}",
        ]
        for r in report["end_to_end"]:
            lines.append(
                f"{r['arch']:13s} {r['precision']:9s} {r['engine']:7s} "
                f"{_fmt(r['images_per_second']):>8s} {_fmt(r['seconds']):>8s} "
                f"{_fmt(r.get('ratio_to_model_only'), '.2f'):>12s} "
                f"{_fmt(r.get('cpu_ms_per_image'), '.2f'):>10s}"
            )
    if report.get("targets"):
        lines += ["", "targets (from the benchmark issue; 2-core reference machine)"]
        for t in report["targets"]:
            mark = "met" if t["met"] else "MISSED"
            lines.append(f"  {t['what']:48s} {t['target']:>7s}  {t['measured']:>8.2f}  {mark}")
    return "\n".join(lines)
