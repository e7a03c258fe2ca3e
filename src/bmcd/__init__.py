"""bmcd: tell leukemic lymphoblasts ("all") from normal cells ("hem") in single-cell images.

Train ResNet50 / MobileNetV2 with Keras, export to ONNX with numerical parity checks, and
score millions of cells on CPUs with ONNX Runtime. ``import bmcd`` is light: TensorFlow is
imported only when training or exporting.

Examples
--------
>>> import bmcd
>>> clf = bmcd.Classifier(arch="mobilenet_v2", image_size=96, weights=None)  # doctest: +SKIP
>>> clf.fit("data/train").evaluate("data/test").to_markdown()                # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import (
    BmcdError,
    DatasetError,
    ExportValidationError,
    ImageReadError,
    MissingDependencyError,
    ModelFormatError,
    NotFittedError,
)
from .preprocessing import PreprocessConfig, preprocess, preprocess_batch, read_image

# Lazily imported public names: name -> module. Keeps `import bmcd` free of heavy imports.
_LAZY = {
    "Classifier": "bmcd.classifier",
    "EvaluationReport": "bmcd.metrics",
    "Dataset": "bmcd.data",
    "load_dataset": "bmcd.data",
    "split_by_subject": "bmcd.data",
    "split_random": "bmcd.data",
    "parse_subject": "bmcd.data",
    "make_cells": "bmcd.synthetic",
    "score": "bmcd.scoring",
    "export_onnx": "bmcd.exporters.onnx",
    "quantize_int8": "bmcd.exporters.quantize",
    "custom_objects": "bmcd.runtimes.keras",
}

__all__ = [
    "__version__",
    "BmcdError",
    "DatasetError",
    "ExportValidationError",
    "ImageReadError",
    "MissingDependencyError",
    "ModelFormatError",
    "NotFittedError",
    "PreprocessConfig",
    "preprocess",
    "preprocess_batch",
    "read_image",
    "Classifier",
    "EvaluationReport",
    "Dataset",
    "load_dataset",
    "split_by_subject",
    "split_random",
    "parse_subject",
    "make_cells",
    "score",
    "export_onnx",
    "quantize_int8",
    "custom_objects",
]

if TYPE_CHECKING:  # pragma: no cover
    from .classifier import Classifier
    from .data import Dataset, load_dataset, parse_subject, split_by_subject, split_random
    from .exporters.onnx import export_onnx
    from .exporters.quantize import quantize_int8
    from .metrics import EvaluationReport
    from .runtimes.keras import custom_objects
    from .scoring import score
    from .synthetic import make_cells


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bmcd' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
