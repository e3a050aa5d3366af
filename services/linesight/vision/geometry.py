"""Measure a defect region: the numbers the taxonomy's severity rules read.

Pure numpy/OpenCV, no model: a region is a boolean mask (one connected component of a heatmap
or segmentation map, or a labeler's polygon rasterised). Sizes are in pixels of the map given
(the inference service passes maps at the frame's resolution, so they are camera pixels) and in
mm when the station's px/mm is known.

* ``area`` counts pixels (each pixel is one px²).
* ``length`` / ``width`` are the sides of the minimum-area rectangle around the region's pixel
  squares (long side = principal axis), so a ``40 x 20`` rectangle measures 40 by 20, not the
  39 by 19 of its pixel centres.
* ``edge_distance`` is the gap, in pixels, between the region and the nearest image border
  (0 when it touches one).
* zone distances are the gap to each named zone (a polygon or rectangle in normalised image
  coordinates, from the taxonomy or the station profile): 0 when the region overlaps the zone.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

__all__ = ["Measurement", "Zone", "measure_mask", "measure_region"]


@dataclass(frozen=True)
class Zone:
    """A named area of the part (``sealing_face``, ``edge_left``): a polygon in normalised image
    coordinates (x, y in [0, 1], clockwise or not)."""

    name: str
    polygon: tuple[tuple[float, float], ...]

    @classmethod
    def from_rect(cls, name: str, rect: Sequence[float]) -> Zone:
        x0, y0, x1, y1 = (float(v) for v in rect)
        return cls(name, ((x0, y0), (x1, y0), (x1, y1), (x0, y1)))

    def pixels(self, shape: tuple[int, int]) -> np.ndarray:
        """The polygon's vertices in pixel coordinates of an image of ``shape`` (h, w)."""
        h, w = shape
        return np.array([(x * w, y * h) for x, y in self.polygon], dtype=np.float64)


@dataclass(frozen=True)
class Measurement:
    """What was measured on one region; mm figures are None when px/mm is unknown."""

    area_px: int
    length_px: float
    width_px: float
    angle_deg: float  # principal axis, degrees from the image x axis, in (-90, 90]
    centroid: tuple[float, float]  # x, y in pixels
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (inclusive-exclusive)
    edge_distance_px: float
    zone_distance_px: dict[str, float] = field(default_factory=dict)
    px_per_mm: float | None = None

    def _mm(self, v: float, power: int = 1) -> float | None:
        return None if not self.px_per_mm else v / (self.px_per_mm**power)

    @property
    def area_mm2(self) -> float | None:
        return self._mm(float(self.area_px), 2)

    @property
    def length_mm(self) -> float | None:
        return self._mm(self.length_px)

    @property
    def width_mm(self) -> float | None:
        return self._mm(self.width_px)

    @property
    def edge_distance_mm(self) -> float | None:
        return self._mm(self.edge_distance_px)

    @property
    def zone_distance_mm(self) -> dict[str, float] | None:
        if not self.px_per_mm:
            return None
        return {k: v / self.px_per_mm for k, v in self.zone_distance_px.items()}

    @property
    def zones_touched(self) -> tuple[str, ...]:
        return tuple(k for k, v in self.zone_distance_px.items() if v <= 0.0)


def measure_mask(
    mask: np.ndarray,
    *,
    px_per_mm: float | None = None,
    zones: Iterable[Zone] = (),
) -> Measurement:
    """Measure the pixels of a full-image boolean ``mask`` (one region)."""
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {m.shape}")
    ys, xs = np.nonzero(m)
    if xs.size == 0:
        raise ValueError("mask is empty: nothing to measure")
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    return measure_region(
        m[y0:y1, x0:x1],
        offset=(x0, y0),
        image_shape=(m.shape[0], m.shape[1]),
        px_per_mm=px_per_mm,
        zones=zones,
    )


def measure_region(
    comp: np.ndarray,
    *,
    offset: tuple[int, int],
    image_shape: tuple[int, int],
    px_per_mm: float | None = None,
    zones: Iterable[Zone] = (),
) -> Measurement:
    """Measure one region given as a boolean mask ``comp`` cut out of an image of
    ``image_shape`` (h, w) at ``offset`` (x, y): the cheap form for connected components."""
    if px_per_mm is not None and not px_per_mm > 0:
        raise ValueError(f"px_per_mm must be positive, got {px_per_mm}")
    ys, xs = np.nonzero(comp)
    if xs.size == 0:
        raise ValueError("region is empty: nothing to measure")
    ox, oy = offset
    h, w = int(image_shape[0]), int(image_shape[1])
    fx = xs.astype(np.float64) + ox + 0.5  # pixel centres
    fy = ys.astype(np.float64) + oy + 0.5
    cx, cy = float(fx.mean()), float(fy.mean())
    length, width, angle = _principal_extents(comp)
    bx0, by0 = int(xs.min()) + ox, int(ys.min()) + oy
    bx1, by1 = int(xs.max()) + ox + 1, int(ys.max()) + oy + 1
    edge = float(max(0, min(bx0, by0, w - bx1, h - by1)))
    dists = {z.name: _zone_distance(z, comp, offset, (h, w)) for z in zones}
    return Measurement(
        area_px=int(xs.size),
        length_px=length,
        width_px=width,
        angle_deg=angle,
        centroid=(cx, cy),
        box=(bx0, by0, bx1, by1),
        edge_distance_px=edge,
        zone_distance_px=dists,
        px_per_mm=px_per_mm,
    )


