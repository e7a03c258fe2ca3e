"""OpenVINO backend: CPU inference of bmcd's exported ONNX files in fp32, bf16 and int8.

OpenVINO reads the ``model.onnx`` / ``model.int8.onnx`` files that :mod:`bmcd.exporters`
writes (no conversion step, no extra file), so one model directory serves both this
backend and ONNX Runtime. It needs the ``openvino`` extra (``pip install
'bmcd[openvino]'``) and never imports TensorFlow.

Precisions
----------
``"fp32"``
    ``model.onnx`` with the inference precision forced to f32. This matters: on CPUs with
    native bf16 (AVX512-BF16, AMX) OpenVINO's CPU plugin *defaults* to bf16, which would
    silently change the numbers of an fp32 model.
``"bf16"``
    ``model.onnx`` run with bf16 arithmetic. Refused on CPUs whose OpenVINO device lacks
    native bf16 (``"BF16"`` missing from ``OPTIMIZATION_CAPABILITIES``), and refused unless
    ``bmcd.json`` records a passed bf16 gate (:func:`bmcd.exporters.bf16.gate_bf16`, the
    same rules as the int8 gate) for the current ``model.onnx``.
``"int8"``
    ``model.int8.onnx`` as written by the ONNX Runtime quantizer (QDQ); OpenVINO runs the
    quantized operators in int8 and keeps the float parts (the head) in f32.

Threads and streams are always set explicitly (``INFERENCE_NUM_THREADS``,
``NUM_STREAMS``, ``PERFORMANCE_HINT``), the model is compiled once and reused, and the
backend pickles as its path and options (the compiled model is rebuilt on unpickling,
e.g. on a Dask worker), like :class:`bmcd.runtimes.onnx.OnnxRuntimeBackend`.
"""

from __future__ import annotations

import os
import threading
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .._deps import install_hint
from ..artifact import (
    MODEL_JSON,
    ONNX_FILE,
    ONNX_INT8_FILE,
    ONNX_METADATA_KEY,
    ModelMeta,
    file_sha256,
    parse_onnx_metadata,
    read_model_meta,
    resolve_model_file,
)
from ..errors import ConfigError, MissingDependencyError, ModelFormatError
from ..preprocessing import default_workers
from . import Backend, register_backend

__all__ = [
    "OpenVINOBackend",
    "PRECISIONS",
    "PERFORMANCE_HINTS",
    "BF16_EXPORT_KEY",
    "cpu_capabilities",
    "cpu_supports_bf16",
    "check_bf16_gate",
    "openvino_module",
]

#: Precision -> file of the model directory that it runs.
PRECISIONS = {"fp32": ONNX_FILE, "bf16": ONNX_FILE, "int8": ONNX_INT8_FILE}
#: OpenVINO performance hints accepted by :class:`OpenVINOBackend`.
PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT")
#: Key of the bf16 gate record in ``bmcd.json`` ``exports``.
BF16_EXPORT_KEY = "openvino_bf16"
#: The OpenVINO device this backend runs on.
DEVICE = "CPU"

_counter_lock = threading.Lock()


def openvino_module():
    """Import :mod:`openvino`, or raise :class:`MissingDependencyError` with the install line."""
    try:
        import openvino
    except ImportError as exc:  # not installed, or a broken / blocked install
        raise MissingDependencyError(
            f"The 'openvino' backend needs the optional package 'openvino', but importing it "
            f"failed ({exc.__class__.__name__}: {exc}). Install it with: "
            f"{install_hint('openvino')}"
        ) from exc
    return openvino


def _ov_version() -> str:
    try:
        return str(openvino_module().__version__).split("-")[0]
    except MissingDependencyError:
        return "?"


@lru_cache(maxsize=1)
def _core():
    """One ``openvino.Core`` per process (creating it loads the plugins)."""
    return openvino_module().Core()


def cpu_capabilities() -> tuple[str, ...]:
    """OpenVINO's ``OPTIMIZATION_CAPABILITIES`` of the CPU device, e.g. ``("FP32", "BF16", "INT8")``."""
    return tuple(str(c) for c in _core().get_property(DEVICE, "OPTIMIZATION_CAPABILITIES"))


