"""``bmcd cv`` on SYNTHETIC cells with tiny settings (plumbing, not accuracy)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.train]


def test_cli_cv_tiny(tmp_path, capsys):
    pytest.importorskip("tensorflow")
    from bmcd.cli import main
    from bmcd.synthetic import make_cells

    data = tmp_path / "cells"
    make_cells(data, n_per_class=24, n_subjects=8, image_size=96, seed=4, progress=False)
    out = tmp_path / "cv"
    rc = main(["cv", str(data), "--folds", "2", "--out", str(out), "--image-size", "32",
               "--epochs", "1", "--fine-tune-epochs", "0", "--batch-size", "16", "--tta",
               "--quiet"])
    text = capsys.readouterr().out
    assert rc == 0, text
    res = json.loads((out / "cv.json").read_text())
    assert res["settings"]["folds"] == 2 and res["settings"]["weights"] is None
    assert res["settings"]["val"] == 0.0  # default: every training subject trains
    assert all(f["validation_subjects"] == [] and f["threshold"] == 0.5 for f in res["folds"])
    assert len(res["folds"]) == 2
    tested = [s for f in res["folds"] for s in f["test_subjects"]]
    assert sorted(tested) == sorted(res["settings"]["subjects"])
    for f in res["folds"]:
        assert not set(f["test_subjects"]) & set(f["train_subjects"])
        assert not set(f["validation_subjects"]) & set(f["test_subjects"])
        # every held-out cell's p(all) is kept, so other pooling rules can be studied later
        cells = f["cells"]
        assert len(cells["names"]) == len(cells["p_all_plain"]) == len(cells["p_all_tta"]) \
            == len(cells["p_all_noise"]) == f["plain"]["n"]
        assert set(cells["subjects"]) == set(f["test_subjects"])
        assert all(0 <= v <= 1 for v in cells["p_all_plain"])
    n_cells = sum(len(f["cells"]["names"]) for f in res["folds"])
    assert n_cells == 48
    pooled = res["pooled"]["plain"]
    assert pooled["n"] == 48 and pooled["intervals"]["unit"] == "subject"
    assert set(res["pooled"]) == {"plain", "tta"}
    # pooled labels are the folds' own labels (each fold's threshold mapped to 0.5)
    from bmcd.cv import _recentre

    p = np.array([0.2, 0.39, 0.41, 0.9])
    assert ((_recentre(p, 0.4) >= 0.5) == (p >= 0.4)).all()
    assert "pooled plain" in text and "pooled tta" in text
    assert (out / "cv.md").read_text().startswith("## bmcd cv: 2 subject-grouped folds")
