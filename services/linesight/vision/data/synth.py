"""Synthetic defect datasets: procedural surfaces with scratches, cracks, pits and stains.

The real defect sets are not part of the repository, yet the demo, the tests and a new line's
first model all need labelled images on day one ("synthetic defect overlays for bootstrapping").
This module renders them: a grayscale surface (brushed metal, cast or ceramic-like) with grain,
slow illumination gradients and batch-to-batch drift, photographed with a little position jitter
and sensor noise, plus pixel-exact defect masks. The output is the import format of
``../shared/datasets/README.md`` (``manifest.csv`` + PNG images + 8-bit masks), so everything that
reads a real dataset reads this one too.

Design choices that matter to the models trained on it:

* A part is rendered in its own coordinates from its own seed, then *captured* (pose, light,
  noise). Some parts are photographed twice: both rows share ``part_id`` and the defect sits at the
  same place on the part, so a split that lets one part straddle train/test visibly leaks.
* Batches shift brightness, contrast and grain; stations differ in light direction, vignetting,
  focus and noise. Time-aware and cross-station evaluation therefore has something to measure.
* Defects are learnable but not trivial: contrast is drawn from a range that reaches down to the
  texture's own variation, good parts carry benign dust specks, and stains are large but faint.

Example:
    >>> from pathlib import Path
    >>> import tempfile
    >>> root = generate_dataset(Path(tempfile.mkdtemp()) / "synth", n_good=4, per_class=1, size=64)
    >>> (root / "manifest.csv").is_file()
    True
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, Final

import cv2
import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFECT_CLASSES",
    "MANIFEST_COLUMNS",
    "MATERIALS",
    "BatchStyle",
    "PartRender",
    "StationStyle",
    "boxes_from_mask",
    "capture_part",
    "generate_dataset",
    "generate_sample",
    "render_part",
]

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]

DEFECT_CLASSES: Final[tuple[str, ...]] = ("scratch", "crack", "pit", "stain")
MATERIALS: Final[tuple[str, ...]] = ("brushed", "cast", "ceramic")
MANIFEST_COLUMNS: Final[tuple[str, ...]] = (
    "image",
    "label",
    "mask",
    "part_id",
    "batch",
    "station",
    "captured_at",
    "boxes",
)
# Bumped whenever rendering changes, so a cached dataset is regenerated rather than silently reused.
GENERATOR_VERSION: Final[int] = 1
MARKER_FILE: Final[str] = "synth.json"
MIN_SIZE: Final[int] = 48
MASK_THRESHOLD: Final[int] = 127  # the import format: soft masks, defect where value > 127
_EPOCH: Final[datetime] = datetime(2024, 3, 4, 6, 0, tzinfo=UTC)
_PART_SECONDS: Final[float] = 7.5  # line pace: 8 parts per minute
_REPEAT_FRACTION: Final[float] = 0.08


@dataclass(frozen=True)
class BatchStyle:
    """What changes between production batches: raw material, finishing tools, exposure."""

    brightness: float  # mean gray level of the surface, 0..1
    contrast: float  # texture amplitude multiplier
    grain_angle: float  # degrees; brushing direction
    grain_length: float  # Gaussian sigma along the grain, as a fraction of the image size
    grain_strength: float
    blob_cells: int  # coarse-noise grid: fewer cells, larger blotches

    @staticmethod
    def draw(rng: np.random.Generator) -> BatchStyle:
        return BatchStyle(
            brightness=float(rng.uniform(0.44, 0.60)),
            contrast=float(rng.uniform(0.8, 1.25)),
            grain_angle=float(rng.uniform(-12.0, 12.0)),
            grain_length=float(rng.uniform(0.03, 0.06)),
            grain_strength=float(rng.uniform(0.7, 1.3)),
            blob_cells=int(rng.integers(4, 9)),
        )


@dataclass(frozen=True)
class StationStyle:
    """What differs between camera stations: light placement, optics and sensor."""

    light_angle: float  # radians; direction the illumination gradient rises towards
    light_slope: float  # relative brightness change across the frame
    vignette: float
    noise_sigma: float  # sensor noise, 0..1 gray scale
    focus_sigma: float  # Gaussian blur of slightly soft optics, in pixels at 256 px

    @staticmethod
    def draw(rng: np.random.Generator) -> StationStyle:
        return StationStyle(
            light_angle=float(rng.uniform(0.0, 2.0 * math.pi)),
            light_slope=float(rng.uniform(0.08, 0.22)),
            vignette=float(rng.uniform(0.05, 0.18)),
            noise_sigma=float(rng.uniform(0.006, 0.013)),
            focus_sigma=float(rng.uniform(0.0, 0.7)),
        )


@dataclass(frozen=True)
class PartRender:
    """One physical part in its own coordinates, before the camera sees it.

    ``delta`` is the defect's additive intensity change (zero for good parts) and ``mask`` its
    soft footprint in 0..1; keeping them apart from ``surface`` lets tests and augmentation reuse
    the clean surface.
    """

    surface: F32
    delta: F32
    mask: F32
    footprint: F32  # 1 on the part, 0 on the fixture/background
    label: str


# --------------------------------------------------------------------------------------------
# Textures


def _blur(img: npt.NDArray[np.floating[Any]], sigma: float) -> F32:
    return np.asarray(cv2.GaussianBlur(img, (0, 0), sigma), dtype=np.float32)


def _white(rng: np.random.Generator, size: int) -> F32:
    """Zero-mean unit-variance uniform noise: ~3x cheaper than normal and Gaussian once blurred."""
    noise = rng.random((size, size), dtype=np.float32)
    noise -= np.float32(0.5)
    noise *= np.float32(math.sqrt(12.0))
    return noise


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> F32:
    """Value noise: a coarse Gaussian grid upsampled bicubically (unit-ish std)."""
    grid = rng.standard_normal((cells + 1, cells + 1), dtype=np.float32)
    up = cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
    return np.asarray(up, dtype=np.float32)


def _fbm(rng: np.random.Generator, size: int, cells: int, octaves: int) -> F32:
    out = np.zeros((size, size), np.float32)
    amp = 1.0
    for octave in range(octaves):
        out += amp * _smooth_noise(rng, size, min(cells * 2**octave, size // 2))
        amp *= 0.5
    return out / np.float32(out.std() + 1e-6)


def _grain(rng: np.random.Generator, size: int, angle: float, length: float) -> F32:
    """Brushed-metal streaks: white noise smeared along one direction, then rotated."""
    big = int(size * 1.5)
    noise = _white(rng, big)
    streaks = cv2.GaussianBlur(noise, (0, 0), sigmaX=max(length * size, 2.0), sigmaY=0.7)
    rot = cv2.getRotationMatrix2D((big / 2, big / 2), angle, 1.0)
    streaks = cv2.warpAffine(streaks, rot, (big, big), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    off = (big - size) // 2
    crop = streaks[off : off + size, off : off + size]
    return np.asarray(crop / (crop.std() + 1e-6), dtype=np.float32)


def _fine_speckle(rng: np.random.Generator, size: int, sigma: float) -> F32:
    speckle = cv2.GaussianBlur(_white(rng, size), (0, 0), sigma)
    return np.asarray(speckle / (speckle.std() + 1e-6), dtype=np.float32)


def _surface(rng: np.random.Generator, size: int, material: str, batch: BatchStyle) -> F32:
    """Surface reflectance around the batch's brightness; texture std is about 0.03-0.05."""
    scale = size / 256.0
    blotch = _fbm(rng, size, batch.blob_cells, 3)
    if material == "brushed":
        tex = 0.022 * batch.grain_strength * _grain(rng, size, batch.grain_angle, batch.grain_length)
        tex += 0.012 * blotch + 0.008 * _fine_speckle(rng, size, 0.8 * scale)
    elif material == "cast":
        tex = 0.020 * blotch + 0.018 * _fbm(rng, size, 24, 2) + 0.014 * _fine_speckle(rng, size, 1.2 * scale)
    elif material == "ceramic":
        tex = 0.010 * blotch + 0.010 * _fbm(rng, size, 40, 1) + 0.010 * _fine_speckle(rng, size, 0.6 * scale)
    else:
        raise ValueError(f"unknown material {material!r}; expected one of {', '.join(MATERIALS)}")
    return np.asarray(batch.brightness + batch.contrast * tex, dtype=np.float32)


