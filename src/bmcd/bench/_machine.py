"""The machine a benchmark runs on: CPU, instruction sets, ONNX Runtime kernels, load.

Part of :mod:`bmcd.bench` (see docs/benchmarks.rst).
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .._cpu import cpu_flags
from .._version import __version__
from ..preprocessing import default_workers

#: Approximate forward-pass cost in GFLOP per image at 224 px (2 x multiply-accumulates;
#: scales with the square of the image side). Used to put fp32 throughput next to the
#: machine's measured matmul rate.
MODEL_GFLOP_224 = {"resnet50": 7.7, "mobilenet_v2": 0.6}


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
    info["loadavg"] = loadavg()
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


def loadavg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the platform has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):  # pragma: no cover
        return None


def process_cpu_seconds() -> float | None:
    """User + system CPU seconds of this process (all threads) and its waited-for children."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return None
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    try:
        fields_ = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    vals = [float(v) for v in fields_]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0.0)
    return sum(vals) - idle, sum(vals)


def cpu_share(start: tuple[float, float] | None) -> dict[str, Any]:
    """How busy the machine was, and how much of that was this process."""
    end = cpu_times()
    if start is None or end is None:
        return {}
    busy, total = end[0] - start[0], end[1] - start[1]
    if total <= 0:
        return {}
    mine = process_cpu_seconds()
    if mine is None:  # pragma: no cover - not on POSIX
        return {}
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    machine_busy_s = busy / hz
    return {
        "machine_busy_fraction": round(busy / total, 3),
        "other_processes_cpu_s": round(max(0.0, machine_busy_s - mine), 1),
        "this_process_cpu_s": round(mine, 1),
    }
