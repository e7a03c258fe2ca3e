"""Request limits of ``bmcd serve`` and a header sniffer that reads image sizes cheaply.

The pixel limit is checked on the file header before decoding (PNG, BMP, JPEG), so a
small file that claims a huge canvas is refused without allocating it; other formats are
decoded first and checked after. See ``docs/serving.rst`` ("Limits").
"""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass

from ..errors import ConfigError

__all__ = ["ServeLimits", "image_dimensions"]


@dataclass(frozen=True)
class ServeLimits:
    """Limits on one request to ``POST /v1/predict``.

    Parameters
    ----------
    max_request_bytes : int
        Whole request body; larger requests get 413 before they are parsed.
    max_files : int
        Files in one request; more get 413.
    max_image_bytes : int
        One file; a larger file gets a per-image ``too_large`` error.
    max_pixels : int
        Width x height of one image; a larger image gets a per-image ``too_many_pixels``
        error (C-NMC cells are 450 x 450 = 0.2 megapixels).
    """

    max_request_bytes: int = 64 * 1024 * 1024
    max_files: int = 256
    max_image_bytes: int = 16 * 1024 * 1024
    max_pixels: int = 16_000_000

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"ServeLimits.{name} must be an int >= 1; received {value!r}.")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


# JPEG start-of-frame markers (not DHT C4, JPG C8, DAC CC)
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def image_dimensions(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from a PNG, BMP or JPEG header, or None when not recognised.

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
    except struct.error:
        return None
    return None
