"""Class activation maps without TensorFlow: overlays, the ONNX ``cam`` output, the
``bmcd explain`` command, the report gallery and ``cam=true`` in ``bmcd serve``.

The model is the tiny two-output ONNX graph of ``tests/_tiny_cam_model.py`` whose map is
known in numpy; the maps of trained networks are tested in tests/integration/test_cam.py.
"""

from __future__ import annotations

import base64
import csv
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")

from _tiny_cam_model import build_tiny_cam_model, centred_bias, tiny_cam_expected  # noqa: E402
from _tiny_models import write_cell_images  # noqa: E402
from bmcd import Classifier  # noqa: E402
from bmcd.errors import BmcdError, CamUnavailableError, ConfigError  # noqa: E402
from bmcd.explain import (  # noqa: E402
    build_gallery,
    cell_mask,
    heat,
    mass_inside,
    overlay,
    png_base64,
    to_png,
    upsample,
)
from bmcd.preprocessing import PreprocessConfig, preprocess_batch  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> list[Path]:
    return write_cell_images(tmp_path_factory.mktemp("cam_cells"), 12, seed=5)


@pytest.fixture(scope="module")
def cam_model(tmp_path_factory, cells) -> Path:
    return build_tiny_cam_model(tmp_path_factory.mktemp("cam") / "model",
                                bias=centred_bias(cells))


# ----------------------------------------------------------------------- pictures


def test_heat_is_min_max_and_sign_flips_it():
    cam = np.array([[-1.0, 0.0], [1.0, 3.0]], np.float32)
    np.testing.assert_allclose(heat(cam), [[0, 0.25], [0.5, 1.0]])
    np.testing.assert_allclose(heat(cam, sign=-1), [[1.0, 0.75], [0.5, 0.0]])
    assert heat(np.full((3, 3), 2.0)).max() == 0.0  # no contrast, no heat
    with pytest.raises(ConfigError, match="2-D"):
        heat(np.zeros((1, 2, 2)))


def test_overlay_puts_red_on_the_hot_cell_and_png_round_trips():
    import cv2

    img = np.full((64, 64, 3), 128, np.float32)
    cam = np.zeros((4, 4), np.float32)
    cam[0, 3] = 5.0  # top right is hot
    over = overlay(img, cam)
    assert over.shape == (64, 64, 3) and over.dtype == np.uint8
    hot, cold = over[4, 60], over[60, 4]
    assert hot[0] > hot[2] and cold[2] > cold[0]  # JET: red where hot, blue where cold
    data = to_png(over)
    assert data.startswith(PNG_MAGIC)
    back = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR),
                        cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(back, over)
    assert base64.b64decode(png_base64(over)) == data
    with pytest.raises(ConfigError, match="alpha"):
        overlay(img, cam, alpha=2)


def test_upsample_commutes_with_flips():
    cam = np.random.default_rng(0).normal(size=(7, 7)).astype(np.float32)
    np.testing.assert_allclose(upsample(cam[:, ::-1], 224), upsample(cam, 224)[:, ::-1],
                               atol=1e-5)


def test_mass_inside_beats_the_area_fraction_only_for_a_centred_map():
    mask = np.zeros((32, 32), bool)
    mask[8:24, 8:24] = True  # a quarter of the image
    centred = -np.add.outer((np.arange(4) - 1.5) ** 2, (np.arange(4) - 1.5) ** 2)
    assert mass_inside(centred, mask) > mask.mean() + 0.1
    assert mass_inside(-centred, mask) < mask.mean()
    assert np.isnan(mass_inside(np.ones((4, 4)), mask))


def test_cell_mask_follows_the_preprocessing_threshold():
    img = np.zeros((16, 16, 3), np.float32)
    img[4:8, 4:8] = 200.0
    img[10, 10] = 9.0  # below the default gray threshold 10
    m = cell_mask(img)
    assert m.sum() == 16 and m[5, 5] and not m[10, 10]


# ----------------------------------------------------------------------- ONNX backend


