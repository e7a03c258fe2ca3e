"""Streaming batch scoring with the local engine: bad files, CLI exit statuses, kill + resume."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from _tiny_models import tiny_model_expected, write_bad_files, write_cell_images
from bmcd.cli import EXIT_ERROR, EXIT_OK, EXIT_PARTIAL, main
from bmcd.errors import DatasetError
from bmcd.preprocessing import PreprocessConfig, preprocess_batch
from bmcd.scoring import OUTPUT_COLUMNS, OutputExistsError, score

ROOT = Path(__file__).resolve().parents[2]


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == OUTPUT_COLUMNS
        return list(reader)


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory):
    """40 synthetic 450x450 BMP cells in two sub-folders, plus 3 bad files and a .txt."""
    root = tmp_path_factory.mktemp("mixed")
    good = write_cell_images(root / "all", 20, size=450, seed=2)
    good += write_cell_images(root / "hem", 20, size=450, seed=3)
    bad = write_bad_files(root / "bad", good[0])
    (root / "README.txt").write_text("not listed: not an image extension")
    return root, sorted(good), bad


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("good")
    return root, write_cell_images(root, 10, size=96, seed=4)


def test_folder_with_bad_files_gives_one_row_per_input(tiny_onnx_model_dir, mixed_dir, tmp_path):
    root, good, bad = mixed_dir
    out = tmp_path / "scores.csv"
    s = score(tiny_onnx_model_dir, root, out, batch_size=8, progress=False)
    rows = read_rows(out)
    paths = [r["path"] for r in rows]
    expected = {str(p) for p in good} | {str(p) for p in bad.values()}
    assert len(paths) == len(set(paths)) == len(expected) and set(paths) == expected
    assert (s.n_total, s.n_scored, s.n_errors, s.n_skipped) == (43, 40, 3, 0)
    assert s.exit_status == EXIT_PARTIAL and s.images_per_second > 0

    by_path = {r["path"]: r for r in rows}
    for kind, needle in [("truncated", "decode"), ("empty", "empty"), ("text", "decode")]:
        r = by_path[str(bad[kind])]
        assert r["p_all"] == "" and r["label"] == "" and needle in r["error"], (kind, r)
        assert str(bad[kind]) in r["error"]
    good_rows = [by_path[str(p)] for p in good]
    p = np.array([float(r["p_all"]) for r in good_rows])
    assert ((p >= 0) & (p <= 1)).all()
    assert all(r["error"] == "" and float(r["threshold"]) == 0.5 for r in good_rows)
    assert [r["label"] for r in good_rows] == ["all" if v >= 0.5 else "hem" for v in p]
    assert {r["label"] for r in good_rows} == {"all", "hem"}  # the tiny model gives both
    # the numbers are the model's: same preprocessing path, same graph
    x = preprocess_batch(good, PreprocessConfig(image_size=32))
    np.testing.assert_allclose(p, tiny_model_expected(x), atol=1e-6)


def test_cli_exit_statuses(tiny_onnx_model_dir, mixed_dir, good_dir, tmp_path, capsys):
    model = str(tiny_onnx_model_dir)
    assert main(["score", model, str(mixed_dir[0]), "--out", str(tmp_path / "a.csv")]) == EXIT_PARTIAL
    assert "errors 3" in capsys.readouterr().out
    assert main(["score", model, str(good_dir[0]), "--out", str(tmp_path / "b.csv")]) == EXIT_OK
    assert "scored 10, errors 0" in capsys.readouterr().out
    # fatal: missing model -> 1, one clear line, no output file
    missing = tmp_path / "no-model"
    assert main(["score", str(missing), str(good_dir[0]), "--out", str(tmp_path / "c.csv")]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "bmcd score: error:" in err and "does not exist" in err
    assert not (tmp_path / "c.csv").exists()
    # existing output without --resume -> 1, file untouched
    before = (tmp_path / "b.csv").read_bytes()
    assert main(["score", model, str(good_dir[0]), "--out", str(tmp_path / "b.csv")]) == EXIT_ERROR
    assert "--resume" in capsys.readouterr().err
    assert (tmp_path / "b.csv").read_bytes() == before
    # with --resume everything is skipped and the earlier status is kept
    assert main(["score", model, str(good_dir[0]), "--out", str(tmp_path / "b.csv"), "--resume"]) == EXIT_OK
    assert (tmp_path / "b.csv").read_bytes() == before
    assert main(["score", model, str(mixed_dir[0]), "--out", str(tmp_path / "a.csv"), "--resume"]) == EXIT_PARTIAL


def test_globs_manifests_and_dedupe(tiny_onnx_model_dir, mixed_dir, tmp_path):
    root, good, bad = mixed_dir
    manifest = root / "manifest.csv"
    manifest.write_text(
        "Patient_ID,new_names,labels\n"
        "1,hem/" + good[25].name + ",0\n"
        "2,all/" + good[0].name + ",1\n"  # also matched by the glob below: scored once
        "3,bad/" + bad["empty"].name + ",1\n"
    )
    try:
        inputs = [str(root / "all" / "*.bmp"), str(manifest), str(good[1])]
        out = tmp_path / "o.csv"
        s = score(tiny_onnx_model_dir, inputs, out, batch_size=7, progress=False)
        paths = [Path(r["path"]) for r in read_rows(out)]
        expected = [p for p in good if p.parent.name == "all"] + [good[25], bad["empty"]]
        assert [p.resolve() for p in paths] == [p.resolve() for p in expected]
        assert (s.n_total, s.n_errors) == (22, 1)
        with pytest.raises(DatasetError, match="matches no files"):
            score(tiny_onnx_model_dir, [str(root / "*.jpg")], tmp_path / "x.csv", progress=False)
        with pytest.raises(OutputExistsError):
            score(tiny_onnx_model_dir, inputs, out, progress=False)
    finally:
        manifest.unlink()


def test_resume_after_torn_line_matches_a_clean_run(tiny_onnx_model_dir, mixed_dir, tmp_path):
    root = mixed_dir[0]
    full = tmp_path / "full.csv"
    score(tiny_onnx_model_dir, root, full, batch_size=8, progress=False)
    text = full.read_text()
    lines = text.splitlines(keepends=True)
    part = tmp_path / "part.csv"
    part.write_text("".join(lines[:18]) + lines[18][:25])  # header + 17 rows + a torn row
    s = score(tiny_onnx_model_dir, root, part, batch_size=8, resume=True, progress=False)
    assert (s.n_skipped, s.n_scored + s.n_errors) == (17, 43 - 17)
    assert part.read_text() == text


def test_kill_and_resume_in_a_subprocess(tiny_onnx_model_dir, tmp_path):
    """SIGKILL a running `bmcd score`, resume: one row per input, identical to a clean run."""
    images = write_cell_images(tmp_path / "imgs", 400, size=200, seed=5)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def cmd(out, *extra):
        return [sys.executable, "-m", "bmcd.cli", "score", str(tiny_onnx_model_dir),
                str(tmp_path / "imgs"), "--out", str(out), "--batch-size", "2", "--workers", "1",
                "--threads", "1", "--no-progress", *extra]

    clean = tmp_path / "clean.csv"
    assert subprocess.run(cmd(clean), env=env, cwd=ROOT, capture_output=True).returncode == 0
    out = tmp_path / "killed.csv"
    proc = subprocess.Popen(cmd(out), env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and out.stat().st_size > 1500:  # a dozen rows or so written
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    n_before = len(read_rows(out))
    assert 0 < n_before < len(images)

    resumed = subprocess.run(cmd(out, "--resume"), env=env, cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    rows = read_rows(out)
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)) == len(images)  # no duplicates, no gaps
    assert out.read_text() == clean.read_text()  # identical to an uninterrupted run
