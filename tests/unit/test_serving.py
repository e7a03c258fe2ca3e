"""``bmcd serve``: API, limits, per-image errors and micro-batching (bmcd.serving).

Runs on a tiny but real ONNX model (tests/_serve_helpers.py) and, when present, on the real
C-NMC sample cells; every probability is compared with ``Classifier.load(...,
backend="onnx").predict_proba`` on the same files.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
pytest.importorskip("httpx")
pytest.importorskip("onnx")

from fastapi.testclient import TestClient  # noqa: E402

from _serve_helpers import build_serving_model  # noqa: E402
from _tiny_models import write_bad_files, write_cell_images  # noqa: E402
from bmcd import Classifier  # noqa: E402
from bmcd.serving import ServeLimits, create_app  # noqa: E402
from bmcd.serving.batcher import MicroBatcher  # noqa: E402
from bmcd.serving.limits import image_dimensions  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> list[Path]:
    return write_cell_images(tmp_path_factory.mktemp("serve_cells"), 12, seed=3)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, cells) -> Path:
    return build_serving_model(tmp_path_factory.mktemp("serve") / "model", cells,
                               int8_bias_shift=0.7)


def _files(paths):
    return [("files", (Path(p).name, Path(p).read_bytes())) for p in paths]


def _expected(model_dir, paths, precision="fp32"):
    clf = Classifier.load(model_dir, backend="onnx", precision=precision)
    return clf.predict_proba(list(paths))[:, 1], list(clf.predict(list(paths))), clf.threshold_


def _check_matches(results, model_dir, paths, precision="fp32"):
    p, labels, thr = _expected(model_dir, paths, precision)
    assert [r["name"] for r in results] == [Path(x).name for x in paths]
    assert all(r["error"] is None for r in results), [r["error"] for r in results]
    got = np.array([r["p_all"] for r in results])
    # same preprocessing, same ONNX file; only the batch composition differs (float32)
    np.testing.assert_allclose(got, p, rtol=0, atol=1e-6)
    assert [r["label"] for r in results] == labels
    assert all(r["threshold"] == thr for r in results)


def test_predict_matches_onnx_backend_multi_file(model_dir, cells):
    with TestClient(create_app(model_dir)) as client:
        r = client.post("/v1/predict", files=_files(cells))
    assert r.status_code == 200
    body = r.json()
    _check_matches(body["results"], model_dir, cells)
    labels = {x["label"] for x in body["results"]}
    assert labels == {"all", "hem"}  # the model is centred on these cells
    assert [x["subject"] for x in body["results"]] == [
        Path(c).name.split("_")[1] for c in cells
    ]
    assert all(x["no_cell"] is False for x in body["results"])


def test_single_file_and_int8_serves_the_int8_file(model_dir, cells):
    for precision, file in (("fp32", "model.onnx"), ("int8", "model.int8.onnx")):
        app = create_app(model_dir, precision)
        with TestClient(app) as client:
            ident = client.get("/v1/model").json()
            r = client.post("/v1/predict", files=_files(cells[:1]))
        assert ident["precision"] == precision and ident["onnx_file"] == file
        assert ident["sha256"] == hashlib.sha256((model_dir / file).read_bytes()).hexdigest()
        _check_matches(r.json()["results"], model_dir, cells[:1], precision)
    # the two files differ, so the check above can tell them apart
    p32 = _expected(model_dir, cells[:1], "fp32")[0]
    p8 = _expected(model_dir, cells[:1], "int8")[0]
    assert abs(p32[0] - p8[0]) > 1e-3


def test_real_sample_cells_match_onnx_backend(tmp_path, cnmc_sample_files):
    files = cnmc_sample_files
    model = build_serving_model(tmp_path / "model", files)
    with TestClient(create_app(model, max_batch=8)) as client:
        r = client.post("/v1/predict", files=_files(files))
    assert r.status_code == 200
    results = r.json()["results"]
    _check_matches(results, model, files)
    assert {x["label"] for x in results} == {"all", "hem"}
    from bmcd.data import parse_subject

    assert [x["subject"] for x in results] == [parse_subject(f) for f in files]


def test_model_identity_and_health(model_dir):
    with TestClient(create_app(model_dir, max_batch=4, max_wait_ms=2)) as client:
        ident = client.get("/v1/model").json()
        health = client.get("/healthz").json()
        page = client.get("/")
    import json

    meta = json.loads((model_dir / "bmcd.json").read_text())
    assert ident["arch"] == meta["arch"] and ident["image_size"] == meta["image_size"]
    assert ident["preprocess"] == meta["preprocess"]
    assert ident["classes"] == ["hem", "all"] and ident["threshold"] == meta["threshold"]
    import bmcd

    assert ident["bmcd_version"] == bmcd.__version__
    assert ident["serving"]["max_batch"] == 4 and ident["cam_available"] is False
    assert health["status"] == "ok" and health["batching"]["calls"] == 0
    assert page.status_code == 200 and 'type="file"' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN: works offline


def test_bad_images_get_per_image_errors_not_500(model_dir, cells, tmp_path):
    bad = write_bad_files(tmp_path, cells[0])
    paths = [cells[0], bad["truncated"], bad["empty"], bad["text"], cells[1]]
    with TestClient(create_app(model_dir), raise_server_exceptions=False) as client:
        r = client.post("/v1/predict", files=_files(paths))
    assert r.status_code == 200
    res = r.json()["results"]
    assert [x["error_code"] for x in res] == [None, "unreadable", "unreadable", "unreadable", None]
    for x in res[1:4]:
        assert x["p_all"] is None and x["label"] is None and x["error"]
    _check_matches([res[0], res[4]], model_dir, [cells[0], cells[1]])


def test_request_too_large_gets_413(model_dir, cells):
    limits = ServeLimits(max_request_bytes=100_000)
    with TestClient(create_app(model_dir, limits=limits)) as client:
        r = client.post("/v1/predict", files=_files(cells[:2]))  # 2 x ~600 kB
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "request_too_large"
        assert "100000" in r.json()["error"]["message"]

        # no Content-Length (chunked): counted while it streams
        body = b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.bmp\"\r\n\r\n"
        body += b"x" * 300_000 + b"\r\n--b--\r\n"

        def gen():
            for i in range(0, len(body), 8192):
                yield body[i : i + 8192]

        r = client.post("/v1/predict", content=gen(),
                        headers={"content-type": "multipart/form-data; boundary=b"})
        assert r.status_code == 413
    small = ServeLimits(max_request_bytes=2_000_000)
    with TestClient(create_app(model_dir, limits=small)) as client:
        assert client.post("/v1/predict", files=_files([cells[0]])).status_code == 200


def test_too_many_files_gets_413(model_dir, cells):
    with TestClient(create_app(model_dir, limits=ServeLimits(max_files=3))) as client:
        r = client.post("/v1/predict", files=_files(cells[:4]))
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_files"
        assert client.post("/v1/predict", files=_files(cells[:3])).status_code == 200


def test_too_many_pixels_is_a_per_image_error(model_dir, cells):
    import cv2

    big = np.zeros((400, 600, 3), np.uint8)  # 600 x 400 = 240000 pixels
    big[100:200, 100:250] = 180
    items = []
    for ext in (".png", ".bmp", ".jpg", ".tif"):
        ok, buf = cv2.imencode(ext, big)
        assert ok
        items.append(("files", (f"big{ext}", buf.tobytes())))
    items += _files([cells[0]])
    # a 450 x 450 C-NMC-sized cell (202500 pixels) fits, 600 x 400 does not
    with TestClient(create_app(model_dir, limits=ServeLimits(max_pixels=450 * 450))) as client:
        r = client.post("/v1/predict", files=items)
    assert r.status_code == 200
    res = r.json()["results"]
    # PNG, BMP, JPEG refused from the header; TIFF after decoding
    assert [x["error_code"] for x in res[:4]] == ["too_many_pixels"] * 4
    assert "600 x 400" in res[0]["error"]
    _check_matches(res[4:], model_dir, cells[:1])


def test_pixel_limit_refuses_a_forged_header_without_decoding(model_dir):
    import struct
    import zlib

    # a PNG whose header claims 60000 x 60000 (3.6 gigapixels) in a few bytes
    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
    png += struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + b"\x00" * 64
    assert image_dimensions(png) == (60000, 60000)
    with TestClient(create_app(model_dir)) as client:
        r = client.post("/v1/predict", files=[("files", ("bomb.png", png))])
    assert r.status_code == 200
    assert r.json()["results"][0]["error_code"] == "too_many_pixels"


def test_image_dimensions_of_real_encodings():
    import cv2

    img = np.zeros((37, 53, 3), np.uint8)
    for ext in (".png", ".bmp", ".jpg", ".tif"):  # TIFF: the first IFD (bmcd.imageio)
        ok, buf = cv2.imencode(ext, img)
        assert image_dimensions(buf.tobytes()) == (53, 37), ext
    assert image_dimensions(b"") is None and image_dimensions(b"BM") is None


def test_too_large_file_is_a_per_image_error(model_dir, cells):
    with TestClient(create_app(model_dir, limits=ServeLimits(max_image_bytes=1000))) as client:
        import cv2

        small = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
        res = client.post("/v1/predict", files=_files(cells[:1]) + [
            ("files", ("small.png", small))]).json()["results"]
    assert res[0]["error_code"] == "too_large" and res[1]["error"] is None


def test_request_shape_errors(model_dir, cells):
    with TestClient(create_app(model_dir)) as client:
        r = client.post("/v1/predict", json={"files": []})
        assert r.status_code == 415 and "multipart" in r.json()["error"]["message"]
        r = client.post("/v1/predict", data={"note": "x"}, files=[("other", ("", b""))])
        assert r.status_code in (400,)
        r = client.post("/v1/predict?cam=true", files=_files(cells[:1]))
        assert r.status_code == 501 and r.json()["error"]["code"] == "cam_not_available"
        r = client.post("/v1/predict", data={"cam": "false"}, files=_files(cells[:1]))
        assert r.status_code == 200


def _run_concurrent(app, paths, n_requests):
    import httpx

    async def main():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                reqs = [c.post("/v1/predict", files=_files([paths[i % len(paths)]]))
                        for i in range(n_requests)]
                return await asyncio.gather(*reqs)

    return asyncio.run(main())


@pytest.mark.parametrize("max_batch", [1, 16])
def test_micro_batching_batches_concurrent_requests(model_dir, cells, max_batch):
    app = create_app(model_dir, max_batch=max_batch, max_wait_ms=200, preprocess_workers=2)
    batcher = app.state.batcher
    inner = batcher.predict
    sizes = []

    def counting(x):
        sizes.append(len(x))
        return inner(x)

    batcher.predict = counting
    n = 16
    responses = _run_concurrent(app, cells, n)
    assert all(r.status_code == 200 for r in responses)
    results = [r.json()["results"][0] for r in responses]
    paths = [cells[i % len(cells)] for i in range(n)]
    _check_matches(results, model_dir, paths)  # every answer went back to its own request
    assert sum(sizes) == n and batcher.stats.calls == len(sizes)
    if max_batch == 1:
        assert sizes == [1] * n
    else:
        assert max(sizes) <= max_batch
        assert len(sizes) <= 4, sizes  # 16 requests together: a few calls, not 16


def test_batcher_maps_results_and_respects_max_batch():
    calls = []

    def predict(x):
        calls.append(len(x))
        return x.reshape(len(x), -1)[:, 0] * 2.0

    async def main():
        b = MicroBatcher(predict, max_batch=4, max_wait_ms=100)
        await b.start()
        try:
            xs = [np.full((2, 2, 3), i, np.float32) for i in range(10)]
            return await asyncio.gather(*(b.submit(x) for x in xs)), b.stats.to_dict()
        finally:
            await b.stop()

    out, stats = asyncio.run(main())
    assert out == [2.0 * i for i in range(10)]
    assert calls == [4, 4, 2] and stats["calls"] == 3 and stats["images"] == 10


def test_batcher_rejects_bad_settings():
    from bmcd.errors import BmcdError

    with pytest.raises(BmcdError, match="max_batch"):
        MicroBatcher(lambda x: x, max_batch=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        MicroBatcher(lambda x: x, max_wait_ms=-1)
    with pytest.raises(ValueError, match="max_pixels"):
        ServeLimits(max_pixels=0)


def test_missing_extra_names_the_install_line(model_dir, monkeypatch):
    from bmcd.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "fastapi", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'bmcd\[serve\]'"):
        create_app(model_dir)


def test_unknown_precision_and_missing_int8(tmp_path, cells):
    from bmcd.errors import BmcdError, ModelFormatError

    only32 = build_serving_model(tmp_path / "m", cells[:2])
    with pytest.raises(BmcdError, match="precision"):
        create_app(only32, "bf16")
    with pytest.raises(ModelFormatError, match="int8"):
        create_app(only32, "int8")


def test_serve_command_prints_url_and_stops_on_ctrl_c(model_dir, cells):
    import httpx

    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bmcd.cli", "serve", str(model_dir), "--port", "0", "--max-batch", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        url = None
        deadline = time.time() + 60
        while time.time() < deadline and url is None:
            line = proc.stdout.readline()
            if not line:
                break
            if "listening on " in line:
                url = line.split("listening on ")[1].split()[0]
        assert url and url.startswith("http://127.0.0.1:"), proc.stderr.read() if proc.poll() else url
        for _ in range(100):
            try:
                r = httpx.post(url + "v1/predict", files=_files(cells[:2]), timeout=10)
                break
            except httpx.ConnectError:
                time.sleep(0.1)
        assert r.status_code == 200 and len(r.json()["results"]) == 2
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=30)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 0, err
    assert "stopped" in err and "Traceback" not in err


def test_lone_request_does_not_wait_for_a_batch(model_dir, cells, tmp_path):
    """The wait is adaptive: with nothing else on its way, a batch runs at once."""
    bad = write_bad_files(tmp_path, cells[0])
    app = create_app(model_dir, max_batch=32, max_wait_ms=3000)
    with TestClient(app) as client:
        client.post("/v1/predict", files=_files(cells[:1]))  # warm-up
        t0 = time.perf_counter()
        r1 = client.post("/v1/predict", files=_files(cells[:1]))
        # a corrupt image announced with a good one must not hold the batch either
        r2 = client.post("/v1/predict", files=_files([cells[1], bad["truncated"]]))
        elapsed = time.perf_counter() - t0
    assert r1.status_code == r2.status_code == 200
    assert r2.json()["results"][1]["error_code"] == "unreadable"
    assert elapsed < 2.0, f"two lone requests took {elapsed:.2f} s with max_wait_ms=3000"


def test_batcher_waits_for_announced_images_and_wakes_on_withdraw():
    calls = []

    def predict(x):
        calls.append(len(x))
        return np.zeros(len(x))

    async def main():
        b = MicroBatcher(predict, max_batch=8, max_wait_ms=3000)
        await b.start()
        try:
            x = np.zeros((2, 2, 3), np.float32)
            b.announce()
            b.announce()
            t0 = time.perf_counter()
            first = asyncio.ensure_future(b.submit(x, announced=True))
            await asyncio.sleep(0.2)
            assert not first.done()  # waits: one announced image is still on its way
            second = asyncio.ensure_future(b.submit(x, announced=True))
            await asyncio.gather(first, second)
            both = time.perf_counter() - t0
            b.announce()
            b.announce()
            t1 = time.perf_counter()
            third = asyncio.ensure_future(b.submit(x, announced=True))
            await asyncio.sleep(0.2)
            b.withdraw()  # the other one failed to decode: the batch goes at once
            await third
            return both, time.perf_counter() - t1
        finally:
            await b.stop()

    both, third = asyncio.run(main())
    assert calls == [2, 1]
    assert both < 2.0 and third < 2.0, (both, third)


def test_serve_command_reports_a_busy_port(model_dir):
    import socket

    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2] / "src") + os.pathsep + env.get(
        "PYTHONPATH", "")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "bmcd.cli", "serve", str(model_dir), "--port", str(port)],
            capture_output=True, text=True, env=env, timeout=60,
        )
    assert proc.returncode == 1
    assert f"Cannot listen on 127.0.0.1:{port}" in proc.stderr and "--port" in proc.stderr
    assert "Traceback" not in proc.stderr
