"""Training recipe settings: colour jitter, pixel noise, the learning-rate schedule and label smoothing."""

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


@pytest.mark.parametrize("kw", [{"lr_schedule": "step"}, {"warmup_epochs": -1},
                                {"warmup_epochs": 1.5}, {"label_smoothing": 0.5},
                                {"label_smoothing": -0.1}])
def test_schedule_settings_are_validated(kw):
    with pytest.raises(ConfigError):
        TrainConfig(**kw)


def test_cosine_schedule_warms_up_then_decays():
    import keras

    from bmcd.training.loop import _learning_rate

    assert _learning_rate(keras, 1e-3, "constant", 100, 10) == 1e-3
    sched = _learning_rate(keras, 1e-3, "cosine", 100, 10)
    lr = [float(sched(i)) for i in (0, 5, 10, 55, 99)]
    assert lr[0] == pytest.approx(1e-4, rel=1e-3)  # starts at a tenth
    assert lr[0] < lr[1] < lr[2] == pytest.approx(1e-3, rel=1e-3)  # linear warm-up
    assert lr[2] > lr[3] > lr[4] and lr[4] < 2e-5  # cosine down to about a hundredth
    no_warmup = _learning_rate(keras, 1e-3, "cosine", 100, 0)
    assert float(no_warmup(0)) == pytest.approx(1e-3, rel=1e-3)


def test_label_smoothing_reaches_the_loss():
    import keras

    from bmcd.training.loop import _compile

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, activation="sigmoid")])
    _compile(keras, model, 1e-3, False, 0.1)
    assert model.loss.label_smoothing == pytest.approx(0.1)
    y = np.array([[1.0], [0.0]], np.float32)
    p = np.array([[0.999], [0.001]], np.float32)
    # smoothed targets make a confident, correct prediction cost more than without
    plain = keras.losses.BinaryCrossentropy()(y, p)
    assert float(model.loss(y, p)) > float(plain) + 0.1
