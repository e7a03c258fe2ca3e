"""What the CPU can do: its feature flags (also for :mod:`bmcd.bench`) and the int8
weight range they call for."""

from __future__ import annotations

import platform
from pathlib import Path

__all__ = ["VNNI_FLAGS", "cpu_flags", "default_reduce_range"]

#: ``/proc/cpuinfo`` flags of the x86-64 instructions that add 8-bit products in 32 bits
#: (no 16-bit saturation in onnxruntime's U8S8 kernels).
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})

_X86 = ("x86_64", "amd64", "i386", "i686", "x86")


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU feature flags from ``/proc/cpuinfo`` (``flags`` on x86, ``Features`` on ARM;
    empty when unavailable)."""
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


def default_reduce_range(flags: set[str] | frozenset[str] | None = None,
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
