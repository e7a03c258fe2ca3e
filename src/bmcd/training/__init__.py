"""Training: settings, the network, the input pipeline and the two-phase loop.

=====================  ==============================================================
:mod:`.config`         :class:`TrainConfig`, the one declaration of the training settings
:mod:`.models`         :data:`ARCHITECTURES`, :func:`build_model` (backbone, head, BatchNorm
                       momentum from scratch)
:mod:`.sequence`       :func:`cache_images` (uint8 preprocessing cache) and the Keras
                       ``PyDataset`` with balancing and flips / rotations
:mod:`.loop`           :func:`train_model`, the frozen-backbone then fine-tuning phases
:mod:`.evaluate`       :func:`train_and_evaluate`, fit -> evaluate -> save
=====================  ==============================================================

TensorFlow is imported only when a function needs it, so ``import bmcd.training`` stays
cheap (see docs/architecture.rst).
"""

from __future__ import annotations

from .config import TrainConfig
from .evaluate import train_and_evaluate
from .loop import set_seed, train_model
from .models import ARCHITECTURES, SCRATCH_BN_MOMENTUM, build_model, inference_copy
from .sequence import cache_images

__all__ = [
    "ARCHITECTURES",
    "SCRATCH_BN_MOMENTUM",
    "TrainConfig",
    "build_model",
    "cache_images",
    "inference_copy",
    "set_seed",
    "train_and_evaluate",
    "train_model",
]
