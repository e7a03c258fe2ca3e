"""The network: architecture table, backbone loading and :func:`build_model`.

Model graph (input and output names are part of the ONNX contract, see
docs/architecture.rst)::

    image: float32 (batch, S, S, 3) RGB in [0, 255]
      -> ImagePreprocess(mode)      the architecture's own input scaling, inside the graph
      -> keras.applications backbone, include_top=False
      -> global average pooling (or max / flatten)
      -> [Dense(units, relu) -> Dropout]*   optional extra head layers
      -> Dropout
      -> Dense(1, sigmoid) named "p_all"

The ``ImagePreprocess`` layer class lives with the Keras backend
(:func:`bmcd.runtimes.keras.image_preprocess_layer`), which must register it before it
deserialises a saved model; this module puts it at the front of the graph.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..artifact import INPUT_NAME, OUTPUT_NAME
from ..errors import ConfigError, WeightsUnavailableError
from ..runtimes.keras import image_preprocess_layer, keras_module

__all__ = [
    "ARCHITECTURES",
    "SCRATCH_BN_MOMENTUM",
    "build_model",
    "check_arch",
    "image_preprocess_layer",
    "inference_copy",
    "is_scratch",
]

#: Supported architectures -> (keras.applications constructor, input scaling mode,
#: name of the first layer unfrozen by default in the fine-tuning phase).
ARCHITECTURES: dict[str, dict[str, str]] = {
    "mobilenet_v2": {"app": "MobileNetV2", "mode": "tf", "fine_tune_from": "block_13_expand"},
    "resnet50": {"app": "ResNet50", "mode": "caffe", "fine_tune_from": "conv2_block1_1_conv"},
}

# BatchNorm momentum used when training from scratch: Keras' defaults (0.999 / 0.99) leave
# the moving statistics far from the data after a few hundred steps, so inference-mode
# predictions collapse to a constant. Measured on the synthetic learnability set
# (MobileNetV2, 64 px, 13 steps per epoch, identical training losses): inference-mode
# outputs stop being constant after epoch 5 at 0.9, epoch 3 at 0.8, epoch 2 at 0.7 (test
# AUC after 5 epochs 0.93 / 0.96 / 0.96). 0.8 still averages over ~5 batches.
SCRATCH_BN_MOMENTUM = 0.8


def is_scratch(weights: Any) -> bool:
    """Whether ``weights`` means "train from scratch" (None or the string "none")."""
    return weights is None or (isinstance(weights, str) and weights.lower() == "none")


def check_arch(arch: str) -> dict[str, str]:
    """The :data:`ARCHITECTURES` entry of ``arch``; ConfigError for an unknown name."""
    if arch not in ARCHITECTURES:
        raise ConfigError(
            f"Unknown arch {arch!r}; expected one of {sorted(ARCHITECTURES)}."
        )
    return ARCHITECTURES[arch]


def _keras_home() -> Path:
    """Where Keras caches downloads (``$KERAS_HOME``, default ``~/.keras``)."""
    try:
        from keras.src.backend.config import keras_home

        return Path(os.path.expanduser(keras_home()))
    except Exception:  # pragma: no cover - private API moved
        return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))


def _backbone(keras, arch: str, image_size: int, weights: str | os.PathLike | None):
    spec = check_arch(arch)
    ctor = getattr(keras.applications, spec["app"])
    shape = (image_size, image_size, 3)
    if is_scratch(weights):
        return ctor(include_top=False, weights=None, input_shape=shape)
    if isinstance(weights, str) and weights == "imagenet":
        try:
            return ctor(include_top=False, weights="imagenet", input_shape=shape)
        except Exception as exc:  # offline: URLError / "URL fetch failure" / HTTP errors
            cache = _keras_home() / "models"
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
        ``SCRATCH_BN_MOMENTUM`` (0.8) when ``weights`` is None, else Keras' own.

    Returns
    -------
    keras.Model
        Input ``image``, output ``p_all`` of shape (batch, 1). The backbone is the layer
        named ``"backbone"``.
    """
    keras = keras_module()
    if pooling not in ("avg", "max", "flatten"):
        raise ConfigError(f"pooling must be 'avg', 'max' or 'flatten', received {pooling!r}.")
    if not 0.0 <= float(dropout) < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), received {dropout!r}.")
    spec = check_arch(arch)
    scratch = is_scratch(weights)
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



def inference_copy(model):
    """An uncompiled copy of ``model`` with the same weights (no optimizer state).

    Saving a compiled model stores Adam's two moment tensors per weight as well, tripling
    ``model.keras``; a copy keeps the file to the weights and frees that memory.
    """
    keras = keras_module()
    image_preprocess_layer()
    copy = keras.Model.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    return copy


