"""Static int8 quantization of an exported bmcd model, gated against its fp32 ONNX model.

``model.onnx`` -> ``model.int8.onnx`` (QDQ, per-channel int8 weights, uint8 activations),
written only when the int8 model agrees with the fp32 one on held-out images (the gate);
the numbers go into ``bmcd.json`` ``exports.onnx_int8``. The settings are one
:class:`QuantizeConfig`; :func:`quantize_int8` takes them as keywords or as ``config=``.
See docs/architecture.rst for where this sits in the pipeline.

Needs ``onnx`` and ``sympy`` (the ``train`` extra) but not TensorFlow.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._cpu import default_reduce_range
from .._deps import optional_import
from ..artifact import (
    INPUT_NAME,
    MODEL_JSON,
    ONNX_FILE,
    ONNX_INT8_FILE,
    file_sha256,
    read_model_meta,
    update_model_json,
)
from ..errors import ConfigError, ExportValidationError, ModelFormatError
from ..runtimes.onnx import make_session
from ._common import _human_metadata, _now, _run_session, _set_metadata, _temp_path
from ._samples import _resolve_samples
from .cam import int8_cam_check

__all__ = [
    "INT8_MIN_LABEL_AGREEMENT",
    "INT8_MAX_AUC_CHANGE",
    "GATE_CONFIDENCE",
    "MIN_P_ALL_STD",
    "MIN_CALIBRATION",
    "DEFAULT_INT8_VALIDATION",
    "QuantizeConfig",
    "default_reduce_range",
    "quantize_int8",
]

# int8 gate (docs/models.rst, "Export tolerances"): int8 rounding changes p(all) by up to a
# few 1e-2, which may flip a cell lying on the threshold. How many cells lie that close is
# a property of the model, so the labels int8 may flip are measured, not fixed: no more than
# the fp32 model's own flips under +-1 gray level of input noise (about the size of int8
# rounding), plus a binomial margin for the sample size (GATE_CONFIDENCE upper bound).
# Ranking quality must not move by more than 0.01 of ROC-AUC.
#: Former fixed rule (label agreement >= 0.99); used only when a caller passes it explicitly
#: as ``min_label_agreement``. The default (None) is the noise rule above.
INT8_MIN_LABEL_AGREEMENT = 0.99
INT8_MAX_AUC_CHANGE = 0.01
#: One-sided confidence of the Clopper-Pearson bound on the fp32 noise flip rate.
GATE_CONFIDENCE = 0.95
#: The least standard deviation of fp32 p(all) over the gate's (and the export parity
#: check's) samples for the check to count. Trained and benchmark models spread p(all) over
#: most of [0, 1] (std 0.2-0.45); below 0.01 every sample gets about one value and agreement
#: says nothing.
MIN_P_ALL_STD = 0.01

#: The fewest calibration images the design accepts without a warning.
MIN_CALIBRATION = 100
#: Held-out synthetic cells for the int8 gate when no validation set is given.
DEFAULT_INT8_VALIDATION = 200

# Fixed seeds for the synthetic fallbacks, distinct from each other, from the parity
# check's (40_001, bmcd.exporters.onnx) and from the seeds the tests and the demo train on
# (0, 1), so calibration and validation cells are held out.
_SEED_CALIBRATION = 40_002
_SEED_VALIDATION = 40_003

_QUANT_FORMATS = ("QDQ", "QOperator")


@dataclass(frozen=True)
class QuantizeConfig:
    """The settings of :func:`quantize_int8` (see its parameters for each one).

    Invalid values raise :class:`~bmcd.errors.ConfigError` when the config is made.

    Examples
    --------
    >>> from bmcd.exporters import QuantizeConfig
    >>> cfg = QuantizeConfig(n=300, reduce_range=True)
    >>> cfg.quant_format, cfg.per_channel, cfg.min_label_agreement
    ('QDQ', True, None)
    """

    n: int = 200
    force: bool = False
    per_channel: bool = True
    quant_format: str = "QDQ"
    n_validation: int | None = None
    reduce_range: bool | None = None
    keep_head_float: bool = True
    keep_first_conv_float: bool | None = None
    batch_size: int = 16
    min_label_agreement: float | None = None
    max_auc_change: float = INT8_MAX_AUC_CHANGE

    def __post_init__(self) -> None:
        if self.quant_format not in _QUANT_FORMATS:
            raise ConfigError(
                f"quant_format must be one of {_QUANT_FORMATS}; received {self.quant_format!r}."
            )
        if int(self.n) < 1:
            raise ConfigError(f"n (calibration images) must be >= 1; received {self.n!r}.")

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dictionary."""
        return dataclasses.asdict(self)


