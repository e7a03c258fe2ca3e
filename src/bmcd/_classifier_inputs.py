"""What a :class:`~bmcd.Classifier` takes in: inputs, labelled data and their description.

Private helpers of :mod:`bmcd.classifier` (which re-exports them), kept apart from the
estimator: ``X`` of any accepted form turned into items for preprocessing, labelled data
turned into a :class:`~bmcd.data.Dataset`, the checks on training data, the description
of a dataset recorded in ``bmcd.json`` and the reports, and prediction over files of which
some may not be readable (``bmcd predict``). See docs/architecture.rst.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .data import Dataset, iter_image_files, load_dataset, tta_views
from .errors import ConfigError, ConfigTypeError, DatasetError, ImageReadError
from .preprocessing import IMAGE_EXTENSIONS, preprocess_batch_with_info
from .synthetic import looks_synthetic

# images preprocessed (float32) at a time at prediction: bounds memory for large folders
_PREDICT_CHUNK = 256


def _chunk_size(batch_size: int) -> int:
    """Images preprocessed at a time for a ``batch_size`` hint."""
    return max(int(batch_size), _PREDICT_CHUNK)


def _as_dataset(data: Any, what: str):
    """A labelled :class:`~bmcd.data.Dataset` from a Dataset, folder, CSV or (paths, labels)."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (str, os.PathLike)) or (isinstance(data, tuple) and len(data) == 2):
        return load_dataset(data)
    raise DatasetError(
        f"{what} must be a Dataset, a dataset folder / CSV manifest, or a (paths, labels) "
        f"pair; received {type(data).__name__}."
    )


def _resolve_inputs(X: Any) -> tuple[list[Any], list[str] | None]:
    """Turn any accepted ``X`` into a list of items for ``preprocess`` (+ paths if known)."""
    if isinstance(X, Dataset):
        paths = X.absolute_paths()
        return paths, paths
    if isinstance(X, (str, os.PathLike)):
        p = Path(X)
        if p.is_dir():
            try:
                paths = load_dataset(p).absolute_paths()
            except DatasetError:
                paths = list(iter_image_files(p))  # an unlabelled folder of images
            if not paths:
                raise DatasetError(
                    f"No images found in '{p}' (looked for {', '.join(IMAGE_EXTENSIONS)})."
                )
            return paths, paths
        return [os.fspath(p)], [os.fspath(p)]
    if isinstance(X, (bytes, bytearray, memoryview)):
        return [X], None
    if isinstance(X, np.ndarray):
        if X.ndim == 2 or (X.ndim == 3 and X.shape[-1] in (1, 3, 4)):
            return [X], None  # one image, (H, W) or (H, W, C)
        if X.ndim == 4:
            return list(X), None  # a batch (n, H, W, C)
        raise ConfigError(
            f"Expected one image of shape (H, W, 3) or a batch (n, H, W, 3); received an "
            f"array of shape {X.shape}."
        )
    if isinstance(X, Sequence) or hasattr(X, "__iter__"):
        items = list(X)
        paths = [os.fspath(i) for i in items] if all(
            isinstance(i, (str, os.PathLike)) for i in items
        ) else None
        return items, paths
    raise ConfigTypeError(
        f"Cannot predict on {type(X).__name__}; pass image paths, a folder, a Dataset, one "
        f"RGB image array (H, W, 3) or a batch (n, H, W, 3)."
    )


def _predict_p_all(backend, config, X: Any, batch_size: int = 32, progress: bool | None = None,
                   no_cell: list[bool] | None = None, tta: bool = False) -> np.ndarray:
    """p(all) of every item of ``X`` from ``backend``, preprocessed with ``config``.

    Images are preprocessed :func:`_chunk_size` at a time, so memory stays bounded on
    large folders; with ``tta`` p(all) is the mean over the 8 flips/rotations
    (:func:`bmcd.data.tta_views`); ``no_cell``, when a list, receives each image's flag.
    """
    from tqdm.auto import tqdm

    items, _ = _resolve_inputs(X)
    out = np.empty(len(items), dtype=np.float64)
    chunk = _chunk_size(batch_size)
    with tqdm(total=len(items), desc="predict", unit="img",
              disable=True if len(items) <= chunk else progress) as bar:
        for start in range(0, len(items), chunk):
            x, infos = preprocess_batch_with_info(items[start : start + chunk], config)
            if tta:  # mean p(all) over the 8 flips/rotations (bmcd.data.tta_views)
                p = np.mean([backend.predict_batch(v) for v in tta_views(x)], axis=0)
            else:
                p = backend.predict_batch(x)
            out[start : start + len(x)] = p
            if no_cell is not None:
                no_cell.extend(info.no_cell for info in infos)
            bar.update(len(x))
    return out


