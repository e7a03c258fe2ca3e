"""Keras backend: model builders, training and inference.

TensorFlow / Keras are imported lazily, inside functions, through
:func:`bmcd._deps.optional_import`, so importing this module is cheap and a missing
``train`` extra fails with the exact ``pip install 'bmcd[train]'`` hint.

Model graph (input and output names are part of the ONNX contract)::

    image: float32 (batch, S, S, 3) RGB in [0, 255]
      -> ImagePreprocess(mode)      the architecture's own input scaling, inside the graph
      -> keras.applications backbone, include_top=False
      -> global average pooling (or max / flatten)
      -> [Dense(units, relu) -> Dropout]*   optional extra head layers
      -> Dropout
      -> Dense(1, sigmoid) named "p_all"
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .._deps import optional_import
from ..errors import WeightsUnavailableError

__all__ = [
    "ARCHITECTURES",
    "build_model",
    "keras_module",
    "image_preprocess_layer",
]

#: Supported architectures -> (keras.applications constructor, input scaling mode,
#: name of the first layer unfrozen by default in the fine-tuning phase).
ARCHITECTURES: dict[str, dict[str, str]] = {
    "mobilenet_v2": {"app": "MobileNetV2", "mode": "tf", "fine_tune_from": "block_13_expand"},
    "resnet50": {"app": "ResNet50", "mode": "caffe", "fine_tune_from": "conv2_block1_1_conv"},
}

INPUT_NAME = "image"
OUTPUT_NAME = "p_all"
# BatchNorm momentum used when training from scratch: Keras' defaults (0.999 / 0.99) leave
# the moving statistics far from the data after a few hundred steps, so inference-mode
# predictions collapse to a constant.
SCRATCH_BN_MOMENTUM = 0.9

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
                raise ValueError(f"ImagePreprocess mode must be 'tf' or 'caffe', received {mode!r}.")
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


def _check_arch(arch: str) -> dict[str, str]:
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"Unknown arch {arch!r}; expected one of {sorted(ARCHITECTURES)}."
        )
    return ARCHITECTURES[arch]


def _backbone(keras, arch: str, image_size: int, weights: str | os.PathLike | None):
    spec = _check_arch(arch)
    ctor = getattr(keras.applications, spec["app"])
    shape = (image_size, image_size, 3)
    if weights is None or (isinstance(weights, str) and weights.lower() == "none"):
        return ctor(include_top=False, weights=None, input_shape=shape)
    if isinstance(weights, str) and weights == "imagenet":
        try:
            return ctor(include_top=False, weights="imagenet", input_shape=shape)
        except Exception as exc:  # offline: URLError / "URL fetch failure" / HTTP errors
            cache = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"
            raise WeightsUnavailableError(
                f"Could not obtain ImageNet weights for {arch} ({exc.__class__.__name__}: "
                f"{exc}). Keras downloads them once into {cache}; this machine seems to be "
                f"offline and the file is not cached there. Either pass weights=None to train "
                f"from scratch, or pass weights='/path/to/{spec['app'].lower()}_notop.weights.h5' "
                f"(a local no-top weights file), or copy the Keras weights file into {cache}."
            ) from exc
    path = Path(weights)
    if not path.is_file():
        raise WeightsUnavailableError(
            f"weights must be 'imagenet', None or a path to a local weights file; received "
            f"{str(weights)!r}, which is not an existing file. Pass weights=None to train "
            f"from scratch."
        )
    try:
        return ctor(include_top=False, weights=str(path), input_shape=shape)
    except Exception as exc:
        raise WeightsUnavailableError(
            f"Could not load weights file '{path}' into a no-top {arch} backbone at "
            f"{image_size}px ({exc.__class__.__name__}: {exc}). Expected the Keras "
            f"include_top=False weights for {spec['app']}."
        ) from exc


def build_model(
    arch: str = "mobilenet_v2",
    image_size: int = 224,
    weights: str | os.PathLike | None = "imagenet",
    *,
    pooling: str = "avg",
    head_units: tuple[int, ...] = (),
    dropout: float = 0.2,
    bn_momentum: float | None = None,
):
    """Build the classification network.

    Parameters
    ----------
    arch : {"mobilenet_v2", "resnet50"}
    image_size : int
        Side S of the (S, S, 3) float32 RGB [0, 255] input.
    weights : "imagenet", None or path
        Backbone initialisation. ``"imagenet"`` needs the network or the Keras cache;
        offline it raises :class:`~bmcd.errors.WeightsUnavailableError`.
    pooling : {"avg", "max", "flatten"}
        How the backbone's feature map becomes a vector.
    head_units : tuple of int
        Optional hidden Dense(relu) layers before the output (the research report tried
        256 and 512).
    dropout : float
        Dropout rate before the output layer (and after each hidden layer).
    bn_momentum : float, optional
        Override the momentum of every BatchNormalization layer. Defaults to
        ``SCRATCH_BN_MOMENTUM`` (0.9) when ``weights`` is None, else Keras' own.

    Returns
    -------
    keras.Model
        Input ``image``, output ``p_all`` of shape (batch, 1). The backbone is the layer
        named ``"backbone"``.
    """
    keras = keras_module()
    if pooling not in ("avg", "max", "flatten"):
        raise ValueError(f"pooling must be 'avg', 'max' or 'flatten', received {pooling!r}.")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), received {dropout!r}.")
    spec = _check_arch(arch)
    scratch = weights is None or (isinstance(weights, str) and weights.lower() == "none")
    backbone = _backbone(keras, arch, int(image_size), weights)
    backbone.name = "backbone"  # stable name for freezing / fine-tuning
    if bn_momentum is None and scratch:
        bn_momentum = SCRATCH_BN_MOMENTUM
    if bn_momentum is not None:
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = float(bn_momentum)

    Pre = image_preprocess_layer()
    inputs = keras.Input(shape=(image_size, image_size, 3), dtype="float32", name=INPUT_NAME)
    x = Pre(mode=spec["mode"], name="image_preprocess")(inputs)
    x = backbone(x)
    if pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="pool")(x)
    else:
        x = keras.layers.Flatten(name="pool")(x)
    for i, units in enumerate(head_units):
        x = keras.layers.Dense(int(units), activation="relu", name=f"head_dense_{i}")(x)
        x = keras.layers.Dropout(dropout, name=f"head_dropout_{i}")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name=OUTPUT_NAME)(x)
    return keras.Model(inputs, outputs, name=f"bmcd_{arch}")