def _footprint(size: int) -> F32:
    """The part's outline: a rounded rectangle filling most of the frame, fixture visible at the rim."""
    margin = round(0.045 * size)
    radius = max(2, round(0.06 * size))
    fp = np.zeros((size, size), np.float32)
    lo, hi = margin + radius, size - 1 - margin - radius
    cv2.rectangle(fp, (margin, lo), (size - 1 - margin, hi), (1.0,), -1)
    cv2.rectangle(fp, (lo, margin), (hi, size - 1 - margin), (1.0,), -1)
    for cx in (lo, hi):
        for cy in (lo, hi):
            cv2.circle(fp, (cx, cy), radius, (1.0,), -1, cv2.LINE_AA)
    return np.asarray(cv2.GaussianBlur(fp, (0, 0), 0.7), dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Defects. Each returns (geometry in 0..1, signed intensity change) in part coordinates.


def _interior_point(rng: np.random.Generator, size: int, margin: float = 0.16) -> tuple[float, float]:
    lo, hi = margin * size, (1.0 - margin) * size
    return float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))


def _clamp_interior(pts: npt.NDArray[np.float64], size: int, margin: float = 0.08) -> npt.NDArray[np.float64]:
    return np.clip(pts, margin * size, (1.0 - margin) * size)


def _scratch(rng: np.random.Generator, size: int) -> tuple[F32, F32]:
    """A thin curved line from a tool or handling, bright (specular) or dark, fading in and out."""
    scale = size / 256.0
    x0, y0 = _interior_point(rng, size)
    length = rng.uniform(0.18, 0.5) * size
    theta = rng.uniform(0.0, math.pi)
    direction = np.array([math.cos(theta), math.sin(theta)])
    normal = np.array([-direction[1], direction[0]])
    p0 = np.array([x0, y0]) - direction * length / 2
    p2 = np.array([x0, y0]) + direction * length / 2
    p1 = np.array([x0, y0]) + normal * rng.uniform(-0.25, 0.25) * length
    t = np.linspace(0.0, 1.0, 48)[:, None]
    pts = _clamp_interior((1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2, size)
    thickness = 1 if scale < 1.5 and rng.random() < 0.6 else max(1, round(1.6 * scale))
    geom = np.zeros((size, size), np.float32)
    shade = np.zeros((size, size), np.float32)
    # Depth varies along the scratch: strongest in the middle, with a little flicker.
    profile = np.sin(np.linspace(0.15, math.pi - 0.15, len(pts) - 1)) ** 0.5
    profile *= rng.uniform(0.75, 1.0, len(profile))
    fixed = np.round(pts * 16).astype(np.int32)
    for i in range(len(pts) - 1):
        a, b = (int(fixed[i, 0]), int(fixed[i, 1])), (int(fixed[i + 1, 0]), int(fixed[i + 1, 1]))
        cv2.line(geom, a, b, (1.0,), thickness, cv2.LINE_AA, 4)
        cv2.line(shade, a, b, (float(profile[i]),), thickness, cv2.LINE_AA, 4)
    sign = 1.0 if rng.random() < 0.65 else -1.0
    amp = rng.uniform(0.09, 0.22)
    shade = _blur(shade, 0.45 * max(scale, 1.0))
    return geom, np.asarray(sign * amp * shade, dtype=np.float32)


def _crack(rng: np.random.Generator, size: int) -> tuple[F32, F32]:
    """A dark, jagged, branching fracture: a persistent random walk that sometimes forks."""
    scale = size / 256.0
    step = 1.5 * max(scale, 0.5)
    geom = np.zeros((size, size), np.float32)
    x, y = _interior_point(rng, size, 0.22)
    walks: list[tuple[float, float, float, int, int]] = [
        (x, y, float(rng.uniform(0, 2 * math.pi)), int(rng.integers(40, 95) * max(scale, 0.6)), 2),
    ]
    lo, hi = 0.08 * size, 0.92 * size
    branches = 0
    while walks:
        x, y, heading, steps, width = walks.pop()
        course = heading  # fractures run roughly straight: the heading jitters but reverts to its course
        for _ in range(steps):
            heading += rng.normal(0.0, 0.35) - 0.2 * (heading - course)
            course += rng.normal(0.0, 0.03)
            nx, ny = x + step * math.cos(heading), y + step * math.sin(heading)
            if not (lo < nx < hi and lo < ny < hi):
                break
            thick = max(1, round(width * max(scale, 0.5) * rng.uniform(0.6, 1.0)))
            cv2.line(
                geom,
                (round(x * 16), round(y * 16)),
                (round(nx * 16), round(ny * 16)),
                (1.0,),
                thick,
                cv2.LINE_AA,
                4,
            )
            x, y = nx, ny
            if branches < 3 and rng.random() < 0.035:
                branches += 1
                fork = heading + rng.choice([-1.0, 1.0]) * rng.uniform(0.4, 1.1)
                walks.append((x, y, fork, int(steps * rng.uniform(0.25, 0.55)), 1))
    geom = np.minimum(geom, 1.0)
    amp = rng.uniform(0.12, 0.32)
    halo = cv2.GaussianBlur(geom, (0, 0), 1.5 * max(scale, 0.6))
    delta = -amp * np.clip(0.85 * geom + 0.5 * halo, 0.0, 1.0)
    return geom, np.asarray(delta, dtype=np.float32)


def _pits(rng: np.random.Generator, size: int) -> tuple[F32, F32]:
    """Small dark craters (porosity, blowholes), alone or in a cluster, with a lit rim."""
    scale = size / 256.0
    cx, cy = _interior_point(rng, size)
    count = int(rng.choice([1, 2, 3, 4, 5, 6], p=[0.2, 0.2, 0.2, 0.15, 0.15, 0.1]))
    spread = rng.uniform(4.0, 12.0) * scale
    geom = np.zeros((size, size), np.float32)
    dark = np.zeros((size, size), np.float32)
    rim = np.zeros((size, size), np.float32)
    light = rng.uniform(0.0, 2.0 * math.pi)
    for _ in range(count):
        px = float(np.clip(cx + rng.normal(0.0, spread), 0.1 * size, 0.9 * size))
        py = float(np.clip(cy + rng.normal(0.0, spread), 0.1 * size, 0.9 * size))
        r = max(1.2, rng.uniform(1.6, 4.5) * scale)
        center = (round(px * 16), round(py * 16))
        cv2.circle(geom, center, round(r * 16), (1.0,), -1, cv2.LINE_AA, 4)
        cv2.circle(dark, center, round(r * 16), (float(rng.uniform(0.7, 1.0)),), -1, cv2.LINE_AA, 4)
        rim_x, rim_y = px + 0.6 * r * math.cos(light), py + 0.6 * r * math.sin(light)
        rim_center = (round(rim_x * 16), round(rim_y * 16))
        cv2.circle(rim, rim_center, round(0.7 * r * 16), (1.0,), -1, cv2.LINE_AA, 4)
    soft = 0.5 * max(scale, 0.6)
    dark = _blur(dark, soft)
    rim = _blur(rim * (1.0 - np.minimum(geom, 1.0)), soft)
    amp = rng.uniform(0.08, 0.26)
    delta = amp * (0.35 * rim - dark)
    return np.minimum(geom, 1.0), np.asarray(delta, dtype=np.float32)


def _stain(rng: np.random.Generator, size: int) -> tuple[F32, F32]:
    """A soft, irregular, low-contrast blotch (coolant, oxidation): large but faint."""
    scale = size / 256.0
    cx, cy = _interior_point(rng, size, 0.25)
    axes = (round(rng.uniform(12, 38) * scale * 16), round(rng.uniform(10, 30) * scale * 16))
    blob = np.zeros((size, size), np.float32)
    cv2.ellipse(
        blob,
        (round(cx * 16), round(cy * 16)),
        axes,
        float(rng.uniform(0, 180)),
        0,
        360,
        (1.0,),
        -1,
        cv2.LINE_AA,
        4,
    )
    blob = _blur(blob, 4.0 * scale)
    ragged = blob * (1.0 + 0.45 * _smooth_noise(rng, size, 12))
    alpha = np.clip((ragged - 0.35) / 0.4, 0.0, 1.0).astype(np.float32)
    alpha = _blur(alpha, 2.5 * scale)
    sign = -1.0 if rng.random() < 0.75 else 1.0
    amp = rng.uniform(0.035, 0.085)
    return alpha, np.asarray(sign * amp * alpha, dtype=np.float32)


_DEFECTS = {"scratch": _scratch, "crack": _crack, "pit": _pits, "stain": _stain}


def _dust(rng: np.random.Generator, size: int) -> F32:
    """Benign specks every part may carry; they keep 'any small blob' from meaning 'pit'."""
    dust = np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(0, 4))):
        x, y = _interior_point(rng, size, 0.08)
        cv2.circle(dust, (round(x), round(y)), 1, (float(rng.uniform(-0.05, 0.06)),), -1, cv2.LINE_AA)
    return np.asarray(cv2.GaussianBlur(dust, (0, 0), 0.6), dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Rendering


def render_part(size: int, material: str, label: str, part_seed: int, batch: BatchStyle) -> PartRender:
    """Render one part; the same seed always yields the same surface and defect.

    The defect is drawn from a generator independent of the surface's, so a part's good and
    defective renders share their surface exactly (``delta`` is then the whole difference).
    """
    if label != "good" and label not in _DEFECTS:
        raise ValueError(f"unknown label {label!r}; expected 'good' or one of {', '.join(DEFECT_CLASSES)}")
    surface_rng, defect_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(part_seed).spawn(2))
    surface = _surface(surface_rng, size, material, batch) + _dust(surface_rng, size)
    if label == "good":
        zeros = np.zeros((size, size), np.float32)
        return PartRender(surface, zeros, zeros.copy(), _footprint(size), label)
    geom, delta = _DEFECTS[label](defect_rng, size)
    # Soft-edged mask whose >127 region covers the visible defect with about a pixel to spare.
    # A stain's alpha is already soft; its visible edge sits near alpha 0.3, so the mask is widened.
    if label == "stain":
        mask = np.clip(geom * 1.8, 0.0, 1.0)
    else:
        grown = cv2.dilate(geom, np.ones((3, 3), np.uint8))
        mask = np.clip(cv2.GaussianBlur(grown, (0, 0), 0.8) * 1.6, 0.0, 1.0)
    return PartRender(surface, delta, np.asarray(mask, dtype=np.float32), _footprint(size), label)


