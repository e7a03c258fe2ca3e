"""A bmcd ``model.keras`` opens in plain Keras with ``bmcd.custom_objects()``, and the Keras
backend of ``bmcd predict`` keeps TensorFlow's C++ log off stderr (issue 12;
docs/models.rst, "Opening model.keras in plain Keras").

Each check runs in a fresh interpreter, as a user would, so no earlier test has registered
bmcd's layer already. The model is built, not trained (MobileNetV2 at 32 px).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("tensorflow")

pytestmark = [pytest.mark.slow, pytest.mark.train]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def keras_model_dir(tmp_path_factory) -> Path:
    from bmcd.artifact import new_model_json, write_model_json
    from bmcd.preprocessing import PreprocessConfig
    from bmcd.runtimes.keras import KerasBackend
    from bmcd.training import build_model

    d = tmp_path_factory.mktemp("plain_keras") / "model"
    meta = new_model_json(arch="mobilenet_v2", preprocess=PreprocessConfig(image_size=32))
    KerasBackend(build_model("mobilenet_v2", 32, weights=None), meta).save(d)
    write_model_json(d, meta)
    return d


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    full["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + full.get("PYTHONPATH", "")
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=full, timeout=300)


def test_plain_keras_load_with_custom_objects_and_fine_tune(keras_model_dir):
    path = keras_model_dir / "model.keras"
    code = f"""
import numpy as np, bmcd, keras
model = keras.saving.load_model({str(path)!r}, custom_objects=bmcd.custom_objects())
x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
before = model.get_layer("p_all").get_weights()[0].copy()
model.compile(optimizer=keras.optimizers.SGD(0.1), loss="binary_crossentropy")
model.fit(x, np.array([0, 1, 0, 1]), epochs=1, verbose=0)
changed = not np.array_equal(before, model.get_layer("p_all").get_weights()[0])
print("OK", model.output_shape, changed)
"""
    out = _run(code)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "OK (None, 1) True" in out.stdout


def test_plain_keras_load_without_bmcd_fails_and_with_it_registers(keras_model_dir):
    path = keras_model_dir / "model.keras"
    # without bmcd's classes, Keras cannot rebuild the model: the reason the helper exists
    bare = _run(f"import keras\nkeras.saving.load_model({str(path)!r})")
    assert bare.returncode != 0 and "ImagePreprocess" in bare.stderr
    # after bmcd.custom_objects() the class is registered: plain load_model works too
    code = (f"import bmcd, keras\nbmcd.custom_objects()\n"
            f"print(keras.saving.load_model({str(path)!r}).name)")
    out = _run(code)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "bmcd_mobilenet_v2"


def test_predict_with_keras_backend_prints_no_tensorflow_log(keras_model_dir, tmp_path):
    img = np.zeros((60, 60, 3), np.uint8)
    cv2.circle(img, (30, 30), 20, (180, 90, 40), -1)
    path = tmp_path / "cell.png"
    cv2.imwrite(str(path), img)
    code = ("import sys\nfrom bmcd.cli import main\n"
            f"sys.exit(main(['predict', {str(keras_model_dir)!r}, {str(path)!r}]))")
    out = _run(code)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith(str(path) + "\t")
    # TensorFlow 2.21 logs "I0000 ... cudart_stub.cc", "oneDNN custom operations",
    # "failed call to cuInit" through absl at import; none of it may reach the user
    assert out.stderr == "", out.stderr[-2000:]
    # a user who asks for TensorFlow's log gets it
    loud = _run(code, TF_CPP_MIN_LOG_LEVEL="0")
    assert loud.returncode == 0
