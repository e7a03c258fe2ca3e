"""TrainConfig: the one declaration of the training settings (no TensorFlow needed)."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from bmcd.errors import ConfigError
from bmcd.labels import label_indices, label_names
from bmcd.training import TrainConfig


def test_defaults_round_trip_and_replace(tmp_path):
    cfg = TrainConfig()
    assert (cfg.epochs, cfg.fine_tune_epochs, cfg.batch_size, cfg.balance, cfg.augment,
            cfg.early_stopping_patience) == (5, 5, 32, "augment", True, 5)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    other = cfg.replace(cache_dir=tmp_path, fine_tune_from=12)
    assert other.to_dict()["cache_dir"] == str(tmp_path) and cfg.cache_dir is None
    assert TrainConfig.from_kwargs(other, epochs=2).epochs == 2
    assert TrainConfig.from_kwargs(None, balance=None).balance is None
    with pytest.raises(AttributeError):
        cfg.epochs = 3  # frozen


@pytest.mark.parametrize("bad", [
    {"epochs": -1}, {"epochs": 0, "fine_tune_epochs": 0}, {"batch_size": 0},
    {"learning_rate": 0.0}, {"balance": "oversample"}, {"augment": "yes"},
    {"early_stopping_patience": -2}, {"jit_compile": "always"}, {"fine_tune_from": 1.5},
    {"verbose": -1}, {"cache_dir": 3},
])
def test_invalid_settings_raise_config_error(bad):
    with pytest.raises(ConfigError, match="TrainConfig|epochs|balance"):
        TrainConfig(**bad)


def test_unknown_names_are_rejected():
    with pytest.raises(ConfigError, match=r"unknown training settings \['epoch'\]"):
        TrainConfig.from_kwargs(None, epoch=3)
    with pytest.raises(ConfigError, match="must be a TrainConfig"):
        TrainConfig.from_kwargs({"epochs": 3})


def test_cli_flags_keep_names_and_defaults():
    parser = argparse.ArgumentParser()
    TrainConfig.add_arguments(parser)
    assert TrainConfig.from_namespace(parser.parse_args([])) == TrainConfig()
    ns = parser.parse_args(["--epochs", "2", "--fine-tune-epochs", "0", "--lr", "0.01",
                            "--fine-tune-lr", "1e-4", "--balance", "none", "--no-augment",
                            "--patience", "3", "--batch-size", "8", "--fine-tune-from",
                            "block_1_expand", "--cache-dir", "c", "--checkpoint-dir", "k"])
    cfg = TrainConfig.from_namespace(ns, verbose=0)
    assert cfg == TrainConfig(epochs=2, fine_tune_epochs=0, learning_rate=0.01,
                              fine_tune_learning_rate=1e-4, balance=None, augment=False,
                              early_stopping_patience=3, batch_size=8,
                              fine_tune_from="block_1_expand", cache_dir="c",
                              checkpoint_dir="k", verbose=0)
    with pytest.raises(SystemExit):
        parser.parse_args(["--balance", "oversample"])


def test_label_rule_is_inclusive_at_the_threshold():
    assert label_indices([0.1, 0.5, 0.7], 0.5).tolist() == [0, 1, 1]
    assert label_names([0.1, 0.5, 0.7], 0.7).tolist() == ["hem", "hem", "all"]


def test_importing_training_does_not_import_tensorflow():
    code = "import sys, bmcd.training; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"
