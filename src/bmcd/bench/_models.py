"""Benchmark models: random-weight networks, exported and quantized once, cached; predictors.

Part of :mod:`bmcd.bench` (see docs/benchmarks.rst). TensorFlow is imported only to build
a model or for the Keras rows; the builder and the exporter (the ``train`` extra) are
imported where they are used.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..artifact import KERAS_FILE, ONNX_FILE, ONNX_INT8_FILE, OUTPUT_NAME, ModelMeta
from ..errors import BenchError, ConfigError
from ..preprocessing import PreprocessConfig
from ..runtimes.onnx import OnnxRuntimeBackend
from ._inputs import make_input_batches
from ._parity import BACKENDS

#: The model file each backend needs.
_BACKEND_FILES = {
    "keras_predict": KERAS_FILE,
    "tf_function": KERAS_FILE,
    "ort_fp32": ONNX_FILE,
    "ort_int8": ONNX_INT8_FILE,
    "ov_f32": ONNX_FILE,
    "ov_bf16": ONNX_FILE,
    "ov_int8": ONNX_INT8_FILE,
}


def default_cache_dir() -> Path:
    """Where ``bmcd bench`` keeps its random-weight models and files between runs."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bmcd" / "bench"


def _bench_stamp(arch: str, image_size: int) -> dict[str, Any]:
    """What a cached benchmark model depends on; a change rebuilds it."""
    import hashlib
    import inspect

    import onnxruntime as ort

    from ..exporters.onnx import export_onnx, quantize_int8
    from ..training.models import build_model

    digest = hashlib.sha256(inspect.getsource(build_bench_model).encode())
    # the source files of the model builder and of the exporter, wherever they live
    sources = dict.fromkeys(
        inspect.getsourcefile(fn) or fn.__module__ for fn in (build_model, export_onnx, quantize_int8)
    )
    for src in sources:
        try:
            digest.update(Path(src).read_bytes())
        except OSError:
            digest.update(src.encode())
    return {
        "bmcd": __version__,
        "arch": arch,
        "image_size": int(image_size),
        "onnxruntime": ort.__version__,
        "sources_sha256": digest.hexdigest(),
        "kind": "random weights, BN set from data",
    }


def build_bench_model(
    arch: str,
    image_size: int,
    out_dir: str | os.PathLike,
    calibration: np.ndarray,
    *,
    seed: int = 0,
    int8: bool = True,
) -> Path:
    """Write a benchmark model directory: random weights, exported, quantized.

    1. :func:`bmcd.runtimes.keras.build_model` with ``weights=None``.
    2. The BatchNorm moving statistics are set to those of ``calibration`` (one forward
       pass in training mode with momentum 0), and the output layer is rescaled so the
       logits have a spread of about 1.5. Otherwise a random network gives the same
       output for every image (MobileNetV2's activations vanish), which would make the
       parity checks vacuous. The cost of inference does not change.
    3. ``model.keras`` + ``bmcd.json``, then :func:`bmcd.exporters.onnx.export_onnx`
       (with its parity check) and, when ``int8``,
       :func:`bmcd.exporters.onnx.quantize_int8` with ``force=True``: the accuracy gate
       means nothing for random weights, and int8 speed does not depend on them.
    """
    from ..exporters.onnx import export_onnx, quantize_int8
    from ..runtimes.keras import keras_module
    from ..training.models import build_model

    keras = keras_module("building a benchmark model")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(int(seed))
    model = build_model(arch, int(image_size), weights=None)
    x = np.asarray(calibration, dtype=np.float32)[:32]
    bns = [
        layer
        for layer in model.get_layer("backbone").layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    momenta = [layer.momentum for layer in bns]
    for layer in bns:
        layer.momentum = 0.0
    model(x, training=True)  # moving mean/var := this batch's statistics, layer by layer
    for layer, m in zip(bns, momenta, strict=True):
        layer.momentum = m
    features = keras.Model(model.input, model.get_layer("pool").output)(x, training=False)
    features = np.asarray(features, dtype=np.float64)
    # Output layer along the features' first principal component: with random backbone
    # weights the images differ little from one another, and a random output direction
    # would mostly read noise (int8 rounding would then decide the output).
    dense = model.get_layer(OUTPUT_NAME)
    kernel, bias = dense.get_weights()
    centred = features - features.mean(axis=0)
    direction = np.linalg.svd(centred, full_matrices=False)[2][0]
    spread = float((centred @ direction).std()) or 1.0
    kernel = (direction * (1.5 / spread)).reshape(kernel.shape)
    bias = np.full_like(bias, -float(features.mean(axis=0) @ kernel.reshape(-1)))
    dense.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])

    model.save(out / KERAS_FILE)
    ModelMeta.new(
        arch=arch,
        preprocess=PreprocessConfig(image_size=int(image_size)),
        training={
            "note": f"benchmark model: random weights (seed {seed}), BatchNorm statistics "
            "and output scale set from benchmark images; NOT a trained classifier"
        },
    ).write(out)
    # the 8 rotations / reflections of the images: more, still realistic, calibration data
    augmented = make_input_batches(x, min(8 * len(x), 128), 1, seed=seed)[0]
    export_onnx(out, samples=x)
    if int8:
        import warnings

        with warnings.catch_warnings():
            # the accuracy gate is expected to mean nothing here; the numbers stay in bmcd.json
            warnings.filterwarnings("ignore", message=".*failed the int8 gate.*")
            quantize_int8(out, calibration=augmented, validation=x, force=True)
    (out / "bench.json").write_text(json.dumps(_bench_stamp(arch, image_size), indent=1))
    return out


