"""Export a trained bmcd model to ONNX, check it against Keras, and quantize it to int8.

The exporter validates itself: a file is written under its final name only after
ONNX Runtime has been shown to reproduce the Keras model on preprocessed images, and the
numbers go into ``bmcd.json`` (``exports.onnx`` / ``exports.onnx_int8``)::

    model/
      bmcd.json          exports.onnx = {file, opset, ir_version, sha256, bytes, parity, samples}
      model.keras
      model.onnx         input "image" float32 (batch, S, S, 3) RGB [0, 255] -> output "p_all"
      model.int8.onnx    QDQ, per-channel int8 weights, uint8 activations

Both ONNX files carry the model's preprocessing config, classes and threshold in their
``metadata_props`` (key ``"bmcd"``), so a bare ``.onnx`` file is self-describing.

TensorFlow and tf2onnx (the ``train`` extra) are needed by :func:`export_onnx` only;
:func:`quantize_int8` needs ``onnx`` and ``sympy`` (also in ``train``) but not TensorFlow.

Layout (measured at 224 px): Keras convolutions are NHWC and ONNX ``Conv`` is NCHW, so
tf2onnx wraps every convolution in Transpose nodes; its transpose optimizer cancels them
pairwise, leaving 1 Transpose in MobileNetV2 (after the input) and 2 in ResNet50 (the
input, and the RGB->BGR flip of its in-graph caffe scaling), both on the 3-channel input
only. ONNX Runtime's optimised graphs keep that count (its NCHWc layout transformer adds
Reorder nodes instead). ``inputs_as_nchw`` removes the input Transpose, but keeping the
NHWC input contract means putting the same Transpose back in front: the optimised graph
is the same, and so is the speed within noise (MobileNetV2, batch 32, 2 threads, three
runs of 16-25 interleaved batches: 170 vs 164, 52 vs 53 and 62 vs 68 images/s, the machine
being shared). The plain conversion is kept (:data:`INPUT_LAYOUT`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import math
import os
import tempfile
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .._deps import optional_import
from .._version import __version__
from ..artifact import (
    KERAS_FILE,
    MODEL_JSON,
    ONNX_FILE,
    ONNX_INT8_FILE,
    onnx_metadata,
    read_model_json,
    update_model_json,
    write_model_json,
)
from ..errors import DatasetError, ExportValidationError, ModelFormatError, NotFittedError
from ..preprocessing import PreprocessConfig, default_workers, preprocess_batch

__all__ = [
    "DEFAULT_OPSET",
    "FP32_ATOL",
    "INT8_MIN_LABEL_AGREEMENT",
    "INT8_MAX_AUC_CHANGE",
    "export_onnx",
    "validate_parity",
    "quantize_int8",
    "check_onnxruntime_support",
]

INPUT_NAME = "image"
OUTPUT_NAME = "p_all"
#: The input contract of every bmcd ONNX file (kept NHWC whatever the internal layout).
INPUT_LAYOUT = "NHWC"

#: Default ONNX opset. tf2onnx 1.17 writes opsets up to 18, and export, parity and int8
#: quantization behave the same at 17 and 18 here (checked). 17 (IR version 8) is the
#: default because more deployed runtimes accept it (onnxruntime >= 1.12, against >= 1.14
#: for 18) and nothing in these graphs needs 18. :func:`check_onnxruntime_support` checks
#: the installed onnxruntime before converting.
DEFAULT_OPSET = 17
#: Oldest opset accepted: per-channel QDQ quantization needs opset >= 13.
MIN_OPSET = 13

# fp32 tolerance on p(all). The ONNX graph is the same fp32 arithmetic as Keras up to
# graph rewrites (BatchNorm folded into Conv, transposes cancelled, different GEMM/conv
# kernels and summation orders in oneDNN vs MLAS); measured differences are ~1e-7. 1e-4
# leaves three orders of magnitude for other CPUs / kernels while still catching any real
# conversion bug (a wrong layout, a dropped layer or a damaged weight moves p by >> 1e-3).
FP32_ATOL = 1e-4
# int8 gate (DESIGN.md "Tolerances"): int8 rounding changes p(all) by up to a few 1e-2,
# which may flip a cell lying on the threshold, so labels are compared as an agreement rate
# rather than exactly; ranking quality must not move by more than 0.01 of ROC-AUC.
INT8_MIN_LABEL_AGREEMENT = 0.99
INT8_MAX_AUC_CHANGE = 0.01

#: Synthetic cells used for the parity check when no samples are given.
DEFAULT_PARITY_SAMPLES = 32
#: The fewest calibration images the design accepts without a warning.
MIN_CALIBRATION = 100
#: Held-out synthetic cells for the int8 gate when no validation set is given.
DEFAULT_INT8_VALIDATION = 200

# Fixed seeds for the synthetic fallbacks, distinct from each other and from the seeds the
# tests and the demo train on (0, 1), so calibration and validation cells are held out.
_SEED_PARITY = 40_001
_SEED_CALIBRATION = 40_002
_SEED_VALIDATION = 40_003

_QUANT_FORMATS = ("QDQ", "QOperator")


# ---------------------------------------------------------------------------------------
# samples: paths / Dataset / folder / array -> preprocessed array (+ labels when known)
# ---------------------------------------------------------------------------------------


@dataclass
class _Samples:
    x: np.ndarray  # (n, S, S, 3) float32, preprocessed
    labels: np.ndarray | None  # (n,) 0 = hem, 1 = all, or None when unknown
    source: str  # human-readable provenance, recorded in bmcd.json


def _subset_indices(n: int, limit: int | None) -> np.ndarray:
    """Evenly spaced, deterministic indices (keeps the class mix of sorted datasets)."""
    if limit is None or n <= limit:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, int(limit)).round().astype(np.int64))


def _synthetic_samples(
    config: PreprocessConfig, n: int, seed: int, purpose: str
) -> _Samples:
    from ..data import load_dataset
    from ..synthetic import make_cells

    n = max(2, int(n))
    per_class = math.ceil(n / 2)
    subjects = 2 * min(4, per_class)
    # Drawn at about twice the network input (C-NMC's 450 px at 224): preprocessing crops
    # and resizes anyway, and drawing small cells is much faster for small models.
    side = min(450, max(128, 2 * config.image_size))
    with tempfile.TemporaryDirectory(prefix="bmcd-export-cells-") as tmp:
        make_cells(tmp, n_per_class=per_class, n_subjects=subjects, image_size=side, seed=seed,
                   progress=False)
        ds = load_dataset(tmp)
        idx = _subset_indices(len(ds), n)
        ds = ds.subset(idx)
        x = preprocess_batch(ds.absolute_paths(), config)
    return _Samples(
        x,
        ds.labels.copy(),
        f"synthetic: {len(ds)} cells from bmcd.synthetic.make_cells(seed={seed}, "
        f"image_size={side}), made for {purpose}",
    )


def _resolve_samples(
    samples: Any,
    config: PreprocessConfig,
    *,
    default_n: int,
    limit: int | None,
    seed: int,
    purpose: str,
) -> _Samples:
    """Turn what the caller gave into preprocessed network input.

    ``samples`` may be None (synthetic cells), a :class:`bmcd.data.Dataset` (labels
    known), a dataset folder or CSV manifest (read with :func:`bmcd.data.load_dataset`; a
    folder without a recognised layout is searched for image files, labels unknown), a
    sequence of image paths / encoded bytes / arrays, or a preprocessed float array of
    shape (n, S, S, 3).
    """
    S = config.image_size
    if samples is None:
        return _synthetic_samples(config, default_n if limit is None else limit, seed, purpose)

    if isinstance(samples, np.ndarray):
        if samples.ndim != 4 or samples.shape[1:] != (S, S, 3):
            raise ValueError(
                f"An array of samples must be preprocessed network input of shape (n, {S}, "
                f"{S}, 3); received shape {samples.shape}. Pass image paths instead, or run "
                f"bmcd.preprocessing.preprocess_batch with the model's config first."
            )
        idx = _subset_indices(len(samples), limit)
        x = np.ascontiguousarray(samples[idx], dtype=np.float32)
        return _Samples(x, None, f"array: {len(x)} preprocessed images")

    dataset = None
    if hasattr(samples, "absolute_paths") and hasattr(samples, "labels"):
        dataset = samples  # a bmcd.data.Dataset
        where = f"{getattr(samples, 'root', None) or 'Dataset'}"
    elif isinstance(samples, tuple) and len(samples) == 2:
        from ..data import load_dataset

        dataset = load_dataset(samples)
        where = "(paths, labels)"
    elif isinstance(samples, (str, os.PathLike)):
        path = Path(samples)
        if not path.exists():
            raise DatasetError(f"Samples path '{path}' does not exist.")
        if path.is_file() and path.suffix.lower() not in (".csv", ".tsv", ".txt"):
            return _paths_samples([path], config, limit, f"file {path}")
        from ..data import load_dataset

        try:
            dataset = load_dataset(path)
        except DatasetError:
            if not path.is_dir():
                raise
            from ..preprocessing import IMAGE_EXTENSIONS

            files = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            )
            if not files:
                raise DatasetError(
                    f"No images found under '{path}' (looked for {', '.join(IMAGE_EXTENSIONS)})."
                ) from None
            return _paths_samples(files, config, limit, f"folder {path} (labels unknown)")
        where = str(path)
    if dataset is not None:
        if len(dataset) == 0:
            raise DatasetError(f"The samples dataset ({where}) is empty.")
        idx = _subset_indices(len(dataset), limit)
        every = dataset.absolute_paths()
        paths = [every[i] for i in idx]
        labels = np.asarray(dataset.labels)[idx].astype(np.int64)
        x = preprocess_batch(paths, config)
        return _Samples(x, labels, f"dataset: {len(paths)} images from {where}")

    if isinstance(samples, Sequence) and not isinstance(samples, (str, bytes)):
        return _paths_samples(list(samples), config, limit, "given images (labels unknown)")
    raise TypeError(
        f"samples must be None, a bmcd Dataset, a folder or CSV path, a list of images or a "
        f"preprocessed array; received {type(samples).__name__}."
    )


def _paths_samples(items: list, config: PreprocessConfig, limit: int | None, what: str) -> _Samples:
    if not items:
        raise DatasetError("The samples list is empty; pass at least one image.")
    idx = _subset_indices(len(items), limit)
    chosen = [items[i] for i in idx]
    x = preprocess_batch(chosen, config)
    return _Samples(x, None, f"{what}: {len(chosen)} images")


# ---------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _temp_path(directory: Path, name: str) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        # mkstemp creates 0600; give the file the mode a plain open() would (0666 & ~umask)
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
    finally:
        os.close(fd)
    return Path(tmp)


def _session(path: str | os.PathLike, threads: int | None = None):
    """An ONNX Runtime CPU session with explicit providers and options set once."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = int(threads or default_workers())
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph / ...
        raise ModelFormatError(
            f"ONNX Runtime {ort.__version__} could not load '{path}' "
            f"({exc.__class__.__name__}: {str(exc).strip()[:400]})."
        ) from exc


