"""The model directory: ``bmcd.json`` schema, reading, writing and validation.

A model directory looks like::

    model/
      bmcd.json         schema_version, bmcd_version, arch, image_size, classes,
                        positive_class, threshold, preprocess {...}, training {...},
                        metrics {...}, exports {...}
      model.keras
      model.onnx        metadata_props["bmcd"] carries the same JSON subset
      model.int8.onnx
      report/

The ONNX files carry the inference-relevant subset (:func:`onnx_metadata`) under the
metadata key ``"bmcd"``, so a bare ``.onnx`` file is self-describing.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._version import __version__
from .errors import ConfigError, ConfigTypeError, ModelFormatError
from .preprocessing import PreprocessConfig

__all__ = [
    "SCHEMA_VERSION",
    "MODEL_JSON",
    "KERAS_FILE",
    "ONNX_FILE",
    "ONNX_INT8_FILE",
    "REPORT_DIR",
    "ONNX_METADATA_KEY",
    "CLASSES",
    "POSITIVE_CLASS",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "ModelMeta",
    "read_model_meta",
    "new_model_json",
    "validate_model_json",
    "read_model_json",
    "write_model_json",
    "update_model_json",
    "onnx_metadata",
    "parse_onnx_metadata",
    "atomic_write_bytes",
    "file_sha256",
    "verify_export_sha256",
    "resolve_model_file",
    "rehash_exports",
]

SCHEMA_VERSION = 1
MODEL_JSON = "bmcd.json"
KERAS_FILE = "model.keras"
ONNX_FILE = "model.onnx"
ONNX_INT8_FILE = "model.int8.onnx"
REPORT_DIR = "report"
ONNX_METADATA_KEY = "bmcd"

#: Class order everywhere in bmcd: column 1 of predict_proba is p(all); label 1 = "all".
CLASSES = ("hem", "all")
POSITIVE_CLASS = "all"

#: Name of the model's input tensor (float32 RGB in [0, 255], shape (batch, S, S, 3)), in
#: Keras and in every exported ONNX file.
INPUT_NAME = "image"
#: Name of the model's output tensor: p(all), shape (batch, 1).
OUTPUT_NAME = "p_all"

_REQUIRED = (
    "schema_version",
    "bmcd_version",
    "arch",
    "image_size",
    "classes",
    "positive_class",
    "threshold",
    "preprocess",
)
# what travels inside an ONNX file (everything needed to preprocess and threshold)
_ONNX_KEYS = _REQUIRED


def new_model_json(
    *,
    arch: str,
    preprocess: PreprocessConfig,
    threshold: float = 0.5,
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    exports: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A fresh, valid ``bmcd.json`` document."""
    meta = {
        "schema_version": SCHEMA_VERSION,
        "bmcd_version": __version__,
        "arch": arch,
        "image_size": preprocess.image_size,
        "classes": list(CLASSES),
        "positive_class": POSITIVE_CLASS,
        "threshold": float(threshold),
        "preprocess": preprocess.to_dict(),
        "training": dict(training or {}),
        "metrics": dict(metrics or {}),
        "exports": dict(exports or {}),
    }
    validate_model_json(meta)
    return meta


