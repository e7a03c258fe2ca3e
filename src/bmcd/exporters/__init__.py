"""Exporters: Keras -> ONNX with parity checks, and ONNX Runtime int8 quantization.

Importing this package is light; TensorFlow / tf2onnx / onnx are imported when a function
runs.
"""

from __future__ import annotations

from .onnx import (
    DEFAULT_OPSET,
    FP32_ATOL,
    INT8_MAX_AUC_CHANGE,
    INT8_MIN_LABEL_AGREEMENT,
    check_onnxruntime_support,
    export_onnx,
    quantize_int8,
    validate_parity,
)

__all__ = [
    "DEFAULT_OPSET",
    "FP32_ATOL",
    "INT8_MAX_AUC_CHANGE",
    "INT8_MIN_LABEL_AGREEMENT",
    "check_onnxruntime_support",
    "export_onnx",
    "quantize_int8",
    "validate_parity",
]