@lru_cache(maxsize=4)
def _centred_grid(size: int) -> tuple[F32, F32]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / np.float32(size) - np.float32(0.5)
    return yy, xx


def capture_part(part: PartRender, station: StationStyle, capture_seed: int) -> tuple[U8, U8]:
    """Photograph a part: pose jitter, illumination, optics and sensor noise -> (image, mask)."""
    rng = np.random.default_rng(capture_seed)
    size = part.surface.shape[0]
    scale = size / 256.0
    angle = float(rng.uniform(-1.5, 1.5))
    shift = rng.uniform(-0.02, 0.02, 2) * size
    pose = np.asarray(cv2.getRotationMatrix2D((size / 2, size / 2), angle, 1.0), dtype=np.float64)
    pose[:, 2] += shift

    def warp(img: F32, border: int) -> F32:
        out = cv2.warpAffine(img, pose, (size, size), flags=cv2.INTER_LINEAR, borderMode=border)
        return np.asarray(out, dtype=np.float32)

    surface = warp(part.surface + part.delta, cv2.BORDER_REFLECT)
    footprint = warp(part.footprint, cv2.BORDER_CONSTANT)
    mask = warp(part.mask, cv2.BORDER_CONSTANT)

    background = 0.1 + 0.02 * _smooth_noise(rng, size, 6)
    img = background + footprint * (surface - background)

    yy, xx = _centred_grid(size)
    light_angle = station.light_angle + rng.normal(0.0, 0.15)
    slope = station.light_slope * rng.uniform(0.85, 1.15)
    light = 1.0 + slope * (xx * math.cos(light_angle) + yy * math.sin(light_angle))
    light *= 1.0 - station.vignette * 2.0 * (xx**2 + yy**2)
    img = img * light * rng.uniform(0.96, 1.04)  # exposure flicker between shots
    if station.focus_sigma * scale > 0.25:
        img = cv2.GaussianBlur(img, (0, 0), station.focus_sigma * scale)
    img = img + np.float32(station.noise_sigma) * rng.standard_normal(img.shape, dtype=np.float32)
    image = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    mask_u8 = np.clip(mask * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return image, mask_u8


def boxes_from_mask(mask: U8, label: str, min_area: int = 3) -> list[list[str | int]]:
    """``[label, xmin, ymin, xmax, ymax]`` per 8-connected component of ``mask > 127``.

    Pixel-edge coordinates (``xmax = xmin + width``), so a box's area is ``(xmax-xmin)*(ymax-ymin)``.
    Specks below ``min_area`` pixels are blur residue, not defects, and get no box.
    """
    binary = (mask > MASK_THRESHOLD).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    boxes: list[list[str | int]] = []
    for i in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[i])
        if area >= min_area:
            boxes.append([label, x, y, x + w, y + h])
    return boxes


