"""Model-only inference: Keras predict, tf.function, ONNX Runtime fp32 and int8, OpenVINO
f32, bf16 and int8 (side by side in one session; the OpenVINO rows skip without the
``openvino`` extra, bf16 also without native bf16).

Both architectures at 224 px, batch 32 and batch 1, on preprocessed real images (each
input a different rotation/reflection, a new one every round). Parity after timing:
tf.function and ORT fp32 against Keras predict (``bmcd.bench.PARITY_TOLERANCE``; ORT
fp32 to 1e-4), ORT int8 against ORT fp32 with a sanity bound
(:func:`bmcd.bench.check_int8_sanity`); OpenVINO f32 against Keras predict to 1e-4,
OpenVINO bf16 and int8 against ORT fp32 with the same sanity bound. ``extra_info`` carries images/s and the ratio to
Keras predict measured in the same session.
"""

from __future__ import annotations

import numpy as np
import pytest

from _helpers import ARCHS, BATCH_SIZE, RESULTS, Rotation, median_seconds, record, run_rotation
from bmcd.bench import (
    BACKEND_LABELS,
    BACKENDS,
    PARITY_TOLERANCE,
    REDUCED_PRECISION,
    check_int8_sanity,
    check_parity,
    make_input_batches,
)

pytestmark = [pytest.mark.benchmark(group="inference"), pytest.mark.train, pytest.mark.slow]

BATCHES = (BATCH_SIZE, 1)
# ResNet50 Keras predict at batch 32 takes about 3 s a call on 2 cores: few rounds there.
ROUNDS = {BATCH_SIZE: 3, 1: 12}
WARMUP = {BATCH_SIZE: 1, 1: 3}

CASES = [(a, b, k) for a in ARCHS for b in BATCHES for k in BACKENDS]

_inputs: dict[tuple, list[np.ndarray]] = {}
_outputs: dict[tuple, dict[int, np.ndarray]] = {}


def inputs_for(images: np.ndarray, batch_size: int) -> list[np.ndarray]:
    key = (batch_size,)
    if key not in _inputs:
        n = ROUNDS[batch_size] + WARMUP[batch_size]
        _inputs[key] = make_input_batches(images, batch_size, n, seed=batch_size)
    return _inputs[key]


def reference(arch: str, batch_size: int, backend: str, fns: dict, inputs) -> dict[int, np.ndarray]:
    """Outputs of ``backend`` on every input: from its own timed run when it ran, else now."""
    key = (arch, batch_size, backend)
    if key not in _outputs:
        _outputs[key] = {i: fns[backend](x) for i, x in enumerate(inputs)}
    return _outputs[key]


@pytest.mark.parametrize(
    "arch,batch_size,backend", CASES, ids=[f"{a}-b{b}-{k}" for a, b, k in CASES]
)
def test_inference(benchmark, predictors, images224, arch, batch_size, backend):
    benchmark.group = f"inference {arch} batch {batch_size}"
    fns = predictors(arch)
    if backend not in fns:
        pytest.skip(f"{BACKEND_LABELS[backend]} cannot run here (extra or CPU feature missing)")
    inputs = inputs_for(images224, batch_size)
    rot = Rotation(fns[backend], inputs)
    run_rotation(benchmark, rot, rounds=ROUNDS[batch_size], warmup_rounds=WARMUP[batch_size])
    assert len(rot.outputs) == len(inputs)
    _outputs.setdefault((arch, batch_size, backend), rot.outputs)

    # a fast wrong answer fails: parity of every output this benchmark produced
    if backend in REDUCED_PRECISION:
        ref = reference(arch, batch_size, "ort_fp32", fns, inputs)
        idx = sorted(rot.outputs)
        diff = check_int8_sanity(
            f"{arch} {backend}", [rot.outputs[i] for i in idx], [ref[i] for i in idx]
        )
        against = "ort_fp32"
    else:
        ref = reference(arch, batch_size, "keras_predict", fns, inputs)
        diff = max(
            check_parity(f"{arch} {backend}", y, ref[i], PARITY_TOLERANCE[backend])
            for i, y in rot.outputs.items()
        )
        against = "keras_predict"

    med = median_seconds(benchmark)
    extra: dict = {
        "parity_max_abs_diff": diff,
        "parity_against": against,
        # robust to other processes on the machine, unlike wall time
        "cpu_ms_per_image": rot.cpu_ms_per_item(batch_size),
    }
    if med:
        ips = batch_size / med
        RESULTS[("inference", arch, batch_size, backend)] = ips
        base = RESULTS.get(("inference", arch, batch_size, "keras_predict"))
        if base:
            extra["ratio_to_keras_predict"] = ips / base
        fp32 = RESULTS.get(("inference", arch, batch_size, "ort_fp32"))
        if backend in ("ort_int8", "ov_f32", "ov_bf16", "ov_int8") and fp32:
            extra["ratio_to_ort_fp32"] = ips / fp32
        int8 = RESULTS.get(("inference", arch, batch_size, "ort_int8"))
        if backend == "ov_int8" and int8:
            extra["ratio_to_ort_int8"] = ips / int8
    record(
        benchmark,
        "inference",
        f"{arch} b{batch_size} {BACKEND_LABELS[backend]}",
        batch_size,
        **extra,
    )