#: Calibration batch size. The calibrator keeps an ONNX Runtime arena sized for one batch
#: of every intermediate tensor: measured peak memory for ResNet50 at 224 px is 2.2 GB with
#: batches of 8 and 4.0 GB with 16, for the same ranges.
CALIBRATION_BATCH = 8


def _calibration_reader(x: np.ndarray, batch_size: int):
    from onnxruntime.quantization import CalibrationDataReader

    b = max(1, min(int(batch_size), CALIBRATION_BATCH))
    if len(x) % b:
        # equal batches (one arena shape); repeating images does not change MinMax ranges
        x = np.concatenate([x, x[: b - len(x) % b]])

    class _Reader(CalibrationDataReader):
        """Feeds preprocessed calibration batches to the ORT calibrator."""

        def __init__(self) -> None:
            self._batches = [x[i : i + b] for i in range(0, len(x), b)]
            self._it = iter(self._batches)

        def get_next(self):
            b = next(self._it, None)
            return None if b is None else {INPUT_NAME: np.ascontiguousarray(b, np.float32)}

        def rewind(self) -> None:
            self._it = iter(self._batches)

    return _Reader()


def _gate(
    p32: np.ndarray, p8: np.ndarray, labels: np.ndarray | None, threshold: float,
    min_agreement: float | None, max_auc_change: float, *, p_noisy: np.ndarray | None = None,
    confidence: float = GATE_CONFIDENCE, min_std: float = MIN_P_ALL_STD, name: str = "int8",
) -> dict[str, Any]:
    """The gate of a lower-precision model (int8, bf16) against its fp32 model: one rule.

    Passes when every output is finite, the fp32 outputs spread (std of p(all) >=
    ``min_std``: otherwise agreement is vacuous), ``|ROC-AUC change| <= max_auc_change``
    when both classes are labelled, and the labels flipped by the lower precision stay
    within what the fp32 model's own instability allows: with ``min_agreement=None`` (the
    default rule) at most ``floor(n * u)`` flips, ``u`` being the one-sided
    ``confidence`` Clopper-Pearson upper bound of the fp32 flip rate under +-1 gray level of
    input noise (``p_noisy``: p(all) of the same samples with that noise); with a number,
    label agreement ``>= min_agreement`` (a fixed rule stated by the caller).
    """
    from ..metrics import binomial_upper_bound, classification_metrics, p_spread

    n = int(len(p32))
    finite = bool(np.isfinite(p32).all() and np.isfinite(p8).all())
    flips = int(np.sum((p32 >= threshold) != (p8 >= threshold)))
    agree = 1.0 - flips / n if n else float("nan")
    diff = np.abs(p32.astype(np.float64) - p8.astype(np.float64))
    spread = p_spread(p32)
    rec: dict[str, Any] = {
        "n": n,
        "label_agreement": agree,
        "label_disagreements": flips,
        "max_abs_diff": float(diff.max()) if n else float("nan"),
        "mean_abs_diff": float(diff.mean()) if n else float("nan"),
        "threshold": float(threshold),
        "max_auc_change": float(max_auc_change),
        "labels_known": labels is not None,
        "finite": finite,
        "p_all_spread": spread,
        f"p_all_spread_{name}": p_spread(p8),
        "p_all_std_min": float(min_std),
    }
    reasons: list[str] = []
    if not finite:
        reasons.append("non-finite outputs")
    if min_agreement is not None:
        rec["min_label_agreement"] = float(min_agreement)
        rec["allowed_label_flips"] = int(np.floor(n * (1.0 - float(min_agreement)) + 1e-9))
        rec["rule"] = f"label agreement >= {float(min_agreement):g} (fixed, given)"
        if not agree >= float(min_agreement):
            reasons.append(f"label agreement {agree:.4f} < {float(min_agreement):g}")
    else:
        if p_noisy is None:
            raise ConfigError("_gate needs p_noisy (fp32 p(all) under +-1 gray level of noise) "
                              "when min_agreement is None (the noise rule).")
        k = int(np.sum((p32 >= threshold) != (np.asarray(p_noisy) >= threshold)))
        bound = binomial_upper_bound(k, n, confidence) if n else float("nan")
        allowed = int(np.floor(n * bound + 1e-9)) if n else 0
        rec.update({
            "fp32_noise_label_flips": k,
            "fp32_noise_flip_rate": k / n if n else float("nan"),
            "fp32_noise_flip_bound": bound,
            "confidence": float(confidence),
            "allowed_label_flips": allowed,
            "min_label_agreement": 1.0 - allowed / n if n else float("nan"),
        })
        rec["rule"] = (
            f"{name} may flip at most {allowed} of {n} labels: the one-sided "
            f"{confidence:.0%} Clopper-Pearson upper bound ({bound:.4f}) of the fp32 model's "
            f"own flip rate under +-1 gray level of input noise ({k}/{n})"
        )
        if flips > allowed:
            reasons.append(
                f"{flips} of {n} labels flipped (allowed {allowed}: fp32 flips {k} under +-1 "
                f"gray level of noise, {confidence:.0%} upper bound {bound:.4f})"
            )
    if not spread["std"] >= min_std:
        reasons.append(
            f"vacuous check: the fp32 model gives nearly one value for every sample (std of "
            f"p(all) {spread['std']:.2g} < {min_std:g}, range {spread['min']:.4f}.."
            f"{spread['max']:.4f}), so agreement cannot show a change; a degenerate model, or "
            f"samples unlike its training data"
        )
    if labels is not None and len(np.unique(labels)) == 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m32 = classification_metrics(labels, p32, threshold)
            m8 = classification_metrics(labels, p8, threshold)
        rec.update(
            {
                "roc_auc_fp32": m32["roc_auc"],
                f"roc_auc_{name}": m8["roc_auc"],
                "roc_auc_change": m8["roc_auc"] - m32["roc_auc"],
                "f1_weighted_fp32": m32["f1_weighted"],
                f"f1_weighted_{name}": m8["f1_weighted"],
                "f1_weighted_change": m8["f1_weighted"] - m32["f1_weighted"],
                "accuracy_fp32": m32["accuracy"],
                f"accuracy_{name}": m8["accuracy"],
            }
        )
        if not abs(rec["roc_auc_change"]) <= max_auc_change:
            reasons.append(f"|ROC-AUC change| {abs(rec['roc_auc_change']):.4f} > "
                           f"{max_auc_change:g}")
    elif labels is not None:
        rec["labels_known"] = False  # a single class: AUC undefined, gate on agreement only
    rec["failed_because"] = reasons
    rec["passed"] = not reasons
    return rec


