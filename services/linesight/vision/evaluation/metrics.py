"""Evaluation metrics for detection (good vs defect), classification and localisation.

Conventions: a detection *score* is higher for "more defective"; an image is rejected when
``score >= threshold``. A false reject is a good image rejected; an escape is a defect accepted.
Everything here is model-agnostic (arrays in, numbers out) so the CLI, the training service and
the tests share one definition of each figure. Cross-validation takes a ``fit_predict`` callable.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
from scipy import ndimage
from sklearn.metrics import roc_auc_score

__all__ = [
    "CVResult",
    "aupro",
    "classification_metrics",
    "cross_validate",
    "cv_folds",
    "detection_metrics",
    "expected_calibration_error",
    "image_auroc",
    "localization_metrics",
    "pixel_auroc",
    "pr_points",
    "rates_at_threshold",
    "recall_at_frr",
    "region_iou",
    "roc_points",
    "sample_mask",
    "top_confusions",
]

ArrayLike = Sequence[float] | npt.NDArray[Any]


def _arrays(is_defect: Sequence[bool] | npt.NDArray[Any], scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(is_defect, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D and equally long, got {y.shape} and {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinity")
    return y, s


def image_auroc(is_defect: Sequence[bool] | npt.NDArray[Any], scores: ArrayLike) -> float | None:
    """ROC AUC of good-vs-defect; None when one of the two kinds is absent."""
    y, s = _arrays(is_defect, scores)
    if y.all() or not y.any():
        return None
    return float(roc_auc_score(y, s))


def recall_at_frr(
    is_defect: Sequence[bool] | npt.NDArray[Any], scores: ArrayLike, frr: float = 0.02
) -> tuple[float | None, float | None]:
    """Defect recall at the lowest threshold that rejects at most `frr` of the good images.

    Returns (recall, threshold) with reject = ``score >= threshold``; (None, None) without goods
    or defects. With n good images at most floor(frr * n) of them are rejected (ties count).
    """
    y, s = _arrays(is_defect, scores)
    good, bad = np.sort(s[~y])[::-1], s[y]
    if len(good) == 0 or len(bad) == 0:
        return None, None
    k = math.floor(frr * len(good) + 1e-9)
    threshold = float(np.nextafter(good[k], np.inf)) if k < len(good) else float(good[-1])
    return float(np.mean(bad >= threshold)), threshold


def rates_at_threshold(
    is_defect: Sequence[bool] | npt.NDArray[Any], scores: ArrayLike, threshold: float
) -> tuple[float | None, float | None]:
    """(false_reject_rate, escape_rate) at `threshold`; None for a side with no images."""
    y, s = _arrays(is_defect, scores)
    reject = s >= threshold
    frr = float(reject[~y].mean()) if (~y).any() else None
    esc = float((~reject[y]).mean()) if y.any() else None
    return frr, esc


def detection_metrics(
    is_defect: Sequence[bool] | npt.NDArray[Any],
    scores: ArrayLike,
    threshold: float | None,
    *,
    frr_target: float = 0.02,
) -> dict[str, float | None]:
    """The JSON `detection` block; all None when good or defect images are missing."""
    y, s = _arrays(is_defect, scores)
    out: dict[str, float | None] = dict.fromkeys(
        (
            "image_auroc",
            "recall_at_frr_2pct",
            "threshold_at_frr_2pct",
            "threshold",
            "false_reject_rate",
            "escape_rate",
        )
    )
    if y.all() or not y.any():
        return out
    out["image_auroc"] = image_auroc(y, s)
    out["recall_at_frr_2pct"], out["threshold_at_frr_2pct"] = recall_at_frr(y, s, frr_target)
    if threshold is not None:
        out["threshold"] = float(threshold)
        out["false_reject_rate"], out["escape_rate"] = rates_at_threshold(y, s, threshold)
    return out


def roc_points(
    is_defect: Sequence[bool] | npt.NDArray[Any], scores: ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) for plotting."""
    from sklearn.metrics import roc_curve

    y, s = _arrays(is_defect, scores)
    fpr, tpr, _ = roc_curve(y, s)
    return fpr, tpr


