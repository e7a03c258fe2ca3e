"""Soak: scoring 100,000 small files keeps memory flat and writes exactly one row each.

The benchmark makes its own files: a few hundred distinct 32x32 BMP cells, hard-linked
into 100,000 directory entries (100 folders of 1,000), so the disk cost is that of the
distinct files while every entry is listed, opened and decoded for real. The tiny ONNX
model (``tests/_tiny_models.py``) keeps inference out of the way, so the run measures the
listing, the pipeline and the CSV sink. Each run is a fresh interpreter; its peak RSS
(``VmHWM``) for 100,000 files must be within 1.2x of that for 10,000 files, and the CSV
must hold one row per file, in listing order, with no error (docs/scaling.rst).

Run it alone (minutes on 2 cores)::

    pytest benchmarks/bench_soak.py --benchmark-disable -s
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from _helpers import RESULTS, record
from bench_footprint import SCORE_CODE, run_python  # the same measured subprocess

pytestmark = [pytest.mark.benchmark(group="soak"), pytest.mark.slow]

#: The target: peak RSS for 100,000 files <= this many times that for 10,000.
SOAK_TARGET_RATIO = 1.2
N_DISTINCT = 500
PER_FOLDER = 1000


def make_files(root: Path, n: int) -> Path:
    """``n`` files under ``root/files-<n>`` (hard links to ``N_DISTINCT`` BMPs), cached."""
    from _tiny_models import write_cell_images

    d = root / f"files-{n}"
    done = d / ".complete"
    if done.is_file() and done.read_text() == str(n):
        return d
    distinct = write_cell_images(root / "distinct", N_DISTINCT, size=32, seed=11)
    for i in range(n):
        folder = d / f"f{i // PER_FOLDER:04d}"
        if i % PER_FOLDER == 0:
            folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"UID_{i % 7 + 1}_{i}_1_all.bmp"
        if not target.exists():
            os.link(distinct[i % N_DISTINCT], target)
    done.write_text(str(n))
    return d


@pytest.fixture(scope="module")
def soak_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("soak")


@pytest.fixture(scope="module")
def tiny32(tmp_path_factory) -> Path:
    from _tiny_models import build_tiny_onnx_model

    return build_tiny_onnx_model(tmp_path_factory.mktemp("tiny32"), image_size=32)


def count_rows(out: Path) -> tuple[int, int, list[str]]:
    with open(out, newline="", encoding="utf-8", errors="surrogateescape") as f:
        reader = csv.reader(f)
        header = next(reader)
        n = n_err = 0
        first: list[str] = []
        for row in reader:
            n += 1
            n_err += bool(row[4])
            if len(first) < 3:
                first.append(row[0])
    return n, n_err, header


@pytest.mark.parametrize("n_files", [10_000, 100_000])
def test_soak_peak_rss(benchmark, soak_root, tiny32, tmp_path, n_files):
    files_dir = make_files(soak_root, n_files)
    out = tmp_path / "scores.csv"
    results = []
    benchmark.pedantic(
        lambda: results.append(
            run_python(SCORE_CODE, str(tiny32), str(files_dir), str(out), timeout=3600)
        ),
        setup=lambda: out.unlink(missing_ok=True),
        rounds=1,
        warmup_rounds=0,
        iterations=1,
    )
    r = results[-1]
    n_rows, n_err, _ = count_rows(out)
    assert (r["n_scored"], r["n_errors"]) == (n_files, 0)
    assert (n_rows, n_err) == (n_files, 0), f"{n_rows} rows ({n_err} errors) for {n_files} files"
    peak_mib = r["peak_kib"] / 1024
    RESULTS[("soak_peak_rss_mib", n_files)] = peak_mib
    extra = {"peak_rss_mib": peak_mib, "seconds": r["seconds"],
             "images_per_second": n_files / r["seconds"]}
    if n_files == 100_000:
        small = RESULTS.get(("soak_peak_rss_mib", 10_000))
        if small is None:
            small_out = tmp_path / "scores-10000.csv"
            small = run_python(SCORE_CODE, str(tiny32), str(make_files(soak_root, 10_000)),
                               str(small_out), timeout=3600)["peak_kib"] / 1024
        ratio = peak_mib / small
        extra["peak_rss_ratio_to_10000_files"] = ratio
        assert ratio <= SOAK_TARGET_RATIO, (
            f"peak RSS for 100,000 files is {peak_mib:.1f} MiB, {ratio:.2f}x the {small:.1f} "
            f"MiB for 10,000; the target is <= {SOAK_TARGET_RATIO}x"
        )
    record(benchmark, "soak", f"score {n_files} files, tiny model 32 px (subprocess)", None,
           **extra)
