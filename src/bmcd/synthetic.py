"""Synthetic C-NMC-like single-cell images, for the demo and the tests.

These images are **synthetic**: drawn with numpy and OpenCV, not taken from any patient.
They imitate the look of the C-NMC 2019 set (one stained cell on a pure black 450x450
background, C-NMC file names, every subject belonging to one class) closely enough to
exercise the whole pipeline, and they carry a learnable but imperfect class signal:

* the classes differ in **morphology**: leukemic blasts (``all``) have a large nucleus
  with a thin rim of cytoplasm, fine homogeneous chromatin, often a nucleolus and a more
  irregular, sometimes indented outline; normal cells (``hem``) have a smaller, rounder
  nucleus with coarse clumped chromatin and a wider cytoplasm;
* the distributions overlap, so a small CNN learns them but not perfectly;
* **colour does not separate the classes**: each image is scaled so that its mean colour
  (over the cropped, square-padded cell, as :func:`bmcd.preprocessing.preprocess` sees
  it) depends only on its subject's stain and per-image jitter, never on its class;
* each subject has its own stain (hue, saturation, brightness), cell size, focus blur and
  nucleus-to-cytoplasm contrast, so splitting images of one subject across train and test
  flatters a model, as it does on the real data.

Examples
--------
>>> from bmcd.synthetic import make_cells
>>> files = make_cells("synthetic-cells", n_per_class=20, n_subjects=4)   # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from .errors import ConfigError, OutputWriteError

__all__ = [
    "SubjectStyle",
    "random_subject_style",
    "make_cell_image",
    "make_cells",
    "subject_ids",
    "looks_synthetic",
]

_CLASS_NAMES = ("hem", "all")
_N_ANGLES = 720
_TWO_PI = 2.0 * math.pi

# Mean colour (RGB) of a C-NMC cell region, measured on the real sample images.
_BASE_CELL_RGB = (74.0, 34.0, 86.0)
# Expected share of the cropped square covered by the cell (a disc fills pi/4).
_EXPECTED_FILL = 0.74
# Relative colours before the per-image colour normalisation (RGB).
_NUCLEUS_REL = np.array([0.80, 0.38, 1.00], np.float32)
_CYTO_REL = np.array([1.00, 0.62, 1.04], np.float32)
# Direction of the stain balance (RGB): towards blue for the nucleus, pink for cytoplasm.
_BALANCE = np.array([-1.0, 0.0, 1.0], np.float32)

# Class-dependent morphology, (hem, all). Ranges overlap on purpose.
_MORPH = {
    #                     hem              all
    "nc_ratio_mean": (0.70, 0.85),   # nucleus radius / cell radius
    "nc_ratio_sd": (0.055, 0.045),
    "irregularity": ((0.010, 0.040), (0.030, 0.085)),  # nucleus outline harmonics
    "cleft_prob": (0.12, 0.45),
    "cleft_depth": ((0.04, 0.12), (0.08, 0.22)),
    "coarse": ((0.10, 0.26), (0.00, 0.12)),  # clumped chromatin amplitude
    "fine": ((0.02, 0.06), (0.05, 0.11)),  # fine chromatin amplitude
    "nucleoli_mean": (0.25, 1.2),
    "offset": (0.55, 0.25),  # nucleus offset, as a share of the rim width
    "follow": (0.3, 1.0),  # how much the cell outline follows the nucleus
}


@dataclass(frozen=True)
class SubjectStyle:
    """How one synthetic subject's slides look.

    Attributes
    ----------
    hue_shift : float
        Stain hue shift in degrees.
    saturation, brightness : float
        Stain saturation and brightness factors (1 = the C-NMC average).
    stain_balance : float
        Balance of the two stains: > 0 makes nuclei bluer and cytoplasm pinker, < 0 the
        reverse. It changes how a cell looks without moving its mean colour.
    cell_radius : float
        Mean cell radius as a share of the image side.
    blur : float
        Focus blur (Gaussian sigma, pixels at 450 px).
    nc_shift : float
        Subject-level shift of the nucleus-to-cell ratio (biological variation).
    nucleus_darkness : float
        Relative darkness of the nucleus against the cytoplasm (stain contrast).

    Examples
    --------
    >>> import numpy as np
    >>> from bmcd.synthetic import random_subject_style
    >>> style = random_subject_style(np.random.default_rng(0))
    >>> 0.5 < style.brightness < 1.5
    True
    """

    hue_shift: float = 0.0
    saturation: float = 1.0
    brightness: float = 1.0
    stain_balance: float = 0.0
    cell_radius: float = 0.22
    blur: float = 0.6
    nc_shift: float = 0.0
    nucleus_darkness: float = 0.65

    def to_dict(self) -> dict:
        return asdict(self)


# Per-image colour jitter is larger than the spread between subjects' mean colours, so a
# colour-only model cannot even tell subjects apart reliably; subjects differ more in
# stain balance, contrast, focus and cell size, which leave the mean colour alone.
_IMAGE_JITTER = {"hue": 5.0, "saturation": 0.08, "brightness": 0.12}


def random_subject_style(rng: np.random.Generator) -> SubjectStyle:
    """Draw a synthetic subject's style (stain, cell size, focus, contrast)."""
    return SubjectStyle(
        hue_shift=float(rng.normal(0.0, 1.0)),
        saturation=float(np.clip(rng.normal(1.0, 0.015), 0.9, 1.1)),
        brightness=float(np.clip(rng.normal(1.0, 0.035), 0.9, 1.1)),
        stain_balance=float(np.clip(rng.normal(0.0, 1.0), -2.0, 2.0)),
        cell_radius=float(rng.uniform(0.19, 0.25)),
        blur=float(rng.uniform(0.3, 1.2)),
        nc_shift=float(rng.normal(0.0, 0.015)),
        nucleus_darkness=float(rng.uniform(0.58, 0.72)),
    )