def _name_nodes(proto) -> bool:
    """Give every unnamed node a unique name; return whether any was renamed."""
    taken = {n.name for n in proto.graph.node if n.name}
    changed = False
    for i, node in enumerate(proto.graph.node):
        if not node.name:
            name = f"bmcd_{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
            changed = True
    return changed


def _float_nodes(proto, head: bool, first_conv: bool) -> list[str]:
    """Names of the nodes to leave unquantized (graph nodes are in topological order)."""
    nodes = list(proto.graph.node)
    convs = [i for i, n in enumerate(nodes) if n.op_type == "Conv"]
    names: list[str] = []
    if first_conv and convs:
        names.append(nodes[convs[0]].name)
    if head:
        start = convs[-1] + 1 if convs else 0
        names.extend(n.name for n in nodes[start:])
    return [n for n in names if n]



def quantize_int8(
    model_dir: str | os.PathLike,
    calibration: Any = None,
    n: int = 200,
    force: bool = False,
    per_channel: bool = True,
    quant_format: str = "QDQ",
    *,
    validation: Any = None,
    n_validation: int | None = None,
    reduce_range: bool | None = None,
    keep_head_float: bool = True,
    keep_first_conv_float: bool | None = None,
    batch_size: int = 16,
    min_label_agreement: float | None = None,
    max_auc_change: float = INT8_MAX_AUC_CHANGE,
    config: QuantizeConfig | None = None,
) -> dict[str, Any]:
    """Statically quantize ``model.onnx`` to ``model.int8.onnx`` and gate it against fp32.

    ONNX Runtime static quantization: ``quant_pre_process`` (shape inference and graph
    optimisation), then ``quantize_static`` with MinMax calibration on preprocessed images.
    Weights are int8, per output channel; activations are uint8 (asymmetric). That is what
    onnxruntime recommends for x86-64 CPUs (U8S8). On x86-64 CPUs without VNNI (AVX2 only,
    e.g. many AMD EPYC and older Xeons) the U8S8 kernels add pairs of products in 16 bits
    and saturate: measured on an AMD EPYC (AVX2), a synthetic-cell MobileNetV2 kept only 85%
    of its labels (max change of p(all) 0.70) with 8-bit weights. ``reduce_range=None``
    (default) therefore picks 7-bit weights on such CPUs
    (:func:`bmcd.exporters.quantize.default_reduce_range`).

    Parameters
    ----------
    model_dir : path
        A model directory with ``bmcd.json`` and ``model.onnx`` (run
        :func:`export_onnx` first).
    calibration : None, Dataset, folder, list of images or preprocessed array
        Representative images (the training images are best). Default: ``n`` synthetic
        cells. Fewer than :data:`MIN_CALIBRATION` images gives a warning.
    n : int
        Calibration images to make (synthetic) or to use at most (given).
    force : bool
        Keep the file even when the gate fails (recorded as ``forced``).
    per_channel : bool
        Per-output-channel weight scales (default True; needed for accuracy on these
        networks).
    quant_format : {"QDQ", "QOperator"}
        QDQ (default): QuantizeLinear/DequantizeLinear pairs around float ops, which
        onnxruntime fuses into integer kernels; the format onnxruntime recommends, portable to
        other runtimes. QOperator: QLinearConv & co. written directly; measured ~6% faster
        for ResNet50 at 224 px with every convolution int8 (74 vs 70 images/s, best of 16),
        within the noise of this shared machine, so QDQ stays the default.
    validation : None, Dataset, folder, list of images or preprocessed array
        Images for the gate; labels (from a Dataset or labelled folder) enable the ROC-AUC
        and F1 parts. Default: :data:`DEFAULT_INT8_VALIDATION` held-out synthetic cells
        with their labels.
    n_validation : int, optional
        The most validation images to use (default: all given, or 200 synthetic).
    reduce_range : bool or None
        7-bit weights, for x86-64 CPUs without VNNI. None (default): decided by the CPU
        that exports (:func:`bmcd.exporters.quantize.default_reduce_range`); the choice is
        recorded in ``bmcd.json``. An int8 file made with 8-bit weights on a VNNI CPU can
        give wrong p(all) on an AVX2-only CPU; the ONNX Runtime backend warns when it loads
        one there.
    keep_head_float : bool
        Keep the classification head (every node after the last convolution: pooling,
        dense layers, sigmoid) in float. It is a negligible share of the compute, and
        quantizing the sigmoid output to 8 bits turns saturated probabilities into ties,
        which cost up to 0.025 ROC-AUC on the test models (measured).
    keep_first_conv_float : bool or None
        Keep the first convolution in float, so the image itself is not quantized (for
        ResNet50 an 8-bit step of the mean-subtracted input is ~1 gray level): the usual
        "first layer in higher precision" recipe. It lowers the int8 error (measured mean
        max abs change of p 0.018 -> 0.011 on a small ResNet50) but costs speed (ResNet50 at 224 px: 52 vs
        70 images/s; MobileNetV2: 307 vs 341, best of 16-25 runs). None (default): first
        quantize every convolution, and only if that fails the gate, retry with the first
        one in float (calibration is reused) and keep the first model that passes.
    batch_size : int
        Batch size for calibration and for the gate.
    min_label_agreement : float or None
        None (default): int8 may flip no more labels than the fp32 model's own flips under
        +-1 gray level of input noise on the same images allow (the one-sided 95%
        Clopper-Pearson upper bound of that rate, times n). A number: a fixed label
        agreement instead (e.g. the former 0.99).
    max_auc_change : float
        Largest accepted ``|ROC-AUC change|`` when labels are known (default
        :data:`INT8_MAX_AUC_CHANGE`, 0.01). Every gate also refuses a vacuous check: fp32
        p(all) with a standard deviation below :data:`MIN_P_ALL_STD` on the samples.
    config : bmcd.exporters.quantize.QuantizeConfig, optional
        All the settings above in one object, instead of the keywords (which must then be
        left at their defaults).

    Returns
    -------
    dict
        The ``exports.onnx_int8`` record written to ``bmcd.json`` plus ``path``.

    Raises
    ------
    ExportValidationError
        The gate failed and ``force`` is False; no ``model.int8.onnx`` is kept.
    ConfigError
        A setting is invalid, or ``config`` is given together with changed keywords.

    Examples
    --------
    >>> from bmcd.exporters import export_onnx, quantize_int8     # doctest: +SKIP
    >>> export_onnx("model/")                                     # doctest: +SKIP
    >>> rec = quantize_int8("model/", calibration="data/train")   # doctest: +SKIP
    >>> rec["gate"]["label_agreement"]                            # doctest: +SKIP
    0.995
    """
    given = QuantizeConfig(
        n=n, force=force, per_channel=per_channel, quant_format=quant_format,
        n_validation=n_validation, reduce_range=reduce_range, keep_head_float=keep_head_float,
        keep_first_conv_float=keep_first_conv_float, batch_size=batch_size,
        min_label_agreement=min_label_agreement, max_auc_change=max_auc_change,
    )
    if config is None:
        config = given
    elif given != QuantizeConfig():
        changed = {k: v for k, v in given.to_dict().items() if v != getattr(QuantizeConfig(), k)}
        raise ConfigError(
            f"Pass the int8 settings either as config=QuantizeConfig(...) or as keywords, not "
            f"both; received config and {changed}. Put them into the QuantizeConfig."
        )
    return _quantize(Path(model_dir), calibration, validation, config)


