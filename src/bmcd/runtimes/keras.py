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

Pieces:

* :func:`build_model` builds that graph (``weights`` "imagenet", None or a local file);
* :class:`KerasBackend` (registered as ``"keras"``) loads ``model.keras`` in safe mode and
  predicts through one cached ``tf.function``;
* :func:`cache_images` runs the shared preprocessing once per image into a uint8 cache (in
  memory or memory-mapped), and a ``keras.utils.PyDataset`` serves shuffled, balanced,
  randomly flipped / rotated float32 batches from it;
* :func:`train_model` runs the two training phases (frozen backbone, then fine-tuning), or
  one full phase when training from scratch.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._deps import optional_import
from .._version import __version__ as _bmcd_version
from ..artifact import KERAS_FILE, atomic_write_bytes, read_model_json
from ..errors import ModelFormatError, WeightsUnavailableError
from ..preprocessing import PreprocessConfig, preprocess_batch
from . import Backend, register_backend

__all__ = [
    "ARCHITECTURES",
    "KerasBackend",
    "build_model",
    "cache_images",
    "keras_module",
    "image_preprocess_layer",
    "inference_copy",
    "set_seed",
    "train_model",
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
# predictions collapse to a constant. Measured on the synthetic learnability set
# (MobileNetV2, 64 px, 13 steps per epoch, identical training losses): inference-mode
# outputs stop being constant after epoch 5 at 0.9, epoch 3 at 0.8, epoch 2 at 0.7 (test
# AUC after 5 epochs 0.93 / 0.96 / 0.96). 0.8 still averages over ~5 batches.
SCRATCH_BN_MOMENTUM = 0.8

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


def _keras_home() -> Path:
    """Where Keras caches downloads (``$KERAS_HOME``, default ``~/.keras``)."""
    try:
        from keras.src.backend.config import keras_home

        return Path(os.path.expanduser(keras_home()))
    except Exception:  # pragma: no cover - private API moved
        return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))


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
        A network built by :func:`build_model` (or loaded from ``model.keras``).
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
            raise ValueError(f"batch_size must be >= 1, received {batch_size!r}.")
        self._fn = None

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
            raise TypeError(
                f"KerasBackend.load got unexpected options {sorted(options)}; it accepts "
                f"batch_size."
            )
        d = Path(path)
        if d.is_file() and d.name == KERAS_FILE:
            d = d.parent
        meta = read_model_json(d)
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
            raise ModelFormatError(
                f"Could not load '{file}' as a Keras model in safe mode "
                f"({exc.__class__.__name__}: {exc}). The file is corrupt, was written by an "
                f"incompatible Keras, or contains unsafe (lambda) layers."
            ) from exc
        h, w, c = model_input_size(model)
        size = int(meta["image_size"])
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
            spec = tf.TensorSpec((None, h, w, c), tf.float32, name="image")

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
            raise ValueError(
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

    def __repr__(self) -> str:
        return (
            f"KerasBackend(arch={self.meta.get('arch')!r}, image_size={self.meta.get('image_size')})"
        )


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


# ---------------------------------------------------------------------------------------
# input pipeline
# ---------------------------------------------------------------------------------------


def _cache_key(items: Sequence[Any], config: PreprocessConfig) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(config.to_dict(), sort_keys=True).encode())
    h.update(_bmcd_version.encode())
    for it in items:
        p = os.fspath(it)
        st = os.stat(p)
        h.update(f"{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def cache_images(
    items: Sequence[Any],
    config: PreprocessConfig,
    *,
    cache_dir: str | os.PathLike | None = None,
    name: str = "images",
    workers: int | None = None,
    chunk_size: int = 128,
    progress: bool | None = None,
) -> np.ndarray:
    """Run the shared preprocessing once per image and keep the result as uint8.

    :func:`bmcd.preprocessing.preprocess` resizes uint8 pixels and only then casts to
    float32, so its output is integral in [0, 255]: uint8 stores it losslessly in a
    quarter of the memory.

    Parameters
    ----------
    items : sequence of paths (or arrays / bytes)
        What :func:`bmcd.preprocessing.preprocess_batch` accepts.
    config : PreprocessConfig
    cache_dir : path, optional
        When given (and every item is a file path), the array lives in
        ``cache_dir/<name>-<key>.npy`` as a memory map. The key hashes the config and each
        file's path, size and modification time, so a second run over the same files reuses
        it without decoding anything.
    name : str
        Label for the progress bar and the cache file.
    workers : int, optional
        Preprocessing threads (default: the CPU count).
    chunk_size : int
        Images preprocessed per call (bounds the float32 working memory).
    progress : bool, optional
        Show a tqdm bar (default: only on a terminal).

    Returns
    -------
    ndarray or numpy.memmap of shape (n, S, S, 3), uint8
    """
    from tqdm.auto import tqdm

    items = list(items)
    n, S = len(items), config.image_size
    path = done = None
    if cache_dir is not None and items and all(isinstance(i, (str, os.PathLike)) for i in items):
        cdir = Path(cache_dir)
        cdir.mkdir(parents=True, exist_ok=True)
        key = _cache_key(items, config)
        path = cdir / f"{name}-{key}.npy"
        done = cdir / f"{name}-{key}.done"
        if path.is_file() and done.is_file():
            arr = np.load(path, mmap_mode="r")
            if arr.shape == (n, S, S, 3) and arr.dtype == np.uint8:
                return arr
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, S, S, 3))
    else:
        out = np.empty((n, S, S, 3), dtype=np.uint8)
    with tqdm(total=n, desc=f"preprocess {name}", unit="img",
              disable=None if progress is None else not progress) as bar:
        for start in range(0, n, chunk_size):
            chunk = preprocess_batch(items[start : start + chunk_size], config, workers=workers)
            out[start : start + len(chunk)] = chunk.astype(np.uint8)  # integral: lossless
            bar.update(len(chunk))
    if path is not None:
        out.flush()
        done.write_text("ok\n")
        return np.load(path, mmap_mode="r")
    return out


