"""``PreprocessConfig.crop_size``: a fixed window centred on the cell keeps its scale."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from bmcd import Classifier, PreprocessConfig
from bmcd.errors import ConfigError
from bmcd.preprocessing import (
    SCRATCH_CROP_SIZE,
    cell_window,
    preprocess,
    preprocess_with_info,
)


def _disk(radius: int, centre=(225, 225), side: int = 450) -> np.ndarray:
    img = np.zeros((side, side, 3), np.uint8)
    cv2.circle(img, centre, radius, (180, 90, 200), -1)
    return img


def _diameter(x: np.ndarray) -> int:
    cols = np.nonzero(x.max(axis=(0, 2)) > 40)[0]
    return int(cols[-1] - cols[0] + 1)


def test_tight_crop_erases_size_and_the_window_keeps_it():
    small, large = _disk(50), _disk(100)
    tight = PreprocessConfig(image_size=64)
    window = PreprocessConfig(image_size=64, crop_size=320)
    # the tight crop makes both cells fill the frame: their size is gone
    assert abs(_diameter(preprocess(small, tight)) - _diameter(preprocess(large, tight))) <= 1
    # the window keeps the 1:2 ratio of the diameters (101/320 and 201/320 of 64 px)
    d_small, d_large = _diameter(preprocess(small, window)), _diameter(preprocess(large, window))
    assert d_small == pytest.approx(64 * 101 / 320, abs=1.5)
    assert d_large == pytest.approx(64 * 201 / 320, abs=1.5)


def test_window_equals_padding_then_cropping_then_resizing():
    rng = np.random.default_rng(0)
    img = np.zeros((450, 450, 3), np.uint8)
    img[90:330, 150:380] = rng.integers(20, 255, (240, 230, 3), dtype=np.uint8)
    cfg = PreprocessConfig(image_size=96, crop_size=320)
    got, info = preprocess_with_info(img, cfg)
    x0, y0, side = info.bbox[0], info.bbox[1], info.bbox[2]
    assert (side, info.bbox[3]) == (320, 320) and info.cell_side == 240
    big = cv2.copyMakeBorder(img, side, side, side, side, cv2.BORDER_CONSTANT, value=0)
    ref = cv2.resize(big[y0 + side : y0 + 2 * side, x0 + side : x0 + 2 * side], (96, 96),
                     interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(got, ref.astype(np.float32))


def test_window_beyond_the_edge_is_black_and_the_cell_is_not_shifted():
    img = _disk(40, centre=(45, 45))  # the cell touches the top-left corner region
    out = preprocess(img, PreprocessConfig(image_size=80, crop_size=320))
    # the window is centred on the cell, so the cell sits in the middle of the output
    ys, xs = np.nonzero(out.max(axis=2) > 40)
    assert abs(ys.mean() - 39.5) < 1.5 and abs(xs.mean() - 39.5) < 1.5
    assert out[:5].max() == 0 and out[:, :5].max() == 0


def test_a_cell_larger_than_the_window_grows_the_window():
    x0, y0, side = cell_window((450, 450), (10, 20, 400, 300), 320)
    assert side == 400 and (x0, y0) == (10, 20 + 150 - 200)
    out = preprocess(_disk(200), PreprocessConfig(image_size=64, crop_size=320))
    assert _diameter(out) >= 62  # fills the frame like the tight crop


def test_the_window_is_at_most_the_image():
    small_image = _disk(20, centre=(48, 48), side=96)
    out, info = preprocess_with_info(small_image, PreprocessConfig(image_size=48, crop_size=320))
    assert info.bbox[2] == 96 and _diameter(out) == pytest.approx(48 * 41 / 96, abs=1.5)


def test_a_speck_is_still_no_cell_and_an_empty_image_is_kept_whole():
    speck = np.zeros((100, 100, 3), np.uint8)
    speck[50, 50] = 255
    cfg = PreprocessConfig(image_size=32, crop_size=320)
    assert preprocess_with_info(speck, cfg)[1].no_cell
    _, info = preprocess_with_info(np.zeros((40, 50, 3), np.uint8), cfg)
    assert not info.found_cell and info.bbox == (0, 0, 50, 40)


@pytest.mark.parametrize("bad", [0, 7, -3, 2.5, True, "320"])
def test_crop_size_is_validated(bad):
    with pytest.raises(ConfigError, match="crop_size"):
        PreprocessConfig(crop_size=bad)


def test_old_model_configs_without_crop_size_keep_the_tight_crop():
    old = {"image_size": 96, "threshold": 10, "interpolation": "area", "margin": 0}
    assert PreprocessConfig.from_dict(old).crop_size is None
    cfg = PreprocessConfig(image_size=96, crop_size=np.int64(300))
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg and cfg.to_dict()["crop_size"] == 300


def test_classifier_default_window_from_scratch_only(tmp_path):
    assert Classifier(weights=None, image_size=64)._preprocess_config().crop_size == SCRATCH_CROP_SIZE
    assert Classifier(weights="imagenet", image_size=64)._preprocess_config().crop_size is None
    own = PreprocessConfig(image_size=64)
    assert Classifier(weights=None, image_size=64, preprocess=own)._preprocess_config() is own
