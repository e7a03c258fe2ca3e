"""``Classifier``: one entry point for training, prediction, evaluation and the model directory.

The estimator follows scikit-learn habits: ``__init__`` only stores its keyword
arguments, :meth:`Classifier.fit` returns ``self``, learned state ends in ``_``
(``classes_``, ``backend_``, ``history_``, ``meta_``, ``threshold_``) and
:meth:`Classifier.predict_proba` returns ``(n, 2)`` columns ordered like
``classes_ == ["hem", "all"]``. Labels come from thresholding p(all), never from an
``argmax`` over a single sigmoid output.

Training uses the Keras backend (``pip install 'bmcd[train]'``); a saved model can be
served by any registered backend, e.g. ``Classifier.load(dir, backend="onnx")``, which
never imports TensorFlow.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ._classifier_inputs import (
    _as_dataset,
    _chunk_size,
    _describe_dataset,
    _describe_training_data,
    _predict_p_all,
    _resolve_inputs,
    _training_data,
)
from .artifact import CLASSES, ModelMeta, write_model_json
from .errors import ConfigError, ConfigTypeError, DatasetError, ModelFormatError, NotFittedError
from .labels import label_names
from .preprocessing import SCRATCH_CROP_SIZE, PreprocessConfig, preprocess_batch
from .training import TrainConfig
from .training.models import check_arch, is_scratch

__all__ = ["Classifier"]

_DEFAULTS: dict[str, Any] = {
    "arch": "mobilenet_v2",
    "image_size": 224,
    "weights": "imagenet",
    "threshold": 0.5,
    "preprocess": None,
    "seed": 0,
    "pooling": "avg",
    "head_units": (),
    "dropout": 0.2,
}

class Classifier:
    """Leukemic blast (``"all"``) vs normal cell (``"hem"``) classifier.

    Parameters
    ----------
    arch : {"mobilenet_v2", "resnet50"}
        Backbone architecture (``keras.applications``).
    image_size : int
        Side S of the square network input.
    weights : "imagenet", None or path
        Backbone initialisation. ``"imagenet"`` transfers ImageNet features (downloaded once
        into the Keras cache; offline this raises
        :class:`~bmcd.errors.WeightsUnavailableError`); ``None`` trains from scratch; a path
        loads a local no-top weights file.
    threshold : float
        Decision threshold on p(all): ``p_all >= threshold`` is ``"all"``.
    preprocess : PreprocessConfig, optional
        The preprocessing path's parameters; default ``PreprocessConfig(image_size)``.
        Its ``image_size`` must agree with ``image_size``.
    seed : int
        Seeds Python, numpy and Keras for weight initialisation, shuffling, balancing and
        augmentation.
    pooling : {"avg", "max", "flatten"}
        How the backbone's feature map becomes a vector.
    head_units : tuple of int
        Hidden Dense(relu) layers between pooling and the output (default none).
    dropout : float
        Dropout before the output layer.

    Attributes
    ----------
    classes_ : list of str
        ``["hem", "all"]``; the column order of :meth:`predict_proba`.
    backend_ : bmcd.runtimes.Backend
        The inference backend (Keras after :meth:`fit`; any backend after :meth:`load`).
    history_ : dict
        Training curves per phase, ``{"phases": [{"name", "history"}]}``.
    meta_ : dict
        The ``bmcd.json`` document, with training provenance.
    threshold_ : float
        The threshold in use (starts as ``threshold``; see :meth:`tune_threshold`).
    model_dir_ : pathlib.Path
        The model directory, once saved or loaded.

    Examples
    --------
    >>> from bmcd import Classifier
    >>> clf = Classifier(arch="mobilenet_v2", image_size=64, weights=None)
    >>> clf
    Classifier(image_size=64, weights=None)
    >>> clf.fit("cells/train", validation="cells/val", epochs=4)     # doctest: +SKIP
    >>> clf.predict(["UID_1_1_1_all.bmp"])                           # doctest: +SKIP
    array(['all'], dtype='<U3')
    >>> clf.evaluate("cells/test").to_markdown()                     # doctest: +SKIP
    >>> clf.save("model")                                            # doctest: +SKIP
    >>> Classifier.load("model", backend="onnx")                     # doctest: +SKIP
    """

    def __init__(
        self,
        arch: str = "mobilenet_v2",
        image_size: int = 224,
        weights: str | os.PathLike | None = "imagenet",
        threshold: float = 0.5,
        preprocess: PreprocessConfig | None = None,
        seed: int = 0,
        pooling: str = "avg",
        head_units: tuple[int, ...] = (),
        dropout: float = 0.2,
    ):
        self.arch = arch
        self.image_size = image_size
        self.weights = weights
        self.threshold = threshold
        self.preprocess = preprocess
        self.seed = seed
        self.pooling = pooling
        self.head_units = head_units
        self.dropout = dropout

    # ---------------------------------------------------------------- sklearn protocol
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor arguments, as a dict."""
        return {k: getattr(self, k) for k in _DEFAULTS}

    def set_params(self, **params: Any) -> Classifier:
        """Set constructor arguments; returns ``self``."""
        for k, v in params.items():
            if k not in _DEFAULTS:
                raise ConfigError(
                    f"Invalid parameter {k!r} for Classifier; valid ones are {list(_DEFAULTS)}."
                )
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        changed = []
        for k, default in _DEFAULTS.items():
            v = getattr(self, k)
            same = (tuple(v) == tuple(default)) if k == "head_units" else (v == default)
            if not same:
                changed.append(f"{k}={v!r}")
        return f"Classifier({', '.join(changed)})"

    # ---------------------------------------------------------------- helpers
    def _preprocess_config(self) -> PreprocessConfig:
        if self.preprocess is None:
            # from scratch the cell keeps its scale (docs/accuracy.rst: measured on
            # subject-grouped folds of real cells); with pretrained weights the crop is tight
            crop = SCRATCH_CROP_SIZE if is_scratch(self.weights) else None
            return PreprocessConfig(image_size=int(self.image_size), crop_size=crop)
        if not isinstance(self.preprocess, PreprocessConfig):
            raise ConfigTypeError(
                f"preprocess must be a PreprocessConfig or None; received "
                f"{type(self.preprocess).__name__}."
            )
        if self.preprocess.image_size != self.image_size:
            raise ConfigError(
                f"image_size={self.image_size!r} disagrees with preprocess.image_size="
                f"{self.preprocess.image_size}; pass the same size to both (or only one)."
            )
        return self.preprocess

    def _check_params(self) -> PreprocessConfig:
        check_arch(self.arch)
        if not isinstance(self.image_size, (int, np.integer)) or int(self.image_size) < 32:
            raise ConfigError(
                f"image_size must be an int >= 32 (the smallest input keras.applications "
                f"accepts); received {self.image_size!r}."
            )
        thr = self.threshold
        if not isinstance(thr, (int, float)) or isinstance(thr, bool) or not 0 <= thr <= 1:
            raise ConfigError(f"threshold must be a number in [0, 1]; received {thr!r}.")
        return self._preprocess_config()

    def _check_fitted(self, action: str) -> None:
        if getattr(self, "backend_", None) is None:
            raise NotFittedError(
                f"This Classifier is not fitted yet, so it cannot {action}. Call "
                f"fit(train_data) first, or load a trained model with "
                f"Classifier.load(model_dir)."
            )

    def _config(self) -> PreprocessConfig:
        return ModelMeta.from_dict(self.meta_).preprocess

    def _p_all(self, X: Any, batch_size: int = 32, progress: bool | None = None,
               no_cell: list[bool] | None = None, tta: bool = False) -> np.ndarray:
        return _predict_p_all(self.backend_, self._config(), X, batch_size=batch_size,
                              progress=progress, no_cell=no_cell, tta=tta)

    # ---------------------------------------------------------------- training
    def fit(
        self,
        train: Any,
        validation: Any = None,
        config: TrainConfig | None = None,
        *,
        split: Any = None,
        **settings: Any,
    ) -> Classifier:
        """Train the network; returns ``self``.

        Parameters
        ----------
        train : Dataset, path or (paths, labels)
            Training data; a folder or CSV is discovered with :func:`bmcd.data.load_dataset`.
        validation : same, optional
            Validation data for early stopping and the validation curves. Use other
            subjects than ``train`` (see :func:`bmcd.data.split_by_subject`).
        config : bmcd.training.config.TrainConfig, optional
            The training settings (epochs, learning rates, fine-tuning, balancing,
            augmentation, early stopping, cache, checkpoints ...); default
            ``TrainConfig()``. See :class:`bmcd.training.TrainConfig` for each one. With
            ``weights=None`` there is nothing to transfer, so the whole network trains for
            ``epochs + fine_tune_epochs`` epochs at ``learning_rate`` (recorded in
            ``meta_["training"]["note"]``).
        split : bmcd.data.Split or dict, optional
            How ``train``/``validation`` were made; recorded in the provenance.
        **settings
            :class:`~bmcd.training.TrainConfig` fields merged over ``config``, e.g.
            ``fit(train, val, epochs=4, batch_size=16)``.

        Returns
        -------
        Classifier
            ``self``, fitted.
        """
        from . import training as tr
        from .runtimes.keras import KerasBackend
        from .training.loop import environment

        cfg = TrainConfig.from_kwargs(config, **settings)
        verbose, cache_dir = cfg.verbose, cfg.cache_dir
        config = self._check_params()
        t_start = time.perf_counter()
        ds_train, ds_val, shared = _training_data(train, validation)

        seed = int(self.seed)
        seeds = tr.set_seed(seed)
        progress = None if verbose else False
        x_train = tr.cache_images(ds_train.absolute_paths(), config, cache_dir=cache_dir,
                                  name="train", progress=progress)
        x_val = y_val = None
        if ds_val is not None:
            x_val = tr.cache_images(ds_val.absolute_paths(), config, cache_dir=cache_dir,
                                    name="validation", progress=progress)
            y_val = ds_val.labels
        t_pre = time.perf_counter()

        tr.set_seed(seed)  # same initial weights whatever preprocessing consumed
        weights = self.weights
        model = tr.build_model(
            self.arch, int(self.image_size), weights=weights, pooling=self.pooling,
            head_units=tuple(self.head_units), dropout=float(self.dropout),
        )
        record = tr.train_model(
            model, x_train, ds_train.labels, x_val, y_val,
            arch=self.arch, pretrained=not is_scratch(weights), config=cfg, seed=seed,
        )
        model = tr.inference_copy(model)  # drop the optimizer state
        t_end = time.perf_counter()

        if split is not None and hasattr(split, "to_dict"):
            split = split.to_dict()
        training = {
            "weights": None if is_scratch(weights) else os.fspath(weights),
            "params": self._params_json(),
            "data": _describe_training_data(ds_train, ds_val, shared),
            "split": split,
            "seeds": {**seeds, "shuffle": seed, "balance": seed, "augment": seed},
            "fit": {
                "epochs": int(cfg.epochs),
                "fine_tune_epochs": int(cfg.fine_tune_epochs),
                "fine_tune_from": cfg.fine_tune_from,
                "learning_rate": float(cfg.learning_rate),
                "fine_tune_learning_rate": float(cfg.fine_tune_learning_rate),
                "cache": "memmap" if cache_dir is not None else "memory",
            },
            **record,
            "seconds": {
                "preprocess": round(t_pre - t_start, 2),
                "train": round(t_end - t_pre, 2),
            },
            "environment": environment(),
        }
        meta = ModelMeta.new(
            arch=self.arch, preprocess=config, threshold=float(self.threshold), training=training,
        ).to_dict()
        self.meta_ = meta
        self.backend_ = KerasBackend(model, meta)
        self.classes_ = list(CLASSES)
        self.threshold_ = float(self.threshold)
        self.history_ = record["history"]
        return self

    def _params_json(self) -> dict[str, Any]:
        params = self.get_params()
        params["weights"] = None if is_scratch(params["weights"]) else os.fspath(params["weights"])
        params["preprocess"] = self._preprocess_config().to_dict()
        params["head_units"] = [int(u) for u in params["head_units"]]
        return params

    # ---------------------------------------------------------------- prediction
    def predict_proba(self, X: Any, batch_size: int = 32, tta: bool = False) -> np.ndarray:
        """Class probabilities, shape (n, 2), columns ordered like ``classes_`` (hem, all).

        Parameters
        ----------
        X : paths, folder, Dataset, image array (H, W, 3) or batch (n, H, W, 3)
            Every image goes through :func:`bmcd.preprocessing.preprocess` with the model's
            own :class:`PreprocessConfig`. Arrays may be uint8 or float (RGB).
        batch_size : int
            Hint for the preprocessing chunk; the backend batches on its own.
        tta : bool, default False
            Test-time augmentation: p(all) is the mean over the 8 flips/rotations of each
            image (:data:`bmcd.data.TTA_VIEWS`), so it costs 8 model runs per image.

        Returns
        -------
        ndarray of shape (n, 2), float64
            ``[:, 1]`` is p(all); rows sum to 1.
        """
        self._check_fitted("predict")
        p = self._p_all(X, batch_size=batch_size, tta=tta)
        return np.stack([1.0 - p, p], axis=1)

    def predict(self, X: Any, batch_size: int = 32, tta: bool = False) -> np.ndarray:
        """Labels ``"all"`` / ``"hem"``: ``"all"`` where p(all) >= ``threshold_``.

        Accepts the same ``X`` and ``tta`` as :meth:`predict_proba`.
        """
        self._check_fitted("predict")
        p = self._p_all(X, batch_size=batch_size, tta=tta)
        return label_names(p, self.threshold_)

    def predict_details(
        self, X: Any, batch_size: int = 32, tta: bool = False
    ) -> dict[str, np.ndarray]:
        """p(all), the label and the no-cell flag of every image, in one pass.

        Accepts the same ``X`` and ``tta`` as :meth:`predict_proba`.

        Returns
        -------
        dict of ndarray, each of length n
            ``"p_all"`` (float64), ``"label"`` (``"all"`` / ``"hem"``, the rule of
            :meth:`predict`) and ``"no_cell"`` (bool): True where preprocessing found no
            cell (an all-black image, a 1 x 1 image, a speck; see
            :attr:`bmcd.preprocessing.PreprocessInfo.no_cell`). Such an image still gets a
            probability and a label, but they say little.

        Examples
        --------
        >>> d = clf.predict_details(["cell.bmp", "black.png"])   # doctest: +SKIP
        >>> d["no_cell"]                                         # doctest: +SKIP
        array([False,  True])
        """
        self._check_fitted("predict")
        flags: list[bool] = []
        p = self._p_all(X, batch_size=batch_size, no_cell=flags, tta=tta)
        return {"p_all": p, "label": label_names(p, self.threshold_),
                "no_cell": np.asarray(flags, dtype=bool)}

    def explain(self, X: Any, overlay: bool = False, batch_size: int = 32) -> Any:
        """Class activation maps: where in each cell the evidence for p(all) lies.

        The map is exact for bmcd's head (global average pooling, one sigmoid unit): cell
        ``(i, j)`` of the last feature map contributes ``w . f_ij + b`` to the logit, and
        the map's mean is the logit of p(all). Positive cells push towards "all", negative
        ones towards "hem". Works with the Keras backend and with ONNX files exported with
        the ``cam`` output (no TensorFlow). See docs/explain.rst.

        Parameters
        ----------
        X : like :meth:`predict_proba`
        overlay : bool
            Also return the maps upsampled onto the preprocessed cells as JET colour
            overlays, showing the evidence for each cell's predicted label.
        batch_size : int
            Preprocessing chunk hint.

        Returns
        -------
        ndarray (n, h, w) float32
            With ``overlay=False``.
        tuple (maps, overlays)
            With ``overlay=True``; overlays is (n, S, S, 3) uint8 RGB
            (:func:`bmcd.explain.to_png` makes PNG bytes of one).

        Raises
        ------
        CamUnavailableError
            The backend or the ONNX file has no map (the message says how to re-export).
        """
        from .explain import explain_preprocessed

        self._check_fitted("explain")
        items, _ = _resolve_inputs(X)
        config, maps, overs = self._config(), [], []
        chunk = _chunk_size(batch_size)
        for start in range(0, len(items), chunk):
            x = preprocess_batch(items[start : start + chunk], config)
            _, cam, over = explain_preprocessed(self.backend_, x, self.threshold_, overlay)
            maps.append(cam)
            overs.append(over)
        cams = np.concatenate(maps)
        return (cams, np.concatenate(overs)) if overlay else cams

    # ---------------------------------------------------------------- evaluation
    def evaluate(
        self,
        data: Any,
        batch_size: int = 32,
        dataset_info: dict[str, Any] | None = None,
        tta: bool = False,
    ):
        """Score labelled data at ``threshold_``; returns an :class:`~bmcd.metrics.EvaluationReport`.

        Parameters
        ----------
        data : Dataset, folder, CSV or (paths, labels)
            Labelled images (use subjects the model has not seen).
        batch_size : int
        dataset_info : dict, optional
            Extra description for the report, e.g. ``{"synthetic": True}`` (adds a banner).
        tta : bool, default False
            Mean p(all) over the 8 flips/rotations (see :meth:`predict_proba`); the report's
            dataset description says so.

        Returns
        -------
        EvaluationReport
            With the training history, the model description, the per-subject table and
            95% intervals by bootstrap over subjects.
        """
        from .metrics import EvaluationReport

        self._check_fitted("evaluate")
        ds = _as_dataset(data, "data")
        if len(ds) == 0:
            raise DatasetError("Cannot evaluate on an empty dataset.")
        p = self._p_all(ds, batch_size=batch_size, tta=tta)
        info = _describe_dataset(ds)
        if tta:
            info["tta"] = "mean p(all) over the 8 flips/rotations"
        info.update(dataset_info or {})
        report = EvaluationReport.from_predictions(
            ds.labels, p, threshold=self.threshold_, subjects=[
                s if s is not None else "?" for s in ds.subjects
            ], paths=ds.absolute_paths(), history=self.history_,
            model_info=self._model_info(), dataset_info=info,
        )
        from .explain import build_gallery  # overlays for report.html (docs/explain.rst)

        report.gallery = build_gallery(
            self.backend_, report.paths or [], report.y_true, p, self.threshold_,
            self._config(), subjects=report.subjects,
        )
        return report

    def _model_info(self) -> dict[str, Any]:
        mm = ModelMeta.from_dict(self.meta_)
        training = mm.training
        info = {
            "arch": mm.arch,
            "image_size": mm.image_size,
            "backend": getattr(self.backend_, "name", type(self.backend_).__name__),
            "threshold": self.threshold_,
            "weights": training.get("weights", "unknown") if training else "unknown",
            "bmcd_version": mm.bmcd_version,
        }
        if training:
            info["training"] = training.get("note")
            info["epochs_run"] = training.get("epochs_run")
        return info

    def tune_threshold(
        self, validation: Any, method: str | None = "youden", sensitivity: float | None = None
    ) -> float:
        """Choose ``threshold_`` on labelled validation data, store it and return it.

        Parameters
        ----------
        validation : Dataset, folder, CSV or (paths, labels)
            Not the test set: a threshold tuned on test data flatters the test score.
        method : {"youden"}
            Maximise sensitivity + specificity - 1 (ignored when ``sensitivity`` is given).
        sensitivity : float, optional
            Instead, the highest threshold whose recall of ``"all"`` is at least this.

        Returns
        -------
        float
        """
        from .metrics import tune_threshold

        self._check_fitted("tune a threshold")
        ds = _as_dataset(validation, "validation")
        p = self._p_all(ds)
        if sensitivity is not None:
            thr = tune_threshold(ds.labels, p, method=None, sensitivity=sensitivity)
            rule = {"sensitivity": float(sensitivity)}
        else:
            thr = tune_threshold(ds.labels, p, method=method)
            rule = {"method": method}
        self.threshold_ = float(thr)
        self.meta_["threshold"] = float(thr)
        self.meta_.setdefault("training", {})["threshold_tuning"] = {
            **rule, "threshold": float(thr), "n": len(ds), "data_fingerprint": ds.fingerprint(),
        }
        return self.threshold_

    # ---------------------------------------------------------------- persistence
    def save(self, model_dir: str | os.PathLike) -> Path:
        """Write ``model.keras`` and ``bmcd.json`` into ``model_dir``; return its path.

        Needs the Keras backend (a fitted model, or one loaded with ``backend="keras"``).
        """
        self._check_fitted("be saved")
        if not hasattr(self.backend_, "save"):
            raise ModelFormatError(
                f"The {getattr(self.backend_, 'name', '?')!r} backend cannot write "
                f"model.keras; load the model with backend='keras' to save it."
            )
        d = Path(model_dir)
        d.mkdir(parents=True, exist_ok=True)
        self.meta_["threshold"] = float(self.threshold_)
        self.backend_.save(d)
        write_model_json(d, self.meta_)
        self.model_dir_ = d
        return d

    @classmethod
    def load(
        cls, model_dir: str | os.PathLike, backend: str = "keras", **backend_options: Any
    ) -> Classifier:
        """Load a model directory with the named backend.

        Parameters
        ----------
        model_dir : path
            A directory written by :meth:`save` / ``bmcd train`` (the ONNX backend also
            accepts a bare ``.onnx`` file with bmcd metadata).
        backend : str
            A registered backend: ``"keras"`` (needs the ``train`` extra) or ``"onnx"``
            (core dependencies only; never imports TensorFlow).
        **backend_options
            Passed to the backend's ``load``, e.g. ``precision="int8"`` for ONNX.

        Raises
        ------
        ModelFormatError
            ``bmcd.json`` is missing, has missing keys or an unknown schema version, or the
            model's input size disagrees with it.
        """
        from .runtimes import get_backend

        b = get_backend(backend).load(model_dir, **backend_options)
        meta = b.meta
        mm = ModelMeta.from_dict(meta)
        weights = mm.training.get("weights")
        params = mm.training.get("params", {})
        clf = cls(
            arch=mm.arch,
            image_size=mm.image_size,
            weights=weights,
            threshold=mm.threshold,
            preprocess=mm.preprocess,
            seed=int(params.get("seed", 0)),
            pooling=params.get("pooling", "avg"),
            head_units=tuple(params.get("head_units", ())),
            dropout=float(params.get("dropout", 0.2)),
        )
        clf.meta_ = meta
        clf.backend_ = b
        p = Path(model_dir)
        clf.model_dir_ = p if p.is_dir() else p.parent
        clf.classes_ = list(mm.classes)
        clf.threshold_ = mm.threshold
        clf.history_ = mm.training.get("history")
        return clf