def subject_ids(n_subjects: int) -> tuple[list[str], list[str]]:
    """``(all_subjects, hem_subjects)`` for a synthetic set: ``"1", "2", ...`` and ``"H1", ...``.

    The subjects are split evenly between the classes (the leukemic class gets the odd one).
    """
    if int(n_subjects) < 2:
        raise ConfigError(
            f"n_subjects must be >= 2 (at least one subject per class); received {n_subjects}."
        )
    n_all = (int(n_subjects) + 1) // 2
    n_hem = int(n_subjects) - n_all
    return [str(i + 1) for i in range(n_all)], [f"H{i + 1}" for i in range(n_hem)]


# ----------------------------------------------------------------------------------------
# drawing
# ----------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _polar_grid(half: int) -> tuple[np.ndarray, np.ndarray]:
    """Distance and angle-bin grids of side ``2 * half + 1`` centred on the middle pixel."""
    ax = np.arange(-half, half + 1, dtype=np.float32)
    y, x = np.meshgrid(ax, ax, indexing="ij")
    r = np.sqrt(x * x + y * y)
    theta = np.arctan2(y, x)
    bins = ((theta + math.pi) / _TWO_PI * _N_ANGLES).astype(np.int32) % _N_ANGLES
    r.setflags(write=False)
    bins.setflags(write=False)
    return r, bins


def _window(grid: np.ndarray, half: int, size: int, dy: int, dx: int) -> np.ndarray:
    """A ``size`` x ``size`` window of a centred grid, its centre moved by (dy, dx)."""
    c = half - size // 2
    return grid[c - dy : c - dy + size, c - dx : c - dx + size]


def _outline(rng: np.random.Generator, amplitude: float, kmin: int, kmax: int) -> np.ndarray:
    """Relative radius perturbation sampled at the angle bins (random harmonics)."""
    t = np.arange(_N_ANGLES, dtype=np.float32) * (_TWO_PI / _N_ANGLES) - math.pi
    out = np.zeros(_N_ANGLES, np.float32)
    for k in range(kmin, kmax + 1):
        a = amplitude * rng.normal() / math.sqrt(k - kmin + 1)
        out += np.float32(a) * np.cos(k * t + rng.uniform(0, _TWO_PI)).astype(np.float32)
    return out


def _cleft(rng: np.random.Generator, depth: float) -> np.ndarray:
    t = np.arange(_N_ANGLES, dtype=np.float32) * (_TWO_PI / _N_ANGLES) - math.pi
    t0 = rng.uniform(-math.pi, math.pi)
    width = rng.uniform(0.25, 0.5)
    d = np.angle(np.exp(1j * (t - t0))).astype(np.float32)
    return (depth * np.exp(-(d * d) / (2 * width * width))).astype(np.float32)


