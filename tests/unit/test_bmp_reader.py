"""The direct BMP reader of the preprocessing hot path gives exactly OpenCV's pixels.

``bmcd.imageio._read_bmp`` reads uncompressed 24-bit BMPs without ``cv2.imdecode``
(docs/benchmarks.rst, preprocessing); anything else must fall back to OpenCV.
"""

from __future__ import annotations

import struct
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from bmcd.imageio import _read_bmp
from bmcd.preprocessing import PreprocessConfig, preprocess, read_image

SAMPLES = sorted(Path(__file__).resolve().parents[2].joinpath("..", "shared", "data", "cnmc-sample").glob("*/*.bmp"))


def _cv2_pixels(path: Path) -> np.ndarray:
    return cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)


def _write_bmp(path: Path, image: np.ndarray) -> Path:
    ok, buf = cv2.imencode(".bmp", image)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def _top_down(path: Path, out: Path) -> Path:
    """Rewrite a bottom-up 24-bit BMP as a top-down one (negative height, rows reversed)."""
    data = bytearray(path.read_bytes())
    (offset,) = struct.unpack_from("<I", data, 10)
    w, h = struct.unpack_from("<ii", data, 18)
    stride = (3 * w + 3) // 4 * 4
    rows = np.frombuffer(bytes(data[offset : offset + stride * h]), np.uint8).reshape(h, stride)
    data[offset : offset + stride * h] = rows[::-1].tobytes()
    struct.pack_into("<i", data, 22, -h)
    out.write_bytes(bytes(data))
    return out


@pytest.mark.skipif(not SAMPLES, reason="real C-NMC samples not available (../shared/data)")
def test_real_cnmc_bmps_match_opencv():
    for path in SAMPLES:
        got = _read_bmp(path)
        assert got is not None, path
        np.testing.assert_array_equal(got, _cv2_pixels(path), err_msg=str(path))


@pytest.mark.parametrize("width", [1, 2, 3, 5, 7, 33, 450])
def test_odd_widths_with_row_padding_match_opencv(tmp_path, width):
    rng = np.random.default_rng(width)
    image = rng.integers(0, 256, size=(9, width, 3), dtype=np.uint8)
    path = _write_bmp(tmp_path / "x.bmp", image)
    got = _read_bmp(path)
    assert got is not None
    np.testing.assert_array_equal(got, _cv2_pixels(path))
    np.testing.assert_array_equal(got, image)


def test_top_down_bmp_matches_opencv(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(11, 13, 3), dtype=np.uint8)
    path = _top_down(_write_bmp(tmp_path / "up.bmp", image), tmp_path / "down.bmp")
    got = _read_bmp(path)
    assert got is not None
    np.testing.assert_array_equal(got, image)
    np.testing.assert_array_equal(got, _cv2_pixels(path))


def test_other_bmps_fall_back_to_opencv(tmp_path):
    gray = np.arange(12 * 7, dtype=np.uint8).reshape(12, 7)
    palette = _write_bmp(tmp_path / "gray.bmp", gray)  # OpenCV writes 8-bit palette BMPs
    assert struct.unpack_from("<H", palette.read_bytes(), 28)[0] == 8
    assert _read_bmp(palette) is None
    bgra = np.dstack([gray, gray, gray, gray])
    four = _write_bmp(tmp_path / "bgra.bmp", bgra)  # 32-bit
    assert _read_bmp(four) is None
    png = tmp_path / "x.png"
    png.write_bytes(cv2.imencode(".png", gray)[1].tobytes())
    assert _read_bmp(png) is None
    # a truncated 24-bit file is OpenCV's to judge, not the fast reader's
    good = _write_bmp(tmp_path / "c.bmp", np.dstack([gray, gray, gray]))
    cut = tmp_path / "cut.bmp"
    cut.write_bytes(good.read_bytes()[:-20])
    assert _read_bmp(cut) is None
    # and preprocess still gives the OpenCV result for the palette file
    cfg = PreprocessConfig(image_size=8, threshold=0)
    np.testing.assert_array_equal(preprocess(palette, cfg), preprocess(read_image(palette), cfg))


def test_preprocess_from_path_equals_preprocess_from_decoded_pixels(tmp_path):
    rng = np.random.default_rng(3)
    image = np.zeros((60, 45, 3), np.uint8)
    image[10:50, 5:40] = rng.integers(20, 256, size=(40, 35, 3), dtype=np.uint8)
    path = _write_bmp(tmp_path / "cell.bmp", image)
    cfg = PreprocessConfig(image_size=32)
    rgb = image[..., ::-1]
    np.testing.assert_array_equal(preprocess(path, cfg), preprocess(np.ascontiguousarray(rgb), cfg))
    # the scratch buffers are reused, never handed out: results stay valid
    first = preprocess(path, cfg)
    other = _write_bmp(tmp_path / "other.bmp", np.full((60, 45, 3), 90, np.uint8))
    preprocess(other, cfg)
    np.testing.assert_array_equal(first, preprocess(path, cfg))
    assert read_image(path).flags.owndata or read_image(path).base is not None


def test_threads_do_not_share_scratch_buffers(tmp_path):
    rng = np.random.default_rng(5)
    paths, expected = [], []
    for i in range(6):
        image = np.zeros((50 + i, 40 + 2 * i, 3), np.uint8)
        image[5:40, 5:30] = rng.integers(30, 256, size=(35, 25, 3), dtype=np.uint8)
        paths.append(_write_bmp(tmp_path / f"{i}.bmp", image))
    cfg = PreprocessConfig(image_size=24)
    expected = [preprocess(p, cfg) for p in paths]
    errors: list[str] = []

    def work(k: int) -> None:
        for _ in range(30):
            for j, p in enumerate(paths[k:] + paths[:k]):
                if not np.array_equal(preprocess(p, cfg), expected[(j + k) % len(paths)]):
                    errors.append(f"thread {k}, {p}")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_the_direct_reader_keeps_the_pixel_limit(tmp_path):
    """A 24-bit BMP over the pixel limit is refused by the fast path before any allocation."""
    from bmcd.errors import ImageReadError
    from bmcd.imageio import set_max_pixels

    small = _write_bmp(tmp_path / "small.bmp", np.full((40, 30, 3), 90, np.uint8))
    assert _read_bmp(small) is not None  # the fast path reads this file
    set_max_pixels(1000)  # 40 x 30 = 1,200 pixels
    try:
        with pytest.raises(ImageReadError, match="more than the limit of 1,000 pixels"):
            _read_bmp(small)
        with pytest.raises(ImageReadError, match="small.bmp"):
            preprocess(small, PreprocessConfig(image_size=16))
    finally:
        set_max_pixels(None)
    assert preprocess(small, PreprocessConfig(image_size=16)).shape == (16, 16, 3)