# --------------------------------------------------------------------------------------------
# Datasets


@dataclass(frozen=True)
class _Shot:
    part_index: int
    label: str
    shot: int
    batch: int
    station: int
    seconds: float  # since the batch started


def _plan(rng: np.random.Generator, counts: dict[str, int], n_batches: int, n_stations: int) -> list[_Shot]:
    """Decide which part each image shows, its batch, station and time; some parts twice."""
    shots: list[_Shot] = []
    part_index = 0
    per_batch_parts: list[int] = [0] * n_batches
    for label, n_images in counts.items():
        repeats = round(n_images * _REPEAT_FRACTION) if n_images >= 8 else int(n_images >= 3)
        n_parts = n_images - repeats
        batches = rng.permutation(np.arange(n_parts) % n_batches)
        stations = rng.permutation(np.arange(n_parts) % n_stations)
        first: list[_Shot] = []
        for i in range(n_parts):
            b = int(batches[i])
            per_batch_parts[b] += 1
            first.append(_Shot(part_index, label, 0, b, int(stations[i]), 0.0))
            part_index += 1
        for j in rng.choice(n_parts, size=repeats, replace=False) if repeats else []:
            # A re-inspection: same part, same station, a few minutes later.
            again = first[int(j)]
            shots.append(_Shot(again.part_index, label, 1, again.batch, again.station, -1.0))
        shots.extend(first)
    # Line pace inside each batch: parts in random order, one every ~7.5 s.
    order = rng.permutation(part_index)
    when: dict[int, float] = {}
    slot = [0] * n_batches
    by_part = {s.part_index: s for s in shots if s.shot == 0}
    for p in order:
        b = by_part[int(p)].batch
        when[int(p)] = slot[b] * _PART_SECONDS + float(rng.uniform(0.0, 2.0))
        slot[b] += 1
    timed = []
    for s in shots:
        t = when[s.part_index] + (float(rng.uniform(60.0, 900.0)) if s.shot else 0.0)
        timed.append(_Shot(s.part_index, s.label, s.shot, s.batch, s.station, t))
    return sorted(timed, key=lambda s: (s.batch, s.seconds, s.part_index, s.shot))


