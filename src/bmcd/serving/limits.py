"""Request limits of ``bmcd serve`` and a header sniffer that reads image sizes cheaply.

The pixel limit is checked on the file header before decoding (PNG, BMP, JPEG, TIFF; the
header reader is :func:`bmcd.imageio.image_dimensions`), so a small file that claims a huge
canvas is refused without allocating it; other formats are decoded first and checked after. See ``docs/serving.rst`` ("Limits").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import ConfigError
from ..imageio import image_dimensions  # the one header reader (docs/architecture.rst)

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
