"""The bf16 gate: OpenVINO bf16 against fp32 ONNX Runtime, with the rules of the int8 gate.

bf16 keeps float32's range but only 8 bits of mantissa (about 3 significant digits), so
running ``model.onnx`` in bf16 (OpenVINO's default on CPUs with AVX512-BF16 or AMX) changes
p(all) the way int8 does: slightly for most cells, enough to flip a cell lying on the
threshold. The gate compares it with the fp32 model on the validation images the int8 gate
uses, by the same rules (see docs/architecture.rst and the "Tolerances" of the exporter,
:mod:`bmcd.exporters.onnx`):

* bf16 may flip no more labels than the fp32 model's own flips under +-1 gray level of
  input noise on the same images allow (one-sided 95% Clopper-Pearson upper bound of that
  rate, times n), or a fixed label agreement when the caller passes one;
* ``|ROC-AUC change| <=`` :data:`~bmcd.exporters.onnx.INT8_MAX_AUC_CHANGE` when labels are
  known;
* every output finite, and the fp32 outputs must spread (std of p(all) >=
  :data:`MIN_P_ALL_STD`): a model that gives one value for every sample cannot show a
  change.

The result goes into ``bmcd.json`` under ``exports.openvino_bf16`` (also when it fails),
tied to the sha256 of ``model.onnx``. :class:`bmcd.runtimes.openvino.OpenVINOBackend`
refuses ``precision="bf16"`` unless that record passed for the current file.

No file is written: bf16 runs ``model.onnx`` itself with a different precision hint.
"""

from __future__ import annotations

import datetime as _dt
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact import MODEL_JSON, ONNX_FILE, file_sha256, read_model_meta, update_model_json
from ..errors import ExportValidationError, ModelFormatError

# The int8 gate's rules, constants and sample loading are reused as they are, so both gates
# stay one rule (package-private helpers of bmcd.exporters).
from ._samples import _resolve_samples
from .quantize import (
    _SEED_VALIDATION,
    DEFAULT_INT8_VALIDATION,
    INT8_MAX_AUC_CHANGE,
    MIN_P_ALL_STD,
    _gate,
)

__all__ = [
    "BF16_MIN_LABEL_AGREEMENT",
    "BF16_MAX_AUC_CHANGE",
    "MIN_P_ALL_STD",
    "gate_bf16",
    "format_bf16_gate",
]

#: Same rule as int8 (see the module docstring): None is the noise rule.
BF16_MIN_LABEL_AGREEMENT = None
BF16_MAX_AUC_CHANGE = INT8_MAX_AUC_CHANGE