_DIHEDRAL = 8  # 4 rotations x optional flip


def _dihedral(img: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 flips/90-degree rotations of an (H, W, C) image (k in 0..7)."""
    out = np.rot90(img, k=k % 4, axes=(0, 1))
    if k >= 4:
        out = out[:, ::-1]
    return out


_SEQUENCE_CLASS: Any = None


def _sequence_class():
    """``CellSequence``, a ``keras.utils.PyDataset`` over the uint8 cache (built lazily)."""
    global _SEQUENCE_CLASS
    if _SEQUENCE_CLASS is not None:
        return _SEQUENCE_CLASS
    keras = keras_module()
    from ..data import apply_transform

    class CellSequence(keras.utils.PyDataset):
        """Batches of (float32 images, float32 labels) from a uint8 image cache.

        ``indices``/``transforms`` list the epoch's items (an index may repeat, e.g. the
        augmented minority copies of :func:`bmcd.data.balance_augment`, each with a fixed
        transform). With ``shuffle`` the order is redrawn every epoch from ``seed``; with
        ``augment`` every item also gets a random flip / 90-degree rotation, drawn from a
        generator seeded by (seed, epoch, batch), so runs are reproducible.
        """

        def __init__(self, images, labels, batch_size, *, indices=None, transforms=None,
                     shuffle=False, augment=False, seed=0, **kwargs):
            super().__init__(**kwargs)
            self.images = images
            self.labels = np.asarray(labels, dtype=np.float32).reshape(-1)
            n = len(self.labels)
            self.indices = np.arange(n) if indices is None else np.asarray(indices, np.int64)
            self.transforms = (["none"] * len(self.indices) if transforms is None
                               else list(transforms))
            self.batch_size = int(batch_size)
            self.shuffle = bool(shuffle)
            self.augment = bool(augment)
            self.seed = int(seed)
            self.epoch = 0
            self._order = self._draw_order()

        def _draw_order(self):
            if not self.shuffle:
                return np.arange(len(self.indices))
            return np.random.default_rng([self.seed, self.epoch, 7]).permutation(len(self.indices))

        def __len__(self):
            return -(-len(self.indices) // self.batch_size)

        def __getitem__(self, i):
            sel = self._order[i * self.batch_size : (i + 1) * self.batch_size]
            idx = self.indices[sel]
            order = np.argsort(idx, kind="stable")  # sorted reads are kinder to a memmap
            raw = np.empty((len(idx), *self.images.shape[1:]), dtype=np.uint8)
            raw[order] = self.images[idx[order]]
            rng = np.random.default_rng([self.seed, self.epoch, i])
            ks = rng.integers(0, _DIHEDRAL, size=len(idx)) if self.augment else None
            x = np.empty(raw.shape, dtype=np.float32)
            for j, s in enumerate(sel):
                img = raw[j]
                t = self.transforms[s]
                if t != "none":
                    img = apply_transform(img, t)
                if ks is not None:
                    img = _dihedral(img, int(ks[j]))
                x[j] = img
            return x, self.labels[idx]

        def on_epoch_end(self):
            self.epoch += 1
            self._order = self._draw_order()

    _SEQUENCE_CLASS = CellSequence
    return CellSequence


# ---------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------


def set_seed(seed: int) -> dict[str, int]:
    """Seed Python, numpy and Keras/TensorFlow (``keras.utils.set_random_seed``)."""
    keras = keras_module()
    keras.utils.set_random_seed(int(seed))
    return {"python": int(seed), "numpy": int(seed), "keras": int(seed)}


def _fine_tune_index(backbone, fine_tune_from: str | int) -> int:
    names = [layer.name for layer in backbone.layers]
    if isinstance(fine_tune_from, (int, np.integer)) and not isinstance(fine_tune_from, bool):
        idx = int(fine_tune_from)
        if not -len(names) <= idx < len(names):
            raise ValueError(
                f"fine_tune_from index {idx} is out of range for a backbone of {len(names)} "
                f"layers."
            )
        return idx % len(names)
    if fine_tune_from in names:
        return names.index(fine_tune_from)
    near = [n for n in names if str(fine_tune_from).split("_")[0] in n][:8]
    raise ValueError(
        f"fine_tune_from={fine_tune_from!r} is not a layer of the backbone. Examples of "
        f"layer names: {near or names[:8]} (list them with "
        f"[l.name for l in model.get_layer('backbone').layers])."
    )


def _compile(keras, model, learning_rate: float, jit_compile):
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=float(learning_rate)),
        loss="binary_crossentropy",
        metrics=[keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")],
        jit_compile=jit_compile,
    )


def train_model(
    model,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    *,
    arch: str,
    pretrained: bool,
    epochs: int = 5,
    fine_tune_epochs: int = 5,
    fine_tune_from: str | int | None = None,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    fine_tune_learning_rate: float = 1e-5,
    balance: str | None = "augment",
    augment: bool = True,
    early_stopping_patience: int | None = 5,
    checkpoint_dir: str | os.PathLike | None = None,
    seed: int = 0,
    verbose: int = 1,
    jit_compile: bool | str = False,
) -> dict[str, Any]:
    """Train a :func:`build_model` network on cached uint8 images; return the training record.

    Phases
    ------
    With a pretrained backbone (``pretrained=True``):

    1. ``"head"``: the backbone is frozen (its BatchNorm layers run in inference mode) and
       only the head trains, ``epochs`` epochs at ``learning_rate``;
    2. ``"fine_tune"``: the backbone is unfrozen from layer ``fine_tune_from`` (default
       ``ARCHITECTURES[arch]["fine_tune_from"]``) onwards; earlier layers, their BatchNorm
       included, stay frozen. ``fine_tune_epochs`` epochs at ``fine_tune_learning_rate``.

    From scratch (``pretrained=False``) a frozen random backbone would train only the head,
    so there is one ``"full"`` phase: every layer trains for ``epochs + fine_tune_epochs``
    epochs at ``learning_rate``. The record says so in ``"mode"`` and ``"note"``.

    Each phase stops early on ``val_loss`` (``early_stopping_patience``, when validation
    data are given) and restores its best weights.

    Returns
    -------
    dict
        ``mode``, ``note``, ``phases`` (per phase: name, trainable layers, learning rate,
        epochs requested / run, best epoch, seconds, history), ``history``
        (``{"phases": [{"name", "history"}]}``, what :class:`~bmcd.metrics.EvaluationReport`
        plots), ``balance``, ``augment``, ``batch_size``, ``seed``.
    """
    import time
    import warnings

    from ..data import balance_augment, class_weights

    keras = keras_module()
    spec = _check_arch(arch)
    y_train = np.asarray(y_train, dtype=np.int64).reshape(-1)
    if len(x_train) != len(y_train):
        raise ValueError(f"x_train has {len(x_train)} images but y_train {len(y_train)} labels.")
    has_val = x_val is not None and y_val is not None and len(y_val) > 0
    epochs, fine_tune_epochs = int(epochs), int(fine_tune_epochs)
    if epochs < 0 or fine_tune_epochs < 0 or epochs + fine_tune_epochs == 0:
        raise ValueError(
            f"epochs and fine_tune_epochs must be >= 0 and not both 0; received "
            f"epochs={epochs}, fine_tune_epochs={fine_tune_epochs}."
        )
    if balance not in ("augment", "class_weight", None):
        raise ValueError(
            f"balance must be 'augment', 'class_weight' or None; received {balance!r}."
        )

    indices = transforms = None
    cw = None
    balance_info: dict[str, Any] = {"method": balance}
    if balance == "augment":
        indices, transforms = balance_augment(y_train, seed=seed)
        balance_info.update(
            items_per_epoch=int(len(indices)),
            augmented_copies=int(sum(t != "none" for t in transforms)),
        )
    elif balance == "class_weight":
        cw = class_weights(y_train)
        balance_info["class_weight"] = {str(k): float(v) for k, v in cw.items()}

    Seq = _sequence_class()
    train_seq = Seq(x_train, y_train, batch_size, indices=indices, transforms=transforms,
                    shuffle=True, augment=augment, seed=seed)
    val_seq = Seq(x_val, y_val, max(batch_size, 64)) if has_val else None

    backbone = model.get_layer("backbone")
    if pretrained:
        ft_from = spec["fine_tune_from"] if fine_tune_from is None else fine_tune_from
        ft_index = _fine_tune_index(backbone, ft_from)
        plan = []
        if epochs > 0:
            plan.append(("head", epochs, float(learning_rate), None))
        if fine_tune_epochs > 0:
            plan.append(("fine_tune", fine_tune_epochs, float(fine_tune_learning_rate), ft_index))
        mode = "transfer"
        note = (
            f"pretrained backbone: {epochs} epoch(s) with the backbone frozen at lr "
            f"{learning_rate:g}, then {fine_tune_epochs} epoch(s) with layers from "
            f"'{backbone.layers[ft_index].name}' unfrozen at lr {fine_tune_learning_rate:g}"
        )
    else:
        if fine_tune_from is not None:
            warnings.warn(
                f"fine_tune_from={fine_tune_from!r} is ignored: with weights=None the whole "
                f"network trains from the start.",
                UserWarning,
                stacklevel=3,
            )
        plan = [("full", epochs + fine_tune_epochs, float(learning_rate), 0)]
        mode = "scratch"
        note = (
            f"weights=None: nothing to transfer, so the frozen-backbone phase is skipped and "
            f"the whole network trains for epochs + fine_tune_epochs = "
            f"{epochs + fine_tune_epochs} epoch(s) at lr {learning_rate:g} (BatchNorm "
            f"momentum {SCRATCH_BN_MOMENTUM} unless overridden)"
        )
    if verbose:
        print(f"bmcd: training {arch} ({mode}): {note}.", flush=True)

    phases: list[dict[str, Any]] = []
    for name, n_epochs, lr, unfreeze_from in plan:
        if unfreeze_from is None:
            backbone.trainable = False
            trainable_desc = "head only (backbone frozen)"
        else:
            backbone.trainable = True
            for layer in backbone.layers[:unfreeze_from]:
                layer.trainable = False
            trainable_desc = (
                "all layers" if unfreeze_from == 0
                else f"backbone from '{backbone.layers[unfreeze_from].name}' + head"
            )
        _compile(keras, model, lr, jit_compile)
        callbacks = []
        early = None
        if has_val and early_stopping_patience is not None:
            early = keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=int(early_stopping_patience),
                restore_best_weights=True, verbose=1 if verbose else 0,
            )
            callbacks.append(early)
        ckpt_path = None
        if checkpoint_dir is not None:
            Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
            ckpt_path = Path(checkpoint_dir) / f"{name}.best.keras"
            callbacks.append(keras.callbacks.ModelCheckpoint(
                ckpt_path, monitor="val_loss" if has_val else "loss", save_best_only=True,
            ))
        n_trainable = int(sum(int(np.prod(w.shape)) for w in model.trainable_weights))
        if verbose:
            print(f"bmcd: phase '{name}': {trainable_desc}, {n_trainable:,} trainable "
                  f"parameters, lr {lr:g}, up to {n_epochs} epoch(s).", flush=True)
        t0 = time.perf_counter()
        hist = model.fit(
            train_seq, validation_data=val_seq, epochs=n_epochs, class_weight=cw,
            callbacks=callbacks, verbose=verbose, shuffle=False,
        )
        seconds = time.perf_counter() - t0
        history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
        run = len(history.get("loss", []))
        phases.append({
            "name": name,
            "trainable": trainable_desc,
            "trainable_params": n_trainable,
            "learning_rate": lr,
            "epochs_requested": n_epochs,
            "epochs_run": run,
            "stopped_early": bool(early is not None and early.stopped_epoch > 0),
            "best_epoch": (int(early.best_epoch) + 1 if early is not None and early.best_weights
                           is not None else run),
            "seconds": round(seconds, 2),
            "images_per_second": round(run * len(train_seq.indices) / seconds, 2) if seconds else None,
            "checkpoint": str(ckpt_path) if ckpt_path is not None else None,
            "history": history,
        })
    backbone.trainable = True  # leave a plain, fully trainable model behind
    return {
        "mode": mode,
        "note": note,
        "phases": phases,
        "epochs_run": {p["name"]: p["epochs_run"] for p in phases},
        "history": {"phases": [{"name": p["name"], "history": p["history"]} for p in phases]},
        "balance": balance_info,
        "augment": bool(augment),
        "batch_size": int(batch_size),
        "early_stopping_patience": early_stopping_patience if has_val else None,
        "seed": int(seed),
    }
