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
