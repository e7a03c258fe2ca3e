"""Benchmark inputs: source images, their 8 rotations / reflections, batches and files.

Part of :mod:`bmcd.bench` (see docs/benchmarks.rst).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..data import apply_transform, iter_image_files
from ..errors import BenchError, ConfigError
from ..preprocessing import IMAGE_EXTENSIONS, read_image

#: The quarter turns of :func:`dihedral`, as :func:`bmcd.data.apply_transform` names them.
_ROTATIONS = ("none", "rot90", "rot180", "rot270")


def find_image_files(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder`` (recursive, hidden entries skipped, sorted by path).

    The folder is walked by :func:`bmcd.data.iter_image_files`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BenchError(f"Image folder '{folder}' does not exist or is not a folder.")
    files = sorted(Path(p) for p in iter_image_files(folder))
    if not files:
        raise BenchError(f"No image files ({', '.join(IMAGE_EXTENSIONS)}) found under '{folder}'.")
    return files


def source_images(
    folder: str | os.PathLike | None, work_dir: str | os.PathLike, n_synthetic: int = 32
) -> tuple[list[Path], str]:
    """Image files to benchmark on: those in ``folder``, else synthetic cells.

    Returns ``(files, description)``. Synthetic cells (450 px, C-NMC-like) are written
    once into ``work_dir/synthetic-cells``.
    """
    if folder is not None:
        files = find_image_files(folder)
        return files, f"{len(files)} images from {folder}"
    out = Path(work_dir) / "synthetic-cells"
    if out.is_dir() and next(iter_image_files(out), None) is not None:
        files = find_image_files(out)
    else:
        from ..synthetic import make_cells

        files = sorted(
            make_cells(out, n_per_class=max(1, n_synthetic // 2), n_subjects=4, progress=False)
        )
    return files, f"{len(files)} synthetic 450 px cells (bmcd.synthetic)"


def dihedral(image: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 rotations / reflections of a square-or-not image (k in 0..7).

    ``k % 4`` quarter turns counter-clockwise, then a left-right mirror when ``k % 8 >= 4``,
    both by :func:`bmcd.data.apply_transform`.
    """
    out = apply_transform(image, _ROTATIONS[k % 4])
    if k % 8 >= 4:
        out = apply_transform(out, "flip_h")
    return np.ascontiguousarray(out)


def make_input_batches(
    images: np.ndarray, batch_size: int, n_batches: int, seed: int = 0
) -> list[np.ndarray]:
    """``n_batches`` distinct preprocessed batches built from ``images`` (m, S, S, 3).

    Each image of a batch is one of the 8 rotations / reflections of a source image, so
    ``8 m`` distinct inputs exist; they are dealt out without repetition until used up.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or len(images) == 0:
        raise ConfigError(
            f"images must be a non-empty (m, S, S, 3) array, received {images.shape}."
        )
    rng = np.random.default_rng(seed)
    pairs = [(i, k) for i in range(len(images)) for k in range(8)]
    order = rng.permutation(len(pairs))
    batches = []
    pos = 0
    for _ in range(int(n_batches)):
        batch = np.empty((batch_size,) + images.shape[1:], np.float32)
        for j in range(batch_size):
            i, k = pairs[order[pos % len(pairs)]]
            pos += 1
            batch[j] = dihedral(images[i], k)
        batches.append(batch)
    return batches


def write_bench_files(
    sources: Sequence[str | os.PathLike], out_dir: str | os.PathLike, n: int
) -> list[Path]:
    """Put ``n`` image files in ``out_dir`` for end-to-end scoring, reusing a complete set.

    The 8 rotations / reflections of each source image are written as distinct BMP files
    (``8 x len(sources)`` at most); the remaining files are symbolic links to them, so
    20,000 files cost no more disk than a few hundred. Every file is decoded for real
    when scored; the operating system's page cache serves repeated reads either way.
    """
    import cv2

    out = Path(out_dir)
    done = out / ".complete"
    if done.is_file() and done.read_text().strip() == str(n):
        return sorted(out.glob("*.bmp"))
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.bmp"):
        old.unlink()
    n_distinct = min(int(n), 8 * len(sources))
    distinct: list[Path] = []
    for j in range(n_distinct):
        src = sources[j % len(sources)]
        k = j // len(sources)
        image = dihedral(read_image(src), k)
        ok, buf = cv2.imencode(".bmp", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        if not ok:  # pragma: no cover
            raise BenchError(f"Could not encode a BMP from '{src}'.")
        path = out / f"img_{j:06d}.bmp"
        path.write_bytes(buf.tobytes())
        distinct.append(path)
    for j in range(n_distinct, int(n)):
        os.symlink(distinct[j % n_distinct].name, out / f"img_{j:06d}.bmp")
    done.write_text(str(n))
    return sorted(out.glob("*.bmp"))

