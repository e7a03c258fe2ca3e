"""The one preprocessing path: image file -> network input.

Training, evaluation, prediction, batch scoring and export validation all call
:func:`preprocess` (or :func:`preprocess_batch`). Nothing else in bmcd resizes or
normalises an image. The steps are small pure functions::

    read_image -> crop_to_cell -> pad_to_square -> resize -> float32 RGB [0, 255]

Scaling to the network's own range (ResNet50 caffe-style, MobileNetV2 [-1, 1]) is *not*
done here: it is a layer inside the model graph, so the Keras model and the exported ONNX
file take exactly the same input.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from typing import Any

import cv2
import numpy as np

from .errors import ConfigError, ImageReadError
from .imageio import _scratch, decode_image, describe_source, read_image, to_rgb_uint8

__all__ = [
    "PreprocessConfig",
    "PreprocessInfo",
    "ImageInput",
    "read_image",
    "to_rgb_uint8",
    "find_cell_bbox",
    "crop_to_cell",
    "pad_to_square",
    "resize",
    "resize_to_square",
    "preprocess",
    "preprocess_with_info",
    "preprocess_batch",
    "preprocess_batch_with_info",
    "default_workers",
    "MIN_CELL_SIDE",
    "SCRATCH_CROP_SIZE",
    "cell_window",
    "IMAGE_EXTENSIONS",
]

#: What :func:`preprocess` accepts: a path, encoded bytes, or an (H, W[, C]) array.
ImageInput = str | os.PathLike | bytes | bytearray | memoryview | np.ndarray

_INTERPOLATIONS = {
    "area": cv2.INTER_AREA,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "nearest": cv2.INTER_NEAREST,
}

# OpenCV decodes these natively; listed so callers (dataset discovery, scoring) agree on
# what counts as an image file.
IMAGE_EXTENSIONS = (".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff")


@dataclass(frozen=True)
class PreprocessConfig:
    """Parameters of the preprocessing path; travels with every model.

    Parameters
    ----------
    image_size : int
        Side S of the square network input, in pixels (default 224).
    threshold : int
        A pixel belongs to the foreground when its gray value is strictly greater than
        this. C-NMC backgrounds are exactly 0 in the original BMPs, and the research
        report used 1. The default, 10, was chosen on the real sample images: there the
        bounding box found at 10 is the same as at 1 for every image (the cell's darkest
        stained pixels are far above 10), while JPEG recompression leaves ringing of up to
        ~8 gray levels in the "black" background, which at 1 would stretch the crop to the
        whole frame.
    interpolation : str
        ``"area"`` (default, best when shrinking), ``"linear"``, ``"cubic"`` or
        ``"nearest"``. Upscaling always uses linear interpolation when ``"area"`` is set.
    margin : int
        Extra pixels of background kept around the cell's bounding box (default 0).
    crop_size : int, optional
        None (default): crop to the cell's bounding box, so every cell fills the network
        input whatever its size. An int: crop a square window of ``crop_size`` source
        pixels centred on the cell (at most the image's longer side; grown to the cell's
        box when the cell is larger; black beyond the image's edge), so the cell keeps its
        size relative to the others. On
        C-NMC (450 px images at one magnification) cell size separates "all" from "hem"
        (ROC-AUC 0.70 from the area alone on cnmc-dev), and the tight crop throws it away;
        see docs/accuracy.rst. Models trained from scratch use
        :data:`SCRATCH_CROP_SIZE` by default.

    Examples
    --------
    >>> from bmcd import PreprocessConfig
    >>> cfg = PreprocessConfig(image_size=128)
    >>> PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    True
    """

    image_size: int = 224
    threshold: int = 10
    interpolation: str = "area"
    margin: int = 0
    crop_size: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.image_size, (int, np.integer)) or isinstance(self.image_size, bool):
            raise ConfigError(
                f"PreprocessConfig.image_size must be an int, received {self.image_size!r}."
            )
        if not 8 <= int(self.image_size) <= 4096:
            raise ConfigError(
                f"PreprocessConfig.image_size must be between 8 and 4096 pixels, "
                f"received {self.image_size}."
            )
        if not isinstance(self.threshold, (int, np.integer)) or not 0 <= int(self.threshold) <= 254:
            raise ConfigError(
                f"PreprocessConfig.threshold must be an int gray level in [0, 254], "
                f"received {self.threshold!r}."
            )
        if self.interpolation not in _INTERPOLATIONS:
            raise ConfigError(
                f"PreprocessConfig.interpolation must be one of {sorted(_INTERPOLATIONS)}, "
                f"received {self.interpolation!r}."
            )
        if not isinstance(self.margin, (int, np.integer)) or int(self.margin) < 0:
            raise ConfigError(
                f"PreprocessConfig.margin must be a non-negative int, received {self.margin!r}."
            )
        c = self.crop_size
        if c is not None and (not isinstance(c, (int, np.integer)) or isinstance(c, bool)
                              or not 8 <= int(c) <= 65536):
            raise ConfigError(
                f"PreprocessConfig.crop_size must be None or an int between 8 and 65536 "
                f"source pixels, received {c!r}."
            )
        if c is not None:
            object.__setattr__(self, "crop_size", int(c))
        # normalise numpy ints so to_dict() is JSON-serialisable
        object.__setattr__(self, "image_size", int(self.image_size))
        object.__setattr__(self, "threshold", int(self.threshold))
        object.__setattr__(self, "margin", int(self.margin))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict; :meth:`from_dict` inverts it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        """Build a config from :meth:`to_dict` output. Unknown keys raise ``ConfigError``."""
        if not isinstance(data, dict):
            raise ConfigError(
                f"PreprocessConfig.from_dict expects a dict, received {type(data).__name__}."
            )
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(
                f"Unknown PreprocessConfig keys {sorted(unknown)}; expected a subset of "
                f"{sorted(known)}. Was the model saved by a newer bmcd?"
            )
        return cls(**data)


#: ``PreprocessConfig.crop_size`` of models trained from scratch (``weights=None``): a
#: window of 320 source pixels holds 99% of the cells of cnmc-dev (bounding boxes 88-440
#: px, median 211, 99th percentile 325) at their own scale. Chosen on subject-grouped
#: cross-validation (docs/accuracy.rst).
SCRATCH_CROP_SIZE = 320

#: A foreground region whose bounding box is shorter than this on its longer side is not
#: taken for a cell (:attr:`PreprocessInfo.no_cell`); C-NMC cells span 100-400 pixels.
MIN_CELL_SIDE = 8


@dataclass(frozen=True)
class PreprocessInfo:
    """What :func:`preprocess_with_info` noticed about one image.

    Attributes
    ----------
    found_cell : bool
        False when no foreground pixel passed the threshold; the whole image was kept.
    bbox : tuple of int
        The crop ``(x, y, w, h)`` in the original image (with ``crop_size``, the square
        window, which may reach beyond the image).
    original_shape : tuple of int
        ``(H, W)`` of the decoded image.
    cell_side : int, optional
        The longer side of the cell's bounding box (default: that of ``bbox``).
    """

    found_cell: bool
    bbox: tuple[int, int, int, int]
    original_shape: tuple[int, int]
    cell_side: int | None = None

    @property
    def no_cell(self) -> bool:
        """True when no cell was seen: no foreground at all, or a foreground region smaller
        than :data:`MIN_CELL_SIDE` pixels on its longer side (a 1 x 1 image, a speck). The
        image is still classified, but its label means little (docs/models.rst)."""
        side = max(self.bbox[2], self.bbox[3]) if self.cell_side is None else self.cell_side
        return not self.found_cell or side < MIN_CELL_SIDE


def find_cell_bbox(image: np.ndarray, threshold: int = 10) -> tuple[int, int, int, int] | None:
    """Bounding box ``(x, y, w, h)`` of the largest external foreground contour.

    Foreground is ``gray > threshold``; ``image`` is RGB (H, W, 3) or already gray
    (H, W). Returns None when there is no foreground. The largest contour is chosen by
    area (ties by bounding-box area), not whichever contour OpenCV happens to list
    first, so specks of debris do not win.
    """
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    mask = _scratch("mask", gray.shape)
    cv2.threshold(gray, threshold, 1, cv2.THRESH_BINARY, dst=mask)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None

    def size(c: np.ndarray) -> tuple[float, int]:
        _, _, w, h = cv2.boundingRect(c)
        return (cv2.contourArea(c), w * h)

    best = max(contours, key=size)
    x, y, w, h = cv2.boundingRect(best)
    return int(x), int(y), int(w), int(h)


def _crop_box(
    shape: tuple[int, ...], bbox: tuple[int, int, int, int], margin: int
) -> tuple[int, int, int, int]:
    x, y, w, h = bbox
    H, W = shape[:2]
    x0, y0 = max(0, x - margin), max(0, y - margin)
    x1, y1 = min(W, x + w + margin), min(H, y + h + margin)
    return x0, y0, x1 - x0, y1 - y0


def _interpolation_flag(interpolation: str, enlarging: bool) -> int:
    """OpenCV's flag for ``interpolation``; area falls back to linear when enlarging."""
    flag = _INTERPOLATIONS[interpolation]
    return cv2.INTER_LINEAR if flag == cv2.INTER_AREA and enlarging else flag


def cell_window(
    shape: tuple[int, ...], bbox: tuple[int, int, int, int], crop_size: int, margin: int = 0
) -> tuple[int, int, int]:
    """The square window ``(x0, y0, side)`` of :attr:`PreprocessConfig.crop_size`.

    Centred on the cell's bounding box; ``side`` is ``crop_size`` (at most the image's
    longer side, so small images are not shrunk into a corner of the input), or the box's
    longer side (with ``margin``) when the cell is larger. The window may reach beyond the
    image (those pixels count as black background).

    >>> cell_window((450, 450), (100, 150, 200, 100), 320)
    (40, 40, 320)
    """
    x, y, w, h = bbox
    side = max(min(int(crop_size), max(shape[:2])), w + 2 * margin, h + 2 * margin)
    return x + w // 2 - side // 2, y + h // 2 - side // 2, side


def _window_to_square(
    image: np.ndarray, x0: int, y0: int, side: int, size: int, interpolation: str,
    out: np.ndarray,
) -> np.ndarray:
    """Resize the square window ``(x0, y0, side)`` of ``image`` (black outside it) to
    ``size x size`` in ``out``, without building the padded window."""
    H, W = image.shape[:2]
    ix0, iy0 = max(0, x0), max(0, y0)
    ix1, iy1 = min(W, x0 + side), min(H, y0 + side)
    out[...] = 0
    if ix1 <= ix0 or iy1 <= iy0:
        return out
    scale = size / side
    dx0, dy0 = round((ix0 - x0) * scale), round((iy0 - y0) * scale)
    dx1 = max(dx0 + 1, min(size, round((ix1 - x0) * scale)))
    dy1 = max(dy0 + 1, min(size, round((iy1 - y0) * scale)))
    flag = _interpolation_flag(interpolation, enlarging=side < size)
    part = image[iy0:iy1, ix0:ix1]
    if (dy1 - dy0, dx1 - dx0) == part.shape[:2]:
        out[dy0:dy1, dx0:dx1] = part
    else:
        cv2.resize(part, (dx1 - dx0, dy1 - dy0), dst=out[dy0:dy1, dx0:dx1], interpolation=flag)
    return out


def crop_to_cell(
    image: np.ndarray, threshold: int = 10, margin: int = 0
) -> tuple[np.ndarray, bool]:
    """Crop to the bounding box of the largest foreground region.

    Returns
    -------
    cropped : ndarray
        A view into ``image``; the whole image when no foreground was found.
    found : bool
        Whether a foreground region was found. An all-black image is kept whole and
        flagged with ``found=False`` instead of raising.
    """
    bbox = find_cell_bbox(image, threshold)
    if bbox is None:
        return image, False
    x, y, w, h = _crop_box(image.shape, bbox, margin)
    return image[y : y + h, x : x + w], True


def pad_to_square(image: np.ndarray) -> np.ndarray:
    """Pad with black, centred, to a square of side ``max(H, W)``.

    When the difference is odd, the extra pixel goes to the bottom / right.
    """
    h, w = image.shape[:2]
    if h == w:
        return image
    side = max(h, w)
    top = (side - h) // 2
    left = (side - w) // 2
    return cv2.copyMakeBorder(
        image, top, side - h - top, left, side - w - left, cv2.BORDER_CONSTANT, value=0
    )


def resize(image: np.ndarray, size: int, interpolation: str = "area") -> np.ndarray:
    """Resize a square image to ``(size, size)``.

    ``"area"`` is used for shrinking; for enlarging it falls back to linear, which is
    what area interpolation approximates there anyway.
    """
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    flag = _interpolation_flag(interpolation, enlarging=h < size or w < size)
    return cv2.resize(image, (size, size), interpolation=flag)


def resize_to_square(
    image: np.ndarray, size: int, interpolation: str = "area", out: np.ndarray | None = None
) -> np.ndarray:
    """:func:`pad_to_square` followed by :func:`resize`, computed the fast way round.

    The image is resized so its longer side is ``size`` (keeping the aspect ratio) and
    then centred on a black ``size x size`` canvas. This equals padding first and resizing
    second up to interpolation at the one-pixel seam between cell crop and padding, and it
    never builds the large padded copy (about 2x faster on 450 px C-NMC crops).

    Parameters
    ----------
    out : ndarray, optional
        A uint8 ``(size, size, C)`` canvas to draw into (it is zeroed first).
    """
    h, w = image.shape[:2]
    side = max(h, w)
    nh = max(1, min(size, round(h * size / side)))
    nw = max(1, min(size, round(w * size / side)))
    canvas = out if out is not None else np.empty((size, size) + image.shape[2:], np.uint8)
    canvas[...] = 0
    top, left = (size - nh) // 2, (size - nw) // 2
    flag = _interpolation_flag(interpolation, enlarging=side < size)
    if (nh, nw) == (h, w):
        canvas[top : top + nh, left : left + nw] = image
    else:
        # straight into the canvas (no temporary image); the same pixels as assigning
        # the result of cv2.resize
        cv2.resize(image, (nw, nh), dst=canvas[top : top + nh, left : left + nw], interpolation=flag)
    return canvas


def _load(item: ImageInput) -> tuple[np.ndarray, bool]:
    if isinstance(item, np.ndarray):
        return to_rgb_uint8(item, bgr=False), False
    return decode_image(item, scratch=True)


def preprocess_with_info(
    item: ImageInput, config: PreprocessConfig | None = None, out: np.ndarray | None = None
) -> tuple[np.ndarray, PreprocessInfo]:
    """Like :func:`preprocess`, also returning a :class:`PreprocessInfo`.

    Parameters
    ----------
    out : ndarray, optional
        A float32 ``(S, S, 3)`` array to write the result into (e.g. a row of a batch),
        avoiding one allocation per image.
    """
    config = config or PreprocessConfig()
    image, is_bgr = _load(item)
    try:
        return _preprocess_loaded(image, is_bgr, config, out)
    except cv2.error:
        # e.g. an array too large for OpenCV's resize; the message names the input
        raise ImageReadError(
            f"Could not preprocess {describe_source(item)} (shape {image.shape}): OpenCV "
            f"refused it. Check that it is an ordinary image of a sensible size.",
            path=str(item) if isinstance(item, (str, os.PathLike)) else None,
        ) from None


def _preprocess_loaded(
    image: np.ndarray, is_bgr: bool, config: PreprocessConfig, out: np.ndarray | None
) -> tuple[np.ndarray, PreprocessInfo]:
    H, W = image.shape[:2]
    gray = _scratch("gray", (H, W))
    cv2.cvtColor(image, cv2.COLOR_BGR2GRAY if is_bgr else cv2.COLOR_RGB2GRAY, dst=gray)
    bbox = find_cell_bbox(gray, config.threshold)
    S = config.image_size
    if bbox is not None and config.crop_size is not None:
        x, y, side = cell_window(image.shape, bbox, config.crop_size, config.margin)
        w = h = side
        square = _window_to_square(image, x, y, side, S, config.interpolation,
                                   _scratch("square", (S, S, 3)))
    else:
        x, y, w, h = (0, 0, W, H) if bbox is None else _crop_box(image.shape, bbox, config.margin)
        square = resize_to_square(
            image[y : y + h, x : x + w], S, config.interpolation, out=_scratch("square", (S, S, 3))
        )
    if is_bgr:
        cv2.cvtColor(square, cv2.COLOR_BGR2RGB, dst=square)
    if out is None:
        out = np.empty((S, S, 3), dtype=np.float32)
    elif out.shape != (S, S, 3) or out.dtype != np.float32:
        raise ConfigError(f"out must be float32 of shape {(S, S, 3)}, received {out.dtype} {out.shape}.")
    np.copyto(out, square, casting="unsafe")
    info = PreprocessInfo(found_cell=bbox is not None, bbox=(x, y, w, h), original_shape=(H, W),
                          cell_side=None if bbox is None else max(bbox[2], bbox[3]))
    return out, info


def preprocess(item: ImageInput, config: PreprocessConfig | None = None) -> np.ndarray:
    """Turn one image into network input: float32 RGB in [0, 255], shape (S, S, 3).

    Parameters
    ----------
    item : path, bytes or ndarray
        An image file path, its encoded bytes, or a decoded RGB (or gray) array.
        Arrays are taken to be RGB (not OpenCV's BGR).
    config : PreprocessConfig, optional
        Defaults to ``PreprocessConfig()``.

    Raises
    ------
    ImageReadError
        The image cannot be read; the message names the file.

    Examples
    --------
    >>> import numpy as np
    >>> from bmcd.preprocessing import PreprocessConfig, preprocess
    >>> img = np.zeros((40, 60, 3), np.uint8); img[10:20, 5:45] = (200, 30, 30)
    >>> x = preprocess(img, PreprocessConfig(image_size=32))
    >>> x.shape, x.dtype
    ((32, 32, 3), dtype('float32'))
    """
    return preprocess_with_info(item, config)[0]


def default_workers() -> int:
    """Worker threads for preprocessing: the usable CPU count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def preprocess_batch(
    items: Sequence[ImageInput] | Iterable[ImageInput],
    config: PreprocessConfig | None = None,
    workers: int | None = None,
) -> np.ndarray:
    """Preprocess many images into one (n, S, S, 3) float32 array, keeping order.

    Uses a thread pool of ``workers`` threads (default: the CPU count); OpenCV releases
    the GIL while decoding and resizing, so threads scale. ``workers=1`` runs inline.

    Raises
    ------
    ImageReadError
        On the first image that cannot be read (naming it). For per-file error handling
        over large collections use :func:`bmcd.scoring.score`.
    """
    return preprocess_batch_with_info(items, config, workers)[0]


def preprocess_batch_with_info(
    items: Sequence[ImageInput] | Iterable[ImageInput],
    config: PreprocessConfig | None = None,
    workers: int | None = None,
) -> tuple[np.ndarray, list[PreprocessInfo]]:
    """:func:`preprocess_batch`, also returning one :class:`PreprocessInfo` per image.

    Raises
    ------
    ImageReadError
        On the first image that cannot be read (naming it).
    """
    config = config or PreprocessConfig()
    items = list(items)
    S = config.image_size
    out = np.empty((len(items), S, S, 3), dtype=np.float32)
    infos: list[Any] = [None] * len(items)
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, received {workers}.")

    def work(i: int) -> None:
        infos[i] = preprocess_with_info(items[i], config, out=out[i])[1]

    if workers == 1 or len(items) <= 1:
        for i in range(len(items)):
            work(i)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            # list() re-raises the first exception in input order
            list(pool.map(work, range(len(items))))
    return out, infos
