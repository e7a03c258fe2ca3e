"""The fp32 parity check of an ONNX export: Keras and ONNX Runtime on the same batch.

:func:`validate_parity` is what :func:`bmcd.exporters.onnx.export_onnx` runs before it
writes ``model.onnx`` (and what :mod:`bmcd.exporters.onnx` re-exports); its numbers are the
``exports.onnx.parity`` record of ``bmcd.json``. See docs/models.rst, "Export tolerances".
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import ConfigError, ExportValidationError
from ..metrics import p_spread
from ..runtimes.onnx import make_session
from ._common import _run_session
from .quantize import MIN_P_ALL_STD

__all__ = ["FP32_ATOL", "validate_parity"]

# fp32 tolerance on p(all). The ONNX graph is the same fp32 arithmetic as Keras up to
# graph rewrites (BatchNorm folded into Conv, transposes cancelled, different GEMM/conv
# kernels and summation orders in oneDNN vs MLAS); measured differences are ~1e-7. 1e-4
# leaves three orders of magnitude for other CPUs / kernels while still catching any real
# conversion bug (a wrong layout, a dropped layer or a damaged weight moves p by >> 1e-3).
FP32_ATOL = 1e-4


def _keras_predict(keras_model, x: np.ndarray, batch_size: int) -> np.ndarray:
    out = [
        np.asarray(keras_model(x[i : i + batch_size], training=False)).reshape(-1)
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(out) if out else np.empty(0, np.float32)


def validate_parity(
    keras_model,
    onnx_path: str | os.PathLike,
    x: np.ndarray,
    *,
    threshold: float = 0.5,
    atol: float = FP32_ATOL,
    batch_size: int = 16,
    check: bool = True,
) -> dict[str, Any]:
    """Compare Keras and ONNX Runtime on the same preprocessed batch.

    ONNX Runtime runs ``x`` twice, in batches of ``batch_size`` and of ``2 * batch_size``
    (which proves the batch axis is dynamic); Keras runs it once.

    Parameters
    ----------
    keras_model : keras.Model
        The source model (input ``(n, S, S, 3)`` float32, output ``(n, 1)`` p(all)).
    onnx_path : path
        The converted model.
    x : ndarray of shape (n, S, S, 3)
        Preprocessed images (:func:`bmcd.preprocessing.preprocess_batch`).
    threshold : float
        Decision threshold used to compare labels.
    atol : float
        Largest accepted ``|p_keras - p_onnx|``.
    batch_size : int
        The first ONNX batch size; the second is twice this.
    check : bool
        Raise :class:`~bmcd.errors.ExportValidationError` when the check fails.

    Returns
    -------
    dict
        ``n``, ``batch_sizes``, ``max_abs_diff``, ``mean_abs_diff``,
        ``max_abs_diff_by_batch``, ``label_agreement``, ``label_disagreements``,
        ``threshold``, ``atol``, ``p_keras_min``/``p_keras_max``, ``passed``.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 4 or x.shape[-1] != 3 or len(x) == 0:
        raise ConfigError(f"x must be a non-empty (n, S, S, 3) batch; received shape {x.shape}.")
    b = max(1, int(batch_size))
    p_keras = _keras_predict(keras_model, x, b).astype(np.float64)
    session = make_session(onnx_path)
    runs = {bs: _run_session(session, x, bs).astype(np.float64) for bs in (b, 2 * b)}
    del session
    thr = float(threshold)
    labels_keras = p_keras >= thr
    diffs = {bs: np.abs(p - p_keras) for bs, p in runs.items()}
    finite = bool(np.isfinite(p_keras).all() and all(np.isfinite(p).all() for p in runs.values()))
    disagreements = max(int(((p >= thr) != labels_keras).sum()) for p in runs.values())
    all_diffs = np.concatenate(list(diffs.values()))
    max_diff = float(np.max(all_diffs)) if finite else float("nan")
    n = len(x)
    record = {
        "n": n,
        "batch_sizes": [b, 2 * b],
        "max_abs_diff": max_diff,
        "mean_abs_diff": float(np.mean(all_diffs)) if finite else float("nan"),
        "max_abs_diff_by_batch": {str(bs): float(np.max(d)) for bs, d in diffs.items()},
        "label_agreement": 1.0 - disagreements / n,
        "label_disagreements": disagreements,
        "threshold": thr,
        "atol": float(atol),
        "p_keras_min": float(p_keras.min()),
        "p_keras_max": float(p_keras.max()),
        "p_all_spread": p_spread(p_keras),
        "p_all_std_min": MIN_P_ALL_STD,
        "finite": finite,
    }
    # a model that gives (nearly) one p(all) for every sample agrees with any faithful
    # conversion of itself and with many broken ones: such a check is vacuous, not passed
    # (docs/models.rst, "Export tolerances")
    vacuous = finite and not record["p_all_spread"]["std"] >= MIN_P_ALL_STD
    record["vacuous"] = bool(vacuous)
    record["passed"] = bool(finite and max_diff <= atol and disagreements == 0 and not vacuous)
    if check and vacuous:
        sp = record["p_all_spread"]
        raise ExportValidationError(
            f"ONNX export parity check is vacuous on {n} images: the Keras model gives nearly "
            f"one value for every sample (std of p(all) {sp['std']:.2g} < {MIN_P_ALL_STD:g}, "
            f"range {sp['min']:.4f}..{sp['max']:.4f}), so agreement (max |dp| "
            f"{max_diff:.3g}) cannot show a conversion error. The file was not written. The "
            f"model is degenerate (train it again: check the data and learning rate) or the "
            f"samples are unlike its training data (pass samples=<your validation images>).",
            details=record,
        )
    if check and not record["passed"]:
        raise ExportValidationError(
            f"ONNX export failed validation against Keras on {n} images: max |p_keras - "
            f"p_onnx| = {max_diff:.3g} (allowed {atol:g}), {disagreements} label(s) differ at "
            f"threshold {thr:g}{'' if finite else ', non-finite outputs'}. The file was not "
            f"written. This points to a conversion problem (opset, tf2onnx version or a "
            f"custom layer); try another --opset or report it with these numbers.",
            details=record,
        )
    return record
