"""A tiny ONNX model that tells RGB from BGR and an image from its flips.

:func:`build_weighted_onnx_model` writes ``p_all = sigmoid(scale * sum(W * image) + bias)``
where ``W[y, x, c]`` differs per channel and per position, so a pipeline that swaps
channels or flips the image gives other numbers than :func:`weighted_model_expected`
computed on the correctly preprocessed array. (The mean model in ``_tiny_models`` averages
every pixel and cannot tell.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from _tiny_models import save_tiny_model


def weighted_model_weights(image_size: int) -> np.ndarray:
    """``W[y, x, c]``: red positive, blue negative, green small; top and left count more."""
    S = int(image_size)
    ramp_y = np.linspace(2.0, 0.5, S)[:, None, None]
    ramp_x = np.linspace(1.5, 0.25, S)[None, :, None]
    channel = np.array([1.0, 0.2, -1.0])[None, None, :]
    return (ramp_y * ramp_x * channel).astype(np.float32)


def weighted_model_expected(x: np.ndarray, scale: float, bias: float) -> np.ndarray:
    """What :func:`build_weighted_onnx_model` computes for a preprocessed batch."""
    w = weighted_model_weights(x.shape[1]).astype(np.float64)
    logit = scale * (x.astype(np.float64) * w).sum(axis=(1, 2, 3)) + bias
    return 1.0 / (1.0 + np.exp(-logit))


def build_weighted_onnx_model(out_dir: str | Path, *, image_size: int = 32,
                              scale: float = 2e-4, bias: float = 0.0) -> Path:
    """Write a bmcd model directory with the weighted model; return the dir."""
    from onnx import TensorProto, helper, numpy_helper

    from bmcd.preprocessing import PreprocessConfig

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    S = int(image_size)
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", S, S, 3])
    y = helper.make_tensor_value_info("p_all", TensorProto.FLOAT, ["N", 1])
    inits = [
        numpy_helper.from_array(weighted_model_weights(S), "w"),
        helper.make_tensor("scale", TensorProto.FLOAT, [], [float(scale)]),
        helper.make_tensor("bias", TensorProto.FLOAT, [], [float(bias)]),
    ]
    nodes = [
        helper.make_node("Mul", ["image", "w"], ["weighted"]),
        helper.make_node("ReduceSum", ["weighted", "axes"], ["total"], keepdims=1),
        helper.make_node("Flatten", ["total"], ["total2d"], axis=1),
        helper.make_node("Mul", ["total2d", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "bias"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["p_all"]),
    ]
    inits.append(numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes"))
    graph = helper.make_graph(nodes, "bmcd_tiny_weighted", [x], [y], initializer=inits)
    return save_tiny_model(graph, out_dir, arch="tiny-weighted",
                           preprocess=PreprocessConfig(image_size=S), threshold=0.5)
