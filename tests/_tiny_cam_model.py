"""A tiny real ONNX model WITH a class activation map output, for fast CAM tests.

Nothing is trained. The graph has the structure of a bmcd head (docs/explain.rst): an
8 x 8 average-pooled "feature map" of the gray image, one affine unit per cell giving the
map ``cam``, and ``p_all = sigmoid(mean(cam))``::

    image (N, S, S, 3) -> mean over channels -> AveragePool 8x8 -> cam = scale * . + bias
    p_all = sigmoid(mean_ij cam)            (N, 1)
    cam                                     (N, S/8, S/8)

so :func:`tiny_cam_expected` can compute both in numpy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from _tiny_models import save_tiny_model

BLOCK = 8


def build_tiny_cam_model(
    out_dir: str | Path, *, image_size: int = 32, scale: float = 0.08, bias: float = -8.0,
) -> Path:
    """Write ``model.onnx`` (outputs ``p_all`` then ``cam``) and ``bmcd.json``; return the dir."""
    from onnx import TensorProto, helper

    from bmcd.preprocessing import PreprocessConfig

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    S, h = int(image_size), int(image_size) // BLOCK
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", S, S, 3])
    p = helper.make_tensor_value_info("p_all", TensorProto.FLOAT, ["N", 1])
    c = helper.make_tensor_value_info("cam", TensorProto.FLOAT, ["N", h, h])
    inits = [
        helper.make_tensor("scale", TensorProto.FLOAT, [], [float(scale)]),
        helper.make_tensor("bias", TensorProto.FLOAT, [], [float(bias)]),
        helper.make_tensor("ax1", TensorProto.INT64, [1], [1]),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["gray"], axes=[3], keepdims=0),  # N,S,S
        helper.make_node("Unsqueeze", ["gray", "ax1"], ["gray4"]),  # N,1,S,S
        helper.make_node("AveragePool", ["gray4"], ["pooled"], kernel_shape=[BLOCK, BLOCK],
                         strides=[BLOCK, BLOCK]),
        helper.make_node("Squeeze", ["pooled", "ax1"], ["feat"]),  # N,h,h
        helper.make_node("Mul", ["feat", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "bias"], ["cam"]),
        helper.make_node("ReduceMean", ["cam"], ["logit"], axes=[1, 2], keepdims=0),  # N
        helper.make_node("Unsqueeze", ["logit", "ax1"], ["logit2"]),  # N,1
        helper.make_node("Sigmoid", ["logit2"], ["p_all"]),
    ]
    graph = helper.make_graph(nodes, "bmcd_tiny_cam", [x], [p, c], initializer=inits)
    return save_tiny_model(graph, out_dir, arch="tiny-cam",
                           preprocess=PreprocessConfig(image_size=S), threshold=0.5)


def tiny_cam_expected(x: np.ndarray, *, scale: float = 0.08, bias: float = -8.0):
    """(p_all (n,), cam (n, h, h)) of :func:`build_tiny_cam_model` for a preprocessed batch."""
    x = np.asarray(x, np.float64)
    n, S = len(x), x.shape[1]
    h = S // BLOCK
    gray = x.mean(axis=3)
    feat = gray.reshape(n, h, BLOCK, h, BLOCK).mean(axis=(2, 4))
    cam = scale * feat + bias
    return 1.0 / (1.0 + np.exp(-cam.mean(axis=(1, 2)))), cam


def centred_bias(files, *, image_size: int = 32, scale: float = 0.08) -> float:
    """The bias that puts the median preprocessed mean of ``files`` on p(all) = 0.5."""
    from bmcd.preprocessing import PreprocessConfig, preprocess

    cfg = PreprocessConfig(image_size=image_size)
    return -scale * float(np.median([float(preprocess(f, cfg).mean()) for f in files]))
