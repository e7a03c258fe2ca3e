"""The two benchmarks (model-only inference, end-to-end scoring) and the whole run.

Part of :mod:`bmcd.bench` (see docs/benchmarks.rst).
"""

from __future__ import annotations

import csv
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..artifact import read_model_meta
from ..data import iter_image_files
from ..errors import BenchError
from ..labels import label_names
from ..preprocessing import PreprocessConfig, preprocess_batch
from ..runtimes.onnx import OnnxRuntimeBackend
from ..scoring import score
from ._inputs import make_input_batches, source_images, write_bench_files
from ._machine import (
    cpu_share,
    cpu_times,
    loadavg,
    machine_info,
    matmul_gflops,
    process_cpu_seconds,
)
from ._models import (
    _BACKEND_FILES,
    backend_available,
    default_cache_dir,
    ensure_bench_model,
    load_predictors,
)
from ._parity import (
    BACKEND_LABELS,
    BACKEND_RUNTIMES,
    BACKENDS,
    INT8_SANITY_MAX_ABS_DIFF,
    PARITY_TOLERANCE,
    REDUCED_PRECISION,
    SCORE_PARITY_TOLERANCE,
    check_int8_sanity,
    check_parity,
)
from ._report import check_targets, evaluate_targets
from ._timing import time_calls, time_interleaved