def _run_session(session, x: np.ndarray, batch_size: int) -> np.ndarray:
    name_in = session.get_inputs()[0].name
    name_out = session.get_outputs()[0].name
    out = []
    for i in range(0, len(x), batch_size):
        xb = np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32)
        out.append(np.asarray(session.run([name_out], {name_in: xb})[0]).reshape(len(xb)))
    return np.concatenate(out) if out else np.empty(0, np.float32)


def _keras_predict(keras_model, x: np.ndarray, batch_size: int) -> np.ndarray:
    out = [
        np.asarray(keras_model(x[i : i + batch_size], training=False)).reshape(-1)
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(out) if out else np.empty(0, np.float32)


def _human_metadata(meta: dict[str, Any], precision: str) -> dict[str, str]:
    """``metadata_props``: the machine-readable "bmcd" JSON plus plain keys for humans."""
    props = dict(onnx_metadata(meta))
    props.update(
        {
            "bmcd_version": str(meta.get("bmcd_version", __version__)),
            "arch": str(meta["arch"]),
            "classes": ",".join(meta["classes"]),
            "positive_class": str(meta["positive_class"]),
            "threshold": repr(float(meta["threshold"])),
            "image_size": str(int(meta["image_size"])),
            "precision": precision,
            "input": f"{INPUT_NAME}: float32 (batch, S, S, 3) {INPUT_LAYOUT} RGB in [0, 255], "
            f"preprocessed with bmcd.preprocessing (crop to cell, pad, resize)",
            "output": f"{OUTPUT_NAME}: float32 (batch, 1) probability of class 'all'",
        }
    )
    return props


def _set_metadata(proto, props: dict[str, str]) -> None:
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


# ---------------------------------------------------------------------------------------
# opset / IR support of the installed onnxruntime
# ---------------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _ort_probe(opsets: tuple[tuple[str, int], ...], ir_version: int) -> str | None:
    """None when onnxruntime loads a one-node model with these opsets and IR, else why not."""
    optional_import("onnx", purpose="ONNX export")
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid(d, int(v)) for d, v in opsets]
    )
    model.ir_version = int(ir_version)
    try:
        so = ort.SessionOptions()
        so.log_severity_level = 4
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        return f"{exc.__class__.__name__}: {str(exc).strip().splitlines()[0][:300]}"
    return None