def _noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    z = rng.random((size, size), dtype=np.float32)  # uniform: blurred, it is Gaussian enough
    z = cv2.GaussianBlur(z, (0, 0), sigmaX=max(sigma, 0.3), borderType=cv2.BORDER_REFLECT)
    mean, sd = cv2.meanStdDev(z)
    return (z - np.float32(mean[0, 0])) * np.float32(1.0 / max(float(sd[0, 0]), 1e-12))


def _target_colour(style: SubjectStyle, rng: np.random.Generator) -> np.ndarray:
    """Mean RGB of the cell region for one image: the subject's stain plus image jitter."""
    base = np.array([[_BASE_CELL_RGB]], np.float32) / 255.0
    hsv = cv2.cvtColor(base, cv2.COLOR_RGB2HSV)[0, 0]
    j = _IMAGE_JITTER
    h = (hsv[0] + style.hue_shift + rng.normal(0.0, j["hue"])) % 360.0
    s = np.clip(hsv[1] * style.saturation * rng.normal(1.0, j["saturation"]), 0.05, 1.0)
    v = np.clip(hsv[2] * style.brightness * rng.normal(1.0, j["brightness"]), 0.05, 1.0)
    rgb = cv2.cvtColor(np.array([[[h, s, v]]], np.float32), cv2.COLOR_HSV2RGB)[0, 0]
    return rgb * 255.0


