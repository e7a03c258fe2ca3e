"""Speed targets and the human-readable report of a benchmark run.

bmcd ships no speed goals: they belong to a machine. ``benchmarks/targets.py`` in the
repository holds the goals of the reference machine of docs/benchmarks.rst; pass them
(or your own) to :func:`evaluate_targets` or ``run_bench(targets=...)``.
Part of :mod:`bmcd.bench`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ._machine import MODEL_GFLOP_224
from ._parity import BACKEND_LABELS

#: The quantities a speed target may name in its ``key``. ``{arch}`` is an architecture
#: (in a target, ``{arch}`` alone stands for every architecture measured) and
#: ``{precision}`` is ``fp32`` or ``int8`` (ONNX Runtime), or ``ov_f32``, ``ov_bf16``,
#: ``ov_int8`` (OpenVINO). Ratios are of images/s at the run's batch size.
TARGET_QUANTITIES = {
    "ratio_fp32_keras:{arch}": "ORT fp32 / keras predict, model only",
    "ratio_int8_fp32:{arch}": "ORT int8 / ORT fp32, model only",
    "ms_fp32_b1:{arch}": "ORT fp32 milliseconds per image at batch 1",
    "ratio_e2e_model:{arch}:{precision}": "score (local engine) / model-only, same backend",
    "ratio_ov_bf16_fp32:{arch}": "OpenVINO bf16 / ORT fp32, model only",
    "ratio_best_int8:{arch}": "best int8 (ORT or OpenVINO) / ORT int8, model only",
}
_KEY_PARTS = {k.split(":")[0]: k.count(":") for k in TARGET_QUANTITIES}
_TARGET_OPS = (">=", "<=")


def check_targets(targets: Any) -> list[dict[str, Any]]:
    """Validate speed targets; return them as a list of dicts.

    Each target is a mapping with ``key`` (a quantity of :data:`TARGET_QUANTITIES`, e.g.
    ``"ratio_int8_fp32:resnet50"`` or ``"ratio_fp32_keras:{arch}"``), ``what`` (the label
    printed; ``{arch}`` and ``@B`` are filled in), ``op`` (``">="`` or ``"<="``) and
    ``value`` (a number).

    Raises
    ------
    ConfigError
        ``targets`` is not a sequence of such mappings.
    """
    if isinstance(targets, (str, bytes, Mapping)) or not isinstance(targets, Sequence):
        raise ConfigError(
            f"targets must be a list of {{key, what, op, value}} dicts; received "
            f"{type(targets).__name__}."
        )
    out = []
    for i, t in enumerate(targets):
        problem = None
        if not isinstance(t, Mapping) or not {"key", "what", "op", "value"} <= set(t):
            problem = "a dict with the keys key, what, op and value"
        elif not isinstance(t["key"], str) or not isinstance(t["what"], str):
            problem = "key and what as strings"
        elif _KEY_PARTS.get(t["key"].split(":")[0]) != t["key"].count(":"):
            problem = f"a key of the form of one of {list(TARGET_QUANTITIES)}"
        elif t["op"] not in _TARGET_OPS:
            problem = f"op one of {list(_TARGET_OPS)}"
        elif isinstance(t["value"], bool) or not isinstance(t["value"], (int, float)):
            problem = "value as a number"
        if problem:
            raise ConfigError(
                f"Target {i} must have {problem}; received {t!r}. See "
                f"bmcd.bench.TARGET_QUANTITIES and benchmarks/targets.py for examples."
            )
        out.append(dict(t))
    return out


def load_targets(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Speed targets from a file: ``TARGETS`` of a Python file, or a JSON list.

    ``benchmarks/targets.py`` in the bmcd repository holds the goals of its reference
    machine. A JSON file holds the list itself or ``{"targets": [...]}``. A Python file is
    executed, so load only files you trust. See :func:`check_targets` for the format.

    Raises
    ------
    ConfigError
        The file is missing, unreadable, or does not hold valid targets.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"No targets file at '{p}'; expected a .py file defining TARGETS or a .json list "
            f"(e.g. benchmarks/targets.py)."
        )
    if p.suffix == ".py":
        import runpy

        data = runpy.run_path(str(p)).get("TARGETS")
        if data is None:
            raise ConfigError(f"'{p}' defines no TARGETS; define TARGETS = [...] in it.")
        return check_targets(data)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"'{p}' is not valid JSON: {exc}. Expected a list of targets.") from exc
    if isinstance(data, Mapping) and "targets" in data:
        data = data["targets"]
    return check_targets(data)


def _measured(report: dict[str, Any]) -> dict[str, float]:
    """The quantities of :data:`TARGET_QUANTITIES` that ``report`` measured, by key."""
    out: dict[str, float] = {}
    bs = report["settings"]["batch_size"]
    by = {(r["arch"], r["backend"], r["batch_size"]): r for r in report["inference"]}
    for arch in {r["arch"] for r in report["inference"]}:
        k = by.get((arch, "keras_predict", bs))
        f = by.get((arch, "ort_fp32", bs))
        q = by.get((arch, "ort_int8", bs))
        f1 = by.get((arch, "ort_fp32", 1))
        if k and f:
            out[f"ratio_fp32_keras:{arch}"] = f["images_per_second"] / k["images_per_second"]
        if f and q:
            out[f"ratio_int8_fp32:{arch}"] = q["images_per_second"] / f["images_per_second"]
        if f1:
            out[f"ms_fp32_b1:{arch}"] = f1["ms_per_image"]
        b = by.get((arch, "ov_bf16", bs))
        if f and b:
            out[f"ratio_ov_bf16_fp32:{arch}"] = b["images_per_second"] / f["images_per_second"]
        o = by.get((arch, "ov_int8", bs))
        if q and o:
            best = max(q["images_per_second"], o["images_per_second"])
            out[f"ratio_best_int8:{arch}"] = best / q["images_per_second"]
    for r in report["end_to_end"]:
        if r["engine"] == "local" and r.get("ratio_to_model_only"):
            name = r.get("bench_backend", f"ort_{r['precision']}")
            which = r["precision"] if name.startswith("ort_") else name
            out[f"ratio_e2e_model:{r['arch']}:{which}"] = r["ratio_to_model_only"]
    return out


def evaluate_targets(
    report: dict[str, Any], targets: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Compare a :func:`run_bench` report with speed ``targets`` (see :func:`check_targets`).

    Only the quantities the report measured are compared; nothing is invented for the
    rest. Returns one ``{what, target, measured, met}`` dict per comparison.
    """
    measured = _measured(report)
    archs = sorted({r["arch"] for r in report["inference"]})
    results = []
    for t in check_targets(targets):
        keys = [t["key"].format(arch=a) for a in archs] if "{arch}" in t["key"] else [t["key"]]
        for key in keys:
            if key not in measured:
                continue
            arch = key.split(":")[1]
            value = measured[key]
            met = value >= t["value"] if t["op"] == ">=" else value <= t["value"]
            results.append(
                {
                    "what": t["what"]
                    .replace("{arch}", arch)
                    .replace("@B", f"@{report['settings']['batch_size']}"),
                    "target": f"{t['op']} {t['value']:g}",
                    "measured": round(value, 3),
                    "met": bool(met),
                }
            )
    return results


