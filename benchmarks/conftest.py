"""Fixtures shared by the benchmark suites.

Run from the repository root::

    pytest benchmarks --benchmark-only

Timing is pytest-benchmark's (``benchmark.pedantic`` with warm-up rounds). Every round
gets a different input (:class:`Rotation`), and every suite checks the timed outputs
after timing, so a fast wrong answer fails the run. Images per second and the ratios
between backends go into each benchmark's ``extra_info`` (see ``--benchmark-json``) and
into the summary printed at the end of the run.

Benchmark models (random weights; see :func:`bmcd.bench.build_bench_model`) and image
files are built once and kept in pytest's cache folder (``benchmarks/.pytest_cache``), or
in ``$BMCD_BENCH_CACHE`` when set.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BMCD_SHARED_DATA", ROOT.parent / "shared" / "data"))
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))  # for _tiny_models

from _helpers import IMAGE_SIZE, SUMMARY  # noqa: E402

# ---------------------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------------------


def pytest_report_header(config) -> list[str]:
    from bmcd.bench import machine_info

    m = machine_info()
    return [
        f"bmcd bench machine: {m['cpu_model']}, {m['usable_cores']} usable cores, "
        f"onnxruntime {m.get('onnxruntime')}, load average {m.get('loadavg')}",
        f"instruction sets: {' '.join(m['isa'])}; ORT kernels: fp32 {m['ort_kernels']['fp32']}, "
        f"int8 {m['ort_kernels']['int8']}",
    ]


def pytest_benchmark_update_machine_info(config, machine_info: dict) -> None:
    from bmcd.bench import machine_info as bmcd_machine_info

    machine_info["bmcd"] = bmcd_machine_info()


#: Suites run in this order (cheap to expensive, model-only before end to end), whatever
#: the file names' alphabetical order.
SUITE_ORDER = ("bench_preprocessing", "bench_inference", "bench_end_to_end", "bench_footprint")


def pytest_collection_modifyitems(session, config, items) -> None:
    def rank(item) -> int:
        name = item.module.__name__.rpartition(".")[2] if item.module else ""
        return SUITE_ORDER.index(name) if name in SUITE_ORDER else len(SUITE_ORDER)

    items.sort(key=rank)  # stable: keeps the order inside each module


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not SUMMARY:
        return
    tr = terminalreporter
    tr.section("bmcd benchmark summary (images/s from the median round)")
    for suite, name, text in SUMMARY:
        tr.write_line(f"{suite:14s} {name:42s} {text}")


# ---------------------------------------------------------------------------------------
# data and models
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def cache_dir(request) -> Path:
    """Persistent folder for benchmark models and files."""
    env = os.environ.get("BMCD_BENCH_CACHE")
    if env:
        d = Path(env)
        d.mkdir(parents=True, exist_ok=True)
        return d
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir("bmcd-bench"))
    from bmcd.bench import default_cache_dir

    d = default_cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="session")
def source_files(cache_dir: Path) -> list[Path]:
    """Real 450x450 C-NMC BMPs from ../shared/data/cnmc-sample, else synthetic cells."""
    from bmcd.bench import source_images
    from bmcd.data import iter_image_files

    real = SHARED_DATA / "cnmc-sample"
    folder = real if real.is_dir() and next(iter_image_files(real), None) else None
    files, _ = source_images(folder, cache_dir)
    return files


@pytest.fixture(scope="session")
def images224(source_files: list[Path]) -> np.ndarray:
    """The source images preprocessed to 224 px (at most 64)."""
    from bmcd.preprocessing import PreprocessConfig, preprocess_batch

    return preprocess_batch(source_files[:64], PreprocessConfig(image_size=IMAGE_SIZE))


@pytest.fixture(scope="session")
def bench_model(cache_dir: Path, images224: np.ndarray) -> Callable[[str], Path]:
    """``bench_model(arch)``: a cached random-weight model directory (keras, fp32, int8)."""
    pytest.importorskip("tensorflow", reason="benchmark models are built with the train extra")
    pytest.importorskip("tf2onnx", reason="benchmark models are exported with tf2onnx")
    from bmcd.bench import ensure_bench_model

    made: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in made:
            made[arch] = ensure_bench_model(
                arch, IMAGE_SIZE, cache_dir, images224, log=lambda m: print(m, file=sys.stderr)
            )
        return made[arch]

    return get


@pytest.fixture(scope="session")
def predictors(bench_model) -> Callable[[str], dict]:
    """``predictors(arch)``: keras predict, tf.function, ORT fp32 and int8, and OpenVINO
    f32, bf16 and int8 callables (the OpenVINO ones where the extra is installed, bf16
    where the CPU has native bf16; bf16 forced: a gate means nothing for random weights)."""
    from bmcd.bench import BACKENDS, backend_available, load_predictors

    loaded: dict[str, dict] = {}

    def get(arch: str) -> dict:
        if arch not in loaded:
            loaded.clear()  # keep one architecture's models in memory at a time
            d = bench_model(arch)
            avail = [b for b in BACKENDS if backend_available(d, b, force_bf16=True)[0]]
            loaded[arch] = load_predictors(d, avail, force_bf16=True)
        return loaded[arch]

    return get


@pytest.fixture(scope="session")
def files_2000(cache_dir: Path, source_files: list[Path]) -> Path:
    """2,000 BMP files on disk (rotations/reflections of the sources, then symlinks)."""
    from bmcd.bench import write_bench_files

    d = cache_dir / "files-2000"
    write_bench_files(source_files, d, 2000)
    return d


@pytest.fixture(scope="session")
def files_20000(cache_dir: Path, source_files: list[Path]) -> Path:
    """20,000 BMP files on disk (the same few hundred distinct images, symlinked)."""
    from bmcd.bench import write_bench_files

    d = cache_dir / "files-20000"
    write_bench_files(source_files, d, 20000)
    return d
