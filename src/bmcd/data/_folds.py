"""Subject-grouped k-fold cross-validation splits (``sklearn.model_selection``).

Every subject's cells stay in one fold, and subjects that share images (the C-NMC
duplicates, :data:`LINKED_SUBJECTS`) stay together; folds are stratified by class with
``StratifiedGroupKFold``. See docs/accuracy.rst.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from ..errors import DatasetError
from ._dataset import Dataset

__all__ = ["LINKED_SUBJECTS", "linked_subjects_of", "subject_groups", "subject_folds"]

#: Subjects that must stay on one side of any split: C-NMC 2019 files five byte-identical
#: "hem" images under two subjects each (H2_26_1 = H4_7_1, H2_26_2 = H4_7_2,
#: H2_30_2 = H4_8_1, H2_37_3 = H5_9_1, H2_37_4 = H5_9_2).
LINKED_SUBJECTS: tuple[tuple[str, ...], ...] = (("H2", "H4", "H5"),)
#: The C-NMC file names (without extension) of those duplicates: linking applies to a
#: dataset that holds any of them, so other data whose subjects happen to be called H2, H4
#: and H5 (the synthetic cells) keep their subjects apart.
_CNMC_DUPLICATES = frozenset(
    f"UID_{n}_hem" for n in ("H2_26_1", "H4_7_1", "H2_26_2", "H4_7_2", "H2_30_2", "H4_8_1",
                             "H2_37_3", "H5_9_1", "H2_37_4", "H5_9_2")
)


def linked_subjects_of(paths: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    """:data:`LINKED_SUBJECTS` when ``paths`` hold a known C-NMC duplicate, else ``()``.

    Examples
    --------
    >>> linked_subjects_of(["hem/UID_H4_7_1_hem.png"])
    (('H2', 'H4', 'H5'),)
    >>> linked_subjects_of(["hem/UID_H4_1_1_hem.png"])
    ()
    """
    import os

    for p in paths:
        stem = os.path.splitext(os.path.basename(str(p)))[0]
        if stem in _CNMC_DUPLICATES:
            return LINKED_SUBJECTS
    return ()


def subject_groups(
    subjects: Sequence[str | None], linked: Iterable[Sequence[str]] = LINKED_SUBJECTS,
) -> list[str]:
    """The group of each cell: its subject, with linked subjects merged (``"H2+H4+H5"``).

    Examples
    --------
    >>> subject_groups(["1", "H4", "H2", "H7"])
    ['1', 'H2+H4+H5', 'H2+H4+H5', 'H7']
    """
    merged: dict[str, str] = {}
    for group in linked:
        name = "+".join(group)
        for s in group:
            merged[s] = name
    out = []
    for s in subjects:
        if s is None:
            raise DatasetError(
                "Grouped folds need the subject of every image; one has none. Name the files "
                "the C-NMC way (UID_<subject>_...) or give a 'subject' column in a manifest."
            )
        out.append(merged.get(s, s))
    return out


def subject_folds(
    dataset: Dataset, folds: int = 5, seed: int = 0,
    linked: Iterable[Sequence[str]] | None = None,
) -> list[tuple[Dataset, Dataset]]:
    """``folds`` (train, test) pairs; each subject group is in exactly one test part.

    Parameters
    ----------
    dataset : Dataset
    folds : int, default 5
    seed : int, default 0
        Shuffles the groups before they are dealt (``StratifiedGroupKFold``).
    linked : groups of subject ids kept together
        Default: :data:`LINKED_SUBJECTS` when the dataset holds the C-NMC duplicates
        (:func:`linked_subjects_of`), else none.

    Raises
    ------
    DatasetError
        Fewer subject groups than folds, a missing subject, or a test part with one class.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    k = int(folds)
    if linked is None:
        linked = linked_subjects_of(dataset.paths)
    groups = np.asarray(subject_groups(dataset.subjects, linked), dtype=object)
    n_groups = len(set(groups.tolist()))
    if k < 2 or n_groups < k:
        raise DatasetError(
            f"Cross-validation needs 2 <= folds <= subject groups; received folds={folds} "
            f"with {n_groups} subject group(s). Use fewer folds or more subjects."
        )
    y = np.asarray(dataset.labels)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=int(seed))
    out = []
    for tr, te in splitter.split(np.zeros(len(y)), y, groups):
        out.append((dataset.subset(tr), dataset.subset(te)))
    return out