def _ort_max(kind: str) -> int | None:
    if kind == "opset":
        for v in range(40, 6, -1):
            if _ort_probe((("", v),), 8) is None:
                return v
    else:
        for v in range(20, 2, -1):
            if _ort_probe((("", 9),), v) is None:
                return v
    return None


def check_onnxruntime_support(opset: int, ir_version: int, domains: dict[str, int] | None = None) -> None:
    """Check that the installed onnxruntime runs models of this opset and IR version.

    Parameters
    ----------
    opset : int
        The default-domain (``ai.onnx``) opset.
    ir_version : int
        The ONNX IR version of the file.
    domains : dict, optional
        Other opset imports (e.g. ``{"ai.onnx.ml": 2}``).

    Raises
    ------
    ModelFormatError
        When onnxruntime refuses such a model; the message gives the newest opset and IR
        version this onnxruntime accepts.
    """
    import onnxruntime as ort

    opsets = (("", int(opset)),) + tuple(sorted((domains or {}).items()))
    why = _ort_probe(opsets, int(ir_version))
    if why is None:
        return
    raise ModelFormatError(
        f"The installed onnxruntime {ort.__version__} cannot run an ONNX model with opset "
        f"{opset} and IR version {ir_version} ({why}). It runs up to opset "
        f"{_ort_max('opset')} and IR version {_ort_max('ir')}. Export with a lower opset "
        f"(e.g. `bmcd export MODEL --opset {DEFAULT_OPSET}`) or upgrade onnxruntime."
    )