def _fmt(v: Any, spec: str = ".1f") -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return format(v, spec)


def format_report(report: dict[str, Any]) -> str:
    """The human-readable table printed by ``bmcd bench``."""
    m = report.get("machine", {})
    s = report["settings"]
    c = report.get("contention", {})
    lines = [
        f"bmcd {report['bmcd_version']} bench: {s['image_size']} px, batch {s['batch_size']} "
        f"and 1, {s['seconds']:g} s per measurement, inputs: {s['images']}",
        f"machine: {m.get('cpu_model')}, {m.get('usable_cores')} usable cores "
        f"({m.get('logical_cores')} logical); {m.get('platform')}",
        f"onnxruntime {m.get('onnxruntime')}, tensorflow {m.get('tensorflow', '-')}, "
        f"numpy {m.get('numpy')}, opencv {m.get('opencv', '-')}, python {m.get('python')}",
        f"instruction sets: {' '.join(m.get('isa', [])) or 'unknown'}",
        f"ONNX Runtime kernels for these: fp32 {m.get('ort_kernels', {}).get('fp32')}; "
        f"int8 {m.get('ort_kernels', {}).get('int8')}",
    ]
    if c:
        busy = c.get("machine_busy_fraction")
        lines.append(
            f"load average {c.get('loadavg_start')} -> {c.get('loadavg_end')}; other "
            f"processes used {c.get('other_processes_cpu_s', '-')} CPU-s during this "
            f"{c.get('wall_s', 0):.0f} s run (machine busy {_fmt(busy and 100 * busy, '.0f')}%)"
        )
    bs = s["batch_size"]
    refs = {r.get("reference") for r in report["inference"]} or {"keras_predict"}
    ref = refs.pop() if len(refs) == 1 else "keras_predict"
    ref_label = BACKEND_LABELS.get(ref, ref)
    short = {"keras_predict": "keras", "ort_fp32": "fp32"}.get(ref, "ref")
    lines += [
        "",
        f"inference, model only (images/s = batch / median call time; ratio vs {ref_label})",
        f"{'arch':13s} {'backend':14s} {f'img/s @{bs}':>10s} {f'x {short} @{bs}':>11s} "
        f"{'ms/img @1':>10s} {f'x {short} @1':>10s} {f'CPU ms/img @{bs}':>15s} {'max|dp|':>9s}"
        "  parity vs",
    ]
    by = {(r["arch"], r["backend"], r["batch_size"]): r for r in report["inference"]}
    for arch in dict.fromkeys(r["arch"] for r in report["inference"]):
        for b in dict.fromkeys(r["backend"] for r in report["inference"] if r["arch"] == arch):
            rb, r1 = by.get((arch, b, bs)), by.get((arch, b, 1))
            main = rb or r1
            lines.append(
                f"{arch:13s} {BACKEND_LABELS.get(b, b):14s} "
                f"{_fmt(rb and rb['images_per_second']):>10s} "
                f"{_fmt(rb and rb['ratio_to_reference'], '.2f'):>11s} "
                f"{_fmt(r1 and r1['ms_per_image'], '.2f'):>10s} "
                f"{_fmt(r1 and r1['ratio_to_reference'], '.2f'):>10s} "
                f"{_fmt(rb and rb.get('cpu_ms_per_image'), '.2f'):>15s} "
                f"{_fmt(main['parity_max_abs_diff'], '.1e'):>9s}  {main['parity_against']}"
            )
    gflops = m.get("matmul_gflops")
    if gflops:
        size = s["image_size"]
        notes = []
        for arch in dict.fromkeys(r["arch"] for r in report["inference"]):
            g = MODEL_GFLOP_224.get(arch)
            f = by.get((arch, "ort_fp32", bs))
            if g and f:
                ceiling = gflops / (g * (size / 224) ** 2)
                notes.append(
                    f"{arch} {ceiling:.0f} img/s (ORT fp32 reaches "
                    f"{100 * f['images_per_second'] / ceiling:.0f}%)"
                )
        lines.append(
            f"fp32 ceiling from a {gflops:.0f} GFLOP/s float32 matmul (best of the start "
            f"and the end of this run: {m.get('matmul_gflops_start_end')}): " + "; ".join(notes)
        )
    if report["end_to_end"]:
        n = report["settings"]["n_files"]
        lines += [
            "",
            f"end to end: bmcd.score over {n} BMP files on disk -> CSV, batch {bs} "
            "(ratio vs model-only, same backend and precision, timed right before and after)",
            f"{'arch':13s} {'backend':14s} {'engine':7s} {'img/s':>8s} {'seconds':>8s} "
            f"{'x model-only':>12s} {'CPU ms/img':>10s}",
        ]
        for r in report["end_to_end"]:
            label = r.get("label") or BACKEND_LABELS.get(f"ort_{r['precision']}", r["precision"])
            lines.append(
                f"{r['arch']:13s} {label:14s} {r['engine']:7s} "
                f"{_fmt(r['images_per_second']):>8s} {_fmt(r['seconds']):>8s} "
                f"{_fmt(r.get('ratio_to_model_only'), '.2f'):>12s} "
                f"{_fmt(r.get('cpu_ms_per_image'), '.2f'):>10s}"
            )
    if report.get("targets"):
        lines += ["", "targets (goals given to this run; measured on this machine)"]
        for t in report["targets"]:
            mark = "met" if t["met"] else "MISSED"
            lines.append(f"  {t['what']:48s} {t['target']:>7s}  {t['measured']:>8.2f}  {mark}")
    return "\n".join(lines)
