"""Issue 12, images / models / predict: hostile inputs give one clear BmcdError, never a
traceback, and memory stays bounded (docs/models.rst "Pixel limit",
docs/models.rst "Integrity").

Each test here fails on the code before issue 12 (noted per test).
"""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

import bmcd
from bmcd import imageio
from bmcd.artifact import (
    ONNX_FILE,
    file_sha256,
    read_model_json,
    rehash_exports,
    update_model_json,
    validate_model_json,
)
from bmcd.cli import EXIT_ERROR, EXIT_OK, EXIT_PARTIAL, main
from bmcd.errors import BmcdError, ImageReadError, ModelFormatError
from bmcd.preprocessing import (
    PreprocessConfig,
    preprocess,
    preprocess_batch_with_info,
    preprocess_with_info,
    read_image,
)

ROOT = Path(__file__).resolve().parents[2]


def _bmp_header(width: int, height: int, size: int = 154) -> bytes:
    """A BMP of ``size`` bytes whose header claims ``width x height`` 24-bit pixels."""
    hdr = b"BM" + struct.pack("<IHHI", size, 0, 0, 54)
    hdr += struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 0, 0, 0, 0)
    return hdr + b"\0" * (size - len(hdr))


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
            + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + b"\0" * 64)


def _cell(size: int = 60, value: int = 180) -> np.ndarray:
    img = np.zeros((size, size, 3), np.uint8)
    cv2.circle(img, (size // 2, size // 2), size // 3, (value, value // 2, 40), -1)
    return img


def _write(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix, img)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


# ---------------------------------------------------------------- 6 / 7: huge headers


@pytest.mark.parametrize("kind", ["bmp", "png"])
def test_huge_header_is_refused_before_decoding(tmp_path, kind):
    # old code: cv2.error (not a BmcdError) escaped read_image for both files
    data = _bmp_header(100_000, 100_000) if kind == "bmp" else _png_header(40_000, 40_000)
    path = tmp_path / f"bomb.{kind}"
    path.write_bytes(data)
    for call in (read_image, preprocess):
        with pytest.raises(ImageReadError) as err:
            call(path)
        msg = str(err.value)
        assert str(path) in msg and "pixels" in msg and "BMCD_MAX_PIXELS" in msg
        assert "cv::" not in msg and "OpenCV(" not in msg
        assert err.value.path == str(path)


def test_decoder_refusal_is_an_image_read_error_without_opencv_text(tmp_path, monkeypatch):
    # with the limit raised past the header, OpenCV itself refuses: still a clean
    # ImageReadError (old code: cv2.error with OpenCV's source-file text)
    monkeypatch.setenv(imageio.MAX_PIXELS_ENV, str(10**12))
    path = tmp_path / "bomb.bmp"
    path.write_bytes(_bmp_header(100_000, 100_000))
    with pytest.raises(ImageReadError) as err:
        preprocess(path)
    assert str(path) in str(err.value) and "OpenCV(" not in str(err.value)


def test_pixel_limit_reads_png_bmp_jpeg_tiff_headers(tmp_path):
    img = np.full((37, 53, 3), 90, np.uint8)
    for ext in (".png", ".bmp", ".jpg", ".tif"):
        ok, buf = cv2.imencode(ext, img)
        assert imageio.image_dimensions(buf.tobytes()) == (53, 37), ext
        # 53 * 37 = 1961 pixels: refused at 1960, accepted at 1961
        with pytest.raises(ImageReadError, match="1,961 pixels"):
            read_image(buf.tobytes(), max_pixels=1960)
        assert read_image(buf.tobytes(), max_pixels=1961).shape == (37, 53, 3)
    # serving uses the same header reader (one implementation)
    from bmcd.serving import limits

    assert limits.image_dimensions is imageio.image_dimensions


def test_pixel_limit_is_configurable_by_env_and_setter(tmp_path, monkeypatch):
    path = _write(tmp_path / "c.png", _cell(60))  # 3600 pixels
    assert imageio.get_max_pixels() == imageio.DEFAULT_MAX_PIXELS == 50_000_000
    monkeypatch.setenv(imageio.MAX_PIXELS_ENV, "3599")
    with pytest.raises(ImageReadError):
        preprocess(path)
    monkeypatch.setenv(imageio.MAX_PIXELS_ENV, "3600")
    assert preprocess(path).shape == (224, 224, 3)
    try:
        imageio.set_max_pixels(100)  # the setter wins over the environment
        with pytest.raises(ImageReadError):
            preprocess(path)
    finally:
        imageio.set_max_pixels(None)
    monkeypatch.setenv(imageio.MAX_PIXELS_ENV, "lots")
    with pytest.raises(BmcdError, match="BMCD_MAX_PIXELS"):
        preprocess(path)
    with pytest.raises(BmcdError):
        imageio.set_max_pixels(0)


def test_large_png_peak_memory_stays_bounded(tmp_path):
    # a 20000 x 20000 PNG of zeros is ~1 MB on disk and 1.2 GB decoded; it must be refused
    # from its header, so the process never grows by gigabytes
    code = f"""
import resource, sys, zlib, struct
sys.path.insert(0, {str(ROOT / 'src')!r})
from bmcd.preprocessing import preprocess
from bmcd.errors import ImageReadError
w = h = 20000
raw = zlib.compress(b"".join(b"\\0" + bytes(w * 3) for _ in range(1)), 9)
ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
row = b"\\0" + bytes(w * 3)
comp = zlib.compressobj(9)
idat = b"".join(comp.compress(row) for _ in range(h)) + comp.flush()
png = b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
open({str(tmp_path / 'big.png')!r}, "wb").write(png)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    preprocess({str(tmp_path / 'big.png')!r})
except ImageReadError as exc:
    print("refused", len(png))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert lines[0] == "refused"
    assert int(lines[-1]) < 200  # MiB grown while "reading" it (decoding needs 1144 MiB)


def test_opencv_log_lines_are_silenced(tmp_path):
    # old code: "[ERROR:0@...] ... Unexpected end of input stream" twice per truncated BMP
    ok, buf = cv2.imencode(".bmp", np.full((100, 100, 3), 120, np.uint8))
    bad = tmp_path / "trunc.bmp"
    bad.write_bytes(buf.tobytes()[:2000])
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'src')!r})\n"
            f"from bmcd.preprocessing import read_image\n"
            f"from bmcd.errors import ImageReadError\n"
            f"try:\n    read_image({str(bad)!r})\nexcept ImageReadError as e:\n    print(e)\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_LOG_LEVEL"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=60)
    assert "trunc.bmp" in out.stdout
    assert "[ERROR" not in out.stderr and out.stderr.strip() == ""


# ---------------------------------------------------------------- no cell


def test_no_cell_flag_for_black_and_one_pixel_images():
    black = np.zeros((50, 50, 3), np.uint8)
    one = np.full((1, 1, 3), 200, np.uint8)
    speck = np.zeros((80, 80, 3), np.uint8)
    speck[10:12, 10:12] = 255
    for img in (black, one, speck):
        assert preprocess_with_info(img, PreprocessConfig(image_size=32))[1].no_cell
    assert not preprocess_with_info(_cell(), PreprocessConfig(image_size=32))[1].no_cell
    x, infos = preprocess_batch_with_info([black, _cell(), one], PreprocessConfig(image_size=32),
                                          workers=2)
    assert x.shape == (3, 32, 32, 3) and [i.no_cell for i in infos] == [True, False, True]


# ---------------------------------------------------------------- 10: symlink loops


def _loop_dataset(root: Path) -> Path:
    for cls in ("all", "hem"):
        for i in range(3):
            _write(root / cls / f"UID_{1 if cls == 'all' else 'H1'}_{i}_1_{cls}.bmp",
                   _cell(60, 120 + 40 * i))
    os.symlink("loop.bmp", root / "all" / "loop.bmp")  # a link to itself: ELOOP
    os.symlink("..", root / "hem" / "up")  # a folder link back above
    with pytest.raises(OSError) as err:
        (root / "all" / "loop.bmp").read_bytes()
    assert err.value.errno == errno.ELOOP
    return root


def test_symlink_loop_is_skipped_by_info_evaluate_and_predict(tmp_path, tiny_onnx_model_dir,
                                                              capsys):
    # old code: ELOOP crashed load_dataset / Classifier.predict(folder) / bmcd evaluate
    root = _loop_dataset(tmp_path / "ds")
    with pytest.warns(UserWarning, match="symbolic link loop"):
        ds = bmcd.load_dataset(root)
    assert len(ds) == 6
    clf = bmcd.Classifier.load(tiny_onnx_model_dir, backend="onnx")
    with pytest.warns(UserWarning, match="symbolic link loop"):
        assert len(clf.predict(root)) == 6
    with pytest.warns(UserWarning, match="symbolic link loop"):
        assert main(["info", str(root)]) == EXIT_OK
    with pytest.warns(UserWarning, match="symbolic link loop"):
        assert main(["evaluate", str(tiny_onnx_model_dir), str(root), "--backend", "onnx"]) \
            == EXIT_OK
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error" not in err.lower()


# ---------------------------------------------------------------- 11: bmcd.json types


def _good_meta() -> dict:
    from bmcd.artifact import new_model_json

    return new_model_json(arch="mobilenet_v2", preprocess=PreprocessConfig(image_size=32))


TAMPERED = [
    ("classes", 5), ("classes", None), ("classes", "hem,all"), ("classes", [0, 1]),
    ("classes", ["all", "hem"]), ("positive_class", None), ("positive_class", 1),
    ("threshold", None), ("threshold", "0.5"), ("threshold", True), ("threshold", 2.0),
    ("image_size", "32"), ("image_size", 32.0), ("image_size", None), ("arch", None),
    ("arch", 7), ("schema_version", "1"), ("schema_version", None), ("bmcd_version", 1),
    ("preprocess", None), ("preprocess", [32]), ("preprocess", {"image_size": "x"}),
    ("preprocess", {"interpolation": ["area"]}), ("preprocess", {"margin": None}),
    ("training", []), ("metrics", 3), ("exports", "onnx"), ("exports", {"onnx": 5}),
    ("exports", {"onnx": {"file": "model.onnx", "sha256": 12}}),
]


@pytest.mark.parametrize(("key", "value"), TAMPERED)
def test_tampered_bmcd_json_fields_give_model_format_error(key, value):
    # old code: "classes": 5 / null raised TypeError; several others passed silently
    meta = _good_meta()
    if key == "preprocess" and isinstance(value, dict):
        value = {**meta["preprocess"], **value}
    meta[key] = value
    with pytest.raises(ModelFormatError) as err:
        validate_model_json(meta, source="m/bmcd.json")
    assert "m/bmcd.json" in str(err.value)


def test_tampered_classes_in_predict_is_one_line(tmp_path, tiny_onnx_model_dir, capsys):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(tiny_onnx_model_dir, d)
    meta = json.loads((d / "bmcd.json").read_text())
    meta["classes"] = 5
    (d / "bmcd.json").write_text(json.dumps(meta))
    img = _write(tmp_path / "c.png", _cell())
    assert main(["predict", str(d), str(img), "--backend", "onnx"]) == EXIT_ERROR
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'classes' must be a list" in err


# ---------------------------------------------------------------- model sha256


def test_swapped_onnx_file_is_refused_until_rehashed(tmp_path, tiny_onnx_model_dir, capsys):
    # old code: a model.onnx whose sha256 differed from bmcd.json loaded and scored silently
    import shutil

    import _tiny_models

    d = tmp_path / "m"
    shutil.copytree(tiny_onnx_model_dir, d)
    update_model_json(d, "exports", "onnx",
                      {"file": ONNX_FILE, "sha256": file_sha256(d / ONNX_FILE)})
    img = _write(tmp_path / "c.png", _cell())
    p_before = bmcd.Classifier.load(d, backend="onnx").predict_proba([img])[0, 1]
    other = _tiny_models.build_tiny_onnx_model(tmp_path / "other", bias=-6.0)
    shutil.copy(other / ONNX_FILE, d / ONNX_FILE)  # a different, valid model
    with pytest.raises(ModelFormatError, match="--rehash"):
        bmcd.Classifier.load(d, backend="onnx")
    assert main(["predict", str(d), str(img), "--backend", "onnx"]) == EXIT_ERROR
    assert "does not match the sha256" in capsys.readouterr().err
    assert main(["export", str(d), "--rehash"]) == EXIT_OK
    assert read_model_json(d)["exports"]["onnx"]["sha256"] == file_sha256(d / ONNX_FILE)
    p_after = bmcd.Classifier.load(d, backend="onnx").predict_proba([img])[0, 1]
    assert p_after != pytest.approx(p_before)  # the swapped model now runs, knowingly
    assert rehash_exports(d) == {"onnx": file_sha256(d / ONNX_FILE)}


def test_model_folder_with_non_utf8_name_loads(tmp_path, tiny_onnx_model_dir, capsys):
    # old code: a multi-line pybind error and advice to re-export
    import shutil

    d = Path(os.fsdecode(os.fsencode(str(tmp_path)) + b"/mod\xff"))
    shutil.copytree(tiny_onnx_model_dir, d)
    img = _write(tmp_path / "c.png", _cell())
    assert main(["predict", str(d), str(img), "--backend", "onnx"]) == EXIT_OK
    out = capsys.readouterr()
    assert out.out.count("\n") == 1 and out.err == ""


# ---------------------------------------------------------------- predict CLI


def test_predict_flags_no_cell_and_escapes_paths(tmp_path, tiny_onnx_model_dir, capsys):
    # old code: no flag; a newline in a name split its line; a non-UTF-8 name crashed print
    cell = _write(tmp_path / "cell.png", _cell())
    black = _write(tmp_path / "black.png", np.zeros((40, 40, 3), np.uint8))
    nl = _write(tmp_path / "new\nline.png", _cell(50))
    raw = Path(os.fsdecode(os.fsencode(str(tmp_path)) + b"/lat\xe9.png"))
    _write(tmp_path / "tmp.png", _cell(70)).rename(raw)
    code = main(["predict", str(tiny_onnx_model_dir), str(cell), str(black), str(nl), str(raw),
                 "--backend", "onnx"])
    out = capsys.readouterr().out
    assert code == EXIT_OK
    rows = [line.split("\t") for line in out.splitlines()]
    assert len(rows) == 4
    assert rows[0][0] == str(cell) and len(rows[0]) == 3
    assert rows[1][0] == str(black) and rows[1][3] == "no_cell"
    assert rows[2][0] == str(tmp_path) + "/new\\nline.png"
    assert rows[3][0] == str(tmp_path) + "/lat\\xe9.png"
    for r in rows:
        assert float(r[1]) >= 0 and r[2] in ("all", "hem")


@pytest.mark.parametrize("value", ["0", "-7", "two"])
def test_predict_rejects_bad_batch_size_as_usage_error(value, tiny_onnx_model_dir, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(tiny_onnx_model_dir), "x.png", "--batch-size", value])
    assert exc.value.code == 2 and "--batch-size" in capsys.readouterr().err


def test_predict_int8_without_onnx_is_a_usage_error(tiny_onnx_model_dir, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(tiny_onnx_model_dir), "x.png", "--int8"])
    assert exc.value.code == 2 and "--backend onnx" in capsys.readouterr().err


def test_predict_bombs_are_reported_not_raised(tmp_path, tiny_onnx_model_dir, capsys):
    (tmp_path / "bomb.bmp").write_bytes(_bmp_header(100_000, 100_000))
    (tmp_path / "bomb.png").write_bytes(_png_header(40_000, 40_000))
    cell = _write(tmp_path / "cell.png", _cell())
    code = main(["predict", str(tiny_onnx_model_dir), str(tmp_path), "--backend", "onnx"])
    out = capsys.readouterr()
    assert code == EXIT_PARTIAL
    assert out.out.splitlines()[0].startswith(str(cell))
    assert out.err.count("pixels, more than the limit") == 2 and "Traceback" not in out.err


def test_classifier_predict_details(tiny_onnx_model_dir):
    clf = bmcd.Classifier.load(tiny_onnx_model_dir, backend="onnx")
    items = [_cell(), np.zeros((30, 30, 3), np.uint8), np.full((1, 1, 3), 250, np.uint8)]
    d = clf.predict_details(items)
    assert d["no_cell"].tolist() == [False, True, True]
    np.testing.assert_allclose(d["p_all"], clf.predict_proba(items)[:, 1])
    assert d["label"].tolist() == clf.predict(items).tolist()


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_every_onnx_backend_verifies_the_recorded_sha256(backend, tmp_path, tiny_onnx_model_dir):
    import shutil

    if backend == "openvino":
        pytest.importorskip("openvino")
    d = tmp_path / "m"
    shutil.copytree(tiny_onnx_model_dir, d)
    update_model_json(d, "exports", "onnx", {"file": ONNX_FILE, "sha256": "0" * 64})
    with pytest.raises(ModelFormatError, match="does not match the sha256"):
        bmcd.Classifier.load(d, backend=backend)
    rehash_exports(d)
    assert bmcd.Classifier.load(d, backend=backend).predict([_cell()]).shape == (1,)
