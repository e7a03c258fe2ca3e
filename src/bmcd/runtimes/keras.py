"""Keras inference backend (``"keras"``) and the Keras pieces a saved model needs.

TensorFlow / Keras are imported lazily, inside functions, through
:func:`bmcd._deps.optional_import`, so importing this module is cheap and a missing
``train`` extra fails with the exact ``pip install 'bmcd[train]'`` hint.

* :func:`keras_module` imports Keras 3;
* :func:`image_preprocess_layer` is the serialisable ``ImagePreprocess`` input layer. It
  lives here, with the backend, because loading ``model.keras`` needs it registered; the
  network builder (:func:`bmcd.training.build_model`) puts it at the front of the graph;
* :class:`KerasBackend` loads ``model.keras`` in safe mode and predicts through one cached
  ``tf.function``.

Training (architectures, input pipeline, loop) is :mod:`bmcd.training`; see
docs/architecture.rst.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .._deps import optional_import
from ..artifact import INPUT_NAME, KERAS_FILE, atomic_write_bytes, read_model_meta
from ..errors import CamUnavailableError, ConfigError, ConfigTypeError, ModelFormatError
from . import Backend, register_backend

__all__ = [
    "CAM_NAME",
    "KerasBackend",
    "cam_model",
    "custom_objects",
    "image_preprocess_layer",
    "keras_module",
    "model_input_size",
]

#: Name of the class activation map output (Keras two-output model and ONNX file);
#: docs/explain.rst.
CAM_NAME = "cam"

_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

_LAYER_CLASS: Any = None


def keras_module(purpose: str = "training or Keras inference"):
    """Import and return ``keras`` (Keras 3, from the ``train`` extra)."""
    optional_import("tensorflow", purpose=purpose)
    return optional_import("keras", purpose=purpose)


def image_preprocess_layer():
    """The serialisable ``ImagePreprocess`` layer class (registered as ``bmcd>ImagePreprocess``).

    ``mode="tf"`` maps [0, 255] to [-1, 1] (MobileNetV2); ``mode="caffe"`` flips RGB to BGR
    and subtracts the ImageNet channel means (ResNet50). Being a registered layer rather
    than a ``Lambda``, it loads in Keras safe mode and converts cleanly to ONNX.
    """
    global _LAYER_CLASS
    if _LAYER_CLASS is not None:
        return _LAYER_CLASS
    keras = keras_module()

    @keras.saving.register_keras_serializable(package="bmcd")
    class ImagePreprocess(keras.layers.Layer):
        def __init__(self, mode: str = "tf", **kwargs):
            super().__init__(**kwargs)
            if mode not in ("tf", "caffe"):
                raise ConfigError(f"ImagePreprocess mode must be 'tf' or 'caffe', received {mode!r}.")
            self.mode = mode

        def call(self, x):
            ops = keras.ops
            if self.mode == "tf":
                return x / 127.5 - 1.0
            bgr = ops.flip(x, axis=-1)
            mean = ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype=x.dtype)
            return bgr - mean

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {**super().get_config(), "mode": self.mode}

    _LAYER_CLASS = ImagePreprocess
    return ImagePreprocess


def custom_objects() -> dict[str, Any]:
    """The Keras classes a bmcd ``model.keras`` needs, for plain Keras loading.

    Calling it also registers them with Keras, so after ``bmcd.custom_objects()`` both
    forms below work, e.g. to fine-tune a bmcd model further in plain Keras
    (docs/models.rst, "Opening model.keras in plain Keras").

    Examples
    --------
    >>> import bmcd, keras                                               # doctest: +SKIP
    >>> model = keras.saving.load_model("model/model.keras",
    ...                                 custom_objects=bmcd.custom_objects())  # doctest: +SKIP
    """
    cls = image_preprocess_layer()
    return {"bmcd>ImagePreprocess": cls, "ImagePreprocess": cls}


# ---------------------------------------------------------------------------------------
# class activation map (docs/explain.rst)
# ---------------------------------------------------------------------------------------


def cam_model(model):
    """A two-output Keras model ``image -> (p_all, cam)`` sharing ``model``'s layers.

    The bmcd head is global average pooling then one sigmoid unit, so with the last
    feature map ``f`` of shape (h, w, C), dense weights ``w`` and bias ``b``::

        logit = b + w . mean_ij f_ij = mean_ij (w . f_ij + b)

    and ``cam_ij = w . f_ij + b`` (shape (batch, h, w)) is an exact decomposition of the
    logit over the feature map's cells: its spatial mean is the logit of p(all). Positive
    cells push towards "all", negative ones towards "hem" (docs/explain.rst).

    Parameters
    ----------
    model : keras.Model
        A network from :func:`bmcd.training.build_model` with ``pooling="avg"`` and no
        hidden head layers (layers ``image_preprocess``, ``backbone``, ``pool``, ``p_all``).

    Returns
    -------
    keras.Model
        Outputs ``p_all`` (batch, 1) and ``cam`` (batch, h, w); ``model`` is not changed
        (its layer names and saved file stay as they are).

    Raises
    ------
    ModelFormatError
        The model has another head (max / flatten pooling, hidden dense layers), for which
        the map would not be exact.
    """
    from ..artifact import OUTPUT_NAME

    keras = keras_module("class activation maps")
    names = [layer.name for layer in model.layers]
    try:
        pre = model.get_layer("image_preprocess")
        backbone = model.get_layer("backbone")
        pool = model.get_layer("pool")
        dense = model.get_layer(OUTPUT_NAME)
    except ValueError as exc:
        raise ModelFormatError(
            f"Class activation maps need a bmcd network (layers image_preprocess, backbone, "
            f"pool, {OUTPUT_NAME}); this model has layers {names}."
        ) from exc
    extra = [n for n in names if n.startswith("head_dense")]
    if not isinstance(pool, keras.layers.GlobalAveragePooling2D) or extra:
        raise ModelFormatError(
            f"The class activation map is exact only for global average pooling followed by "
            f"the one-unit output; this model has pool={type(pool).__name__} and hidden "
            f"head layers {extra}. Train with pooling='avg' and head_units=() to explain it."
        )
    kernel, bias = dense.get_weights()
    inputs = keras.Input(shape=tuple(model.inputs[0].shape[1:]), dtype="float32",
                         name=model.inputs[0].name)
    feats = backbone(pre(inputs))
    p_all = dense(pool(feats))  # dropout is the identity at inference
    lin = keras.layers.Dense(1, activation=None, name="cam_logit")
    lin.build(tuple(feats.shape))
    lin.set_weights([kernel, bias])
    lin.trainable = False
    h, w = int(feats.shape[1]), int(feats.shape[2])
    cam = keras.layers.Reshape((h, w), name=CAM_NAME)(lin(feats))
    # a list, not a dict: the outputs keep this order (p_all first, as in the ONNX file)
    return keras.Model(inputs, [p_all, cam], name=f"{model.name}_cam")


# ---------------------------------------------------------------------------------------
# inference backend
# ---------------------------------------------------------------------------------------


def model_input_size(model) -> tuple[int | None, int | None, int | None]:
    """``(H, W, C)`` of a Keras model's single image input."""
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4:
        raise ModelFormatError(
            f"Expected a model with one (batch, S, S, 3) image input; received input shape "
            f"{shape}."
        )
    return shape[1], shape[2], shape[3]