def validate_model_json(meta: Any, source: str = MODEL_JSON) -> dict[str, Any]:
    """Check a ``bmcd.json`` document; return it (with optional sections filled in).

    Raises
    ------
    ModelFormatError
        A key is missing, the schema version is unknown, or values are inconsistent.
    """
    if not isinstance(meta, dict):
        raise ModelFormatError(
            f"{source}: expected a JSON object, received {type(meta).__name__}."
        )
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise ModelFormatError(
            f"{source}: missing required keys {missing}. Expected at least {list(_REQUIRED)}. "
            f"Re-save the model with Classifier.save() or re-export it."
        )
    _check_types(meta, source)
    if meta["schema_version"] != SCHEMA_VERSION:
        raise ModelFormatError(
            f"{source}: unknown schema_version {meta['schema_version']!r}; this bmcd "
            f"({__version__}) reads schema_version {SCHEMA_VERSION}. Upgrade bmcd or re-save "
            f"the model."
        )
    if not isinstance(meta["arch"], str) or not meta["arch"]:
        raise ModelFormatError(f"{source}: 'arch' must be a non-empty string, received {meta['arch']!r}.")
    if meta["classes"] != list(CLASSES) or meta["positive_class"] != POSITIVE_CLASS:
        raise ModelFormatError(
            f"{source}: expected classes {list(CLASSES)} with positive_class "
            f"'{POSITIVE_CLASS}', received {meta['classes']!r} / {meta['positive_class']!r}."
        )
    thr = meta["threshold"]
    if not isinstance(thr, (int, float)) or isinstance(thr, bool) or not 0.0 <= thr <= 1.0:
        raise ModelFormatError(f"{source}: 'threshold' must be a number in [0, 1], received {thr!r}.")
    try:
        cfg = PreprocessConfig.from_dict(meta["preprocess"])
    except (TypeError, ValueError) as exc:  # ConfigError is a ValueError
        raise ModelFormatError(f"{source}: invalid 'preprocess' section: {exc}") from exc
    if meta["image_size"] != cfg.image_size:
        raise ModelFormatError(
            f"{source}: image_size {meta['image_size']!r} disagrees with preprocess.image_size "
            f"{cfg.image_size}. The file was edited by hand or is corrupt; re-save the model."
        )
    for key in ("training", "metrics", "exports"):
        meta.setdefault(key, {})
        if not isinstance(meta[key], dict):
            raise ModelFormatError(f"{source}: '{key}' must be an object, received {meta[key]!r:.80}.")
    for name, rec in meta["exports"].items():
        if not isinstance(rec, dict):
            raise ModelFormatError(
                f"{source}: exports.{name} must be an object, received {rec!r:.80}. Re-export "
                f"the model (`bmcd export`)."
            )
        sha = rec.get("sha256")
        if sha is not None and not (isinstance(sha, str) and len(sha) == 64):
            raise ModelFormatError(
                f"{source}: exports.{name}.sha256 must be a 64-character hex string, received "
                f"{sha!r:.80}. Re-record it with `bmcd export MODEL --rehash`."
            )
    return meta


# the JSON type each required key must have (bool is excluded from the numbers)
_TYPES: dict[str, tuple[type, ...]] = {
    "schema_version": (int,),
    "bmcd_version": (str,),
    "arch": (str,),
    "image_size": (int,),
    "classes": (list,),
    "positive_class": (str,),
    "threshold": (int, float),
    "preprocess": (dict,),
}
_TYPE_NAMES = {int: "an integer", str: "a string", list: "a list", dict: "an object",
               float: "a number"}


def _check_types(meta: dict[str, Any], source: str) -> None:
    """Every required field has its JSON type, so later checks never raise TypeError."""
    for key, types in _TYPES.items():
        value = meta[key]
        if isinstance(value, bool) or not isinstance(value, types):
            want = "a number" if float in types else _TYPE_NAMES[types[0]]
            raise ModelFormatError(
                f"{source}: '{key}' must be {want}, received {value!r:.80} "
                f"({type(value).__name__}). The file was edited by hand or is corrupt; "
                f"re-save the model with Classifier.save() or `bmcd train`."
            )
    if not all(isinstance(c, str) for c in meta["classes"]):
        raise ModelFormatError(
            f"{source}: 'classes' must be a list of strings {list(CLASSES)}, received "
            f"{meta['classes']!r:.80}."
        )


def read_model_json(model_dir: str | os.PathLike) -> dict[str, Any]:
    """Read and validate ``model_dir/bmcd.json``.

    Raises
    ------
    ModelFormatError
        The directory or file is missing, is not JSON, or fails validation.
    """
    d = Path(model_dir)
    if not d.is_dir():
        raise ModelFormatError(
            f"Expected a bmcd model directory, but '{d}' "
            f"{'is a file' if d.exists() else 'does not exist'}. A model directory holds "
            f"{MODEL_JSON} and the model files written by Classifier.save()."
        )
    path = d / MODEL_JSON
    if not path.is_file():
        raise ModelFormatError(
            f"'{d}' has no {MODEL_JSON}; it is not a bmcd model directory. Save one with "
            f"Classifier.save(dir) or `bmcd train`."
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"'{path}' is not valid JSON: {exc}.") from exc
    return validate_model_json(meta, source=str(path))


