"""The training input pipeline: a uint8 preprocessing cache and a Keras ``PyDataset``.

:func:`cache_images` runs the shared preprocessing (:mod:`bmcd.preprocessing`) once per
image into a uint8 array (in memory or memory-mapped); :func:`sequence_class` returns
``CellSequence``, which serves shuffled, balanced, randomly flipped / rotated float32
batches from it. Flips and rotations are :func:`bmcd.data.apply_transform`, the one
geometric transform of bmcd (see docs/architecture.rst).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__ as _bmcd_version
from ..data import apply_transform
from ..preprocessing import PreprocessConfig, preprocess_batch
from ..runtimes.keras import keras_module

__all__ = ["DIHEDRAL", "cache_images", "sequence_class"]


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


#: The 8 flips / 90-degree rotations of a square image, as :func:`bmcd.data.apply_transform`
#: steps: k = 0..3 rotates k quarter turns, k = 4..7 rotates k - 4 quarter turns and then
#: mirrors left-right.
DIHEDRAL: tuple[tuple[str, ...], ...] = (
    ("none",), ("rot90",), ("rot180",), ("rot270",),
    ("flip_h",), ("rot90", "flip_h"), ("rot180", "flip_h"), ("rot270", "flip_h"),
)


def _dihedral(img: np.ndarray, k: int) -> np.ndarray:
    """The k-th (0..7) element of :data:`DIHEDRAL` applied to an (H, W, C) image."""
    for name in DIHEDRAL[k]:
        img = apply_transform(img, name)
    return img

_SEQUENCE_CLASS: Any = None


def sequence_class():
    """``CellSequence``, a ``keras.utils.PyDataset`` over the uint8 cache (built lazily)."""
    global _SEQUENCE_CLASS
    if _SEQUENCE_CLASS is not None:
        return _SEQUENCE_CLASS
    keras = keras_module()

    class CellSequence(keras.utils.PyDataset):
        """Batches of (float32 images, float32 labels) from a uint8 image cache.

        ``indices``/``transforms`` list the epoch's items (an index may repeat, e.g. the
        augmented minority copies of :func:`bmcd.data.balance_augment`, each with a fixed
        transform). With ``shuffle`` the order is redrawn every epoch from ``seed``; with
        ``augment`` every item also gets a random flip / 90-degree rotation (and, when set,
        a per-channel gain from ``color_jitter`` and pixel noise of up to +-``noise`` gray
        levels), drawn from a generator seeded by (seed, epoch, batch), so runs are
        reproducible.
        """

        def __init__(self, images, labels, batch_size, *, indices=None, transforms=None,
                     shuffle=False, augment=False, seed=0, color_jitter=0.0, noise=0.0,
                     **kwargs):
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
            self.color_jitter = float(color_jitter) if augment else 0.0
            self.noise = float(noise) if augment else 0.0
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
            ks = rng.integers(0, len(DIHEDRAL), size=len(idx)) if self.augment else None
            x = np.empty(raw.shape, dtype=np.float32)
            for j, s in enumerate(sel):
                img = raw[j]
                t = self.transforms[s]
                if t != "none":
                    img = apply_transform(img, t)
                if ks is not None:
                    img = _dihedral(img, int(ks[j]))
                x[j] = img
            if self.color_jitter > 0:
                cj = self.color_jitter
                x *= rng.uniform(1.0 - cj, 1.0 + cj, size=(len(idx), 1, 1, 3)).astype(np.float32)
            if self.noise > 0:
                x += rng.uniform(-self.noise, self.noise, size=x.shape).astype(np.float32)
            if self.color_jitter > 0 or self.noise > 0:
                np.clip(x, 0.0, 255.0, out=x)
            return x, self.labels[idx]

        def on_epoch_end(self):
            self.epoch += 1
            self._order = self._draw_order()

    _SEQUENCE_CLASS = CellSequence
    return CellSequence


