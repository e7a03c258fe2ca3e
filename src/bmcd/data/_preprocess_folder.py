"""Write preprocessed copies of a folder or manifest: the library side of ``bmcd preprocess``.

Each image goes through :func:`bmcd.preprocessing.preprocess`, the one image path, and is
written as an 8-bit RGB PNG, so a cached, preprocessed copy of a dataset is exactly what a
model would see.
"""

from __future__ import annotations

import csv
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import ConfigError, DatasetError, ImageReadError
from ..preprocessing import IMAGE_EXTENSIONS, PreprocessConfig, default_workers, preprocess
from ._discovery import load_dataset
from ._files import iter_image_files

__all__ = ["FolderResult", "preprocess_folder"]


@dataclass(frozen=True)
class FolderResult:
    """What :func:`preprocess_folder` did: ``n`` images found, ``failures`` as ``(source,
    reason)`` pairs in input order, the ``out`` folder and the ``manifest`` CSV written for a
    manifest input (else None)."""

    n: int
    failures: list[tuple[str, str]]
    out: Path
    manifest: Path | None = None

    @property
    def written(self) -> int:
        """Number of PNG files written."""
        return self.n - len(self.failures)


def preprocess_folder(
    src: str | os.PathLike,
    out: str | os.PathLike,
    config: PreprocessConfig | None = None,
    *,
    workers: int | None = None,
    progress: bool = True,
) -> FolderResult:
    """Write preprocessed PNG copies of every image under ``src`` into ``out``.

    ``src`` is a folder, walked recursively with :func:`~bmcd.data.iter_image_files`
    (hidden entries skipped), or a CSV manifest read with :func:`~bmcd.data.load_dataset`.
    Each image goes through :func:`preprocess` and is written as ``out/<relative
    path>.png`` (8-bit RGB). Unreadable images are skipped and listed in the result, so
    one bad file does not stop a large folder. A manifest input also gets
    ``out/manifest.csv`` (path, label, subject) for the images written; a ``README.txt``
    marking the input as SYNTHETIC is copied along. This is what ``bmcd preprocess`` runs
    (docs/cli.rst).

    Parameters
    ----------
    src, out : path-like
        Input folder or CSV manifest; output folder (created as needed, must differ from
        ``src``).
    config : PreprocessConfig, optional
        Preprocessing settings (default: ``PreprocessConfig()``).
    workers : int, optional
        Threads (default: :func:`default_workers`).
    progress : bool
        Show a progress bar when writing to a terminal.

    Raises
    ------
    DatasetError
        ``src`` does not exist, holds no images, or equals ``out``.
    ConfigError
        ``workers`` is below 1.
    """
    from tqdm.auto import tqdm  # only when a folder is written

    config = config or PreprocessConfig()
    src, out = Path(src), Path(out)
    manifest = None
    if src.is_file():
        manifest = load_dataset(src)
        sources, rels = manifest.absolute_paths(), manifest.relative_paths()
    elif src.is_dir():
        sources = sorted(iter_image_files(src))
        rels = [os.path.relpath(p, src).replace(os.sep, "/") for p in sources]
    else:
        raise DatasetError(f"Input not found: '{src}'; expected an image folder or a CSV manifest.")
    if not sources:
        raise DatasetError(
            f"No images found under '{src}' (looked for {', '.join(IMAGE_EXTENSIONS)})."
        )
    if out.resolve() == src.resolve():
        raise DatasetError("OUT must differ from IN; preprocess never overwrites its input.")
    targets = [out / (os.path.splitext(r)[0] + ".png") for r in rels]
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ConfigError(f"workers must be >= 1; received {workers}. Pass None for the CPU count.")

    def work(i: int) -> str | None:
        try:
            arr = preprocess(sources[i], config)
            bgr = cv2.cvtColor(np.clip(np.rint(arr), 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
            ok, buf = cv2.imencode(".png", bgr)
            if not ok:
                return "PNG encoding failed"
            targets[i].parent.mkdir(parents=True, exist_ok=True)
            targets[i].write_bytes(buf.tobytes())
        except (ImageReadError, OSError) as exc:
            return str(exc)
        return None

    failures: list[tuple[str, str]] = []
    with ThreadPoolExecutor(max_workers=workers) as pool, tqdm(
        total=len(sources), desc="preprocess", unit="img", disable=None if progress else True
    ) as bar:
        for i, err in enumerate(pool.map(work, range(len(sources)))):
            if err is not None:
                failures.append((sources[i], err))
            bar.update()
    readme = (src.parent if src.is_file() else src) / "README.txt"
    if readme.is_file() and "SYNTHETIC" in readme.read_text(errors="ignore"):
        out.mkdir(parents=True, exist_ok=True)  # keep the label on synthetic data
        (out / "README.txt").write_text(readme.read_text(errors="ignore"), encoding="utf-8")
    manifest_path = None
    if manifest is not None:
        failed = {s for s, _ in failures}
        manifest_path = out / "manifest.csv"
        with open(manifest_path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "label", "subject"])
            for s, t, label, subject in zip(sources, targets, manifest.labels.tolist(),
                                            manifest.subjects, strict=True):
                if s not in failed:
                    writer.writerow([t.relative_to(out).as_posix(), manifest.classes[label],
                                     subject or ""])
    return FolderResult(n=len(sources), failures=failures, out=out, manifest=manifest_path)
