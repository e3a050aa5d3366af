"""Frame -> model input with OpenCV: decode safely, make 3-channel RGB, resize to the model's size.

Every frame of a batch gets the same shape so stations with different cameras batch together;
the heatmap is resized back to the frame's size so regions are in the camera's pixels (px/mm).
"""

from __future__ import annotations

import cv2
import numpy as np

from linesight.vision.data.imageio import decode_image


def decode(data: bytes, *, source: str) -> np.ndarray:
    """uint8 HxW or HxWx3 RGB; raises linesight.vision.data.imageio.ImageError on bad bytes."""
    return decode_image(data, source=source)


def to_model_input(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 HxWx3 RGB of `size` (height, width); INTER_AREA keeps fine defects when shrinking.

    A gray frame is resized before it gets its three channels: OpenCV resizes channels
    independently, so the result is the same, for a third of the work.
    """
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    h, w = size
    if image.shape[:2] != (h, w):
        shrinking = image.shape[0] > h or image.shape[1] > w
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    return np.ascontiguousarray(image, dtype=np.uint8)


def heatmap_to_frame(heatmap: np.ndarray, frame_hw: tuple[int, int]) -> np.ndarray:
    """Anomaly map at the frame's resolution (float32)."""
    hm: np.ndarray = np.asarray(heatmap, dtype=np.float32)
    if hm.ndim == 3:
        hm = hm[..., 0] if hm.shape[-1] == 1 else hm[0]
    if hm.shape != frame_hw:
        hm = cv2.resize(hm, (frame_hw[1], frame_hw[0]), interpolation=cv2.INTER_LINEAR)
    return hm


def heatmap_png(heatmap: np.ndarray, *, max_side: int = 0) -> bytes:
    """8-bit PNG of a normalised anomaly map: 0 -> 0, threshold (1.0) -> 127, >= 2.0 -> 255.

    With `max_side` > 0 a larger map is shrunk (INTER_AREA, aspect kept) until its longer side is
    `max_side` px: the map only carries the model's patch grid (1/8 of its input size), so a
    megapixel copy adds encoding time and bytes, not detail, for the reviewer who looks at it.
    """
    hm: np.ndarray = np.asarray(heatmap, dtype=np.float32)
    h, w = hm.shape[:2]
    if max_side > 0 and max(h, w) > max_side:
        scale = max_side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        hm = cv2.resize(np.nan_to_num(hm, nan=0.0), size, interpolation=cv2.INTER_AREA)
    # clip(x * 127.5, 0, 255) in one buffer: fmax sends NaN and -inf to 0, minimum +inf to 255
    with np.errstate(over="ignore"):
        scaled = np.multiply(hm, 127.5, dtype=np.float32)
    np.fmax(scaled, 0.0, out=scaled)
    np.minimum(scaled, 255.0, out=scaled)
    ok, buf = cv2.imencode(".png", scaled.astype(np.uint8))
    if not ok:  # pragma: no cover - OpenCV only fails on empty arrays
        raise ValueError("could not encode heatmap PNG")
    return bytes(buf)
