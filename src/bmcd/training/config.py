"""``TrainConfig``: the one declaration of the training settings.

:meth:`bmcd.Classifier.fit`, :func:`bmcd.training.train_model`, the ``bmcd train`` command
and the demo all take their settings from this dataclass (see docs/architecture.rst), so a
new setting is added here once: a field, its check in ``__post_init__`` and, when the
command line should offer it, an entry in ``_CLI``.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ..errors import ConfigError

__all__ = ["BALANCE_METHODS", "TrainConfig", "average_epochs_for"]

#: Accepted values of :attr:`TrainConfig.balance`.
BALANCE_METHODS = ("augment", "class_weight", None)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) or (
        type(value).__module__ == "numpy" and hasattr(value, "__index__")
        and not isinstance(value, bool)
    )


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (immutable; derive variants with :meth:`replace`).

    Parameters
    ----------
    epochs : int
        With pretrained weights: epochs with the backbone frozen (head only). From scratch
        the whole network trains for ``epochs + fine_tune_epochs`` epochs.
    fine_tune_epochs : int
        With pretrained weights: epochs with the backbone unfrozen from ``fine_tune_from``.
    fine_tune_from : str or int, optional
        First backbone layer unfrozen when fine-tuning (name or index); default per
        architecture (:data:`bmcd.training.ARCHITECTURES`).
    batch_size : int
    learning_rate, fine_tune_learning_rate : float
        Adam learning rates of the two phases.
    lr_schedule : {"constant", "cosine"}
        ``"cosine"``: each phase warms up linearly from a tenth of its learning rate over
        ``warmup_epochs`` and then decays along a cosine to a hundredth of it by the phase's
        last epoch.
    warmup_epochs : int
        Warm-up epochs of the cosine schedule.
    label_smoothing : float
        Binary cross-entropy towards ``y * (1 - s) + s / 2`` instead of 0/1 targets.
    balance : {"augment", "class_weight", None}
        ``"augment"``: subsample the majority class and add flipped / rotated minority
        copies (:func:`bmcd.data.balance_augment`); ``"class_weight"``: inverse-frequency
        loss weights; None: the data as they are.
    augment : bool
        Random flips and 90-degree rotations on the fly.
    color_jitter : float
        With ``augment``: each training image's three channels are multiplied by gains drawn
        uniformly from [1 - color_jitter, 1 + color_jitter] (stain and illumination vary
        between subjects; black background stays black). 0 disables it.
    noise : float
        With ``augment``: uniform pixel noise of up to +-``noise`` gray levels is added to
        each training image (robustness to tiny intensity changes). 0 disables it.
    early_stopping_patience : int or None
        Stop a phase after this many epochs without a lower validation loss and restore
        its best weights (only with validation data); None disables it.
    average_epochs : int or None
        Weight averaging (SWA): the last phase ends with the uniform average of the
        trainable weights at the end of its last ``average_epochs`` epochs, and BatchNorm
        statistics re-estimated on the training images for the averaged weights. The phase
        then runs all its epochs (no early stopping); its validation curves and a
        ``checkpoint_dir`` model are those of the weights along the way, not of the
        average. 0 disables it. None (default): from scratch, the last third of the
        epochs (5 of 15; at least 1, which still re-estimates BatchNorm); with pretrained
        weights, off. Measured on subject-grouped folds of real cells (docs/accuracy.rst).
    checkpoint_dir : path, optional
        Keep the best model of each phase there (``<phase>.best.keras``).
    verbose : int
        0 silent, 1 progress bars, 2 one line per epoch.
    cache_dir : path, optional
        Keep the preprocessed uint8 images in a memory-mapped ``.npy`` there (large sets;
        reused by later runs over the same files).
    jit_compile : bool or "auto"
        Passed to ``keras.Model.compile`` (off by default: XLA does not speed these
        networks up on CPUs and costs a long first step).

    Examples
    --------
    >>> from bmcd.training import TrainConfig
    >>> cfg = TrainConfig(epochs=3, fine_tune_epochs=0)
    >>> cfg.replace(batch_size=16).batch_size
    16
    >>> TrainConfig.from_dict(cfg.to_dict()) == cfg
    True
    """

    epochs: int = 5
    fine_tune_epochs: int = 5
    fine_tune_from: str | int | None = None
    batch_size: int = 32
    learning_rate: float = 1e-3
    fine_tune_learning_rate: float = 1e-5
    lr_schedule: str = "constant"
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    balance: str | None = "augment"
    augment: bool = True
    color_jitter: float = 0.0
    noise: float = 0.0
    early_stopping_patience: int | None = 5
    average_epochs: int | None = None
    checkpoint_dir: str | os.PathLike | None = None
    verbose: int = 1
    cache_dir: str | os.PathLike | None = None
    jit_compile: bool | str = False

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> ConfigError:
            return ConfigError(
                f"TrainConfig.{name} must be {expected}; received {getattr(self, name)!r}."
            )

        for name in ("epochs", "fine_tune_epochs"):
            v = getattr(self, name)
            if not _is_int(v) or v < 0:
                raise bad(name, "an int >= 0")
        if self.epochs + self.fine_tune_epochs == 0:
            raise ConfigError(
                f"epochs and fine_tune_epochs must be >= 0 and not both 0; received "
                f"epochs={self.epochs}, fine_tune_epochs={self.fine_tune_epochs}."
            )
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise bad("batch_size", "an int >= 1")
        for name in ("learning_rate", "fine_tune_learning_rate"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise bad(name, "a number > 0")
        if self.lr_schedule not in ("constant", "cosine"):
            raise bad("lr_schedule", "'constant' or 'cosine'")
        if not _is_int(self.warmup_epochs) or self.warmup_epochs < 0:
            raise bad("warmup_epochs", "an int >= 0")
        ls = self.label_smoothing
        if isinstance(ls, bool) or not isinstance(ls, (int, float)) or not 0 <= ls < 0.5:
            raise bad("label_smoothing", "a number in [0, 0.5)")
        if self.balance not in BALANCE_METHODS:
            raise ConfigError(
                f"balance must be 'augment', 'class_weight' or None; received "
                f"{self.balance!r}."
            )
        if not isinstance(self.augment, bool):
            raise bad("augment", "True or False")
        cj = self.color_jitter
        if isinstance(cj, bool) or not isinstance(cj, (int, float)) or not 0 <= cj < 1:
            raise bad("color_jitter", "a number in [0, 1)")
        nz = self.noise
        if isinstance(nz, bool) or not isinstance(nz, (int, float)) or not 0 <= nz <= 64:
            raise bad("noise", "a number of gray levels in [0, 64]")
        p = self.early_stopping_patience
        if p is not None and (not _is_int(p) or p < 0):
            raise bad("early_stopping_patience", "an int >= 0 or None")
        a = self.average_epochs
        if a is not None and (not _is_int(a) or a < 0):
            raise bad("average_epochs",
                      "an int >= 0 (0: no weight averaging) or None (by the weights)")
        if not (self.fine_tune_from is None or isinstance(self.fine_tune_from, str)
                or _is_int(self.fine_tune_from)):
            raise bad("fine_tune_from", "a layer name, a layer index or None")
        if not _is_int(self.verbose) or self.verbose < 0:
            raise bad("verbose", "an int >= 0 (0 silent, 1 progress bars, 2 one line per epoch)")
        for name in ("checkpoint_dir", "cache_dir"):
            if not (getattr(self, name) is None or isinstance(getattr(self, name),
                                                              (str, os.PathLike))):
                raise bad(name, "a path or None")
        if self.jit_compile not in (True, False, "auto"):
            raise bad("jit_compile", "True, False or 'auto'")

    # -- conversions ----------------------------------------------------------------------
    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (validated; unknown names raise ConfigError)."""
        _check_names(changes, "TrainConfig.replace")
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (paths as strings)."""
        d = asdict(self)
        for name in ("checkpoint_dir", "cache_dir"):
            if d[name] is not None:
                d[name] = os.fspath(d[name])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; missing keys take their defaults."""
        if not isinstance(d, dict):
            raise ConfigError(
                f"TrainConfig.from_dict expects a dict; received {type(d).__name__}."
            )
        _check_names(d, "TrainConfig.from_dict")
        return cls(**d)

    @classmethod
    def from_kwargs(cls, config: TrainConfig | None = None, **kwargs: Any) -> TrainConfig:
        """``config`` (default: the defaults) with keyword settings merged over it."""
        if config is None:
            return cls.from_dict(kwargs)
        if not isinstance(config, cls):
            raise ConfigError(
                f"config must be a TrainConfig or None; received {type(config).__name__}."
            )
        return config.replace(**kwargs) if kwargs else config

    # -- command line ---------------------------------------------------------------------
    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """Add the training flags of ``bmcd train`` (names and defaults as documented).

        The destinations are the field names, so :meth:`from_namespace` reads them back.
        ``verbose`` is not a flag (the command derives it from ``--quiet`` and the
        terminal).
        """
        for flags, kwargs in _CLI:
            parser.add_argument(*flags, **kwargs)

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace, **overrides: Any) -> TrainConfig:
        """The config from parsed :meth:`add_arguments` flags, plus ``overrides``."""
        values = {f.name: getattr(ns, f.name) for f in fields(cls) if hasattr(ns, f.name)}
        values.update(overrides)
        return cls.from_dict(values)


def average_epochs_for(average_epochs: int | None, pretrained: bool, last_phase_epochs: int) -> int:
    """Epochs averaged at the end of the last phase (:attr:`TrainConfig.average_epochs`).

    An explicit number is kept. None means: from scratch, the last third of the last
    phase's epochs (at least one: the final weights with BatchNorm statistics re-estimated
    for them); with pretrained weights, none.

    >>> average_epochs_for(None, False, 15), average_epochs_for(None, False, 2)
    (5, 1)
    >>> average_epochs_for(None, True, 15), average_epochs_for(3, True, 15)
    (0, 3)
    """
    if average_epochs is not None:
        return int(average_epochs)
    if pretrained or last_phase_epochs <= 0:
        return 0
    return max(1, int(last_phase_epochs) // 3)


def _check_names(d: dict[str, Any], where: str) -> None:
    known = [f.name for f in fields(TrainConfig)]
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ConfigError(
            f"{where} got unknown training settings {unknown}; known ones are {known}."
        )


def _balance_arg(text: str) -> str | None:
    if text.lower() == "none":
        return None
    if text not in ("augment", "class_weight"):
        raise argparse.ArgumentTypeError(
            f"expected augment, class_weight or none; received {text!r}"
        )
    return text


#: ``bmcd train`` flags -> TrainConfig fields (documented in docs/cli.rst).
_CLI: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    (("--epochs",), dict(dest="epochs", type=int, default=5, metavar="N",
                         help="frozen-backbone epochs (default: 5)")),
    (("--fine-tune-epochs",), dict(
        dest="fine_tune_epochs", type=int, default=5, metavar="N",
        help="fine-tuning epochs (default: 5); with --weights none the network trains for "
             "epochs + fine-tune-epochs")),
    (("--fine-tune-from",), dict(
        dest="fine_tune_from", default=None, metavar="LAYER",
        help="first backbone layer unfrozen when fine-tuning (default per arch)")),
    (("--batch-size",), dict(dest="batch_size", type=int, default=32, metavar="N")),
    (("--lr",), dict(dest="learning_rate", type=float, default=1e-3, metavar="LR",
                     help="learning rate (default: 1e-3)")),
    (("--fine-tune-lr",), dict(dest="fine_tune_learning_rate", type=float, default=1e-5,
                               metavar="FINE_TUNE_LR",
                               help="fine-tuning learning rate (default: 1e-5)")),
    (("--lr-schedule",), dict(dest="lr_schedule", choices=["constant", "cosine"],
                              default="constant",
                              help="constant (default) or cosine (warm-up, then cosine decay)")),
    (("--warmup-epochs",), dict(dest="warmup_epochs", type=int, default=0, metavar="N",
                                help="warm-up epochs of --lr-schedule cosine (default: 0)")),
    (("--label-smoothing",), dict(dest="label_smoothing", type=float, default=0.0,
                                  metavar="S", help="label smoothing (default: 0)")),
    (("--balance",), dict(dest="balance", type=_balance_arg, default="augment", metavar="B",
                          help="augment (default), class_weight or none")),
    (("--no-augment",), dict(dest="augment", action="store_false",
                             help="no random flips / rotations while training")),
    (("--color-jitter",), dict(dest="color_jitter", type=float, default=0.0, metavar="J",
                               help="per-channel gain jitter +-J while training (default: 0)")),
    (("--noise",), dict(dest="noise", type=float, default=0.0, metavar="LEVELS",
                        help="uniform pixel noise of +-LEVELS gray levels while training "
                             "(default: 0)")),
    (("--patience",), dict(dest="early_stopping_patience", type=int, default=5, metavar="N",
                           help="early-stopping patience in epochs (default: 5)")),
    (("--average-epochs",), dict(
        dest="average_epochs", type=int, default=None, metavar="N",
        help="average the weights of the last N epochs (SWA; BatchNorm statistics "
             "re-estimated; no early stopping in that phase; 0: off; default: the last "
             "third of the epochs from scratch, off with pretrained weights)")),
    (("--cache-dir",), dict(dest="cache_dir", default=None, metavar="DIR",
                            help="keep preprocessed images in a memory map here (large sets)")),
    (("--checkpoint-dir",), dict(dest="checkpoint_dir", default=None, metavar="DIR",
                                 help="keep the best model of each training phase here")),
)