def _predict(backend, x: np.ndarray, batch_size: int) -> np.ndarray:
    out = [backend.predict_batch(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    return np.concatenate(out).astype(np.float32) if out else np.empty(0, np.float32)


def gate_bf16(
    model_dir: str | os.PathLike,
    samples: Any = None,
    *,
    n: int | None = None,
    force: bool = False,
    batch_size: int = 16,
    min_label_agreement: float | None = BF16_MIN_LABEL_AGREEMENT,
    max_auc_change: float = BF16_MAX_AUC_CHANGE,
    intra_op_threads: int | None = None,
) -> dict[str, Any]:
    """Check OpenVINO bf16 against fp32 ONNX Runtime and record the result in ``bmcd.json``.

    Parameters
    ----------
    model_dir : path
        A model directory with ``bmcd.json`` and ``model.onnx``.
    samples : None, Dataset, folder, list of images or preprocessed array
        Validation images, as for the int8 gate's ``validation`` (labels from a Dataset or
        a labelled folder enable the ROC-AUC part). Default: the int8 gate's
        held-out synthetic cells (:data:`~bmcd.exporters.onnx.DEFAULT_INT8_VALIDATION`, same
        seed).
    n : int, optional
        The most samples to use (evenly spaced over sorted datasets).
    force : bool
        Record a failed gate as ``forced`` instead of raising; the OpenVINO backend then
        runs bf16 with a warning.
    batch_size : int
        Batch size of both runs.
    min_label_agreement : float or None
        None (default): the int8 gate's noise rule; a number: a fixed label agreement.
    max_auc_change : float
        Largest accepted ``|ROC-AUC change|`` (default 0.01, as int8).
    intra_op_threads : int, optional
        Threads for each runtime (default: the usable CPU count).

    Returns
    -------
    dict
        The ``exports.openvino_bf16`` record written to ``bmcd.json``: ``passed``,
        ``forced``, ``label_agreement``, ``delta_auc``, ``max_abs_diff``, ``n``,
        ``p_all_spread``, ``cpu``, ``source_sha256``, ``gate`` (every number) ...

    Raises
    ------
    ExportValidationError
        The gate failed and ``force`` is False (the failed record is still written, so
        the backend keeps refusing bf16). ``details`` holds the numbers.
    ConfigError
        This CPU has no native bf16 (nothing to measure; nothing is recorded).
    MissingDependencyError
        OpenVINO is not installed (``pip install 'bmcd[openvino]'``).
    ModelFormatError
        No ``model.onnx``, or it changed since export.

    Examples
    --------
    >>> from bmcd.exporters.bf16 import gate_bf16                     # doctest: +SKIP
    >>> rec = gate_bf16("model/", samples="data/val")                 # doctest: +SKIP
    >>> rec["passed"], rec["label_agreement"], rec["delta_auc"]       # doctest: +SKIP
    (True, 1.0, -0.0004)
    """
    from ..runtimes.onnx import OnnxRuntimeBackend
    from ..runtimes.openvino import (
        BF16_EXPORT_KEY,
        OpenVINOBackend,
        cpu_description,
        openvino_module,
    )

    ov = openvino_module()
    d = Path(model_dir)
    meta = read_model_meta(d)
    fp32 = d / ONNX_FILE
    if not fp32.is_file():
        raise ModelFormatError(
            f"'{d}' has no {ONNX_FILE} to gate. Export it first: `bmcd export {d} --bf16`."
        )
    sha = file_sha256(fp32)
    recorded = (meta.export("onnx") or {}).get("sha256")
    if recorded and recorded != sha:
        raise ModelFormatError(
            f"'{fp32}' does not match the sha256 recorded in {MODEL_JSON} (recorded "
            f"{recorded[:12]}..., file {sha[:12]}...): it changed after export. Re-export it "
            f"with `bmcd export {d}`."
        )
    config = meta.preprocess
    threshold = float(meta.threshold)
    b = max(1, int(batch_size))

    # bf16 first: on a CPU without native bf16 this raises ConfigError before any work
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*without a passed gate.*")
        warnings.filterwarnings("ignore", message=".*although its bf16 gate failed.*")
        be16 = OpenVINOBackend(fp32, meta.to_dict(), precision="bf16", force_bf16=True,
                               intra_op_threads=intra_op_threads)
    be32 = OnnxRuntimeBackend(fp32, meta.to_dict(), precision="fp32",
                              intra_op_threads=intra_op_threads)
    val = _resolve_samples(
        samples, config, default_n=DEFAULT_INT8_VALIDATION, limit=n, seed=_SEED_VALIDATION,
        purpose="the bf16 gate (held out)",
    )
    p32 = _predict(be32, val.x, b)
    p16 = _predict(be16, val.x, b)
    # the fp32 model's own label stability under +-1 gray level of noise, as the int8 gate
    # reports it (a fragile model cannot pass, whatever the precision)
    noise = np.random.default_rng(_SEED_VALIDATION).uniform(-1.0, 1.0, val.x.shape)
    p_noisy = _predict(be32, np.clip(val.x + noise, 0.0, 255.0).astype(np.float32), b)
    noise_agreement = float(np.mean((p32 >= threshold) == (p_noisy >= threshold)))
    del noise, be16, be32

    g = _gate(p32, p16, val.labels, threshold, min_label_agreement, max_auc_change,
              p_noisy=p_noisy, name="bf16")
    g["fp32_noise_label_agreement"] = noise_agreement
    g["fp32_noise"] = "uniform +-1 gray level per pixel"
    spread = g["p_all_spread"]
    # pass/fail and the reasons are the int8 gate's (_gate): one rule for both precisions
    reasons = list(g["failed_because"])
    passed = bool(g["passed"])
    record: dict[str, Any] = {
        "passed": passed,
        "forced": bool(force and not passed),
        "label_agreement": g["label_agreement"],
        "delta_auc": g.get("roc_auc_change"),
        "max_abs_diff": g["max_abs_diff"],
        "n": g["n"],
        "p_all_spread": spread,
        "cpu": cpu_description(),
        "source": ONNX_FILE,
        "source_sha256": sha,
        "validation": val.source,
        "gate": g,
        "failed_because": reasons,
        "openvino_version": str(ov.__version__),
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
    }
    update_model_json(d, "exports", BF16_EXPORT_KEY, record)
    if not passed and not force:
        auc = (
            f", ROC-AUC {g['roc_auc_fp32']:.4f} -> {g['roc_auc_bf16']:.4f} (change "
            f"{g['roc_auc_change']:+.4f}, allowed +-{max_auc_change:g})"
            if "roc_auc_change" in g else ""
        )
        raise ExportValidationError(
            f"OpenVINO bf16 failed its gate against fp32 ONNX Runtime on {g['n']} images "
            f"({val.source}): {'; '.join(reasons)}. The rule: {g['rule']}{auc}. Label agreement "
            f"{g['label_agreement']:.4f}, max |dp| "
            f"{g['max_abs_diff']:.3g}; the fp32 model keeps its own label on "
            f"{noise_agreement:.4f} of these images under +-1 gray level of noise. Recorded "
            f"as failed in {MODEL_JSON} exports.{BF16_EXPORT_KEY}, so bf16 stays refused: "
            f"run fp32 or int8, gate on other validation images (samples=...), or pass "
            f"force=True (`--force`) to allow bf16 anyway.",
            details={**g, "p_all_spread": spread},
        )
    if record["forced"]:
        warnings.warn(
            f"bf16 failed its gate ({'; '.join(reasons)}) and is allowed anyway (force=True); "
            f"the numbers are in {MODEL_JSON} exports.{BF16_EXPORT_KEY}.",
            UserWarning,
            stacklevel=2,
        )
    return record


def format_bf16_gate(record: dict[str, Any]) -> str:
    """Human-readable lines for a :func:`gate_bf16` record (what ``bmcd export --bf16`` prints)."""
    g = record["gate"]
    s = record["p_all_spread"]
    lines = [
        f"bf16 gate (OpenVINO bf16 vs ONNX Runtime fp32) on {g['n']} images "
        f"[{record['validation']}], CPU {record['cpu'].get('model_name', '?')}:",
        f"  label agreement {g['label_agreement']:.4f} ({g['label_disagreements']} flipped, "
        f"allowed {g['allowed_label_flips']}); max |dp| {g['max_abs_diff']:.3g}, mean {g['mean_abs_diff']:.3g}; fp32 p(all) "
        f"{s['p05']:.3f}..{s['p95']:.3f} (5-95%), std {s['std']:.3f}",
    ]
    if "roc_auc_change" in g:
        lines.append(
            f"  ROC-AUC {g['roc_auc_fp32']:.4f} -> {g['roc_auc_bf16']:.4f} (change "
            f"{g['roc_auc_change']:+.4f}, limit {g['max_auc_change']:g}); weighted F1 "
            f"{g['f1_weighted_fp32']:.4f} -> {g['f1_weighted_bf16']:.4f}"
        )
    if record["passed"]:
        lines.append(f"  passed: recorded in {MODEL_JSON} exports.openvino_bf16")
    elif record["forced"]:
        lines.append("  GATE FAILED: bf16 allowed because of --force (recorded as forced)")
    else:
        lines.append(f"  GATE FAILED: {'; '.join(record['failed_because'])}")
    return "\n".join(lines)
