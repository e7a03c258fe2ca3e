"""Reading image files: header sniffing, the pixel limit, and decoding to RGB uint8.

This is the read step of the one preprocessing path (docs/architecture.rst, "The path of
one image"); :mod:`bmcd.preprocessing` re-exports :func:`read_image` and
:func:`to_rgb_uint8`. Before a file is decoded its header is read (PNG ``IHDR``, BMP info
header, JPEG start-of-frame, TIFF first IFD) and an image larger than the pixel limit is
refused with :class:`~bmcd.errors.ImageReadError`, so a 1 MB PNG that claims 20000 x 20000
pixels never allocates gigabytes (docs/models.rst, "Pixel limit").

The limit is, in order of precedence: the ``max_pixels`` keyword of :func:`read_image`, the
value set with :func:`set_max_pixels`, the ``BMCD_MAX_PIXELS`` environment variable, and
:data:`DEFAULT_MAX_PIXELS` (50 megapixels; a C-NMC cell image is 0.2 megapixels).
"""

from __future__ import annotations

import os
import struct
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .errors import ConfigError, ImageReadError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "MAX_PIXELS_ENV",
    "image_dimensions",
    "get_max_pixels",
    "set_max_pixels",
    "check_pixel_limit",
    "read_image",
    "decode_image",
    "to_rgb_uint8",
    "describe_source",
]

#: Default largest image (width x height) bmcd decodes: 50 megapixels, 250x a C-NMC cell.
DEFAULT_MAX_PIXELS = 50_000_000
#: Environment variable that overrides :data:`DEFAULT_MAX_PIXELS` (an integer >= 1).
MAX_PIXELS_ENV = "BMCD_MAX_PIXELS"

_max_pixels_override: int | None = None
_log_lock = threading.Lock()
_log_silenced = False

