"""Class activation maps as pictures: heat maps, overlays on the cell, PNG, mask mass.

The maps themselves come from the backends (``Backend.explain_batch``: Keras, or the
``cam`` output of the ONNX file); this module only turns a map ``(h, w)`` of logit
contributions into something a person looks at, with numpy and OpenCV (no TensorFlow).
See docs/explain.rst for what the map is and its limits.

Examples
--------
>>> import numpy as np
>>> from bmcd.explain import heat, overlay
>>> cam = np.array([[0.0, 1.0], [2.0, 3.0]], dtype=np.float32)
>>> heat(cam).round(3).tolist()
[[0.0, 0.333], [0.667, 1.0]]
>>> overlay(np.zeros((8, 8, 3), np.uint8), cam).shape
(8, 8, 3)
"""

from __future__ import annotations

import base64

import cv2
import numpy as np

from .errors import ConfigError

__all__ = [
    "DEFAULT_ALPHA",
    "heat",
    "upsample",
    "overlay",
    "to_png",
    "png_base64",
    "mass_inside",
    "cell_mask",
    "explain_preprocessed",
    "build_gallery",
]

#: Weight of the colour map in an overlay (the cell keeps 1 - alpha).
DEFAULT_ALPHA = 0.45


def _check_map(cam: np.ndarray) -> np.ndarray:
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2 or 0 in cam.shape:
        raise ConfigError(
            f"A class activation map must be a 2-D (h, w) array; received shape {cam.shape}. "
            f"Pass one map of the (n, h, w) batch from Classifier.explain."
        )
    return cam


def heat(cam: np.ndarray, sign: float = 1.0) -> np.ndarray:
    """Min-max normalise ``sign * cam`` to [0, 1] (a constant map gives zeros).

    Parameters
    ----------
    cam : ndarray (h, w)
        Logit contributions (positive: towards "all").
    sign : float
        +1 shows the evidence for "all", -1 the evidence for "hem" (the overlays use the
        predicted class).
    """
    m = _check_map(cam) * (1.0 if sign >= 0 else -1.0)
    lo, hi = float(m.min()), float(m.max())
    if not np.isfinite(lo) or not np.isfinite(hi) or hi - lo <= 1e-12 * max(1.0, abs(hi)):
        return np.zeros_like(m)
    return (m - lo) / (hi - lo)


