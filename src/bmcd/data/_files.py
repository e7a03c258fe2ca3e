"""The one folder walker of bmcd (docs/architecture.rst)."""

from __future__ import annotations

import errno
import os
import warnings
from collections.abc import Iterator

from ..errors import DatasetError
from ..preprocessing import IMAGE_EXTENSIONS

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
    once: a link that leads back to a folder already being walked, or a link that points to
    itself, is skipped with a warning instead of looping.

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
            if entry.is_symlink() and _leads_above(entry.path, folder):
                warnings.warn(
                    f"Skipping '{entry.path}': a symbolic link loop (it leads back to a "
                    f"folder above it).",
                    stacklevel=3,
                )
                continue
            subdirs.append(entry.path)
        elif is_image_file(entry.name):
            if entry.is_symlink() and _is_link_loop(entry.path):
                warnings.warn(
                    f"Skipping '{entry.path}': a symbolic link loop (the link leads back to "
                    f"itself), not an image.",
                    stacklevel=3,
                )
                continue
            yield entry.path
    for sub in subdirs:
        yield from _walk(sub, ancestors + (here,))


def _leads_above(link: str, folder: str) -> bool:
    """True when the folder link ``link`` inside ``folder`` points at ``folder`` or above."""
    target = os.path.realpath(link)
    here = os.path.realpath(folder)
    return here == target or here.startswith(target.rstrip(os.sep) + os.sep)


def _is_link_loop(path: str) -> bool:
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == errno.ELOOP
    return False


def _scan_images(folder: str) -> list[str]:
    """Image files under ``folder`` (recursive, hidden entries skipped), sorted."""
    return sorted(iter_image_files(folder))
