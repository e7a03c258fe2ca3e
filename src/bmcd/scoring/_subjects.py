"""Patient level: one row per subject from a scoring CSV (``bmcd score --by-subject``).

Read after scoring, so the per-cell CSV stays the one streaming output (resume, Dask)
and the subject table is a summary of it. The subject comes from the file name
(:func:`bmcd.data.parse_subject`, C-NMC names ``UID_<subject>_...``); cells without one are
gathered in a ``?`` row. The columns and the subject-level call are those of
:func:`bmcd.metrics.subject_table` (call ``"all"`` when the subject's mean p(all) >= the
threshold); see docs/cli.rst.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from ..artifact import atomic_write_bytes
from ..data import parse_subject
from ..errors import DatasetError
from ..metrics import subject_table

__all__ = ["SUBJECT_COLUMNS", "UNKNOWN_SUBJECT", "write_subject_table"]

#: The columns of the per-subject CSV, in order.
SUBJECT_COLUMNS = ("subject", "cells", "mean_p_all", "frac_called_all", "call", "threshold")
#: The row of the cells whose file name carries no subject.
UNKNOWN_SUBJECT = "?"


def write_subject_table(
    scores_csv: str | os.PathLike, out: str | os.PathLike, threshold: float | None = None,
) -> dict[str, Any]:
    """Aggregate a ``bmcd score`` CSV into one row per subject, written to ``out``.

    Parameters
    ----------
    scores_csv : path
        The per-cell CSV written by :func:`bmcd.scoring.score`. Rows with an error (no
        p_all) are skipped.
    out : path
        The per-subject CSV to write (:data:`SUBJECT_COLUMNS`), atomically.
    threshold : float, optional
        Default: the ``threshold`` column of the scores (the model's).

    Returns
    -------
    dict
        ``out``, ``subjects`` (rows written), ``cells`` (scored cells used),
        ``unknown_subject_cells``, ``threshold``.

    Raises
    ------
    DatasetError
        ``scores_csv`` is not a bmcd scoring CSV.
    """
    src = Path(scores_csv)
    with open(src, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"path", "p_all"} <= set(reader.fieldnames):
            raise DatasetError(
                f"'{src}' is not a bmcd scoring CSV: expected the columns path,p_all,...; "
                f"received {reader.fieldnames}. Pass the --out file of `bmcd score`."
            )
        paths, p, thresholds = [], [], []
        for row in reader:
            if not (row.get("p_all") or "").strip():
                continue  # an error row
            paths.append(row["path"])
            p.append(float(row["p_all"]))
            if (row.get("threshold") or "").strip():
                thresholds.append(float(row["threshold"]))
    thr = float(threshold) if threshold is not None else (thresholds[0] if thresholds else 0.5)
    subjects = [parse_subject(x) or UNKNOWN_SUBJECT for x in paths]
    rows = subject_table(p, subjects, thr) if p else {}
    order = sorted(rows, key=lambda s: (s == UNKNOWN_SUBJECT, s))
    lines = [",".join(SUBJECT_COLUMNS)]
    for s in order:
        r = rows[s]
        lines.append(f"{s},{r['n']},{r['mean_p_all']:.6f},{r['frac_called_all']:.6f},"
                     f"{r['call']},{thr:g}")
    atomic_write_bytes(Path(out), ("\n".join(lines) + "\n").encode("utf-8"))
    return {
        "out": str(out),
        "subjects": len(rows),
        "cells": len(p),
        "unknown_subject_cells": sum(s == UNKNOWN_SUBJECT for s in subjects),
        "threshold": thr,
    }
