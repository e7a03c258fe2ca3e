"""Weight averaging (``TrainConfig.average_epochs``) and the BatchNorm re-estimation it needs."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from bmcd.errors import ConfigError
from bmcd.training import TrainConfig

pytest.importorskip("keras")


def _tiny_model():
    import keras

    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inp)
    x = keras.layers.BatchNormalization(momentum=0.9, name="bn")(x)
    x = keras.layers.BatchNormalization(momentum=0.9, name="frozen_bn")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inp, out)
    model.get_layer("frozen_bn").trainable = False
    return model


def _batches(n=5, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.normal(3.0 + i, 1.0 + i, (6, 8, 8, 3)).astype(np.float32), np.zeros(6))
            for i in range(n)]


@pytest.mark.parametrize("kw", [{"average_epochs": -1}, {"average_epochs": 1.5},
                                {"average_epochs": True}])
def test_average_epochs_is_validated(kw):
    with pytest.raises(ConfigError, match="average_epochs"):
        TrainConfig(**kw)


def test_default_averages_the_last_third_from_scratch_only():
    from bmcd.training.config import average_epochs_for

    assert TrainConfig().average_epochs is None
    assert [average_epochs_for(None, False, n) for n in (1, 2, 3, 10, 15, 30)] == [1, 1, 1, 3, 5, 10]
    assert average_epochs_for(None, True, 15) == 0  # pretrained: off unless asked
    assert average_epochs_for(None, False, 0) == 0
    assert average_epochs_for(0, False, 15) == 0 and average_epochs_for(4, True, 15) == 4


def test_average_epochs_flag_reaches_the_config():
    ap = argparse.ArgumentParser()
    TrainConfig.add_arguments(ap)
    assert TrainConfig.from_namespace(ap.parse_args([])).average_epochs is None  # auto
    assert TrainConfig.from_namespace(ap.parse_args(["--average-epochs", "0"])).average_epochs == 0
    assert TrainConfig.from_namespace(ap.parse_args(["--average-epochs", "4"])).average_epochs == 4


def test_batchnorm_statistics_become_the_mean_of_the_batch_statistics():
    import keras

    from bmcd.training.loop import reestimate_batchnorm

    model = _tiny_model()
    batches = _batches()
    conv = keras.Model(model.input, model.get_layer("conv").output)
    means = [conv(x).numpy().mean(axis=(0, 1, 2)) for x, _ in batches]
    variances = [conv(x).numpy().var(axis=(0, 1, 2)) for x, _ in batches]
    frozen = [w.copy() for w in model.get_layer("frozen_bn").get_weights()]

    assert reestimate_batchnorm(model, batches) == 1
    bn = model.get_layer("bn")
    np.testing.assert_allclose(np.asarray(bn.moving_mean), np.mean(means, axis=0), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(bn.moving_variance), np.mean(variances, axis=0),
                               rtol=1e-3)
    assert bn.momentum == 0.9  # restored
    for before, after in zip(frozen, model.get_layer("frozen_bn").get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)  # frozen layers keep their statistics


def test_callback_averages_the_last_epochs_only():
    import keras

    from bmcd.training.loop import _weight_average

    model = _tiny_model()
    cb = _weight_average(keras, first_epoch=1, batches=_batches())
    cb.set_model(model)
    kernel = model.get_layer("conv").kernel
    seen = []
    for epoch, value in enumerate([100.0, 1.0, 2.0, 6.0]):
        kernel.assign(np.full(kernel.shape, value, dtype="float32"))
        seen.append(value)
        cb.on_epoch_end(epoch)
    cb.on_train_end()
    assert cb.count == 3 and cb.bn_layers == 1
    np.testing.assert_allclose(np.asarray(kernel), np.mean(seen[1:]), rtol=1e-6)


def test_training_with_averaging_runs_every_epoch_and_records_it():
    from bmcd.training import build_model, train_model

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (32, 32, 32, 3), dtype=np.uint8)
    y = np.arange(32) % 2
    model = build_model("mobilenet_v2", image_size=32, weights=None)
    rec = train_model(model, x, y, x[:16], y[:16], arch="mobilenet_v2", pretrained=False,
                      epochs=3, fine_tune_epochs=0, average_epochs=2,
                      early_stopping_patience=0, verbose=0)
    phase = rec["phases"][-1]
    assert phase["epochs_run"] == 3 and not phase["stopped_early"]
    assert phase["early_stopping_patience"] is None  # averaging switched it off here
    assert phase["averaged_epochs"] == 2 and phase["batchnorm_reestimated"] > 10
    assert rec["average_epochs"] == 2
    p = model.predict(x, verbose=0)
    assert np.all(np.isfinite(p))
