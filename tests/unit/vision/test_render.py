"""The readable heatmap: frame-sized, coloured where the model saw something, with a scale."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from linesight.vision.decide import Region
from linesight.vision.render import overlay, overlay_png, region_label


def _frame() -> np.ndarray:
    return np.full((240, 320), 120, np.uint8)  # a grey frame, larger than the 24x32 heatmap


def test_overlay_is_frame_sized_colours_the_spot_and_leaves_the_rest() -> None:
    heat = np.zeros((24, 32), np.float32)
    heat[10:14, 20:24] = 2.0
    out = overlay(_frame(), heat, scale_bar=False)
    assert out.shape == (240, 320, 3) and out.dtype == np.uint8
    assert (out[20, 20] == 120).all()  # clean area: the frame itself
    spot = out[120, 220].astype(int)
    assert spot[0] - spot[2] > 50  # at twice the threshold: red, not grey


def test_scale_bar_is_added_to_the_right() -> None:
    out = overlay(_frame(), np.zeros((24, 32), np.float32))
    assert out.shape[0] == 240 and out.shape[1] > 320
    bar = out[:, 322:332]
    top, bottom = bar[30, 5].astype(int), bar[210, 5].astype(int)
    assert top[0] > top[2] and bottom[2] > bottom[0]  # red at the top (high), blue at the bottom


def test_regions_are_outlined_and_labelled() -> None:
    r = Region(
        box=(100, 100, 180, 120),
        area_px=1600,
        peak=2.0,
        length_mm=8.0,
        area_mm2=16.0,
        defect_class="crack",
        severity="critical",
    )
    assert region_label(r) == "crack 8.0 mm, 16.0 mm2 [critical]"
    assert region_label({"box": (0, 0, 1, 1), "area_px": 5}) == "5 px2"
    plain = overlay(_frame(), np.zeros((24, 32), np.float32), scale_bar=False)
    drawn = overlay(_frame(), np.zeros((24, 32), np.float32), [r], scale_bar=False)
    assert (drawn[110, 100] != plain[110, 100]).any()  # the outline
    assert (drawn[80:100, 100:180] != plain[80:100, 100:180]).any()  # the label above it


def test_png_shrinks_large_frames_and_scales_regions() -> None:
    big = np.full((2000, 1000, 3), 90, np.uint8)
    png = overlay_png(
        big, np.ones((10, 5), np.float32), [{"box": (0, 0, 500, 500), "area_px": 9}], max_side=400
    )
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape[0] == 400 and img.shape[1] > 200
    with pytest.raises(ValueError, match="2-D"):
        overlay(_frame(), np.zeros((0, 3), np.float32))


def test_inference_heatmap_store_renders_the_decisions_regions() -> None:
    import asyncio

    from linesight.inference.store.objects import HeatmapStore

    class Decided:
        def __init__(self) -> None:
            self.regions = [{"box": (10, 10, 50, 30), "area_px": 800, "defect_class": "crack"}]

    async def ok() -> Decided:
        return Decided()

    async def failed() -> Decided:
        raise RuntimeError("decision failed")

    async def both() -> tuple[list[object], list[object]]:
        return await HeatmapStore.regions_of(asyncio.ensure_future(ok())), await HeatmapStore.regions_of(
            asyncio.ensure_future(failed())
        )

    regions, none = asyncio.run(both())
    assert len(regions) == 1 and none == []
    png = HeatmapStore.render(_frame(), np.zeros((24, 32), np.float32), regions, 0)
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape[0] == 240 and img.shape[1] > 320  # the frame's size, plus the scale
