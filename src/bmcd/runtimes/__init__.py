"""Inference/training backends behind one small interface, chosen by name.

Built-in backends are registered lazily by module path, so ``import bmcd.runtimes``
imports neither TensorFlow nor ONNX Runtime::

    >>> from bmcd.runtimes import available_backends
    >>> available_backends()
    ['keras', 'onnx', 'openvino']

A backend turns a preprocessed batch ``(n, S, S, 3)`` float32 RGB in [0, 255] into
``(n,)`` probabilities of the positive class "all". Third parties can add their own
with :func:`register_backend`.
"""

from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from ..errors import CamUnavailableError, ConfigError, ConfigTypeError

__all__ = ["Backend", "register_backend", "get_backend", "available_backends"]


class Backend(ABC):
    """The interface every backend implements.

    Attributes
    ----------
    name : str
        The registry name.
    meta : dict
        The model's ``bmcd.json`` document (or the ONNX-embedded subset).
    """

    name: ClassVar[str] = ""
    meta: dict[str, Any]

    @classmethod
    @abstractmethod
    def load(cls, path: str | os.PathLike, **options: Any) -> Backend:
        """Load a backend from a model directory (or a file the backend understands)."""

    @abstractmethod
    def predict_batch(self, x: np.ndarray) -> np.ndarray:
        """Map preprocessed ``(n, S, S, 3)`` float32 input to ``(n,)`` float p(all)."""

    def explain_batch(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """p(all) ``(n,)`` and class activation maps ``(n, h, w)`` of a preprocessed batch.

        The map is the logit of p(all) spread over the last feature map (its spatial mean
        is the logit); see docs/explain.rst. Backends that cannot explain raise
        :class:`~bmcd.errors.CamUnavailableError` (this default).
        """
        raise CamUnavailableError(
            f"The {self.name or type(self).__name__!r} backend gives no class activation "
            f"maps. Use backend='keras', or backend='onnx' with a model exported by this "
            f"bmcd version (`bmcd export MODEL_DIR`)."
        )

    @property
    def image_size(self) -> int:
        """Side of the square input the model takes."""
        return int(self.meta["image_size"])


_LAZY: dict[str, str] = {
    "keras": "bmcd.runtimes.keras:KerasBackend",
    "onnx": "bmcd.runtimes.onnx:OnnxRuntimeBackend",
    "openvino": "bmcd.runtimes.openvino:OpenVINOBackend",
}
_REGISTRY: dict[str, type[Backend]] = {}


def register_backend(name: str) -> Callable[[type[Backend]], type[Backend]]:
    """Class decorator registering a :class:`Backend` subclass under ``name``.

    Examples
    --------
    >>> from bmcd.runtimes import Backend, register_backend
    >>> @register_backend("constant-half")
    ... class Half(Backend):
    ...     @classmethod
    ...     def load(cls, path, **options):
    ...         return cls()
    ...     def predict_batch(self, x):
    ...         return np.full(len(x), 0.5)
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"Backend name must be a non-empty string, received {name!r}.")

    def deco(cls: type[Backend]) -> type[Backend]:
        if not (isinstance(cls, type) and issubclass(cls, Backend)):
            raise ConfigTypeError(f"register_backend expects a Backend subclass, received {cls!r}.")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available_backends() -> list[str]:
    """Names of all known backends (built-in and registered), sorted."""
    return sorted(set(_LAZY) | set(_REGISTRY))


def get_backend(name: str) -> type[Backend]:
    """Return the backend class registered as ``name``.

    Raises
    ------
    ValueError
        Unknown name; the message lists the known ones.
    bmcd.errors.MissingDependencyError
        The backend needs an extra that is not installed.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in _LAZY:
        module, attr = _LAZY[name].split(":")
        cls = getattr(importlib.import_module(module), attr)
        _REGISTRY.setdefault(name, cls)
        return cls
    raise ConfigError(
        f"Unknown backend {name!r}. Known backends: {available_backends()}. "
        f"Register new ones with bmcd.runtimes.register_backend."
    )
