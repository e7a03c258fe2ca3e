"""A tiny convolutional ONNX bmcd model, built without TensorFlow, for runtime parity tests.

:func:`build_tiny_conv_model` writes a genuine small CNN (NHWC input -> in-graph [-1, 1]
scaling -> two 3x3 convolutions with ReLU -> global average pooling -> dense -> sigmoid),
the same operator mix as the exported MobileNetV2/ResNet50 graphs, in milliseconds. Like
the benchmark models of :mod:`bmcd.bench`, its random convolutions are followed by an
output layer set along the first principal component of the pooled features of the given
images, so p(all) varies from image to image (a constant output would make every
comparison vacuous).

``feature_offset`` builds a deliberately fragile variant: a large constant is added to the
pooled features and subtracted again through the output bias. That is exact in float32
(the offset is 2^-23 of itself) but destroys the features in bfloat16, whose 8-bit
mantissa cannot hold ``offset + feature`` (step 8 at 2,000): the kind of damage a bad
weight scale does, which a precision gate must catch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TINY_OPSET = 17
TINY_IR_VERSION = 8


def _graph(S: int, w1, b1, w2, b2, head_w, head_b, feature_offset: float, features_only: bool):
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", S, S, 3])
    inits = [
        numpy_helper.from_array(np.array(1 / 127.5, np.float32), "scale"),
        numpy_helper.from_array(np.array(-1.0, np.float32), "shift"),
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(b1, "b1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(b2, "b2"),
    ]
    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Mul", ["nchw", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "shift"], ["centred"]),
        helper.make_node("Conv", ["centred", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["features"], axis=1),
    ]
    if features_only:
        y = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", w2.shape[0]])
    else:
        y = helper.make_tensor_value_info("p_all", TensorProto.FLOAT, ["N", 1])
        feat = "features"
        if feature_offset:
            inits.append(numpy_helper.from_array(np.array(feature_offset, np.float32), "offset"))
            nodes.append(helper.make_node("Add", ["features", "offset"], ["features_off"]))
            feat = "features_off"
        inits += [numpy_helper.from_array(head_w, "head_w"), numpy_helper.from_array(head_b, "head_b")]
        nodes += [
            helper.make_node("Gemm", [feat, "head_w", "head_b"], ["logit"]),
            helper.make_node("Sigmoid", ["logit"], ["p_all"]),
        ]
    graph = helper.make_graph(nodes, "bmcd_tiny_conv", [x], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", TINY_OPSET)],
                              producer_name="bmcd-tests")
    model.ir_version = TINY_IR_VERSION
    return model


def build_tiny_conv_model(
    out_dir: str | Path,
    images: np.ndarray,
    *,
    channels: tuple[int, int] = (8, 16),
    logit_spread: float = 1.5,
    feature_offset: float = 0.0,
    seed: int = 0,
    arch: str = "tiny-conv",
) -> Path:
    """Write ``model.onnx`` + ``bmcd.json`` for a tiny CNN; return the directory.

    ``images`` are preprocessed (n, S, S, 3) float32 cells; they set S and the output layer
    (see the module docstring).
    """
    import onnx
    import onnxruntime as ort

    from bmcd.artifact import ONNX_FILE, new_model_json, onnx_metadata, write_model_json
    from bmcd.preprocessing import PreprocessConfig

    images = np.asarray(images, np.float32)
    S = int(images.shape[1])
    c1, c2 = channels
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((c1, 3, 3, 3)) * np.sqrt(2 / 27)).astype(np.float32)
    b1 = (rng.standard_normal(c1) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((c2, c1, 3, 3)) * np.sqrt(2 / (9 * c1))).astype(np.float32)
    b2 = (rng.standard_normal(c2) * 0.1).astype(np.float32)

    probe = _graph(S, w1, b1, w2, b2, None, None, 0.0, features_only=True)
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    feats = sess.run(None, {"image": images})[0].astype(np.float64)
    centred = feats - feats.mean(axis=0)
    direction = np.linalg.svd(centred, full_matrices=False)[2][0]
    spread = float((centred @ direction).std()) or 1.0
    w = direction * (logit_spread / spread)
    bias = -float(feats.mean(axis=0) @ w) - float(feature_offset) * float(w.sum())
    head_w = w.reshape(c2, 1).astype(np.float32)
    head_b = np.array([bias], np.float32)

    model = _graph(S, w1, b1, w2, b2, head_w, head_b, float(feature_offset), features_only=False)
    meta = new_model_json(arch=arch, preprocess=PreprocessConfig(image_size=S))
    for key, value in onnx_metadata(meta).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out / ONNX_FILE))
    write_model_json(out, meta)
    return out
