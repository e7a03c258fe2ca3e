"""``bmcd train`` / ``evaluate`` / ``predict`` round trip on SYNTHETIC cells (plumbing test).

Runs the CLI in-process (``bmcd.cli.main``) so TensorFlow is imported once per session.
Tiny settings (32 px, 1 epoch): this checks wiring and outputs, not accuracy.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from bmcd.cli import EXIT_ERROR, EXIT_OK, EXIT_PARTIAL, main


@pytest.fixture(scope="module")
def cli_model(synthetic_small, tmp_path_factory):
    pytest.importorskip("tensorflow")
    base = tmp_path_factory.mktemp("cli")
    out = base / "model"
    code = main([
        "train", str(synthetic_small), "--arch", "mobilenet_v2", "--out", str(out),
        "--image-size", "32", "--epochs", "1", "--fine-tune-epochs", "0",
        "--weights", "none", "--crop-size", "none", "--batch-size", "16", "--seed", "1",
        "--quiet",
        "--cache-dir", str(base / "cache"), "--checkpoint-dir", str(base / "ckpt"),
    ])
    assert code == EXIT_OK
    # preprocessed once into a reusable uint8 memory map; the best epoch checkpointed
    assert len(list((base / "cache").glob("train-*.npy"))) == 1
    assert (base / "ckpt" / "full.best.keras").is_file()
    # --crop-size none reaches the model's preprocessing config
    from bmcd.artifact import ModelMeta

    assert ModelMeta.read(out).preprocess.crop_size is None
    return out


def test_train_writes_model_directory_and_report(cli_model, capsys):
    names = sorted(p.name for p in cli_model.iterdir())
    assert names == ["bmcd.json", "model.keras", "report"]
    report = sorted(p.name for p in (cli_model / "report").iterdir())
    assert report == ["confusion.png", "curves.png", "metrics.json", "reliability.png",
                      "report.html", "roc.png"]
    meta = json.loads((cli_model / "bmcd.json").read_text())
    assert meta["arch"] == "mobilenet_v2" and meta["image_size"] == 32
    training = meta["training"]
    assert training["split"]["method"] == "subject" and training["split"]["seed"] == 1
    assert training["split"]["shared_subjects"] == []
    assert training["weights"] is None and training["mode"] == "scratch"
    assert training["seeds"]["keras"] == 1 and training["epochs_run"] == {"full": 1}
    assert training["data"]["train"]["fingerprint"] != training["data"]["validation"]["fingerprint"]
    test = meta["metrics"]["test"]
    assert test["n"] == training["split"]["test"]["n"] and test["synthetic"] is True
    assert "validation" in meta["metrics"]
    # the threshold is tuned on the validation part, never on the test part (issue 13)
    tt = training["threshold_tuning"]
    assert tt["part"] == "validation" and tt["n"] == training["split"]["val"]["n"]
    assert set(tt["subjects"]).isdisjoint(training["split"]["test"]["subjects"])
    assert meta["threshold"] == tt["threshold"] == test["threshold"]
    assert test["intervals"]["unit"] == "subject" and "ece" in test
    metrics = json.loads((cli_model / "report" / "metrics.json").read_text())
    assert metrics["dataset_info"]["part"] == "test"
    assert "SYNTHETIC" in (cli_model / "report" / "report.html").read_text().upper()


def test_evaluate_prints_table_and_writes_report(cli_model, synthetic_small, tmp_path, capsys):
    code = main(["evaluate", str(cli_model), str(synthetic_small), "--report",
                 str(tmp_path / "rep")])
    out = capsys.readouterr().out
    assert code == EXIT_OK
    assert "SYNTHETIC" in out and "accuracy" in out.lower() and "| " in out
    metrics = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert metrics["metrics"]["n"] == 80
    assert (tmp_path / "rep" / "report.html").is_file()


def test_predict_prints_path_probability_label(cli_model, synthetic_small, tmp_path, capsys):
    from bmcd import Classifier

    files = sorted(str(p) for p in synthetic_small.rglob("*.bmp"))[:3]
    bad = tmp_path / "broken.bmp"
    bad.write_bytes(b"not an image")
    code = main(["predict", str(cli_model), *files, str(bad)])
    captured = capsys.readouterr()
    assert code == EXIT_PARTIAL  # one unreadable file: reported, the rest printed
    assert "broken.bmp" in captured.err
    rows = [line.split("\t") for line in captured.out.strip().splitlines()]
    assert [r[0] for r in rows] == files
    p = np.array([float(r[1]) for r in rows])
    clf = Classifier.load(cli_model)
    assert np.allclose(p, clf.predict_proba(files)[:, 1], atol=1e-6)
    assert [r[2] for r in rows] == ["all" if v >= clf.threshold_ else "hem" for v in p]

    code = main(["predict", str(cli_model), str(synthetic_small / "hem")])
    assert code == EXIT_OK
    assert len(capsys.readouterr().out.strip().splitlines()) == 40


def test_cli_errors_are_one_line(cli_model, tmp_path, capsys):
    assert main(["predict", str(tmp_path / "missing"), "x.bmp"]) == EXIT_ERROR
    err = capsys.readouterr().err.strip()
    assert err.startswith("bmcd predict: error:") and len(err.splitlines()) == 1
    with pytest.raises(SystemExit) as exc:  # a usage error (issue 12): exit 2
        main(["predict", str(cli_model), "x.bmp", "--int8"])
    assert exc.value.code == 2
    assert "--int8 needs --backend onnx" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["train", "data", "--arch", "vgg16", "--out", "m"])
    assert exc.value.code == 2


def test_run_demo_end_to_end_tiny(tmp_path, capsys):
    """The demo's steps at toy size (the real demo is timed in the closing note, ~2 min)."""
    pytest.importorskip("tensorflow")
    from bmcd.demo import REAL_DATA_COMMAND, run_demo

    result = run_demo(tmp_path / "demo", n_per_class=24, n_subjects=6, image_size=32,
                      epochs=1)
    out = capsys.readouterr().out
    assert "SYNTHETIC" in out and REAL_DATA_COMMAND in out
    assert result["synthetic"] is True and result["report"].synthetic
    assert (result["report_dir"] / "report.html").is_file()
    assert (result["model_dir"] / "model.keras").is_file()
    assert result["classifier"].model_dir_ == result["model_dir"]
    split = result["split"]
    assert split.method == "subject" and split.shared_subjects() == []
    assert result["metrics"]["test"]["n"] == len(split.test)
    assert result["settings"]["image_size"] == 32
    assert set(result["seconds"]) >= {"data", "fit", "evaluate", "save", "total"}
    meta = json.loads((result["model_dir"] / "bmcd.json").read_text())
    assert meta["metrics"]["test"]["synthetic"] is True


def test_demo_command_passes_options(monkeypatch, tmp_path):
    import bmcd.demo

    seen = {}
    monkeypatch.setattr(bmcd.demo, "run_demo", lambda out, **kw: seen.update(out=out, **kw))
    assert main(["demo", "--out", str(tmp_path), "--quick", "--seed", "3"]) == EXIT_OK
    assert seen == {"out": str(tmp_path), "arch": "mobilenet_v2", "quick": True, "seed": 3}
