"""Test-time augmentation views: the 8 flips/rotations of a square image (dihedral group).

A cell has no up, down, left or right, so the model's p(all) should not depend on which of
the 8 orientations it sees; averaging p(all) over them removes part of the orientation
noise of one prediction. Every view is made with :func:`~bmcd.data.apply_transform`, the
one transform implementation (docs/architecture.rst).
"""

from __future__ import annotations

import numpy as np

from ._balance import apply_transform

__all__ = ["TTA_VIEWS", "tta_views"]

#: The 8 orientations, each as the transforms applied in order: the 4 rotations and the
#: 4 reflections (mirror of each rotation).
TTA_VIEWS: tuple[tuple[str, ...], ...] = (
    ("none",), ("rot90",), ("rot180",), ("rot270",),
    ("flip_h",), ("flip_v",), ("rot90", "flip_h"), ("rot90", "flip_v"),
)


def tta_views(x: np.ndarray) -> list[np.ndarray]:
    """The 8 orientations of a batch ``x`` of shape (n, S, S, C), each a new (n, S, S, C).

    Examples
    --------
    >>> views = tta_views(np.arange(9.0).reshape(1, 3, 3, 1))
    >>> len(views), len({tuple(v.ravel().tolist()) for v in views})  # 8 distinct views
    (8, 8)
    """
    out = []
    for names in TTA_VIEWS:
        view = []
        for img in x:
            for name in names:
                img = apply_transform(img, name)
            view.append(img)
        out.append(np.ascontiguousarray(np.stack(view)) if view else x.copy())
    return out
