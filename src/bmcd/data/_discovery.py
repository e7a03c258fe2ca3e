"""Dataset discovery: class folders, Kaggle folds, split folders, CSV manifests."""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from ..preprocessing import IMAGE_EXTENSIONS
from ._dataset import Dataset
from ._files import _scan_images, is_image_file
from ._names import (
    _LABEL_WORDS,
    _PRELIM_IMAGE_DIR,
    _SPLIT_FOLDERS,
    _listing,
    parse_label,
    parse_subject,
)


def _subdirs(folder: str) -> list[os.DirEntry]:
    return sorted(
        (e for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")),
        key=lambda e: e.name,
    )


def _class_dirs(folder: str) -> dict[int, str]:
    """``{label: path}`` of the ``all``/``hem`` subfolders (case-insensitive)."""
    out: dict[int, str] = {}
    for entry in _subdirs(folder):
        key = entry.name.lower()
        if key in ("all", "hem"):
            out[_LABEL_WORDS[key]] = entry.path
    return out


def _load_class_folders(folder: str, what: str) -> tuple[list[str], list[int]]:
    """Images of ``folder/{all,hem}/``; raises on unknown image-holding folders or no images."""
    classes = _class_dirs(folder)
    others = [e for e in _subdirs(folder) if e.name.lower() not in ("all", "hem")]
    unknown = [e.name for e in others if _scan_images(e.path)]
    if unknown:
        raise DatasetError(
            f"Unknown class folder(s) {unknown} in {what} '{folder}'; expected only 'all' "
            f"(leukemic) and 'hem' (normal). Rename or move them."
        )
    if not classes:
        raise DatasetError(
            f"No 'all' or 'hem' class folder in {what} '{folder}'; expected "
            f"'{folder}/all/' and '{folder}/hem/' holding images."
        )
    paths: list[str] = []
    labels: list[int] = []
    for label in (0, 1):
        if label in classes:
            files = _scan_images(classes[label])
            paths.extend(files)
            labels.extend([label] * len(files))
    if not paths:
        raise DatasetError(
            f"The class folders of {what} '{folder}' hold no images (looked for "
            f"{', '.join(IMAGE_EXTENSIONS)})."
        )
    return paths, labels


def _from_files(paths, labels, root, layout, given_split=None) -> Dataset:
    return Dataset(
        paths=paths,
        labels=np.asarray(labels, dtype=np.int64),
        subjects=[parse_subject(p) for p in paths],
        root=Path(root),
        layout=layout,
        given_split=given_split,
    )


def _find_kaggle_root(folder: str) -> str | None:
    """The folder that holds ``fold_*`` folders, if ``folder`` is (or contains) one."""
    candidates = [
        folder,
        os.path.join(folder, "training_data"),
        os.path.join(folder, "C-NMC_Leukemia", "training_data"),
    ]
    for cand in candidates:
        if os.path.isdir(cand) and any(
            e.name.lower().startswith("fold_") for e in _subdirs(cand)
        ):
            return cand
    return None


def _load_kaggle(folder: str) -> Dataset:
    folds = [e for e in _subdirs(folder) if e.name.lower().startswith("fold_")]
    paths: list[str] = []
    labels: list[int] = []
    for fold in folds:
        p, lab = _load_class_folders(fold.path, "fold folder")
        paths.extend(p)
        labels.extend(lab)
    return _from_files(paths, labels, folder, "kaggle_folds")


def _load_split_folders(folder: str) -> Dataset:
    paths: list[str] = []
    labels: list[int] = []
    given: list[str] = []
    for entry in _subdirs(folder):
        name = _SPLIT_FOLDERS.get(entry.name.lower())
        if name is None:
            continue
        p, lab = _load_class_folders(entry.path, "split folder")
        paths.extend(p)
        labels.extend(lab)
        given.extend([name] * len(p))
    return _from_files(paths, labels, folder, "split_folders", given)


def manifest_error(csv_path: str, line: int, exc: Exception) -> DatasetError:
    """The one message for a CSV manifest that cannot be read as UTF-8 CSV text."""
    if isinstance(exc, UnicodeDecodeError):
        why = (f"it is not UTF-8 text (found byte 0x{exc.object[exc.start]:02x}); save it "
               f"as UTF-8 (e.g. 'CSV UTF-8' in a spreadsheet)")
    elif isinstance(exc, OSError):
        why = f"{exc.strerror or exc}; check that it exists and is readable"
    else:
        why = f"line {line} is not valid CSV ({exc}); fix or remove that line"
    return DatasetError(f"Cannot read the CSV manifest '{csv_path}': {why}.")


def _find_column(header: list[str], names: Iterable[str]) -> str | None:
    lower = {h.strip().lower(): h for h in header}
    for name in names:
        if name in lower:
            return lower[name]
    return None


def _load_manifest(csv_path: str) -> Dataset:
    csv_path = os.path.abspath(csv_path)
    base = os.path.dirname(csv_path)
    reader = None
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            sample = fh.read(4096)
            fh.seek(0)
            delimiter = "\t" if sample.count("\t") > sample.count(",") else ","
            reader = csv.DictReader(fh, delimiter=delimiter)
            header = list(reader.fieldnames or [])
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        line = max(1, reader.line_num) if reader is not None else 1
        raise manifest_error(csv_path, line, exc) from None

    prelim = {"patient_id", "new_names", "labels"} <= {h.strip().lower() for h in header}
    if prelim:
        path_col = _find_column(header, ["new_names"])
        label_col = _find_column(header, ["labels"])
        subject_col = _find_column(header, ["patient_id"])
        image_dir = os.path.join(base, _PRELIM_IMAGE_DIR)
        if os.path.isdir(image_dir):
            base = image_dir
        layout = "cnmc_prelim_manifest"
    else:
        path_col = _find_column(header, ["path", "file", "filename", "file_name", "image",
                                         "image_path", "new_names"])
        label_col = _find_column(header, ["label", "labels", "class", "target", "y"])
        subject_col = _find_column(header, ["subject", "patient", "patient_id", "subject_id"])
        layout = "manifest"
    if path_col is None or label_col is None:
        raise DatasetError(
            f"Manifest '{csv_path}' has columns {header}; expected a path column ('path') "
            f"and a label column ('label' with all/hem or 1/0), optionally 'subject'; or "
            f"the C-NMC test label format 'Patient_ID,new_names,labels'."
        )
    if not rows:
        raise DatasetError(f"Manifest '{csv_path}' has a header but no rows.")

    paths: list[str] = []
    labels: list[int] = []
    subjects: list[str | None] = []
    bad_labels: list[tuple[int, str]] = []
    missing: list[str] = []
    for lineno, row in enumerate(rows, start=2):
        rel = (row.get(path_col) or "").strip()
        raw_label = (row.get(label_col) or "").strip()
        try:
            labels.append(parse_label(raw_label))
        except ValueError:
            bad_labels.append((lineno, raw_label))
            labels.append(0)
        full = rel if os.path.isabs(rel) else os.path.join(base, rel)
        if not rel or not os.path.isfile(full):
            missing.append(rel or f"<empty path on line {lineno}>")
        paths.append(os.path.normpath(full))
        if subject_col is not None:
            value = (row.get(subject_col) or "").strip()
            subject = parse_subject(value) if value.upper().startswith("UID_") else value
            if subject and re.fullmatch(r"[hH]\d+", subject):
                subject = subject.upper()
            subjects.append(subject or None)
        else:
            subjects.append(parse_subject(rel))
    if bad_labels:
        values = sorted({v for _, v in bad_labels})
        where = _listing([f"line {n}" for n, _ in bad_labels])
        raise DatasetError(
            f"Manifest '{csv_path}': {len(bad_labels)} row(s) with unknown labels {values} "
            f"({where}); expected 'all'/'hem' or 1/0 in column '{label_col}'."
        )
    if missing:
        raise DatasetError(
            f"Manifest '{csv_path}': {len(missing)} of {len(rows)} listed file(s) not found "
            f"under '{base}': {_listing(missing)}. Paths are read relative to the manifest's "
            f"folder" + (f" (or its '{_PRELIM_IMAGE_DIR}/' subfolder)" if prelim else "")
            + "."
        )
    return Dataset(
        paths=paths,
        labels=np.asarray(labels, dtype=np.int64),
        subjects=subjects,
        root=Path(base),
        layout=layout,
    )


def load_dataset(source: str | os.PathLike | Dataset | tuple) -> Dataset:
    """Find the images and labels in a folder or manifest.

    Parameters
    ----------
    source : path, Dataset or (paths, labels)
        A dataset folder in one of the layouts listed in the module docstring, a CSV
        manifest, a :class:`Dataset` (returned as is) or a ``(paths, labels)`` pair.

    Returns
    -------
    Dataset
        Paths are absolute and sorted; ``root`` is the folder the layout was found in
        (for the Kaggle layout, the folder holding ``fold_*``).

    Raises
    ------
    DatasetError
        Nothing usable was found; the message says what was found and what was expected.

    Examples
    --------
    >>> from bmcd.data import load_dataset
    >>> ds = load_dataset("C-NMC_Leukemia")          # doctest: +SKIP
    >>> print(ds.summary())                          # doctest: +SKIP
    """
    if isinstance(source, Dataset):
        return source
    if isinstance(source, tuple) and len(source) == 2:
        return Dataset.from_arrays(source[0], source[1])
    if not isinstance(source, (str, os.PathLike)):
        raise DatasetError(
            f"load_dataset expects a folder, a CSV manifest, a Dataset or (paths, labels); "
            f"received {type(source).__name__}."
        )
    path = os.path.abspath(os.fspath(source))
    if os.path.isfile(path):
        if path.lower().endswith((".csv", ".tsv", ".txt")):
            return _load_manifest(path)
        raise DatasetError(
            f"'{path}' is a file but not a CSV manifest; expected a dataset folder or a .csv "
            f"with path and label columns."
        )
    if not os.path.exists(path):
        raise DatasetError(f"Dataset path not found: '{path}'.")

    subdirs = _subdirs(path)
    names = {e.name.lower() for e in subdirs}
    if names & set(_SPLIT_FOLDERS):
        return _load_split_folders(path)
    if names & {"all", "hem"}:
        paths, labels = _load_class_folders(path, "dataset folder")
        return _from_files(paths, labels, path, "class_folders")
    kaggle = _find_kaggle_root(path)
    if kaggle is not None:
        return _load_kaggle(kaggle)
    manifests = sorted(
        e.path for e in os.scandir(path) if e.is_file() and e.name.lower().endswith(".csv")
    )
    if len(manifests) == 1:
        return _load_manifest(manifests[0])

    found = [e.name for e in subdirs]
    n_images = sum(1 for e in os.scandir(path) if e.is_file() and is_image_file(e.name))
    what = (
        f"subfolders {_listing(found)}" if found else "no subfolders"
    ) + (f" and {n_images} loose image(s)" if n_images else "")
    if len(manifests) > 1:
        what += f" and several CSV files ({_listing([os.path.basename(m) for m in manifests])})"
    raise DatasetError(
        f"No dataset layout recognised in '{path}': found {what}. Expected class folders "
        f"'all/' and 'hem/', the Kaggle 'C-NMC_Leukemia/training_data/fold_*/{{all,hem}}/', "
        f"split folders 'training_set/', 'validation_set/', 'test_set/' (each with all/ and "
        f"hem/), or a CSV manifest with path and label columns (pass the .csv file)."
    )



def resolve_image_paths(
    source: str | os.PathLike | Dataset,
) -> tuple[list[str], np.ndarray | None]:
    """The image files (and labels, when known) that a dataset, folder or manifest stands for.

    The one place where "a folder of images" is turned into files, for every input that
    may be either a labelled dataset or just a folder of images (model inputs, export and
    calibration samples).

    Parameters
    ----------
    source : path or Dataset
        A :class:`Dataset` (returned as its absolute paths and labels); a dataset folder or
        CSV manifest in a layout :func:`load_dataset` recognises (its paths and labels); or
        any other folder, whose image files are all taken (recursively, with
        :func:`iter_image_files`, so hidden files are skipped), sorted, without labels.

    Returns
    -------
    paths : list of str
        Absolute image paths.
    labels : ndarray of int64 or None
        1 = ``"all"``, 0 = ``"hem"`` per path, or None for a plain folder of images.

    Raises
    ------
    DatasetError
        The path does not exist, is a file that is not a CSV manifest, or a folder / manifest
        with no images in it.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ("b.png", "sub/a.bmp", ".hidden.bmp"):
    ...     (d / name).parent.mkdir(exist_ok=True)
    ...     _ = (d / name).write_bytes(b"")
    >>> paths, labels = resolve_image_paths(d)
    >>> [pathlib.Path(p).name for p in paths], labels
    (['b.png', 'a.bmp'], None)
    """
    if isinstance(source, Dataset):
        return source.absolute_paths(), np.asarray(source.labels, dtype=np.int64)
    try:
        ds = load_dataset(source)
    except DatasetError:
        if not os.path.isdir(os.fspath(source)):
            raise
        paths = _scan_images(os.path.abspath(os.fspath(source)))
        labels = None
    else:
        paths, labels = ds.absolute_paths(), np.asarray(ds.labels, dtype=np.int64)
    if not paths:
        raise DatasetError(
            f"No images found in '{source}' (looked for "
            f"{', '.join(IMAGE_EXTENSIONS)}; hidden files are skipped)."
        )
    return paths, labels