def ensure_bench_model(
    arch: str,
    image_size: int,
    cache_dir: str | os.PathLike,
    calibration: np.ndarray,
    *,
    rebuild: bool = False,
    log: Callable[[str], None] | None = None,
) -> Path:
    """A cached :func:`build_bench_model` directory under ``cache_dir/<arch>-<S>``."""
    d = Path(cache_dir) / f"{arch}-{int(image_size)}"
    stamp = d / "bench.json"
    files_ok = all((d / f).is_file() for f in (KERAS_FILE, ONNX_FILE, ONNX_INT8_FILE))
    if not rebuild and files_ok and stamp.is_file():
        try:
            if json.loads(stamp.read_text()) == _bench_stamp(arch, image_size):
                return d
        except ValueError:
            pass
    if log:
        log(f"building a random-weight {arch} at {image_size} px in {d} (export + int8) ...")
    if d.exists():
        import shutil

        shutil.rmtree(d)
    t0 = time.perf_counter()
    build_bench_model(arch, image_size, d, calibration)
    if log:
        log(f"  built in {time.perf_counter() - t0:.0f} s")
    return d


def load_keras_model(model_dir: str | os.PathLike):
    """The Keras model of a model directory (registers bmcd's custom layer first)."""
    from ..runtimes.keras import image_preprocess_layer, keras_module

    keras = keras_module("the Keras benchmark rows")
    image_preprocess_layer()
    path = Path(model_dir) / KERAS_FILE
    if not path.is_file():
        raise BenchError(f"'{model_dir}' has no {KERAS_FILE}; the Keras rows need it.")
    return keras.saving.load_model(path, compile=False)