def make_cell_image(
    rng: np.random.Generator,
    label: int | str,
    subject_style: SubjectStyle | None = None,
    image_size: int = 450,
) -> np.ndarray:
    """Draw one synthetic stained cell on a black background.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness (the image is a deterministic function of its state).
    label : int or str
        1 / ``"all"`` (leukemic blast) or 0 / ``"hem"`` (normal cell).
    subject_style : SubjectStyle, optional
        The subject's stain, size and focus; defaults to the average style.
    image_size : int
        Side of the square image (C-NMC: 450).

    Returns
    -------
    ndarray
        Synthetic RGB uint8 image of shape (image_size, image_size, 3); background is 0.

    Examples
    --------
    >>> import numpy as np
    >>> img = make_cell_image(np.random.default_rng(0), "all", image_size=128)
    >>> img.shape, img.dtype, int(img[0, 0].sum())
    ((128, 128, 3), dtype('uint8'), 0)
    """
    if isinstance(label, str):
        if label.lower() not in _CLASS_NAMES:
            raise ConfigError(f"label must be 'all'/'hem' or 1/0; received {label!r}.")
        label = _CLASS_NAMES.index(label.lower())
    label = int(label)
    if label not in (0, 1):
        raise ConfigError(f"label must be 'all'/'hem' or 1/0; received {label!r}.")
    image_size = int(image_size)
    if image_size < 32:
        raise ConfigError(f"image_size must be >= 32 pixels; received {image_size}.")
    style = subject_style or SubjectStyle()
    s = image_size / 450.0
    m = {k: v[label] for k, v in _MORPH.items()}

    # --- geometry ----------------------------------------------------------------------
    radius = style.cell_radius * image_size * float(np.clip(rng.normal(1.0, 0.08), 0.8, 1.2))
    rho = float(np.clip(rng.normal(m["nc_ratio_mean"] + style.nc_shift, m["nc_ratio_sd"]),
                        0.5, 0.93))
    nuc_shape = _outline(rng, rng.uniform(*m["irregularity"]), 2, 6)
    if rng.random() < m["cleft_prob"]:
        nuc_shape -= _cleft(rng, rng.uniform(*m["cleft_depth"]))
    t = np.arange(_N_ANGLES, dtype=np.float32) * (_TWO_PI / _N_ANGLES) - math.pi
    elong = (rng.uniform(0.0, 0.10) * np.cos(2 * t + rng.uniform(0, _TWO_PI))).astype(np.float32)
    cell_shape = elong + _outline(rng, 0.012, 3, 6) + m["follow"] * rho * nuc_shape
    r_cell = radius * (1.0 + cell_shape)
    r_nuc = rho * radius * (1.0 + nuc_shape + 0.6 * elong)

    rim = (1.0 - rho) * radius
    off_len = rng.uniform(0.0, m["offset"]) * rim
    off_ang = rng.uniform(0, _TWO_PI)
    dy, dx = int(round(off_len * math.sin(off_ang))), int(round(off_len * math.cos(off_ang)))

    extent = float(r_cell.max()) + 4.0 + 3.0 * style.blur * s
    size = 2 * int(math.ceil(extent)) + 1
    size = min(size, image_size)
    half = image_size  # one cached grid per image size, with room for any offset
    r_grid, b_grid = _polar_grid(half)

    rc, bc = _window(r_grid, half, size, 0, 0), _window(b_grid, half, size, 0, 0)
    a_cell = np.clip(r_cell[bc] - rc + 0.5, 0.0, 1.0)
    rn, bn = _window(r_grid, half, size, dy, dx), _window(b_grid, half, size, dy, dx)
    a_nuc = np.clip(r_nuc[bn] - rn + 0.5, 0.0, 1.0)
    a_nuc = np.minimum(a_nuc, np.clip(r_cell[bc] - 2.0 * s - rc + 0.5, 0.0, 1.0))

    # --- texture -----------------------------------------------------------------------
    tex = 1.0 + rng.uniform(*m["fine"]) * _noise(rng, size, 1.0 * s)
    coarse = rng.uniform(*m["coarse"])
    if coarse > 0:
        tex -= coarse * np.tanh(1.5 * _noise(rng, size, 4.5 * s))
    for _ in range(int(rng.poisson(m["nucleoli_mean"]))):
        ang = rng.uniform(0, _TWO_PI)
        dist = rng.uniform(0.0, 0.55) * rho * radius
        ny = dy + int(round(dist * math.sin(ang)))
        nx = dx + int(round(dist * math.cos(ang)))
        sig = rng.uniform(4.0, 8.0) * s
        d = _window(r_grid, half, size, ny, nx)
        tex += rng.uniform(0.15, 0.30) * np.exp(-(d * d) / (2 * sig * sig))
    cyto_tex = 1.0 + 0.04 * _noise(rng, size, 1.5 * s)

    # Two weight maps (cytoplasm, nucleus); every channel is a linear mix of them, so the
    # focus blur and the colour normalisation can work on the maps.
    w_cyto = (a_cell - a_nuc) * cyto_tex
    w_nuc = a_nuc * tex
    sigma = style.blur * s * float(rng.uniform(0.8, 1.2))
    if sigma >= 0.3:
        w_cyto = cv2.GaussianBlur(w_cyto, (0, 0), sigmaX=sigma)
        w_nuc = cv2.GaussianBlur(w_nuc, (0, 0), sigmaX=sigma)

    # --- colour: the mean over the cropped square depends on the subject only ------------
    darkness = style.nucleus_darkness * float(rng.normal(1.0, 0.04))
    balance = np.float32(0.05 * style.stain_balance) * _BALANCE
    nuc_rgb = _NUCLEUS_REL * (1.0 + balance) * darkness
    cyto_rel = _CYTO_REL * (1.0 - balance)
    _, _, bw, bh = cv2.boundingRect((a_cell > 0.5).view(np.uint8))
    side = float(max(bw, bh, 1))
    sum_c, sum_n = cv2.sumElems(w_cyto)[0], cv2.sumElems(w_nuc)[0]
    current = (cyto_rel * sum_c + nuc_rgb * sum_n) / (side * side)
    target = _target_colour(style, rng) * _EXPECTED_FILL
    gain = target / np.maximum(current, 1e-6)
    cyto_rgb, nuc_rgb = cyto_rel * gain, nuc_rgb * gain

    # --- placement ---------------------------------------------------------------------
    out = np.zeros((image_size, image_size, 3), np.uint8)
    y0 = int(rng.integers(0, image_size - size + 1))
    x0 = int(rng.integers(0, image_size - size + 1))
    for c in range(3):  # saturating, rounding float -> uint8
        out[y0 : y0 + size, x0 : x0 + size, c] = cv2.addWeighted(
            w_cyto, float(cyto_rgb[c]), w_nuc, float(nuc_rgb[c]), 0.0, dtype=cv2.CV_8U
        )
    return out


# ----------------------------------------------------------------------------------------
# writing a dataset
# ----------------------------------------------------------------------------------------