def bench_inference(
    predictors: dict[str, Callable[[np.ndarray], np.ndarray]],
    images: np.ndarray,
    *,
    batch_sizes: Sequence[int] = (32, 1),
    seconds: float = 3.0,
    min_rounds: int = 3,
    n_inputs: int = 4,
    warmup: int = 2,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Time every predictor at every batch size on the same fresh inputs; check parity.

    The predictors are timed round-robin (:func:`time_interleaved`), so a burst of load
    from another process slows all of them alike and the ratios stay fair. The reference
    is ``keras_predict`` when present, else the first predictor. Every timed call's output
    on every input is compared with the reference's output on the same input
    (``PARITY_TOLERANCE``; int8 and bf16 against ORT fp32 with :func:`check_int8_sanity`).
    """
    rows: list[dict[str, Any]] = []
    names = list(predictors)
    for bs in batch_sizes:
        n_batches = n_inputs if bs > 1 else max(n_inputs, 8)
        inputs = make_input_batches(images, bs, n_batches, seed=bs)
        if log:
            log(f"  batch {bs}: {', '.join(BACKEND_LABELS.get(n, n) for n in names)}, interleaved")
        results = time_interleaved(
            predictors,
            inputs,
            batch_size=bs,
            seconds=seconds * len(names),
            min_rounds=min_rounds,
            warmup=warmup,
        )
        ref_name = "keras_predict" if "keras_predict" in results else names[0]
        ref_out = results[ref_name][1]
        base = results[ref_name][0].images_per_second
        for name in names:
            timing, outs = results[name]
            reduced = name in REDUCED_PRECISION or ref_name in REDUCED_PRECISION
            if reduced and name != ref_name:
                # against ORT fp32 when it ran, else the reference (itself reduced, or
                # fp32 against a reduced reference): sanity bounds, not the fp32 tolerance
                use_fp32 = "ort_fp32" in results and name in REDUCED_PRECISION
                fp32 = "ort_fp32" if use_fp32 else ref_name
                against, tol = results[fp32][1], INT8_SANITY_MAX_ABS_DIFF
                what = BACKEND_LABELS.get(fp32, fp32)
                common = [i for i in outs if i in against]
                diffs = [
                    check_int8_sanity(name, [outs[i] for i in common], [against[i] for i in common])
                ]
            else:
                against, tol, what = ref_out, PARITY_TOLERANCE.get(name, 1e-4), ref_name
                diffs = [
                    check_parity(name, outs[i], against[i], tol, what=what)
                    for i in outs
                    if i in against
                ]
            row = {
                "backend": name,
                "label": BACKEND_LABELS.get(name, name),
                **timing.to_dict(),
                "ratio_to_reference": timing.images_per_second / base if base > 0 else None,
                "reference": ref_name,
                "parity_against": what,
                "parity_max_abs_diff": max(diffs) if diffs else None,
                "parity_tolerance": tol,
            }
            rows.append(row)
    return rows


def check_score_output(
    out_csv: str | os.PathLike,
    model_dir: str | os.PathLike,
    files: Sequence[str | os.PathLike],
    *,
    precision: str = "fp32",
    predictor: Callable[[np.ndarray], np.ndarray] | None = None,
    check: int = 16,
    label: str = "score",
) -> float:
    """Check a scoring CSV; return max ``|dp|`` on the checked rows.

    The CSV must hold one row per file of ``files``, in that order, with no error, and the
    ``p_all`` of ``check`` rows spread over the file must equal ``predictor`` (default: a
    fresh ONNX Runtime session of ``precision``) on
    :func:`~bmcd.preprocessing.preprocess_batch` of the same files, within
    ``SCORE_PARITY_TOLERANCE``. Every row's ``threshold`` must be the model's, and its
    ``label`` the one :func:`bmcd.labels.label_names` gives for its ``p_all``. Raises
    :class:`BenchError` otherwise.
    """
    with open(out_csv, newline="", encoding="utf-8", errors="surrogateescape") as f:
        rows = list(csv.DictReader(f))
    expected_paths = [os.path.abspath(p) for p in files]
    got_paths = [os.path.abspath(r["path"]) for r in rows]
    n_err = sum(1 for r in rows if r.get("error"))
    if got_paths != expected_paths or n_err:
        raise BenchError(
            f"{label} wrote {len(rows)} rows ({n_err} with errors) for {len(files)} files; "
            f"expected one good row per file, in input order."
        )
    if not rows:
        return 0.0
    meta = read_model_meta(model_dir)
    thresholds = {r["threshold"] for r in rows}
    if len(thresholds) != 1 or float(thresholds.pop()) != float(meta.threshold):
        raise BenchError(
            f"{label} wrote thresholds {sorted({r['threshold'] for r in rows})[:3]}; expected "
            f"the model's {meta.threshold} in every row."
        )
    p_all = np.array([float(r["p_all"]) for r in rows], dtype=np.float32)
    want = label_names(p_all, meta.threshold)
    wrong = [i for i, r in enumerate(rows) if r["label"] != want[i]]
    if wrong:
        i = wrong[0]
        raise BenchError(
            f"{label} wrote {len(wrong)} wrong labels; e.g. row {i + 1}: p_all "
            f"{rows[i]['p_all']} with threshold {meta.threshold} is {want[i]!r}, the CSV says "
            f"{rows[i]['label']!r}."
        )
    idx = np.unique(np.linspace(0, len(rows) - 1, num=min(check, len(rows))).astype(int))
    sample = [rows[i] for i in idx]
    if predictor is None:
        predictor = OnnxRuntimeBackend.load(model_dir, precision=precision).predict_batch
    config = meta.preprocess
    expected = predictor(preprocess_batch([r["path"] for r in sample], config))
    got = np.array([float(r["p_all"]) for r in sample])
    return check_parity(
        label, got, expected, SCORE_PARITY_TOLERANCE, what="the same model on preprocess_batch"
    )


def bench_score(
    model_dir: str | os.PathLike,
    files_dir: str | os.PathLike,
    out_csv: str | os.PathLike,
    *,
    precision: str = "int8",
    engine: str = "local",
    batch_size: int = 32,
    workers: int | None = None,
    check: int = 16,
    predictor: Callable[[np.ndarray], np.ndarray] | None = None,
    backend: str = "onnx",
    backend_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run :func:`bmcd.scoring.score` once over ``files_dir``, timed, and check its CSV.

    The time is the wall clock of the whole call, as a user sees it: listing the files,
    loading the model (and for Dask starting the local cluster), scoring, writing.
    See :func:`check_score_output` for the checks.
    """
    out_csv = Path(out_csv)
    if out_csv.exists():
        out_csv.unlink()
    files = [Path(p) for p in iter_image_files(files_dir)]  # what score() lists, in order
    cpu0 = process_cpu_seconds()
    t0 = time.perf_counter()
    summary = score(
        model_dir,
        [str(files_dir)],
        out_csv,
        batch_size=batch_size,
        workers=workers,
        precision=precision,
        engine=engine,
        progress=False,
        backend=backend,
        backend_options=backend_options,
    )
    wall = time.perf_counter() - t0
    cpu1 = process_cpu_seconds()
    diff = check_score_output(
        out_csv,
        model_dir,
        files,
        precision=precision,
        predictor=predictor,
        check=check,
        label=f"score ({backend}, {engine}, {precision})",
    )
    return {
        "backend": backend,
        "precision": precision,
        "engine": engine,
        "n_files": len(files),
        "batch_size": batch_size,
        "seconds": wall,
        "images_per_second": len(files) / wall,
        "score_seconds": summary.seconds,
        "cpu_ms_per_image": (
            1000 * (cpu1 - cpu0) / len(files) if files and cpu0 is not None and cpu1 else None
        ),
        "parity_max_abs_diff": diff,
    }


def _has_dask() -> bool:
    import importlib.util

    return importlib.util.find_spec("distributed") is not None


def run_bench(
    archs: Sequence[str] = ("mobilenet_v2", "resnet50"),
    *,
    image_size: int = 224,
    batch_size: int = 32,
    seconds: float = 3.0,
    e2e: bool = True,
    n_files: int = 2000,
    e2e_precisions: Sequence[str] = ("fp32", "int8"),
    e2e_runtimes: Sequence[str] = ("onnx",),
    dask: bool | None = None,
    images: str | os.PathLike | None = None,
    model: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    rebuild: bool = False,
    backends: Sequence[str] = BACKENDS,
    matmul_size: int = 4096,
    log: Callable[[str], None] | None = None,
    targets: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run the inference and end-to-end benchmarks; return a JSON-serialisable report.

    Parameters
    ----------
    archs : sequence of str
        Architectures to build random-weight models for (ignored with ``model``).
    image_size, batch_size : int
    seconds : float
        Time budget per backend and batch size (at least 3 timed calls each); the
        backends of one batch size are timed interleaved, round by round.
    e2e : bool
        Also time :func:`bmcd.scoring.score` over ``n_files`` files.
    e2e_precisions : sequence of str
        Precisions scored end to end with the local engine (``"fp32"``, ``"bf16"``,
        ``"int8"``; bf16 only with OpenVINO).
    e2e_runtimes : sequence of str
        Runtimes scored end to end: ``"onnx"`` and/or ``"openvino"``.
    dask : bool, optional
        Add a Dask local-cluster row (int8) beside the local engine. Default: when the
        ``scale`` extra is installed.
    images : path, optional
        Folder of images to benchmark on (e.g. real C-NMC BMPs). Default: synthetic cells.
    model : path, optional
        An existing model directory to benchmark instead of random-weight models.
    cache_dir : path, optional
        Where benchmark models and files are kept (default :func:`default_cache_dir`).
    rebuild : bool
        Rebuild cached benchmark models.
    backends : sequence of str
        Subset of :data:`BACKENDS` to time.
    matmul_size : int
        Side of the float32 matmul that measures the fp32 ceiling (:func:`matmul_gflops`).
    log : callable, optional
        Called with progress messages.
    targets : sequence of dict, optional
        Speed goals to check the measurements against (:func:`evaluate_targets`; e.g.
        :func:`load_targets` of ``benchmarks/targets.py``). bmcd ships none: goals belong
        to a machine. Without them ``report["targets"]`` is empty.
    """
    if targets is not None:
        targets = check_targets(targets)  # fail before minutes of measuring
    say = log or (lambda _msg: None)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    if dask is None:
        dask = _has_dask()
    t_start = time.perf_counter()
    load_start = loadavg()
    cpu_start = cpu_times()
    say("measuring the fp32 matmul rate (the fp32 ceiling) ...")
    gflops = matmul_gflops(matmul_size)
    src_files, src_desc = source_images(images, cache)
    report: dict[str, Any] = {
        "bmcd_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {
            "image_size": int(image_size),
            "batch_size": int(batch_size),
            "seconds": float(seconds),
            "n_files": int(n_files) if e2e else 0,
            "images": src_desc,
        },
        "inference": [],
        "end_to_end": [],
    }
    if model is not None:
        meta = read_model_meta(model)
        models = [(meta.arch, Path(model), meta.image_size)]
    else:
        models = [(a, None, int(image_size)) for a in archs]

    for arch, mdir, size in models:
        config = PreprocessConfig(image_size=size)
        imgs = preprocess_batch(src_files[:64], config)
        if mdir is None:
            mdir = ensure_bench_model(arch, size, cache, imgs, rebuild=rebuild, log=say)
        present = {b: backend_available(mdir, b, force_bf16=model is None) for b in backends}
        avail = [b for b in backends if present[b][0]]
        for b in backends:
            if not present[b][0]:
                say(f"{arch}: skipping {BACKEND_LABELS[b]} ({present[b][1]})")
        if not avail:
            raise BenchError(
                f"'{mdir}' has none of {', '.join(dict.fromkeys(_BACKEND_FILES.values()))}; "
                "expected a model directory written by Classifier.save() or `bmcd train`."
            )
        say(f"{arch} @ {size} px: inference, batch {batch_size} and 1 ...")
        # bf16 without a gate only for the random-weight models (a gate means nothing there)
        predictors = load_predictors(mdir, avail, force_bf16=model is None)
        rows = bench_inference(
            predictors,
            imgs,
            batch_sizes=(batch_size, 1) if batch_size != 1 else (1,),
            seconds=seconds,
            log=say,
        )
        for r in rows:
            r["arch"] = arch
            r["image_size"] = size
        report["inference"].extend(rows)
        if e2e:
            files_dir = cache / f"files-{n_files}"
            write_bench_files(src_files, files_dir, n_files)
            by_runtime = {v: k for k, v in BACKEND_RUNTIMES.items()}
            runs = [
                (by_runtime[(rt, p)], "local")
                for rt in e2e_runtimes
                for p in e2e_precisions
                if by_runtime.get((rt, p)) in avail
            ]
            if dask and "ort_int8" in avail:
                runs.append(("ort_int8", "dask"))
            mo_inputs = make_input_batches(imgs, batch_size, 4, seed=7)
            with tempfile.TemporaryDirectory(prefix="bmcd-bench-") as tmp:
                for name, engine in runs:
                    runtime, precision = BACKEND_RUNTIMES[name]
                    say(f"  score {n_files} files, {BACKEND_LABELS[name]}, engine {engine} ...")
                    ort_fn = predictors[name]
                    # model-only ORT right before and right after the run, so that the
                    # ratio compares the same moments of a possibly shared machine
                    before, _ = time_calls(
                        ort_fn, mo_inputs, batch_size=batch_size, seconds=seconds, warmup=1
                    )
                    res = bench_score(
                        mdir,
                        files_dir,
                        Path(tmp) / f"{name}-{engine}.csv",
                        precision=precision,
                        engine=engine,
                        batch_size=batch_size,
                        predictor=ort_fn,
                        backend=runtime,
                        backend_options=(
                            {"force_bf16": True} if precision == "bf16" and model is None else None
                        ),
                    )
                    after, _ = time_calls(
                        ort_fn, mo_inputs, batch_size=batch_size, seconds=seconds, warmup=0
                    )
                    mo = (before.images_per_second + after.images_per_second) / 2
                    res.update(
                        bench_backend=name,
                        label=BACKEND_LABELS[name],
                        arch=arch,
                        image_size=size,
                        model_only_images_per_second=mo,
                        ratio_to_model_only=res["images_per_second"] / mo if mo else None,
                    )
                    report["end_to_end"].append(res)
        del predictors

    report["machine"] = machine_info()
    # the machine's speed can drift (shared hosts): the ceiling is the faster of two tries
    gflops_end = matmul_gflops(matmul_size)
    report["machine"]["matmul_gflops"] = max(gflops, gflops_end)
    report["machine"]["matmul_gflops_start_end"] = [round(gflops, 1), round(gflops_end, 1)]
    report["contention"] = {
        "loadavg_start": load_start,
        "loadavg_end": loadavg(),
        "wall_s": time.perf_counter() - t_start,
        **cpu_share(cpu_start),
    }
    report["targets"] = evaluate_targets(report, targets) if targets else []
    return report
