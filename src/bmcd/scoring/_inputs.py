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
from ..data._discovery import manifest_error
from ..errors import DatasetError

__all__ = ["iter_inputs", "path_key", "MANIFEST_COLUMNS"]

#: Column names recognised in CSV manifests (case-insensitive, first match wins).
MANIFEST_COLUMNS = ("path", "file", "filename", "new_names")


def path_key(path: str) -> str:
    """Identity of a path for de-duplication and resume (absolute, normalised)."""
    return os.path.normcase(os.path.abspath(path))


def _manifest_rows(csv_path: str) -> Iterator[list[str]]:
    """The rows of a manifest; unreadable text or CSV becomes one DatasetError."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            try:
                yield from reader
            except (UnicodeDecodeError, csv.Error) as exc:
                raise manifest_error(csv_path, max(1, reader.line_num), exc) from None
    except OSError as exc:
        raise DatasetError(
            f"Cannot read the CSV manifest '{csv_path}' ({exc.strerror or exc}). Check it "
            f"exists and is readable."
        ) from None


def _manifest_path(value: str, base: str) -> str:
    """A manifest cell as a path: taken exactly as written, relative to the manifest's folder.

    Only when the cell names no file but the cell without its surrounding whitespace does
    (padding added by a spreadsheet) is the stripped name used (docs/scaling.rst).
    """
    full = value if os.path.isabs(value) else os.path.join(base, value)
    stripped = value.strip()
    if stripped != value and not os.path.lexists(full):
        alt = stripped if os.path.isabs(stripped) else os.path.join(base, stripped)
        if os.path.lexists(alt):
            return alt
    return full


def _read_manifest(csv_path: str) -> Iterator[str]:
    """Paths listed in a CSV manifest, relative ones taken from the CSV's folder."""
    base = os.path.dirname(csv_path)
    rows = _manifest_rows(csv_path)
    header = next(rows, None)
    if header is None:
        return
    lowered = [h.strip().lower() for h in header]
    col = next((lowered.index(c) for c in MANIFEST_COLUMNS if c in lowered), None)
    if col is None:
        raise DatasetError(
            f"CSV manifest '{csv_path}' has no column naming the image files; expected "
            f"one of {list(MANIFEST_COLUMNS)}, received columns {header[:10]}."
        )
    for row in rows:
        if col >= len(row) or not row[col].strip():
            continue
        yield _manifest_path(row[col], base)


def _check_manifest(csv_path: str) -> None:
    """Read a manifest once up front (no file checks), so its errors come before scoring."""
    for _ in _read_manifest(csv_path):
        pass


def _check_input(item: str) -> None:
    if os.path.exists(item):
        if os.path.isfile(item) and item.lower().endswith(".csv"):
            _check_manifest(item)
        return
    if os.path.islink(item):  # a dangling link or a link loop: its row says which
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
    elif os.path.islink(item):  # an error row names the dangling link or the loop
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
        of :data:`MANIFEST_COLUMNS`, UTF-8, relative paths taken from the CSV's folder;
        a cell is taken exactly as written unless only its whitespace-stripped form names
        a file). Items may be mixed.

    Yields
    ------
    str
        Each file once, in the order given (the first occurrence wins).

    Raises
    ------
    DatasetError
        An item does not exist, a pattern matches nothing, or a manifest has no path
        column or cannot be read (not UTF-8, invalid CSV, a field over the CSV module's
        limit). Items, manifests included, are checked before anything is yielded.

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
