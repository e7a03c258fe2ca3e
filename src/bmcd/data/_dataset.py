"""The Dataset class: image files with labels and subjects."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact import CLASSES
from ..errors import DatasetError
from ._names import _SPLIT_NAMES, _subject_sort_key, parse_label, parse_subject

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
