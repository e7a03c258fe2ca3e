"""The bmcd exception hierarchy.

Every exception raised on purpose by bmcd derives from :class:`BmcdError`, and each
subclass also inherits the builtin exception a caller would naturally catch
(``ValueError``, ``FileNotFoundError``, ``ImportError`` ...). Messages say what was
expected, what was received (paths included) and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "BmcdError",
    "ImageReadError",
    "DatasetError",
    "NotFittedError",
    "ModelFormatError",
    "ExportValidationError",
    "MissingDependencyError",
    "WeightsUnavailableError",
    "SchedulerUnavailableError",
    "ConfigError",
    "OutputExistsError",
    "BenchError",
    "ConfigTypeError",
    "MissingFileError",
    "OutputWriteError",
    "ServiceError",
    "RequestTooLargeError",
    "CamUnavailableError",
]


class BmcdError(Exception):
    """Base class of every error raised on purpose by bmcd."""


class ImageReadError(BmcdError, ValueError):
    """An image could not be read or decoded.

    Attributes
    ----------
    path : str or None
        The offending file, when the image came from a file.
    """

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path


class DatasetError(BmcdError, ValueError):
    """A dataset folder, manifest or split request is not usable."""


class NotFittedError(BmcdError, ValueError, AttributeError):
    """A model was used for prediction before it was fitted or loaded."""


class ModelFormatError(BmcdError, ValueError):
    """A model directory, ``bmcd.json`` or model file is missing, invalid or inconsistent."""


class ExportValidationError(BmcdError, ValueError):
    """An exported model disagrees with its source model beyond the stated tolerance.

    Attributes
    ----------
    details : dict
        The measured numbers (for example ``max_abs_diff``, ``label_agreement``, ``n``).
    """

    def __init__(self, message: str, details: dict | None = None):
        super().__init__(message)
        self.details = dict(details or {})


class MissingDependencyError(BmcdError, ImportError):
    """An optional dependency (a bmcd extra) is needed but not installed."""


class WeightsUnavailableError(BmcdError, RuntimeError):
    """Pretrained weights could not be obtained (offline, or a bad local weights file)."""


class SchedulerUnavailableError(BmcdError, ConnectionError):
    """A distributed scheduler could not be reached."""


class ConfigError(BmcdError, ValueError):
    """An argument or configuration value is invalid (wrong type, out of range, unknown name)."""


class OutputExistsError(BmcdError, FileExistsError):
    """The output file exists and neither ``resume`` nor a new path was given."""


class BenchError(BmcdError, RuntimeError):
    """A benchmark could not run, or a backend gave a wrong answer (parity failure)."""


class ConfigTypeError(ConfigError, TypeError):
    """An argument has the wrong type (e.g. a model object bmcd cannot score with)."""


class MissingFileError(BmcdError, FileNotFoundError):
    """A file bmcd needs (a report, a model file, an input) does not exist."""


class OutputWriteError(BmcdError, OSError):
    """An output file or folder cannot be written (no permission, read-only, disk full)."""


class ServiceError(BmcdError, RuntimeError):
    """The HTTP service (``bmcd serve``) is not running or could not start."""


class RequestTooLargeError(BmcdError, ValueError):
    """An HTTP request body is larger than the service's limit (answered with 413)."""


class CamUnavailableError(ModelFormatError):
    """The model cannot give class activation maps (ONNX file exported without a ``cam``
    output, or a head for which the map is not exact); docs/explain.rst."""
