"""bmcd.synthetic: names, subjects, determinism, image format; `bmcd synth`."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from bmcd.cli import EXIT_ERROR, EXIT_OK, main
from bmcd.data import load_dataset, parse_subject, split_by_subject
from bmcd.synthetic import (
    SubjectStyle,
    looks_synthetic,
    make_cell_image,
    make_cells,
    random_subject_style,
    subject_ids,
)


def test_synthetic_small_names_subjects_and_classes(synthetic_small):
    ds = load_dataset(synthetic_small)
    assert ds.layout == "class_folders"
    assert ds.class_counts() == {"hem": 40, "all": 40}
    assert ds.subject_list() == ["1", "2", "3", "4", "H1", "H2", "H3", "H4"]
    for path, label, subject in zip(ds.paths, ds.labels, ds.subjects, strict=True):
        name = Path(path).name
        assert name.endswith(f"_{ds.classes[label]}.bmp")
        assert parse_subject(name) == subject
        assert subject.startswith("H") == (label == 0)  # one class per subject
        assert Path(path).parent.name == ds.classes[label]
    assert all(sum(c.values()) == 10 for c in ds.subject_counts().values())
    assert "SYNTHETIC" in (synthetic_small / "README.txt").read_text()
    split_by_subject(ds, val=0.25, test=0.25)  # enough subjects for a subject split


def test_looks_synthetic_reads_the_readme_make_cells_writes(synthetic_small, tmp_path):
    assert looks_synthetic(synthetic_small)
    assert not looks_synthetic(None) and not looks_synthetic(tmp_path)
    (tmp_path / "README.txt").write_text("Real cells, not SYNTHETIC ones.")
    assert not looks_synthetic(tmp_path)
    (tmp_path / "README.txt").write_bytes(b"SYNTHETIC \xff\xfe")  # not UTF-8: still read
    assert looks_synthetic(tmp_path)


def test_synthetic_images_are_cnmc_like(synthetic_small):
    files = sorted(synthetic_small.rglob("*.bmp"))
    for f in files[::10]:
        img = cv2.imread(str(f))
        assert img.shape == (450, 450, 3) and img.dtype == np.uint8
        corners = img[[0, 0, -1, -1], [0, -1, 0, -1]]
        assert not corners.any(), f"{f.name}: background corners must be black"
        fg = img.sum(axis=2) > 30
        assert 0.05 < fg.mean() < 0.6, f"{f.name}: expected one cell, got {fg.mean():.2f} fg"
        # purple stain: blue and red above green inside the cell
        b, g, r = (img[fg][:, c].mean() for c in range(3))
        assert b > g and r > g


def test_make_cells_is_deterministic(tmp_path):
    a = make_cells(tmp_path / "a", n_per_class=3, n_subjects=2, image_size=96, seed=5)
    b = make_cells(tmp_path / "b", n_per_class=3, n_subjects=2, image_size=96, seed=5, workers=1)
    c = make_cells(tmp_path / "c", n_per_class=3, n_subjects=2, image_size=96, seed=6)
    assert [p.name for p in a] == [p.name for p in b] == [p.name for p in c]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b, strict=True))
    assert any(x.read_bytes() != z.read_bytes() for x, z in zip(a, c, strict=True))
    assert [p.name for p in a] == [
        "UID_H1_1_1_hem.bmp", "UID_H1_1_2_hem.bmp", "UID_H1_2_1_hem.bmp",
        "UID_1_1_1_all.bmp", "UID_1_1_2_all.bmp", "UID_1_2_1_all.bmp",
    ]


def test_make_cell_image_shape_background_and_labels():
    img = make_cell_image(np.random.default_rng(0), "all", image_size=128)
    assert img.shape == (128, 128, 3) and img.dtype == np.uint8
    assert img[0, 0].tolist() == [0, 0, 0] and img.max() > 40
    same = make_cell_image(np.random.default_rng(0), 1, image_size=128)
    assert np.array_equal(img, same)
    with pytest.raises(ValueError, match="label"):
        make_cell_image(np.random.default_rng(0), "blast")
    with pytest.raises(ValueError, match="label"):
        make_cell_image(np.random.default_rng(0), 2)
    with pytest.raises(ValueError, match="image_size"):
        make_cell_image(np.random.default_rng(0), 0, image_size=16)


def test_nucleus_is_larger_in_all_cells():
    """The class signal is morphology: ALL cells have a larger nucleus-to-cell ratio."""
    rng = np.random.default_rng(0)
    style = SubjectStyle()

    def dark_fraction(img):
        gray = img.mean(axis=2)
        cell = gray[gray > 10]
        return (cell < 0.5 * (np.percentile(cell, 5) + np.percentile(cell, 95))).mean()

    hem = [dark_fraction(make_cell_image(rng, 0, style, 200)) for _ in range(20)]
    all_ = [dark_fraction(make_cell_image(rng, 1, style, 200)) for _ in range(20)]
    assert np.mean(all_) > np.mean(hem) + 0.15


def test_subject_ids_and_styles():
    assert subject_ids(4) == (["1", "2"], ["H1", "H2"])
    assert subject_ids(5) == (["1", "2", "3"], ["H1", "H2"])
    with pytest.raises(ValueError, match="n_subjects must be >= 2"):
        subject_ids(1)
    from bmcd.errors import ConfigError

    with pytest.raises(ConfigError, match="n_subjects must be >= 2"):  # a BmcdError too
        subject_ids(1)
    with pytest.raises(ConfigError, match="label must be"):
        make_cell_image(np.random.default_rng(0), "blast")
    s1, s2 = (random_subject_style(np.random.default_rng(i)) for i in (1, 2))
    assert s1 != s2 and s1.to_dict()["hue_shift"] == s1.hue_shift


def test_make_cells_validates_arguments(tmp_path):
    with pytest.raises(ValueError, match="n_per_class"):
        make_cells(tmp_path, n_per_class=0, n_subjects=2)
    with pytest.raises(ValueError, match="every subject has an image"):
        make_cells(tmp_path, n_per_class=2, n_subjects=8)


def test_cli_synth(tmp_path, capsys):
    out = tmp_path / "cells"
    rc = main(["synth", str(out), "--per-class", "4", "--subjects", "4", "--image-size", "64",
               "--seed", "1"])
    assert rc == EXIT_OK
    text = capsys.readouterr().out
    assert "Wrote 8 SYNTHETIC images" in text and "not patient data" in text
    assert "1, 2" in text and "H1, H2" in text
    ds = load_dataset(out)
    assert ds.class_counts() == {"hem": 4, "all": 4}
    assert cv2.imread(ds.paths[0]).shape == (64, 64, 3)
    assert main(["info", str(out)]) == EXIT_OK
    assert "SYNTHETIC images" in capsys.readouterr().out
    # preprocessing keeps the synthetic label
    assert main(["preprocess", str(out), str(tmp_path / "pp"), "--image-size", "32"]) == EXIT_OK
    assert main(["info", str(tmp_path / "pp")]) == EXIT_OK
    assert "SYNTHETIC images" in capsys.readouterr().out


def test_cli_synth_bad_arguments(tmp_path, capsys):
    rc = main(["synth", str(tmp_path), "--per-class", "4", "--subjects", "1"])
    assert rc == EXIT_ERROR
    assert "n_subjects must be >= 2" in capsys.readouterr().err
