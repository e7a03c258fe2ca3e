"""Export a trained bmcd model to ONNX, check it against Keras, and quantize it to int8.

The exporter validates itself: a file is written under its final name only after
ONNX Runtime has been shown to reproduce the Keras model on preprocessed images, and the
numbers go into ``bmcd.json`` (``exports.onnx``; int8 in :mod:`bmcd.exporters.quantize`;
the parity check itself, :func:`validate_parity`, in ``bmcd.exporters._parity``)::

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

import logging
import os
import warnings
from contextlib import contextmanager
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from .._deps import optional_import
from .._version import __version__
from ..artifact import (
    INPUT_NAME,
    KERAS_FILE,
    MODEL_JSON,
    ONNX_FILE,
    ONNX_INT8_FILE,
    OUTPUT_NAME,
    ModelMeta,
    file_sha256,
    read_model_meta,
    update_model_json,
)
from ..errors import (
    ConfigError,
    ConfigTypeError,
    ModelFormatError,
    NotFittedError,
)
from ..runtimes.onnx import CAM_OUTPUT, make_session
from ._common import (
    INPUT_LAYOUT,
    _human_metadata,
    _now,
    _set_metadata,
    _temp_path,
)
from ._parity import FP32_ATOL, validate_parity  # the check lives there; re-exported
from ._samples import _resolve_samples
from .cam import cam_graph, cam_parity_keras

# Re-exported: ``from bmcd.exporters.onnx import quantize_int8`` keeps working (the int8
# step lives in bmcd.exporters.quantize, which never imports this module).
from .quantize import (
    INT8_MAX_AUC_CHANGE,
    INT8_MIN_LABEL_AGREEMENT,
    quantize_int8,
)

__all__ = [
    "DEFAULT_OPSET",
    "FP32_ATOL",
    "INT8_MIN_LABEL_AGREEMENT",
    "INT8_MAX_AUC_CHANGE",
    "INPUT_LAYOUT",
    "export_onnx",
    "validate_parity",
    "quantize_int8",
    "check_onnxruntime_support",
]

#: Default ONNX opset. tf2onnx 1.17 writes opsets up to 18, and export, parity and int8
#: quantization behave the same at 17 and 18 here (checked). 17 (IR version 8) is the
#: default because more deployed runtimes accept it (onnxruntime >= 1.12, against >= 1.14
#: for 18) and nothing in these graphs needs 18. :func:`check_onnxruntime_support` checks
#: the installed onnxruntime before converting.
DEFAULT_OPSET = 17
#: Oldest opset accepted: per-channel QDQ quantization needs opset >= 13.
MIN_OPSET = 13

#: Synthetic cells used for the parity check when no samples are given.
DEFAULT_PARITY_SAMPLES = 32
# Fixed seed of the synthetic parity cells (the int8 seeds are in bmcd.exporters.quantize).
_SEED_PARITY = 40_001


# ---------------------------------------------------------------------------------------
# opset / IR support of the installed onnxruntime
# ---------------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _ort_probe(opsets: tuple[tuple[str, int], ...], ir_version: int) -> str | None:
    """None when onnxruntime loads a one-node model with these opsets and IR, else why not."""
    optional_import("onnx", purpose="ONNX export")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid(d, int(v)) for d, v in opsets]
    )
    model.ir_version = int(ir_version)
    try:
        make_session(model.SerializeToString(), threads=1, log_severity=4)
    except ModelFormatError as exc:
        cause = exc.__cause__ or exc
        return f"{cause.__class__.__name__}: {(str(cause).strip().splitlines() or [''])[0][:300]}"
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


def _resolve_model(model: Any, out: str | os.PathLike | None) -> tuple[Any, ModelMeta, Path]:
    """-> (keras_model, meta, model_dir). Saves a Classifier into ``out`` when needed."""
    if isinstance(model, (str, os.PathLike)):
        src = Path(model)
        meta = read_model_meta(src)
        keras_model = _load_keras(src)
        dest = Path(out) if out is not None else src
        if dest.resolve() != src.resolve():
            # a serving directory: bmcd.json (exports reset) + the ONNX files, no model.keras
            meta = replace(meta, exports={})
            meta.write(dest)
        return keras_model, meta, dest

    backend = getattr(model, "backend_", None) if hasattr(model, "save") else None
    if backend is None:
        if hasattr(model, "save"):
            raise NotFittedError(
                "export_onnx needs a fitted or loaded Classifier; this one has no backend_. "
                "Call fit(...) or Classifier.load(dir) first."
            )
        raise ConfigTypeError(
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
        raise ConfigError(
            "export_onnx(classifier) needs out=<model directory> to write model.onnx into "
            "(the classifier is saved there first if it is not already)."
        )
    dest = Path(out)
    mem_meta = getattr(model, "meta_", None) or {}
    if isinstance(mem_meta, ModelMeta):
        mem_meta = mem_meta.to_dict()
    saved = (dest / MODEL_JSON).is_file() and (dest / KERAS_FILE).is_file()
    if saved:
        disk = read_model_meta(dest)
        on_disk = disk.to_dict()
        saved = all(on_disk.get(k) == mem_meta.get(k) for k in _COMPARED_KEYS if k in mem_meta)
        threshold = getattr(model, "threshold_", None)
        saved = saved and (threshold is None or float(threshold) == float(disk.threshold))
    if not saved:
        model.save(dest)
    return keras_model, read_model_meta(dest), dest


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
    if len(inputs) != 1 or len(g.output) not in (1, 2):
        raise ModelFormatError(
            f"The converted graph has {len(inputs)} inputs and {len(g.output)} outputs; a bmcd "
            f"model has one input and the output p_all, optionally followed by cam."
        )
    inp, outp = inputs[0], g.output[0]
    if inp.name != INPUT_NAME:
        _rename_tensor(g, inp.name, INPUT_NAME)
    if outp.name != OUTPUT_NAME:
        _rename_tensor(g, outp.name, OUTPUT_NAME)
    if len(g.output) == 2:  # the class activation map (bmcd.exporters.cam)
        cam = g.output[1]
        if cam.name != CAM_OUTPUT:
            _rename_tensor(g, cam.name, CAM_OUTPUT)
        cam.type.tensor_type.shape.dim[0].Clear()
        cam.type.tensor_type.shape.dim[0].dim_param = "batch"
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
# export
# ---------------------------------------------------------------------------------------


def export_onnx(
    model: Any,
    out: str | os.PathLike | None = None,
    opset: int | None = None,
    validate: bool = True,
    samples: Any = None,
    atol: float | None = FP32_ATOL,
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
    atol : float or None
        Largest accepted ``|p_keras - p_onnx|`` (default, and with None,
        :data:`FP32_ATOL`).
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
    atol = FP32_ATOL if atol is None else atol
    if not (isinstance(atol, (int, float)) and atol >= 0):
        raise ConfigError(f"atol must be a non-negative number; received {atol!r}.")
    if isinstance(model, (str, os.PathLike)):
        read_model_meta(model)  # a bad directory fails here, before the heavy imports
    onnx = optional_import("onnx", purpose="ONNX export")
    optional_import("tf2onnx", purpose="ONNX export")
    opset = DEFAULT_OPSET if opset is None else opset
    _check_opset(opset)  # fail fast, before the (slow) conversion

    keras_model, meta, out_dir = _resolve_model(model, out)
    S = meta.image_size
    in_shape = tuple(keras_model.inputs[0].shape[1:])
    if in_shape != (S, S, 3):
        raise ModelFormatError(
            f"The Keras model takes input {in_shape} but bmcd.json says image_size {S}, i.e. "
            f"({S}, {S}, 3). The model directory is inconsistent; re-save the model."
        )
    config = meta.preprocess
    threshold = float(meta.threshold)

    parity_samples = None
    if validate:
        parity_samples = _resolve_samples(
            samples, config, default_n=DEFAULT_PARITY_SAMPLES,
            limit=n_samples, seed=_SEED_PARITY, purpose="the ONNX parity check",
        )

    # two outputs (p_all, cam) when the head has an exact map (bmcd.exporters.cam)
    graph_model, no_cam = cam_graph(keras_model)
    proto = _convert(graph_model, S, opset)
    _normalise_io(proto, S)
    domains = {o.domain: int(o.version) for o in proto.opset_import if o.domain not in ("", "ai.onnx")}
    check_onnxruntime_support(opset, int(proto.ir_version), domains)
    _set_metadata(proto, _human_metadata(meta, "fp32"))
    proto.doc_string = (
        f"bmcd {meta.arch} classifier (p of 'all' vs 'hem'), exported by bmcd {__version__}"
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
        parity = cam_check = None
        if validate:
            parity = validate_parity(
                keras_model, tmp, parity_samples.x, threshold=threshold, atol=atol,
                batch_size=batch_size, check=True,
            )
            if no_cam is None:
                cam_check = cam_parity_keras(graph_model, tmp, parity_samples.x, batch_size)
        else:
            make_session(tmp)  # at least prove that onnxruntime loads it
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
        "sha256": file_sha256(final),
        "bytes": final.stat().st_size,
        "input": f"{INPUT_NAME} float32 (batch, {S}, {S}, 3) {INPUT_LAYOUT}",
        "output": OUTPUT_NAME if no_cam else f"{OUTPUT_NAME}, {CAM_OUTPUT}",
        "cam": {"available": no_cam is None, "reason": no_cam, "parity": cam_check},
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


def _drop_stale_int8(model_dir: Path, meta: ModelMeta | dict[str, Any], fp32_sha: str) -> None:
    """An int8 file made from an earlier model.onnx no longer matches: remove it and its record."""
    meta = ModelMeta.coerce(meta)
    rec = meta.export("onnx_int8")
    path = model_dir / ONNX_INT8_FILE
    if rec is None and not path.exists():
        return
    if rec is not None and rec.get("source_sha256") == fp32_sha and path.exists():
        return
    if rec is not None:
        meta.exports.pop("onnx_int8", None)
        meta.write(model_dir)
    if not path.exists():
        return  # only a record without its file (e.g. a copied bmcd.json): nothing to say
    path.unlink()
    warnings.warn(
        f"Removed the int8 model in '{model_dir}': it was quantized from an earlier "
        f"{ONNX_FILE}. Run quantize_int8 (or `bmcd export --int8`) again.",
        UserWarning,
        stacklevel=3,
    )


