"""Fast tests of the exporter's parts: no TensorFlow, tiny hand-built ONNX graphs.

The real Keras -> ONNX conversions (ResNet50, MobileNetV2) are in
tests/integration/test_export_onnx.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("sympy")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from bmcd.artifact import (  # noqa: E402
    MODEL_JSON,
    ONNX_FILE,
    ONNX_INT8_FILE,
    file_sha256,
    new_model_json,
    parse_onnx_metadata,
    read_model_json,
    update_model_json,
    write_model_json,
)
from bmcd.errors import ExportValidationError, ModelFormatError  # noqa: E402
from bmcd.exporters import _common as common  # noqa: E402
from bmcd.exporters import _samples as smp  # noqa: E402
from bmcd.exporters import onnx as ex  # noqa: E402
from bmcd.exporters import quantize as qz  # noqa: E402
from bmcd.exporters.quantize import default_reduce_range  # noqa: E402
from bmcd.preprocessing import PreprocessConfig  # noqa: E402

S = 32


# ---------------------------------------------------------------------------------------
# tiny real ONNX models (built with onnx.helper, run by onnxruntime)
# ---------------------------------------------------------------------------------------


def _save_model(nodes, inits, model_dir: Path, meta: dict, out_name: str = "p_all") -> Path:
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", S, S, 3])
    y = helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["batch", 1])
    graph = helper.make_graph(nodes, "tiny", [x], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    common._set_metadata(model, common._human_metadata(meta, "fp32"))
    model_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(model_dir / ONNX_FILE))
    return model_dir / ONNX_FILE


def _mean_model(model_dir: Path, scale: float = 0.08, bias: float = -8.0) -> Path:
    """p_all = sigmoid(scale * mean(image) + bias): simple enough to mirror in numpy."""
    meta = new_model_json(arch="tiny-mean", preprocess=PreprocessConfig(image_size=S))
    write_model_json(model_dir, meta)
    inits = [
        numpy_helper.from_array(np.array([scale], np.float32), "scale"),
        numpy_helper.from_array(np.array([bias], np.float32), "bias"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["m"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Unsqueeze", ["m", "one"], ["m2"]),
        helper.make_node("Mul", ["m2", "scale"], ["z0"]),
        helper.make_node("Add", ["z0", "bias"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["p_all"]),
    ]
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "one"))
    return _save_model(nodes, inits, model_dir, meta)


class _MeanKeras:
    """Stands in for the Keras model of :func:`_mean_model` (same arithmetic in numpy)."""

    def __init__(self, scale=0.08, bias=-8.0, offset=0.0):
        self.scale, self.bias, self.offset = scale, bias, offset

    def __call__(self, x, training=False):
        z = self.scale * np.asarray(x, np.float64).mean(axis=(1, 2, 3)) + self.bias
        return (1.0 / (1.0 + np.exp(-z)) + self.offset).reshape(-1, 1).astype(np.float32)


def _conv_model(model_dir: Path, samples: np.ndarray, seed: int = 0) -> Path:
    """NHWC input -> Transpose -> 2 x (Conv, Relu) -> GlobalAveragePool -> Gemm -> Sigmoid.

    Random convolutions; the head is set from ``samples`` so that p(all) spreads around 0.5.
    """
    rng = np.random.default_rng(seed)
    meta = new_model_json(arch="tiny-conv", preprocess=PreprocessConfig(image_size=S))
    write_model_json(model_dir, meta)
    w1 = rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)
    w2 = rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32)
    body = [
        helper.make_node("Mul", ["image", "inv255"], ["xs"]),
        helper.make_node("Transpose", ["xs"], ["xt"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["xt", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([1 / 255.0], np.float32), "inv255"),
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(np.zeros(8, np.float32), "b1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(np.zeros(8, np.float32), "b2"),
    ]
    # first pass: the pooled features, to set the head
    feat = helper.make_tensor_value_info("f", TensorProto.FLOAT, ["batch", 8])
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", S, S, 3])
    probe = helper.make_model(
        helper.make_graph(body, "probe", [x], [feat], initializer=inits),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    probe.ir_version = 8
    import onnxruntime as ort

    f = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"image": samples}
    )[0]
    w = rng.normal(0, 1, (8, 1))
    z = (f - f.mean(0)) @ w
    w = w * (2.0 / (z.std() + 1e-9))  # logits with std 2 around 0
    b = -float(np.median(f @ w))
    head = [
        helper.make_node("Gemm", ["f", "wh", "bh"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["p_all"]),
    ]
    inits += [
        numpy_helper.from_array(w.astype(np.float32), "wh"),
        numpy_helper.from_array(np.array([b], np.float32), "bh"),
    ]
    return _save_model(body + head, inits, model_dir, meta)


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> Path:
    from bmcd.synthetic import make_cells

    out = tmp_path_factory.mktemp("export_unit_cells")
    make_cells(out, n_per_class=12, n_subjects=4, image_size=96, seed=3, progress=False)
    return out


@pytest.fixture(scope="module")
def conv_dir(tmp_path_factory, cells) -> Path:
    from bmcd.data import load_dataset
    from bmcd.preprocessing import preprocess_batch

    d = tmp_path_factory.mktemp("tiny_conv_model")
    x = preprocess_batch(load_dataset(cells).absolute_paths(), PreprocessConfig(image_size=S))
    _conv_model(d, x)
    return d


def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith(".") or p.suffix == ".tmp")


# ---------------------------------------------------------------------------------------
# opset / IR support
# ---------------------------------------------------------------------------------------


def test_onnxruntime_supports_the_default_opset():
    ex.check_onnxruntime_support(ex.DEFAULT_OPSET, 8)
    ex.check_onnxruntime_support(ex.DEFAULT_OPSET, 8, {"ai.onnx.ml": 2})


@pytest.mark.parametrize("opset, ir", [(999, 8), (17, 99)])
def test_unsupported_opset_or_ir_fails_clearly(opset, ir):
    with pytest.raises(ModelFormatError) as err:
        ex.check_onnxruntime_support(opset, ir)
    msg = str(err.value)
    assert f"opset {opset}" in msg and f"IR version {ir}" in msg
    assert "It runs up to opset" in msg and "--opset" in msg


# ---------------------------------------------------------------------------------------
# samples
# ---------------------------------------------------------------------------------------


def test_subset_indices_are_even_and_deterministic():
    assert smp._subset_indices(5, None).tolist() == [0, 1, 2, 3, 4]
    assert smp._subset_indices(5, 10).tolist() == [0, 1, 2, 3, 4]
    assert smp._subset_indices(11, 3).tolist() == [0, 5, 10]


def test_samples_from_array_dataset_folder_and_list(cells, tmp_path):
    from bmcd.data import load_dataset

    cfg = PreprocessConfig(image_size=S)
    arr = np.random.default_rng(0).uniform(0, 255, (7, S, S, 3)).astype(np.float32)
    s = smp._resolve_samples(arr, cfg, default_n=4, limit=None, seed=0, purpose="t")
    assert s.x.shape == (7, S, S, 3) and s.labels is None and "array" in s.source
    with pytest.raises(ValueError, match=r"\(n, 32, 32, 3\)"):
        smp._resolve_samples(arr[:, :16], cfg, default_n=4, limit=None, seed=0, purpose="t")

    ds = load_dataset(cells)
    s = smp._resolve_samples(ds, cfg, default_n=4, limit=None, seed=0, purpose="t")
    assert s.x.shape == (24, S, S, 3) and s.labels.tolist() == ds.labels.tolist()
    s = smp._resolve_samples(str(cells), cfg, default_n=4, limit=6, seed=0, purpose="t")
    assert len(s.x) == 6 and sorted(set(s.labels.tolist())) == [0, 1]  # both classes kept

    loose = tmp_path / "loose" / "deeper"
    loose.mkdir(parents=True)
    for p in ds.absolute_paths()[:3]:
        (loose / Path(p).name).write_bytes(Path(p).read_bytes())
    s = smp._resolve_samples(tmp_path / "loose", cfg, default_n=4, limit=None, seed=0, purpose="t")
    assert len(s.x) == 3 and s.labels is None and "labels unknown" in s.source

    s = smp._resolve_samples(ds.absolute_paths()[:2], cfg, default_n=4, limit=None, seed=0,
                            purpose="t")
    assert len(s.x) == 2 and s.labels is None
    with pytest.raises(TypeError):
        smp._resolve_samples(3.5, cfg, default_n=4, limit=None, seed=0, purpose="t")


def test_synthetic_samples_are_labelled_and_say_so():
    s = smp._resolve_samples(None, PreprocessConfig(image_size=S), default_n=10, limit=None,
                            seed=5, purpose="a test")
    assert s.x.shape == (10, S, S, 3) and s.x.dtype == np.float32
    assert sorted(s.labels.tolist()) == [0] * 5 + [1] * 5
    assert s.source.startswith("synthetic: 10 cells") and "seed=5" in s.source


# ---------------------------------------------------------------------------------------
# graph handling
# ---------------------------------------------------------------------------------------


def test_normalise_io_renames_and_makes_the_batch_dynamic():
    x = helper.make_tensor_value_info("input_1", TensorProto.FLOAT, [4, S, S, 3])
    y = helper.make_tensor_value_info("dense/Sigmoid:0", TensorProto.FLOAT, [4, 1])
    g = helper.make_graph(
        [helper.make_node("ReduceMean", ["input_1"], ["m"], axes=[1, 2, 3], keepdims=0),
         helper.make_node("Unsqueeze", ["m", "one"], ["u"]),
         helper.make_node("Sigmoid", ["u"], ["dense/Sigmoid:0"])],
        "g", [x], [y], initializer=[numpy_helper.from_array(np.array([1], np.int64), "one")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    ex._normalise_io(m, S)
    assert [i.name for i in m.graph.input] == ["image"]
    assert [o.name for o in m.graph.output] == ["p_all"]
    assert m.graph.node[0].input[0] == "image" and m.graph.node[-1].output[0] == "p_all"
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert m.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    onnx.checker.check_model(m)
    with pytest.raises(ModelFormatError, match="expected \\(batch, 64, 64, 3\\)"):
        ex._normalise_io(m, 64)


def test_float_nodes_keep_first_conv_and_head():
    nodes = [helper.make_node(op, [], [], name=f"n{i}") for i, op in
             enumerate(["Mul", "Conv", "Relu", "Conv", "Relu", "GlobalAveragePool", "Gemm",
                        "Sigmoid"])]
    m = helper.make_model(helper.make_graph(nodes, "g", [], []))
    assert qz._float_nodes(m, True, True) == ["n1", "n4", "n5", "n6", "n7"]
    assert qz._float_nodes(m, True, False) == ["n4", "n5", "n6", "n7"]
    assert qz._float_nodes(m, False, False) == []


def test_metadata_carries_the_model_json_subset_and_plain_keys():
    meta = new_model_json(arch="resnet50", preprocess=PreprocessConfig(image_size=S),
                          threshold=0.4)
    props = common._human_metadata(meta, "int8")
    parsed = parse_onnx_metadata(props)
    assert parsed["arch"] == "resnet50" and parsed["threshold"] == 0.4
    assert parsed["preprocess"] == PreprocessConfig(image_size=S).to_dict()
    assert props["classes"] == "hem,all" and props["precision"] == "int8"
    assert props["arch"] == "resnet50" and float(props["threshold"]) == 0.4


# ---------------------------------------------------------------------------------------
# parity check and gate arithmetic
# ---------------------------------------------------------------------------------------


def test_validate_parity_passes_on_the_same_function_and_catches_offsets(tmp_path):
    path = _mean_model(tmp_path)
    rng = np.random.default_rng(1)
    # per-image brightness 60..140: p spread around 0.5 (std ~0.25)
    x = (rng.uniform(60, 140, (21, 1, 1, 1)) + rng.uniform(-20, 20, (21, S, S, 3)))
    x = x.astype(np.float32)
    rec = ex.validate_parity(_MeanKeras(), path, x, batch_size=4)
    assert rec["passed"] and rec["n"] == 21 and rec["batch_sizes"] == [4, 8]
    assert rec["max_abs_diff"] < 1e-6 and rec["label_agreement"] == 1.0
    assert set(rec["max_abs_diff_by_batch"]) == {"4", "8"}
    assert rec["p_keras_min"] < 0.5 < rec["p_keras_max"]

    with pytest.raises(ExportValidationError) as err:
        ex.validate_parity(_MeanKeras(offset=5e-4), path, x, batch_size=4)
    d = err.value.details
    assert d["passed"] is False and 4e-4 < d["max_abs_diff"] < 6e-4
    assert "5e-04" in str(err.value) or "0.0005" in str(err.value)

    rec = ex.validate_parity(_MeanKeras(offset=5e-4), path, x, atol=1e-3, check=False)
    assert rec["passed"]  # a looser tolerance, stated by the caller

    # a label flip fails even inside the tolerance: the threshold sits between the two
    # outputs of ONE sample (p_onnx < thr <= p_keras = p_onnx + offset), and every other
    # sample is farther than the offset from it, so exactly one label disagrees
    p = np.sort(_MeanKeras()(x).ravel().astype(np.float64))
    gaps = np.minimum(np.diff(p, prepend=-np.inf)[1:-1], np.diff(p)[1:])
    k = 1 + int(np.argmax(gaps))  # an inner sample with the widest room on both sides
    offset = float(gaps.max()) / 2
    assert offset > 1e-5  # far above float32 rounding (4e-7), so the flip is the offset's
    thr = float(p[k]) + offset / 2
    with pytest.raises(ExportValidationError) as err:
        ex.validate_parity(_MeanKeras(offset=offset), path, x, threshold=thr, atol=1.0)
    d = err.value.details
    assert d["label_disagreements"] == 1 and d["label_agreement"] == pytest.approx(20 / 21)
    assert d["max_abs_diff"] <= 1.0  # inside the tolerance: only the label failed
    # the same threshold with no offset: no disagreement at all
    rec = ex.validate_parity(_MeanKeras(), path, x, threshold=thr, atol=1.0)
    assert rec["passed"] and rec["label_disagreements"] == 0
    nan = _MeanKeras(offset=float("nan"))
    with pytest.raises(ExportValidationError) as err:
        ex.validate_parity(nan, path, x)
    assert err.value.details["finite"] is False


def test_parity_refuses_a_vacuous_check_on_a_constant_model(tmp_path):
    """A model that gives one p(all) for every image agrees with itself and with a broken
    conversion alike: the check says it is vacuous instead of passing (issue 13, item 7)."""
    path = _mean_model(tmp_path, scale=0.0, bias=0.3)  # p = sigmoid(0.3) for every image
    x = np.random.default_rng(2).uniform(0, 255, (12, S, S, 3)).astype(np.float32)
    const = _MeanKeras(scale=0.0, bias=0.3)
    with pytest.raises(ExportValidationError, match=r"vacuous.*std of p\(all\) 0 < 0.01") as err:
        ex.validate_parity(const, path, x, batch_size=4)
    d = err.value.details
    assert d["vacuous"] is True and d["passed"] is False and d["max_abs_diff"] < 1e-6
    assert d["p_all_spread"]["std"] == 0.0 and d["p_all_spread"]["min"] == d["p_all_spread"]["max"]
    rec = ex.validate_parity(const, path, x, check=False)
    assert rec["passed"] is False and rec["vacuous"] is True
    # the same images through a spreading model: not vacuous
    x2 = (np.linspace(40, 160, 12)[:, None, None, None] + np.zeros((12, S, S, 3))).astype(np.float32)
    rec = ex.validate_parity(_MeanKeras(), _mean_model(tmp_path / "s"), x2, check=False)
    assert rec["passed"] and not rec["vacuous"] and rec["p_all_spread"]["std"] > 0.1


def test_gate_noise_rule_clopper_pearson():
    """The default rule: int8 may flip no more labels than floor(n * upper 95% bound of the
    fp32 noise flip rate); stated in the record."""
    from scipy.stats import binom

    rng = np.random.default_rng(3)
    n = 200
    y = (np.arange(n) % 2).astype(int)
    p32 = np.clip(0.5 + 0.4 * (2 * y - 1) + rng.normal(0, 0.15, n), 0.001, 0.999)
    near = np.argsort(np.abs(p32 - 0.5))  # the cells closest to the threshold
    p_noisy = p32.copy()
    p_noisy[near[:4]] = 1.0 - p32[near[:4]]  # fp32 flips 4 of 200 labels under noise
    g0 = qz._gate(p32, p32, y, 0.5, None, 0.01, p_noisy=p_noisy)
    k, bound, allowed = g0["fp32_noise_label_flips"], g0["fp32_noise_flip_bound"], \
        g0["allowed_label_flips"]
    assert k == 4 and 4 / n < bound < 0.06
    # the bound is exact: P(Binomial(n, bound) <= k) = 5%
    assert binom.cdf(k, n, bound) == pytest.approx(0.05, abs=1e-6)
    assert allowed == int(np.floor(n * bound)) and allowed >= 8
    assert g0["passed"] and str(allowed) in g0["rule"] and "Clopper-Pearson" in g0["rule"]
    for flips, ok in ((allowed, True), (allowed + 1, False)):
        p8 = p32.copy()
        p8[near[:flips]] = np.where(p32[near[:flips]] >= 0.5, 0.4999, 0.5001)
        g = qz._gate(p32, p8, y, 0.5, None, 0.01, p_noisy=p_noisy)
        assert g["label_disagreements"] == flips and g["passed"] is ok, g["failed_because"]
        assert abs(g["roc_auc_change"]) <= 0.01  # only the flip rule decides here
    assert "labels flipped (allowed" in g["failed_because"][0]
    # a stable fp32 model (no noise flips) still allows the binomial margin: ~3/n
    g = qz._gate(p32, p32, y, 0.5, None, 0.01, p_noisy=p32)
    assert g["fp32_noise_label_flips"] == 0 and g["allowed_label_flips"] == 2
    # the ROC-AUC limit still applies
    p8 = p32.copy()
    p8[y == 1] -= 0.3
    assert not qz._gate(p32, p8, y, 0.5, None, 0.01, p_noisy=p_noisy)["passed"]


def test_gate_refuses_a_constant_model():
    y = np.array([0, 1] * 20)
    p = np.full(40, 0.62)
    g = qz._gate(p, p.copy(), y, 0.5, None, 0.01, p_noisy=p)
    assert g["label_agreement"] == 1.0 and g["passed"] is False
    assert "vacuous" in g["failed_because"][0] and g["p_all_spread"]["std"] == 0.0


def test_gate_numbers_on_hand_made_scores():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p32 = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    g = qz._gate(p32, p32.copy(), y, 0.5, 0.99, 0.01)
    assert g["passed"] and g["label_agreement"] == 1.0 and g["roc_auc_change"] == 0.0
    assert g["roc_auc_fp32"] == pytest.approx(15 / 16)  # only 0.4 < 0.6 is misordered

    p8 = p32.copy()
    p8[3] = 0.45  # one label flips (hem 0.6 -> 0.45: now correct), AUC unchanged
    g = qz._gate(p32, p8, y, 0.5, 0.99, 0.01)
    assert g["label_agreement"] == 7 / 8 and g["label_disagreements"] == 1 and not g["passed"]
    assert g["f1_weighted_change"] > 0
    g = qz._gate(p32, p8, y, 0.5, 0.8, 0.01)
    assert g["passed"]

    p8 = p32.copy()
    p8[4] = 0.95  # the worst 'all' becomes the best: AUC 15/16 -> 1, one label flips
    g = qz._gate(p32, p8, y, 0.5, 0.5, 0.01)
    assert g["roc_auc_change"] == pytest.approx(1 / 16) and not g["passed"]

    g = qz._gate(p32, p32, None, 0.5, 0.99, 0.01)  # labels unknown: agreement only
    assert g["passed"] and "roc_auc_change" not in g and g["labels_known"] is False


# ---------------------------------------------------------------------------------------
# int8 quantization, end to end on a tiny conv net
# ---------------------------------------------------------------------------------------


def test_quantize_int8_writes_a_gated_self_describing_file(conv_dir, cells):
    from bmcd.runtimes.onnx import OnnxRuntimeBackend

    update_model_json(conv_dir, "exports", "onnx", {"sha256": file_sha256(conv_dir / ONNX_FILE)})
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # 100 calibration images: no warning
        rec = ex.quantize_int8(conv_dir, n=100, n_validation=None)
    out = conv_dir / ONNX_INT8_FILE
    assert Path(rec["path"]) == out and out.is_file() and not _leftovers(conv_dir)
    meta = read_model_json(conv_dir)
    stored = meta["exports"]["onnx_int8"]
    assert stored["sha256"] == file_sha256(out) and stored["bytes"] == out.stat().st_size
    assert stored["source_sha256"] == file_sha256(conv_dir / ONNX_FILE)
    assert stored["quant_format"] == "QDQ" and stored["per_channel"] is True
    assert stored["calibration"]["n"] == 100 and "synthetic" in stored["calibration"]["source"]
    g = stored["gate"]
    assert g["passed"] and g["n"] == 200 and g["labels_known"]
    assert g["label_agreement"] >= 0.99 and abs(g["roc_auc_change"]) <= 0.01
    assert 0.0 < g["max_abs_diff"] < 0.2 and 0.0 <= g["fp32_noise_label_agreement"] <= 1.0
    # the default rule is the noise rule, stated and recorded (issue 13, item 6)
    assert "min_label_agreement" in g and g["rule"].startswith("int8 may flip at most")
    assert g["label_disagreements"] <= g["allowed_label_flips"]
    assert g["fp32_noise_flip_bound"] >= g["fp32_noise_flip_rate"]
    assert g["p_all_spread"]["std"] >= qz.MIN_P_ALL_STD

    q = onnx.load(str(out))
    ops = {n.op_type for n in q.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    props = {p.key: p.value for p in q.metadata_props}
    assert parse_onnx_metadata(props)["arch"] == "tiny-conv" and props["precision"] == "int8"
    # the head stays float (Sigmoid is last, not followed by Q/DQ)
    assert q.graph.node[-1].op_type == "Sigmoid"
    assert stored["reduce_range"] is default_reduce_range()
    tries = [a["first_conv_float"] for a in stored["attempts"]]
    if not default_reduce_range():
        # 8-bit weights (VNNI CPU): the first try (every convolution int8) passed, so there
        # was no second one
        assert tries == [False]
    # 7-bit weights (x86-64 without VNNI) are coarser: on an AMD EPYC (AVX2) the first try
    # failed and the second (first convolution in float) passed; either way the kept
    # model is the first that passed and says which it is
    assert tries in ([False], [False, True])
    assert [a["passed"] for a in stored["attempts"]] == [False] * (len(tries) - 1) + [True]
    first_float = tries[-1]
    assert stored["float_nodes"] == {"head": True, "first_conv": first_float}
    assert _float_weight_convs(q) == int(first_float)

    be = OnnxRuntimeBackend.load(out)  # bare file: config from metadata alone
    x = np.random.default_rng(0).uniform(0, 255, (5, S, S, 3)).astype(np.float32)
    p5 = be.predict_batch(x)
    p1 = np.concatenate([be.predict_batch(x[i : i + 1]) for i in range(5)])
    np.testing.assert_allclose(p5, p1, atol=1e-6)
    assert OnnxRuntimeBackend.load(conv_dir, precision="int8").predict_batch(x).shape == (5,)


def _float_weight_convs(model) -> int:
    """Conv nodes whose weight is a plain float initializer (not dequantized int8)."""
    inits = {t.name for t in model.graph.initializer}
    return sum(1 for n in model.graph.node if n.op_type == "Conv" and n.input[1] in inits)


def test_first_conv_can_be_kept_float(conv_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the gate is not the point here
        rec = ex.quantize_int8(conv_dir, n=100, n_validation=40, keep_first_conv_float=True,
                               force=True)
    assert rec["float_nodes"]["first_conv"] is True and len(rec["attempts"]) == 1
    assert _float_weight_convs(onnx.load(rec["path"])) == 1


def test_int8_gate_failure_keeps_no_file_unless_forced(conv_dir):
    (conv_dir / ONNX_INT8_FILE).unlink(missing_ok=True)
    before = read_model_json(conv_dir)["exports"].get("onnx_int8")
    with pytest.raises(ExportValidationError) as err:
        ex.quantize_int8(conv_dir, n=100, validation=None, n_validation=40,
                         min_label_agreement=1.01)  # impossible on purpose
    d = err.value.details
    assert d["passed"] is False and d["n"] == 40 and "label_agreement" in d
    assert [a["first_conv_float"] for a in d["attempts"]] == [False, True]  # both tried
    assert "< 1.01" in str(err.value) and "force=True" in str(err.value)
    assert "best of 2 tries" in str(err.value)
    assert not (conv_dir / ONNX_INT8_FILE).exists() and not _leftovers(conv_dir)
    assert read_model_json(conv_dir)["exports"].get("onnx_int8") == before

    with pytest.warns(UserWarning, match="failed the int8 gate"):
        rec = ex.quantize_int8(conv_dir, n=100, n_validation=40, force=True,
                               min_label_agreement=1.01)
    assert rec["forced"] is True and rec["gate"]["passed"] is False
    assert len(rec["attempts"]) == 2
    assert (conv_dir / ONNX_INT8_FILE).is_file()
    assert read_model_json(conv_dir)["exports"]["onnx_int8"]["forced"] is True


def _copy_model(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in (MODEL_JSON, ONNX_FILE):
        shutil.copy(src / f, dst / f)
    (dst / ONNX_INT8_FILE).unlink(missing_ok=True)
    return dst


def test_int8_gate_refuses_a_model_calibrated_on_constant_images(conv_dir, tmp_path):
    """Sound calibration passes the noise rule (test above); calibration on flat gray
    images (ranges unlike cells) saturates the activations and must still fail."""
    d = _copy_model(conv_dir, tmp_path / "flat")
    flat = np.full((100, S, S, 3), 128.0, np.float32)
    with pytest.raises(ExportValidationError) as err:
        ex.quantize_int8(d, calibration=flat, n=100, keep_first_conv_float=False)
    g = err.value.details
    assert g["passed"] is False and g["failed_because"] and "rule" in g
    assert g["label_disagreements"] > g["allowed_label_flips"] or abs(g["roc_auc_change"]) > 0.01
    assert "The rule: int8 may flip at most" in str(err.value)
    assert not (d / ONNX_INT8_FILE).exists()


def test_int8_gate_refuses_a_corrupted_scale(conv_dir, tmp_path, monkeypatch):
    """A quantizer bug (the first convolution's weight scales written 8x too large on every
    other output channel) must fail the gate."""
    import onnxruntime.quantization as oq

    real = oq.quantize_static

    def corrupted(model_input, model_output, *a, **k):
        real(model_input, model_output, *a, **k)
        m = onnx.load(model_output)
        inits = {t.name: t for t in m.graph.initializer}
        weight_dq = [n for n in m.graph.node if n.op_type == "DequantizeLinear"
                     and n.input[0] in inits and len(inits[n.input[0]].dims) == 4]
        t = inits[weight_dq[0].input[1]]
        a = numpy_helper.to_array(t).copy()
        assert a.size > 1  # per-channel
        a[::2] *= 8.0
        t.CopyFrom(numpy_helper.from_array(a, t.name))
        onnx.save(m, model_output)

    monkeypatch.setattr(oq, "quantize_static", corrupted)
    d = _copy_model(conv_dir, tmp_path / "bad")
    with pytest.raises(ExportValidationError) as err:
        ex.quantize_int8(d, n=100, keep_first_conv_float=False)
    g = err.value.details
    assert g["passed"] is False
    assert g["label_disagreements"] > g["allowed_label_flips"] or abs(g["roc_auc_change"]) > 0.01
    assert not (d / ONNX_INT8_FILE).exists()


def test_quantize_refuses_a_missing_or_changed_fp32_file(tmp_path, conv_dir):
    d = tmp_path / "m"
    write_model_json(d, new_model_json(arch="x", preprocess=PreprocessConfig(image_size=S)))
    with pytest.raises(ModelFormatError, match="Export it first"):
        ex.quantize_int8(d)
    d2 = tmp_path / "m2"
    d2.mkdir()
    for name in (MODEL_JSON, ONNX_FILE):
        (d2 / name).write_bytes((conv_dir / name).read_bytes())
    update_model_json(d2, "exports", "onnx", {"sha256": "0" * 64})
    with pytest.raises(ModelFormatError, match="does not match the sha256"):
        ex.quantize_int8(d2)
    with pytest.raises(ValueError, match="quant_format"):
        ex.quantize_int8(d2, quant_format="int4")


def test_calibration_below_the_minimum_warns(conv_dir):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rec = ex.quantize_int8(conv_dir, n=20, n_validation=40, force=True)
    messages = [str(w.message) for w in caught]
    assert any("only 20 images" in m for m in messages), messages
    assert rec["calibration"]["n"] == 20


def test_stale_int8_is_removed_when_fp32_changes(tmp_path):
    d = tmp_path / "m"
    write_model_json(d, new_model_json(arch="x", preprocess=PreprocessConfig(image_size=S)))
    (d / ONNX_INT8_FILE).write_bytes(b"old")
    meta = update_model_json(d, "exports", "onnx_int8", {"source_sha256": "a" * 64})
    ex._drop_stale_int8(d, meta, "a" * 64)  # same source: kept
    assert (d / ONNX_INT8_FILE).exists()
    with pytest.warns(UserWarning, match="quantized from an earlier"):
        ex._drop_stale_int8(d, read_model_json(d), "b" * 64)
    assert not (d / ONNX_INT8_FILE).exists()
    assert "onnx_int8" not in read_model_json(d)["exports"]
    # a record whose file is gone (e.g. a copied bmcd.json) is dropped without a warning
    meta = update_model_json(d, "exports", "onnx_int8", {"source_sha256": "b" * 64})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ex._drop_stale_int8(d, meta, "b" * 64)
    assert "onnx_int8" not in read_model_json(d)["exports"]


# ---------------------------------------------------------------------------------------
# CLI and import hygiene
# ---------------------------------------------------------------------------------------


def test_export_command_is_registered(capsys):
    from bmcd.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["export", "m", "--int8", "--opset", "16", "--samples", "d",
                              "--atol", "1e-5"])
    assert (args.model, args.int8, args.opset, args.samples, args.atol) == ("m", True, 16, "d",
                                                                            1e-5)
    with pytest.raises(SystemExit) as err:
        parser.parse_args(["export", "m", "--atol", "-1"])
    assert err.value.code == 2
    assert "non-negative" in capsys.readouterr().err


def test_export_of_a_missing_model_is_one_clear_line(tmp_path, capsys):
    from bmcd.cli import main

    assert main(["export", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bmcd export: error:") and "nope" in err[0]


def test_importing_the_exporters_stays_light():
    code = (
        "import sys, bmcd, bmcd.exporters, bmcd.exporters.onnx; "
        "print(sorted(m for m in ('tensorflow', 'keras', 'tf2onnx', 'onnx') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.replace("'", '"')) == []


# ---------------------------------------------------------------------------------------
# the shared pieces: session factory, input resolution, int8 settings
# ---------------------------------------------------------------------------------------


def test_make_session_sets_options_once_and_fails_clearly(tmp_path):
    from bmcd.errors import ConfigError
    from bmcd.runtimes.onnx import make_session

    path = _mean_model(tmp_path / "m")
    s = make_session(path, threads=1)
    assert s.get_providers() == ["CPUExecutionProvider"]
    assert s.get_session_options().intra_op_num_threads == 1
    assert [i.name for i in s.get_inputs()] == ["image"]
    with pytest.raises(ConfigError, match="not available"):
        make_session(path, providers=["NoSuchExecutionProvider"])
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(ModelFormatError, match="could not load") as err:
        make_session(bad)
    assert str(bad) in str(err.value)


def test_resolve_image_paths_labels_plain_folders_and_errors(cells, tmp_path):
    from bmcd.data import load_dataset, resolve_image_paths
    from bmcd.errors import DatasetError

    ds = load_dataset(cells)
    paths, labels = resolve_image_paths(cells)
    assert paths == ds.absolute_paths() and labels.tolist() == ds.labels.tolist()
    paths, labels = resolve_image_paths(ds)
    assert paths == ds.absolute_paths() and labels.dtype == np.int64

    plain = tmp_path / "plain"
    (plain / "b").mkdir(parents=True)
    for i, p in enumerate(ds.absolute_paths()[:3]):
        (plain / ("b" if i else "") / Path(p).name).write_bytes(Path(p).read_bytes())
    (plain / ".hidden.bmp").write_bytes(Path(ds.absolute_paths()[0]).read_bytes())
    (plain / "notes.txt").write_text("not an image")
    paths, labels = resolve_image_paths(plain)
    assert labels is None and len(paths) == 3 and paths == sorted(paths)
    assert not any(Path(p).name.startswith(".") for p in paths)

    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="No images found"):
        resolve_image_paths(tmp_path / "empty")
    with pytest.raises(DatasetError):
        resolve_image_paths(tmp_path / "missing")


def test_quantize_config_checks_and_is_exclusive_with_keywords(conv_dir):
    from bmcd.errors import ConfigError
    from bmcd.exporters import QuantizeConfig

    assert QuantizeConfig().to_dict()["quant_format"] == "QDQ"
    with pytest.raises(ConfigError, match="quant_format"):
        QuantizeConfig(quant_format="int4")
    with pytest.raises(ConfigError, match=">= 1"):
        QuantizeConfig(n=0)
    with pytest.raises(ConfigError, match="not both") as err:
        ex.quantize_int8(conv_dir, n=50, config=QuantizeConfig(n=60))
    assert "'n': 50" in str(err.value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        rec = ex.quantize_int8(conv_dir, config=QuantizeConfig(n=20, n_validation=20,
                                                               force=True))
    assert rec["calibration"]["n"] == 20 and rec["gate"]["n"] == 20
