"""Images for the exporters' checks: parity samples, int8 calibration and gate sets.

Whatever the caller gives (nothing, a Dataset, a folder, a manifest, a list of images or a
preprocessed array) becomes preprocessed network input plus labels when they are known;
folders are resolved with :func:`bmcd.data.resolve_image_paths` like every other input
(see docs/architecture.rst).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Dataset, load_dataset, resolve_image_paths
from ..errors import ConfigError, ConfigTypeError, DatasetError
from ..preprocessing import PreprocessConfig, preprocess_batch
from ..synthetic import make_cells


@dataclass
class _Samples:
    x: np.ndarray  # (n, S, S, 3) float32, preprocessed
    labels: np.ndarray | None  # (n,) 0 = hem, 1 = all, or None when unknown
    source: str  # human-readable provenance, recorded in bmcd.json


def _subset_indices(n: int, limit: int | None) -> np.ndarray:
    """Evenly spaced, deterministic indices (keeps the class mix of sorted datasets)."""
    if limit is None or n <= limit:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, int(limit)).round().astype(np.int64))


def _synthetic_samples(
    config: PreprocessConfig, n: int, seed: int, purpose: str
) -> _Samples:
    n = max(2, int(n))
    per_class = math.ceil(n / 2)
    subjects = 2 * min(4, per_class)
    # Drawn at about twice the network input (C-NMC's 450 px at 224): preprocessing crops
    # and resizes anyway, and drawing small cells is much faster for small models.
    side = min(450, max(128, 2 * config.image_size))
    with tempfile.TemporaryDirectory(prefix="bmcd-export-cells-") as tmp:
        make_cells(tmp, n_per_class=per_class, n_subjects=subjects, image_size=side, seed=seed,
                   progress=False)
        ds = load_dataset(tmp)
        idx = _subset_indices(len(ds), n)
        ds = ds.subset(idx)
        x = preprocess_batch(ds.absolute_paths(), config)
    return _Samples(
        x,
        ds.labels.copy(),
        f"synthetic: {len(ds)} cells from bmcd.synthetic.make_cells(seed={seed}, "
        f"image_size={side}), made for {purpose}",
    )


def _resolve_samples(
    samples: Any,
    config: PreprocessConfig,
    *,
    default_n: int,
    limit: int | None,
    seed: int,
    purpose: str,
) -> _Samples:
    """Turn what the caller gave into preprocessed network input.

    ``samples`` may be None (synthetic cells), a :class:`bmcd.data.Dataset` (labels
    known), a dataset folder or CSV manifest (resolved with
    :func:`bmcd.data.resolve_image_paths`: a folder without a recognised layout gives all
    its image files, labels unknown), a sequence of image paths / encoded bytes / arrays, or
    a preprocessed float array of shape (n, S, S, 3).
    """
    S = config.image_size
    if samples is None:
        return _synthetic_samples(config, default_n if limit is None else limit, seed, purpose)

    if isinstance(samples, np.ndarray):
        if samples.ndim != 4 or samples.shape[1:] != (S, S, 3):
            raise ConfigError(
                f"An array of samples must be preprocessed network input of shape (n, {S}, "
                f"{S}, 3); received shape {samples.shape}. Pass image paths instead, or run "
                f"bmcd.preprocessing.preprocess_batch with the model's config first."
            )
        idx = _subset_indices(len(samples), limit)
        x = np.ascontiguousarray(samples[idx], dtype=np.float32)
        return _Samples(x, None, f"array: {len(x)} preprocessed images")

    if isinstance(samples, Dataset):
        if len(samples) == 0:
            raise DatasetError(f"The samples dataset ({samples.root or 'Dataset'}) is empty.")
        paths, labels = resolve_image_paths(samples)
        where = f"dataset: {{}} images from {samples.root or 'Dataset'}"
    elif isinstance(samples, tuple) and len(samples) == 2:
        paths, labels = resolve_image_paths(load_dataset(samples))
        where = "dataset: {} images from (paths, labels)"
    elif isinstance(samples, (str, os.PathLike)):
        path = Path(samples)
        if not path.exists():
            raise DatasetError(f"Samples path '{path}' does not exist.")
        if path.is_file() and path.suffix.lower() not in (".csv", ".tsv", ".txt"):
            return _paths_samples([path], config, limit, f"file {path}")
        paths, labels = resolve_image_paths(path)
        where = (f"dataset: {{}} images from {path}" if labels is not None
                 else f"folder {path} (labels unknown): {{}} images")
    elif isinstance(samples, Sequence) and not isinstance(samples, (str, bytes)):
        return _paths_samples(list(samples), config, limit, "given images (labels unknown)")
    else:
        raise ConfigTypeError(
            f"samples must be None, a bmcd Dataset, a folder or CSV path, a list of images or "
            f"a preprocessed array; received {type(samples).__name__}."
        )
    idx = _subset_indices(len(paths), limit)
    chosen = [paths[i] for i in idx]
    x = preprocess_batch(chosen, config)
    return _Samples(x, None if labels is None else labels[idx], where.format(len(chosen)))


def _paths_samples(items: list, config: PreprocessConfig, limit: int | None, what: str) -> _Samples:
    if not items:
        raise DatasetError("The samples list is empty; pass at least one image.")
    idx = _subset_indices(len(items), limit)
    chosen = [items[i] for i in idx]
    x = preprocess_batch(chosen, config)
    return _Samples(x, None, f"{what}: {len(chosen)} images")