# JPEG start-of-frame markers (not DHT C4, JPG C8, DAC CC)
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _check_limit_value(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise ConfigError(
            f"{where} must be an int >= 1 (pixels = width x height); received {value!r}."
        )
    return int(value)


def set_max_pixels(value: int | None) -> None:
    """Set the process-wide pixel limit (None goes back to the environment / default).

    Examples
    --------
    >>> from bmcd.imageio import get_max_pixels, set_max_pixels
    >>> set_max_pixels(1_000_000); get_max_pixels()
    1000000
    >>> set_max_pixels(None)
    """
    global _max_pixels_override
    _max_pixels_override = None if value is None else _check_limit_value(value, "max_pixels")


def get_max_pixels() -> int:
    """The pixel limit in force (see the module docstring for the order of precedence).

    Raises
    ------
    ConfigError
        ``BMCD_MAX_PIXELS`` is set but is not an integer >= 1.
    """
    if _max_pixels_override is not None:
        return _max_pixels_override
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = None
    if value is None or value < 1:
        raise ConfigError(
            f"{MAX_PIXELS_ENV} must be an integer >= 1 (pixels); received {text!r}. Unset it "
            f"to use the default {DEFAULT_MAX_PIXELS}."
        )
    return value


def image_dimensions(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from a PNG, BMP, JPEG or TIFF header, or None when not recognised.

    Only the first bytes are looked at; nothing is decoded.

    Examples
    --------
    >>> import cv2, numpy as np
    >>> ok, buf = cv2.imencode(".png", np.zeros((3, 5, 3), np.uint8))
    >>> image_dimensions(buf.tobytes())
    (5, 3)
    """
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            w, h = struct.unpack(">II", data[16:24])
            return int(w), int(h)
        if data[:2] == b"BM" and len(data) >= 26:
            header = struct.unpack("<I", data[14:18])[0]
            if header == 12:  # OS/2 BITMAPCOREHEADER
                w, h = struct.unpack("<HH", data[18:22])
            else:
                w, h = struct.unpack("<ii", data[18:26])
            return abs(int(w)), abs(int(h))
        if data[:2] == b"\xff\xd8":
            return _jpeg_dimensions(data)
        if data[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff_dimensions(data)
    except (struct.error, IndexError):
        return None
    return None


def _jpeg_dimensions(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in _SOF:
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return int(w), int(h)
        i += 2 + length
    return None


def _tiff_dimensions(data: bytes) -> tuple[int, int] | None:
    # first IFD only: tags 256 (ImageWidth) and 257 (ImageLength), SHORT or LONG
    e = "<" if data[:2] == b"II" else ">"
    offset = struct.unpack(e + "I", data[4:8])[0]
    count = struct.unpack(e + "H", data[offset : offset + 2])[0]
    dims: dict[int, int] = {}
    for k in range(count):
        at = offset + 2 + 12 * k
        tag, typ = struct.unpack(e + "HH", data[at : at + 4])
        if tag in (256, 257):
            fmt = e + ("H" if typ == 3 else "I")
            dims[tag] = struct.unpack(fmt, data[at + 8 : at + 8 + struct.calcsize(fmt)])[0]
    if 256 in dims and 257 in dims:
        return int(dims[256]), int(dims[257])
    return None


def check_pixel_limit(
    width: int, height: int, source: str, max_pixels: int | None = None
) -> None:
    """Raise :class:`ImageReadError` when ``width x height`` exceeds the pixel limit."""
    limit = get_max_pixels() if max_pixels is None else _check_limit_value(max_pixels, "max_pixels")
    if width * height > limit:
        raise ImageReadError(
            f"Image {source} is {width} x {height} = {width * height:,} pixels, more than "
            f"the limit of {limit:,} pixels; it was not decoded. Resize it, or raise the limit "
            f"with {MAX_PIXELS_ENV}=N or bmcd.imageio.set_max_pixels(N) if it is genuine.",
            path=None if source.startswith("<") else source,
        )


def describe_source(source: Any) -> str:
    """How an image source is named in messages: its path, or ``<N bytes>``."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    return f"<{type(source).__name__}>"


def _silence_opencv_log() -> None:
    """Keep OpenCV's own decoder log (``[ERROR:0@...] ...``) off stderr.

    bmcd reports every unreadable image itself, naming the file. A user's
    ``OPENCV_LOG_LEVEL`` wins. Set once per process: the level is global in OpenCV, so it
    cannot be changed safely around each decode while other threads decode.
    """
    global _log_silenced
    if _log_silenced:
        return
    with _log_lock:
        if not _log_silenced and "OPENCV_LOG_LEVEL" not in os.environ:
            try:
                cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
            except AttributeError:  # pragma: no cover - very old OpenCV
                pass
        _log_silenced = True


def to_rgb_uint8(image: np.ndarray, *, bgr: bool = False, source: str = "<array>") -> np.ndarray:
    """Convert a decoded or user-supplied array to contiguous RGB uint8 (H, W, 3).

    Grayscale (H, W) or (H, W, 1) is expanded to 3 channels, a 4th (alpha) channel is
    dropped, 16-bit is scaled to 8-bit (``v >> 8``), and float input is taken to be in
    [0, 255] (values in [0, 1] are scaled up). Set ``bgr=True`` for OpenCV-decoded arrays.
    """
    if not isinstance(image, np.ndarray):
        raise ImageReadError(
            f"Expected a numpy array image, received {type(image).__name__} from {source}.",
            path=source,
        )
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise ImageReadError(
            f"Expected an image of shape (H, W), (H, W, 3) or (H, W, 4); received shape "
            f"{image.shape} from {source}.",
            path=source,
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageReadError(f"Image from {source} is empty (shape {image.shape}).", path=source)

    if image.dtype == np.uint8:
        pass
    elif image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype.kind == "f":
        if not np.all(np.isfinite(image)):
            raise ImageReadError(
                f"Image from {source} contains NaN or infinite values.", path=source
            )
        scale = 255.0 if image.size and float(image.max()) <= 1.0 else 1.0
        image = np.clip(np.rint(image * scale), 0, 255).astype(np.uint8)
    elif image.dtype == np.bool_:
        image = image.astype(np.uint8) * 255
    else:
        raise ImageReadError(
            f"Unsupported image dtype {image.dtype} from {source}; expected uint8, uint16 or "
            f"float. Convert the image to 8-bit RGB first.",
            path=source,
        )

    if image.ndim == 2:
        code = cv2.COLOR_GRAY2RGB
    elif image.shape[2] == 4:
        code = cv2.COLOR_BGRA2RGB if bgr else cv2.COLOR_RGBA2RGB
    else:
        code = cv2.COLOR_BGR2RGB if bgr else None
    if code is not None:
        image = cv2.cvtColor(image, code)
    return np.ascontiguousarray(image)


def read_image(
    source: str | os.PathLike | bytes | bytearray | memoryview, *, max_pixels: int | None = None
) -> np.ndarray:
    """Decode an image file (BMP, PNG, JPEG, TIFF) to RGB uint8 of shape (H, W, 3).

    Decoding always goes through ``cv2.imdecode`` on the file's bytes, so one code path
    serves every format and non-ASCII paths work.

    Parameters
    ----------
    source : path or bytes
        The image file, or its encoded bytes.
    max_pixels : int, optional
        Refuse images of more pixels (width x height) than this; default
        :func:`get_max_pixels`. Checked on the header before decoding.

    Raises
    ------
    ImageReadError
        The path is missing, is a directory, is empty, does not decode as an image, or the
        image has more pixels than the limit. The message names the file.
    """
    image, is_bgr = decode_image(source, max_pixels=max_pixels)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if is_bgr else image


def _read_bytes(source: Any, name: str) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if not isinstance(source, (str, os.PathLike)):
        raise ImageReadError(
            f"read_image expects a path or encoded bytes, received {type(source).__name__}.",
            path=None,
        )
    path = Path(source)
    try:
        if path.is_dir():
            raise ImageReadError(
                f"Expected an image file but '{path}' is a directory. Pass the files inside "
                f"it, or a dataset folder to load_dataset().",
                path=str(path),
            )
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise ImageReadError(
            f"Image file not found: '{path}'. Check the path (and the working directory).",
            path=str(path),
        ) from exc
    except OSError as exc:
        what = exc.strerror or str(exc)
        if exc.errno == 40:  # ELOOP
            what = "a symbolic link loop (the link points back to itself)"
        raise ImageReadError(f"Cannot read image file '{path}': {what}.", path=str(path)) from exc


# ---------------------------------------------------------------------------------------
# the hot path's direct BMP reader and scratch arrays (docs/benchmarks.rst, "Preprocessing")
# ---------------------------------------------------------------------------------------

#: Per-thread scratch arrays of the hot path (:func:`_scratch`).
_SCRATCH = threading.local()


def _scratch(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A uint8 array of ``shape`` reused by this thread from call to call.

    OpenCV allocates every output it creates, and on virtual machines the page faults of
    a fresh 600 kB image cost more than decoding it (measured on the project's Xeon VM:
    reading + flipping a 450 px BMP took 0.63 ms into fresh memory, 0.13 ms into reused
    memory; docs/benchmarks.rst). The hot path therefore writes its intermediates into
    these per-thread arrays. Never return one to a caller.
    """
    need = int(np.prod(shape))
    buf = getattr(_SCRATCH, name, None)
    if buf is None or buf.size < need:
        buf = np.empty(need, dtype=np.uint8)
        setattr(_SCRATCH, name, buf)
    return buf[:need].reshape(shape)


#: ``BITMAPINFOHEADER`` and its later versions (V2, V3, V4, V5): the sizes read directly.
_BMP_INFO_SIZES = (40, 52, 56, 108, 124)


def _read_bmp(
    path: str | os.PathLike, max_pixels: int | None = None
) -> np.ndarray | None:
    """Read an uncompressed 24-bit BMP into a scratch BGR array, or None for any other file.

    The same pixels as ``cv2.imdecode`` (tests/unit/test_bmp_reader.py checks it on the
    real C-NMC files and on synthetic BMPs: odd widths with row padding, top-down rows),
    without its allocations: the rows are read straight into a reused buffer and flipped
    (BMP rows are stored bottom-up) into another. Everything else -- other bit depths,
    palettes, compression, bit fields, OS/2 headers, truncated files -- returns None and
    goes through ``cv2.imdecode``. The pixel limit is checked on the header, as for
    every other file.
    """
    with open(path, "rb") as fh:
        head = fh.read(54)
        if len(head) < 54 or head[:2] != b"BM":
            return None
        (offset,) = struct.unpack_from("<I", head, 10)
        info, w, h, planes, bits, compression = struct.unpack_from("<IiiHHI", head, 14)
        if (
            info not in _BMP_INFO_SIZES
            or planes != 1
            or bits != 24
            or compression != 0  # BI_RGB
            or not 0 < w <= 32768
            or not 0 < abs(h) <= 32768
            or offset < 14 + info
        ):
            return None
        H = abs(h)
        check_pixel_limit(w, H, os.fspath(path), max_pixels)
        stride = (3 * w + 3) // 4 * 4  # rows are padded to 4 bytes
        if os.fstat(fh.fileno()).st_size < offset + stride * H:
            return None  # truncated: OpenCV decides what to make of it
        raw = _scratch("bmp_raw", (H, stride))
        fh.seek(offset)
        if fh.readinto(raw) != raw.nbytes:
            return None
    image = _scratch("bmp_image", (H, 3 * w))
    if h > 0:  # bottom-up, the usual case
        cv2.flip(raw[:, : 3 * w], 0, dst=image)
    else:
        np.copyto(image, raw[:, : 3 * w])
    return image.reshape(H, w, 3)


def decode_image(
    source: str | os.PathLike | bytes | bytearray | memoryview,
    *,
    max_pixels: int | None = None,
    scratch: bool = False,
) -> tuple[np.ndarray, bool]:
    """Decode to uint8 (H, W, 3); returns ``(image, is_bgr)``.

    8-bit colour images stay in OpenCV's BGR order (``is_bgr=True``) so the hot path can
    convert only the small resized result; everything else is normalised to RGB here. The
    pixel limit is checked on the header first (and on the decoded size for formats whose
    header is not parsed).

    With ``scratch`` (the preprocessing hot path only), an uncompressed 24-bit BMP file is
    read by :func:`_read_bmp` into a per-thread scratch array that the caller must not keep
    or return.
    """
    name = describe_source(source)
    path = None if name.startswith("<") else name
    if scratch and isinstance(source, (str, os.PathLike)):
        try:
            image = _read_bmp(source, max_pixels)
        except OSError:
            image = None  # the read below raises the error with its message
        if image is not None:
            return image, True
    data = _read_bytes(source, name)
    if len(data) == 0:
        raise ImageReadError(
            f"Image file {name} is empty (0 bytes); re-export or re-copy it.", path=path
        )
    dims = image_dimensions(data)
    if dims is not None:
        check_pixel_limit(dims[0], dims[1], name, max_pixels)
    _silence_opencv_log()
    try:
        decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        # OpenCV's text names its own source lines; the message names the user's file
        raise ImageReadError(
            f"Could not decode {name} as an image: the decoder refused it (the file is "
            f"corrupt, or its header claims an impossible size).",
            path=path,
        ) from None
    if decoded is None:
        raise ImageReadError(
            f"Could not decode {name} as an image (expected BMP, PNG, JPEG or TIFF); the "
            f"file is truncated, corrupt or not an image.",
            path=path,
        )
    if dims is None and decoded.ndim >= 2:
        check_pixel_limit(decoded.shape[1], decoded.shape[0], name, max_pixels)
    if decoded.dtype == np.uint8 and decoded.ndim == 3 and decoded.shape[2] == 3:
        return decoded, True
    return to_rgb_uint8(decoded, bgr=True, source=name), False
