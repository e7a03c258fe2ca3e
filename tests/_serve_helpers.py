"""Helpers for the ``bmcd serve`` tests: tiny ONNX models tuned to give both labels.

Builds on :mod:`_tiny_models` (not edited): the same genuine ONNX graph
``p_all = sigmoid(scale * mean(image) + bias)``, with the bias set so that the median cell
of a given set of files sits on p = 0.5, and an optional second file as ``model.int8.onnx``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from _tiny_models import build_tiny_onnx_model


def centred_bias(files, *, image_size: int = 32, scale: float = 0.08) -> float:
    """The bias that puts the median preprocessed mean of ``files`` on p(all) = 0.5."""
    from bmcd.preprocessing import PreprocessConfig, preprocess

    cfg = PreprocessConfig(image_size=image_size)
    means = [float(preprocess(f, cfg).mean()) for f in files]
    return -scale * float(np.median(means))


def build_serving_model(
    out_dir: str | Path,
    files=None,
    *,
    image_size: int = 32,
    scale: float = 0.08,
    int8_bias_shift: float | None = None,
) -> Path:
    """A tiny model directory for serving tests; returns it.

    With ``files``, the bias centres them on the threshold (both labels appear). With
    ``int8_bias_shift``, a second graph whose bias differs by that amount is written as
    ``model.int8.onnx``, so a test can tell which file the server runs.
    """
    bias = centred_bias(files, image_size=image_size, scale=scale) if files else -8.0
    out = build_tiny_onnx_model(out_dir, image_size=image_size, scale=scale, bias=bias)
    if int8_bias_shift is not None:
        from bmcd.artifact import ONNX_FILE, ONNX_INT8_FILE

        other = build_tiny_onnx_model(
            Path(out_dir).parent / (Path(out_dir).name + "-int8-src"),
            image_size=image_size, scale=scale, bias=bias + int8_bias_shift,
        )
        shutil.copyfile(other / ONNX_FILE, out / ONNX_INT8_FILE)
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
