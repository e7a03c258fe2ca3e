"""Colour jitter and pixel noise in the training sequence (TrainConfig.color_jitter/noise)."""

from __future__ import annotations

import numpy as np
import pytest

from bmcd.errors import ConfigError
from bmcd.training import TrainConfig

pytest.importorskip("keras")


def _batch(**kw):
    from bmcd.training.sequence import sequence_class

    rng = np.random.default_rng(0)
    images = rng.integers(30, 220, (8, 16, 16, 3), dtype=np.uint8)
    images[:, :3] = 0  # black background rows
    seq = sequence_class()(images, np.arange(8) % 2, 8, seed=3, **kw)
    return images.astype(np.float32), seq[0][0]


def test_off_by_default_and_without_augment():
    raw, x = _batch(augment=False, color_jitter=0.3, noise=5)
    np.testing.assert_array_equal(x, raw)


def test_gain_jitter_scales_channels_within_bounds_and_keeps_black_black():
    raw, x = _batch(augment=True, color_jitter=0.2)
    # undo the dihedral transform's effect on statistics: compare per-image channel means
    ratio = x.reshape(8, -1, 3).sum(1) / raw.reshape(8, -1, 3).sum(1)
    assert np.all(ratio >= 0.8 - 1e-3) and np.all(ratio <= 1.2 + 1e-3)
    assert ratio.std() > 0.01  # really jittered
    assert (x == 0).sum() >= (raw == 0).sum()  # background stays exactly black


def test_noise_is_bounded_reproducible_and_clipped():
    raw, x = _batch(augment=True, noise=2.0)
    _, again = _batch(augment=True, noise=2.0)
    np.testing.assert_array_equal(x, again)
    assert x.min() >= 0 and x.max() <= 255
    # per image, the sorted pixels differ from the originals by at most 2 gray levels
    diff = np.sort(x.reshape(8, -1), axis=1) - np.sort(raw.reshape(8, -1), axis=1)
    assert np.abs(diff).max() <= 2.0 + 1e-4 and np.abs(diff).mean() > 0.1
    assert (x != np.round(x)).mean() > 0.5  # the integral pixels got fractional noise


@pytest.mark.parametrize("kw", [{"color_jitter": 1.0}, {"color_jitter": -0.1},
                                {"noise": -1}, {"noise": 100}, {"noise": True}])
def test_settings_are_validated(kw):
    with pytest.raises(ConfigError):
        TrainConfig(**kw)
