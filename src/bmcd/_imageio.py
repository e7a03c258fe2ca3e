"""The preprocessing hot path's image input: a direct reader for uncompressed BMPs and
per-thread scratch arrays.

Used only by :mod:`bmcd.preprocessing` (docs/architecture.rst: the one preprocessing
path); nothing here is public. Why it exists is measured in docs/benchmarks.rst
("Preprocessing").
"""

from __future__ import annotations

import os
import struct
import threading

import cv2
import numpy as np

__all__: list[str] = []

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


def _read_bmp(path: str | os.PathLike) -> np.ndarray | None:
    """Read an uncompressed 24-bit BMP into a scratch BGR array, or None for any other file.

    The same pixels as ``cv2.imdecode`` (tests/unit/test_bmp_reader.py checks it on the
    real C-NMC files and on synthetic BMPs: odd widths with row padding, top-down rows),
    without its allocations: the rows are read straight into a reused buffer and flipped
    (BMP rows are stored bottom-up) into another. Everything else -- other bit depths,
    palettes, compression, bit fields, OS/2 headers, truncated files -- returns None and
    goes through ``cv2.imdecode``.
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
