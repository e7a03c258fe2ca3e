"""Guarding the scoring CSV: writability, a lock, the model's identity, and resume.

Before anything is scored (docs/scaling.rst, "Resume, locks and the model record"):

1. the output's folder must be writable (checked by creating the lock file);
2. ``<out>.lock`` is locked (``flock``) for the whole run, so a second run on the same
   output refuses at once instead of interleaving rows; the kernel releases the lock
   when the process ends, even on ``kill -9``;
3. with ``resume``, the existing file must start with a bmcd scores header *before* a
   single byte of it is changed; then a record torn by a kill (possibly ending inside a
   quoted field that holds a newline) is cut at the end of the last complete record;
4. the model's identity (sha256 of the ONNX file used, precision, threshold,
   preprocessing, architecture, bmcd version) is compared with the one recorded in the
   sidecar ``<out>.json``; resuming with another model is refused.

Paths are written as the file system gives them: names that are valid UTF-8 as UTF-8,
other bytes unchanged (Python's ``surrogateescape``), so every file gets its row and
``resume`` recognises it (:data:`CSV_ERRORS`).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from .._version import __version__
from ..artifact import atomic_write_bytes, file_sha256
from ..errors import DatasetError, OutputExistsError, OutputWriteError
from ._inputs import path_key
from ._sink import CSV_ENCODING, CSV_ERRORS, LEGACY_COLUMNS, OUTPUT_COLUMNS

try:  # POSIX; elsewhere runs are not locked (docs/scaling.rst)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "OutputLock",
    "PreparedOutput",
    "STDOUT",
    "check_identity",
    "complete_length",
    "model_identity",
    "prepare_output",
    "read_scored_paths",
    "sidecar_path",
    "write_sidecar",
]

#: ``--out -``: rows go to standard output (no resume, no lock, no sidecar).
STDOUT = "-"

#: What the sidecar calls itself, so that a foreign ``.json`` is never taken for one.
SIDECAR_FORMAT = "bmcd-scores"

#: Identity fields that must match for ``resume`` (``bmcd_version`` is recorded only).
_MUST_MATCH = ("sha256", "precision", "threshold", "preprocess", "arch")


def sidecar_path(out: Path) -> Path:
    """``scores.csv`` -> ``scores.csv.json``: the record of the model that wrote it."""
    return out.with_name(out.name + ".json")


def _lock_path(out: Path) -> Path:
    return out.with_name(out.name + ".lock")


def _why(exc: OSError) -> str:
    return exc.strerror or exc.__class__.__name__


# ---------------------------------------------------------------------------------------
# the model's identity
# ---------------------------------------------------------------------------------------


def model_identity(model_file: str | os.PathLike, meta: dict[str, Any], precision: str,
                   threshold: float, preprocess: dict[str, Any]) -> dict[str, Any]:
    """What identifies the model behind a scores file (stored in the sidecar)."""
    return {
        "sha256": file_sha256(model_file),
        "model_file": os.fsdecode(os.path.abspath(model_file)).encode(
            "utf-8", "backslashreplace").decode("utf-8"),
        "precision": str(precision),
        "threshold": float(threshold),
        "preprocess": dict(preprocess),
        "arch": str(meta.get("arch", "")) if isinstance(meta, dict) else "",
        "bmcd_version": __version__,
    }


def write_sidecar(out: Path, identity: dict[str, Any], columns: tuple[str, ...]) -> None:
    """Write ``<out>.json`` atomically (before the CSV's first byte)."""
    doc = {"format": SIDECAR_FORMAT, "columns": list(columns), "model": identity}
    try:
        atomic_write_bytes(sidecar_path(out), (json.dumps(doc, indent=2) + "\n").encode())
    except OSError as exc:
        raise OutputWriteError(
            f"Cannot write the model record '{sidecar_path(out)}' ({_why(exc)}). Choose an "
            f"--out in a writable folder."
        ) from exc


def read_sidecar(out: Path) -> dict[str, Any] | None:
    """The recorded model identity, or None when there is no sidecar (an older file)."""
    side = sidecar_path(out)
    if not side.exists():
        return None
    try:
        doc = json.loads(side.read_bytes())
    except (OSError, ValueError) as exc:
        raise DatasetError(
            f"The model record '{side}' of '{out}' is unreadable ({exc.__class__.__name__}). "
            f"Remove it to resume without checking the model, or choose another --out."
        ) from exc
    if not isinstance(doc, dict) or doc.get("format") != SIDECAR_FORMAT or not isinstance(
        doc.get("model"), dict
    ):
        raise DatasetError(
            f"'{side}' is not a bmcd scores record (expected a JSON object with "
            f"\"format\": \"{SIDECAR_FORMAT}\"). Move it away, or choose another --out."
        )
    return doc["model"]


def check_identity(out: Path, recorded: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse to resume ``out`` with a model other than the one that started it."""
    diff = [k for k in _MUST_MATCH if recorded.get(k) != current.get(k)]
    if not diff:
        return
    if "sha256" in diff:
        what = (f"its rows come from the model with sha256 {recorded.get('sha256')} "
                f"({recorded.get('model_file')}), this run's model has sha256 "
                f"{current['sha256']} ({current['model_file']})")
    else:
        what = "; ".join(f"{k} was {recorded.get(k)!r}, now {current.get(k)!r}" for k in diff)
    raise OutputExistsError(
        f"Cannot resume '{out}' with another model: {what}. Resume with the same model "
        f"(and --int8 as before), or write to a new --out."
    )


# ---------------------------------------------------------------------------------------
# the lock
# ---------------------------------------------------------------------------------------


class OutputLock:
    """An exclusive ``flock`` on ``<out>.lock``, held until :meth:`release`.

    Raises
    ------
    OutputExistsError
        Another run holds the lock.
    OutputWriteError
        The lock file cannot be created (the folder is not writable or does not exist).
    """

    def __init__(self, out: Path):
        self.path = _lock_path(out)
        self._fd: int | None = None
        if fcntl is None:  # pragma: no cover
            return
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                raise OutputWriteError(
                    f"Cannot write next to the output '{out}' ({_why(exc)}: could not create "
                    f"'{self.path.name}'). Choose an --out in an existing, writable folder."
                ) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise OutputExistsError(
                    f"Another bmcd score run is writing '{out}' (it holds '{self.path}'). Wait "
                    f"for it to finish, or choose another --out."
                ) from None
            # the holder before us may have removed the file between our open and flock
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                return
            os.close(fd)

    def release(self) -> None:
        """Remove the lock file and unlock it (idempotent)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None


# ---------------------------------------------------------------------------------------
# reading an existing scores CSV
# ---------------------------------------------------------------------------------------


def _header_of(path: Path) -> tuple[tuple[str, ...] | None, bytes]:
    """The parsed first line (None when it is not text) and its raw bytes, read only."""
    with open(path, "rb") as f:
        raw = f.readline(4096)
    try:
        text = raw.decode(CSV_ENCODING)
    except UnicodeDecodeError:
        return None, raw
    row = next(csv.reader([text.rstrip("\r\n")]), [])
    return tuple(row), raw


def _check_header(path: Path) -> tuple[str, ...]:
    """The columns of a scores CSV; raise before anything is written when it is not one."""
    header, raw = _header_of(path)
    if header in (OUTPUT_COLUMNS, LEGACY_COLUMNS) and raw.endswith(b"\n"):
        return header
    # a header torn by a kill: a strict prefix of ours, with nothing after it
    expected = (",".join(OUTPUT_COLUMNS) + "\n").encode()
    if raw and not raw.endswith(b"\n") and expected.startswith(raw) and path.stat().st_size == len(raw):
        return ()
    shown = raw[:60].decode("ascii", "replace").strip()
    raise OutputExistsError(
        f"'{path}' exists and is not a bmcd scores CSV (expected the header "
        f"{','.join(OUTPUT_COLUMNS)}, found {shown!r}); nothing was changed in it. Choose "
        f"another --out."
    )


def complete_length(path: Path, block: int = 1 << 20) -> int:
    """Bytes of ``path`` up to the end of its last complete CSV record.

    A record ends at a newline outside quotes; quotes are counted in order, so a torn
    record that ends inside a quoted field holding a newline is recognised as torn.
    """
    end = 0
    in_quotes = False
    offset = 0
    with open(path, "rb") as f:
        while data := f.read(block):
            parts = data.split(b'"')
            pos = offset
            for i, part in enumerate(parts):
                if i:
                    in_quotes = not in_quotes
                    pos += 1
                if not in_quotes:
                    nl = part.rfind(b"\n")
                    if nl >= 0:
                        end = pos + nl + 1
                pos += len(part)
            offset += len(data)
    return end


def _cut(path: Path, end: int) -> None:
    try:
        with open(path, "rb+") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise OutputWriteError(f"Cannot cut the torn last line of '{path}' ({_why(exc)}).") from exc


def _iter_records(path: Path) -> Iterator[list[str]]:
    with open(path, newline="", encoding=CSV_ENCODING, errors=CSV_ERRORS) as f:
        reader = csv.reader(f)
        next(reader, None)
        for row in reader:
            if row:
                yield row


def read_scored_paths(out: str | os.PathLike) -> tuple[set[str], int]:
    """Paths already in a scoring CSV, and how many of those rows carry an error.

    The header is checked first, without changing the file; then a record torn by a
    killed run is cut.

    Raises
    ------
    OutputExistsError
        The file is not a bmcd scores CSV (nothing was written to it).
    """
    path = Path(out)
    if path.stat().st_size == 0:
        return set(), 0
    if _check_header(path) == ():
        _cut(path, 0)
        return set(), 0
    end = complete_length(path)
    if end < path.stat().st_size:
        _cut(path, end)
    done: set[str] = set()
    n_errors = 0
    for row in _iter_records(path):
        done.add(path_key(row[0]))
        if len(row) >= 5 and row[4]:
            n_errors += 1
    return done, n_errors


class PreparedOutput(NamedTuple):
    """The output CSV, checked and ready to be appended to (:func:`prepare_output`)."""

    path: Path
    #: :func:`~bmcd.scoring._inputs.path_key` of every path already in the file
    done: set[str]
    #: error rows already in the file
    n_previous_errors: int
    #: whether the header still has to be written
    write_header: bool
    #: the columns to write (an older five-column file keeps its five)
    columns: tuple[str, ...] = OUTPUT_COLUMNS
    #: the model recorded in the sidecar, None when there is none yet
    recorded: dict[str, Any] | None = None


def _check_existing_writable(path: Path) -> None:
    try:
        with open(path, "ab"):
            pass
    except OSError as exc:
        raise OutputWriteError(
            f"Cannot append to the output '{path}' ({_why(exc)}). Make it writable or choose "
            f"another --out."
        ) from exc


def prepare_output(out: str | os.PathLike, resume: bool,
                   identity: dict[str, Any] | None = None) -> PreparedOutput:
    """Check the output path before scoring; with ``resume``, read what is already done.

    Call it while holding :class:`OutputLock`. Nothing is written to an existing file
    until its header shows it is a bmcd scores CSV.

    Raises
    ------
    OutputExistsError
        ``out`` is a directory, exists and ``resume`` is False, or is not a bmcd scores CSV.
    OutputWriteError
        ``out`` or its folder cannot be written.

    With ``identity`` (:func:`model_identity`), resuming a file whose sidecar records
    another model raises :class:`OutputExistsError` before the file is touched.
    """
    path = Path(out)
    if path.is_dir():
        raise OutputExistsError(
            f"--out '{path}' is a directory; give a CSV file path such as '{path / 'scores.csv'}'."
        )
    if path.exists():
        if not resume:
            raise OutputExistsError(
                f"The output '{path}' already exists. Pass resume=True (--resume) to skip the "
                f"files already scored in it and carry on, or choose another --out."
            )
        if not path.is_file():
            raise OutputExistsError(
                f"--out '{path}' exists and is not a regular file; choose a CSV file path."
            )
        _check_existing_writable(path)
        if path.stat().st_size and _check_header(path) == LEGACY_COLUMNS:
            columns = LEGACY_COLUMNS
        else:
            columns = OUTPUT_COLUMNS
        recorded = read_sidecar(path)
        if recorded is not None and identity is not None:
            check_identity(path, recorded, identity)
        done, n_prev = read_scored_paths(path)
        empty = path.stat().st_size == 0
        return PreparedOutput(path, done, n_prev, empty, OUTPUT_COLUMNS if empty else columns,
                              recorded)
    return PreparedOutput(path, set(), 0, True, OUTPUT_COLUMNS, None)


def ensure_parent(out: Path) -> None:
    """Create the output's missing folders; OutputWriteError when that is impossible."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputWriteError(
            f"Cannot create the folder '{out.parent}' for --out '{out}' ({_why(exc)}). Choose "
            f"an --out in a writable folder."
        ) from exc
