"""Lazy access to optional dependencies, with the exact install hint when one is missing."""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
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
        # TensorFlow's C++ log lines (oneDNN, CUDA probing such as "failed call to cuInit",
        # grappler sessions) drown bmcd's own output and are not about the user's data: a
        # real failure still reaches the user as a Python exception. A value set by the
        # user wins (TF_CPP_MIN_LOG_LEVEL=0 shows everything).
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        if top in ("tensorflow", "keras", "tf2onnx") and "tensorflow" not in sys.modules:
            return _import_tensorflow_quietly(module)
        return importlib.import_module(module)
    except ImportError as exc:  # ModuleNotFoundError, or a blocked / broken install
        dist, extra = _PROVIDERS.get(top, (top, None))
        why = f" for {purpose}" if purpose else ""
        hint = install_hint(extra) if extra else f"pip install {dist}"
        raise MissingDependencyError(
            f"bmcd needs the optional package '{dist}'{why}, but importing '{module}' failed "
            f"({exc.__class__.__name__}: {exc}). Install it with: {hint}"
        ) from exc


def _import_tensorflow_quietly(module: str) -> ModuleType:
    """Import ``module`` (TensorFlow or a package that imports it) with its C++ log muted.

    TensorFlow 2.21 logs through absl before any setting is read, so
    ``TF_CPP_MIN_LOG_LEVEL`` no longer hides lines such as ``failed call to cuInit`` or the
    oneDNN notice. While TensorFlow is imported and probes its devices, file descriptor 2
    is pointed at a temporary file; it is replayed on stderr when the import fails, or when
    the user asked for TensorFlow's log with ``TF_CPP_MIN_LOG_LEVEL`` 0 or 1.
    """
    verbose = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3").strip() in ("0", "1")
    if verbose:
        return importlib.import_module(module)
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (embedded interpreter)
        return importlib.import_module(module)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        failed = True
        try:
            mod = importlib.import_module(module)
            tf = sys.modules.get("tensorflow")
            if tf is not None and hasattr(tf, "config"):
                tf.config.list_physical_devices()  # the CUDA probe logs here, once
            failed = False
            return mod
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                log.seek(0)
                sys.stderr.write(log.read().decode("utf-8", "replace"))
