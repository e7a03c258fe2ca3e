"""The scoring CSV: its header, one row per input, flushed chunk by chunk, and resume.

Rows are appended and each chunk is flushed and fsynced, so a killed run keeps what it
scored. :func:`prepare_output` refuses to overwrite, or (``resume``) cuts a line torn by a
kill and returns the paths already scored, so that after a kill and a resume the file is
the same as after one uninterrupted run (docs/scaling.rst).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from ..artifact import CLASSES
from ..errors import DatasetError, OutputExistsError
from ._inputs import path_key

if TYPE_CHECKING:
    from ._pipeline import Row

__all__ = [
    "OUTPUT_COLUMNS",
    "CsvSink",
    "PreparedOutput",
    "label_for",
    "prepare_output",
    "read_scored_paths",
]

#: The output CSV's columns, in order.
OUTPUT_COLUMNS = ("path", "p_all", "label", "threshold", "error")


def label_for(p_all: float, threshold: float) -> str:
    """The class name of one probability: ``"all"`` when ``p_all >= threshold``, else ``"hem"``.

    Ties go to ``"all"``, as in :func:`bmcd.metrics.apply_threshold`.
    """
    hem, all_ = CLASSES
    return all_ if p_all >= threshold else hem


def truncate_torn_line(path: Path) -> int:
    """Cut a partial last line (a run killed mid-write); return the new size."""
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as f:
        end, pos, block = 0, size, 1 << 16
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            idx = f.read(pos - start).rfind(b"\n")
            if idx >= 0:
                end = start + idx + 1
                break
            pos = start
        if end < size:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    return end


def read_scored_paths(out: str | os.PathLike) -> tuple[set[str], int]:
    """Paths already in a scoring CSV, and how many of those rows carry an error.

    A partial last line left by a killed run is removed from the file first.

    Raises
    ------
    DatasetError
        The file is not a bmcd scoring CSV (wrong header).
    """
    path = Path(out)
    if truncate_torn_line(path) == 0:
        return set(), 0
    done: set[str] = set()
    n_errors = 0
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if tuple(header or ()) != OUTPUT_COLUMNS:
            raise DatasetError(
                f"'{path}' is not a bmcd scoring CSV: expected the header "
                f"{','.join(OUTPUT_COLUMNS)}, received {','.join(header or [])!r}. Choose "
                f"another --out."
            )
        for row in reader:
            if not row:
                continue
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


def prepare_output(out: str | os.PathLike, resume: bool) -> PreparedOutput:
    """Check the output path before scoring; with ``resume``, read what is already done.

    Raises
    ------
    OutputExistsError
        ``out`` is a directory, or exists and ``resume`` is False.
    DatasetError
        ``resume`` and ``out`` is not a bmcd scoring CSV.
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
        done, n_prev = read_scored_paths(path)
        return PreparedOutput(path, done, n_prev, path.stat().st_size == 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    return PreparedOutput(path, set(), 0, True)


def _one_line(message: str) -> str:
    return " ".join(str(message).split()) or "error"


class CsvSink:
    """Appends formatted rows chunk by chunk, each chunk flushed and fsynced.

    The file is opened on the first write (or by :meth:`finish`), so a run that fails
    before scoring anything (no scheduler, unreadable inputs) leaves no output behind.

    Parameters
    ----------
    path : Path
        The output CSV (appended to).
    threshold : float
        Decision threshold written in every row and used for the label.
    write_header : bool
        Write :data:`OUTPUT_COLUMNS` before the first row.

    Attributes
    ----------
    n_scored : int
        Rows written with a probability.
    n_errors : int
        Rows written with an error.
    """

    def __init__(self, path: Path, threshold: float, write_header: bool):
        self.path: Path = Path(path)
        self.threshold: float = float(threshold)
        self._thr_text = str(self.threshold)
        self._write_header = bool(write_header)
        self._f: io.TextIOBase | None = None
        self.n_scored: int = 0
        self.n_errors: int = 0

    def _write(self, text: str) -> None:
        if self._f is None:
            self._f = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115
            if self._write_header:
                text = ",".join(OUTPUT_COLUMNS) + "\n" + text
        self._f.write(text)
        self._f.flush()
        os.fsync(self._f.fileno())

    def write_rows(self, rows: Sequence[Row]) -> None:
        """Append one chunk of ``(path, p_all or None, error or None)`` rows and fsync."""
        if not rows:
            return
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        for path, p, err in rows:
            if err is None:
                # shortest text that round-trips the float32 ONNX Runtime returned
                row = (path, str(np.float32(p)), label_for(p, self.threshold), self._thr_text, "")
                w.writerow(row)
                self.n_scored += 1
            else:
                w.writerow((path, "", "", self._thr_text, _one_line(err)))
                self.n_errors += 1
        self._write(buf.getvalue())

    def finish(self) -> None:
        """Make sure the file exists with its header, even when there was nothing to score."""
        if self._f is None:
            self._write("")

    def close(self) -> None:
        """Close the file (if it was opened)."""
        if self._f is not None:
            self._f.close()
