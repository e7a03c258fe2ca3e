"""int8 weight range by CPU: 7-bit weights where onnxruntime's U8S8 kernels saturate."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest

from bmcd import _cpu
from bmcd._cpu import VNNI_FLAGS, default_reduce_range


@pytest.mark.parametrize(("flags", "machine", "expected"), [
    (frozenset({"avx2", "fma"}), "x86_64", True),             # AVX2 only: saturates
    (frozenset({"avx2", "avx512f", "avx512bw"}), "x86_64", True),  # AVX-512 without VNNI
    (frozenset({"avx2", "avx512_vnni"}), "x86_64", False),
    (frozenset({"avx2", "avx_vnni"}), "AMD64", False),
    (frozenset({"amx_int8", "amx_tile"}), "x86_64", False),
    (frozenset(), "x86_64", True),                            # unknown x86: the safe choice
    (frozenset(), "aarch64", False),                          # ARM kernels do not saturate
    (frozenset(), "arm64", False),
])
def test_seven_bit_weights_only_on_x86_without_vnni(flags, machine, expected):
    assert default_reduce_range(flags, machine) is expected


def test_flags_of_this_machine_decide_the_default():
    flags = _cpu.cpu_flags()
    if flags:  # Linux
        assert "fpu" in flags or "fp" in flags or "asimd" in flags
    assert default_reduce_range() == default_reduce_range(flags)
    assert VNNI_FLAGS == {"avx512_vnni", "avx_vnni", "amx_int8"}


def _int8_dir(tmp_path, tiny_onnx_model_dir, reduce_range):
    d = tmp_path / "model"
    shutil.copytree(tiny_onnx_model_dir, d)
    shutil.copy(d / "model.onnx", d / "model.int8.onnx")
    meta = json.loads((d / "bmcd.json").read_text())
    meta.setdefault("exports", {})["onnx_int8"] = {"file": "model.int8.onnx",
                                                   "reduce_range": reduce_range}
    return d, meta


@pytest.mark.parametrize("reduce_range", [False, True, None])
def test_loading_eight_bit_weights_on_a_cpu_that_saturates_warns(
        tmp_path, tiny_onnx_model_dir, monkeypatch, reduce_range):
    pytest.importorskip("onnxruntime")
    from bmcd.runtimes.onnx import OnnxRuntimeBackend

    d, meta = _int8_dir(tmp_path, tiny_onnx_model_dir, reduce_range)
    monkeypatch.setattr(_cpu, "default_reduce_range", lambda *a, **k: True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        OnnxRuntimeBackend(d / "model.int8.onnx", meta, precision="int8")
        OnnxRuntimeBackend(d / "model.onnx", meta, precision="fp32")
    said = [str(w.message) for w in caught if "VNNI" in str(w.message)]
    # only an int8 file known to hold 8-bit weights warns, and names itself and the fix
    assert len(said) == (1 if reduce_range is False else 0), said
    if said:
        assert "model.int8.onnx" in said[0] and "bmcd export MODEL_DIR --int8" in said[0]

    monkeypatch.setattr(_cpu, "default_reduce_range", lambda *a, **k: False)  # VNNI CPU
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        OnnxRuntimeBackend(d / "model.int8.onnx", meta, precision="int8")
    assert not [w for w in caught if "VNNI" in str(w.message)]
