"""Rendering of an :class:`~bmcd.metrics.EvaluationReport`: Markdown, HTML, PNG plots, files.

:mod:`bmcd.metrics` computes the numbers; this module draws and writes them, the way
scikit-learn keeps its displays apart from ``sklearn.metrics``. It imports
:mod:`bmcd.metrics`, never the reverse (the rendering methods of
:class:`~bmcd.metrics.EvaluationReport` import this module when called). matplotlib (the
``report`` extra) is imported only when a plot is drawn, through its object-oriented Agg
API (no pyplot global state).

Examples
--------
>>> from bmcd.metrics import EvaluationReport
>>> from bmcd.report import to_markdown
>>> rep = EvaluationReport.from_predictions([0, 0, 1, 1], [0.2, 0.6, 0.7, 0.9])
>>> print(to_markdown(rep).splitlines()[0])
## bmcd evaluation
>>> save_report(rep, "report")                                      # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._deps import optional_import
from ._version import __version__
from .artifact import CLASSES, atomic_write_bytes
from .metrics import EvaluationReport, UndefinedMetricWarning, roc_curve
from .metrics._evaluation import (
    CONFUSION_PNG,
    CURVES_PNG,
    METRICS_JSON,
    RELIABILITY_PNG,
    REPORT_HTML,
    ROC_PNG,
    format_value,
    jsonable,
)

__all__ = [
    "SYNTHETIC_BANNER",
    "MAIN_ROWS",
    "to_markdown",
    "to_html",
    "save_report",
    "plot_roc",
    "plot_confusion",
    "plot_curves",
    "plot_reliability",
    "interval_note",
    "most_confident_errors",
]

#: Shown on every report of synthetic data (``dataset_info["synthetic"]``).
SYNTHETIC_BANNER = "Data: SYNTHETIC cells (not real patients)"

#: ``(metrics key, label)`` of the rows of the main table, in order.
MAIN_ROWS = (
    ("n", "cells"),
    ("accuracy", "accuracy"),
    ("balanced_accuracy", "balanced accuracy"),
    ("f1_weighted", "F1 weighted (C-NMC metric)"),
    ("f1_macro", "F1 macro"),
    ("roc_auc", "ROC AUC"),
    ("precision", "precision ('all')"),
    ("sensitivity", "sensitivity / recall ('all')"),
    ("specificity", "specificity (recall 'hem')"),
    ("threshold", "threshold (p_all >= t -> 'all')"),
)


#: Subject-level call rule, as the report states it.
SUBJECT_CALL_RULE = ("subject call: 'all' when the subject's mean p(all) >= the threshold, "
                     "else 'hem'")


def _interval(report: EvaluationReport, key: str) -> str:
    """``[low, high]`` of the 95% interval of ``key``, or "" when there is none."""
    lohi = (report.intervals.get("metrics") or {}).get(key)
    if not lohi:
        return ""
    lo, hi = lohi
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "n/a"
    return f"[{lo:.4f}, {hi:.4f}]"


def interval_note(report: EvaluationReport) -> str:
    """One sentence saying how the intervals were made (over subjects, or over cells)."""
    iv = report.intervals
    if not iv:
        return "No intervals (no cells)."
    per = iv.get("units_per_class") or {}
    few = ""
    if per and min(per.values()) < 5:
        few = (f" Only {per.get('hem', 0)} 'hem' and {per.get('all', 0)} 'all' "
               f"{iv.get('unit', 'unit')}s: too few for the intervals to show how other "
               f"{iv.get('unit', 'unit')}s would score.")
    if iv.get("unit") == "subject":
        return (f"95% intervals: percentile bootstrap over the {iv['n_units']} subjects "
                f"({iv['n_boot']} resamples within each class; a subject's cells are drawn "
                f"together).{few}")
    return (f"95% intervals: percentile bootstrap over the {iv['n_units']} cells "
            f"({iv['n_boot']} resamples within each class) because no subject is known; "
            f"cells of one patient are alike, so these intervals are too narrow for new "
            f"patients.{few}")


# --------------------------------------------------------------------------- history


def _numeric_series(values: Any) -> list[float] | None:
    """A list of floats (None -> NaN) or None when ``values`` is not a numeric sequence."""
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, (Sequence, np.ndarray)):
        return None
    out: list[float] = []
    for v in list(values):
        if v is None:
            out.append(float("nan"))
            continue
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            return None
    return out or None


def _normalise_history(history: Any) -> list[tuple[str, dict[str, list[float]]]]:
    """Turn a Keras history (or several phases of it) into ``[(phase_name, {metric: values})]``.

    Accepts a dict of lists, a Keras ``History`` object, ``{"phases": [...]}`` where each phase
    is a dict of lists, optionally with a ``"name"``/``"phase"`` label and the lists under
    ``"history"``, or a list of such phases. Non-numeric entries are ignored.
    """
    if history is None:
        return []
    if hasattr(history, "history") and isinstance(history.history, Mapping):
        history = history.history
    phases_raw: list[Any]
    if isinstance(history, Mapping) and isinstance(history.get("phases"), (list, tuple)):
        phases_raw = list(history["phases"])
    elif isinstance(history, (list, tuple)):
        phases_raw = list(history)
    else:
        phases_raw = [history]
    out: list[tuple[str, dict[str, list[float]]]] = []
    for i, ph in enumerate(phases_raw):
        if hasattr(ph, "history") and isinstance(ph.history, Mapping):
            ph = ph.history
        if not isinstance(ph, Mapping):
            continue
        name = ph.get("name", ph.get("phase"))
        name = str(name) if isinstance(name, (str, int)) else f"phase {i + 1}"
        body = ph.get("history") if isinstance(ph.get("history"), Mapping) else ph
        series = {}
        for k, v in body.items():
            vals = _numeric_series(v)
            if vals is not None and k not in ("epoch", "epochs"):
                series[str(k)] = vals
        if series:
            out.append((name, series))
    return out


def _metric_groups(keys: Sequence[str]) -> list[tuple[str, list[str]]]:
    """Pair ``x`` with ``val_x``: ``[("loss", ["loss", "val_loss"]), ...]``, loss first."""
    bases: list[str] = []
    for k in keys:
        base = k[4:] if k.startswith("val_") else k
        if base not in bases:
            bases.append(base)
    bases.sort(key=lambda b: (b != "loss", b in ("lr", "learning_rate")))
    return [(b, [k for k in (b, f"val_{b}") if k in keys]) for b in bases]


# --------------------------------------------------------------------------- plots


def _mpl() -> tuple[Any, Any]:
    """``(Figure, FigureCanvasAgg)``: the object-oriented Agg API, no pyplot global state."""
    optional_import("matplotlib", purpose="report plots")
    figure = optional_import("matplotlib.figure", purpose="report plots")
    agg = optional_import("matplotlib.backends.backend_agg", purpose="report plots")
    return figure.Figure, agg.FigureCanvasAgg


def _fig_to_png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    fig.clear()  # Agg figures outside pyplot are freed with their last reference
    return buf.getvalue()


def plot_roc(report: EvaluationReport) -> bytes:
    """The ROC curve with the chance line and the operating point, as PNG bytes."""
    Figure, Canvas = _mpl()
    fig = Figure(figsize=(5, 5))
    Canvas(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", label="chance (AUC = 0.5)")
    auc = report.roc_auc
    if np.isnan(auc):
        ax.text(0.5, 0.55, "ROC undefined:\nonly one class present", ha="center", va="center")
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            fpr, tpr, _ = roc_curve(report.y_true, report.p_all)
        ax.plot(fpr, tpr, color="C0", lw=2, label=f"ROC (AUC = {auc:.3f})")
        (tn, fp), (fn, tp) = report.metrics["confusion_matrix"]
        # both classes are present here (the AUC is defined): no denominator is zero
        ax.plot(
            [fp / (tn + fp)], [tp / (tp + fn)], "o", color="C3",
            label=f"threshold {report.threshold:.3g}",
        )
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("False positive rate (1 - specificity)")
    ax.set_ylabel("True positive rate (sensitivity, 'all')")
    ax.set_title("ROC curve" + (" - synthetic data" if report.synthetic else ""))
    ax.legend(loc="lower right")
    fig.tight_layout()
    return _fig_to_png(fig)


def plot_reliability(report: EvaluationReport) -> bytes:
    """The reliability diagram (fraction of "all" per bin of p(all)) with its ECE, as PNG."""
    Figure, Canvas = _mpl()
    fig = Figure(figsize=(5, 5))
    Canvas(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", label="perfectly calibrated")
    cal = report.calibration or {}
    if cal.get("mean_p"):
        ax.plot(cal["mean_p"], cal["frac_all"], "o-", color="C0",
                label=f"model (ECE = {cal['ece']:.3f})")
        for x, y, n in zip(cal["mean_p"], cal["frac_all"], cal["count"], strict=False):
            ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, -10),
                        fontsize=7, color="0.3")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("mean p(all) in bin")
    ax.set_ylabel("fraction of 'all' cells in bin")
    ax.set_title("Reliability diagram (cells per bin)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    return _fig_to_png(fig)


def plot_confusion(report: EvaluationReport) -> bytes:
    """The confusion matrix with counts and row percentages, as PNG bytes."""
    Figure, Canvas = _mpl()
    cm = np.asarray(report.metrics["confusion_matrix"], dtype=np.int64)
    fig = Figure(figsize=(4.6, 4))
    Canvas(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=max(int(cm.max()), 1))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    row_sums = cm.sum(axis=1)
    for i in range(2):
        for j in range(2):
            pct = 100.0 * cm[i, j] / row_sums[i] if row_sums[i] else 0.0
            dark = cm[i, j] > 0.5 * max(int(cm.max()), 1)
            ax.text(
                j, i, f"{cm[i, j]}\n({pct:.1f}%)", ha="center", va="center",
                color="white" if dark else "black", fontsize=12,
            )
    ax.set_xticks([0, 1], labels=list(CLASSES))
    ax.set_yticks([0, 1], labels=list(CLASSES))
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title(f"Confusion matrix (threshold {report.threshold:.3g})")
    fig.tight_layout()
    return _fig_to_png(fig)


def plot_curves(report: EvaluationReport) -> bytes:
    """Training curves (training and validation per metric, phases marked), as PNG bytes."""
    Figure, Canvas = _mpl()
    ticker = optional_import("matplotlib.ticker", purpose="report plots")
    phases = _normalise_history(report.history)
    keys: list[str] = []
    for _, series in phases:
        keys.extend(k for k in series if k not in keys)
    groups = _metric_groups(keys)
    if not groups:
        fig = Figure(figsize=(5, 3))
        Canvas(fig)
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no training history", ha="center", va="center", fontsize=14)
        ax.set_axis_off()
        return _fig_to_png(fig)
    ncols = min(len(groups), 3)
    nrows = math.ceil(len(groups) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows))
    Canvas(fig)
    # epochs run on across phases; each phase starts where the previous one ended
    offsets, start = [], 0
    for _, series in phases:
        offsets.append(start)
        start += max(len(v) for v in series.values())
    for gi, (base, members) in enumerate(groups):
        ax = fig.add_subplot(nrows, ncols, gi + 1)
        for key in members:
            xs: list[float] = []
            ys: list[float] = []
            for (_, series), off in zip(phases, offsets, strict=True):
                vals = series.get(key, [])
                xs.extend(range(off + 1, off + len(vals) + 1))
                ys.extend(vals)
                xs.append(np.nan)  # break the line between phases
                ys.append(np.nan)
            style = "--" if key.startswith("val_") else "-"
            label = "validation" if key.startswith("val_") else "training"
            ax.plot(xs, ys, style, marker="o", markersize=3, label=label)
        for (name, _), off in zip(phases[1:], offsets[1:], strict=True):
            ax.axvline(off + 0.5, color="0.6", lw=1, linestyle=":")
            ax.text(off + 0.6, 1.0, name, transform=ax.get_xaxis_transform(),
                    va="top", fontsize=8, color="0.4")
        ax.set_title(base)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        if base in ("lr", "learning_rate") and all(
            v > 0 for _, s in phases for v in s.get(base, []) if math.isfinite(v)
        ):
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _fig_to_png(fig)


# --------------------------------------------------------------------------- text and html


def most_confident_errors(report: EvaluationReport, limit: int = 10) -> list[dict[str, Any]]:
    """The ``limit`` misclassified cells farthest from the threshold (needs paths).

    Returns
    -------
    list of dict
        ``{path, subject, true, p_all}`` per cell, most confident first; empty without paths.
    """
    if not report.paths or report.y_true.size == 0:
        return []
    pred = (report.p_all >= report.threshold).astype(np.int64)
    wrong = np.flatnonzero(pred != report.y_true)
    conf = np.abs(report.p_all[wrong] - report.threshold)
    rows = []
    for i in wrong[np.argsort(-conf, kind="mergesort")][:limit]:
        rows.append({
            "path": report.paths[i],
            "subject": report.subjects[i] if report.subjects else "",
            "true": CLASSES[report.y_true[i]],
            "p_all": float(report.p_all[i]),
        })
    return rows


def to_markdown(report: EvaluationReport) -> str:
    """A Markdown summary: metrics table, confusion matrix, per-subject table."""
    lines = ["## bmcd evaluation", ""]
    if report.synthetic:
        lines += [f"**{SYNTHETIC_BANNER}**", ""]
    lines += ["| metric | value | 95% interval |", "|---|---|---|"]
    for key, label in MAIN_ROWS:
        lines.append(f"| {label} | {format_value(report.metrics.get(key))} | "
                     f"{_interval(report, key)} |")
    c = report.counts
    lines.append(f"| true counts | hem {c.get('hem', 0)}, all {c.get('all', 0)} | |")
    f1 = report.f1
    lines.append(
        f"| F1 per class | hem {format_value(f1.get('hem'))}, all {format_value(f1.get('all'))}"
        f" | |"
    )
    if report.calibration:
        lines.append(f"| expected calibration error | "
                     f"{format_value(report.calibration.get('ece'))} | |")
    lines += ["", interval_note(report)]
    (tn, fp), (fn, tp) = report.confusion_matrix.tolist()
    lines += [
        "",
        "### Confusion matrix (rows: true, columns: predicted)",
        "",
        "| | predicted hem | predicted all |",
        "|---|---|---|",
        f"| true hem | {tn} (TN) | {fp} (FP) |",
        f"| true all | {fn} (FN) | {tp} (TP) |",
    ]
    if report.per_subject:
        lines += [
            "",
            "### Per subject",
            "",
            f"{SUBJECT_CALL_RULE.capitalize()} (threshold {report.threshold:.4g}).",
            "",
            "| subject | cells | true class | mean p(all) | called 'all' | accuracy | "
            "subject call |",
            "|---|---|---|---|---|---|---|",
        ]
        for s, r in report.per_subject.items():
            lines.append(
                f"| {s} | {r['n']} | {r.get('true_class', '?')} | "
                f"{format_value(r['mean_p_all'])} | "
                f"{format_value(r.get('frac_called_all', float('nan')))} | "
                f"{format_value(r.get('accuracy', float('nan')))} | {r.get('call', '?')} |"
            )
    return "\n".join(lines) + "\n"


def to_html(report: EvaluationReport, images: Mapping[str, bytes] | None = None) -> str:
    """A self-contained HTML page; ``images`` maps file name -> PNG bytes to embed.

    Each PNG is linked by its file name and, when given in ``images``, embedded as base64.
    """
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>bmcd evaluation report</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:0.5em 0 1.5em}"
        "td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}"
        "th{background:#f3f3f3}.banner{background:#fff3cd;border:1px solid #e0b400;"
        "padding:0.6em 1em;font-weight:bold}img{max-width:100%}</style>",
        "</head><body>",
        "<h1>bmcd evaluation report</h1>",
    ]
    if report.synthetic:
        parts.append(f'<p class="banner">{e(SYNTHETIC_BANNER)}</p>')
    parts.append(f"<p>bmcd {e(__version__)}. Positive class: <b>all</b> "
                 "(leukemic blast); negative: <b>hem</b> (normal).</p>")

    def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
        h = "".join(f"<th>{e(str(x))}</th>" for x in header)
        body = "".join(
            "<tr>" + "".join(f"<td>{e(str(x))}</td>" for x in r) + "</tr>" for r in rows
        )
        return f"<table><tr>{h}</tr>{body}</table>"

    rows = [(label, format_value(report.metrics.get(key)), _interval(report, key))
            for key, label in MAIN_ROWS]
    for cls_name in CLASSES:
        pc = report.metrics.get("per_class", {}).get(cls_name, {})
        for k in ("precision", "recall", "f1"):
            if k in pc:
                rows.append((f"{k} '{cls_name}'", format_value(pc[k]), ""))
    c = report.counts
    rows.append(("true counts", f"hem {c.get('hem', 0)}, all {c.get('all', 0)}", ""))
    if report.calibration:
        rows.append(("expected calibration error (10 bins)",
                     format_value(report.calibration.get("ece")), ""))
    parts += ["<h2>Metrics</h2>", table(rows, ("metric", "value", "95% interval")),
              f"<p>{e(interval_note(report))}</p>"]
    (tn, fp), (fn, tp) = report.confusion_matrix.tolist()
    parts += [
        "<h2>Confusion matrix</h2>",
        table([("true hem", f"{tn} (TN)", f"{fp} (FP)"), ("true all", f"{fn} (FN)",
                f"{tp} (TP)")], ("", "predicted hem", "predicted all")),
    ]
    images = images or {}
    for fname, title in ((ROC_PNG, "ROC curve"), (CONFUSION_PNG, "Confusion matrix plot"),
                         (RELIABILITY_PNG, "Reliability diagram"),
                         (CURVES_PNG, "Training curves")):
        parts.append(f"<h2>{e(title)}</h2>")
        if fname in images:
            b64 = base64.b64encode(images[fname]).decode("ascii")
            parts.append(
                f'<p><a href="{e(fname)}"><img alt="{e(fname)}" '
                f'src="data:image/png;base64,{b64}"></a><br>'
                f'<small>file: <a href="{e(fname)}">{e(fname)}</a></small></p>'
            )
        else:
            parts.append(f'<p><a href="{e(fname)}">{e(fname)}</a> (not embedded)</p>')
    if report.per_subject:
        parts.append("<h2>Per subject</h2>")
        parts.append(f"<p>{e(SUBJECT_CALL_RULE.capitalize())} (threshold "
                     f"{report.threshold:.4g}).</p>")
        parts.append(table(
            [(s, r["n"], r.get("true_class", "?"), format_value(r["mean_p_all"]),
              format_value(r.get("frac_called_all", float("nan"))),
              format_value(r.get("accuracy", float("nan"))), r.get("call", "?"))
             for s, r in report.per_subject.items()],
            ("subject", "cells", "true class", "mean p(all)", "fraction called 'all'",
             "accuracy", "subject call"),
        ))
    errs = most_confident_errors(report)
    if errs:
        parts.append("<h2>Most confident mistakes</h2>")
        parts.append(table([(r["path"], r["subject"], r["true"], format_value(r["p_all"]))
                            for r in errs], ("path", "subject", "true", "p(all)")))
    if report.gallery:
        parts.append(_gallery_html(report.gallery))
    for title, info in (("Model", report.model_info), ("Dataset", report.dataset_info)):
        if info:
            parts.append(f"<h2>{title}</h2>")
            parts.append(table(
                [(k, v if isinstance(v, (str, int, float, bool)) else
                  json.dumps(jsonable(v))) for k, v in info.items()],
                ("key", "value"),
            ))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _gallery_html(gallery: Sequence[Mapping[str, Any]]) -> str:
    """Figures of cells with their class activation map overlay (docs/explain.rst)."""
    e = html.escape
    out = [
        "<h2>Where the model looked</h2>",
        "<p>Class activation maps upsampled onto the preprocessed cell: red marks the "
        "strongest evidence for the predicted label. First the most confident errors, then "
        "a sample of correct cells per class.</p>",
        "<style>.gallery{display:flex;flex-wrap:wrap;gap:10px}.gallery figure{margin:0;"
        "width:170px;font-size:0.8em}.gallery img{width:160px;height:160px;"
        "image-rendering:auto}.gallery .error{color:#b00}</style>",
    ]
    for kind, title in (("error", "Most confident errors"), ("correct", "Correct cells")):
        rows = [g for g in gallery if g.get("kind") == kind]
        if not rows:
            continue
        out.append(f"<h3>{title}</h3><div class=\"gallery\">")
        for g in rows:
            b64 = base64.b64encode(g["png"]).decode("ascii")
            name = Path(str(g["path"])).name
            out.append(
                f'<figure><img alt="class activation map overlay of {e(name)}" '
                f'src="data:image/png;base64,{b64}"><figcaption class="{e(kind)}">'
                f"{e(name)}<br>true {e(g['true'])}, predicted {e(g['predicted'])}<br>"
                f"p(all) = {g['p_all']:.3f}</figcaption></figure>"
            )
        out.append("</div>")
    return "\n".join(out)


# --------------------------------------------------------------------------- files


def save_report(
    report: EvaluationReport, directory: str | os.PathLike, plots: bool = True
) -> Path:
    """Write ``report`` into ``directory``: what :meth:`EvaluationReport.save` does.

    ``metrics.json`` (:meth:`~bmcd.metrics.EvaluationReport.to_dict`, strict JSON), the
    three PNG plots when ``plots`` is true, and ``report.html`` with the plots embedded.
    The plots are drawn before anything is written, so a missing matplotlib
    (:class:`~bmcd.errors.MissingDependencyError`) leaves ``directory`` untouched. Files
    are written atomically and made world-readable. Returns ``directory`` as a Path.
    """
    out = Path(directory)
    images: dict[str, bytes] = {}
    if plots:
        _mpl()  # fail before writing anything when matplotlib is missing
        images = {
            ROC_PNG: plot_roc(report),
            CONFUSION_PNG: plot_confusion(report),
            RELIABILITY_PNG: plot_reliability(report),
            CURVES_PNG: plot_curves(report),
        }
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report.to_dict(), indent=1, allow_nan=False) + "\n"
    atomic_write_bytes(out / METRICS_JSON, text.encode("utf-8"))
    for name, data in images.items():
        atomic_write_bytes(out / name, data)
    atomic_write_bytes(out / REPORT_HTML, to_html(report, images).encode("utf-8"))
    for name in (METRICS_JSON, REPORT_HTML, *images):
        # atomic_write_bytes goes through mkstemp (mode 0600); a report is meant to be read
        _chmod_readable(out / name)
    return out


def _chmod_readable(path: Path) -> None:
    try:
        os.chmod(path, 0o644)
    except OSError:  # pragma: no cover - e.g. filesystems without POSIX modes
        pass