def cpu_supports_bf16() -> bool:
    """Whether OpenVINO runs bf16 natively on this CPU (``"BF16"`` in its capabilities).

    OpenVINO reports ``BF16`` where the CPU has native bf16 instructions (AVX512-BF16, AMX);
    elsewhere bf16 would be emulated, slower than f32 and with the same rounding risk.
    """
    return "BF16" in cpu_capabilities()


def cpu_description() -> dict[str, Any]:
    """The CPU as OpenVINO and ``/proc/cpuinfo`` name it, with its bf16-relevant ISA flags."""
    info: dict[str, Any] = {"device": DEVICE}
    try:
        info["name"] = str(_core().get_property(DEVICE, "FULL_DEVICE_NAME"))
        info["capabilities"] = list(cpu_capabilities())
    except Exception:  # pragma: no cover - a broken plugin; the gate still records the rest
        pass
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:  # not Linux
        text = ""
    for line in text.splitlines():
        if line.startswith("model name") and "model_name" not in info:
            info["model_name"] = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            info["isa"] = sorted(
                flags & {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16",
                         "amx_tile", "amx_bf16", "amx_int8", "avx512_fp16"}
            )
            break
    try:
        info["openvino_version"] = str(openvino_module().__version__)
    except MissingDependencyError:  # pragma: no cover
        pass
    return info


def check_bf16_gate(
    model_file: str | os.PathLike, meta: ModelMeta | dict[str, Any] | None, *, force: bool = False
) -> dict[str, Any] | None:
    """Refuse bf16 unless ``meta`` records a passed bf16 gate for this very ``model_file``.

    Parameters
    ----------
    model_file : path
        The fp32 ``model.onnx`` that bf16 would run.
    meta : ModelMeta, dict or None
        The model's ``bmcd.json`` (its ``exports.openvino_bf16`` record).
    force : bool
        Use bf16 without a passed gate (a warning says so).

    Returns
    -------
    dict or None
        The gate record used (None when forced without one).

    Raises
    ------
    ModelFormatError
        No gate record, a failed gate, or a gate run on a different ``model.onnx``.
    """
    rec = ModelMeta.coerce(meta).export(BF16_EXPORT_KEY) if meta is not None else None
    where = Path(model_file).parent
    fix = (
        f"Run the bf16 gate first: `bmcd export {where} --bf16` (or "
        f"bmcd.exporters.bf16.gate_bf16('{where}')), use precision='fp32', or pass "
        f"force_bf16=True to run bf16 unchecked."
    )
    problem = None
    if rec is None:
        problem = f"its {MODEL_JSON} records no bf16 gate (exports.{BF16_EXPORT_KEY})"
    elif rec.get("source_sha256") != file_sha256(model_file):
        problem = (
            f"the bf16 gate in {MODEL_JSON} was run on a different {ONNX_FILE} (sha256 "
            f"{str(rec.get('source_sha256'))[:12]}...); the file changed after the gate"
        )
    elif not rec.get("passed") and not rec.get("forced"):
        problem = (
            f"its bf16 gate failed (label agreement {rec.get('label_agreement')}, "
            f"|dAUC| {rec.get('delta_auc')}, n {rec.get('n')})"
        )
    if problem is None:
        if not rec.get("passed"):
            warnings.warn(
                f"Running '{model_file}' in bf16 although its bf16 gate failed (it was kept "
                f"with force=True); the numbers are in {MODEL_JSON} "
                f"exports.{BF16_EXPORT_KEY}.",
                UserWarning,
                stacklevel=3,
            )
        return rec
    if force:
        warnings.warn(
            f"Running '{model_file}' in bf16 without a passed gate (force_bf16=True): {problem}.",
            UserWarning,
            stacklevel=3,
        )
        return None
    raise ModelFormatError(f"Refusing to run '{model_file}' in bf16: {problem}. {fix}")


def _read_onnx_meta(model, path: Path) -> dict[str, Any]:
    """The bmcd document embedded in an ONNX file's ``metadata_props``.

    OpenVINO's ONNX reader keeps ``metadata_props`` in the model's ``rt_info`` under
    ``"framework"``; where it does not (older releases), ONNX Runtime (a core
    dependency) reads them.
    """
    try:
        if model.has_rt_info(["framework", ONNX_METADATA_KEY]):
            text = model.get_rt_info(["framework", ONNX_METADATA_KEY]).astype(str)
            return parse_onnx_metadata({ONNX_METADATA_KEY: text}, source=str(path))
    except (AttributeError, RuntimeError, TypeError):  # pragma: no cover - older OpenVINO
        pass
    from .onnx import make_session

    session = make_session(path, threads=1)
    return parse_onnx_metadata(session.get_modelmeta().custom_metadata_map, source=str(path))