def test_onnx_backend_returns_the_cam_output(cam_model, cells):
    clf = Classifier.load(cam_model, backend="onnx")
    assert clf.backend_.has_cam
    cfg = PreprocessConfig(image_size=32)
    x = preprocess_batch(cells, cfg)
    p, cam = clf.backend_.explain_batch(x)
    p_np, cam_np = tiny_cam_expected(x, bias=centred_bias(cells))
    np.testing.assert_allclose(cam, cam_np, atol=1e-4)
    np.testing.assert_allclose(p, p_np, atol=1e-6)
    # fetching p_all alone gives the same numbers, and the map's mean is the logit
    np.testing.assert_allclose(clf.backend_.predict_batch(x), p, atol=1e-7)
    np.testing.assert_allclose(1 / (1 + np.exp(-cam.mean(axis=(1, 2)))), p, atol=1e-6)
    maps = clf.explain(cells)
    np.testing.assert_allclose(maps, cam, atol=1e-6)
    maps2, overs = clf.explain([str(c) for c in cells[:3]], overlay=True)
    assert overs.shape == (3, 32, 32, 3) and overs.dtype == np.uint8
    np.testing.assert_allclose(maps2, cam[:3], atol=1e-6)


def test_a_flipped_image_gives_the_flipped_map_and_overlay(cam_model, cells):
    """(c) for a flip-equivariant model (block means): exact, through ONNX and the overlay."""
    from bmcd.explain import explain_preprocessed

    be = Classifier.load(cam_model, backend="onnx").backend_
    x = preprocess_batch(cells[:4], PreprocessConfig(image_size=32))
    _, maps, overs = explain_preprocessed(be, x, 0.5, True)
    for axis in (1, 2):  # vertical, horizontal
        _, fm, fo = explain_preprocessed(be, np.flip(x, axis=axis), 0.5, True)
        np.testing.assert_allclose(fm, np.flip(maps, axis=axis), atol=1e-5)
        diff = np.abs(fo.astype(int) - np.flip(overs, axis=axis).astype(int))
        assert diff.max() <= 1  # one gray level of rounding


def test_a_model_without_cam_says_how_to_re_export(tiny_onnx_model_dir, cells):
    clf = Classifier.load(tiny_onnx_model_dir, backend="onnx")
    assert not clf.backend_.has_cam
    with pytest.raises(CamUnavailableError, match="bmcd export") as info:
        clf.explain(cells[:2])
    assert isinstance(info.value, BmcdError) and isinstance(info.value, ValueError)
    assert build_gallery(clf.backend_, [str(c) for c in cells], np.zeros(len(cells)),
                         np.linspace(0, 1, len(cells)), 0.5, PreprocessConfig(image_size=32)) == []


def test_onnx_backend_pickles_with_its_cam(cam_model, cells):
    import pickle

    be = Classifier.load(cam_model, backend="onnx").backend_
    again = pickle.loads(pickle.dumps(be))
    x = preprocess_batch(cells[:2], PreprocessConfig(image_size=32))
    np.testing.assert_array_equal(again.explain_batch(x)[1], be.explain_batch(x)[1])


# ----------------------------------------------------------------------- report, CLI


def test_evaluate_puts_a_gallery_of_overlays_into_report_html(cam_model, cells, tmp_path):
    clf = Classifier.load(cam_model, backend="onnx")
    labels = ["all" if c.stem.endswith("_all") else "hem" for c in cells]
    rep = clf.evaluate(([str(c) for c in cells], labels))
    kinds = [g["kind"] for g in rep.gallery]
    errors = int((rep.p_all >= rep.threshold).astype(int).__ne__(rep.y_true).sum())
    assert kinds.count("error") == min(errors, 8)
    assert kinds.count("correct") >= 1
    errs = [g for g in rep.gallery if g["kind"] == "error"]
    conf = [abs(g["p_all"] - rep.threshold) for g in errs]
    assert conf == sorted(conf, reverse=True)  # most confident first
    assert all(g["png"].startswith(PNG_MAGIC) for g in rep.gallery)
    assert all(g["true"] != g["predicted"] for g in errs)
    rep.save(tmp_path / "report", plots=False)
    page = (tmp_path / "report" / "report.html").read_text()
    assert "Where the model looked" in page
    assert page.count("data:image/png;base64,") == len(rep.gallery)
    assert "http://" not in page and "https://" not in page