@register_backend("keras")
class KerasBackend(Backend):
    """Keras inference backend: a ``keras.Model`` plus its ``bmcd.json`` document.

    The model maps float32 RGB [0, 255] of shape (n, S, S, 3) to p(all) of shape (n, 1).
    Prediction runs through one cached ``tf.function`` with a dynamic batch axis, in
    chunks of ``batch_size``, avoiding ``Model.predict``'s per-call set-up.

    Parameters
    ----------
    model : keras.Model
        A network built by :func:`bmcd.training.build_model` (or loaded from ``model.keras``).
    meta : dict
        The ``bmcd.json`` document.
    batch_size : int
        Largest chunk fed to the network at once.

    Examples
    --------
    >>> from bmcd.runtimes import get_backend
    >>> backend = get_backend("keras").load("model")            # doctest: +SKIP
    >>> p_all = backend.predict_batch(x)                         # doctest: +SKIP
    """

    def __init__(self, model, meta: dict[str, Any], batch_size: int = 64):
        self.model = model
        self.meta = meta
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, received {batch_size!r}.")
        self._fn = None
        self._cam_fn = None

    # -- loading / saving -----------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike, **options: Any) -> KerasBackend:
        """Load ``model.keras`` and ``bmcd.json`` from a model directory (safe mode).

        Parameters
        ----------
        path : path
            The model directory (a path to its ``model.keras`` is accepted too).
        batch_size : int, optional
            Chunk size for :meth:`predict_batch` (default 64).

        Raises
        ------
        ModelFormatError
            ``bmcd.json`` is missing or invalid, ``model.keras`` is missing or does not
            load, or the network's input size disagrees with ``bmcd.json``.
        """
        batch_size = int(options.pop("batch_size", 64))
        if options:
            raise ConfigTypeError(
                f"KerasBackend.load got unexpected options {sorted(options)}; it accepts "
                f"batch_size."
            )
        d = Path(path)
        if d.is_file() and d.name == KERAS_FILE:
            d = d.parent
        model_meta = read_model_meta(d)
        meta = model_meta.to_dict()
        file = d / KERAS_FILE
        if not file.is_file():
            raise ModelFormatError(
                f"'{d}' has a bmcd.json but no {KERAS_FILE}; the Keras backend needs it. "
                f"Load the ONNX export with backend='onnx', or re-save the model."
            )
        keras = keras_module("loading a Keras model")
        image_preprocess_layer()  # register bmcd>ImagePreprocess before deserialising
        try:
            model = keras.saving.load_model(file, compile=False, safe_mode=True)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise ModelFormatError(
                f"Could not load '{file}' as a Keras model in safe mode "
                f"({exc.__class__.__name__}: {first}). The file is corrupt, was written by an "
                f"incompatible Keras, or contains unsafe (lambda) layers."
            ) from exc
        h, w, c = model_input_size(model)
        size = model_meta.image_size
        if (h, w, c) != (size, size, 3):
            raise ModelFormatError(
                f"'{file}' takes input of shape ({h}, {w}, {c}) but {d / 'bmcd.json'} says "
                f"image_size {size}, i.e. ({size}, {size}, 3). The files do not belong "
                f"together; re-save the model with Classifier.save()."
            )
        out_shape = tuple(model.outputs[0].shape)
        if len(model.outputs) != 1 or out_shape[1:] != (1,):
            raise ModelFormatError(
                f"'{file}' must have one output of shape (batch, 1) (the probability of "
                f"'all'); received outputs {[tuple(o.shape) for o in model.outputs]}."
            )
        return cls(model, meta, batch_size=batch_size)

    def save(self, model_dir: str | os.PathLike) -> Path:
        """Write ``model.keras`` into ``model_dir`` atomically (``bmcd.json`` is the caller's).

        Returns the path of ``model.keras``.
        """
        d = Path(model_dir)
        d.mkdir(parents=True, exist_ok=True)
        target = d / KERAS_FILE
        import tempfile

        with tempfile.TemporaryDirectory(prefix=".bmcd-save-", dir=d) as tmp:
            tmp_file = Path(tmp) / KERAS_FILE
            self.model.save(tmp_file)
            atomic_write_bytes(target, tmp_file.read_bytes())
        target.chmod(0o644)
        return target

    # -- inference --------------------------------------------------------------------------
    def _predict_fn(self):
        if self._fn is None:
            tf = optional_import("tensorflow", purpose="Keras inference")
            model = self.model
            h, w, c = model_input_size(model)
            spec = tf.TensorSpec((None, h, w, c), tf.float32, name=INPUT_NAME)

            @tf.function(input_signature=[spec], reduce_retracing=True)
            def fn(x):
                return model(x, training=False)

            self._fn = fn
        return self._fn

    def predict_batch(self, x: np.ndarray) -> np.ndarray:
        """p(all) for a preprocessed batch.

        Parameters
        ----------
        x : ndarray of shape (n, S, S, 3)
            float32 RGB in [0, 255] (other dtypes are cast), from
            :func:`bmcd.preprocessing.preprocess_batch`.

        Returns
        -------
        ndarray of shape (n,), float32
        """
        x = np.asarray(x)
        size = self.image_size
        if x.ndim != 4 or x.shape[1:] != (size, size, 3):
            raise ConfigError(
                f"predict_batch expects preprocessed input of shape (n, {size}, {size}, 3); "
                f"received {x.shape}. Run images through bmcd.preprocessing.preprocess_batch "
                f"with the model's PreprocessConfig first."
            )
        if len(x) == 0:
            return np.zeros(0, dtype=np.float32)
        fn = self._predict_fn()
        out = np.empty(len(x), dtype=np.float32)
        for start in range(0, len(x), self.batch_size):
            chunk = np.ascontiguousarray(x[start : start + self.batch_size], dtype=np.float32)
            out[start : start + len(chunk)] = np.asarray(fn(chunk)).reshape(-1)
        return out

    def explain_batch(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """p(all) ``(n,)`` and class activation maps ``(n, h, w)`` float32 (:func:`cam_model`).

        Raises
        ------
        CamUnavailableError
            The network's head is not global average pooling + one unit.
        """
        x = np.asarray(x)
        size = self.image_size
        if x.ndim != 4 or x.shape[1:] != (size, size, 3):
            raise ConfigError(
                f"explain_batch expects preprocessed input of shape (n, {size}, {size}, 3); "
                f"received {x.shape}."
            )
        if self._cam_fn is None:
            tf = optional_import("tensorflow", purpose="class activation maps")
            try:
                two = cam_model(self.model)
            except ModelFormatError as exc:
                raise CamUnavailableError(str(exc)) from exc
            spec = tf.TensorSpec((None, size, size, 3), tf.float32, name=INPUT_NAME)

            @tf.function(input_signature=[spec], reduce_retracing=True)
            def fn(batch):
                return two(batch, training=False)

            self._cam_fn, self._cam_shape = fn, tuple(int(d) for d in two.outputs[1].shape[1:])
        ps, cams = [], []
        for start in range(0, len(x), self.batch_size):
            chunk = np.ascontiguousarray(x[start : start + self.batch_size], dtype=np.float32)
            p, cam = self._cam_fn(chunk)
            ps.append(np.asarray(p).reshape(-1))
            cams.append(np.asarray(cam, dtype=np.float32))
        if not ps:
            return np.zeros(0, np.float32), np.zeros((0, *self._cam_shape), np.float32)
        return np.concatenate(ps), np.concatenate(cams)

    def __repr__(self) -> str:
        return (
            f"KerasBackend(arch={self.meta.get('arch')!r}, image_size={self.meta.get('image_size')})"
        )
