"""Shared fixtures.

Real C-NMC images are read from ``../shared/data`` beside the project (never copied in);
tests that need them skip cleanly when that folder is missing. Everything else is made on
the fly: synthetic cells, small models.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BMCD_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """``../shared/data``; skips when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def cnmc_sample_dir(shared_data_dir: Path) -> Path:
    """The 30 real C-NMC sample images, ``cnmc-sample/{all,hem}/``; skips when absent."""
    d = shared_data_dir / "cnmc-sample"
    if not d.is_dir() or not any(d.rglob("*.bmp")):
        pytest.skip(f"real C-NMC sample images not found at {d}")
    return d


@pytest.fixture(scope="session")
def cnmc_sample_files(cnmc_sample_dir: Path) -> list[Path]:
    return sorted(cnmc_sample_dir.rglob("*.bmp"))


@pytest.fixture(scope="session")
def synthetic_small(tmp_path_factory) -> Path:
    """A small synthetic C-NMC-like class-folder tree: 40 cells per class, 8 subjects."""
    from bmcd.synthetic import make_cells

    out = tmp_path_factory.mktemp("synthetic_small")
    make_cells(out, n_per_class=40, n_subjects=8, image_size=450, seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_onnx_model_dir(tmp_path_factory) -> Path:
    """A tiny REAL ONNX bmcd model directory (model.onnx + bmcd.json), no training.

    Input ``image`` float32 (N, 32, 32, 3), output ``p_all`` (N, 1) =
    sigmoid(0.08 * mean(image) - 8); bmcd metadata embedded. See tests/_tiny_models.py.
    """
    pytest.importorskip("onnx")
    from _tiny_models import build_tiny_onnx_model

    return build_tiny_onnx_model(tmp_path_factory.mktemp("tiny_onnx_model"))


# --- classifier fixtures (shared by tests/unit/test_classifier_unit.py and
# --- tests/integration/test_keras_training.py; trained once per session) ---------------

#: The learnability settings of bmcd.synthetic (see tests/integration/
#: test_synthetic_learnable.py): 300 cells per class, 12 subjects, 450 px, split by subject
#: with seed 0; MobileNetV2 from scratch at 64 px (BatchNorm momentum 0.8), 5 epochs
#: (measured held-out-subject AUC 0.96).
LEARNABLE = {"n_per_class": 300, "n_subjects": 12, "input_size": 64, "epochs": 5}


@pytest.fixture(scope="session")
def learnable_split(tmp_path_factory):
    """SYNTHETIC cells with the learnability settings, split by subject (60/20/20, seed 0)."""
    from bmcd.data import load_dataset, split_by_subject
    from bmcd.synthetic import make_cells

    out = tmp_path_factory.mktemp("learnable_cells")
    make_cells(out, n_per_class=LEARNABLE["n_per_class"], n_subjects=LEARNABLE["n_subjects"],
               seed=0, progress=False)
    return split_by_subject(load_dataset(out), val=0.2, test=0.2, seed=0)


@pytest.fixture(scope="session")
def fitted_mobilenet(learnable_split):
    """MobileNetV2 trained from scratch (weights=None) at 64 px on ``learnable_split``."""
    pytest.importorskip("tensorflow")
    from bmcd import Classifier, PreprocessConfig

    # synthetic cells draw their size per subject, not per class: tight crop (the default
    # window from scratch would teach the subjects' sizes; docs/models.rst)
    clf = Classifier(arch="mobilenet_v2", image_size=LEARNABLE["input_size"], weights=None,
                     seed=0, preprocess=PreprocessConfig(image_size=LEARNABLE["input_size"]))
    clf.fit(learnable_split.train, validation=learnable_split.val,
            epochs=LEARNABLE["epochs"], fine_tune_epochs=0, verbose=0, split=learnable_split)
    return clf