def pr_points(
    is_defect: Sequence[bool] | npt.NDArray[Any], scores: ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) for plotting, defect = positive."""
    from sklearn.metrics import precision_recall_curve

    y, s = _arrays(is_defect, scores)
    precision, recall, _ = precision_recall_curve(y, s)
    return recall, precision


# --- classification --------------------------------------------------------------------------


def top_confusions(matrix: np.ndarray, labels: Sequence[str], k: int = 5) -> list[tuple[str, str, int]]:
    """Most frequent (true, predicted) off-diagonal pairs: where to look and what to relabel."""
    pairs = [
        (labels[i], labels[j], int(matrix[i, j]))
        for i in range(len(labels))
        for j in range(len(labels))
        if i != j and matrix[i, j] > 0
    ]
    return sorted(pairs, key=lambda p: (-p[2], p[0], p[1]))[:k]


def classification_metrics(
    y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str] | None = None
) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support, confusion matrix and top confusions.

    `labels` fixes the class order (and the classes that count); predictions outside it (e.g.
    "good" or "review" for a defect image) are wrong and appear as an extra column.
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    classes = list(labels) if labels is not None else sorted(set(y_true))
    extra = sorted({p for p in y_pred if p not in classes})
    cols = classes + extra
    index = {c: i for i, c in enumerate(cols)}
    m = np.zeros((len(cols), len(cols)), dtype=np.int64)
    for t, p in zip(y_true, y_pred, strict=True):
        if t not in index:
            raise ValueError(f"true label {t!r} not among the evaluated classes {classes}")
        m[index[t], index[p]] += 1
    per_class: dict[str, dict[str, float | int | None]] = {}
    for c in classes:
        i = index[c]
        tp, support, predicted = int(m[i, i]), int(m[i].sum()), int(m[:, i].sum())
        precision = tp / predicted if predicted else None
        recall = tp / support if support else None
        f1 = (
            2 * precision * recall / (precision + recall)
            if precision is not None and recall is not None and precision + recall > 0
            else (0.0 if support else None)
        )
        per_class[c] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    n = len(y_true)
    f1s = [v["f1"] for v in per_class.values() if v["f1"] is not None]
    return {
        "accuracy": float(np.trace(m)) / n if n else None,
        "macro_f1": float(np.mean(f1s)) if f1s else None,
        "per_class": per_class,
        "labels": cols,
        "confusion_matrix": m.tolist(),
        "top_confusions": [list(p) for p in top_confusions(m, cols)],
        "n": n,
    }


def expected_calibration_error(
    confidences: ArrayLike, correct: Sequence[bool] | npt.NDArray[Any], n_bins: int = 15
) -> float:
    """ECE: support-weighted |accuracy - mean confidence| over equal-width confidence bins."""
    c = np.asarray(confidences, dtype=np.float64)
    ok = np.asarray(correct, dtype=np.float64)
    if c.shape != ok.shape or c.ndim != 1:
        raise ValueError("confidences and correctness must be 1-D and equally long")
    if len(c) == 0:
        raise ValueError("no predictions to calibrate")
    if np.any((c < 0) | (c > 1)):
        raise ValueError("confidences must lie in [0, 1]")
    bins = np.minimum((c * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            ece += sel.mean() * abs(ok[sel].mean() - c[sel].mean())
    return float(ece)


# --- localisation ----------------------------------------------------------------------------


def _prepare_maps(
    masks: Sequence[np.ndarray], maps: Sequence[np.ndarray], max_side: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pair masks (bool) with heatmaps at a common, bounded resolution (keeps memory small)."""
    if len(masks) != len(maps):
        raise ValueError(f"{len(masks)} masks but {len(maps)} heatmaps")
    out = []
    for m, h in zip(masks, maps, strict=True):
        m = np.asarray(m, dtype=bool)
        h = np.asarray(h, dtype=np.float32)
        if m.shape != h.shape:
            h = cv2.resize(h, (m.shape[1], m.shape[0]), interpolation=cv2.INTER_LINEAR)
        scale = max_side / max(m.shape)
        if scale < 1:
            size = (max(1, round(m.shape[1] * scale)), max(1, round(m.shape[0] * scale)))
            h = cv2.resize(h, size, interpolation=cv2.INTER_AREA)
            m = cv2.resize(m.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
        out.append((m, h))
    return out


def pixel_auroc(
    masks: Sequence[np.ndarray], maps: Sequence[np.ndarray], *, max_side: int = 256
) -> float | None:
    """Pixel-level ROC AUC over all images (good images contribute negatives only)."""
    pairs = _prepare_maps(masks, maps, max_side)
    if not pairs:
        return None
    y = np.concatenate([m.ravel() for m, _ in pairs])
    s = np.concatenate([h.ravel() for _, h in pairs])
    if y.all() or not y.any():
        return None
    return float(roc_auc_score(y, s))


def aupro(
    masks: Sequence[np.ndarray], maps: Sequence[np.ndarray], *, fpr_limit: float = 0.3, max_side: int = 256
) -> float | None:
    """Area under the per-region-overlap curve up to `fpr_limit` FPR, normalised to [0, 1].

    Standard (MVTec AD) definition: PRO(t) is the mean over ground-truth connected components of
    the fraction of each component's pixels with score >= t; FPR(t) is over all defect-free pixels.
    Computed exactly over every distinct score (one sort, cumulative sums), then integrated with
    the trapezoid rule up to `fpr_limit` (linear interpolation at the limit).
    """
    pairs = _prepare_maps(masks, maps, max_side)
    scores, pro_w, fpr_w = [], [], []
    n_regions = 0
    n_neg = 0
    for m, h in pairs:
        labels, n = ndimage.label(m, structure=np.ones((3, 3)))
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        lab = labels.ravel()
        w = np.zeros(lab.shape, dtype=np.float64)
        w[lab > 0] = 1.0 / sizes[lab[lab > 0]]
        scores.append(h.ravel())
        pro_w.append(w)
        fpr_w.append((lab == 0).astype(np.float64))
        n_regions += n
        n_neg += int((lab == 0).sum())
    if n_regions == 0 or n_neg == 0:
        return None
    s = np.concatenate(scores)
    order = np.argsort(-s, kind="stable")
    s = s[order]
    pro = np.cumsum(np.concatenate(pro_w)[order]) / n_regions
    fpr = np.cumsum(np.concatenate(fpr_w)[order]) / n_neg
    last = np.r_[s[1:] != s[:-1], True]  # one point per distinct score (ties move together)
    fpr = np.r_[0.0, fpr[last]]
    pro = np.r_[0.0, pro[last]]
    if fpr[-1] < fpr_limit:  # pragma: no cover - all scores reached; curve ends at (1, 1)
        fpr, pro = np.r_[fpr, 1.0], np.r_[pro, 1.0]
    i = int(np.searchsorted(fpr, fpr_limit, side="right"))
    f0, f1, p0, p1 = fpr[i - 1], fpr[i], pro[i - 1], pro[i]
    p_lim = p0 + (p1 - p0) * (fpr_limit - f0) / (f1 - f0) if f1 > f0 else p1
    xs, ys = np.r_[fpr[:i], fpr_limit], np.r_[pro[:i], p_lim]
    return float(np.trapz(ys, xs) / fpr_limit)


# --- cross-validation ------------------------------------------------------------------------


def cv_folds(
    labels: Sequence[str],
    groups: Sequence[str],
    *,
    small_class: int = 60,
    n_splits: int = 5,
    seed: int = 0,
    max_folds: int | None = None,
) -> list[tuple[list[int], list[int]]]:
    """Group-aware stratified folds, with leave-one-out for small classes.

    Groups (parts) are never split. If every class has at least `small_class` examples this is
    stratified group k-fold (`n_splits`). Otherwise the number of folds equals the largest
    group count among the small classes, so each small class is left out one group at a time
    (stratified leave-one-out) while larger classes are spread evenly over the same folds.
    `max_folds` caps the cost (then small classes are k-fold with that many folds).
    Classes with a single group cannot be tested: they stay in every training side.
    """
    if len(labels) != len(groups):
        raise ValueError("labels and groups must be equally long")
    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    group_label: dict[str, str] = {}
    for g, idx in members.items():
        counts = Counter(labels[i] for i in idx)
        group_label[g] = max(sorted(counts), key=lambda c: counts[c])
    class_counts = Counter(labels)
    by_class: dict[str, list[str]] = defaultdict(list)
    for g in sorted(members):
        by_class[group_label[g]].append(g)
    small = [c for c, n in class_counts.items() if n < small_class]
    n_folds = max([len(by_class[c]) for c in small if len(by_class[c]) > 1], default=n_splits)
    n_folds = max(n_folds, 2) if small else n_splits
    if max_folds is not None:
        n_folds = max(2, min(n_folds, max_folds))
    rng = random.Random(seed)
    fold_of: dict[str, int] = {}
    offset = 0
    for c in sorted(by_class):
        gs = by_class[c]
        if len(gs) < 2:
            continue  # untestable: always trained on
        rng.shuffle(gs)
        for k, g in enumerate(gs):
            fold_of[g] = (offset + k) % n_folds
        offset += len(gs)  # rotate so fold sizes stay balanced across classes
    folds = []
    for f in range(n_folds):
        test = sorted(i for g, idx in members.items() if fold_of.get(g) == f for i in idx)
        if test:
            test_set = set(test)
            folds.append(([i for i in range(len(labels)) if i not in test_set], test))
    return folds


@dataclass
class CVResult:
    """Pooled out-of-fold predictions and their metrics."""

    predictions: dict[int, str]
    folds: int
    metrics: dict[str, Any] = field(default_factory=dict)
    untested_classes: list[str] = field(default_factory=list)


def cross_validate(
    labels: Sequence[str],
    groups: Sequence[str],
    fit_predict: Callable[[list[int], list[int]], Sequence[str]],
    *,
    small_class: int = 60,
    n_splits: int = 5,
    seed: int = 0,
    max_folds: int | None = None,
) -> CVResult:
    """Run `fit_predict(train_idx, test_idx) -> predicted labels for test_idx` over `cv_folds`."""
    folds = cv_folds(
        labels, groups, small_class=small_class, n_splits=n_splits, seed=seed, max_folds=max_folds
    )
    preds: dict[int, str] = {}
    for train_idx, test_idx in folds:
        out = list(fit_predict(train_idx, test_idx))
        if len(out) != len(test_idx):
            raise ValueError(f"fit_predict returned {len(out)} predictions for {len(test_idx)} test items")
        preds.update(zip(test_idx, out, strict=True))
    idx = sorted(preds)
    tested = sorted({labels[i] for i in idx})
    untested = sorted(set(labels) - set(tested))
    metrics = classification_metrics([labels[i] for i in idx], [preds[i] for i in idx], tested)
    return CVResult(preds, len(folds), metrics, untested)


def region_iou(
    masks: Sequence[np.ndarray], maps: Sequence[np.ndarray], *, threshold: float = 1.0, max_side: int = 256
) -> float | None:
    """Mean over defect images (a non-empty mask) of the IoU between the true defect pixels and
    the map's region (``map >= threshold``: what ``find_regions`` measures severity on)."""
    pairs = _prepare_maps(masks, maps, max_side)
    ious = []
    for m, h in pairs:
        if not m.any():
            continue
        pred = h >= threshold
        ious.append(float((m & pred).sum()) / float((m | pred).sum()))
    return float(np.mean(ious)) if ious else None


def localization_metrics(
    masks: Sequence[np.ndarray],
    maps: Sequence[np.ndarray],
    labels: Sequence[str],
    *,
    good: str = "good",
    threshold: float = 1.0,
) -> dict[str, Any]:
    """Pixel AUROC, AUPRO and region IoU over all images and per defect class (each class's
    images together with every good image, whose pixels are all defect-free)."""
    if not (len(masks) == len(maps) == len(labels)):
        raise ValueError(f"{len(masks)} masks, {len(maps)} maps, {len(labels)} labels")

    def figures(idx: Sequence[int]) -> dict[str, Any]:
        ms, hs = [masks[i] for i in idx], [maps[i] for i in idx]
        return {
            "pixel_auroc": pixel_auroc(ms, hs),
            "aupro": aupro(ms, hs),
            "region_iou": region_iou(ms, hs, threshold=threshold),
            "n_images": sum(1 for i in idx if labels[i] != good),
        }

    every = list(range(len(labels)))
    goods = [i for i in every if labels[i] == good]
    out = figures(every)
    out["per_class"] = {
        c: figures([*goods, *(i for i in every if labels[i] == c)])
        for c in sorted({lab for lab in labels if lab != good})
    }
    return out


def sample_mask(sample: Any, shape: tuple[int, int]) -> np.ndarray | None:
    """A manifest sample's defect pixels: its mask, else its boxes filled, else None (unknown);
    a good sample's are all False."""
    from linesight.vision.components.segmentation import box_mask
    from linesight.vision.data.manifest import load_mask

    if getattr(sample, "label", None) == "good":
        return np.zeros(shape, bool)
    if getattr(sample, "mask", None) is not None:
        return load_mask(sample.mask, shape)
    boxes = getattr(sample, "boxes", ())
    if boxes:
        return box_mask(list(boxes), shape)  # (class, x0, y0, x1, y1)
    return None
