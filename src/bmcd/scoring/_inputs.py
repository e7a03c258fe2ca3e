"""Listing the inputs of a scoring run: folders, globs, files and CSV manifests.

Folders are walked with :func:`bmcd.data.iter_image_files`, the one folder walker (see
docs/architecture.rst). Inputs are checked up front and listed lazily, once, de-duplicated.
"""

from __future__ import annotations

import csv
import glob
import os
from collections.abc import Iterable, Iterator, Sequence

from ..data import iter_image_files
from ..errors import DatasetError

__all__ = ["iter_inputs", "path_key", "MANIFEST_COLUMNS"]

#: Column names recognised in CSV manifests (case-insensitive, first match wins).
MANIFEST_COLUMNS = ("path", "file", "filename", "new_names")


def path_key(path: str) -> str:
    """Identity of a path for de-duplication and resume (absolute, normalised)."""
    return os.path.normcase(os.path.abspath(path))


def _read_manifest(csv_path: str) -> Iterator[str]:
    """Paths listed in a CSV manifest, relative ones taken from the CSV's folder."""
    base = os.path.dirname(csv_path)
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return
        lowered = [h.strip().lower() for h in header]
        col = next((lowered.index(c) for c in MANIFEST_COLUMNS if c in lowered), None)
        if col is None:
            raise DatasetError(
                f"CSV manifest '{csv_path}' has no column naming the image files; expected "
                f"one of {list(MANIFEST_COLUMNS)}, received columns {header}."
            )
        for row in reader:
            if col >= len(row) or not row[col].strip():
                continue
            value = row[col].strip()
            yield value if os.path.isabs(value) else os.path.join(base, value)


def _check_input(item: str) -> None:
    if os.path.exists(item):
        return
    if glob.has_magic(item):
        if next(glob.iglob(item, recursive=True), None) is None:
            raise DatasetError(f"The pattern '{item}' matches no files. Check the pattern.")
        return
    raise DatasetError(
        f"Input '{item}' does not exist. Pass image files, folders (searched recursively), "
        f"glob patterns (quote them in the shell) or CSV manifests."
    )


def _expand(item: str) -> Iterator[str]:
    if os.path.isdir(item):
        yield from iter_image_files(item)
    elif os.path.exists(item):
        if item.lower().endswith(".csv"):
            yield from _read_manifest(item)
        else:
            yield item
    else:  # a glob (checked up front by _check_input)
        for match in sorted(glob.iglob(item, recursive=True)):
            if os.path.isdir(match):
                yield from iter_image_files(match)
            else:
                yield match


def iter_inputs(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> Iterator[str]:
    """List the files named by ``inputs`` once, lazily, de-duplicated, keeping order.

    Parameters
    ----------
    inputs : path, glob or iterable of them
        Each item is a folder (image files with :data:`~bmcd.preprocessing.IMAGE_EXTENSIONS`
        found recursively by :func:`bmcd.data.iter_image_files`: names sorted, hidden files
        and folders skipped), a glob pattern (``**`` allowed; matches sorted), a file
        (scored whatever its extension), or a CSV manifest (``*.csv``; a column named one
        of :data:`MANIFEST_COLUMNS`, relative paths taken from the CSV's folder). Items may
        be mixed.

    Yields
    ------
    str
        Each file once, in the order given (the first occurrence wins).

    Raises
    ------
    DatasetError
        An item does not exist, a pattern matches nothing, or a manifest has no path
        column. Items are checked before anything is yielded.

    Examples
    --------
    >>> from bmcd.scoring import iter_inputs
    >>> paths = iter_inputs(["slides/", "extra/*.png", "more.csv"])  # doctest: +SKIP
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    items = [os.fspath(i) for i in inputs]
    if not items:
        raise DatasetError("No inputs given: pass image files, folders, globs or CSV manifests.")
    for item in items:
        _check_input(item)
    return _iter_unique(items)


def _iter_unique(items: Sequence[str]) -> Iterator[str]:
    seen: set[str] = set()
    for item in items:
        for path in _expand(item):
            key = path_key(path)
            if key not in seen:
                seen.add(key)
                yield path
