"""Lazy access to optional dependencies, with the exact install hint when one is missing."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from .errors import MissingDependencyError

# module -> (distribution name, bmcd extra that provides it)
_PROVIDERS: dict[str, tuple[str, str]] = {
    "tensorflow": ("tensorflow", "train"),
    "keras": ("tensorflow", "train"),
    "tf2onnx": ("tf2onnx", "train"),
    "onnx": ("onnx", "train"),
    "sympy": ("sympy", "train"),
    "matplotlib": ("matplotlib", "report"),
    "dask": ("dask[distributed]", "scale"),
    "distributed": ("dask[distributed]", "scale"),
    # bmcd serve (docs/serving.rst)
    "fastapi": ("fastapi", "serve"),
    "uvicorn": ("uvicorn", "serve"),
    "multipart": ("python-multipart", "serve"),
}


def install_hint(extra: str) -> str:
    """The pip command that installs a bmcd extra."""
    return f"pip install 'bmcd[{extra}]'"


def optional_import(module: str, *, purpose: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` with the install line.

    Parameters
    ----------
    module : str
        Dotted module name, e.g. ``"tensorflow"`` or ``"dask.distributed"``.
    purpose : str, optional
        What the caller needs it for, used in the message.
    """
    top = module.split(".")[0]
    if top in ("tensorflow", "keras", "tf2onnx"):
        # TensorFlow's C++ INFO/WARNING lines (oneDNN, CUDA probing, grappler sessions) drown
        # bmcd's own output; errors still show. A value set by the user wins.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # ModuleNotFoundError, or a blocked / broken install
        dist, extra = _PROVIDERS.get(top, (top, None))
        why = f" for {purpose}" if purpose else ""
        hint = install_hint(extra) if extra else f"pip install {dist}"
        raise MissingDependencyError(
            f"bmcd needs the optional package '{dist}'{why}, but importing '{module}' failed "
            f"({exc.__class__.__name__}: {exc}). Install it with: {hint}"
        ) from exc