def _quantize(
    d: Path, calibration: Any, validation: Any, cfg: QuantizeConfig
) -> dict[str, Any]:
    """:func:`quantize_int8` with its settings checked and gathered in ``cfg``."""
    onnx = optional_import("onnx", purpose="int8 quantization")
    optional_import("sympy", purpose="int8 quantization (quant_pre_process shape inference)")
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    meta = read_model_meta(d)
    fp32 = d / ONNX_FILE
    if not fp32.is_file():
        raise ModelFormatError(
            f"'{d}' has no {ONNX_FILE} to quantize. Export it first: export_onnx('{d}') or "
            f"`bmcd export {d} --int8`."
        )
    fp32_rec = meta.export("onnx") or {}
    fp32_sha = file_sha256(fp32)
    if fp32_rec.get("sha256") and fp32_rec["sha256"] != fp32_sha:
        raise ModelFormatError(
            f"'{fp32}' does not match the sha256 recorded in {MODEL_JSON} (recorded "
            f"{fp32_rec['sha256'][:12]}..., file {fp32_sha[:12]}...): it changed after export. "
            f"Re-export it with export_onnx('{d}')."
        )
    config = meta.preprocess
    threshold = float(meta.threshold)
    b = max(1, int(cfg.batch_size))
    n, n_validation, force = int(cfg.n), cfg.n_validation, cfg.force
    quant_format, per_channel = cfg.quant_format, cfg.per_channel
    reduce_range = default_reduce_range() if cfg.reduce_range is None else bool(cfg.reduce_range)
    min_label_agreement, max_auc_change = cfg.min_label_agreement, cfg.max_auc_change

    cal = _resolve_samples(
        calibration, config, default_n=int(n), limit=int(n), seed=_SEED_CALIBRATION,
        purpose="int8 calibration",
    )
    if len(cal.x) < MIN_CALIBRATION:
        warnings.warn(
            f"int8 calibration uses only {len(cal.x)} images; at least {MIN_CALIBRATION} "
            f"representative images are recommended for stable activation ranges.",
            UserWarning,
            stacklevel=3,
        )
    val = _resolve_samples(
        validation, config, default_n=DEFAULT_INT8_VALIDATION, limit=n_validation,
        seed=_SEED_VALIDATION, purpose="the int8 gate (held out)",
    )

    final = d / ONNX_INT8_FILE
    tmp_final = _temp_path(d, ONNX_INT8_FILE)
    # keep_first_conv_float=None: try the fastest model (every convolution int8) first and
    # fall back to a float first convolution only if that fails the gate
    plans = ([False, True] if cfg.keep_first_conv_float is None
             else [bool(cfg.keep_first_conv_float)])
    fmt = QuantFormat.QDQ if quant_format == "QDQ" else QuantFormat.QOperator
    attempts: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bmcd-int8-") as work:
            pre = Path(work) / "pre.onnx"
            cache = Path(work) / "calibration.json"  # ranges computed once, reused
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=False)
            pre_proto = onnx.load(str(pre))
            if _name_nodes(pre_proto):  # nodes_to_exclude works by node name
                onnx.save(pre_proto, str(pre))
            s32 = make_session(fp32)
            p32 = _run_session(s32, val.x, b)
            # The gate's yardstick: how often the fp32 model changes its own label when each
            # pixel moves by up to one gray level (about the size of int8 rounding).
            noise = np.random.default_rng(_SEED_VALIDATION).uniform(-1.0, 1.0, val.x.shape)
            p_noisy = _run_session(s32, np.clip(val.x + noise, 0.0, 255.0).astype(np.float32), b)
            noise_agreement = float(np.mean((p32 >= threshold) == (p_noisy >= threshold)))
            del s32, noise
            best = None
            for first_conv_float in plans:
                qpath = Path(work) / f"int8_{int(first_conv_float)}.onnx"
                float_nodes = _float_nodes(pre_proto, cfg.keep_head_float, first_conv_float)
                quantize_static(
                    str(pre),
                    str(qpath),
                    _calibration_reader(cal.x, b),
                    quant_format=fmt,
                    per_channel=bool(per_channel),
                    reduce_range=reduce_range,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    nodes_to_exclude=float_nodes or None,
                    calibration_cache_path=str(cache),
                )
                p8 = _run_session(make_session(qpath), val.x, b)
                g = _gate(p32, p8, val.labels, threshold, min_label_agreement, max_auc_change,
                          p_noisy=p_noisy)
                g["fp32_noise_label_agreement"] = noise_agreement
                g["fp32_noise"] = "uniform +-1 gray level per pixel"
                attempts.append({"first_conv_float": first_conv_float, "path": qpath, "gate": g})
                if best is None or (g["passed"], g["label_agreement"]) > (
                    best["gate"]["passed"], best["gate"]["label_agreement"]
                ):
                    best = attempts[-1]
                if g["passed"]:
                    break
            del pre_proto
            gate = best["gate"]
            if not gate["passed"] and not force:
                auc = (
                    f", ROC-AUC {gate['roc_auc_fp32']:.4f} -> {gate['roc_auc_int8']:.4f} "
                    f"(change {gate['roc_auc_change']:+.4f}, allowed +-{max_auc_change:g})"
                    if "roc_auc_change" in gate else ""
                )
                tried = "" if len(attempts) == 1 else (
                    f" (best of {len(attempts)} tries: with every convolution int8, and with "
                    f"the first convolution in float)"
                )
                raise ExportValidationError(
                    f"int8 model failed its gate against the fp32 ONNX model on {gate['n']} "
                    f"images ({val.source}){tried}: {'; '.join(gate['failed_because'])}. The "
                    f"rule: {gate['rule']}{auc}. Label agreement {gate['label_agreement']:.4f}; "
                    f"the fp32 model keeps its own label on {noise_agreement:.4f} of these "
                    f"images under +-1 gray level of noise; fp32 p(all) std "
                    f"{gate['p_all_spread']['std']:.3g}. {ONNX_INT8_FILE} was not written. "
                    f"Calibrate on representative images (calibration=<training data>), gate "
                    f"on more validation images, or pass force=True to keep it anyway.",
                    details={**gate, "attempts": [
                        {"first_conv_float": a["first_conv_float"], **a["gate"]} for a in attempts
                    ]},
                )
            # the maps are checked and recorded; they never refuse a gated int8 file
            cam = int8_cam_check(fp32, best["path"], val.x[:64], b, ONNX_INT8_FILE)
            if cam is not None:
                gate["cam"] = cam
            qproto = onnx.load(str(best["path"]))
            _set_metadata(qproto, _human_metadata(meta, "int8"))
            qproto.doc_string = (
                f"bmcd {meta.arch} classifier, int8 ({quant_format}, "
                f"{'per-channel' if per_channel else 'per-tensor'}) from {ONNX_FILE} "
                f"sha256 {fp32_sha}"
            )
            onnx.save(qproto, str(tmp_final))
            del qproto
        os.replace(tmp_final, final)
    except BaseException:
        tmp_final.unlink(missing_ok=True)
        raise

    forced = bool(force and not gate["passed"])
    if forced:
        warnings.warn(
            f"Kept {final} although it failed the int8 gate (force=True); the numbers are in "
            f"{MODEL_JSON} exports.onnx_int8.gate.",
            UserWarning,
            stacklevel=3,
        )
    record = {
        "file": ONNX_INT8_FILE,
        "sha256": file_sha256(final),
        "bytes": final.stat().st_size,
        "source_sha256": fp32_sha,
        "quant_format": quant_format,
        "per_channel": bool(per_channel),
        "reduce_range": reduce_range,
        "weight_type": "QInt8",
        "activation_type": "QUInt8",
        "calibrate_method": "MinMax",
        "float_nodes": {"head": bool(cfg.keep_head_float), "first_conv": best["first_conv_float"]},
        "attempts": [
            {"first_conv_float": a["first_conv_float"], "passed": a["gate"]["passed"],
             "label_agreement": a["gate"]["label_agreement"],
             "roc_auc_change": a["gate"].get("roc_auc_change")}
            for a in attempts
        ],
        "calibration": {"n": int(len(cal.x)), "source": cal.source},
        "validation": val.source,
        "gate": gate,
        "forced": forced,
        "onnxruntime_version": ort.__version__,
        "created": _now(),
    }
    update_model_json(d, "exports", "onnx_int8", record)
    return {**record, "path": str(final)}