def _check_opset(opset: int) -> int:
    """The IR version tf2onnx writes for ``opset``; raise if tf2onnx or ORT can't do it."""
    tf2onnx = optional_import("tf2onnx", purpose="ONNX export")
    table = dict(tf2onnx.constants.OPSET_TO_IR_VERSION)
    top = max(table)
    if not isinstance(opset, int) or isinstance(opset, bool) or not MIN_OPSET <= opset <= top:
        raise ModelFormatError(
            f"opset must be an integer from {MIN_OPSET} to {top} (the newest tf2onnx "
            f"{tf2onnx.__version__} writes); received {opset!r}. The default is {DEFAULT_OPSET}."
        )
    ir = int(table[opset])
    check_onnxruntime_support(opset, ir)
    return ir


# ---------------------------------------------------------------------------------------
# Keras side
# ---------------------------------------------------------------------------------------


def _load_keras(model_dir: Path):
    from ..runtimes.keras import image_preprocess_layer, keras_module

    keras = keras_module("ONNX export")
    image_preprocess_layer()  # registers bmcd>ImagePreprocess for safe-mode loading
    path = model_dir / KERAS_FILE
    if not path.is_file():
        raise ModelFormatError(
            f"'{model_dir}' has no {KERAS_FILE}, so there is nothing to export. Train and save "
            f"a model first (Classifier.fit(...).save(dir) or `bmcd train`)."
        )
    try:
        return keras.saving.load_model(str(path), safe_mode=True, compile=False)
    except Exception as exc:
        raise ModelFormatError(
            f"Could not load the Keras model '{path}' ({exc.__class__.__name__}: {exc})."
        ) from exc


_COMPARED_KEYS = ("arch", "image_size", "preprocess", "threshold", "classes")


def _resolve_model(model: Any, out: str | os.PathLike | None):
    """-> (keras_model, meta, model_dir). Saves a Classifier into ``out`` when needed."""
    if isinstance(model, (str, os.PathLike)):
        src = Path(model)
        meta = read_model_json(src)
        keras_model = _load_keras(src)
        dest = Path(out) if out is not None else src
        if dest.resolve() != src.resolve():
            # a serving directory: bmcd.json (exports reset) + the ONNX files, no model.keras
            meta = dict(meta, exports={})
            write_model_json(dest, meta)
        return keras_model, meta, dest

    backend = getattr(model, "backend_", None) if hasattr(model, "save") else None
    if backend is None:
        if hasattr(model, "save"):
            raise NotFittedError(
                "export_onnx needs a fitted or loaded Classifier; this one has no backend_. "
                "Call fit(...) or Classifier.load(dir) first."
            )
        raise TypeError(
            f"export_onnx expects a bmcd Classifier or a model directory; received "
            f"{type(model).__name__}."
        )
    keras_model = getattr(backend, "model", None)
    if keras_model is None:
        raise ModelFormatError(
            f"The Classifier runs on the {getattr(backend, 'name', type(backend).__name__)!r} "
            f"backend, which has no Keras model to convert. Load it with "
            f"Classifier.load(dir, backend='keras') or pass the model directory instead."
        )
    if out is None:
        out = getattr(model, "model_dir_", None)
    if out is None:
        raise ValueError(
            "export_onnx(classifier) needs out=<model directory> to write model.onnx into "
            "(the classifier is saved there first if it is not already)."
        )
    dest = Path(out)
    mem_meta = getattr(model, "meta_", None) or {}
    saved = (dest / MODEL_JSON).is_file() and (dest / KERAS_FILE).is_file()
    if saved:
        disk = read_model_json(dest)
        saved = all(disk.get(k) == mem_meta.get(k) for k in _COMPARED_KEYS if k in mem_meta)
        threshold = getattr(model, "threshold_", None)
        saved = saved and (threshold is None or float(threshold) == float(disk["threshold"]))
    if not saved:
        model.save(dest)
    meta = read_model_json(dest)
    return keras_model, meta, dest