def backend_available(
    model_dir: str | os.PathLike, backend: str, *, force_bf16: bool = False
) -> tuple[bool, str]:
    """Whether ``backend`` can run on ``model_dir`` here, and if not, why.

    The OpenVINO rows need the ``openvino`` extra; ``ov_bf16`` also a CPU with native bf16
    (:func:`bmcd.runtimes.openvino.cpu_supports_bf16`) and, unless ``force_bf16``, a passed
    bf16 gate in ``bmcd.json`` (``bmcd export MODEL --bf16``).
    """
    if backend not in _BACKEND_FILES:
        raise ConfigError(f"Unknown benchmark backend {backend!r}; expected one of {list(BACKENDS)}.")
    f = _BACKEND_FILES[backend]
    if not (Path(model_dir) / f).is_file():
        return False, f"{f} missing in {model_dir}"
    if backend.startswith("ov_"):
        from ..errors import MissingDependencyError

        try:
            from ..runtimes.openvino import cpu_supports_bf16, openvino_module

            openvino_module()
        except MissingDependencyError:
            return False, "openvino is not installed (pip install 'bmcd[openvino]')"
        if backend == "ov_bf16" and not cpu_supports_bf16():
            return False, "this CPU has no native bf16 (AVX512-BF16 / AMX)"
        if backend == "ov_bf16" and not force_bf16:
            from ..artifact import read_model_meta
            from ..errors import BmcdError
            from ..runtimes.openvino import check_bf16_gate

            try:
                check_bf16_gate(Path(model_dir) / f, read_model_meta(model_dir))
            except BmcdError:
                return False, f"no passed bf16 gate in bmcd.json (run `bmcd export {model_dir} --bf16`)"
    return True, ""


def load_predictors(
    model_dir: str | os.PathLike,
    backends: Iterable[str] = BACKENDS,
    *,
    intra_op_threads: int | None = None,
    force_bf16: bool = False,
) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """``{backend: fn(x (n, S, S, 3) float32) -> (n,) p(all)}`` for a model directory.

    ``keras_predict`` is ``model.predict(x, batch_size=len(x))``; ``tf_function`` is
    ``tf.function(model)`` with a fixed input signature (traced once, graph mode);
    ``ort_fp32`` / ``ort_int8`` are :class:`~bmcd.runtimes.onnx.OnnxRuntimeBackend`
    sessions on ``model.onnx`` / ``model.int8.onnx``; ``ov_f32`` / ``ov_bf16`` /
    ``ov_int8`` are :class:`~bmcd.runtimes.openvino.OpenVINOBackend` on the same files
    (one stream with all threads). ``force_bf16`` runs bf16 without a passed bf16 gate:
    only for the random-weight benchmark models, where a gate means nothing.
    """
    backends = list(backends)
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise ConfigError(
            f"Unknown benchmark backends {unknown}; expected some of {list(BACKENDS)}."
        )
    out: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    if "keras_predict" in backends or "tf_function" in backends:
        model = load_keras_model(model_dir)
        if "keras_predict" in backends:

            def keras_predict(x: np.ndarray, _m=model) -> np.ndarray:
                return np.asarray(_m.predict(x, batch_size=len(x), verbose=0)).reshape(len(x))

            out["keras_predict"] = keras_predict
        if "tf_function" in backends:
            import tensorflow as tf

            S = int(model.input.shape[1])
            graph_fn = tf.function(
                lambda t, _m=model: _m(t, training=False),
                input_signature=[tf.TensorSpec((None, S, S, 3), tf.float32)],
            )

            def tf_function(x: np.ndarray, _f=graph_fn) -> np.ndarray:
                return _f(tf.constant(x)).numpy().reshape(len(x))

            out["tf_function"] = tf_function
    for name, precision in (("ort_fp32", "fp32"), ("ort_int8", "int8")):
        if name in backends:
            be = OnnxRuntimeBackend.load(
                model_dir, precision=precision, intra_op_threads=intra_op_threads
            )
            out[name] = be.predict_batch
    for name, precision in (("ov_f32", "fp32"), ("ov_bf16", "bf16"), ("ov_int8", "int8")):
        if name in backends:
            import warnings

            from ..runtimes.openvino import OpenVINOBackend

            with warnings.catch_warnings():
                # forced bf16 on a random-weight model: expected, said in the docstring
                warnings.filterwarnings("ignore", message=".*bf16.*")
                ov = OpenVINOBackend.load(
                    model_dir,
                    precision=precision,
                    intra_op_threads=intra_op_threads,
                    force_bf16=force_bf16 and precision == "bf16",
                )
            out[name] = ov.predict_batch
    return {b: out[b] for b in backends}