def _training_data(train: Any, validation: Any) -> tuple[Dataset, Dataset | None, list[str]]:
    """``(train, validation or None, shared subjects)`` for :meth:`Classifier.fit`, checked.

    Raises when the training set is empty or lacks a class; an empty validation set counts
    as none; subjects with images on both sides are warned about (the warning points at
    the caller of ``fit``).
    """
    ds_train = _as_dataset(train, "train")
    ds_val = _as_dataset(validation, "validation") if validation is not None else None
    if len(ds_train) == 0:
        raise DatasetError("The training set is empty.")
    counts = ds_train.class_counts()
    if min(counts.values()) == 0:
        raise DatasetError(
            f"Training needs images of both classes; received {counts}. Check the "
            f"dataset folders (all/ and hem/) or the manifest's labels."
        )
    if ds_val is not None and len(ds_val) == 0:
        ds_val = None
    shared = []
    if ds_val is not None:
        shared = sorted(
            {s for s in ds_train.subjects if s is not None} & set(ds_val.subjects)
        )
        if shared:
            warnings.warn(
                f"{len(shared)} subject(s) have images in both train and validation "
                f"({', '.join(shared[:5])}{', ...' if len(shared) > 5 else ''}); "
                f"early stopping and validation scores will be optimistic. Split with "
                f"bmcd.data.split_by_subject.",
                UserWarning,
                stacklevel=3,
            )
    return ds_train, ds_val, shared


def _describe_dataset(ds) -> dict[str, Any]:
    info = {
        "n": len(ds),
        "counts": ds.class_counts(),
        "n_subjects": len(ds.subject_list()),
        "fingerprint": ds.fingerprint(),
        "root": os.fspath(ds.root) if ds.root is not None else None,
        "layout": ds.layout,
    }
    if looks_synthetic(ds.root):
        info["synthetic"] = True
    return info


def _describe_training_data(ds_train, ds_val, shared: list[str]) -> dict[str, Any]:
    """``training.data`` of ``bmcd.json``: both datasets and the subjects they share."""
    return {
        "train": _describe_dataset(ds_train),
        "validation": _describe_dataset(ds_val) if ds_val is not None else None,
        "shared_subjects_train_validation": shared,
    }


def predict_files(
    clf,
    files: list[str],
    batch_size: int = 32,
    tta: bool = False,
    on_error: Callable[[ImageReadError], None] | None = None,
) -> Iterator[tuple[str, float, str, bool]]:
    """``(path, p_all, label, no_cell)`` of every readable file, chunk by chunk.

    A chunk of :data:`_PREDICT_CHUNK` files is predicted at once; when one of its files
    cannot be read, the chunk is predicted again one file at a time, so the readable ones
    keep their rows and each unreadable one is passed to ``on_error`` (then skipped).
    Rows come in the order of ``files``, each chunk's as soon as it is done.
    """
    for start in range(0, len(files), _PREDICT_CHUNK):
        group = files[start : start + _PREDICT_CHUNK]
        try:
            rows = _predict_rows(clf, group, batch_size, tta)
        except ImageReadError:
            rows = []
            for f in group:  # find the unreadable ones, keep the rest
                try:
                    rows.extend(_predict_rows(clf, [f], 1, tta))
                except ImageReadError as exc:
                    if on_error is not None:
                        on_error(exc)
        yield from rows


def _predict_rows(
    clf, files: list[str], batch_size: int, tta: bool = False
) -> list[tuple[str, float, str, bool]]:
    d = clf.predict_details(files, batch_size=batch_size, tta=tta)
    return list(zip(files, d["p_all"].tolist(), d["label"].tolist(), d["no_cell"].tolist(),
                    strict=True))