def upsample(cam: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of a map to ``size`` (int S or (height, width)), float32.

    Cell centres of the map land on the centres of the image regions they summarise
    (OpenCV's half-pixel convention), so a flipped map upsamples to the flipped image.
    """
    cam = _check_map(cam)
    h, w = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
    return cv2.resize(cam, (w, h), interpolation=cv2.INTER_LINEAR)


def overlay(
    image: np.ndarray, cam: np.ndarray, sign: float = 1.0, alpha: float = DEFAULT_ALPHA
) -> np.ndarray:
    """The map upsampled onto the preprocessed cell as a JET colour map, RGB uint8.

    Parameters
    ----------
    image : ndarray (S, S, 3)
        The preprocessed cell (float RGB in [0, 255] or uint8), as the network saw it.
    cam : ndarray (h, w)
        Its class activation map.
    sign : float
        +1: red where the evidence for "all" is strongest; -1: for "hem".
    alpha : float
        Weight of the colour map, in [0, 1].

    Returns
    -------
    ndarray (S, S, 3) uint8, RGB
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ConfigError(
            f"overlay expects one RGB image of shape (S, S, 3); received shape {img.shape}."
        )
    if not 0.0 <= float(alpha) <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1]; received {alpha!r}.")
    rgb = np.clip(img, 0, 255).astype(np.uint8) if img.dtype != np.uint8 else img
    h = upsample(heat(cam, sign), rgb.shape[:2])
    colour = cv2.applyColorMap(np.clip(h * 255.0 + 0.5, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    colour = cv2.cvtColor(colour, cv2.COLOR_BGR2RGB)
    out = (1.0 - alpha) * rgb.astype(np.float32) + alpha * colour.astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def to_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an RGB uint8 image (e.g. an :func:`overlay`)."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ConfigError(
            f"to_png expects an RGB uint8 image (H, W, 3); received {rgb.dtype} {rgb.shape}."
        )
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - OpenCV built without PNG
        raise ConfigError("OpenCV could not encode a PNG; install opencv with PNG support.")
    return buf.tobytes()


def png_base64(rgb: np.ndarray) -> str:
    """:func:`to_png` as ASCII base64 (for JSON and ``data:`` URLs)."""
    return base64.b64encode(to_png(rgb)).decode("ascii")


def cell_mask(image: np.ndarray, threshold: int = 10) -> np.ndarray:
    """The cell's pixels in a preprocessed image: ``gray > threshold``, the foreground rule
    of :func:`bmcd.preprocessing.find_cell_bbox` (pass the model's
    ``PreprocessConfig.threshold``); boolean (S, S)."""
    img = np.clip(np.asarray(image), 0, 255).astype(np.uint8)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ConfigError(f"cell_mask expects an RGB image (S, S, 3); received {img.shape}.")
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) > int(threshold)


def mass_inside(cam: np.ndarray, mask: np.ndarray, sign: float = 1.0) -> float:
    """Share of the map's :func:`heat` mass that lies inside ``mask`` (after upsampling).

    A map spread uniformly scores the mask's area fraction; a map on the cell scores more.
    Returns NaN for a constant map (no mass).
    """
    mask = np.asarray(mask).astype(bool)
    if mask.ndim != 2:
        raise ConfigError(f"mask must be a 2-D boolean image; received shape {mask.shape}.")
    h = upsample(heat(cam, sign), mask.shape)
    total = float(h.sum())
    return float(h[mask].sum() / total) if total > 0 else float("nan")


def explain_preprocessed(
    backend, x: np.ndarray, threshold: float, overlay_images: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Maps (and overlays) of a preprocessed batch through a backend's ``explain_batch``.

    Each overlay shows the evidence for the label the model gives (``p_all >= threshold``
    -> "all", else "hem"), the rule of :mod:`bmcd.labels`.

    Returns
    -------
    (p_all (n,), cam (n, h, w) float32, overlays (n, S, S, 3) uint8 RGB or None)
    """
    p, cam = backend.explain_batch(x)
    if not overlay_images:
        return p, cam, None
    signs = np.where(np.asarray(p) >= float(threshold), 1.0, -1.0)
    over = np.stack([overlay(x[i], cam[i], signs[i]) for i in range(len(x))]) if len(x) else (
        np.zeros((0, *np.asarray(x).shape[1:3], 3), np.uint8)
    )
    return p, cam, over


def build_gallery(
    backend,
    paths: list[str],
    y_true: np.ndarray,
    p_all: np.ndarray,
    threshold: float,
    config,
    *,
    subjects: list[str] | None = None,
    n_errors: int = 8,
    n_correct: int = 4,
    seed: int = 0,
) -> list[dict]:
    """Cells for the report's gallery: the most confident errors, and a seeded sample of
    correct cells per class, each with p(all) and its overlay as PNG bytes.

    Returns ``[]`` when the backend gives no maps (``CamUnavailableError``) or without
    paths. Each entry: ``kind`` ("error" / "correct"), ``path``, ``subject``, ``true``,
    ``predicted``, ``p_all``, ``png`` (bytes).
    """
    from .artifact import CLASSES
    from .errors import CamUnavailableError
    from .preprocessing import preprocess_batch

    if not paths or len(paths) != len(p_all):
        return []
    y = np.asarray(y_true).astype(np.int64)
    p = np.asarray(p_all, dtype=np.float64)
    pred = (p >= float(threshold)).astype(np.int64)
    wrong = np.flatnonzero(pred != y)
    picks = [("error", int(i)) for i in wrong[np.argsort(-np.abs(p[wrong] - threshold),
                                                         kind="mergesort")][:n_errors]]
    rng = np.random.default_rng(seed)
    for c in (0, 1):
        right = np.flatnonzero((pred == y) & (y == c))
        chosen = rng.choice(right, size=min(n_correct, len(right)), replace=False) if len(right) else []
        picks += [("correct", int(i)) for i in sorted(chosen)]
    if not picks:
        return []
    x = preprocess_batch([paths[i] for _, i in picks], config)
    try:
        p_x, _, overs = explain_preprocessed(backend, x, threshold, True)
    except CamUnavailableError:
        return []
    return [
        {
            "kind": kind,
            "path": str(paths[i]),
            "subject": subjects[i] if subjects else "",
            "true": CLASSES[y[i]],
            "predicted": CLASSES[pred[i]],
            "p_all": float(p_x[k]),
            "png": to_png(overs[k]),
        }
        for k, (kind, i) in enumerate(picks)
    ]
