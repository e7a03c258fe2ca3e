"""The backends a benchmark compares, and the parity checks beside every timing.

A fast wrong answer must fail, not win: every timed output is compared with a reference.
Part of :mod:`bmcd.bench` (see docs/benchmarks.rst).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import BenchError

#: Backends compared by the inference benchmark, in table order.
BACKENDS = (
    "keras_predict", "tf_function", "ort_fp32", "ort_int8", "ov_f32", "ov_bf16", "ov_int8",
)
BACKEND_LABELS = {
    "keras_predict": "keras predict",
    "tf_function": "tf.function",
    "ort_fp32": "ORT fp32",
    "ort_int8": "ORT int8",
    "ov_f32": "OpenVINO f32",
    "ov_bf16": "OpenVINO bf16",
    "ov_int8": "OpenVINO int8",
}
#: Runtime and precision of the ONNX backends: ``(runtime for score(), precision)``.
BACKEND_RUNTIMES = {
    "ort_fp32": ("onnx", "fp32"),
    "ort_int8": ("onnx", "int8"),
    "ov_f32": ("openvino", "fp32"),
    "ov_bf16": ("openvino", "bf16"),
    "ov_int8": ("openvino", "int8"),
}
#: Backends whose arithmetic differs from fp32 on purpose: checked against ORT fp32 with
#: the sanity bounds below, never to the fp32 tolerance (bf16 keeps 8 bits of mantissa).
REDUCED_PRECISION = ("ort_int8", "ov_bf16", "ov_int8")

#: max |p - p_keras_predict| allowed per backend. tf.function runs the same TensorFlow
#: kernels as predict (only float summation order may differ); the fp32 ONNX graph is
#: checked to the export tolerance (docs/models.rst); int8 changes the arithmetic, so only a
#: sanity bound applies (a broken graph gives differences of order 0.5).
PARITY_TOLERANCE = {"keras_predict": 1e-6, "tf_function": 1e-5, "ort_fp32": 1e-4, "ov_f32": 1e-4}
#: OpenVINO f32 runs the same graph with its own kernels (forced to f32: its CPU default
#: is bf16 where the CPU has it), so it gets the fp32 export tolerance too.
#: Sanity bounds for int8 (and bf16) vs fp32 ONNX Runtime over all timed inputs. Accuracy is gated
#: by the exporter on validation data (docs/models.rst); this only catches a broken graph (a
#: constant or unrelated output). Random-weight benchmark models quantize worse than
#: trained ones (their images differ little in feature space), hence the loose bounds.
INT8_SANITY_MAX_ABS_DIFF = 0.35
INT8_SANITY_MIN_CORRELATION = 0.9
#: Scoring CSV vs the same ONNX session on the same files (float32 round trip through
#: text is exact; only batch composition can change float summation order).
SCORE_PARITY_TOLERANCE = 1e-5


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