@dataclass
class ModelMeta:
    """The typed view of a ``bmcd.json`` document.

    Build one with :meth:`from_dict` (validates) or :func:`read_model_meta`; turn it back
    into the JSON document with :meth:`to_dict`. The optional sections (``training``,
    ``metrics``, ``exports``) stay plain dictionaries: their content grows with bmcd.

    Examples
    --------
    >>> from bmcd.preprocessing import PreprocessConfig
    >>> meta = ModelMeta.new(arch="mobilenet_v2", preprocess=PreprocessConfig(image_size=96))
    >>> meta.image_size, meta.classes, meta.threshold
    (96, ('hem', 'all'), 0.5)
    """

    arch: str
    preprocess: PreprocessConfig
    threshold: float = 0.5
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    exports: dict[str, Any] = field(default_factory=dict)
    bmcd_version: str = __version__
    schema_version: int = SCHEMA_VERSION
    classes: tuple[str, str] = CLASSES
    positive_class: str = POSITIVE_CLASS
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def image_size(self) -> int:
        """Side of the square network input, in pixels (``preprocess.image_size``)."""
        return self.preprocess.image_size

    @classmethod
    def new(cls, *, arch: str, preprocess: PreprocessConfig, threshold: float = 0.5,
            training: dict | None = None, metrics: dict | None = None,
            exports: dict | None = None) -> ModelMeta:
        """A fresh document for the running bmcd version (validated)."""
        return cls.from_dict(new_model_json(arch=arch, preprocess=preprocess,
                                            threshold=threshold, training=training,
                                            metrics=metrics, exports=exports))

    @classmethod
    def coerce(cls, meta: ModelMeta | dict[str, Any], source: str = MODEL_JSON) -> ModelMeta:
        """``meta`` itself when it is a :class:`ModelMeta`, else :meth:`from_dict` of it."""
        return meta if isinstance(meta, ModelMeta) else cls.from_dict(meta, source=source)

    @classmethod
    def from_dict(cls, doc: Any, source: str = MODEL_JSON) -> ModelMeta:
        """Validate a ``bmcd.json`` document and return its typed view.

        Raises
        ------
        ModelFormatError
            The document is not valid (see :func:`validate_model_json`).
        """
        doc = validate_model_json(dict(doc) if isinstance(doc, dict) else doc, source=source)
        known = set(_REQUIRED) | {"training", "metrics", "exports"}
        return cls(
            arch=doc["arch"],
            preprocess=PreprocessConfig.from_dict(doc["preprocess"]),
            threshold=float(doc["threshold"]),
            training=dict(doc["training"]),
            metrics=dict(doc["metrics"]),
            exports=dict(doc["exports"]),
            bmcd_version=str(doc["bmcd_version"]),
            schema_version=int(doc["schema_version"]),
            classes=tuple(doc["classes"]),
            positive_class=doc["positive_class"],
            extra={k: v for k, v in doc.items() if k not in known},
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (key order as written to ``bmcd.json``)."""
        doc = {
            "schema_version": self.schema_version,
            "bmcd_version": self.bmcd_version,
            "arch": self.arch,
            "image_size": self.image_size,
            "classes": list(self.classes),
            "positive_class": self.positive_class,
            "threshold": float(self.threshold),
            "preprocess": self.preprocess.to_dict(),
            "training": dict(self.training),
            "metrics": dict(self.metrics),
            "exports": dict(self.exports),
        }
        doc.update(self.extra)
        return doc

    def export(self, key: str) -> dict[str, Any] | None:
        """The ``exports.<key>`` record, or None when there is none.

        Keys bmcd writes: ``"onnx"`` (:func:`bmcd.exporters.export_onnx`), ``"onnx_int8"``
        (the int8 file and its gate), ``"openvino_bf16"`` (the bf16 gate).
        """
        return self.exports.get(key)

    def export_for_file(self, file_name: str) -> tuple[str, dict[str, Any]] | None:
        """``(key, record)`` of the export record of ``file_name`` that carries a sha256."""
        for key, rec in self.exports.items():
            if isinstance(rec, dict) and rec.get("file") == file_name and rec.get("sha256"):
                return key, rec
        return None

    def write(self, model_dir: str | os.PathLike) -> Path:
        """Validate and write ``model_dir/bmcd.json`` atomically; return its path."""
        return write_model_json(model_dir, self.to_dict())

    @classmethod
    def read(cls, model_dir: str | os.PathLike) -> ModelMeta:
        """Read and validate ``model_dir/bmcd.json`` (see :func:`read_model_meta`)."""
        return read_model_meta(model_dir)


def read_model_meta(model_dir: str | os.PathLike) -> ModelMeta:
    """Read and validate ``model_dir/bmcd.json`` into a :class:`ModelMeta`.

    Raises
    ------
    ModelFormatError
        The directory or file is missing, is not JSON, or fails validation.
    """
    return ModelMeta.from_dict(read_model_json(model_dir),
                               source=str(Path(model_dir) / MODEL_JSON))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and an atomic rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600; give the file the mode a plain open() would (0666 & ~umask)
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_model_json(model_dir: str | os.PathLike, meta: dict[str, Any]) -> Path:
    """Validate ``meta`` and write it atomically to ``model_dir/bmcd.json``."""
    d = Path(model_dir)
    d.mkdir(parents=True, exist_ok=True)
    validate_model_json(meta, source=str(d / MODEL_JSON))
    text = json.dumps(meta, indent=2, sort_keys=False, default=_json_default) + "\n"
    atomic_write_bytes(d / MODEL_JSON, text.encode("utf-8"))
    return d / MODEL_JSON


def update_model_json(model_dir: str | os.PathLike, section: str, key: str, value: Any) -> dict:
    """Set ``meta[section][key] = value`` in an existing model directory and rewrite it."""
    meta = read_model_json(model_dir)
    meta.setdefault(section, {})[key] = value
    write_model_json(model_dir, meta)
    return meta


def onnx_metadata(meta: dict[str, Any]) -> dict[str, str]:
    """The ``metadata_props`` to embed in an ONNX file (key :data:`ONNX_METADATA_KEY`)."""
    sub = {k: meta[k] for k in _ONNX_KEYS}
    return {ONNX_METADATA_KEY: json.dumps(sub, sort_keys=True, default=_json_default)}


def parse_onnx_metadata(props: dict[str, str], source: str = "<onnx>") -> dict[str, Any]:
    """Inverse of :func:`onnx_metadata`: validate and return the embedded document."""
    if ONNX_METADATA_KEY not in props:
        raise ModelFormatError(
            f"{source}: the ONNX file has no '{ONNX_METADATA_KEY}' metadata, so its "
            f"preprocessing and classes are unknown. Export it with `bmcd export` (or "
            f"bmcd.exporters.export_onnx), or load it from its model directory."
        )
    try:
        meta = json.loads(props[ONNX_METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise ModelFormatError(f"{source}: '{ONNX_METADATA_KEY}' metadata is not JSON: {exc}.") from exc
    return validate_model_json(meta, source=source)


def _json_default(obj: Any) -> Any:
    # numpy scalars / arrays and paths in history or metrics
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise ConfigTypeError(
        f"Object of type {type(obj).__name__} is not JSON serializable; bmcd.json and ONNX "
        f"metadata take numbers, strings, lists, dicts, numpy values and paths. Convert "
        f"{obj!r:.80} to one of those."
    )


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_export_sha256(model_dir: str | os.PathLike, meta: ModelMeta | dict[str, Any],
                         file: str | os.PathLike) -> str | None:
    """Check an exported file against the sha256 its ``bmcd.json`` records.

    The ONNX and OpenVINO backends call this when they load a model directory, so a
    ``model.onnx`` swapped for another file is refused instead of scored silently
    (docs/models.rst, "Integrity"). A file with no recorded sha256 (an export older
    than the record, or a hand-made model) is accepted.

    Returns
    -------
    str or None
        The verified sha256, or None when nothing was recorded.

    Raises
    ------
    ModelFormatError
        The file's sha256 differs from the recorded one.
    """
    file = Path(file)
    found = ModelMeta.coerce(meta, source=str(Path(model_dir) / MODEL_JSON)).export_for_file(
        file.name
    )
    if found is None:
        return None
    key, rec = found
    actual = file_sha256(file)
    if actual != rec["sha256"]:
        raise ModelFormatError(
            f"'{file}' does not match the sha256 recorded in {Path(model_dir) / MODEL_JSON} "
            f"(exports.{key}: recorded {rec['sha256'][:12]}..., file {actual[:12]}...): the "
            f"file was replaced or damaged after export. Re-export it (`bmcd export "
            f"{model_dir}`), or, if you swapped it on purpose, record the new file with "
            f"`bmcd export {model_dir} --rehash` (bmcd.artifact.rehash_exports)."
        )
    return actual


def resolve_model_file(
    path: str | os.PathLike, precision: str, files: Mapping[str, str]
) -> tuple[Path, ModelMeta | None]:
    """The file a backend loads for ``precision``, and the model's metadata.

    The one resolution of a model path for the ONNX Runtime and OpenVINO backends.

    Parameters
    ----------
    path : path
        A model directory (its ``bmcd.json`` is read, and the file's sha256 is checked
        against the one recorded there, :func:`verify_export_sha256`) or a bare ``.onnx``
        file (whose own metadata the backend reads).
    precision : str
        A key of ``files``.
    files : mapping
        Precision -> file name inside a model directory (a backend's ``PRECISIONS``).

    Returns
    -------
    (Path, ModelMeta or None)
        The file to load, and the directory's metadata (None for a bare file).

    Raises
    ------
    ConfigError
        ``precision`` is not a key of ``files``.
    ModelFormatError
        ``path`` does not exist, the directory is not a valid model directory, lacks the
        file for ``precision``, or the file differs from its recorded sha256.
    """
    if precision not in files:
        raise ConfigError(f"precision must be one of {sorted(files)}, received {precision!r}.")
    p = Path(path)
    if p.is_dir():
        meta = read_model_meta(p)
        file = p / files[precision]
        if not file.is_file():
            flag = " --int8" if precision == "int8" else ""
            raise ModelFormatError(
                f"Model directory '{p}' has no {files[precision]}. Export it first: "
                f"`bmcd export {p}{flag}`."
            )
        verify_export_sha256(p, meta, file)  # a swapped file is refused
        return file, meta
    if p.is_file():
        return p, None  # the backend reads the file's own metadata
    raise ModelFormatError(
        f"Expected a bmcd model directory or an .onnx file, but '{p}' does not exist."
    )


def rehash_exports(model_dir: str | os.PathLike) -> dict[str, str]:
    """Record the current sha256 (and size) of every exported file in ``bmcd.json``.

    Use this after replacing an exported file on purpose; loading then accepts the new
    file. Records whose file is missing are left as they are.

    Returns
    -------
    dict
        ``{export key: new sha256}`` for the records that were updated.

    Raises
    ------
    ModelFormatError
        ``model_dir`` is not a valid model directory.
    """
    d = Path(model_dir)
    meta = read_model_json(d)
    changed: dict[str, str] = {}
    for key, rec in meta["exports"].items():
        name = rec.get("file")
        if not isinstance(name, str) or not (d / name).is_file():
            continue
        sha = file_sha256(d / name)
        rec["sha256"], rec["bytes"] = sha, (d / name).stat().st_size
        changed[key] = sha
    write_model_json(d, meta)
    return changed
