"""The scoring CSV: its header and one row per input, flushed chunk by chunk.

Rows are appended and each chunk is flushed and fsynced, so a killed run keeps what it
scored. Checking an existing file, the lock, the model record and resume live in
:mod:`bmcd.scoring._output` (docs/scaling.rst).
"""

from __future__ import annotations

import csv
import io
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np

from ..errors import OutputWriteError
from ..labels import label_names

if TYPE_CHECKING:
    from ._pipeline import Row

__all__ = [
    "OUTPUT_COLUMNS",
    "LEGACY_COLUMNS",
    "CSV_ENCODING",
    "CSV_ERRORS",
    "NO_CELL",
    "CsvSink",
]

#: The output CSV's columns, in order. ``warning`` is ``no_cell`` when preprocessing found
#: no foreground (an all-black or tiny image): the label is then not to be trusted.
OUTPUT_COLUMNS = ("path", "p_all", "label", "threshold", "error", "warning")

#: The columns written before ``warning`` existed; such files are still resumed as they are.
LEGACY_COLUMNS = OUTPUT_COLUMNS[:5]

#: The ``warning`` value of an image in which no cell was found.
NO_CELL = "no_cell"

#: The CSV is UTF-8; bytes of file names that are not UTF-8 are written unchanged
#: (``surrogateescape``, the way Python decodes such names), so every file gets its row
#: and resume finds it again.
CSV_ENCODING = "utf-8"
CSV_ERRORS = "surrogateescape"


def _one_line(message: str) -> str:
    return " ".join(str(message).split()) or "error"


class CsvSink:
    """Appends formatted rows chunk by chunk, each chunk flushed and fsynced.

    The file is opened on the first write (or by :meth:`finish`), so a run that fails
    before scoring anything (no scheduler, unreadable inputs) leaves no output behind.

    Parameters
    ----------
    path : Path or None
        The output CSV (appended to); None writes to standard output.
    threshold : float
        Decision threshold written in every row and used for the label.
    write_header : bool
        Write ``columns`` before the first row.
    columns : sequence of str
        :data:`OUTPUT_COLUMNS`, or :data:`LEGACY_COLUMNS` when resuming an older file.
    before_open : callable, optional
        Called once before the file is created (writes the model record).

    Attributes
    ----------
    n_scored : int
        Rows written with a probability.
    n_errors : int
        Rows written with an error.
    """

    def __init__(
        self,
        path: Path | None,
        threshold: float,
        write_header: bool,
        columns: Sequence[str] = OUTPUT_COLUMNS,
        before_open: Callable[[], None] | None = None,
    ):
        self.path: Path | None = None if path is None else Path(path)
        self.threshold: float = float(threshold)
        self._thr_text = str(self.threshold)
        self._write_header = bool(write_header)
        self.columns: tuple[str, ...] = tuple(columns)
        self._with_warning = len(self.columns) > len(LEGACY_COLUMNS)
        self._before_open = before_open
        self._f: TextIO | None = None
        self._own = path is not None
        self.n_scored: int = 0
        self.n_errors: int = 0
        self.n_no_cell: int = 0
        self._failed = False  # a write failed: close() must not raise over that error

    def _open(self) -> TextIO:
        if self._before_open is not None:
            self._before_open()
        if self.path is None:  # standard output (--out -)
            sys.stdout.reconfigure(errors=CSV_ERRORS)  # type: ignore[union-attr]
            return sys.stdout
        return open(self.path, "a", newline="", encoding=CSV_ENCODING, errors=CSV_ERRORS)  # noqa: SIM115

    def _write(self, text: str) -> None:
        try:
            if self._f is None:
                self._f = self._open()
                if self._write_header:
                    text = ",".join(self.columns) + "\n" + text
            self._f.write(text)
            self._f.flush()
            if self._own:
                os.fsync(self._f.fileno())
        except OutputWriteError:  # the model record (sidecar) could not be written
            self._failed = True
            raise
        except OSError as exc:
            self._failed = True
            raise OutputWriteError(
                f"Writing the output '{self.path or '<stdout>'}' failed "
                f"({exc.strerror or exc.__class__.__name__}). Free space or fix the folder, "
                f"then run again with --resume: the rows already written are kept."
            ) from exc

    def write_rows(self, rows: Sequence[Row]) -> None:
        """Append one chunk of ``(path, p_all or None, error or None, no_cell)`` rows; fsync."""
        if not rows:
            return
        ok = [r[1] for r in rows if r[2] is None]
        labels = iter(label_names(np.asarray(ok, dtype=np.float64), self.threshold).tolist())
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        for path, p, err, *rest in rows:
            warning = NO_CELL if (rest and rest[0] and err is None) else ""
            if err is None:
                # shortest text that round-trips the float32 ONNX Runtime returned
                row = [path, str(np.float32(p)), next(labels), self._thr_text, ""]
                self.n_scored += 1
                self.n_no_cell += bool(warning)
            else:
                row = [path, "", "", self._thr_text, _one_line(err)]
                self.n_errors += 1
            if self._with_warning:
                row.append(warning)
            w.writerow(row)
        self._write(buf.getvalue())

    def finish(self) -> None:
        """Make sure the file exists with its header, even when there was nothing to score."""
        if self._f is None:
            self._write("")

    def close(self) -> None:
        """Close the file (if it was opened; standard output stays open)."""
        f, self._f = self._f, None
        if f is None or not self._own:
            return
        try:
            f.close()  # flushes what a failed write left in the buffer
        except OSError as exc:
            if self._failed:
                return  # the write's own error is already on its way to the caller
            raise OutputWriteError(
                f"Closing the output '{self.path}' failed ({exc.strerror or exc.__class__.__name__}"
                f"). The rows written before are kept: free space, then run again with --resume."
            ) from exc
