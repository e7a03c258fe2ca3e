"""Exporters: Keras -> ONNX with parity checks, and ONNX Runtime int8 quantization.

:mod:`bmcd.exporters.onnx` converts and checks parity, :mod:`bmcd.exporters.quantize`
calibrates, quantizes and gates (settings in :class:`QuantizeConfig`).

Importing this package is light; TensorFlow / tf2onnx / onnx are imported when a function
runs.
"""

from __future__ import annotations

from .onnx import (
    DEFAULT_OPSET,
    FP32_ATOL,
    check_onnxruntime_support,
    export_onnx,
    validate_parity,
)
from .quantize import (
    INT8_MAX_AUC_CHANGE,
    INT8_MIN_LABEL_AGREEMENT,
    QuantizeConfig,
    quantize_int8,
)

__all__ = [
    "DEFAULT_OPSET",
    "FP32_ATOL",
    "INT8_MAX_AUC_CHANGE",
    "INT8_MIN_LABEL_AGREEMENT",
    "QuantizeConfig",
    "check_onnxruntime_support",
    "export_onnx",
    "quantize_int8",
    "validate_parity",
]
