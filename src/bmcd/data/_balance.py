"""Balancing by augmentation, geometric transforms and class weights."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError, DatasetError
from ._names import TRANSFORMS

# ----------------------------------------------------------------------------------------
# balancing and augmentation
# ----------------------------------------------------------------------------------------


def _class_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).reshape(-1)
    if labels.size == 0:
        raise DatasetError("Cannot balance an empty set of labels.")
    if not np.isin(labels, (0, 1)).all():
        raise DatasetError(f"Labels must be 0/1; received {sorted(set(labels.tolist()))}.")
    idx0, idx1 = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    if idx0.size == 0 or idx1.size == 0:
        missing = "hem" if idx0.size == 0 else "all"
        raise DatasetError(
            f"Both classes are needed, but there are no '{missing}' images "
            f"(hem: {idx0.size}, all: {idx1.size})."
        )
    return idx0, idx1


def balance_augment(
    labels: Sequence[int] | np.ndarray, seed: int | None = 0, max_per_class: int | None = None
) -> tuple[np.ndarray, list[str]]:
    """Balance a training set by subsampling and by augmented copies of the minority class.

    The recipe of the research report: subsample the majority class to
    ``target = min(majority_count, max_per_class or majority_count)`` images (the minority
    too, if it has more than that), then add copies of minority images, each with one of
    :data:`TRANSFORMS`, until both classes have ``target`` items. Originals get ``"none"``.
    Use it on the training split only.

    Returns
    -------
    indices : ndarray of int64
        Indices into ``labels`` (an index appears more than once when copied).
    transforms : list of str
        The transform for each index (apply with :func:`apply_transform`).

    Examples
    --------
    >>> idx, tf = balance_augment([1, 1, 1, 0], seed=0)
    >>> sorted(np.asarray([1, 1, 1, 0])[idx].tolist()), tf.count("none")
    ([0, 0, 0, 1, 1, 1], 4)
    """
    labels = np.asarray(labels).reshape(-1)
    if max_per_class is not None and int(max_per_class) < 1:
        raise DatasetError(f"max_per_class must be >= 1; received {max_per_class}.")
    idx0, idx1 = _class_indices(labels)
    rng = np.random.default_rng(seed)
    majority = max(idx0.size, idx1.size)
    target = min(majority, int(max_per_class)) if max_per_class else majority

    indices: list[np.ndarray] = []
    transforms: list[str] = []
    for idx in (idx0, idx1):
        if idx.size >= target:
            chosen = np.sort(rng.choice(idx, size=target, replace=False))
            indices.append(chosen)
            transforms.extend(["none"] * target)
            continue
        indices.append(idx)
        transforms.extend(["none"] * idx.size)
        need = target - idx.size
        order = idx[rng.permutation(idx.size)]
        # each image gets its own random order of transforms, used round by round
        tf_order = np.argsort(rng.random((idx.size, len(TRANSFORMS))), axis=1)
        k = np.arange(need)
        img = k % idx.size
        rnd = (k // idx.size) % len(TRANSFORMS)
        indices.append(order[img])
        transforms.extend(TRANSFORMS[t] for t in tf_order[img, rnd])
    return np.concatenate(indices).astype(np.int64), transforms


def apply_transform(array: np.ndarray, name: str) -> np.ndarray:
    """Apply one geometric transform to an (H, W[, C]) image.

    ``"none"``, ``"flip_h"`` (mirror left-right), ``"flip_v"`` (upside down), ``"rot90"``,
    ``"rot180"``, ``"rot270"`` (counter-clockwise). Only pixels move; values are unchanged.

    Examples
    --------
    >>> a = np.array([[1, 2], [3, 4]])
    >>> apply_transform(a, "flip_h").tolist(), apply_transform(a, "rot90").tolist()
    ([[2, 1], [4, 3]], [[2, 4], [1, 3]])
    """
    if name == "none":
        return array
    if name == "flip_h":
        out = np.flip(array, axis=1)
    elif name == "flip_v":
        out = np.flip(array, axis=0)
    elif name in ("rot90", "rot180", "rot270"):
        out = np.rot90(array, k={"rot90": 1, "rot180": 2, "rot270": 3}[name], axes=(0, 1))
    else:
        raise ConfigError(
            f"Unknown transform {name!r}; expected 'none' or one of {list(TRANSFORMS)}."
        )
    return np.ascontiguousarray(out)


def class_weights(labels: Sequence[int] | np.ndarray) -> dict[int, float]:
    """Inverse-frequency class weights ``n / (2 * count)``, as Keras ``class_weight`` wants.

    Examples
    --------
    >>> class_weights([1, 1, 1, 0])
    {0: 2.0, 1: 0.6666666666666666}
    """
    labels = np.asarray(labels).reshape(-1)
    idx0, idx1 = _class_indices(labels)
    n = labels.size
    return {0: n / (2 * idx0.size), 1: n / (2 * idx1.size)}
