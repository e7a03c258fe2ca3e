"""The label rule: ``"all"`` where p(all) >= threshold, else ``"hem"``.

One definition for the classifier, the scoring engines and the command line (see
docs/architecture.rst). Labels always come from thresholding the single sigmoid output
p(all), never from an ``argmax``.
"""

from __future__ import annotations

import numpy as np

from .artifact import CLASSES

__all__ = ["label_indices", "label_names"]


def label_indices(p_all, threshold: float) -> np.ndarray:
    """Class indices into :data:`bmcd.artifact.CLASSES`: 1 (``"all"``) where ``p_all >= threshold``.

    Parameters
    ----------
    p_all : array-like of float
        Probabilities of ``"all"``.
    threshold : float
        Decision threshold; a probability equal to it counts as ``"all"``.

    Returns
    -------
    ndarray of int64, same shape as ``p_all``

    Examples
    --------
    >>> label_indices([0.2, 0.5, 0.9], 0.5).tolist()
    [0, 1, 1]
    """
    return (np.asarray(p_all) >= float(threshold)).astype(np.int64)


def label_names(p_all, threshold: float) -> np.ndarray:
    """Class names (``"hem"`` / ``"all"``) for :func:`label_indices` of the same inputs.

    Examples
    --------
    >>> label_names([0.2, 0.5], 0.5).tolist()
    ['hem', 'all']
    """
    return np.asarray(CLASSES)[label_indices(p_all, threshold)]