@register_backend("openvino")
class OpenVINOBackend(Backend):
    """Run an exported bmcd model with OpenVINO on the CPU.

    Parameters
    ----------
    model_path : path
        The ``.onnx`` file (``model.onnx`` for fp32 and bf16, ``model.int8.onnx`` for int8).
    meta : dict, optional
        The model's ``bmcd.json`` document. When None, the subset embedded in the ONNX
        file's metadata is used (a bare ``.onnx`` file is self-describing).
    precision : {"fp32", "bf16", "int8"}
        Sets OpenVINO's ``INFERENCE_PRECISION_HINT``: f32 for "fp32" and "int8" (the float
        parts of the int8 model stay f32, as under ONNX Runtime), bf16 for "bf16".
    intra_op_threads : int, optional
        ``INFERENCE_NUM_THREADS``: threads for all streams together. Default: the usable
        CPU count. (Named like the ONNX Runtime option so callers can pass either backend
        the same keyword.)
    num_streams : int
        ``NUM_STREAMS``: parallel inference streams. With more than one,
        :meth:`predict_batch` splits each batch into that many parts and runs them at once
        (one infer request each); each stream gets ``intra_op_threads / num_streams``
        threads. Refused for "int8" (OpenVINO 2026.4 computed wrong int8 results with
        several streams on bmcd's ResNet50 int8 model; fp32 and bf16 were checked).
    performance_hint : {"LATENCY", "THROUGHPUT"}
        ``PERFORMANCE_HINT``. The explicit threads and streams above override what the hint
        would choose; it still tunes the remaining plugin defaults.
    cpu_pinning : bool, optional
        ``ENABLE_CPU_PINNING``. None keeps OpenVINO's default.
    force_bf16 : bool
        Run "bf16" without a passed bf16 gate in ``bmcd.json`` (a warning says so). The CPU
        check is never skipped.

    Raises
    ------
    MissingDependencyError
        OpenVINO is not installed (``pip install 'bmcd[openvino]'``).
    ConfigError
        An unknown precision or hint, or "bf16" on a CPU without native bf16.
    ModelFormatError
        The file is not a bmcd model, or "bf16" lacks a passed gate.

    Notes
    -----
    Infer requests are not thread-safe, so each calling thread gets its own requests on
    the one compiled model (created on its first call).

    Examples
    --------
    >>> from bmcd.runtimes.openvino import OpenVINOBackend             # doctest: +SKIP
    >>> be = OpenVINOBackend.load("model/", precision="int8")          # doctest: +SKIP
    >>> p_all = be.predict_batch(batch)                                # doctest: +SKIP
    >>> from bmcd import Classifier                                    # doctest: +SKIP
    >>> clf = Classifier.load("model/", backend="openvino", precision="bf16")  # doctest: +SKIP
    """

    #: Models compiled in this process (observability; used to check per-worker caching).
    sessions_created = 0

    def __init__(
        self,
        model_path: str | os.PathLike,
        meta: dict[str, Any] | None = None,
        *,
        precision: str = "fp32",
        intra_op_threads: int | None = None,
        num_streams: int = 1,
        performance_hint: str = "LATENCY",
        cpu_pinning: bool | None = None,
        force_bf16: bool = False,
    ):
        if precision not in PRECISIONS:
            raise ConfigError(
                f"precision must be one of {sorted(PRECISIONS)}, received {precision!r}."
            )
        if performance_hint not in PERFORMANCE_HINTS:
            raise ConfigError(
                f"performance_hint must be one of {list(PERFORMANCE_HINTS)}, received "
                f"{performance_hint!r}."
            )
        if isinstance(num_streams, bool) or not isinstance(num_streams, int) or num_streams < 1:
            raise ConfigError(f"num_streams must be a positive integer, received {num_streams!r}.")
        if precision == "int8" and num_streams > 1:
            # Measured with OpenVINO 2026.4.1 on this project's benchmark ResNet50 int8 file
            # (QDQ, from bmcd's quantizer): with 2 streams the outputs were wrong (max |dp|
            # 0.77 against ONNX Runtime int8, 0.027 with one stream), with a dynamic or a
            # static batch, even for requests run one at a time. fp32 was exact.
            raise ConfigError(
                f"num_streams={num_streams} is refused for precision='int8': OpenVINO "
                f"{_ov_version()} computed wrong int8 results with several streams on bmcd's "
                f"ResNet50 int8 model (max |dp| 0.77 against ONNX Runtime). Use num_streams=1 "
                f"(all threads in one stream)."
            )
        self.model_path = Path(model_path)
        self.meta = meta
        self.precision = precision
        self.intra_op_threads = int(intra_op_threads) if intra_op_threads else default_workers()
        self.num_streams = int(num_streams)
        self.performance_hint = performance_hint
        self.cpu_pinning = cpu_pinning
        self.force_bf16 = bool(force_bf16)
        openvino_module()  # the missing-extra error before anything else
        self.bf16_gate: dict[str, Any] | None = None
        if precision == "bf16":
            self._check_cpu()
            self.bf16_gate = check_bf16_gate(self.model_path, self._gate_meta(), force=self.force_bf16)
        self._compiled = self._compile()

    # -- construction -------------------------------------------------------------------
    def _gate_meta(self) -> ModelMeta | None:
        """The document holding the bf16 gate: ``meta``, else a ``bmcd.json`` beside the file."""
        meta = ModelMeta.coerce(self.meta) if self.meta is not None else None
        if meta is not None and meta.exports:
            return meta
        if (self.model_path.parent / MODEL_JSON).is_file():
            try:
                return read_model_meta(self.model_path.parent)
            except (OSError, ValueError):  # unreadable or invalid (ModelFormatError)
                return meta
        return meta

    def _config(self) -> dict[str, Any]:
        """The compile-time properties, all explicit (string keys: stable across releases)."""
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": self.performance_hint,
            "INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32",
            "INFERENCE_NUM_THREADS": self.intra_op_threads,
            "NUM_STREAMS": self.num_streams,
        }
        if self.cpu_pinning is not None:
            config["ENABLE_CPU_PINNING"] = bool(self.cpu_pinning)
        return config

    def layer_precisions(self) -> dict[str, dict[str, int]]:
        """``{layer type: {runtime precision: count}}`` of the compiled model's compute layers.

        What OpenVINO actually runs, e.g. ``{"Convolution": {"u8": 52, "f32": 1},
        "FullyConnected": {"f32": 1}}`` for an int8 model; for checks and reports.
        """
        out: dict[str, dict[str, int]] = {}
        for op in self._compiled.get_runtime_model().get_ordered_ops():
            rt = op.get_rt_info()
            kind = rt["layerType"].astype(str) if "layerType" in rt else op.get_type_name()
            if kind not in ("Convolution", "FullyConnected", "MatMul", "Deconvolution"):
                continue
            prec = rt["runtimePrecision"].astype(str) if "runtimePrecision" in rt else "?"
            out.setdefault(kind, {})
            out[kind][prec] = out[kind].get(prec, 0) + 1
        return out

    def compiled_property(self, name: str) -> Any:
        """A property of the compiled model as OpenVINO applied it, e.g. ``"INFERENCE_PRECISION_HINT"``."""
        return self._compiled.get_property(name)

    def _check_cpu(self) -> None:
        if self.precision == "bf16" and not cpu_supports_bf16():
            raise ConfigError(
                f"precision='bf16' needs a CPU with native bf16 (AVX512-BF16 or AMX); "
                f"OpenVINO reports this CPU's capabilities as {list(cpu_capabilities())}, "
                f"without BF16. Use precision='fp32' or 'int8' on this machine."
            )

    def _compile(self):
        self._check_cpu()
        core = _core()
        try:
            model = core.read_model(str(self.model_path))
        except Exception as exc:  # OpenVINO raises RuntimeError / its own exceptions
            raise ModelFormatError(
                f"OpenVINO could not read '{self.model_path}' ({exc.__class__.__name__}: "
                f"{str(exc).strip()[:500]}). Re-export it with `bmcd export`."
            ) from exc
        if len(model.inputs) != 1:
            raise ModelFormatError(
                f"'{self.model_path}' has {len(model.inputs)} inputs; a bmcd model has exactly "
                f"one (float32 image batch)."
            )
        if self.meta is None:
            self.meta = _read_onnx_meta(model, self.model_path)
        shape = model.inputs[0].get_partial_shape()
        S = self.image_size
        dims = [d.get_length() if d.is_static else None for d in shape] if shape.rank.is_static else []
        if len(dims) != 4 or dims[1:] != [S, S, 3]:
            raise ModelFormatError(
                f"'{self.model_path}' takes input of shape {shape}, but its metadata says "
                f"image_size {S}, i.e. (batch, {S}, {S}, 3)."
            )
        try:
            compiled = core.compile_model(model, DEVICE, self._config())
        except Exception as exc:
            raise ModelFormatError(
                f"OpenVINO could not compile '{self.model_path}' for {DEVICE} with "
                f"precision {self.precision!r} ({exc.__class__.__name__}: "
                f"{str(exc).strip()[:500]})."
            ) from exc
        self._local = threading.local()
        with _counter_lock:
            type(self).sessions_created += 1
        return compiled

    @classmethod
    def load(
        cls, path: str | os.PathLike, *, precision: str = "fp32", **options: Any
    ) -> OpenVINOBackend:
        """Load from a model directory (``model.onnx`` / ``model.int8.onnx``) or a bare ``.onnx``.

        A bare file must carry bmcd metadata (written by :func:`bmcd.exporters.export_onnx`).
        For "bf16" the gate record is read from the directory's ``bmcd.json`` (for a bare
        file: a ``bmcd.json`` beside it, if any). Other keyword arguments
        (``intra_op_threads``, ``num_streams``, ``performance_hint``, ``cpu_pinning``,
        ``force_bf16``) are the constructor's.
        """
        file, meta = resolve_model_file(path, precision, PRECISIONS)
        return cls(file, meta.to_dict() if meta else None, precision=precision, **options)

    # -- inference ----------------------------------------------------------------------
    def _requests(self) -> list:
        """This thread's infer requests on the shared compiled model (one per stream)."""
        reqs = getattr(self._local, "requests", None)
        if reqs is None:
            reqs = [self._compiled.create_infer_request() for _ in range(self.num_streams)]
            self._local.requests = reqs
        return reqs

    def predict_batch(self, x: np.ndarray) -> np.ndarray:
        """p(all) for a preprocessed batch ``(n, S, S, 3)`` float32 RGB in [0, 255]."""
        S = self.image_size
        if x.ndim != 4 or x.shape[1:] != (S, S, 3):
            raise ConfigError(
                f"Expected a preprocessed batch of shape (n, {S}, {S}, 3), received {x.shape}. "
                f"Run bmcd.preprocessing.preprocess_batch with this model's config first."
            )
        n = len(x)
        if n == 0:
            return np.empty(0, dtype=np.float32)
        x = np.ascontiguousarray(x, dtype=np.float32)
        reqs = self._requests()
        if len(reqs) == 1 or n == 1:
            out = reqs[0].infer({0: x}, share_inputs=True, share_outputs=False)[0]
            return np.asarray(out, dtype=np.float32).reshape(n)
        # one part per stream, run at once; the parts keep the batch order
        bounds = np.linspace(0, n, min(len(reqs), n) + 1).round().astype(int)
        parts = list(zip(bounds[:-1], bounds[1:], strict=True))
        for req, (a, b) in zip(reqs, parts, strict=False):
            req.start_async({0: x[a:b]}, share_inputs=True)
        out = np.empty(n, dtype=np.float32)
        for req, (a, b) in zip(reqs, parts, strict=False):
            req.wait()
            out[a:b] = np.asarray(req.get_output_tensor(0).data).reshape(b - a)
        return out

    # -- pickling -----------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_compiled", "_local"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # the gate was checked when this backend was first built; the CPU check runs again
        # (the new process may run on another machine)
        self.__dict__.update(state)
        self._compiled = self._compile()

    def __repr__(self) -> str:
        return (
            f"OpenVINOBackend('{self.model_path}', precision={self.precision!r}, "
            f"intra_op_threads={self.intra_op_threads}, num_streams={self.num_streams}, "
            f"performance_hint={self.performance_hint!r})"
        )
