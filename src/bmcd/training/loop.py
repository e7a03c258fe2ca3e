"""The training loop: :func:`train_model` runs the two phases on cached uint8 images.

With a pretrained backbone the head trains first with the backbone frozen, then the top
of the backbone is unfrozen for fine-tuning; from scratch the whole network trains in one
phase (see docs/architecture.rst).
"""

from __future__ import annotations

import platform
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..data import balance_augment, class_weights
from ..errors import ConfigError
from ..runtimes.keras import keras_module
from .config import TrainConfig, average_epochs_for
from .models import SCRATCH_BN_MOMENTUM, check_arch
from .sequence import sequence_class

__all__ = ["environment", "reestimate_batchnorm", "set_seed", "train_model"]


def set_seed(seed: int) -> dict[str, int]:
    """Seed Python, numpy and Keras/TensorFlow (``keras.utils.set_random_seed``)."""
    keras = keras_module()
    keras.utils.set_random_seed(int(seed))
    return {"python": int(seed), "numpy": int(seed), "keras": int(seed)}


def environment() -> dict[str, str]:
    """The versions a model is trained with, as ``bmcd.json`` records them
    (``training.environment``)."""
    import keras
    import tensorflow as tf

    return {
        "bmcd": __version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _fine_tune_index(backbone, fine_tune_from: str | int) -> int:
    names = [layer.name for layer in backbone.layers]
    if isinstance(fine_tune_from, (int, np.integer)) and not isinstance(fine_tune_from, bool):
        idx = int(fine_tune_from)
        if not -len(names) <= idx < len(names):
            raise ConfigError(
                f"fine_tune_from index {idx} is out of range for a backbone of {len(names)} "
                f"layers."
            )
        return idx % len(names)
    if fine_tune_from in names:
        return names.index(fine_tune_from)
    near = [n for n in names if str(fine_tune_from).split("_")[0] in n][:8]
    raise ConfigError(
        f"fine_tune_from={fine_tune_from!r} is not a layer of the backbone. Examples of "
        f"layer names: {near or names[:8]} (list them with "
        f"[l.name for l in model.get_layer('backbone').layers])."
    )


def _learning_rate(keras, lr: float, schedule: str, steps: int, warmup_steps: int):
    """A constant rate, or a linear warm-up from lr/10 followed by a cosine decay to
    lr/100 over the phase's ``steps``."""
    if schedule == "constant":
        return float(lr)
    warmup_steps = min(int(warmup_steps), max(0, steps - 1))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=float(lr) / 10 if warmup_steps else float(lr),
        decay_steps=max(1, steps - warmup_steps), alpha=0.01,
        warmup_target=float(lr) if warmup_steps else None, warmup_steps=warmup_steps,
    )


def _batchnorm_layers(layer) -> list:
    """Every BatchNormalization layer under ``layer`` (nested models included)."""
    from keras.layers import BatchNormalization

    out, stack = [], [layer]
    while stack:
        node = stack.pop()
        if isinstance(node, BatchNormalization):
            out.append(node)
        stack.extend(getattr(node, "layers", []))
    return out


def reestimate_batchnorm(model, batches) -> int:
    """Set the moving mean and variance of every trainable BatchNormalization layer to the
    average of its batch statistics over ``batches`` (a sequence of ``(x, y)``), computed
    with the model's current weights. Returns the number of layers updated.

    Averaged weights (:attr:`TrainConfig.average_epochs`) never ran as such during
    training, so the statistics collected along the way do not belong to them (SWA's
    "bn_update"). The k-th batch enters with momentum k/(k+1): a running mean.
    """
    bns = [layer for layer in _batchnorm_layers(model) if layer.trainable]
    if not bns or len(batches) == 0:
        return 0
    saved = [layer.momentum for layer in bns]
    try:
        for k in range(len(batches)):
            x = batches[k][0]
            for layer in bns:
                layer.momentum = k / (k + 1)
            model(x, training=True)
    finally:
        for layer, m in zip(bns, saved, strict=True):
            layer.momentum = m
    return len(bns)