# ---------------------------------------------------------------------------------------
# conversion
# ---------------------------------------------------------------------------------------


@contextmanager
def _quiet_tf2onnx():
    logger = logging.getLogger("tf2onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _convert(keras_model, image_size: int, opset: int):
    """tf2onnx conversion with an explicit NHWC input signature; returns an onnx.ModelProto.

    A module-level function so that tests can damage its output on purpose.
    """
    tf = optional_import("tensorflow", purpose="ONNX export")
    tf2onnx = optional_import("tf2onnx", purpose="ONNX export")
    S = int(image_size)
    spec = [tf.TensorSpec((None, S, S, 3), tf.float32, name=INPUT_NAME)]
    with _quiet_tf2onnx():
        proto, _ = tf2onnx.convert.from_keras(keras_model, input_signature=spec, opset=opset)
    return proto


def _normalise_io(proto, image_size: int) -> None:
    """One input ``image`` (batch, S, S, 3), one output ``p_all`` (batch, 1), batch dynamic."""
    g = proto.graph
    init = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in init]
    if len(inputs) != 1 or len(g.output) != 1:
        raise ModelFormatError(
            f"The converted graph has {len(inputs)} inputs and {len(g.output)} outputs; a bmcd "
            f"model has exactly one of each."
        )
    inp, outp = inputs[0], g.output[0]
    if inp.name != INPUT_NAME:
        _rename_tensor(g, inp.name, INPUT_NAME)
    if outp.name != OUTPUT_NAME:
        _rename_tensor(g, outp.name, OUTPUT_NAME)
    dims = inp.type.tensor_type.shape.dim
    got = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if len(dims) != 4 or got[1:] != [image_size, image_size, 3]:
        raise ModelFormatError(
            f"The converted input has shape {got}; expected (batch, {image_size}, "
            f"{image_size}, 3)."
        )
    for d in (dims[0], *outp.type.tensor_type.shape.dim[:1]):
        d.Clear()
        d.dim_param = "batch"


def _rename_tensor(graph, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        if vi.name == old:
            vi.name = new


# ---------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------


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
        raise ValueError(f"x must be a non-empty (n, S, S, 3) batch; received shape {x.shape}.")
    b = max(1, int(batch_size))
    p_keras = _keras_predict(keras_model, x, b).astype(np.float64)
    session = _session(onnx_path)
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
        "finite": finite,
    }
    record["passed"] = bool(finite and max_diff <= atol and disagreements == 0)
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


# ---------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------


