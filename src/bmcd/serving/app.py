"""The ``bmcd serve`` ASGI application (FastAPI) on the ONNX Runtime backend.

Endpoints (``docs/serving.rst`` has the full description):

- ``GET /``            the self-contained upload page (``static/index.html``)
- ``POST /v1/predict`` multipart, one or many files in the field ``files``; JSON per image
- ``GET /v1/model``    the model's identity, preprocessing and the serving settings
- ``GET /healthz``     liveness plus batching counters

The model is loaded once (``Classifier.load(..., backend="onnx")``), every image goes
through :func:`bmcd.preprocessing.preprocess_with_info` (the one image path of
``docs/architecture.rst``), and single images are micro-batched
(:class:`~bmcd.serving.batcher.MicroBatcher`).
"""

# no "from __future__ import annotations": FastAPI reads the endpoint annotations at runtime

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from .._deps import optional_import
from .._version import __version__
from ..errors import ConfigError, ImageReadError, RequestTooLargeError
from .batcher import MicroBatcher
from .limits import ServeLimits, image_dimensions

__all__ = ["create_app", "ServeLimits", "PRECISIONS", "CAM_OUTPUT"]

PRECISIONS = ("fp32", "int8")
#: Name of the optional class-activation-map output an ONNX file may carry (the same as
#: ``bmcd.runtimes.onnx.CAM_OUTPUT``, docs/explain.rst). Models without it answer
#: ``cam=true`` with 501.
CAM_OUTPUT = "cam"
_TRUE = {"1", "true", "yes", "on"}


def _serve_deps():
    fastapi = optional_import("fastapi", purpose="bmcd serve")
    try:  # python-multipart >= 0.0.13 names its module python_multipart
        import python_multipart  # noqa: F401
    except ImportError:
        optional_import("multipart", purpose="multipart uploads in bmcd serve")
    return fastapi


