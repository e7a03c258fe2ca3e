"""Subject ids and labels from C-NMC file names; shared constants of bmcd.data."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import DatasetError

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
