"""Helpers shared by the ONNX exporter and the int8 quantizer (see docs/architecture.rst).

File handling (temporary files, timestamps; the hash is :func:`bmcd.artifact.file_sha256`),
the ``metadata_props`` written into every bmcd ONNX file, and batched ONNX Runtime
inference. Sessions themselves come from
:func:`bmcd.runtimes.onnx.make_session`, the one session factory.
"""

from __future__ import annotations

import datetime as _dt
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..artifact import INPUT_NAME, OUTPUT_NAME, ModelMeta, onnx_metadata

#: The input contract of every bmcd ONNX file (kept NHWC whatever the internal layout).
INPUT_LAYOUT = "NHWC"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _temp_path(directory: Path, name: str) -> Path:
    """An empty temporary file next to its final name (same file system: atomic rename)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        umask = os.umask(0)  # mkstemp creates 0600; use the mode a plain open() would
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
    finally:
        os.close(fd)
    return Path(tmp)


def _run_session(session, x: np.ndarray, batch_size: int) -> np.ndarray:
    """p(all) of a preprocessed array, run through ``session`` in batches of ``batch_size``."""
    name_in = session.get_inputs()[0].name
    name_out = session.get_outputs()[0].name
    out = []
    for i in range(0, len(x), batch_size):
        xb = np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32)
        out.append(np.asarray(session.run([name_out], {name_in: xb})[0]).reshape(len(xb)))
    return np.concatenate(out) if out else np.empty(0, np.float32)


def _human_metadata(meta: ModelMeta | dict[str, Any], precision: str) -> dict[str, str]:
    """``metadata_props``: the machine-readable "bmcd" JSON plus plain keys for humans."""
    m = ModelMeta.coerce(meta)
    props = dict(onnx_metadata(m.to_dict()))
    props.update(
        {
            "bmcd_version": str(m.bmcd_version or __version__),
            "arch": str(m.arch),
            "classes": ",".join(m.classes),
            "positive_class": str(m.positive_class),
            "threshold": repr(float(m.threshold)),
            "image_size": str(int(m.image_size)),
            "precision": precision,
            "input": f"{INPUT_NAME}: float32 (batch, S, S, 3) {INPUT_LAYOUT} RGB in [0, 255], "
            f"preprocessed with bmcd.preprocessing (crop to cell, pad, resize)",
            "output": f"{OUTPUT_NAME}: float32 (batch, 1) probability of class 'all'",
        }
    )
    return props


def _set_metadata(proto, props: dict[str, str]) -> None:
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