class _BodyLimit:
    """ASGI middleware: 413 for a request body over ``limit`` bytes, before parsing it.

    A declared ``Content-Length`` over the limit is refused at once; a body without one
    (chunked) is counted as it streams and refused when it passes the limit.
    """

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = int(limit)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send, int(declared))
        seen = 0
        started = False

        async def counting_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise RequestTooLargeError()
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except RequestTooLargeError:
            if not started:
                await self._refuse(send, seen)

    async def _refuse(self, send, received: int) -> None:
        import json

        body = json.dumps(
            {
                "error": {
                    "code": "request_too_large",
                    "message": f"The request body is larger than this server's limit of "
                    f"{self.limit} bytes (received at least {received} bytes). Send fewer "
                    f"or smaller images per request, or start the server with a larger "
                    f"--max-request-mb.",
                }
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def create_app(
    model_dir: str | os.PathLike,
    precision: str = "fp32",
    *,
    max_batch: int = 32,
    max_wait_ms: float = 5.0,
    limits: ServeLimits | None = None,
    preprocess_workers: int | None = None,
    intra_op_threads: int | None = None,
):
    """Build the ``bmcd serve`` FastAPI application for one model (loaded once, here).

    Parameters
    ----------
    model_dir : path
        A bmcd model directory (or a bare ``.onnx`` file with bmcd metadata).
    precision : {"fp32", "int8"}
        ``"int8"`` serves ``model.int8.onnx``, the file ``bmcd export --int8`` kept after
        its accuracy gate.
    max_batch : int
        The most images in one inference call (1 turns micro-batching off).
    max_wait_ms : float
        How long the first waiting image may wait for others to join its batch.
    limits : ServeLimits, optional
        Request size, file count, file size and pixel limits.
    preprocess_workers : int, optional
        Threads decoding and preprocessing uploads (default: the usable CPU count).
    intra_op_threads : int, optional
        ONNX Runtime threads inside one operator (default: the usable CPU count).

    Returns
    -------
    fastapi.FastAPI

    Raises
    ------
    MissingDependencyError
        The ``serve`` extra is not installed.
    ModelFormatError
        The model directory or the requested ONNX file is missing or invalid.

    Examples
    --------
    >>> from bmcd.serving import create_app                       # doctest: +SKIP
    >>> import uvicorn; uvicorn.run(create_app("model/"), port=8000)  # doctest: +SKIP
    """
    fastapi = _serve_deps()
    from fastapi.responses import HTMLResponse, JSONResponse

    from ..artifact import ModelMeta, file_sha256
    from ..classifier import Classifier
    from ..data import parse_subject
    from ..preprocessing import default_workers, preprocess_with_info

    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {list(PRECISIONS)}; received {precision!r}.")
    limits = limits or ServeLimits()
    if not isinstance(limits, ServeLimits):
        raise ConfigError(f"limits must be a ServeLimits; received {type(limits).__name__}.")

    # spinning off: idle inference threads leave the cores to the decoding threads (the
    # same choice as batch scoring, measured in docs/benchmarks.rst)
    clf = Classifier.load(
        model_dir, backend="onnx", precision=precision, allow_spinning=False,
        intra_op_threads=intra_op_threads,
    )
    backend = clf.backend_
    meta = ModelMeta.coerce(clf.meta_)
    config = meta.preprocess
    threshold = float(clf.threshold_)
    classes = list(clf.classes_)
    onnx_path = Path(backend.model_path)
    cam_available = backend.has_cam  # the output exists and, for int8, passed its check
    int8_record = meta.export("onnx_int8") if precision == "int8" else None
    identity: dict[str, Any] = {
        "arch": meta.arch,
        "image_size": meta.image_size,
        "precision": precision,
        "onnx_file": onnx_path.name,
        "sha256": file_sha256(onnx_path),
        "classes": classes,
        "positive_class": meta.positive_class,
        "threshold": threshold,
        "preprocess": config.to_dict(),
        "bmcd_version": __version__,
        "model_bmcd_version": meta.bmcd_version,
        "int8_gate": (int8_record or {}).get("gate") if int8_record else None,
        "cam_available": cam_available,
        "serving": {
            "max_batch": int(max_batch),
            "max_wait_ms": float(max_wait_ms),
            "limits": limits.to_dict(),
        },
    }
    batcher = MicroBatcher(backend.predict_batch, max_batch=max_batch, max_wait_ms=max_wait_ms)
    page = resources.files("bmcd.serving").joinpath("static/index.html").read_text("utf-8")
    workers = int(preprocess_workers) if preprocess_workers else default_workers()
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app):
        state["pool"] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bmcd-pre")
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            state.pop("pool").shutdown(wait=True)

    app = fastapi.FastAPI(
        title="bmcd serve",
        version=__version__,
        description="Leukemic lymphoblast (all) vs normal cell (hem) classification.",
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    app.state.identity = identity
    app.state.classifier = clf
    app.add_middleware(_BodyLimit, limit=limits.max_request_bytes)

    def error(status: int, code: str, message: str) -> JSONResponse:
        return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)

    def prepare(data: bytes) -> tuple[np.ndarray | None, bool, tuple[str, str] | None]:
        """Bytes -> (network input, no_cell, None) or (None, False, (code, message))."""
        if len(data) > limits.max_image_bytes:
            return None, False, ("too_large", (
                f"The file has {len(data)} bytes; this server accepts at most "
                f"{limits.max_image_bytes} bytes per image."))
        dims = image_dimensions(data)
        item: Any = data
        if dims is None:  # a format without a parsed header (TIFF, WebP ...): decode, then check
            try:
                from ..preprocessing import read_image

                item = read_image(data)
            except ImageReadError as exc:
                return None, False, ("unreadable", str(exc))
            dims = (item.shape[1], item.shape[0])
        if dims[0] * dims[1] > limits.max_pixels:
            return None, False, ("too_many_pixels", (
                f"The image is {dims[0]} x {dims[1]} = {dims[0] * dims[1]} pixels; this "
                f"server accepts at most {limits.max_pixels} pixels per image (C-NMC cells "
                f"are 450 x 450). Send the single-cell crop."))
        try:
            x, info = preprocess_with_info(item, config)
        except ImageReadError as exc:
            return None, False, ("unreadable", str(exc))
        return x, info.no_cell, None

    def row(name: str) -> dict[str, Any]:
        return {
            "name": name,
            "subject": parse_subject(name),
            "p_all": None,
            "label": None,
            "threshold": threshold,
            "no_cell": None,
            "error": None,
            "error_code": None,
        }

    def cam_png(x: np.ndarray) -> str:
        """Base64 PNG of the class activation map overlay of one preprocessed image."""
        from ..explain import explain_preprocessed, png_base64

        _, _, over = explain_preprocessed(backend, x[None], threshold, True)
        return png_base64(over[0])

    async def score_one(name: str, data: bytes, cam: bool = False) -> dict[str, Any]:
        out = row(name)
        loop = asyncio.get_running_loop()
        batcher.announce()  # a batch being gathered may wait for this image
        try:
            x, no_cell, err = await loop.run_in_executor(state["pool"], prepare, data)
        except BaseException:
            batcher.withdraw()
            raise
        if err is not None:
            batcher.withdraw()
            out["error_code"], out["error"] = err
            return out
        try:
            p = await batcher.submit(x, announced=True)
        except Exception as exc:  # a model failure is reported per image, never as a 500
            out["error_code"] = "inference_failed"
            out["error"] = f"Inference failed: {exc.__class__.__name__}: {exc}"
            return out
        out["p_all"] = p
        out["label"] = classes[1] if p >= threshold else classes[0]
        out["no_cell"] = bool(no_cell)
        if cam:  # off the micro-batched path: only pages that ask for maps pay for them
            try:
                out["cam_png"] = await loop.run_in_executor(state["pool"], cam_png, x)
            except Exception as exc:  # reported per image, never as a 500
                out["cam_png"] = None
                out["error_code"] = "cam_failed"
                out["error"] = f"The class activation map failed: {exc.__class__.__name__}: {exc}"
        return out

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "batching": batcher.stats.to_dict()}

    @app.get("/v1/model")
    async def model_identity() -> dict[str, Any]:
        return identity

    @app.post("/v1/predict")
    async def predict(request: fastapi.Request):
        """Score the uploaded images; JSON ``{"model": ..., "results": [per image]}``."""
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            return error(415, "unsupported_media_type", (
                f"Expected a multipart/form-data upload with the images in the field "
                f"'files', received Content-Type {ctype or '(none)'!r}. Example: "
                f"curl -F files=@cell.bmp http://HOST/v1/predict"))
        try:
            form = await request.form(max_files=limits.max_files + 1, max_fields=100)
        except RequestTooLargeError:
            raise
        except Exception as exc:  # malformed multipart, too many parts
            return error(400, "bad_multipart", (
                f"Could not parse the multipart body ({exc.__class__.__name__}: {exc}). "
                f"Send the images as multipart/form-data in the field 'files' (at most "
                f"{limits.max_files} per request)."))
        try:
            uploads = [v for _, v in form.multi_items() if hasattr(v, "read")]
            cam_value = request.query_params.get("cam") or form.get("cam") or ""
            want_cam = isinstance(cam_value, str) and cam_value.strip().lower() in _TRUE
            if want_cam and not cam_available:
                why = ("its int8 maps failed their check against fp32 at export (serve "
                       "--precision fp32 to get maps)" if backend._cam_name is not None else
                       f"its ONNX file '{onnx_path.name}' has no '{CAM_OUTPUT}' output "
                       f"(re-export the model with this bmcd version: `bmcd export "
                       f"MODEL_DIR`)")
                return error(501, "cam_not_available", (
                    f"Class activation maps are not available for this model: {why}. Or "
                    f"ask without cam=true."))
            if not uploads:
                return error(400, "no_files", (
                    "The request carries no files. Send one or more images as "
                    "multipart/form-data in the field 'files'."))
            if len(uploads) > limits.max_files:
                return error(413, "too_many_files", (
                    f"The request carries more than {limits.max_files} files, this server's "
                    f"limit per request. Split it into several requests."))
            items = []
            for i, up in enumerate(uploads):
                items.append((up.filename or f"file{i + 1}", await up.read()))
        finally:
            await form.close()
        results = await asyncio.gather(*(score_one(n, d, want_cam) for n, d in items))
        return {
            "model": {"arch": identity["arch"], "precision": precision, "sha256": identity["sha256"]},
            "results": list(results),
        }

    return app
