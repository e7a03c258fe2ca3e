"""The one preprocessing path, tested on tiny arrays whose answer can be seen."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bmcd.errors import BmcdError, ImageReadError
from bmcd.preprocessing import (
    PreprocessConfig,
    crop_to_cell,
    find_cell_bbox,
    pad_to_square,
    preprocess,
    preprocess_batch,
    preprocess_with_info,
    read_image,
    resize,
    resize_to_square,
    to_rgb_uint8,
)


def _encode(rgb: np.ndarray, ext: str = ".bmp") -> bytes:
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


# --- config ------------------------------------------------------------------------------


def test_config_roundtrips_through_json():
    cfg = PreprocessConfig(image_size=96, threshold=5, interpolation="linear", margin=2)
    assert PreprocessConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize(
    "kwargs",
    [
        {"image_size": 0},
        {"image_size": 224.0},
        {"image_size": True},
        {"threshold": -1},
        {"threshold": 255},
        {"interpolation": "bogus"},
        {"margin": -3},
    ],
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError, match="PreprocessConfig"):
        PreprocessConfig(**kwargs)


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="Unknown PreprocessConfig keys"):
        PreprocessConfig.from_dict({"image_size": 32, "mean": [0, 0, 0]})


def test_bad_arguments_raise_config_error():
    from bmcd.errors import ConfigError

    with pytest.raises(ConfigError, match="between 8 and 4096"):
        PreprocessConfig(image_size=4)
    with pytest.raises(ConfigError, match="expects a dict"):
        PreprocessConfig.from_dict([("image_size", 32)])
    with pytest.raises(ConfigError, match="workers must be >= 1"):
        preprocess_batch([np.zeros((16, 16, 3), np.uint8)], PreprocessConfig(32), workers=0)
    assert issubclass(ConfigError, BmcdError) and issubclass(ConfigError, ValueError)


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        PreprocessConfig().image_size = 10  # type: ignore[misc]


# --- pure steps on hand-made arrays -------------------------------------------------------


def test_crop_to_tiny_rectangle():
    img = np.zeros((10, 12, 3), np.uint8)
    img[2:5, 3:9] = 100  # rows 2..4, cols 3..8
    assert find_cell_bbox(img, 10) == (3, 2, 6, 3)
    crop, found = crop_to_cell(img, 10)
    assert found and crop.shape == (3, 6, 3)
    assert (crop == 100).all()


def test_crop_takes_the_largest_contour_not_the_first():
    img = np.zeros((20, 20), np.uint8)
    img[0:2, 0:2] = 255  # a speck listed first by OpenCV (top-left)
    img[8:18, 6:16] = 255  # the cell
    assert find_cell_bbox(img, 10) == (6, 8, 10, 10)


def test_threshold_is_strict():
    img = np.zeros((8, 8), np.uint8)
    img[2:4, 2:4] = 10
    assert find_cell_bbox(img, 10) is None
    assert find_cell_bbox(img, 9) == (2, 2, 2, 2)


def test_margin_is_clipped_to_the_image():
    img = np.zeros((10, 10, 3), np.uint8)
    img[0:3, 7:10] = 200  # touches top and right border
    crop, found = crop_to_cell(img, 10, margin=2)
    assert found and crop.shape == (5, 5, 3)


def test_pad_to_square_centres_with_black():
    img = np.full((2, 4, 3), 7, np.uint8)
    sq = pad_to_square(img)
    assert sq.shape == (4, 4, 3)
    assert (sq[0] == 0).all() and (sq[3] == 0).all()
    assert (sq[1:3] == 7).all()
    odd = pad_to_square(np.full((1, 4), 9, np.uint8))
    assert odd.shape == (4, 4) and (odd[1] == 9).all()  # extra row goes to the bottom


def test_resize_to_square_matches_pad_then_resize():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(120, 60, 3), dtype=np.uint8)
    fast = resize_to_square(img, 32).astype(float)
    ref = resize(pad_to_square(img), 32).astype(float)
    assert fast.shape == ref.shape == (32, 32, 3)
    # identical away from the seam between image and padding
    assert np.abs(fast[:, 10:22] - ref[:, 10:22]).max() <= 2
    assert (fast[:, :7] == 0).all() and (fast[:, 25:] == 0).all()


def test_aspect_ratio_is_kept():
    img = np.zeros((50, 100, 3), np.uint8)
    img[10:30, 10:90] = 255  # 80 x 20 cell, aspect 4:1
    x = preprocess(img, PreprocessConfig(image_size=40))
    rows = np.where(x[:, :, 0].max(axis=1) > 0)[0]
    cols = np.where(x[:, :, 0].max(axis=0) > 0)[0]
    assert len(cols) == 40
    assert 9 <= len(rows) <= 11  # 40 / 4 = 10


def test_colour_order_red_stays_red():
    img = np.zeros((30, 30, 3), np.uint8)
    img[5:25, 5:25] = (255, 0, 0)  # RGB red
    for item in (img, _encode(img, ".bmp"), _encode(img, ".png")):
        x = preprocess(item, PreprocessConfig(image_size=16))
        centre = x[8, 8]
        assert centre[0] == 255 and centre[1] == 0 and centre[2] == 0
    assert tuple(read_image(_encode(img))[10, 10]) == (255, 0, 0)


def test_output_is_float32_rgb_in_range():
    img = np.zeros((40, 60, 3), np.uint8)
    img[10:20, 5:45] = (200, 30, 30)
    x = preprocess(img, PreprocessConfig(image_size=32))
    assert x.shape == (32, 32, 3) and x.dtype == np.float32
    assert x.min() >= 0 and x.max() <= 255


# --- decoding: formats and dtypes ----------------------------------------------------------


def test_grayscale_becomes_three_channels():
    gray = np.zeros((20, 20), np.uint8)
    gray[5:15, 5:15] = 128
    ok, buf = cv2.imencode(".png", gray)
    rgb = read_image(buf.tobytes())
    assert rgb.shape == (20, 20, 3) and (rgb[10, 10] == 128).all()


def test_rgba_drops_alpha():
    bgra = np.zeros((20, 20, 4), np.uint8)
    bgra[5:15, 5:15] = (0, 0, 255, 77)  # red in BGRA, alpha 77
    ok, buf = cv2.imencode(".png", bgra)
    rgb = read_image(buf.tobytes())
    assert rgb.shape == (20, 20, 3) and tuple(rgb[10, 10]) == (255, 0, 0)


def test_sixteen_bit_is_scaled_to_eight_bit():
    img16 = np.zeros((20, 20, 3), np.uint16)
    img16[5:15, 5:15] = 65535
    ok, buf = cv2.imencode(".png", img16)
    rgb = read_image(buf.tobytes())
    assert rgb.dtype == np.uint8 and (rgb[10, 10] == 255).all()
    assert (to_rgb_uint8(np.full((2, 2), 256 * 200, np.uint16))[0, 0] == 200).all()


def test_float_arrays_in_unit_range_are_scaled():
    arr = np.zeros((10, 10, 3), np.float64)
    arr[2:8, 2:8] = 1.0
    assert to_rgb_uint8(arr)[5, 5].tolist() == [255, 255, 255]


def test_jpeg_path(tmp_path):
    img = np.zeros((64, 64, 3), np.uint8)
    img[16:48, 20:44] = (120, 60, 160)
    p = tmp_path / "cell.jpg"
    p.write_bytes(_encode(img, ".jpg"))
    x, info = preprocess_with_info(p, PreprocessConfig(image_size=32))
    assert info.found_cell and x.shape == (32, 32, 3)
    # the default threshold ignores JPEG ringing in the black background: the crop is tight
    bx, by, bw, bh = info.bbox
    assert abs(bx - 20) <= 1 and abs(by - 16) <= 1 and abs(bw - 24) <= 2 and abs(bh - 32) <= 2


# --- edge cases that must not crash --------------------------------------------------------


def test_all_black_is_kept_whole_and_flagged():
    img = np.zeros((30, 50, 3), np.uint8)
    x, info = preprocess_with_info(img, PreprocessConfig(image_size=16))
    assert not info.found_cell
    assert info.bbox == (0, 0, 50, 30)
    assert x.shape == (16, 16, 3) and (x == 0).all()


def test_cell_touching_the_border():
    img = np.zeros((30, 30, 3), np.uint8)
    img[0:30, 20:30] = 90
    x, info = preprocess_with_info(img, PreprocessConfig(image_size=24))
    assert info.found_cell and info.bbox == (20, 0, 10, 30)
    assert x.shape == (24, 24, 3)


def test_image_smaller_than_target_is_enlarged():
    img = np.zeros((6, 6, 3), np.uint8)
    img[1:5, 2:4] = 200
    x = preprocess(img, PreprocessConfig(image_size=64))
    assert x.shape == (64, 64, 3) and x.max() == 200


# --- bad input: ImageReadError naming the path ----------------------------------------------


def test_missing_path(tmp_path):
    p = tmp_path / "nope.bmp"
    with pytest.raises(ImageReadError, match="not found") as ei:
        preprocess(p)
    assert ei.value.path == str(p) and str(p) in str(ei.value)
    assert isinstance(ei.value, ValueError) and isinstance(ei.value, BmcdError)


def test_directory(tmp_path):
    with pytest.raises(ImageReadError, match="is a directory"):
        preprocess(tmp_path)


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.bmp"
    p.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty") as ei:
        preprocess(p)
    assert str(p) in str(ei.value)


def test_truncated_bmp(tmp_path):
    img = np.full((40, 40, 3), 100, np.uint8)
    data = _encode(img, ".bmp")
    p = tmp_path / "truncated.bmp"
    p.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageReadError, match="truncated, corrupt or not an image") as ei:
        preprocess(p)
    assert str(p) in str(ei.value)


def test_non_image_file(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("this is not an image\n")
    with pytest.raises(ImageReadError, match="Could not decode") as ei:
        read_image(p)
    assert str(p) in str(ei.value)


@pytest.mark.parametrize("dtype", [np.int32, np.complex64, np.int64])
def test_unsupported_dtype(dtype):
    with pytest.raises(ImageReadError, match="Unsupported image dtype"):
        preprocess(np.zeros((10, 10, 3), dtype=dtype))


def test_bad_shapes_and_values():
    with pytest.raises(ImageReadError, match="shape"):
        preprocess(np.zeros((10, 10, 5), np.uint8))
    with pytest.raises(ImageReadError, match="NaN"):
        preprocess(np.full((4, 4, 3), np.nan, np.float32))
    with pytest.raises(ImageReadError, match="path or encoded bytes"):
        read_image(12345)  # type: ignore[arg-type]


# --- batches -----------------------------------------------------------------------------


def test_preprocess_batch_keeps_order_and_matches_single(tmp_path):
    rng = np.random.default_rng(1)
    paths = []
    for i in range(12):
        img = np.zeros((50, 50, 3), np.uint8)
        s = 5 + i * 3
        img[5 : 5 + s // 2, 5 : 5 + s] = rng.integers(30, 255, size=3)
        p = tmp_path / f"c{i}.png"
        p.write_bytes(_encode(img, ".png"))
        paths.append(p)
    cfg = PreprocessConfig(image_size=20)
    batch = preprocess_batch(paths, cfg, workers=3)
    single = np.stack([preprocess(p, cfg) for p in paths])
    assert batch.shape == (12, 20, 20, 3) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch, single)
    np.testing.assert_array_equal(preprocess_batch(paths, cfg, workers=1), single)


def test_preprocess_batch_names_the_bad_file(tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(_encode(np.full((8, 8, 3), 50, np.uint8), ".png"))
    bad = tmp_path / "bad.bmp"
    bad.write_bytes(b"BM garbage")
    with pytest.raises(ImageReadError) as ei:
        preprocess_batch([good, bad, good], PreprocessConfig(image_size=8), workers=2)
    assert str(bad) in str(ei.value)


def test_preprocess_batch_rejects_bad_workers():
    with pytest.raises(ValueError, match="workers"):
        preprocess_batch([np.zeros((4, 4, 3), np.uint8)], workers=0)


# --- properties --------------------------------------------------------------------------


@st.composite
def cell_images(draw):
    h = draw(st.integers(1, 60))
    w = draw(st.integers(1, 60))
    img = np.zeros((h, w, 3), np.uint8)
    y0 = draw(st.integers(0, h - 1))
    x0 = draw(st.integers(0, w - 1))
    y1 = draw(st.integers(y0 + 1, h))
    x1 = draw(st.integers(x0 + 1, w))
    colour = draw(st.tuples(*[st.integers(0, 255)] * 3))
    img[y0:y1, x0:x1] = colour
    return img


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(img=cell_images(), size=st.integers(8, 48))
def test_output_shape_dtype_range_property(img, size):
    x = preprocess(img, PreprocessConfig(image_size=size))
    assert x.shape == (size, size, 3)
    assert x.dtype == np.float32
    assert np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 255.0


@settings(max_examples=150, deadline=None)
@given(img=cell_images(), threshold=st.integers(0, 60))
def test_crop_holds_every_foreground_pixel_property(img, threshold):
    """With one foreground region, the crop holds every foreground pixel."""
    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    n_fg = int((gray > threshold).sum())
    crop, found = crop_to_cell(img, threshold)
    assert found == (n_fg > 0)
    crop_gray = cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2GRAY)
    assert int((crop_gray > threshold).sum()) == n_fg


# --- real C-NMC sample images ----------------------------------------------------------------


def test_real_samples_are_tight_224_rgb_float32(cnmc_sample_files):
    cfg = PreprocessConfig()
    for path in cnmc_sample_files:
        x, info = preprocess_with_info(path, cfg)
        assert info.found_cell, path
        assert x.shape == (224, 224, 3) and x.dtype == np.float32
        assert info.original_shape == (450, 450)
        fg = cv2.cvtColor(x.astype(np.uint8), cv2.COLOR_RGB2GRAY) > cfg.threshold
        rows, cols = np.where(fg.any(axis=1))[0], np.where(fg.any(axis=0))[0]
        # tight crop: after padding to square, the foreground touches two opposite edges
        touches_tb = rows.min() <= 1 and rows.max() >= 222
        touches_lr = cols.min() <= 1 and cols.max() >= 222
        assert touches_tb or touches_lr, (path, rows.min(), rows.max(), cols.min(), cols.max())


def test_real_samples_threshold_choice_survives_jpeg(cnmc_sample_files):
    """On a JPEG re-encode the default threshold keeps the crop within a few pixels,
    while the research report's threshold of 1 lets compression ringing grow it."""

    def bbox_shift(threshold: int) -> list[int]:
        cfg = PreprocessConfig(threshold=threshold)
        shifts = []
        for path in cnmc_sample_files[:12]:
            rgb = read_image(path)
            _, a = preprocess_with_info(rgb, cfg)
            ok, buf = cv2.imencode(
                ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 75]
            )
            _, b = preprocess_with_info(buf.tobytes(), cfg)
            shifts.append(int(np.abs(np.subtract(a.bbox, b.bbox)).max()))
        return shifts

    default, report = bbox_shift(PreprocessConfig().threshold), bbox_shift(1)
    assert max(default) <= 4, default
    assert sum(default) < sum(report) / 2, (default, report)
