"""Datasets of single-cell images: discovery, subject ids, splits and balancing.

A :class:`Dataset` is a list of image files with a label each (1 = ``"all"``, the
leukemic class; 0 = ``"hem"``, normal) and the subject (patient) each image came from.
:func:`load_dataset` recognises the usual ways C-NMC 2019 is laid out on disk:

(a) class folders ``ROOT/{all,hem}/`` (searched recursively);
(b) the Kaggle copy ``ROOT/C-NMC_Leukemia/training_data/fold_{0,1,2}/{all,hem}/``, or any
    folder holding ``fold_*`` folders;
(c) pre-split folders ``ROOT/{training_set,validation_set,test_set}/{all,hem}/``
    (the split is kept in :attr:`Dataset.given_split`, see :func:`split_given`);
(d) a CSV manifest with path and label columns, including the official C-NMC
    preliminary-test label file ``Patient_ID,new_names,labels``.

Images of one subject are strongly correlated (same slide, same stain), so the honest
split is by subject (:func:`split_by_subject`); :func:`split_random` is kept only to
show how much an image-level split flatters a model.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .artifact import CLASSES
from .errors import ConfigError, DatasetError
from .preprocessing import IMAGE_EXTENSIONS

__all__ = [
    "CLASSES",
    "TRANSFORMS",
    "LAYOUTS",
    "Dataset",
    "Split",
    "parse_subject",
    "parse_label",
    "load_dataset",
    "split_by_subject",
    "split_random",
    "split_given",
    "balance_augment",
    "apply_transform",
    "class_weights",
    "is_image_file",
    "iter_image_files",
    "resolve_image_paths",
]

#: Geometric transforms used to oversample the minority class (originals get "none").
TRANSFORMS = ("flip_h", "flip_v", "rot90", "rot180", "rot270")

#: Layout names that :func:`load_dataset` reports in :attr:`Dataset.layout`.
LAYOUTS = ("class_folders", "kaggle_folds", "split_folders", "manifest", "cnmc_prelim_manifest",
           "arrays")

_SPLIT_FOLDERS = {"training_set": "train", "validation_set": "val", "test_set": "test"}
_SPLIT_NAMES = ("train", "val", "test")
_PRELIM_IMAGE_DIR = "C-NMC_test_prelim_phase_data"
_MAX_LISTED = 5

_SUBJECT_RE = re.compile(r"^UID_([A-Za-z]?)(\d+)(?:_|\.|$)", re.IGNORECASE)
_LABEL_WORDS = {"all": 1, "hem": 0, "1": 1, "0": 0, "1.0": 1, "0.0": 0}


# ----------------------------------------------------------------------------------------
# names
# ----------------------------------------------------------------------------------------


def parse_subject(name: str | os.PathLike) -> str | None:
    """The subject (patient) id in a C-NMC file name, or None.

    C-NMC names are ``UID_<subject>_<image>_<cell>_<all|hem>.bmp``. Healthy subjects
    carry an ``H`` (one real name uses a lowercase ``h``; it is normalised to ``H``).

    Parameters
    ----------
    name : str or path-like
        A bare file name or a path (only the last component is used).

    Examples
    --------
    >>> parse_subject("UID_11_10_1_all.bmp")
    '11'
    >>> parse_subject("data/hem/UID_h3_1_1_hem.bmp")
    'H3'
    >>> parse_subject("1.bmp") is None
    True
    """
    base = os.path.basename(os.fspath(name))
    m = _SUBJECT_RE.match(base)
    if m is None:
        return None
    return m.group(1).upper() + m.group(2)


def parse_label(value: Any) -> int:
    """Map a label (``"all"``/``"hem"``, 1/0, any case) to 1/0; ``DatasetError`` otherwise."""
    if isinstance(value, (bool, np.bool_)):
        raise DatasetError(f"unknown label {value!r}; expected 'all'/'hem' or 1/0")
    if isinstance(value, (int, np.integer)) and int(value) in (0, 1):
        return int(value)
    key = str(value).strip().lower()
    if key in _LABEL_WORDS:
        return _LABEL_WORDS[key]
    raise DatasetError(f"unknown label {value!r}; expected 'all'/'hem' or 1/0")


def _subject_sort_key(subject: str | None) -> tuple:
    if subject is None:
        return (2, "", 0)
    m = re.fullmatch(r"([A-Za-z]*)(\d+)", subject)
    if m:
        return (0 if not m.group(1) else 1, m.group(1), int(m.group(2)))
    return (1, subject, 0)


def _listing(items: Sequence[Any], limit: int = _MAX_LISTED) -> str:
    shown = ", ".join(str(x) for x in list(items)[:limit])
    more = len(items) - limit
    return shown + (f", ... ({more} more)" if more > 0 else "")


# ----------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------


@dataclass(eq=False)
class Dataset:
    """Image files with labels and subject ids.

    Parameters
    ----------
    paths : list of str
        Image files, absolute or relative to ``root``.
    labels : ndarray of int64
        1 = ``"all"`` (leukemic), 0 = ``"hem"`` (normal).
    subjects : list of str or None
        The subject of each image (``None`` when unknown).
    root : Path or None
        The dataset folder; paths are reported relative to it (and relative paths are
        resolved against it).
    layout : str
        How the data were found (one of :data:`LAYOUTS`).
    given_split : list of str or None
        ``"train"``/``"val"``/``"test"`` per image for pre-split layouts.

    Examples
    --------
    >>> from bmcd.data import Dataset
    >>> ds = Dataset.from_arrays(["a/UID_1_1_1_all.bmp", "a/UID_H2_1_1_hem.bmp"], ["all", "hem"])
    >>> len(ds), ds.class_counts(), ds.subjects
    (2, {'hem': 1, 'all': 1}, ['1', 'H2'])
    >>> ds.subset([1]).labels.tolist()
    [0]
    """

    paths: list[str]
    labels: np.ndarray
    subjects: list[str | None]
    root: Path | None = None
    layout: str = "arrays"
    given_split: list[str] | None = None
    _fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.paths = [os.fspath(p) for p in self.paths]
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.subjects = list(self.subjects)
        if self.root is not None:
            self.root = Path(self.root)
        n = len(self.paths)
        if len(self.labels) != n or len(self.subjects) != n:
            raise DatasetError(
                f"Dataset needs one label and one subject per path; received {n} paths, "
                f"{len(self.labels)} labels and {len(self.subjects)} subjects."
            )
        if self.given_split is not None:
            self.given_split = list(self.given_split)
            if len(self.given_split) != n:
                raise DatasetError(
                    f"given_split has {len(self.given_split)} entries for {n} paths."
                )
        if n and not np.isin(self.labels, (0, 1)).all():
            bad = sorted(set(self.labels.tolist()) - {0, 1})
            raise DatasetError(
                f"Labels must be 0 ('hem') or 1 ('all'); received {bad}."
            )

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_arrays(
        cls,
        paths: Sequence[str | os.PathLike],
        labels: Sequence[Any] | np.ndarray,
        subjects: Sequence[str | None] | None = None,
        root: str | os.PathLike | None = None,
    ) -> Dataset:
        """Build a dataset from paths and labels (``"all"``/``"hem"`` or 1/0).

        Subjects are parsed from the file names (:func:`parse_subject`) when not given.
        """
        paths = [os.fspath(p) for p in paths]
        labels = list(labels) if not isinstance(labels, np.ndarray) else labels.tolist()
        if len(labels) != len(paths):
            raise DatasetError(
                f"from_arrays needs one label per path; received {len(paths)} paths and "
                f"{len(labels)} labels."
            )
        parsed = []
        for i, value in enumerate(labels):
            try:
                parsed.append(parse_label(value))
            except ValueError:
                raise DatasetError(
                    f"Unknown label {value!r} for {paths[i]!r}; expected 'all'/'hem' or 1/0."
                ) from None
        if subjects is None:
            subjects = [parse_subject(p) for p in paths]
        return cls(
            paths=paths,
            labels=np.asarray(parsed, dtype=np.int64),
            subjects=list(subjects),
            root=Path(root) if root is not None else None,
            layout="arrays",
        )

    # -- basic protocol -----------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def classes(self) -> list[str]:
        """Class names in label order: ``["hem", "all"]``."""
        return list(CLASSES)

    def absolute_paths(self) -> list[str]:
        """Paths usable from any working directory (relative ones joined to ``root``)."""
        if self.root is None:
            return list(self.paths)
        root = os.fspath(self.root)
        return [p if os.path.isabs(p) else os.path.join(root, p) for p in self.paths]

    def relative_paths(self) -> list[str]:
        """Paths relative to ``root`` with ``/`` separators (as used by :meth:`fingerprint`).

        Without a root, paths are taken relative to their common folder.
        """
        if not self.paths:
            return []
        if self.root is not None:
            base = os.path.abspath(os.fspath(self.root))
        else:
            absolute = [os.path.abspath(p) for p in self.paths]
            base = os.path.commonpath([os.path.dirname(p) for p in absolute])
        prefix = base.rstrip(os.sep) + os.sep
        out = []
        for p in self.paths:
            full = p if os.path.isabs(p) else (
                os.path.join(base, p) if self.root is not None else os.path.abspath(p)
            )
            full = os.path.normpath(full)
            rel = full[len(prefix):] if full.startswith(prefix) else os.path.relpath(full, base)
            out.append(rel.replace(os.sep, "/"))
        return out

    def subset(self, indices: Sequence[int] | np.ndarray) -> Dataset:
        """A new dataset with the selected items (integer indices or a boolean mask)."""
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise DatasetError(
                    f"A boolean mask must have length {len(self)}; received shape {idx.shape}."
                )
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        return Dataset(
            paths=[self.paths[i] for i in idx],
            labels=self.labels[idx].copy(),
            subjects=[self.subjects[i] for i in idx],
            root=self.root,
            layout=self.layout,
            given_split=None if self.given_split is None else [self.given_split[i] for i in idx],
        )

    # -- statistics ---------------------------------------------------------------------

    def class_counts(self) -> dict[str, int]:
        """``{"hem": n, "all": n}``."""
        n_all = int(self.labels.sum())
        return {"hem": len(self) - n_all, "all": n_all}

    def subject_counts(self) -> dict[str | None, dict[str, int]]:
        """``{subject: {"hem": n, "all": n}}``, subjects in natural order (1, 2, ..., H1, ...)."""
        counts: dict[str | None, dict[str, int]] = {}
        for subject, label in zip(self.subjects, self.labels.tolist(), strict=False):
            entry = counts.setdefault(subject, {"hem": 0, "all": 0})
            entry[CLASSES[label]] += 1
        return {k: counts[k] for k in sorted(counts, key=_subject_sort_key)}

    def subject_list(self) -> list[str]:
        """The distinct known subjects, in natural order."""
        return sorted({s for s in self.subjects if s is not None}, key=_subject_sort_key)

    def fingerprint(self) -> str:
        """SHA-256 (hex) of the sorted relative paths and labels.

        Stable across machines and across the folder level the data were loaded from,
        so it identifies the data a model was trained on.
        """
        if self._fingerprint is None:
            lines = sorted(
                f"{rel}\t{label}" for rel, label in zip(self.relative_paths(), self.labels.tolist(), strict=False)
            )
            self._fingerprint = hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()
        return self._fingerprint

    def summary(self, per_subject: bool = False) -> str:
        """A short human-readable description (optionally with a per-subject table)."""
        cc = self.class_counts()
        subjects = self.subject_list()
        unknown = sum(s is None for s in self.subjects)
        lines = [
            f"layout:      {self.layout}",
            f"root:        {self.root if self.root is not None else '-'}",
            f"images:      {len(self)} (all: {cc['all']}, hem: {cc['hem']})",
            f"subjects:    {len(subjects)}" + (f" (+{unknown} images with no subject)"
                                                if unknown else ""),
        ]
        if self.given_split is not None:
            parts = ", ".join(
                f"{name}: {self.given_split.count(name)}" for name in _SPLIT_NAMES
            )
            lines.append(f"given split: {parts}")
        lines.append(f"fingerprint: {self.fingerprint()}")
        if per_subject:
            lines.append("")
            lines.append(self.subject_table())
        return "\n".join(lines)

    def subject_table(self, columns: int = 4) -> str:
        """Per-subject counts as a compact table (several subjects per row)."""
        entries = []
        for subject, c in self.subject_counts().items():
            name = subject if subject is not None else "?"
            if c["all"] and c["hem"]:
                text = f"{c['all']} all + {c['hem']} hem"
            elif c["all"]:
                text = f"{c['all']} all"
            else:
                text = f"{c['hem']} hem"
            entries.append((name, text))
        if not entries:
            return "(no images)"
        wn = max(len(n) for n, _ in entries)
        wt = max(len(t) for _, t in entries)
        cells = [f"{n:>{wn}} {t:<{wt}}  " for n, t in entries]
        rows = [" ".join(cells[i : i + columns]).rstrip() for i in range(0, len(cells), columns)]
        return "subject counts:\n" + "\n".join(rows)


# ----------------------------------------------------------------------------------------
# discovery
# ----------------------------------------------------------------------------------------


def is_image_file(name: str) -> bool:
    """True for a visible file name with one of :data:`~bmcd.preprocessing.IMAGE_EXTENSIONS`."""
    name = os.path.basename(name)
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def iter_image_files(folder: str | os.PathLike) -> Iterator[str]:
    """Image files under ``folder``, recursively, streamed: the one folder walker of bmcd.

    Hidden files and folders (names starting with ``.``) are skipped. Within a folder, the
    image files come first in name order, then each subfolder in name order (depth first),
    so the order is stable across runs and machines. Symbolic links to folders are followed
    once: a link that leads back to a folder already being walked is skipped with a warning
    instead of looping.

    Raises
    ------
    DatasetError
        ``folder`` (or a folder below it) cannot be listed.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ("b.png", "a.bmp", ".hidden.bmp", "notes.txt"):
    ...     _ = (d / name).write_bytes(b"")
    >>> [pathlib.Path(p).name for p in iter_image_files(d)]
    ['a.bmp', 'b.png']
    """
    yield from _walk(os.fspath(folder), ancestors=())


def _walk(folder: str, ancestors: tuple[tuple[int, int], ...]) -> Iterator[str]:
    try:
        st = os.stat(folder)
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise DatasetError(
            f"Cannot list folder '{folder}': {exc.strerror or exc}. Check that it exists and "
            f"is readable."
        ) from exc
    here = (st.st_dev, st.st_ino)
    if here in ancestors:
        warnings.warn(
            f"Skipping '{folder}': a symbolic link loop (it leads back to a folder above it).",
            stacklevel=3,
        )
        return
    subdirs = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            is_dir = entry.is_dir()
        except OSError:  # e.g. ELOOP on a self-referencing link
            is_dir = False
        if is_dir:
            subdirs.append(entry.path)
        elif is_image_file(entry.name):
            yield entry.path
    for sub in subdirs:
        yield from _walk(sub, ancestors + (here,))


def _scan_images(folder: str) -> list[str]:
    """Image files under ``folder`` (recursive, hidden entries skipped), sorted."""
    return sorted(iter_image_files(folder))


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


def _find_column(header: list[str], names: Iterable[str]) -> str | None:
    lower = {h.strip().lower(): h for h in header}
    for name in names:
        if name in lower:
            return lower[name]
    return None


def _load_manifest(csv_path: str) -> Dataset:
    csv_path = os.path.abspath(csv_path)
    base = os.path.dirname(csv_path)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            sample = fh.read(4096)
            fh.seek(0)
            delimiter = "\t" if sample.count("\t") > sample.count(",") else ","
            reader = csv.DictReader(fh, delimiter=delimiter)
            header = list(reader.fieldnames or [])
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"Cannot read manifest '{csv_path}': {exc}.") from exc

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


# ----------------------------------------------------------------------------------------
# splits
# ----------------------------------------------------------------------------------------


@dataclass
class Split:
    """Train / validation / test datasets and how they were made.

    Attributes
    ----------
    train, val, test : Dataset
        The three parts (``val`` or ``test`` may be empty).
    method : str
        ``"subject"``, ``"random"`` or ``"given"``.
    seed : int or None
        The seed used (None for a given split).
    fractions : dict or None
        The requested ``{"val": f, "test": f}``.

    Examples
    --------
    >>> from bmcd.data import Dataset, split_by_subject
    >>> names = [f"UID_{s}_{i}_1_{c}.bmp" for s, c in [("1", "all"), ("2", "all"), ("3", "all"),
    ...          ("H1", "hem"), ("H2", "hem"), ("H3", "hem")] for i in range(4)]
    >>> ds = Dataset.from_arrays(names, [n[-7:-4] for n in names])
    >>> split = split_by_subject(ds, val=0.3, test=0.3, seed=0)
    >>> [len(split.train), len(split.val), len(split.test)]
    [8, 8, 8]
    """

    train: Dataset
    val: Dataset
    test: Dataset
    method: str
    seed: int | None = None
    fractions: dict[str, float] | None = None

    def parts(self) -> dict[str, Dataset]:
        """``{"train": ..., "val": ..., "test": ...}``."""
        return {"train": self.train, "val": self.val, "test": self.test}

    def shared_subjects(self) -> list[str]:
        """Subjects with images in more than one part (empty for a subject split)."""
        seen: dict[str, set[str]] = {}
        for name, part in self.parts().items():
            for s in set(part.subjects):
                if s is not None:
                    seen.setdefault(s, set()).add(name)
        return sorted((s for s, where in seen.items() if len(where) > 1), key=_subject_sort_key)

    def to_dict(self) -> dict[str, Any]:
        """Counts and subject lists per part, for provenance (JSON-serialisable)."""
        out: dict[str, Any] = {"method": self.method, "seed": self.seed}
        if self.fractions is not None:
            out["fractions"] = dict(self.fractions)
        for name, part in self.parts().items():
            out[name] = {
                "n": len(part),
                **part.class_counts(),
                "subjects": part.subject_list(),
            }
        out["shared_subjects"] = self.shared_subjects()
        return out


def _check_fractions(val: float, test: float) -> None:
    for name, f in (("val", val), ("test", test)):
        if not (isinstance(f, (int, float)) and 0.0 <= float(f) < 1.0):
            raise DatasetError(f"{name} must be a fraction in [0, 1); received {f!r}.")
    if val + test >= 1.0:
        raise DatasetError(
            f"val + test must leave images for training (< 1); received val={val}, test={test}."
        )


def _empty_like(ds: Dataset) -> Dataset:
    return ds.subset(np.zeros(0, dtype=np.int64))


def split_by_subject(
    dataset: Dataset, val: float = 0.2, test: float = 0.2, seed: int | None = 0
) -> Split:
    """Split so that no subject has images on two sides.

    Subjects are stratified by their majority class (in C-NMC every subject is either
    all-leukemic or all-normal), shuffled with ``seed``, and assigned to test, val and
    train so that each part gets about the requested fraction of each class's *images*.
    Every non-empty part gets at least one subject of each class.

    Parameters
    ----------
    dataset : Dataset
    val, test : float
        Fractions of the images (per class) for validation and test; 0 leaves that part
        empty.
    seed : int
        The same seed gives the same split.

    Raises
    ------
    DatasetError
        An image has no subject, or a class has too few subjects for the parts asked for.
    """
    _check_fractions(val, test)
    if len(dataset) == 0:
        raise DatasetError("Cannot split an empty dataset.")
    unknown = [p for p, s in zip(dataset.paths, dataset.subjects, strict=False) if s is None]
    if unknown:
        raise DatasetError(
            f"split_by_subject needs the subject of every image, but {len(unknown)} of "
            f"{len(dataset)} have none: {_listing([os.path.basename(p) for p in unknown])}. "
            f"Name the files the C-NMC way (UID_<subject>_<image>_<cell>_<all|hem>.bmp) or "
            f"give a 'subject' column in a CSV manifest."
        )
    subj_counts = dataset.subject_counts()
    by_class: dict[int, list[str]] = {0: [], 1: []}
    for s, c in subj_counts.items():
        by_class[1 if c["all"] >= c["hem"] else 0].append(s)  # type: ignore[arg-type]

    wanted = ["train"] + (["val"] if val > 0 else []) + (["test"] if test > 0 else [])
    for label, subjects in by_class.items():
        if len(subjects) < len(wanted):
            raise DatasetError(
                f"split_by_subject needs at least {len(wanted)} subjects of each class (one "
                f"per non-empty part: {', '.join(wanted)}), but class '{CLASSES[label]}' has "
                f"{len(subjects)}" + (f" ({_listing(subjects)})" if subjects else "")
                + ". Add subjects, set val=0 or test=0, or use split_random (which leaks "
                "subjects across parts)."
            )

    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for label in (0, 1):
        subjects = by_class[label]
        order = [subjects[i] for i in rng.permutation(len(subjects))]
        sizes = np.array([sum(subj_counts[s].values()) for s in order], dtype=float)
        mids = (np.cumsum(sizes) - sizes / 2) / sizes.sum()
        parts = {"train": [], "val": [], "test": []}
        for s, m in zip(order, mids, strict=False):
            name = "test" if m < test else ("val" if m < test + val else "train")
            parts[name].append(s)
        # every wanted part gets >= 1 subject: take the smallest subject of the biggest donor
        for name in wanted:
            while not parts[name]:
                donor = max(wanted, key=lambda k: len(parts[k]))
                smallest = min(parts[donor], key=lambda s: sum(subj_counts[s].values()))
                parts[donor].remove(smallest)
                parts[name].append(smallest)
        for name, members in parts.items():
            for s in members:
                assignment[s] = name

    where = np.array([assignment[s] for s in dataset.subjects])
    return Split(
        train=dataset.subset(where == "train"),
        val=dataset.subset(where == "val"),
        test=dataset.subset(where == "test"),
        method="subject",
        seed=seed,
        fractions={"val": float(val), "test": float(test)},
    )


def split_random(
    dataset: Dataset, val: float = 0.2, test: float = 0.2, seed: int | None = 0
) -> Split:
    """Image-level stratified split, kept only for comparison: it leaks subjects.

    Images of one subject land on several sides, so test scores come out optimistic.
    A ``UserWarning`` says how many subjects are shared. Use :func:`split_by_subject`.
    """
    _check_fractions(val, test)
    if len(dataset) == 0:
        raise DatasetError("Cannot split an empty dataset.")
    rng = np.random.default_rng(seed)
    where = np.full(len(dataset), "train", dtype=object)
    for label in (0, 1):
        idx = np.flatnonzero(dataset.labels == label)
        idx = idx[rng.permutation(len(idx))]
        n_test = int(round(test * len(idx)))
        n_val = int(round(val * len(idx)))
        where[idx[:n_test]] = "test"
        where[idx[n_test : n_test + n_val]] = "val"
    split = Split(
        train=dataset.subset(where == "train"),
        val=dataset.subset(where == "val"),
        test=dataset.subset(where == "test"),
        method="random",
        seed=seed,
        fractions={"val": float(val), "test": float(test)},
    )
    shared = split.shared_subjects()
    warnings.warn(
        f"split_random splits images, not subjects: {len(shared)} of "
        f"{len(dataset.subject_list())} subjects have images in more than one part, so "
        f"validation/test scores will be optimistic (subject leakage). Use "
        f"split_by_subject for an honest estimate.",
        UserWarning,
        stacklevel=2,
    )
    return split


def split_given(dataset: Dataset) -> Split:
    """The split stored with a pre-split layout (``training_set/validation_set/test_set``)."""
    if dataset.given_split is None:
        raise DatasetError(
            f"This dataset (layout '{dataset.layout}') carries no given split; expected the "
            f"folders training_set/, validation_set/, test_set/. Use split_by_subject instead."
        )
    where = np.array(dataset.given_split, dtype=object)
    return Split(
        train=dataset.subset(where == "train"),
        val=dataset.subset(where == "val"),
        test=dataset.subset(where == "test"),
        method="given",
        seed=None,
    )


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
