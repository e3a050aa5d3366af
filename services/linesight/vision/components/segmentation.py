"""Supervised localisation: a light per-patch segmentation head on the frozen trunk's features,
fused with PatchCore's anomaly map.

Where labels carry geometry (masks, boxes, the labeling UI's polygons) a class's pixels are
known, so the map need not guess from "unlike the good images" alone. The head is a
multinomial logistic regression per patch of the stride-8 grid (a few thousand parameters):
input the PatchCore patch embedding, that embedding less the image's mean embedding (the
image's own texture and lighting taken out, so a session's brighter tiles do not light up),
and PatchCore's own score of the patch (log scale), so the head learns how far to trust the
anomaly score. Output: background or one of the classes trained with geometry.

Fusion: for a class trained with geometry the map is the head's defect probability; for a
class without geometry (no masks or boxes: the head never saw it) PatchCore's map stays in,
weighted by the image's probability of such a class. The map is in the anomaly map's units
(1.0 = threshold), so ``find_regions`` and the readable overlay need no change.

Numpy only at prediction (the exported model runs it without torch); fitting uses scikit-learn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "BACKGROUND",
    "SegmentationHead",
    "box_mask",
    "patch_coverage",
]

BACKGROUND = "_background"
_ARRAYS = ("mean", "scale", "weight", "bias")
# Chosen leave-one-session-out on magnetic tile (README, localisation): a patch a tenth covered
# is the class (a hairline crack covers little of any 8-px patch; at 0.3 crack AUPRO was ~0.8),
# and the class-balanced head's probability is cut high so a region is the defect, not its halo.
POSITIVE = 0.1
THRESHOLD = 0.85


@dataclass
class SegmentationHead:
    """Per-patch classes ``classes`` (``classes[0]`` is ``BACKGROUND``) from patch features."""

    classes: list[str]
    mean: np.ndarray  # (F,) feature standardisation
    scale: np.ndarray  # (F,)
    weight: np.ndarray  # (K, F)
    bias: np.ndarray  # (K,)
    threshold: float = 0.5  # defect probability that maps to 1.0 (the anomaly map's threshold)

    @property
    def geometry_classes(self) -> list[str]:
        return self.classes[1:]

    @property
    def n_parameters(self) -> int:
        return int(self.weight.size + self.bias.size)

    def proba(self, patches: np.ndarray, patch_scores: np.ndarray) -> np.ndarray:
        """[B, N, K] class probabilities per patch; ``patch_scores`` in threshold units."""
        # The standardisation and the [x, x - mean(x), s] concatenation folded into the weights:
        # one [N, C] x [C, K] product per image instead of building [N, 2C + 1] features.
        x = np.asarray(patches, np.float32)
        c = x.shape[-1]
        w = self.weight / self.scale  # [K, F]
        b = self.bias - w @ self.mean  # [K]
        w_abs, w_rel, w_s = w[:, :c], w[:, c : 2 * c], w[:, 2 * c]
        s = np.log1p(np.maximum(np.asarray(patch_scores, np.float32), 0.0))[..., None]
        z = x @ (w_abs + w_rel).T - x.mean(axis=1, keepdims=True) @ w_rel.T + s * w_s + b
        z -= z.max(axis=-1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=-1, keepdims=True)
        return z

    def fused(
        self,
        patches: np.ndarray,
        patch_scores: np.ndarray,
        class_probs: Sequence[Mapping[str, float]] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(heat [B, N] in threshold units, class probabilities [B, N, K]).

        ``class_probs`` (the image head's, per image) weights PatchCore back in for the defect
        mass of classes the segmentation head was not trained on."""
        p = self.proba(patches, patch_scores)
        seg = (1.0 - p[..., 0]) / self.threshold
        if class_probs is not None:
            known = set(self.classes[1:]) | {"good"}
            w = np.array(
                [min(1.0, sum(v for c, v in cp.items() if c not in known)) for cp in class_probs],
                dtype=np.float32,
            )[:, None]
            seg = seg + w * np.maximum(patch_scores - seg, 0.0)
        return seg.astype(np.float32), p

    # -- persistence (plain arrays, no pickles) -------------------------------------------------
    def arrays(self, prefix: str = "segmentation.") -> dict[str, np.ndarray]:
        return {prefix + k: np.asarray(getattr(self, k), np.float32) for k in _ARRAYS}

    def meta(self) -> dict[str, object]:
        return {"classes": list(self.classes), "threshold": float(self.threshold)}

    @classmethod
    def from_arrays(
        cls, meta: Mapping[str, object], arrays: Mapping[str, np.ndarray], prefix: str = "segmentation."
    ) -> SegmentationHead:
        classes = [str(c) for c in meta["classes"]]  # type: ignore[attr-defined]
        mean, scale, weight, bias = (np.asarray(arrays[prefix + k], np.float32) for k in _ARRAYS)
        head = cls(classes, mean, scale, weight, bias, float(meta.get("threshold", 0.5)))  # type: ignore[arg-type]
        if head.weight.shape != (len(classes), head.mean.shape[0]):
            raise ValueError(
                f"segmentation weight {head.weight.shape} does not match {len(classes)} classes x "
                f"{head.mean.shape[0]} features"
            )
        return head


def patch_features(patches: np.ndarray, patch_scores: np.ndarray) -> np.ndarray:
    """[B, N, 2C + 1]: embedding, embedding less the image's mean, log(1 + PatchCore score)."""
    x = np.asarray(patches, np.float32)
    centred = x - x.mean(axis=1, keepdims=True)
    s = np.log1p(np.maximum(np.asarray(patch_scores, np.float32), 0.0))[..., None]
    return np.concatenate([x, centred, s], axis=-1)


def box_mask(boxes: Sequence[Sequence[object]], shape: tuple[int, int]) -> np.ndarray:
    """Boolean mask of ``[class, x0, y0, x1, y1]`` boxes (pixels, end exclusive) on ``shape``."""
    m = np.zeros(shape, bool)
    for b in boxes:
        x0, y0, x1, y1 = (int(v) for v in b[1:5])  # type: ignore[call-overload]
        m[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)] = True
    return m


def patch_coverage(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Fraction of each patch-grid cell the mask covers, [gh * gw] (area resampling)."""
    gh, gw = grid
    m = np.asarray(mask, np.float32)
    return np.asarray(cv2.resize(m, (gw, gh), interpolation=cv2.INTER_AREA), np.float32).ravel()