def export_onnx(
    model: Any,
    out: str | os.PathLike | None = None,
    opset: int | None = None,
    validate: bool = True,
    samples: Any = None,
    atol: float = FP32_ATOL,
    batch_size: int = 16,
    n_samples: int | None = None,
) -> dict[str, Any]:
    """Convert a bmcd model to ONNX, check it against Keras, and write ``model.onnx``.

    Parameters
    ----------
    model : Classifier or path
        A fitted/loaded :class:`bmcd.Classifier` with its Keras backend, or a model
        directory holding ``bmcd.json`` and ``model.keras``.
    out : path, optional
        The model directory to write into. Default: the model directory itself. For a
        Classifier it is required unless the classifier knows its directory; the classifier
        is saved there first when it is not already. For a directory ``model`` and a
        different ``out``, ``out`` becomes a serving directory (``bmcd.json`` + ONNX files).
    opset : int, optional
        ONNX opset (default :data:`DEFAULT_OPSET`). Checked against tf2onnx and the
        installed onnxruntime before converting.
    validate : bool
        Run the parity check (strongly recommended). When False the file is still loaded by
        ONNX Runtime once, and ``parity`` is recorded as None.
    samples : None, Dataset, folder, list of images or preprocessed array
        Images for the parity check. Default: :data:`DEFAULT_PARITY_SAMPLES` synthetic
        cells made on the fly (recorded as such).
    atol : float
        Largest accepted ``|p_keras - p_onnx|`` (default :data:`FP32_ATOL`).
    batch_size : int
        ONNX batch size of the first parity pass; the second uses twice this.
    n_samples : int, optional
        Synthetic cells to make when ``samples`` is None (default 32), or the most images
        to use from ``samples`` (default: all).

    Returns
    -------
    dict
        The ``exports.onnx`` record written to ``bmcd.json`` (``file``, ``opset``,
        ``ir_version``, ``sha256``, ``bytes``, ``parity``, ``samples``, ...) plus ``path``.

    Raises
    ------
    ExportValidationError
        The ONNX model disagrees with Keras (``.details`` has the numbers). No
        ``model.onnx`` and no temporary file is left behind.
    ModelFormatError
        Bad model directory, or an opset / IR version the installed onnxruntime can't run.
    MissingDependencyError
        tensorflow / tf2onnx / onnx are not installed (``pip install 'bmcd[train]'``).

    Examples
    --------
    >>> from bmcd.exporters import export_onnx                    # doctest: +SKIP
    >>> rec = export_onnx("model/")                               # doctest: +SKIP
    >>> rec["parity"]["max_abs_diff"] <= 1e-4                     # doctest: +SKIP
    True
    """
    if not (isinstance(atol, (int, float)) and atol >= 0):
        raise ValueError(f"atol must be a non-negative number; received {atol!r}.")
    if isinstance(model, (str, os.PathLike)):
        read_model_json(model)  # a bad directory fails here, before the heavy imports
    onnx = optional_import("onnx", purpose="ONNX export")
    optional_import("tf2onnx", purpose="ONNX export")
    opset = DEFAULT_OPSET if opset is None else opset
    _check_opset(opset)  # fail fast, before the (slow) conversion

    keras_model, meta, out_dir = _resolve_model(model, out)
    S = int(meta["image_size"])
    in_shape = tuple(keras_model.inputs[0].shape[1:])
    if in_shape != (S, S, 3):
        raise ModelFormatError(
            f"The Keras model takes input {in_shape} but bmcd.json says image_size {S}, i.e. "
            f"({S}, {S}, 3). The model directory is inconsistent; re-save the model."
        )
    config = PreprocessConfig.from_dict(meta["preprocess"])
    threshold = float(meta["threshold"])

    parity_samples = None
    if validate:
        parity_samples = _resolve_samples(
            samples, config, default_n=DEFAULT_PARITY_SAMPLES,
            limit=n_samples, seed=_SEED_PARITY, purpose="the ONNX parity check",
        )

    proto = _convert(keras_model, S, opset)
    _normalise_io(proto, S)
    domains = {o.domain: int(o.version) for o in proto.opset_import if o.domain not in ("", "ai.onnx")}
    check_onnxruntime_support(opset, int(proto.ir_version), domains)
    _set_metadata(proto, _human_metadata(meta, "fp32"))
    proto.doc_string = (
        f"bmcd {meta['arch']} classifier (p of 'all' vs 'hem'), exported by bmcd {__version__}"
    )
    data = proto.SerializeToString()
    real_opset = next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset)
    real_ir = int(proto.ir_version)
    del proto

    final = out_dir / ONNX_FILE
    tmp = _temp_path(out_dir, ONNX_FILE)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        parity = None
        if validate:
            parity = validate_parity(
                keras_model, tmp, parity_samples.x, threshold=threshold, atol=atol,
                batch_size=batch_size, check=True,
            )
        else:
            _session(tmp)  # at least prove that onnxruntime loads it
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

    import onnxruntime as ort
    import tf2onnx

    record = {
        "file": ONNX_FILE,
        "opset": real_opset,
        "ir_version": real_ir,
        "sha256": _sha256(final),
        "bytes": final.stat().st_size,
        "input": f"{INPUT_NAME} float32 (batch, {S}, {S}, 3) {INPUT_LAYOUT}",
        "output": OUTPUT_NAME,
        "validated": bool(validate),
        "parity": parity,
        "samples": parity_samples.source if parity_samples else None,
        "tf2onnx_version": tf2onnx.__version__,
        "onnxruntime_version": ort.__version__,
        "onnx_version": onnx.__version__,
        "created": _now(),
    }
    meta = update_model_json(out_dir, "exports", "onnx", record)
    _drop_stale_int8(out_dir, meta, record["sha256"])
    return {**record, "path": str(final)}


def _drop_stale_int8(model_dir: Path, meta: dict[str, Any], fp32_sha: str) -> None:
    """An int8 file made from an earlier model.onnx no longer matches: remove it and its record."""
    rec = meta.get("exports", {}).get("onnx_int8")
    path = model_dir / ONNX_INT8_FILE
    if rec is None and not path.exists():
        return
    if rec is not None and rec.get("source_sha256") == fp32_sha and path.exists():
        return
    if rec is not None:
        meta["exports"].pop("onnx_int8", None)
        write_model_json(model_dir, meta)
    if not path.exists():
        return  # only a record without its file (e.g. a copied bmcd.json): nothing to say
    path.unlink()
    warnings.warn(
        f"Removed the int8 model in '{model_dir}': it was quantized from an earlier "
        f"{ONNX_FILE}. Run quantize_int8 (or `bmcd export --int8`) again.",
        UserWarning,
        stacklevel=3,
    )


