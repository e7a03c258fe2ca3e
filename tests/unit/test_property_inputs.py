"""Property-based tests (issue 12): whatever bytes or images arrive, bmcd answers with a
:class:`~bmcd.errors.BmcdError` or a correct result, never another exception, and memory
stays bounded by the pixel limit (docs/models.rst, "Pixel limit").
"""

from __future__ import annotations

import resource
import struct
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bmcd import imageio
from bmcd.errors import BmcdError
from bmcd.preprocessing import PreprocessConfig, preprocess, preprocess_with_info, read_image

CFG = PreprocessConfig(image_size=16)
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

# byte strings that start like a real image header, then go random
_MAGIC = [b"", b"BM", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*"]


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@SETTINGS
@given(magic=st.sampled_from(_MAGIC), body=st.binary(max_size=600))
def test_random_bytes_give_only_bmcd_errors(magic, body):
    data = magic + body
    before = _maxrss_mib()
    try:
        x = preprocess(data, CFG)
    except BmcdError:
        pass
    else:  # random bytes that happen to decode: still a proper network input
        assert x.shape == (16, 16, 3) and x.dtype == np.float32
    assert _maxrss_mib() - before < 512  # nothing decodes to gigabytes


def _png_ihdr(w: int, h: int, depth: int, colour: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
            + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)))


@SETTINGS
@given(w=st.integers(1, 2**31 - 1), h=st.integers(1, 2**31 - 1),
       depth=st.sampled_from([1, 8, 16]), colour=st.sampled_from([0, 2, 6]),
       tail=st.binary(max_size=200))
def test_png_headers_claiming_any_size_are_bounded(w, h, depth, colour, tail):
    before = _maxrss_mib()
    try:
        preprocess(_png_ihdr(w, h, depth, colour) + tail, CFG)
    except BmcdError as exc:
        if w * h > imageio.get_max_pixels():
            assert "pixels" in str(exc)
    assert _maxrss_mib() - before < 512


@SETTINGS
@given(
    h=st.integers(1, 120), w=st.integers(1, 120), channels=st.sampled_from([1, 3, 4]),
    depth=st.sampled_from([np.uint8, np.uint16]), ext=st.sampled_from([".png", ".tif", ".bmp",
                                                                      ".jpg"]),
    seed=st.integers(0, 2**16),
)
def test_random_valid_images_of_any_size_and_depth(h, w, channels, depth, ext, seed):
    if ext in (".bmp", ".jpg"):
        assume(depth == np.uint8)  # OpenCV writes these formats at 8 bits only
    if ext == ".jpg":
        assume(channels != 4)
    rng = np.random.default_rng(seed)
    top = 255 if depth == np.uint8 else 65535
    shape = (h, w) if channels == 1 else (h, w, channels)
    img = rng.integers(0, top + 1, size=shape, dtype=np.uint64).astype(depth)
    ok, buf = cv2.imencode(ext, img)
    assume(ok)
    data = buf.tobytes()
    rgb = read_image(data)
    assert rgb.shape == (h, w, 3) and rgb.dtype == np.uint8
    x, info = preprocess_with_info(data, CFG)
    assert x.shape == (16, 16, 3) and x.dtype == np.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 255.0
    assert info.original_shape == (h, w)
    # the same image as an array gives the same input (one path for bytes and arrays)
    if ext in (".png", ".tif", ".bmp") and channels != 4:
        assert np.array_equal(preprocess(rgb, CFG), x)
    # the truncated file is an ImageReadError or decodes, nothing else
    try:
        preprocess(data[: max(1, len(data) // 2)], CFG)
    except BmcdError:
        pass


@SETTINGS
@given(body=st.binary(max_size=400),
       header=st.sampled_from([b"", b"path,label\n", b"path,label,subject\n"]))
def test_manifest_of_random_bytes_gives_only_bmcd_errors(tmp_path_factory, body, header):
    from bmcd.data import load_dataset

    d = tmp_path_factory.mktemp("manifest")
    path = d / "manifest.csv"
    path.write_bytes(header + body)
    try:
        load_dataset(path)
    except BmcdError:
        pass


@pytest.mark.parametrize("size", [1, 2, 7])
def test_tiny_images_preprocess(size):
    x, info = preprocess_with_info(np.full((size, size, 3), 200, np.uint8), CFG)
    assert x.shape == (16, 16, 3) and info.no_cell
