"""ONNX Runtime backend: fast CPU inference, fp32 and int8.

Needs only the core dependencies (numpy, onnxruntime): it never imports TensorFlow.
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact import ONNX_FILE, ONNX_INT8_FILE, parse_onnx_metadata, resolve_model_file
from ..errors import CamUnavailableError, ConfigError, ModelFormatError
from ..preprocessing import default_workers
from . import Backend, register_backend

__all__ = ["CAM_OUTPUT", "OnnxRuntimeBackend", "PRECISIONS", "DEFAULT_PROVIDERS", "make_session"]

#: Name of the optional class activation map output (docs/explain.rst).
CAM_OUTPUT = "cam"

PRECISIONS = {"fp32": ONNX_FILE, "int8": ONNX_INT8_FILE}
DEFAULT_PROVIDERS = ("CPUExecutionProvider",)

_counter_lock = threading.Lock()


def make_session(
    path: str | os.PathLike | bytes,
    *,
    threads: int | None = None,
    providers: list[str] | tuple[str, ...] | None = None,
    inter_op_threads: int = 1,
    allow_spinning: bool = True,
    log_severity: int = 3,
):
    """The one way bmcd opens an ONNX Runtime session.

    ``SessionOptions`` are set once here (full graph optimisation, sequential execution,
    warnings only) and execution providers are always passed explicitly, so the scoring
    backend, the exporter's parity check and the int8 gate run models the same way.

    Parameters
    ----------
    path : path or bytes
        The ``.onnx`` file (or a serialised model).
    threads : int, optional
        Intra-op threads. Default: the usable CPU count
        (:func:`bmcd.preprocessing.default_workers`).
    providers : sequence of str, optional
        Execution providers. Default :data:`DEFAULT_PROVIDERS` (``CPUExecutionProvider``).
    inter_op_threads : int
        Threads across operators (sequential execution uses 1).
    allow_spinning : bool
        Let idle intra-op threads spin (ONNX Runtime's default).
    log_severity : int
        ONNX Runtime's log level (3: errors only; 4: fatal only, for probes that expect
        to fail).

    Returns
    -------
    onnxruntime.InferenceSession

    Raises
    ------
    ConfigError
        A provider is not available in the installed onnxruntime.
    ModelFormatError
        ONNX Runtime could not load the model.
    """
    import onnxruntime as ort

    providers = list(providers) if providers else list(DEFAULT_PROVIDERS)
    available = ort.get_available_providers()
    unknown = [p for p in providers if p not in available]
    if unknown:
        raise ConfigError(
            f"ONNX Runtime providers {unknown} are not available in this onnxruntime "
            f"build; available: {available}."
        )
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = int(threads) if threads else default_workers()
    so.inter_op_num_threads = int(inter_op_threads)
    so.log_severity_level = int(log_severity)
    if not allow_spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = path if isinstance(path, bytes) else str(path)
    if isinstance(source, str) and not _utf8_encodable(source):
        # onnxruntime takes paths as UTF-8 only; a name with non-UTF-8 bytes (kept by
        # Python as surrogates) is loaded from its bytes instead
        try:
            with open(path, "rb") as fh:
                source = fh.read()
        except OSError as exc:
            raise ModelFormatError(
                f"Cannot read the ONNX file {str(path)!r}: {exc.strerror or exc}."
            ) from exc
    try:
        return ort.InferenceSession(source, sess_options=so, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph / ...
        where = "the given model" if isinstance(path, bytes) else f"'{path}'"
        first = (str(exc).strip().splitlines() or [""])[0][:300]  # one line, not pybind's dump
        raise ModelFormatError(
            f"ONNX Runtime {ort.__version__} could not load {where} "
            f"({exc.__class__.__name__}: {first}). Re-export it with `bmcd export`."
        ) from exc


def _utf8_encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@register_backend("onnx")
class OnnxRuntimeBackend(Backend):
    """Run an exported bmcd model with ONNX Runtime.

    Parameters
    ----------
    model_path : path
        The ``.onnx`` file.
    meta : dict, optional
        The model's ``bmcd.json`` document. When None, the subset embedded in the ONNX
        file's metadata is used (a bare ``.onnx`` file is self-describing).
    precision : {"fp32", "int8"}
        Recorded for reporting; the file decides what actually runs.
    providers : sequence of str, optional
        Execution providers, always passed explicitly. Default ``["CPUExecutionProvider"]``.
    intra_op_threads : int, optional
        Threads inside one operator. Default: the usable CPU count.
    inter_op_threads : int
        Threads across operators (sequential execution uses 1).
    allow_spinning : bool
        Let idle intra-op threads spin while waiting for work (ONNX Runtime's default; best
        latency for model-only calls). Batch scoring turns it off so that waiting inference
        threads leave the cores to the preprocessing threads.

    Notes
    -----
    ``SessionOptions`` are set once (full graph optimisation) and the session is reused for
    every call. Sessions are not picklable, so pickling keeps the path and options and the
    session is rebuilt on unpickling (e.g. when shipped to a Dask worker).

    Examples
    --------
    >>> from bmcd.runtimes.onnx import OnnxRuntimeBackend      # doctest: +SKIP
    >>> be = OnnxRuntimeBackend.load("model/", precision="int8")  # doctest: +SKIP
    >>> p_all = be.predict_batch(batch)                        # doctest: +SKIP
    """

    #: Sessions created in this process (observability; used to check per-worker caching).
    sessions_created = 0

    def __init__(
        self,
        model_path: str | os.PathLike,
        meta: dict[str, Any] | None = None,
        *,
        precision: str = "fp32",
        providers: list[str] | tuple[str, ...] | None = None,
        intra_op_threads: int | None = None,
        inter_op_threads: int = 1,
        allow_spinning: bool = True,
    ):
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {sorted(PRECISIONS)}, received {precision!r}.")
        self.model_path = Path(model_path)
        self.meta = meta
        self.precision = precision
        self.providers = list(providers) if providers else list(DEFAULT_PROVIDERS)
        self.intra_op_threads = int(intra_op_threads) if intra_op_threads else default_workers()
        self.inter_op_threads = int(inter_op_threads)
        self.allow_spinning = bool(allow_spinning)
        self._session = self._make_session()
        self._warn_if_int8_may_saturate()

    def _warn_if_int8_may_saturate(self) -> None:
        """Warn when an int8 file with 8-bit weights is loaded on an x86-64 CPU without
        VNNI, where onnxruntime's U8S8 kernels saturate (docs/models.rst)."""
        if self.precision != "int8" or not isinstance(self.meta, dict):
            return
        rec = (self.meta.get("exports") or {}).get("onnx_int8")
        if not isinstance(rec, dict) or rec.get("reduce_range") is not False:
            return
        from .. import _cpu

        if _cpu.default_reduce_range():
            warnings.warn(
                f"'{self.model_path}' was quantized with 8-bit weights, and this CPU has no "
                f"VNNI: onnxruntime's int8 kernels can saturate here and change p(all) "
                f"(measured up to 0.70 on a test model). Re-export it on this machine "
                f"(`bmcd export MODEL_DIR --int8` picks 7-bit weights here) or score with "
                f"the fp32 model.",
                UserWarning,
                stacklevel=3,
            )

    # -- construction -------------------------------------------------------------------
    def _make_session(self):
        session = make_session(
            self.model_path,
            threads=self.intra_op_threads,
            providers=self.providers,
            inter_op_threads=self.inter_op_threads,
            allow_spinning=getattr(self, "allow_spinning", True),
        )
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise ModelFormatError(
                f"'{self.model_path}' has {len(inputs)} inputs; a bmcd model has exactly one "
                f"(float32 image batch)."
            )
        self._input_name = inputs[0].name
        outputs = [o.name for o in session.get_outputs()]
        self._output_name = outputs[0]
        # the optional class activation map (docs/explain.rst); run() fetching only p_all
        # costs the same as a file without it (measured there)
        self._cam_name = CAM_OUTPUT if CAM_OUTPUT in outputs[1:] else None
        if self.meta is None:
            self.meta = parse_onnx_metadata(
                session.get_modelmeta().custom_metadata_map, source=str(self.model_path)
            )
        shape = inputs[0].shape
        S = self.image_size
        if len(shape) != 4 or list(shape[1:]) != [S, S, 3]:
            raise ModelFormatError(
                f"'{self.model_path}' takes input of shape {shape}, but its metadata says "
                f"image_size {S}, i.e. (batch, {S}, {S}, 3)."
            )
        with _counter_lock:
            type(self).sessions_created += 1
        return session

    @classmethod
    def load(
        cls, path: str | os.PathLike, *, precision: str = "fp32", **options: Any
    ) -> OnnxRuntimeBackend:
        """Load from a model directory (``model.onnx`` / ``model.int8.onnx``) or a bare ``.onnx``.

        A bare file must carry bmcd metadata (written by :func:`bmcd.exporters.export_onnx`).
        Other keyword arguments (``providers``, ``intra_op_threads``, ``inter_op_threads``,
        ``allow_spinning``) are the constructor's.
        """
        file, meta = resolve_model_file(path, precision, PRECISIONS)
        return cls(file, meta.to_dict() if meta else None, precision=precision, **options)

    # -- inference ----------------------------------------------------------------------
    def predict_batch(self, x: np.ndarray) -> np.ndarray:
        """p(all) for a preprocessed batch ``(n, S, S, 3)`` float32 RGB in [0, 255]."""
        S = self.image_size
        if x.ndim != 4 or x.shape[1:] != (S, S, 3):
            raise ConfigError(
                f"Expected a preprocessed batch of shape (n, {S}, {S}, 3), received {x.shape}. "
                f"Run bmcd.preprocessing.preprocess_batch with this model's config first."
            )
        if len(x) == 0:
            return np.empty(0, dtype=np.float32)
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = self._session.run([self._output_name], {self._input_name: x})[0]
        return out.reshape(len(x))

    @property
    def has_cam(self) -> bool:
        """Whether the file gives usable class activation maps: it has the ``cam`` output
        (exported by bmcd with maps) and, for the int8 file, its maps passed their check
        against fp32 at export."""
        return self._cam_name is not None and self._cam_check_failure() is None

    def _cam_check_failure(self) -> dict[str, Any] | None:
        """The export record of an int8 map check that failed, else None."""
        if self.precision != "int8" or not isinstance(self.meta, dict):
            return None
        rec = (self.meta.get("exports") or {}).get("onnx_int8") or {}
        cam = (rec.get("gate") or {}).get("cam") if isinstance(rec, dict) else None
        return cam if isinstance(cam, dict) and cam.get("passed") is False else None

    def explain_batch(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """p(all) ``(n,)`` and class activation maps ``(n, h, w)`` from the ``cam`` output.

        Raises
        ------
        CamUnavailableError
            The file was exported without the ``cam`` output (re-export it).
        """
        if self._cam_name is None:
            raise CamUnavailableError(
                f"'{self.model_path}' has no '{CAM_OUTPUT}' output, so it gives no class "
                f"activation maps (it was exported before bmcd added them, or from a network "
                f"whose head has no exact map). Re-export the model directory with "
                f"`bmcd export MODEL_DIR` (and `--int8` for the int8 file), or explain with "
                f"backend='keras'."
            )
        failed = self._cam_check_failure()
        if failed is not None:
            raise CamUnavailableError(
                f"The int8 maps of '{self.model_path}' failed their check against fp32 at "
                f"export (max difference {failed.get('max_rel_diff', float('nan')):.3g} of the "
                f"map scale, allowed {failed.get('rtol', float('nan')):g}), so they are not "
                f"used. Explain with the fp32 model (precision='fp32', or `bmcd explain` "
                f"without --int8)."
            )
        S = self.image_size
        if x.ndim != 4 or x.shape[1:] != (S, S, 3):
            raise ConfigError(
                f"Expected a preprocessed batch of shape (n, {S}, {S}, 3), received {x.shape}."
            )
        x = np.ascontiguousarray(x, dtype=np.float32)
        p, cam = self._session.run([self._output_name, self._cam_name], {self._input_name: x})
        return p.reshape(len(x)), np.asarray(cam, dtype=np.float32)

    # -- pickling -----------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_session", "_input_name", "_output_name", "_cam_name"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._session = self._make_session()

    def __repr__(self) -> str:
        return (
            f"OnnxRuntimeBackend('{self.model_path}', precision={self.precision!r}, "
            f"providers={self.providers}, intra_op_threads={self.intra_op_threads})"
        )

