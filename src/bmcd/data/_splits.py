"""Subject-disjoint, random and given splits."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..artifact import CLASSES
from ..errors import ConfigError, DatasetError
from ._dataset import Dataset
from ._names import _listing, _subject_sort_key

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
    all-leukemic or all-normal); linked subjects (:data:`bmcd.data.LINKED_SUBJECTS`: H2, H4
    and H5 share images in C-NMC, linked when the dataset holds those duplicates) count as
    one, shuffled with ``seed``, and assigned to test, val and
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
    # linked subjects (C-NMC files identical images under H2, H4 and H5) are one unit, so
    # they land on the same side (docs/accuracy.rst)
    from ._folds import linked_subjects_of, subject_groups

    linked = linked_subjects_of(dataset.paths)
    unit_of = dict(zip(dataset.subjects, subject_groups(dataset.subjects, linked), strict=True))
    subj_counts: dict[str, dict[str, int]] = {}
    for s, c in dataset.subject_counts().items():
        acc = subj_counts.setdefault(unit_of[s], {k: 0 for k in c})
        for k, v in c.items():
            acc[k] = acc.get(k, 0) + v
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

    where = np.array([assignment[unit_of[s]] for s in dataset.subjects])
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


#: The split methods of :func:`split_dataset` (``bmcd train --split``), the honest one first.
SPLIT_METHODS = ("subject", "random", "given")


def split_dataset(
    dataset: Dataset,
    method: str = "subject",
    val: float = 0.2,
    test: float = 0.2,
    seed: int | None = 0,
) -> Split:
    """Split ``dataset`` the named way: :func:`split_by_subject` (``"subject"``),
    :func:`split_random` (``"random"``) or :func:`split_given` (``"given"``, which
    ignores the fractions and the seed).

    Raises
    ------
    ConfigError
        ``method`` is not one of :data:`SPLIT_METHODS`.
    """
    if method == "subject":
        return split_by_subject(dataset, val=val, test=test, seed=seed)
    if method == "random":
        return split_random(dataset, val=val, test=test, seed=seed)
    if method == "given":
        return split_given(dataset)
    raise ConfigError(f"method must be one of {list(SPLIT_METHODS)}; received {method!r}.")