def _params(
    n_good: int,
    per_class: int,
    seed: int,
    size: int,
    material: str,
    classes: Sequence[str],
    n_batches: int,
    n_stations: int,
) -> dict[str, object]:
    return {
        # the generator's identity in every dataset's marker file, kept from before the module moved
        # to data/: a changed value would make `reuse` regenerate every cached dataset
        "generator": "linesight.vision.synth",
        "version": GENERATOR_VERSION,
        "n_good": n_good,
        "per_class": per_class,
        "seed": seed,
        "size": size,
        "material": material,
        "classes": list(classes),
        "batches": n_batches,
        "stations": n_stations,
    }


def _prepare_out_dir(out: Path, params: dict[str, object], reuse: bool) -> bool:
    """True when a matching dataset is already there. Never deletes a folder this module did not write."""
    marker = out / MARKER_FILE
    if marker.is_file():
        try:
            previous = json.loads(marker.read_text())
        except (OSError, ValueError):
            previous = None
        if (
            reuse
            and isinstance(previous, dict)
            and previous.get("params") == params
            and (out / "manifest.csv").is_file()
        ):
            return True
        for sub in ("images", "masks"):
            shutil.rmtree(out / sub, ignore_errors=True)
        (out / "manifest.csv").unlink(missing_ok=True)
        marker.unlink()
    elif (out / "manifest.csv").exists():
        raise FileExistsError(f"{out} holds a dataset not written by `linesight synth`; choose another --out")
    return False