# ---------------------------------------------------------------------------------------
# int8
# ---------------------------------------------------------------------------------------


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
    min_agreement: float, max_auc_change: float,
) -> dict[str, Any]:
    from ..metrics import classification_metrics

    finite = bool(np.isfinite(p32).all() and np.isfinite(p8).all())
    agree = float(np.mean((p32 >= threshold) == (p8 >= threshold)))
    diff = np.abs(p32.astype(np.float64) - p8.astype(np.float64))
    rec: dict[str, Any] = {
        "n": int(len(p32)),
        "label_agreement": agree,
        "label_disagreements": int(round((1 - agree) * len(p32))),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "threshold": float(threshold),
        "min_label_agreement": float(min_agreement),
        "max_auc_change": float(max_auc_change),
        "labels_known": labels is not None,
        "finite": finite,
    }
    ok = finite and agree >= min_agreement
    if labels is not None and len(np.unique(labels)) == 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m32 = classification_metrics(labels, p32, threshold)
            m8 = classification_metrics(labels, p8, threshold)
        rec.update(
            {
                "roc_auc_fp32": m32["roc_auc"],
                "roc_auc_int8": m8["roc_auc"],
                "roc_auc_change": m8["roc_auc"] - m32["roc_auc"],
                "f1_weighted_fp32": m32["f1_weighted"],
                "f1_weighted_int8": m8["f1_weighted"],
                "f1_weighted_change": m8["f1_weighted"] - m32["f1_weighted"],
                "accuracy_fp32": m32["accuracy"],
                "accuracy_int8": m8["accuracy"],
            }
        )
        ok = ok and abs(rec["roc_auc_change"]) <= max_auc_change
    elif labels is not None:
        rec["labels_known"] = False  # a single class: AUC undefined, gate on agreement only
    rec["passed"] = bool(ok)
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
    reduce_range: bool = False,
    keep_head_float: bool = True,
    keep_first_conv_float: bool | None = None,
    batch_size: int = 16,
    min_label_agreement: float = INT8_MIN_LABEL_AGREEMENT,
    max_auc_change: float = INT8_MAX_AUC_CHANGE,
) -> dict[str, Any]:
    """Statically quantize ``model.onnx`` to ``model.int8.onnx`` and gate it against fp32.

    ONNX Runtime static quantization: ``quant_pre_process`` (shape inference and graph
    optimisation), then ``quantize_static`` with MinMax calibration on preprocessed images.
    Weights are int8, per output channel; activations are uint8 (asymmetric). That is what
    onnxruntime recommends for x86-64 CPUs (U8S8); on CPUs with VNNI (this project's
    machines) ``reduce_range=False`` is right, on older AVX2-only CPUs pass
    ``reduce_range=True`` (7-bit weights) to avoid saturation in the U8S8 kernels.

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
    reduce_range : bool
        7-bit weights, for CPUs without VNNI.
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
    min_label_agreement, max_auc_change : float
        The gate (defaults from DESIGN.md: 0.99 and 0.01).

    Returns
    -------
    dict
        The ``exports.onnx_int8`` record written to ``bmcd.json`` plus ``path``.

    Raises
    ------
    ExportValidationError
        The gate failed and ``force`` is False; no ``model.int8.onnx`` is kept.

    Examples
    --------
    >>> from bmcd.exporters import export_onnx, quantize_int8     # doctest: +SKIP
    >>> export_onnx("model/")                                     # doctest: +SKIP
    >>> rec = quantize_int8("model/", calibration="data/train")   # doctest: +SKIP
    >>> rec["gate"]["label_agreement"]                            # doctest: +SKIP
    0.995
    """
    onnx = optional_import("onnx", purpose="int8 quantization")
    optional_import("sympy", purpose="int8 quantization (quant_pre_process shape inference)")
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if quant_format not in _QUANT_FORMATS:
        raise ValueError(f"quant_format must be one of {_QUANT_FORMATS}; received {quant_format!r}.")
    if int(n) < 1:
        raise ValueError(f"n (calibration images) must be >= 1; received {n!r}.")
    d = Path(model_dir)
    meta = read_model_json(d)
    fp32 = d / ONNX_FILE
    if not fp32.is_file():
        raise ModelFormatError(
            f"'{d}' has no {ONNX_FILE} to quantize. Export it first: export_onnx('{d}') or "
            f"`bmcd export {d} --int8`."
        )
    fp32_rec = meta.get("exports", {}).get("onnx") or {}
    fp32_sha = _sha256(fp32)
    if fp32_rec.get("sha256") and fp32_rec["sha256"] != fp32_sha:
        raise ModelFormatError(
            f"'{fp32}' does not match the sha256 recorded in {MODEL_JSON} (recorded "
            f"{fp32_rec['sha256'][:12]}..., file {fp32_sha[:12]}...): it changed after export. "
            f"Re-export it with export_onnx('{d}')."
        )
    config = PreprocessConfig.from_dict(meta["preprocess"])
    threshold = float(meta["threshold"])
    b = max(1, int(batch_size))

    cal = _resolve_samples(
        calibration, config, default_n=int(n), limit=int(n), seed=_SEED_CALIBRATION,
        purpose="int8 calibration",
    )
    if len(cal.x) < MIN_CALIBRATION:
        warnings.warn(
            f"int8 calibration uses only {len(cal.x)} images; at least {MIN_CALIBRATION} "
            f"representative images are recommended for stable activation ranges.",
            UserWarning,
            stacklevel=2,
        )
    val = _resolve_samples(
        validation, config, default_n=DEFAULT_INT8_VALIDATION, limit=n_validation,
        seed=_SEED_VALIDATION, purpose="the int8 gate (held out)",
    )

    final = d / ONNX_INT8_FILE
    tmp_final = _temp_path(d, ONNX_INT8_FILE)
    # keep_first_conv_float=None: try the fastest model (every convolution int8) first and
    # fall back to a float first convolution only if that fails the gate
    plans = [False, True] if keep_first_conv_float is None else [bool(keep_first_conv_float)]
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
            s32 = _session(fp32)
            p32 = _run_session(s32, val.x, b)
            # Reference for reading the gate: how often the fp32 model changes its own label
            # when each pixel moves by up to one gray level (about the size of int8
            # rounding). A model that fragile cannot pass the gate, whatever the quantizer.
            noise = np.random.default_rng(_SEED_VALIDATION).uniform(-1.0, 1.0, val.x.shape)
            p_noisy = _run_session(s32, np.clip(val.x + noise, 0.0, 255.0).astype(np.float32), b)
            noise_agreement = float(np.mean((p32 >= threshold) == (p_noisy >= threshold)))
            del s32, noise, p_noisy
            best = None
            for first_conv_float in plans:
                qpath = Path(work) / f"int8_{int(first_conv_float)}.onnx"
                float_nodes = _float_nodes(pre_proto, keep_head_float, first_conv_float)
                quantize_static(
                    str(pre),
                    str(qpath),
                    _calibration_reader(cal.x, b),
                    quant_format=fmt,
                    per_channel=bool(per_channel),
                    reduce_range=bool(reduce_range),
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    nodes_to_exclude=float_nodes or None,
                    calibration_cache_path=str(cache),
                )
                p8 = _run_session(_session(qpath), val.x, b)
                g = _gate(p32, p8, val.labels, threshold, min_label_agreement, max_auc_change)
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
                    f"images ({val.source}){tried}: label agreement "
                    f"{gate['label_agreement']:.4f} (need >= {min_label_agreement:g}){auc}. For "
                    f"reference, the fp32 model keeps its own label on "
                    f"{noise_agreement:.4f} of these images under +-1 gray level of noise (a "
                    f"low value means the model itself is fragile: train it longer or on more "
                    f"data). {ONNX_INT8_FILE} was not written. Calibrate on representative "
                    f"images (calibration=<training data>), or pass force=True to keep it "
                    f"anyway.",
                    details={**gate, "attempts": [
                        {"first_conv_float": a["first_conv_float"], **a["gate"]} for a in attempts
                    ]},
                )
            qproto = onnx.load(str(best["path"]))
            _set_metadata(qproto, _human_metadata(meta, "int8"))
            qproto.doc_string = (
                f"bmcd {meta['arch']} classifier, int8 ({quant_format}, "
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
            stacklevel=2,
        )
    record = {
        "file": ONNX_INT8_FILE,
        "sha256": _sha256(final),
        "bytes": final.stat().st_size,
        "source_sha256": fp32_sha,
        "quant_format": quant_format,
        "per_channel": bool(per_channel),
        "reduce_range": bool(reduce_range),
        "weight_type": "QInt8",
        "activation_type": "QUInt8",
        "calibrate_method": "MinMax",
        "float_nodes": {"head": bool(keep_head_float), "first_conv": best["first_conv_float"]},
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

