"""Numpy-only pieces shared by the torch model and the exported (onnxruntime) model.

Keeping pre-processing and score post-processing in one torch-free module is what makes the
exported artifact give the same ``Prediction`` as the checkpoint (anomalib's issues show what
happens when the two paths drift apart).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

if TYPE_CHECKING:
    from linesight.vision.components.novelty import NoveltyReference
    from linesight.vision.components.patchcore import PatchCore

__all__ = [
    "GOOD",
    "InputError",
    "Prediction",
    "check_images",
    "preprocess",
    "softmax",
]

GOOD = "good"


class InputError(ValueError):
    """Images or labels handed to the model are unusable (empty, wrong dtype, wrong shape)."""


@dataclass
class Prediction:
    """What the model says about one image.

    ``anomaly_score`` is PatchCore's image score divided by its calibrated threshold (1.0 = at the
    threshold). ``class_probs`` covers the head's classes (``good`` included). Classes with fewer
    than ``min_examples`` labels are listed in ``provisional_classes``: their probability is a
    suggestion for the reviewer, never an automatic verdict.
    ``heatmap`` is float32 at the input image size, in the same units as ``anomaly_score``.
    ``defect_probability`` is the calibrated probability that the part is defective; the model's
    operating point is ``defect_threshold`` (``is_defect`` compares the two).
    """

    anomaly_score: float
    class_probs: dict[str, float]
    heatmap: np.ndarray
    defect_probability: float
    defect_threshold: float = 0.5
    top_class: str = GOOD
    provisional_classes: tuple[str, ...] = ()  # advisory classes (< min_examples): never automatic
    # labelled training images each provisional class had, and what an automatic class needs (0:
    # unknown, e.g. an export written before they were recorded): the review reason quotes both
    provisional_examples: dict[str, int] = field(default_factory=dict)
    min_examples: int = 0
    # distance of the frame's pooled descriptor to the training set over the distance fitted on
    # held-out training good images (1.0 = that threshold; components/novelty.py); NaN when the
    # model has no novelty reference (e.g. an export written before it was recorded)
    novelty: float = float("nan")
    # confidence bands fitted for the product (auto pass, auto reject; None: the taxonomy's)
    review_band: tuple[float, float] | None = None
    # class of each heatmap pixel's most likely defect from the segmentation head, at the patch
    # grid ([gh, gw] indices into ``segmentation_classes``, 0 = background); None without one
    segmentation: np.ndarray | None = field(default=None, repr=False)
    segmentation_classes: tuple[str, ...] = ()

    @property
    def is_defect(self) -> bool:
        """True when the defect probability is at or above the model's operating point."""
        return self.defect_probability >= self.defect_threshold


def check_images(images: Sequence[np.ndarray], *, what: str = "images") -> list[np.ndarray]:
    """Validate a batch of decoded images: uint8 (or uint16) HxW, HxWx1, HxWx3 or HxWx4."""
    if isinstance(images, np.ndarray) and images.ndim in (2, 3) and images.dtype != object:
        raise InputError(f"{what}: pass a list of images, not a single array of shape {images.shape}")
    try:
        items = list(images)
    except TypeError as exc:
        raise InputError(f"{what}: expected a sequence of numpy images, got {type(images).__name__}") from exc
    if not items:
        raise InputError(f"{what}: empty list")
    out: list[np.ndarray] = []
    for i, img in enumerate(items):
        if not isinstance(img, np.ndarray):
            raise InputError(f"{what}[{i}]: expected numpy array, got {type(img).__name__}")
        if img.dtype == np.uint16:
            img = (img >> 8).astype(np.uint8)
        elif img.dtype != np.uint8:
            raise InputError(f"{what}[{i}]: dtype {img.dtype} not supported (decode to uint8 first)")
        if img.ndim == 3 and img.shape[2] == 1:
            img = img[:, :, 0]
        if img.ndim == 3 and img.shape[2] == 4:
            img = img[:, :, :3]
        if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
            raise InputError(f"{what}[{i}]: shape {img.shape} is not HxW or HxWx3")
        if min(img.shape[:2]) < 8:
            raise InputError(f"{what}[{i}]: image {img.shape[:2]} too small (min side 8 px)")
        out.append(img)
    return out


