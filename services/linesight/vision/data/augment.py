"""Defect-physics-preserving augmentation, chosen per class from the taxonomy.

Surface defects have no canonical orientation (full 360° rotation); directional ones (scoring,
grinding marks) only rotate within a small range; elastic deformation mimics surface curvature.
Photometric changes are mild brightness/contrast only: hue and saturation shifts would destroy the
reflectance cues (dark score marks under ring light) that identify a defect.
"""

from __future__ import annotations

import cv2
import numpy as np

from linesight.vision.taxonomy import Augmentation

__all__ = ["augment_image", "elastic"]


def elastic(
    image: np.ndarray, rng: np.random.Generator, alpha: float = 0.03, sigma: float = 0.04
) -> np.ndarray:
    """Smooth random displacement; alpha/sigma are fractions of the image side (mild by design)."""
    h, w = image.shape[:2]
    side = float(min(h, w))
    s = max(1.0, sigma * side)
    dx = cv2.GaussianBlur(rng.uniform(-1, 1, (h, w)).astype(np.float32), (0, 0), s)
    dy = cv2.GaussianBlur(rng.uniform(-1, 1, (h, w)).astype(np.float32), (0, 0), s)
    norm = max(float(np.abs(dx).max()), float(np.abs(dy).max()), 1e-6)
    gain = np.float32(alpha * side / norm)
    dx = (dx * gain).astype(np.float32)
    dy = (dy * gain).astype(np.float32)
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(image, gx + dx, gy + dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def augment_image(image: np.ndarray, policy: Augmentation, rng: np.random.Generator) -> np.ndarray:
    """One random augmented copy of a uint8 image under ``policy`` (same shape and dtype)."""
    out = image
    h, w = out.shape[:2]
    if policy.flips:
        if rng.random() < 0.5:
            out = out[:, ::-1]
        if rng.random() < 0.5:
            out = out[::-1, :]
    angle = 0.0
    if policy.rotation == "full":
        # right angles are exact (no interpolation blur); arbitrary angles fill corners by reflection
        angle = float(rng.integers(4) * 90) if rng.random() < 0.5 else float(rng.uniform(0.0, 360.0))
    elif policy.rotation == "limited":
        angle = float(rng.uniform(-policy.max_rotation_deg, policy.max_rotation_deg))
    if angle % 360.0:
        if angle % 90.0 == 0.0 and h == w:
            out = np.rot90(out, int(angle // 90))
        else:
            m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, 1.0)
            out = cv2.warpAffine(
                np.ascontiguousarray(out),
                m,
                (w, h),
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_REFLECT_101,
            )
    out = np.ascontiguousarray(out)
    if policy.elastic and rng.random() < 0.5:
        out = elastic(out, rng)
    if policy.brightness > 0 or policy.contrast > 0:
        c = 1.0 + rng.uniform(-policy.contrast, policy.contrast)
        b = rng.uniform(-policy.brightness, policy.brightness) * 255.0
        f = out.astype(np.float32)
        mean = float(f.mean())
        out = np.clip((f - mean) * c + mean + b, 0, 255).astype(np.uint8)
    return out
