"""Preprocessing: decode, crop, pad and resize real 450x450 C-NMC BMPs to 224 px.

Real images from ``../shared/data/cnmc-sample`` when present, else synthetic cells; a
different file every round. "Single thread" means one calling thread *and* OpenCV's own
thread pool limited to one thread, i.e. one core. ``preprocess_batch(workers=2)`` uses
bmcd's two preprocessing threads (OpenCV's pool left as configured).

Parity after timing: decoding equals ``cv2.imread``; the fused resize-then-pad hot path
equals the composition of the small public steps (read_image -> crop_to_cell ->
pad_to_square -> resize) except at the one-pixel seam between cell and padding, so the
mean absolute difference must stay under 2 gray levels (a channel swap or a missed crop
gives tens); the threaded batch equals the single-image results exactly.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from _helpers import IMAGE_SIZE, Rotation, record, run_rotation
from bmcd.preprocessing import (
    PreprocessConfig,
    crop_to_cell,
    pad_to_square,
    preprocess,
    preprocess_batch,
    read_image,
    resize,
)

pytestmark = pytest.mark.benchmark(group="preprocessing")

CONFIG = PreprocessConfig(image_size=IMAGE_SIZE)
# mean |fused - composed| in gray levels; differences live on the seam only (measured
# <= 0.93 on the 30 real sample images)
SEAM_MEAN_ABS_TOLERANCE = 2.0
BATCH = 64


@pytest.fixture
def one_opencv_thread():
    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    yield
    cv2.setNumThreads(before)


def reference_preprocess(path) -> np.ndarray:
    image = read_image(path)
    cropped, _ = crop_to_cell(image, CONFIG.threshold, CONFIG.margin)
    return resize(pad_to_square(cropped), CONFIG.image_size, CONFIG.interpolation).astype(
        np.float32
    )


def test_decode_bmp(benchmark, source_files, one_opencv_thread):
    rot = Rotation(read_image, source_files)
    run_rotation(benchmark, rot, rounds=max(200, len(source_files)), warmup_rounds=10)
    for i, image in rot.outputs.items():
        expected = cv2.cvtColor(cv2.imread(str(source_files[i])), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(image, expected)
    record(benchmark, "preprocessing", "decode only (read_image), 1 thread", 1)


def test_preprocess_single_thread(benchmark, source_files, one_opencv_thread):
    rot = Rotation(lambda p: preprocess(p, CONFIG), source_files)
    run_rotation(benchmark, rot, rounds=max(300, len(source_files)), warmup_rounds=10)
    worst = 0.0
    for i, x in rot.outputs.items():
        assert x.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and x.dtype == np.float32
        mad = float(np.mean(np.abs(x - reference_preprocess(source_files[i]))))
        assert mad <= SEAM_MEAN_ABS_TOLERANCE, (source_files[i], mad)
        worst = max(worst, mad)
    record(
        benchmark,
        "preprocessing",
        "preprocess to 224, 1 thread",
        1,
        seam_mean_abs_diff=worst,
        cpu_ms_per_image=rot.cpu_ms_per_item(1),
        target_images_per_second=1000,
    )


def test_preprocess_batch_two_workers(benchmark, source_files):
    rng = np.random.default_rng(0)
    lists = [[source_files[j] for j in rng.integers(0, len(source_files), BATCH)] for _ in range(8)]
    rot = Rotation(lambda files: preprocess_batch(files, CONFIG, workers=2), lists)
    run_rotation(benchmark, rot, rounds=12, warmup_rounds=2)
    for i, batch in rot.outputs.items():
        expected = np.stack([preprocess(p, CONFIG) for p in lists[i]])
        np.testing.assert_array_equal(batch, expected)
    record(
        benchmark,
        "preprocessing",
        f"preprocess_batch({BATCH} files, workers=2)",
        BATCH,
        opencv_threads=cv2.getNumThreads(),
        cpu_ms_per_image=rot.cpu_ms_per_item(BATCH),
    )