def preprocess(images: Sequence[np.ndarray], size: tuple[int, int], mean: float, std: float) -> np.ndarray:
    """Resize to the network input (h, w), gray -> 3 channels, normalise; returns float32 NCHW."""
    h, w = size
    batch = np.empty((len(images), 3, h, w), dtype=np.float32)
    for i, img in enumerate(images):
        r = img
        if img.shape[:2] != (h, w):  # prediction passes frames already resized
            interp = cv2.INTER_AREA if img.shape[0] > h and img.shape[1] > w else cv2.INTER_LINEAR
            r = cv2.resize(img, (w, h), interpolation=interp)
        batch[i] = r[None] if r.ndim == 2 else r.transpose(2, 0, 1)  # gray: broadcast to 3 planes
    batch *= 1.0 / (255.0 * std)
    batch -= mean / std
    return batch


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of logits / temperature (float64 for stable calibration)."""
    z = np.asarray(logits, dtype=np.float64) / max(temperature, 1e-6)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class ScoringState:
    """Everything after the network that turns raw outputs into ``Prediction``s (saved as data)."""

    head_classes: list[str]  # network logit order; may contain the anomaly-only bucket
    temperature: float
    anomaly_threshold: float  # raw PatchCore image score that maps to anomaly_score 1.0
    defect_threshold: float  # operating point on defect_probability
    input_size: tuple[int, int]  # network input (h, w)
    grid: tuple[int, int]  # patch grid (h/8, w/8)
    sigma: float
    other_class: str = "_other_defect"
    provisional: list[str] = field(default_factory=list)  # head outputs of anomaly-only classes
    provisional_examples: dict[str, int] = field(default_factory=dict)  # their labelled training images
    min_examples: int = 0  # labels a class needs for automatic decisions (0: not recorded)
    review_band: tuple[float, float] | None = None  # fitted (auto pass, auto reject) bands
    # per-patch segmentation head (components/segmentation.py); saved as arrays, not in JSON
    segmentation: Any = None


def predict_chunk(
    state: ScoringState,
    patchcore: PatchCore,
    novelty: NoveltyReference | None,
    shapes: Sequence[tuple[int, ...]],
    outputs: Sequence[np.ndarray],
) -> list[Prediction]:
    """Predictions from the network's (patch embeddings, pooled descriptors, head logits) for one
    chunk: PatchCore, the heads and novelty, the same for the engine and the exported artifact."""
    patches, pooled, logits = outputs
    patch_scores, image_scores = patchcore.score(patches)
    preds = assemble_predictions(state, patch_scores, image_scores, logits, shapes, patches=patches)
    if novelty is not None:
        for pr, v in zip(preds, novelty.score(pooled), strict=True):
            pr.novelty = float(v)
    return preds


def assemble_predictions(
    state: ScoringState,
    patch_scores: np.ndarray,
    image_scores: np.ndarray,
    logits: np.ndarray,
    shapes: Sequence[tuple[int, ...]],
    patches: np.ndarray | None = None,
) -> list[Prediction]:
    """Turn PatchCore scores and head logits into calibrated ``Prediction``s. With ``patches``
    and a segmentation head in ``state`` the heatmap is the fused supervised map."""
    from linesight.vision.components.patchcore import anomaly_map

    thr = max(float(state.anomaly_threshold), 1e-12)
    has_head = len(state.head_classes) > 1
    probs = softmax(logits, state.temperature) if has_head else None
    seg = state.segmentation if patches is not None else None
    heat_scores, heat_scale, seg_cls = patch_scores, thr, None
    if seg is not None and patches is not None:
        cps = None
        if probs is not None:
            cps = [{c: float(p[k]) for k, c in enumerate(state.head_classes)} for p in probs]
        heat_scores, seg_p = seg.fused(patches, patch_scores / thr, cps)
        heat_scale = 1.0
        seg_cls = np.argmax(seg_p[..., 1:], axis=-1) + 1
    out: list[Prediction] = []
    for i, shape in enumerate(shapes):
        score = float(image_scores[i]) / thr
        heat = anomaly_map(
            heat_scores[i],
            state.grid,
            (int(shape[0]), int(shape[1])),
            state.input_size,
            state.sigma,
            heat_scale,
        )
        if probs is not None:
            p = probs[i]
            class_probs = {c: float(p[k]) for k, c in enumerate(state.head_classes) if c != state.other_class}
            p_good = class_probs.get(GOOD, 0.0)
            defect_p = float(1.0 - p_good)
        else:
            # PatchCore-only model (no labelled defects yet): a logistic map with 0.5 at threshold
            s4 = max(score, 0.0) ** 4
            defect_p = s4 / (1.0 + s4)
            class_probs = {GOOD: 1.0 - defect_p}
        top = max(class_probs, key=lambda c: class_probs[c])
        out.append(
            Prediction(
                anomaly_score=score,
                class_probs=class_probs,
                heatmap=heat,
                defect_probability=defect_p,
                defect_threshold=float(state.defect_threshold),
                top_class=top,
                provisional_classes=tuple(state.provisional),
                provisional_examples=dict(state.provisional_examples),
                min_examples=int(state.min_examples),
                review_band=state.review_band,
                segmentation=None if seg_cls is None else seg_cls[i].reshape(state.grid),
                segmentation_classes=tuple(seg.classes) if seg is not None else (),
            )
        )
    return out
