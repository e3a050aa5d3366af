"""Heatmaps people can read: a colour map with a scale bar, overlaid on the frame at the frame's
resolution, and the decision's regions outlined with their class and size.

The anomaly map is normalised (1.0 = the model's threshold), so one fixed scale serves every
frame and station: blue below half the threshold, through green and yellow to red at twice it.
Colour is blended in proportion to the score, so a clean part shows the frame itself and only
what the model saw lights up. Pure numpy/OpenCV (the inference service and reports use it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

__all__ = ["overlay", "overlay_png", "region_label"]

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _rgb(frame: np.ndarray) -> np.ndarray:
    img = np.asarray(frame)
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.ndim == 3 and img.shape[2] == 1:
        return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2RGB)
    if img.ndim == 3 and img.shape[2] == 4:
        return np.ascontiguousarray(img[:, :, :3])
    if img.ndim == 3 and img.shape[2] == 3:
        return np.ascontiguousarray(img)
    raise ValueError(f"frame must be HxW or HxWx{{1,3,4}}, got shape {img.shape}")


def _colours(values: np.ndarray, vmax: float) -> np.ndarray:
    """RGB uint8 colours of ``values`` in [0, vmax] (turbo colour map)."""
    v = np.nan_to_num(np.asarray(values, np.float32), nan=0.0, posinf=vmax, neginf=0.0)
    u8 = np.clip(v * (255.0 / vmax), 0, 255).astype(np.uint8)
    bgr = cv2.applyColorMap(u8, cv2.COLORMAP_TURBO)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def region_label(region: Any) -> str:
    """``crack 3.2 mm, 4.1 mm²`` (mm when the station's scale is known, else px)."""
    get = region.get if isinstance(region, dict) else (lambda k, d=None: getattr(region, k, d))
    cls = get("defect_class") or ""
    if get("length_mm") is not None:
        size = f"{get('length_mm'):.1f} mm"
        if get("area_mm2") is not None:
            size += f", {get('area_mm2'):.1f} mm2"
    elif get("length_px") is not None:
        size = f"{get('length_px'):.0f} px, {get('area_px')} px2"
    else:
        size = f"{get('area_px')} px2"
    sev = get("severity")
    return " ".join(p for p in (str(cls), size, f"[{sev}]" if sev else "") if p)


def overlay(
    frame: np.ndarray,
    heatmap: np.ndarray,
    regions: Sequence[Any] = (),
    *,
    vmax: float = 2.0,
    alpha: float = 0.6,
    threshold: float = 1.0,
    scale_bar: bool = True,
) -> np.ndarray:
    """RGB uint8 at the frame's size: frame + colour heatmap + region outlines + a scale bar.

    ``heatmap`` may be any size (it is resized to the frame); ``regions`` are in frame pixels
    (``box`` and optionally ``defect_class``, ``length_mm``, ``area_mm2``, ``severity``)."""
    base = _rgb(frame)
    h, w = base.shape[:2]
    heat = np.asarray(heatmap, np.float32)
    if heat.ndim == 3:
        heat = heat[..., 0] if heat.shape[-1] == 1 else heat[0]
    if heat.ndim != 2 or heat.size == 0:
        raise ValueError(f"heatmap must be a non-empty 2-D array, got shape {heat.shape}")
    if heat.shape != (h, w):
        heat = np.asarray(cv2.resize(heat, (w, h), interpolation=cv2.INTER_LINEAR), np.float32)
    heat = np.nan_to_num(heat, nan=0.0, posinf=vmax, neginf=0.0)
    colour = _colours(heat, vmax)
    # opacity grows with the score: nothing below a quarter of the threshold, full from it on
    weight = np.clip((heat - 0.25 * threshold) / (0.75 * threshold), 0.0, 1.0) * alpha
    out = (base.astype(np.float32) * (1.0 - weight[..., None]) + colour * weight[..., None]).astype(np.uint8)
    thick = max(1, round(min(h, w) / 200))
    font = max(0.35, min(h, w) / 700)
    for r in regions:
        get = r.get if isinstance(r, dict) else (lambda k, d=None, r=r: getattr(r, k, d))
        x0, y0, x1, y1 = (int(v) for v in get("box") or (0, 0, 0, 0))
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), (255, 255, 255), thick + 1, cv2.LINE_AA)
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), (255, 0, 255), thick, cv2.LINE_AA)
        text = region_label(r)
        (tw, th), base_line = cv2.getTextSize(text, _FONT, font, 1)
        ty = y0 - 4 if y0 - th - 6 >= 0 else min(h - 2, y1 + th + 4)
        tx = min(max(0, x0), max(0, w - tw - 2))
        cv2.rectangle(out, (tx, ty - th - 2), (tx + tw + 2, ty + base_line), (0, 0, 0), -1)
        cv2.putText(out, text, (tx + 1, ty), _FONT, font, (255, 255, 255), 1, cv2.LINE_AA)
    if scale_bar:
        out = _with_scale_bar(out, vmax, threshold, font)
    return out


