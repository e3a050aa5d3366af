"""Frame -> model input with OpenCV: decode safely, make 3-channel RGB, resize to the model's size.

Every frame of a batch gets the same shape so stations with different cameras batch together;
the heatmap is resized back to the frame's size so regions are in the camera's pixels (px/mm).
"""

from __future__ import annotations

import cv2
import numpy as np

from linesight.vision.imageio import decode_image


def decode(data: bytes, *, source: str) -> np.ndarray:
    """uint8 HxW or HxWx3 RGB; raises linesight.vision.imageio.ImageError on bad bytes."""
    return decode_image(data, source=source)


def to_model_input(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 HxWx3 RGB of `size` (height, width); INTER_AREA keeps fine defects when shrinking."""
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    elif image.ndim == 3 and image.shape[2] == 1:
        image = cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2RGB)
    h, w = size
    if image.shape[:2] != (h, w):
        shrinking = image.shape[0] > h or image.shape[1] > w
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return np.ascontiguousarray(image, dtype=np.uint8)


def heatmap_to_frame(heatmap: np.ndarray, frame_hw: tuple[int, int]) -> np.ndarray:
    """Anomaly map at the frame's resolution (float32)."""
    hm: np.ndarray = np.asarray(heatmap, dtype=np.float32)
    if hm.ndim == 3:
        hm = hm[..., 0] if hm.shape[-1] == 1 else hm[0]
    if hm.shape != frame_hw:
        hm = cv2.resize(hm, (frame_hw[1], frame_hw[0]), interpolation=cv2.INTER_LINEAR)
    return hm


def heatmap_png(heatmap: np.ndarray) -> bytes:
    """8-bit PNG of a normalised anomaly map: 0 -> 0, threshold (1.0) -> 128, >= 2.0 -> 255."""
    scaled = np.clip(np.nan_to_num(heatmap, nan=0.0) * 127.5, 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".png", scaled)
    if not ok:  # pragma: no cover - OpenCV only fails on empty arrays
        raise ValueError("could not encode heatmap PNG")
    return bytes(buf)
