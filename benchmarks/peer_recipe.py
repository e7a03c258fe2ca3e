"""The peer recipe: the research report's own pipeline in plain Keras (no bmcd code).

Used by ``benchmarks/accuracy_cv.py`` as the peer row of the accuracy table
(docs/accuracy.rst): it is trained and scored on exactly the cells of bmcd's folds
(:func:`bmcd.cv.cv_splits`) and scored with the same metric code
(:func:`bmcd.cv.prediction_row`), but nothing of bmcd touches its images or its network.

The recipe, as the report wrote it:

* read with OpenCV, gray, binary threshold at gray level 1 (``gray > 1``), external
  contours, crop to the bounding box of ``contours[0]``, the FIRST contour
  ``cv2.findContours`` returns (not the largest; a speck of noise may come first);
* plain ``cv2.resize`` to S x S (no padding to a square: the cell's aspect ratio changes);
* ``keras.applications.mobilenet_v2.preprocess_input`` (to [-1, 1]);
* ``keras.applications.MobileNetV2(include_top=False, weights=None)`` +
  ``GlobalAveragePooling2D`` + ``Dense(1, sigmoid)``; Adam (Keras' default learning rate
  1e-3), binary cross-entropy, a fixed number of epochs, images in a new random order every
  epoch (``shuffle=True``); no augmentation, no class balancing, threshold 0.5;
* BatchNorm momentum lowered from Keras' 0.999 to :data:`PEER_BN_MOMENTUM` on every
  BatchNormalization layer: with weights=None the moving statistics otherwise stay near
  their initial values for the few hundred steps of a run and inference-mode outputs
  collapse to one value. The same value bmcd uses from scratch, so that this one setting
  does not decide the comparison.

OpenCV decodes BGR; the image is converted to RGB before ``preprocess_input`` (channel order
does not matter from scratch as long as training and scoring agree; this keeps it the same
as bmcd's).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

__all__ = ["PEER_BN_MOMENTUM", "PEER_GRAY_THRESHOLD", "PEER_THRESHOLD", "build_peer_model",
           "fit_predict", "peer_image", "peer_image_array", "peer_images"]

#: BatchNorm momentum of every BatchNormalization layer (Keras' default is 0.99 / 0.999).
PEER_BN_MOMENTUM = 0.8
#: Gray level of the report's binary threshold (foreground: gray > 1).
PEER_GRAY_THRESHOLD = 1
#: The report's decision threshold on the sigmoid output.
PEER_THRESHOLD = 0.5


def peer_image(path: str, size: int) -> np.ndarray:
    """One image file the report's way (:func:`peer_image_array` of ``cv2.imread``)."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)  # BGR
    if img is None:
        raise OSError(f"cannot read {path}")
    return peer_image_array(img, size)


def peer_image_array(img: np.ndarray, size: int) -> np.ndarray:
    """Threshold, crop to ``contours[0]``, plain resize; BGR uint8 in.

    Returns float32 RGB in [0, 255], shape (size, size, 3).
    """
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    _, th = cv2.threshold(gray, PEER_GRAY_THRESHOLD, 255, cv2.THRESH_BINARY)
    contours, _ = cv2.findContours(th, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if len(contours):
        x, y, w, h = cv2.boundingRect(contours[0])  # the FIRST contour, as in the report
        img = img[y : y + h, x : x + w]
    img = cv2.resize(img, (int(size), int(size)))  # plain resize, no pad to square
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB).astype(np.float32)


def peer_images(paths: Sequence[str], size: int) -> np.ndarray:
    """:func:`peer_image` of every path, then ``mobilenet_v2.preprocess_input``."""
    import keras

    x = np.stack([peer_image(p, size) for p in paths])
    return keras.applications.mobilenet_v2.preprocess_input(x)


def build_peer_model(size: int, bn_momentum: float = PEER_BN_MOMENTUM, learning_rate=1e-3):
    """MobileNetV2 (weights=None) + GlobalAveragePooling + Dense(1, sigmoid), Adam."""
    import keras

    base = keras.applications.MobileNetV2(include_top=False, weights=None,
                                          input_shape=(int(size), int(size), 3))
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = float(bn_momentum)
    x = keras.layers.GlobalAveragePooling2D()(base.output)
    out = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(base.input, out)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
                  loss="binary_crossentropy", metrics=["accuracy"])
    return model


def fit_predict(train_paths: Sequence[str], train_labels: Sequence[int],
                test_paths: Sequence[str], *, size: int, epochs: int, batch_size: int = 32,
                seed: int = 0, bn_momentum: float = PEER_BN_MOMENTUM,
                verbose: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    """Train the peer model on ``train_paths`` and return p(all) of ``test_paths``.

    Labels are 1 = "all", 0 = "hem". Returns ``(p_all, record)``; the record holds the
    seconds, the training history and how many crops came from a contour smaller than a
    tenth of the image (the report's ``contours[0]`` picking a speck).
    """
    import keras

    keras.utils.set_random_seed(int(seed))
    t0 = time.perf_counter()
    x_tr = peer_images(train_paths, size)
    x_te = peer_images(test_paths, size)
    y_tr = np.asarray(train_labels, dtype=np.float32)
    t_pre = time.perf_counter()
    model = build_peer_model(size, bn_momentum)
    hist = model.fit(x_tr, y_tr, epochs=int(epochs), batch_size=int(batch_size), shuffle=True,
                     verbose=verbose)
    t_fit = time.perf_counter()
    p = model.predict(x_te, batch_size=64, verbose=0).reshape(-1).astype(np.float64)
    t_end = time.perf_counter()
    return p, {
        "seconds_preprocess": round(t_pre - t0, 2),
        "seconds_fit": round(t_fit - t_pre, 2),
        "seconds_predict": round(t_end - t_fit, 2),
        "history": {k: [float(v) for v in vals] for k, vals in hist.history.items()},
        "small_crops": int(sum(_small_crop(q) for q in test_paths)),
    }


def _small_crop(path: str) -> bool:
    """Whether ``contours[0]`` covers less than a tenth of the largest contour's box."""
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    _, th = cv2.threshold(img, PEER_GRAY_THRESHOLD, 255, cv2.THRESH_BINARY)
    contours, _ = cv2.findContours(th, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not len(contours):
        return False
    area = [cv2.boundingRect(c)[2] * cv2.boundingRect(c)[3] for c in contours]
    return area[0] < 0.1 * max(area)
