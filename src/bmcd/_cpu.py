"""What the CPU can do, where it decides a default (int8 weight range)."""

from __future__ import annotations

import platform
from pathlib import Path

__all__ = ["VNNI_FLAGS", "cpu_flags", "default_reduce_range"]

#: ``/proc/cpuinfo`` flags of the x86-64 instructions that add 8-bit products in 32 bits
#: (no 16-bit saturation in onnxruntime's U8S8 kernels).
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})

_X86 = ("x86_64", "amd64", "i386", "i686", "x86")


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them in ``/proc/cpuinfo`` (empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def default_reduce_range(flags: frozenset[str] | None = None,
                         machine: str | None = None) -> bool:
    """Whether int8 weights should use 7 bits on this CPU.

    True on x86-64 without VNNI (:data:`VNNI_FLAGS`), or when the flags cannot be read
    there: onnxruntime's U8S8 kernels then add pairs of 8-bit products in 16 bits and
    saturate. False elsewhere (x86-64 with VNNI, ARM).
    """
    machine = (machine or platform.machine()).lower()
    if machine not in _X86:
        return False
    flags = cpu_flags() if flags is None else flags
    return not (flags & VNNI_FLAGS)
