"""The class activation map in the ONNX file: which graph to convert, and its parity check.

:func:`bmcd.exporters.export_onnx` converts the two-output network of
:func:`bmcd.runtimes.keras.cam_model` (``p_all`` first, then ``cam`` (batch, h, w)) when the
model's head allows an exact map, and checks the map against Keras like ``p_all``; the
int8 quantizer checks the int8 map against the fp32 one with a looser tolerance. Fetching
only ``p_all`` from the two-output file costs the same as the one-output file (measured in
docs/explain.rst), so there is one file per precision.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ExportValidationError, ModelFormatError
from ..runtimes.onnx import CAM_OUTPUT, make_session

__all__ = [
    "CAM_FP32_RTOL",
    "CAM_INT8_RTOL",
    "CAM_INT8_MIN_CORRELATION",
    "cam_graph",
    "cam_parity",
    "cam_parity_keras",
    "int8_cam_check",
    "onnx_cams",
]

# fp32: the map is the same fp32 arithmetic as p_all (measured max difference ~1e-6 of the
# map's scale); 1e-3 of the scale still catches a wrong layout or weight.
CAM_FP32_RTOL = 1e-3
# int8: the last feature map is quantized to 8 bits (the head stays float), so each cell
# moves by a share of the map's scale: measured 0.005 on a MobileNetV2 at 96 px whose
# p_all passes the int8 gate, and 0.138 on a fragile 5-epoch MobileNetV2 at 64 px whose
# p_all moves by up to 0.25 (it fails the p_all gate). 0.2 of the scale is the stated int8
# tolerance (docs/explain.rst): it refuses a map that is wrong, not one as noisy as p_all.
# The per-image correlation is recorded but not gated: on nearly flat maps (an
# undertrained model) it is dominated by the rounding noise (measured 0.69 with a 0.5%
# error).
CAM_INT8_RTOL = 0.2
CAM_INT8_MIN_CORRELATION = None


def cam_graph(keras_model) -> tuple[Any, str | None]:
    """The Keras model to convert: the two-output one when the map is exact, else the model.

    Returns ``(model, None)`` or ``(keras_model, reason)`` when there is no exact map.
    """
    from ..runtimes.keras import cam_model

    try:
        return cam_model(keras_model), None
    except ModelFormatError as exc:
        return keras_model, str(exc)


def onnx_cams(session, x: np.ndarray, batch_size: int) -> np.ndarray:
    """The ``cam`` output of a session for a preprocessed array, in batches."""
    name_in = session.get_inputs()[0].name
    out = []
    for i in range(0, len(x), batch_size):
        xb = np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32)
        out.append(np.asarray(session.run([CAM_OUTPUT], {name_in: xb})[0], dtype=np.float32))
    return np.concatenate(out)


def cam_parity(
    ref: np.ndarray,
    test: np.ndarray,
    *,
    rtol: float,
    min_correlation: float | None = None,
    what: str = "ONNX",
    check: bool = True,
) -> dict[str, Any]:
    """Compare two batches of maps ``(n, h, w)``.

    ``scale`` is the largest ``|ref|`` over the batch; the check passes when
    ``max |test - ref| <= rtol * scale`` (and, with ``min_correlation``, when every image's
    Pearson correlation between the maps is at least that).

    Returns
    -------
    dict
        ``n``, ``shape``, ``scale``, ``max_abs_diff``, ``max_rel_diff``,
        ``min_correlation``, ``mean_correlation``, ``rtol``, ``passed``.
    """
    ref = np.asarray(ref, np.float64)
    test = np.asarray(test, np.float64)
    if ref.shape != test.shape:
        raise ExportValidationError(
            f"The {what} class activation maps have shape {test.shape}; the reference has "
            f"{ref.shape}. The file was not written; the conversion lost the map's layout.",
            details={"ref_shape": list(ref.shape), "shape": list(test.shape)},
        )
    n = len(ref)
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    diff = float(np.abs(test - ref).max()) if ref.size else 0.0
    rel = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
    a = ref.reshape(n, -1) - ref.reshape(n, -1).mean(axis=1, keepdims=True)
    b = test.reshape(n, -1) - test.reshape(n, -1).mean(axis=1, keepdims=True)
    denom = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    corr = np.where(denom > 0, (a * b).sum(axis=1) / np.where(denom > 0, denom, 1.0), 1.0)
    finite = bool(np.isfinite(test).all())
    rec = {
        "n": n,
        "shape": list(ref.shape[1:]),
        "scale": scale,
        "max_abs_diff": diff,
        "max_rel_diff": rel,
        "min_correlation": float(corr.min()) if n else 1.0,
        "mean_correlation": float(corr.mean()) if n else 1.0,
        "rtol": float(rtol),
        "required_correlation": None if min_correlation is None else float(min_correlation),
    }
    ok = finite and rel <= rtol
    if min_correlation is not None:
        ok = ok and rec["min_correlation"] >= min_correlation
    rec["passed"] = bool(ok)
    if check and not ok:
        raise ExportValidationError(
            f"The {what} class activation maps disagree with the reference on {n} images: max "
            f"|difference| = {diff:.3g}, {rel:.3g} of the map scale {scale:.3g} (allowed "
            f"{rtol:g}), smallest per-image correlation {rec['min_correlation']:.3f}"
            f"{'' if min_correlation is None else f' (need >= {min_correlation:g})'}. The "
            f"file was not written. Report it with these numbers.",
            details=rec,
        )
    return rec


def cam_parity_keras(two_output_model, onnx_path, x: np.ndarray, batch_size: int) -> dict[str, Any]:
    """Keras maps of :func:`cam_graph`'s model vs the ``cam`` output of the file (fp32)."""
    b = max(1, int(batch_size))
    ref = np.concatenate([
        np.asarray(two_output_model(x[i : i + b], training=False)[1], dtype=np.float32)
        for i in range(0, len(x), b)
    ])
    test = onnx_cams(make_session(onnx_path), x, b)
    return cam_parity(ref, test, rtol=CAM_FP32_RTOL, what="ONNX fp32")


def int8_cam_check(fp32_path, int8_path, x: np.ndarray, batch_size: int,
                   int8_name: str) -> dict[str, Any] | None:
    """The int8 file's maps against the fp32 file's (:data:`CAM_INT8_RTOL`), or None when
    the files have no ``cam`` output.

    The int8 gate on p(all) decides whether the int8 file is kept: p(all) is what it is
    for. Maps that fail this check are recorded (``passed: False``) with a warning, and the
    ONNX backend then refuses to explain with that file (docs/models.rst).
    """
    import warnings

    fp32 = make_session(fp32_path)
    if CAM_OUTPUT not in [o.name for o in fp32.get_outputs()]:
        return None
    rec = cam_parity(
        onnx_cams(fp32, x, batch_size), onnx_cams(make_session(int8_path), x, batch_size),
        rtol=CAM_INT8_RTOL, min_correlation=CAM_INT8_MIN_CORRELATION, what="int8",
        check=False,
    )
    if not rec["passed"]:
        warnings.warn(
            f"The int8 class activation maps differ from the fp32 ones by "
            f"{rec['max_rel_diff']:.3g} of the map scale (allowed {CAM_INT8_RTOL:g}; "
            f"smallest per-image correlation {rec['min_correlation']:.3f}). {int8_name} is "
            f"kept for p(all), which passed its gate, but will not be used to explain: "
            f"explain with the fp32 model.",
            UserWarning,
            stacklevel=4,
        )
    return rec
