"""Fitting the segmentation head (`segmentation.SegmentationHead`): training-time only, with
scikit-learn, kept apart so the export path (and the Triton image) never imports it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from linesight.vision.components.segmentation import (
    BACKGROUND,
    POSITIVE,
    THRESHOLD,
    SegmentationHead,
    patch_features,
)


def fit_segmentation(
    patches: np.ndarray,
    patch_scores: np.ndarray,
    labels: Sequence[str],
    coverage: Sequence[np.ndarray | None],
    *,
    seed: int = 0,
    c: float = 0.1,
    positive: float = POSITIVE,
    negative: float = 0.02,
    threshold: float = THRESHOLD,
    max_background: int = 30000,
    good: str = "good",
) -> SegmentationHead | None:
    """Fit the head on images whose pixels are known: defect images with geometry (``coverage``
    per patch) and good images (all background). A patch is the image's class when at least
    ``positive`` of it is covered, background below ``negative``; the edge in between is left
    out. Background rows are subsampled to ``max_background``; classes are balanced by weight.
    ``threshold`` is the defect probability that becomes 1.0 on the map (where regions start).
    None when no class has geometry.
    """
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    classes = sorted(
        {lab for lab, cov in zip(labels, coverage, strict=True) if lab != good and cov is not None}
    )
    if not classes:
        return None
    order = [BACKGROUND, *classes]
    rows_x: list[np.ndarray] = []
    rows_y: list[np.ndarray] = []
    bg_x: list[np.ndarray] = []
    for i, (lab, cov) in enumerate(zip(labels, coverage, strict=True)):
        if lab == good:
            f = patch_features(patches[i : i + 1], patch_scores[i : i + 1])[0]
            bg_x.append(f)
        elif cov is not None:
            f = patch_features(patches[i : i + 1], patch_scores[i : i + 1])[0]
            pos = cov >= positive
            rows_x.append(f[pos])
            rows_y.append(np.full(int(pos.sum()), order.index(lab), np.int64))
            bg_x.append(f[cov < negative])
    bg = np.concatenate(bg_x) if bg_x else np.zeros((0, patches.shape[-1] * 2 + 1), np.float32)
    if len(bg) > max_background:
        bg = bg[rng.choice(len(bg), max_background, replace=False)]
    x = np.concatenate([bg, *rows_x]).astype(np.float32)
    y = np.concatenate([np.zeros(len(bg), np.int64), *rows_y])
    present = np.unique(y)
    if len(present) < 2:
        return None
    mean = x.mean(axis=0)
    scale = x.std(axis=0) + 1e-6
    xs = (x - mean) / scale
    lr = LogisticRegression(C=c, class_weight="balanced", max_iter=300, random_state=seed)
    lr.fit(xs, y)
    weight = np.zeros((len(order), x.shape[1]), np.float32)
    bias = np.full(len(order), -30.0, np.float32)  # a class without rows never wins
    if len(present) == 2:  # binary: sklearn keeps one row (the positive class's logit)
        weight[present[1]] = lr.coef_[0]
        bias[present[1]] = lr.intercept_[0]
        bias[present[0]] = 0.0
    else:
        weight[present] = lr.coef_
        bias[present] = lr.intercept_
    return SegmentationHead(
        order, mean.astype(np.float32), scale.astype(np.float32), weight, bias, float(threshold)
    )