def _with_scale_bar(img: np.ndarray, vmax: float, threshold: float, font: float) -> np.ndarray:
    """The image with a vertical colour scale to its right: 0, the threshold and ``vmax``."""
    h = img.shape[0]
    bar_w = max(10, h // 25)
    (tw, th), _ = cv2.getTextSize(f">={vmax:g}", _FONT, font, 1)
    panel_w = bar_w + tw + 12
    panel = np.full((h, panel_w, 3), 32, np.uint8)
    top, bottom = th + 4, h - th - 4
    if bottom - top >= 8:
        ramp = np.linspace(vmax, 0.0, bottom - top, dtype=np.float32)[:, None].repeat(bar_w, axis=1)
        panel[top:bottom, 2 : 2 + bar_w] = _colours(ramp, vmax)
        for v, text in ((vmax, f">={vmax:g}"), (threshold, f"{threshold:g} thr"), (0.0, "0")):
            y = round(top + (1.0 - v / vmax) * (bottom - top - 1))
            cv2.line(panel, (2, y), (2 + bar_w + 3, y), (255, 255, 255), 1)
            cv2.putText(
                panel,
                text,
                (bar_w + 6, min(h - 2, max(th, y + th // 2))),
                _FONT,
                font,
                (255, 255, 255),
                1,
                cv2.LINE_AA,
            )
    return np.concatenate([img, panel], axis=1)


def overlay_png(
    frame: np.ndarray,
    heatmap: np.ndarray,
    regions: Sequence[Any] = (),
    *,
    max_side: int = 0,
    vmax: float = 2.0,
) -> bytes:
    """The ``overlay`` as PNG bytes; with ``max_side`` > 0 a larger frame is first shrunk so its
    longer side is ``max_side`` (regions scaled with it), so text stays legible."""
    img = _rgb(frame)
    h, w = img.shape[:2]
    regs: list[Any] = list(regions)
    if max_side > 0 and max(h, w) > max_side:
        s = max_side / max(h, w)
        size = (max(1, round(w * s)), max(1, round(h * s)))
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        regs = [_scaled_region(r, s) for r in regs]
    out = overlay(img, heatmap, regs, vmax=vmax)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(out, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - OpenCV only fails on empty arrays
        raise ValueError("could not encode heatmap overlay PNG")
    return bytes(buf)


def _scaled_region(r: Any, s: float) -> dict[str, Any]:
    get = r.get if isinstance(r, dict) else (lambda k, d=None: getattr(r, k, d))
    keys = ("defect_class", "length_mm", "area_mm2", "length_px", "area_px", "severity")
    d = {k: get(k) for k in keys}
    d["box"] = tuple(round(float(v) * s) for v in get("box") or (0, 0, 0, 0))
    return d
