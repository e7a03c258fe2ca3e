"""bmcd.data.preprocess_folder: the library side of ``bmcd preprocess``."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest

from bmcd.data import FolderResult, preprocess_folder
from bmcd.errors import BmcdError, ConfigError, DatasetError
from bmcd.preprocessing import PreprocessConfig


def _write_cell(path, value=150):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.zeros((10, 14, 3), np.uint8)
    img[2:8, 3:11] = value
    assert cv2.imwrite(str(path), img)


def test_folder_mirrors_tree_skips_hidden_and_reports_bad_files(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    _write_cell(src / "all" / "a.bmp")
    _write_cell(src / "hem" / "deep" / "b.png", 90)
    _write_cell(src / ".hidden" / "c.bmp")  # hidden folders are not walked
    _write_cell(src / "hem" / ".d.bmp")  # nor hidden files
    (src / "hem" / "broken.bmp").write_bytes(b"not an image")
    (src / "README.txt").write_text("SYNTHETIC cells\n")

    result = preprocess_folder(src, out, PreprocessConfig(image_size=12), workers=2,
                               progress=False)

    assert isinstance(result, FolderResult)
    assert result.n == 3 and result.written == 2 and result.manifest is None
    assert [p.endswith("broken.bmp") for p, _ in result.failures] == [True]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "all/a.png", "hem/deep/b.png"]
    assert cv2.imread(str(out / "hem" / "deep" / "b.png")).shape == (12, 12, 3)
    assert (out / "README.txt").read_text().startswith("SYNTHETIC")


def test_manifest_input_writes_manifest_of_written_files(tmp_path):
    _write_cell(tmp_path / "x" / "a.bmp")
    (tmp_path / "x" / "bad.bmp").write_bytes(b"")
    (tmp_path / "m.csv").write_text("path,label,subject\nx/a.bmp,all,S1\nx/bad.bmp,hem,S2\n")
    out = tmp_path / "out"
    result = preprocess_folder(tmp_path / "m.csv", out, progress=False)
    assert result.manifest == out / "manifest.csv" and len(result.failures) == 1
    with open(result.manifest, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows == [["path", "label", "subject"], ["x/a.png", "all", "S1"]]
    assert cv2.imread(str(out / "x" / "a.png")).shape == (224, 224, 3)


def test_bad_inputs_raise_bmcd_errors(tmp_path):
    _write_cell(tmp_path / "in" / "a.bmp")
    with pytest.raises(DatasetError, match="Input not found"):
        preprocess_folder(tmp_path / "missing", tmp_path / "o")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="No images found"):
        preprocess_folder(tmp_path / "empty", tmp_path / "o")
    with pytest.raises(DatasetError, match="must differ"):
        preprocess_folder(tmp_path / "in", tmp_path / "in")
    with pytest.raises(ConfigError, match="workers must be >= 1") as exc:
        preprocess_folder(tmp_path / "in", tmp_path / "o", workers=0)
    assert isinstance(exc.value, BmcdError) and isinstance(exc.value, ValueError)
    assert not (tmp_path / "o").exists()