_CORNERS = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]], dtype=np.float32)


def _principal_extents(comp: np.ndarray) -> tuple[float, float, float]:
    """(length, width, angle°) of the region: the minimum-area rectangle around its pixels'
    squares (corners of the outline pixels: the same rectangle as every pixel, at the cost of
    the outline). Its long side is the principal axis; unlike second moments, this does not
    lose the axis on a square or a circle."""
    contours, _ = cv2.findContours(comp.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    pts = np.concatenate(contours).reshape(-1, 1, 2).astype(np.float32) + 0.5
    (_, _), (a, b), ang = cv2.minAreaRect((pts + _CORNERS[None]).reshape(-1, 2))
    length, width, angle = (
        (float(a), float(b), float(ang)) if a >= b else (float(b), float(a), float(ang) + 90.0)
    )
    while angle > 90.0:
        angle -= 180.0
    while angle <= -90.0:
        angle += 180.0
    return length, width, angle


@functools.lru_cache(maxsize=64)
def _zone_distance_map(polygon: tuple[tuple[float, float], ...], shape: tuple[int, int]) -> np.ndarray:
    """Distance (px) from each pixel to the zone, 0 inside: one distance transform per zone and
    image size, cached (a station sees one size)."""
    h, w = shape
    inside = np.zeros((h, w), np.uint8)
    pts = np.array([(x * w, y * h) for x, y in polygon], dtype=np.float64)
    cv2.fillPoly(inside, [np.round(pts).astype(np.int32)], (1,))
    if not inside.any():
        return np.full((h, w), np.inf, np.float32)
    dist = cv2.distanceTransform((1 - inside).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    dist.setflags(write=False)
    return dist


def _zone_distance(zone: Zone, comp: np.ndarray, offset: tuple[int, int], shape: tuple[int, int]) -> float:
    ox, oy = offset
    ch, cw = comp.shape
    dmap = _zone_distance_map(zone.polygon, shape)[oy : oy + ch, ox : ox + cw]
    # the distance transform measures to the nearest zone pixel centre; a gap of one pixel
    # between region and zone reads 1, touching reads 0 after removing the pixel itself
    return float(max(0.0, float(dmap[comp].min()) - 1.0)) if dmap.size else math.inf


def reference_shapes(size: int = 400) -> list[tuple[str, np.ndarray, float, float, float]]:
    """Synthetic regions of known size for checking the measurement: (name, mask, true area px²,
    true length px, true width px). True figures are the continuous shapes'; the rasterised
    mask differs by its boundary pixels, which is the measurement error this reports."""
    out: list[tuple[str, np.ndarray, float, float, float]] = []
    c = size / 2.0

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5  # pixel centres

    def axes(angle: float) -> tuple[np.ndarray, np.ndarray]:
        t = math.radians(angle)
        u = (xx - c) * math.cos(t) + (yy - c) * math.sin(t)
        return u, -(xx - c) * math.sin(t) + (yy - c) * math.cos(t)

    # a pixel belongs to the shape when its centre lies inside (what a labeler's fill does)
    def rect(name: str, length: float, width: float, angle: float) -> None:
        u, v = axes(angle)
        m = (np.abs(u) <= length / 2) & (np.abs(v) <= width / 2)
        out.append((name, m, length * width, length, width))

    def ellipse(name: str, a: float, b: float, angle: float) -> None:
        u, v = axes(angle)
        m = (u / a) ** 2 + (v / b) ** 2 <= 1.0
        out.append((name, m, math.pi * a * b, 2 * a, 2 * b))

    rect("rectangle 120x40", 120, 40, 0)
    rect("rectangle 120x40 @30deg", 120, 40, 30)
    rect("square 60x60 @45deg", 60, 60, 45)
    ellipse("ellipse 80x30 @0deg", 40, 15, 0)
    ellipse("ellipse 80x30 @60deg", 40, 15, 60)
    ellipse("circle d50", 25, 25, 0)
    rect("line 200x4 @20deg", 200, 4, 20)
    rect("line 150x3 @75deg", 150, 3, 75)
    rect("line 250x5 @-40deg", 250, 5, -40)
    return out


def measurement_errors(px_per_mm: float = 10.0) -> list[dict[str, float | str]]:
    """Relative error (measured / true − 1) of area and length on ``reference_shapes``, in mm."""
    rows: list[dict[str, float | str]] = []
    for name, mask, area, length, width in reference_shapes():
        m = measure_mask(mask, px_per_mm=px_per_mm)
        assert m.area_mm2 is not None and m.length_mm is not None and m.width_mm is not None
        rows.append(
            {
                "shape": name,
                "true_area_mm2": area / px_per_mm**2,
                "area_mm2": m.area_mm2,
                "area_err": m.area_mm2 / (area / px_per_mm**2) - 1.0,
                "true_length_mm": length / px_per_mm,
                "length_mm": m.length_mm,
                "length_err": m.length_mm / (length / px_per_mm) - 1.0,
                "true_width_mm": width / px_per_mm,
                "width_mm": m.width_mm,
            }
        )
    return rows