def generate_dataset(
    out_dir: str | Path,
    n_good: int = 200,
    per_class: int = 50,
    seed: int = 0,
    size: int = 256,
    *,
    material: str = "brushed",
    classes: Sequence[str] = DEFECT_CLASSES,
    n_batches: int = 4,
    n_stations: int = 2,
    reuse: bool = False,
) -> Path:
    """Write a synthetic dataset (manifest.csv, images/, masks/, synth.json) and return its folder.

    Counts are images: ``n_good`` good ones and ``per_class`` per defect class, of which about 8 %
    are second shots of a part already in the set. Output is byte-identical for equal arguments.
    With ``reuse`` an existing folder generated with the same arguments is returned untouched
    (the demo calls this on every run). A previous synthetic set in ``out_dir`` is replaced; a
    folder holding any other dataset is refused with ``FileExistsError``.
    """
    if size < MIN_SIZE:
        raise ValueError(f"size {size} is below the minimum of {MIN_SIZE} pixels")
    if n_good < 0 or per_class < 0 or n_good + per_class * len(classes) == 0:
        raise ValueError("need at least one image: n_good and per_class must be >= 0 and not both 0")
    if material not in MATERIALS:
        raise ValueError(f"unknown material {material!r}; expected one of {', '.join(MATERIALS)}")
    unknown = [c for c in classes if c not in _DEFECTS]
    if unknown or len(set(classes)) != len(classes):
        raise ValueError(
            f"classes must be distinct members of {', '.join(DEFECT_CLASSES)}; got {list(classes)}"
        )
    if not (1 <= n_batches <= 100 and 1 <= n_stations <= 100):
        raise ValueError("n_batches and n_stations must be between 1 and 100")

    out = Path(out_dir)
    params = _params(n_good, per_class, seed, size, material, classes, n_batches, n_stations)
    out.mkdir(parents=True, exist_ok=True)
    if _prepare_out_dir(out, params, reuse):
        return out

    root = np.random.SeedSequence(seed)
    plan_seq, style_seq, part_seq, capture_seq = root.spawn(4)
    style_rng = np.random.default_rng(style_seq)
    batch_styles = [BatchStyle.draw(style_rng) for _ in range(n_batches)]
    station_styles = [StationStyle.draw(style_rng) for _ in range(n_stations)]
    counts = {"good": n_good, **dict.fromkeys(classes, per_class)}
    shots = _plan(np.random.default_rng(plan_seq), counts, n_batches, n_stations)
    n_parts = max(s.part_index for s in shots) + 1
    part_seeds = [int(s.generate_state(1)[0]) for s in part_seq.spawn(n_parts)]
    capture_seeds = capture_seq.generate_state(len(shots))

    for label in counts:
        (out / "images" / label).mkdir(parents=True, exist_ok=True)
        if label != "good":
            (out / "masks" / label).mkdir(parents=True, exist_ok=True)

    rows: list[dict[str, str]] = []
    shot_twice = {s.part_index for s in shots if s.shot}
    cache: dict[int, PartRender] = {}
    png = [cv2.IMWRITE_PNG_COMPRESSION, 1]  # speed over a few % of disk
    for i, shot in enumerate(shots):
        part = cache.pop(shot.part_index, None) or render_part(
            size, material, shot.label, part_seeds[shot.part_index], batch_styles[shot.batch]
        )
        if shot.shot == 0 and shot.part_index in shot_twice:
            cache[shot.part_index] = part
        image, mask = capture_part(part, station_styles[shot.station], int(capture_seeds[i]))
        part_id = f"syn{seed}-{shot.part_index:05d}"
        name = f"{part_id}_{shot.shot}.png"
        image_rel = f"images/{shot.label}/{name}"
        if not cv2.imwrite(str(out / image_rel), image, png):
            raise OSError(f"could not write {out / image_rel}")
        mask_rel, boxes = "", ""
        if shot.label != "good":
            mask_rel = f"masks/{shot.label}/{name}"
            if not cv2.imwrite(str(out / mask_rel), mask, png):
                raise OSError(f"could not write {out / mask_rel}")
            boxes = json.dumps(boxes_from_mask(mask, shot.label))
        captured = _EPOCH + timedelta(days=shot.batch, seconds=shot.seconds)
        rows.append(
            {
                "image": image_rel,
                "label": shot.label,
                "mask": mask_rel,
                "part_id": part_id,
                "batch": f"b{shot.batch}",
                "station": f"station{shot.station + 1}",
                "captured_at": captured.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "boxes": boxes,
            }
        )

    with (out / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(MANIFEST_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    # Written last: its presence means the set is complete and safe to reuse or replace.
    (out / MARKER_FILE).write_text(
        json.dumps(
            {
                "params": params,
                "batch_styles": [asdict(b) for b in batch_styles],
                "station_styles": [asdict(s) for s in station_styles],
                "images": len(rows),
                "parts": n_parts,
            },
            indent=2,
        )
        + "\n"
    )
    return out


def generate_sample(out_dir: str | Path, seed: int = 0) -> Path:
    """A manifest-compatible set small enough for unit tests: 64 px, 10 good + 3 per class.

    It still has every column, two batches, two stations and repeated parts.
    """
    return generate_dataset(
        out_dir, n_good=10, per_class=3, seed=seed, size=64, n_batches=2, n_stations=2, reuse=True
    )
