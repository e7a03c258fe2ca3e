"""Tiny real ONNX models and simple cell images for fast scoring tests and benchmarks.

Nothing here trains a network. :func:`build_tiny_onnx_model` writes a genuine ONNX graph
(``image`` -> mean over H, W, C -> affine -> sigmoid -> ``p_all``) with bmcd metadata, so
ONNX Runtime, the metadata path and the scoring pipeline all run for real in milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

#: Opset / IR version accepted by onnxruntime >= 1.17 (ReduceMean still takes ``axes`` as an
#: attribute at opset 17; it became an input at 18).
TINY_OPSET = 17
TINY_IR_VERSION = 8


def build_tiny_onnx_model(
    out_dir: str | Path,
    *,
    image_size: int = 32,
    scale: float = 0.08,
    bias: float = -8.0,
    threshold: float = 0.5,
    arch: str = "tiny-mean",
) -> Path:
    """Write a tiny bmcd model directory (``model.onnx`` + ``bmcd.json``); return the dir.

    ``p_all = sigmoid(scale * mean(image) + bias)`` with a dynamic batch axis. With the
    defaults, a preprocessed image whose mean value is 100 sits exactly on p = 0.5, so cells of
    different sizes and brightness get both labels.
    """
    from onnx import TensorProto, helper

    from bmcd.preprocessing import PreprocessConfig

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    S = int(image_size)
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", S, S, 3])
    y = helper.make_tensor_value_info("p_all", TensorProto.FLOAT, ["N", 1])
    inits = [
        helper.make_tensor("scale", TensorProto.FLOAT, [], [float(scale)]),
        helper.make_tensor("bias", TensorProto.FLOAT, [], [float(bias)]),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Flatten", ["mean"], ["mean2d"], axis=1),  # (N, 1)
        helper.make_node("Mul", ["mean2d", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "bias"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["p_all"]),
    ]
    graph = helper.make_graph(nodes, "bmcd_tiny_mean", [x], [y], initializer=inits)
    return save_tiny_model(graph, out_dir, arch=arch,
                           preprocess=PreprocessConfig(image_size=S), threshold=threshold)


def tiny_model_expected(x: np.ndarray, *, scale: float = 0.08, bias: float = -8.0) -> np.ndarray:
    """What :func:`build_tiny_onnx_model` computes for a preprocessed batch, in numpy."""
    m = x.reshape(len(x), -1).astype(np.float64).mean(axis=1)
    return 1.0 / (1.0 + np.exp(-(scale * m + bias)))


def write_cell_images(
    out_dir: str | Path,
    n: int,
    *,
    size: int = 450,
    seed: int = 0,
    ext: str = ".bmp",
) -> list[Path]:
    """Write ``n`` simple synthetic cell images (a filled ellipse on black), C-NMC-named.

    Returns the paths in sorted order. Radius and colour vary, so the tiny model gives
    both labels. This is a cheap stand-in for :func:`bmcd.synthetic.make_cells`.
    """
    import cv2

    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        cls = "all" if i % 2 == 0 else "hem"
        subject = f"{i % 7 + 1}" if cls == "all" else f"H{i % 5 + 1}"
        img = np.zeros((size, size, 3), np.uint8)
        r = int(rng.integers(size // 10, size // 3))
        axes = (r, int(r * rng.uniform(0.7, 1.0)))
        colour = tuple(int(c) for c in rng.integers(60, 255, size=3))
        centre = (int(rng.integers(r, size - r)), int(rng.integers(r, size - r)))
        cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
        cv2.circle(img, centre, max(2, r // 3), tuple(c // 2 for c in colour), -1)
        path = out_dir / f"UID_{subject}_{i}_1_{cls}{ext}"
        ok, buf = cv2.imencode(ext, img)
        assert ok
        path.write_bytes(buf.tobytes())
        paths.append(path)
    return sorted(paths)


def write_bad_files(out_dir: str | Path, good_example: Path) -> dict[str, Path]:
    """Write a truncated BMP, an empty file and a text file named .png; return them."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = Path(good_example).read_bytes()
    bad = {
        "truncated": out_dir / "UID_9_99_1_all_truncated.bmp",
        "empty": out_dir / "UID_9_98_1_all_empty.bmp",
        "text": out_dir / "UID_9_97_1_hem_notes.png",
    }
    bad["truncated"].write_bytes(data[: len(data) // 3])
    bad["empty"].write_bytes(b"")
    bad["text"].write_text("this is not an image\n")
    return bad


def read_metadata(model_dir: str | Path) -> dict:
    return json.loads((Path(model_dir) / "bmcd.json").read_text())


def save_tiny_model(graph, out_dir: Path, *, arch: str, preprocess, threshold: float) -> Path:
    """Write ``graph`` as ``model.onnx`` with bmcd metadata, and ``bmcd.json``; return the dir."""
    import onnx
    from onnx import helper

    from bmcd.artifact import ONNX_FILE, new_model_json, onnx_metadata, write_model_json

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", TINY_OPSET)],
                              producer_name="bmcd-tests")
    model.ir_version = TINY_IR_VERSION
    meta = new_model_json(arch=arch, preprocess=preprocess, threshold=threshold)
    for key, value in onnx_metadata(meta).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(Path(out_dir) / ONNX_FILE))
    write_model_json(out_dir, meta)
    return Path(out_dir)