def _weight_average(keras, first_epoch: int, batches):
    """A callback that averages the trainable weights at the end of every epoch from
    ``first_epoch`` on and, when training ends, sets them and re-estimates BatchNorm."""

    class WeightAverage(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.count = 0
            self.sums: list[np.ndarray] | None = None
            self.bn_layers = 0

        def on_epoch_end(self, epoch, logs=None):
            if epoch < first_epoch:
                return
            values = [np.asarray(keras.ops.convert_to_numpy(v), dtype=np.float64)
                      for v in self.model.trainable_weights]
            if self.sums is None:
                self.sums = values
            else:
                for total, v in zip(self.sums, values, strict=True):
                    total += v
            self.count += 1

        def on_train_end(self, logs=None):
            if not self.count:
                return
            for var, total in zip(self.model.trainable_weights, self.sums, strict=True):
                var.assign((total / self.count).astype(var.dtype))
            self.bn_layers = reestimate_batchnorm(self.model, batches)

    return WeightAverage()


def _compile(keras, model, learning_rate, jit_compile, label_smoothing: float = 0.0):
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=keras.losses.BinaryCrossentropy(label_smoothing=float(label_smoothing)),
        metrics=[keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")],
        jit_compile=jit_compile,
    )


def train_model(
    model,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    *,
    arch: str,
    pretrained: bool,
    config: TrainConfig | None = None,
    seed: int = 0,
    **settings: Any,
) -> dict[str, Any]:
    """Train a :func:`~bmcd.training.build_model` network on cached uint8 images.

    Parameters
    ----------
    model : keras.Model
        From :func:`~bmcd.training.build_model` (its backbone is the layer ``"backbone"``).
    x_train, y_train : ndarray
        uint8 images (n, S, S, 3) (e.g. from :func:`~bmcd.training.cache_images`) and
        0/1 labels (1 = "all").
    x_val, y_val : ndarray, optional
        Validation data for early stopping and the validation curves.
    arch : str
        A key of :data:`~bmcd.training.ARCHITECTURES`.
    pretrained : bool
        Whether the backbone starts from pretrained weights (two phases) or not (one).
    config : bmcd.training.config.TrainConfig, optional
        The training settings (default: ``TrainConfig()``).
    seed : int
        Seeds shuffling, balancing and augmentation.
    **settings
        Any :class:`~bmcd.training.TrainConfig` field, merged over ``config``
        (``epochs=3``, ``learning_rate=1e-4`` ...).

    Notes
    -----
    Phases. With a pretrained backbone (``pretrained=True``):

    1. ``"head"``: the backbone is frozen (its BatchNorm layers run in inference mode) and
       only the head trains, ``epochs`` epochs at ``learning_rate``;
    2. ``"fine_tune"``: the backbone is unfrozen from layer ``fine_tune_from`` (default
       ``ARCHITECTURES[arch]["fine_tune_from"]``) onwards; earlier layers, their BatchNorm
       included, stay frozen. ``fine_tune_epochs`` epochs at ``fine_tune_learning_rate``.

    From scratch (``pretrained=False``) a frozen random backbone would train only the head,
    so there is one ``"full"`` phase: every layer trains for ``epochs + fine_tune_epochs``
    epochs at ``learning_rate``. The record says so in ``"mode"`` and ``"note"``.

    Each phase stops early on ``val_loss`` (``early_stopping_patience``, when validation
    data are given) and restores its best weights, except a phase that averages weights
    (``average_epochs``, the last phase only; by default the last third of a from-scratch
    run, :func:`~bmcd.training.config.average_epochs_for`): it runs all its epochs and ends
    with the average of the weights of its last ``average_epochs`` epochs, with BatchNorm
    statistics re-estimated for them (:func:`reestimate_batchnorm`).

    Returns
    -------
    dict
        ``mode``, ``note``, ``phases`` (per phase: name, trainable layers, learning rate,
        epochs requested / run, best epoch, seconds, history), ``history``
        (``{"phases": [{"name", "history"}]}``, what :class:`~bmcd.metrics.EvaluationReport`
        plots), ``balance``, ``augment``, ``batch_size``, ``seed``.
    """
    cfg = TrainConfig.from_kwargs(config, **settings)
    epochs, fine_tune_epochs = int(cfg.epochs), int(cfg.fine_tune_epochs)
    fine_tune_from, batch_size = cfg.fine_tune_from, int(cfg.batch_size)
    learning_rate, fine_tune_learning_rate = cfg.learning_rate, cfg.fine_tune_learning_rate
    balance, augment, verbose = cfg.balance, cfg.augment, cfg.verbose
    early_stopping_patience, checkpoint_dir = cfg.early_stopping_patience, cfg.checkpoint_dir
    jit_compile = cfg.jit_compile

    keras = keras_module()
    spec = check_arch(arch)
    y_train = np.asarray(y_train, dtype=np.int64).reshape(-1)
    if len(x_train) != len(y_train):
        raise ConfigError(
            f"x_train has {len(x_train)} images but y_train {len(y_train)} labels; pass one "
            f"label per image."
        )
    has_val = x_val is not None and y_val is not None and len(y_val) > 0

    indices = transforms = None
    cw = None
    balance_info: dict[str, Any] = {"method": balance}
    if balance == "augment":
        indices, transforms = balance_augment(y_train, seed=seed)
        balance_info.update(
            items_per_epoch=int(len(indices)),
            augmented_copies=int(sum(t != "none" for t in transforms)),
        )
    elif balance == "class_weight":
        cw = class_weights(y_train)
        balance_info["class_weight"] = {str(k): float(v) for k, v in cw.items()}

    Seq = sequence_class()
    train_seq = Seq(x_train, y_train, batch_size, indices=indices, transforms=transforms,
                    shuffle=True, augment=augment, seed=seed,
                    color_jitter=cfg.color_jitter, noise=cfg.noise)
    val_seq = Seq(x_val, y_val, max(batch_size, 64)) if has_val else None

    backbone = model.get_layer("backbone")
    if pretrained:
        ft_from = spec["fine_tune_from"] if fine_tune_from is None else fine_tune_from
        ft_index = _fine_tune_index(backbone, ft_from)
        plan = []
        if epochs > 0:
            plan.append(("head", epochs, float(learning_rate), None))
        if fine_tune_epochs > 0:
            plan.append(("fine_tune", fine_tune_epochs, float(fine_tune_learning_rate), ft_index))
        mode = "transfer"
        note = (
            f"pretrained backbone: {epochs} epoch(s) with the backbone frozen at lr "
            f"{learning_rate:g}, then {fine_tune_epochs} epoch(s) with layers from "
            f"'{backbone.layers[ft_index].name}' unfrozen at lr {fine_tune_learning_rate:g}"
        )
    else:
        if fine_tune_from is not None:
            warnings.warn(
                f"fine_tune_from={fine_tune_from!r} is ignored: with weights=None the whole "
                f"network trains from the start.",
                UserWarning,
                stacklevel=3,
            )
        plan = [("full", epochs + fine_tune_epochs, float(learning_rate), 0)]
        mode = "scratch"
        note = (
            f"weights=None: nothing to transfer, so the frozen-backbone phase is skipped and "
            f"the whole network trains for epochs + fine_tune_epochs = "
            f"{epochs + fine_tune_epochs} epoch(s) at lr {learning_rate:g} (BatchNorm "
            f"momentum {SCRATCH_BN_MOMENTUM} unless overridden)"
        )
    if verbose:
        print(f"bmcd: training {arch} ({mode}): {note}.", flush=True)

    n_average = average_epochs_for(cfg.average_epochs, pretrained,
                                   plan[-1][1] if plan else 0)
    phases: list[dict[str, Any]] = []
    for i_phase, (name, n_epochs, lr, unfreeze_from) in enumerate(plan):
        averaging = n_average > 0 and i_phase == len(plan) - 1
        if unfreeze_from is None:
            backbone.trainable = False
            trainable_desc = "head only (backbone frozen)"
        else:
            backbone.trainable = True
            for layer in backbone.layers[:unfreeze_from]:
                layer.trainable = False
            trainable_desc = (
                "all layers" if unfreeze_from == 0
                else f"backbone from '{backbone.layers[unfreeze_from].name}' + head"
            )
        steps = n_epochs * len(train_seq)
        _compile(keras, model,
                 _learning_rate(keras, lr, cfg.lr_schedule, steps,
                                cfg.warmup_epochs * len(train_seq)),
                 jit_compile, cfg.label_smoothing)
        callbacks = []
        early = None
        average = None
        if averaging:
            average = _weight_average(keras, max(0, n_epochs - n_average),
                                      train_seq)
            callbacks.append(average)
        elif has_val and early_stopping_patience is not None:
            early = keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=int(early_stopping_patience),
                restore_best_weights=True, verbose=1 if verbose else 0,
            )
            callbacks.append(early)
        ckpt_path = None
        if checkpoint_dir is not None:
            Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
            ckpt_path = Path(checkpoint_dir) / f"{name}.best.keras"
            callbacks.append(keras.callbacks.ModelCheckpoint(
                ckpt_path, monitor="val_loss" if has_val else "loss", save_best_only=True,
            ))
        n_trainable = int(sum(int(np.prod(w.shape)) for w in model.trainable_weights))
        if verbose:
            print(f"bmcd: phase '{name}': {trainable_desc}, {n_trainable:,} trainable "
                  f"parameters, lr {lr:g}, up to {n_epochs} epoch(s).", flush=True)
        t0 = time.perf_counter()
        hist = model.fit(
            train_seq, validation_data=val_seq, epochs=n_epochs, class_weight=cw,
            callbacks=callbacks, verbose=verbose, shuffle=False,
        )
        seconds = time.perf_counter() - t0
        history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
        run = len(history.get("loss", []))
        phases.append({
            "name": name,
            "trainable": trainable_desc,
            "trainable_params": n_trainable,
            "learning_rate": lr,
            "epochs_requested": n_epochs,
            "epochs_run": run,
            # None when no validation watched this phase (none given, or weight averaging)
            "early_stopping_patience": (int(early_stopping_patience) if early is not None
                                        else None),
            "stopped_early": bool(early is not None and early.stopped_epoch > 0),
            "best_epoch": (int(early.best_epoch) + 1 if early is not None and early.best_weights
                           is not None else run),
            "seconds": round(seconds, 2),
            "images_per_second": round(run * len(train_seq.indices) / seconds, 2) if seconds else None,
            "checkpoint": str(ckpt_path) if ckpt_path is not None else None,
            "averaged_epochs": int(average.count) if average is not None else 0,
            "batchnorm_reestimated": int(average.bn_layers) if average is not None else 0,
            "history": history,
        })
    backbone.trainable = True  # leave a plain, fully trainable model behind
    return {
        "mode": mode,
        "note": note,
        "phases": phases,
        "epochs_run": {p["name"]: p["epochs_run"] for p in phases},
        "history": {"phases": [{"name": p["name"], "history": p["history"]} for p in phases]},
        "balance": balance_info,
        "augment": bool(augment),
        "lr_schedule": cfg.lr_schedule,
        "warmup_epochs": int(cfg.warmup_epochs),
        "label_smoothing": float(cfg.label_smoothing),
        "color_jitter": float(cfg.color_jitter) if augment else 0.0,
        "noise": float(cfg.noise) if augment else 0.0,
        "average_epochs": n_average,
        "batch_size": int(batch_size),
        "early_stopping_patience": early_stopping_patience if has_val else None,
        "seed": int(seed),
    }