def test_cli_explain_writes_overlays_and_a_table(cam_model, cells, tmp_path, capsys):
    from bmcd.cli import main

    out = tmp_path / "maps"
    assert main(["explain", str(cam_model), str(cells[0].parent), "--out", str(out)]) == 0
    assert "overlays" in capsys.readouterr().out
    rows = list(csv.DictReader((out / "explain.csv").open()))
    assert len(rows) == len(cells)
    clf = Classifier.load(cam_model, backend="onnx")
    labels = dict(zip([str(c) for c in cells], clf.predict([str(c) for c in cells]), strict=False))
    for r in rows:
        assert (out / r["overlay"]).read_bytes().startswith(PNG_MAGIC)
        assert r["label"] == labels[r["path"]]
    assert main(["explain", str(cam_model), str(cells[0]), "--out", str(out),
                 "--backend", "keras", "--int8"]) == 1


def test_cli_explain_on_a_model_without_cam_fails_with_the_hint(tiny_onnx_model_dir, cells,
                                                               tmp_path, capsys):
    from bmcd.cli import main

    rc = main(["explain", str(tiny_onnx_model_dir), str(cells[0]), "--out", str(tmp_path),
               "--backend", "onnx"])
    assert rc == 1 and "bmcd export" in capsys.readouterr().err


# ----------------------------------------------------------------------- serving


def test_serve_returns_overlays_on_request(cam_model, cells):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    pytest.importorskip("multipart")
    from fastapi.testclient import TestClient

    from bmcd.serving import create_app

    files = [("files", (c.name, c.read_bytes())) for c in cells[:3]]
    with TestClient(create_app(cam_model, max_wait_ms=1)) as client:
        assert client.get("/v1/model").json()["cam_available"] is True
        plain = client.post("/v1/predict", files=files).json()["results"]
        assert all(r.get("cam_png") is None for r in plain)
        got = client.post("/v1/predict?cam=true", files=files).json()["results"]
        form = client.post("/v1/predict", data={"cam": "1"}, files=files).json()["results"]
    clf = Classifier.load(cam_model, backend="onnx")
    _, overs = clf.explain([str(c) for c in cells[:3]], overlay=True)
    for r, o, f in zip(got, overs, form, strict=False):
        assert r["error"] is None and f["cam_png"] == r["cam_png"]
        assert base64.b64decode(r["cam_png"]) == to_png(o)
    assert [r["p_all"] for r in got] == [r["p_all"] for r in plain]


def test_int8_maps_that_failed_their_check_are_refused_not_the_int8_file(cam_model, cells,
                                                                          tmp_path):
    """p(all) decides whether the int8 file is kept; maps that failed their check at export
    are recorded, and the backend then refuses to explain with that file."""
    import json
    import shutil

    from bmcd.artifact import file_sha256

    d = tmp_path / "model"
    shutil.copytree(cam_model, d)
    shutil.copy(d / "model.onnx", d / "model.int8.onnx")  # stands in for the int8 file
    meta = json.loads((d / "bmcd.json").read_text())
    cam_record = {"passed": False, "max_rel_diff": 0.339, "rtol": 0.2, "min_correlation": 0.61}
    meta.setdefault("exports", {})["onnx_int8"] = {
        "file": "model.int8.onnx", "sha256": file_sha256(d / "model.int8.onnx"),
        "gate": {"passed": True, "cam": cam_record},
    }
    (d / "bmcd.json").write_text(json.dumps(meta))
    clf = Classifier.load(d, backend="onnx", precision="int8")
    assert not clf.backend_.has_cam
    assert clf.predict_proba(cells[:2]).shape == (2, 2)  # the int8 file itself serves
    with pytest.raises(CamUnavailableError, match="failed their check against fp32.*0.339"):
        clf.explain(cells[:2])
    cam_record["passed"] = True
    (d / "bmcd.json").write_text(json.dumps(meta))
    clf = Classifier.load(d, backend="onnx", precision="int8")
    assert clf.backend_.has_cam and clf.explain(cells[:2]).shape[0] == 2