def make_cells(
    out_dir: str | os.PathLike,
    n_per_class: int,
    n_subjects: int,
    image_size: int = 450,
    seed: int = 0,
    workers: int | None = None,
    progress: bool | None = None,
) -> list[Path]:
    """Write a synthetic C-NMC-like dataset: ``out_dir/{all,hem}/UID_<subject>_..._<cls>.bmp``.

    The images are synthetic (see the module docstring). Names follow C-NMC,
    ``UID_<subject>_<image#>_<cell#>_<all|hem>.bmp``; leukemic subjects are ``"1", "2",
    ...`` and healthy ones ``"H1", "H2", ...``, each subject belonging to one class, with
    the images of a class spread evenly over its subjects. A ``README.txt`` in ``out_dir``
    says the data are synthetic.

    Parameters
    ----------
    out_dir : path
        Created if needed; existing files with the same names are overwritten.
    n_per_class : int
        Images per class.
    n_subjects : int
        Total number of subjects, split evenly between the classes (>= 2).
    image_size : int
        Image side in pixels (C-NMC: 450).
    seed : int
        The same seed writes the same images.
    workers : int, optional
        Threads drawing and writing images (default: 2).
    progress : bool, optional
        Show a progress bar (default: only on a terminal).

    Returns
    -------
    list of Path
        The files written, hem first then all, in subject order.

    Examples
    --------
    >>> from bmcd.synthetic import make_cells
    >>> files = make_cells("cells", n_per_class=10, n_subjects=4, image_size=96)  # doctest: +SKIP
    """
    n_per_class = int(n_per_class)
    if n_per_class < 1:
        raise ConfigError(f"n_per_class must be >= 1; received {n_per_class}.")
    all_ids, hem_ids = subject_ids(n_subjects)
    if n_per_class < max(len(all_ids), len(hem_ids)):
        raise ConfigError(
            f"n_per_class ({n_per_class}) must be at least the number of subjects per class "
            f"({max(len(all_ids), len(hem_ids))}), so every subject has an image."
        )
    out = Path(out_dir)
    seed = int(seed)
    style_rng = np.random.default_rng([seed, 0xC311])
    styles = {sid: random_subject_style(style_rng) for sid in all_ids + hem_ids}

    jobs: list[tuple[Path, int, str, int]] = []
    for label, ids in ((0, hem_ids), (1, all_ids)):
        cls = _CLASS_NAMES[label]
        (out / cls).mkdir(parents=True, exist_ok=True)
        counts = np.full(len(ids), n_per_class // len(ids))
        counts[: n_per_class % len(ids)] += 1
        for sid, count in zip(ids, counts, strict=False):
            for k in range(int(count)):
                name = f"UID_{sid}_{k // 2 + 1}_{k % 2 + 1}_{cls}.bmp"
                jobs.append((out / cls / name, label, sid, k))
    (out / "README.txt").write_text(
        "SYNTHETIC data written by bmcd.synthetic.make_cells "
        f"(n_per_class={n_per_class}, n_subjects={n_subjects}, image_size={image_size}, "
        f"seed={seed}).\nThese are drawn cells, not patient images; use them for demos and "
        "tests only.\n",
        encoding="utf-8",
    )

    def work(job: tuple[Path, int, str, int]) -> None:
        path, label, sid, k = job
        number = int(sid.lstrip("H"))
        rng = np.random.default_rng([seed, label, number, k])
        rgb = make_cell_image(rng, label, styles[sid], image_size)
        ok, buf = cv2.imencode(".bmp", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if not ok:  # pragma: no cover - OpenCV always encodes BMP
            raise OutputWriteError(f"could not encode {path}")
        path.write_bytes(buf.tobytes())

    from tqdm.auto import tqdm

    workers = 2 if workers is None else max(1, int(workers))
    bar = tqdm(total=len(jobs), desc="synthetic cells", unit="img",
               disable=None if progress is None else not progress)
    try:
        if workers == 1:
            for job in jobs:
                work(job)
                bar.update()
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for _ in pool.map(work, jobs):
                    bar.update()
    finally:
        bar.close()
    return [job[0] for job in jobs]


def looks_synthetic(root: str | os.PathLike | None) -> bool:
    """Whether a dataset folder carries the README that :func:`make_cells` writes.

    That README starts with ``SYNTHETIC`` (``bmcd preprocess`` copies it along). A
    missing or unreadable README, or ``root=None``, means not synthetic.
    """
    if root is None:
        return False
    readme = Path(root) / "README.txt"
    try:
        text = readme.read_text(encoding="utf-8", errors="replace") if readme.is_file() else ""
        return text.startswith("SYNTHETIC")
    except OSError:
        return False
