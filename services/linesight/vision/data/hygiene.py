"""Data-discipline checks on a loaded manifest: duplicates, class balance, shortcut attributes.

They follow the usual dataset advice: duplicates inflate accuracy when they straddle a split, and a
trivial attribute (brightness, size) that separates good from defect images means the model may
learn the lighting, not the defect.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from linesight.vision.data.imageio import dhash, phash, read_image, sha256_file, to_gray
from linesight.vision.data.manifest import GOOD, Sample

__all__ = [
    "AnnotationIssue",
    "BalanceReport",
    "BiasFinding",
    "DuplicateReport",
    "EmbeddingPair",
    "ImageStats",
    "LeakFinding",
    "NearDuplicate",
    "annotation_issues",
    "backbone_embeddings",
    "balance_report",
    "bias_report",
    "embedding_near_duplicates",
    "find_duplicates",
    "image_stats",
    "metadata_leaks",
    "quality_flags",
    "straddling_parts",
]


# --- duplicates ------------------------------------------------------------------------------


@dataclass(frozen=True)
class NearDuplicate:
    """Two different files whose perceptual hashes are within the Hamming threshold."""

    a: Path
    b: Path
    dhash_distance: int
    phash_distance: int
    cross_part: bool
    label_conflict: bool


@dataclass
class DuplicateReport:
    """Exact groups (same bytes) and near pairs; `leaky` pairs are those across parts."""

    exact: list[list[Path]] = field(default_factory=list)
    near: list[NearDuplicate] = field(default_factory=list)
    exact_label_conflicts: list[list[Path]] = field(default_factory=list)
    exact_cross_part: list[list[Path]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "exact_groups": [[str(p) for p in g] for g in self.exact],
            "exact_label_conflicts": [[str(p) for p in g] for g in self.exact_label_conflicts],
            "near_pairs": [
                {
                    "a": str(n.a),
                    "b": str(n.b),
                    "dhash": n.dhash_distance,
                    "phash": n.phash_distance,
                    "cross_part": n.cross_part,
                    "label_conflict": n.label_conflict,
                }
                for n in self.near
            ],
        }


def _popcount64(x: np.ndarray) -> np.ndarray:
    return np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(axis=-1)


def find_duplicates(
    samples: Sequence[Sample],
    *,
    max_distance: int = 4,
    near: bool = True,
) -> DuplicateReport:
    """Exact (sha256) and near (dHash AND pHash within `max_distance` bits) duplicates.

    Requiring both hashes to agree keeps false alarms low on uniform textures (steel, tile),
    where one 64-bit hash alone collides more often.
    """
    by_sha: dict[str, list[Path]] = defaultdict(list)
    for s in samples:
        by_sha[sha256_file(s.image)].append(s.image)
    report = DuplicateReport(
        exact=sorted((sorted(g) for g in by_sha.values() if len(g) > 1), key=lambda g: str(g[0]))
    )
    info = {s.image: s for s in samples}
    report.exact_label_conflicts = [g for g in report.exact if len({info[x].label for x in g}) > 1]
    report.exact_cross_part = [g for g in report.exact if len({info[x].part_id for x in g}) > 1]
    if not near or len(samples) < 2:
        return report
    exact_sets = [set(g) for g in report.exact]
    d = np.empty(len(samples), dtype=np.uint64)
    p = np.empty(len(samples), dtype=np.uint64)
    for i, s in enumerate(samples):
        img = read_image(s.image)
        d[i] = np.uint64(dhash(img))
        p[i] = np.uint64(phash(img))
    for i in range(len(samples) - 1):
        dd = _popcount64(d[i] ^ d[i + 1 :])
        pp = _popcount64(p[i] ^ p[i + 1 :])
        for j in np.nonzero((dd <= max_distance) & (pp <= max_distance))[0]:
            a, b = samples[i], samples[i + 1 + int(j)]
            if any(a.image in g and b.image in g for g in exact_sets):
                continue
            report.near.append(
                NearDuplicate(
                    a.image, b.image, int(dd[j]), int(pp[j]), a.part_id != b.part_id, a.label != b.label
                )
            )
    return report


# --- balance and bias ------------------------------------------------------------------------


@dataclass
class BalanceReport:
    """Counts per class, per batch and per station; classes too small for a supervised head."""

    class_counts: dict[str, int]
    by_batch: dict[str, dict[str, int]]
    by_station: dict[str, dict[str, int]]
    parts_per_class: dict[str, int]
    small_classes: list[str]
    imbalance_ratio: float  # largest / smallest defect class

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def balance_report(samples: Sequence[Sample], *, min_examples: int = 30) -> BalanceReport:
    """Class balance and where the classes come from (a class from one batch only is a warning sign)."""
    counts = Counter(s.label for s in samples)
    by_batch: dict[str, Counter[str]] = defaultdict(Counter)
    by_station: dict[str, Counter[str]] = defaultdict(Counter)
    parts: dict[str, set[str]] = defaultdict(set)
    for s in samples:
        by_batch[s.batch][s.label] += 1
        by_station[s.station][s.label] += 1
        parts[s.label].add(s.part_id)
    defect_counts = [n for c, n in counts.items() if c != GOOD]
    ratio = max(defect_counts) / min(defect_counts) if defect_counts else 1.0
    return BalanceReport(
        class_counts=dict(sorted(counts.items())),
        by_batch={b: dict(sorted(c.items())) for b, c in sorted(by_batch.items())},
        by_station={b: dict(sorted(c.items())) for b, c in sorted(by_station.items())},
        parts_per_class={c: len(v) for c, v in sorted(parts.items())},
        small_classes=sorted(c for c, n in counts.items() if c != GOOD and n < min_examples),
        imbalance_ratio=float(ratio),
    )


@dataclass(frozen=True)
class BiasFinding:
    """How well one irrelevant attribute alone separates good from defect images (AUROC)."""

    attribute: str
    good_mean: float
    defect_mean: float
    auroc: float
    flagged: bool


def _image_stats(samples: Iterable[Sample]) -> dict[str, list[float]]:
    stats: dict[str, list[float]] = defaultdict(list)
    for s in samples:
        g = to_gray(read_image(s.image))
        stats["brightness"].append(float(g.mean()))
        stats["contrast"].append(float(g.std()))
        stats["saturated_fraction"].append(float((g >= 250).mean()))
        stats["height"].append(float(g.shape[0]))
        stats["width"].append(float(g.shape[1]))
        stats["aspect"].append(float(g.shape[1] / g.shape[0]))
    return stats


def bias_report(samples: Sequence[Sample], *, flag_at: float = 0.75) -> list[BiasFinding]:
    """Flag attributes (brightness, contrast, saturation, size) that alone predict good vs defect.

    AUROC 0.5 means no information; ``max(auc, 1-auc) >= flag_at`` is flagged: a model could
    score well by learning the lighting or the crop instead of the defect.
    """
    from sklearn.metrics import roc_auc_score

    y = np.array([0 if s.is_good else 1 for s in samples])
    if y.min() == y.max():
        return []  # needs both good and defect images
    stats = _image_stats(samples)
    out: list[BiasFinding] = []
    for name, values in stats.items():
        v = np.asarray(values)
        auc = float(roc_auc_score(y, v)) if np.ptp(v) > 0 else 0.5
        out.append(
            BiasFinding(
                name, float(v[y == 0].mean()), float(v[y == 1].mean()), auc, max(auc, 1 - auc) >= flag_at
            )
        )
    return out


# --- per-image statistics, quality flags -----------------------------------------------------


@dataclass(frozen=True)
class ImageStats:
    """What one decode of an image tells: size, exposure, sharpness and the border's colour
    (a frame, a fixture or a marker at the edge is a classic shortcut)."""

    width: int
    height: int
    brightness: float
    contrast: float
    saturated_fraction: float
    dark_fraction: float
    border: float
    sharpness: float  # variance of the Laplacian: low = blurred


def image_stats(samples: Sequence[Sample]) -> list[ImageStats]:
    """One ImageStats per sample, in order (each image decoded once)."""
    out: list[ImageStats] = []
    for s in samples:
        g = to_gray(read_image(s.image)).astype(np.float32)
        k = max(1, min(g.shape) // 20)
        border = np.concatenate([g[:k].ravel(), g[-k:].ravel(), g[:, :k].ravel(), g[:, -k:].ravel()])
        lap = g[1:-1, 1:-1] * -4 + g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:]
        out.append(
            ImageStats(
                width=int(g.shape[1]), height=int(g.shape[0]), brightness=float(g.mean()),
                contrast=float(g.std()), saturated_fraction=float((g >= 250).mean()),
                dark_fraction=float((g <= 5).mean()), border=float(border.mean()),
                sharpness=float(lap.var()) if lap.size else 0.0,
            )
        )  # fmt: skip
    return out


def quality_flags(samples: Sequence[Sample], stats: Sequence[ImageStats]) -> dict[str, list[Path]]:
    """Images to look at before anyone labels or trains on them: under- or overexposed, flat
    (no contrast), or much blurrier than the rest of the set (below a tenth of its median
    sharpness, so a set of soft textures is judged against itself)."""
    flags: dict[str, list[Path]] = defaultdict(list)
    if not stats:
        return {}
    median_sharp = float(np.median([st.sharpness for st in stats]))
    for s, st in zip(samples, stats, strict=True):
        if st.brightness < 20 or st.dark_fraction > 0.5:
            flags["underexposed"].append(s.image)
        if st.brightness > 235 or st.saturated_fraction > 0.25:
            flags["overexposed"].append(s.image)
        if st.contrast < 2.0:
            flags["flat"].append(s.image)
        if median_sharp > 0 and st.sharpness < median_sharp / 10:
            flags["blurred"].append(s.image)
    return dict(flags)


# --- near duplicates by backbone embedding ---------------------------------------------------


@dataclass(frozen=True)
class EmbeddingPair:
    """Two images whose pooled backbone embeddings are within the cosine-distance threshold."""

    a: Path
    b: Path
    distance: float


def backbone_embeddings(
    samples: Sequence[Sample], *, backbone: str = "efficientnet-lite0", size: int = 64, batch: int = 64
) -> np.ndarray:
    """L2-normalised, globally pooled features of the engine's backbone at `size` px, one row per
    sample: what the near-duplicate check compares and the learning curve's probe learns from."""
    import torch
    import torch.nn.functional as fnn

    from linesight.vision.components.backbone import load_backbone
    from linesight.vision.data.imageio import to_rgb

    net = load_backbone(backbone)
    mean, std = net.spec.mean, net.spec.std
    feats: list[torch.Tensor] = []
    with torch.inference_mode():
        for start in range(0, len(samples), batch):
            chunk = samples[start : start + batch]
            x = torch.cat([
                fnn.interpolate(
                    torch.from_numpy(to_rgb(read_image(s.image))).permute(2, 0, 1)[None].float(),
                    size=(size, size), mode="area",
                )
                for s in chunk
            ])  # fmt: skip
            x = (x / 255.0 - mean) / std
            _, _, final = net(x)
            feats.append(fnn.normalize(final.mean(dim=(2, 3)), dim=1))
    return torch.cat(feats).numpy() if feats else np.zeros((0, 0), np.float32)


def embedding_near_duplicates(
    samples: Sequence[Sample],
    *,
    backbone: str = "efficientnet-lite0",
    size: int = 64,
    batch: int = 64,
    max_distance: float = 0.01,
) -> list[EmbeddingPair]:
    """Near duplicates the hashes miss (a re-shot part, a slight shift or crop): pairs whose
    globally pooled features of the engine's backbone are within `max_distance` cosine distance.

    Small input (`size` px) and batches keep it to seconds for a thousand images on a CPU.
    """
    if len(samples) < 2:
        return []
    emb = backbone_embeddings(samples, backbone=backbone, size=size, batch=batch)
    dist = 1.0 - emb @ emb.T
    pairs: list[EmbeddingPair] = []
    ii, jj = np.nonzero(np.triu(dist <= max_distance, k=1))
    for i, j in zip(ii.tolist(), jj.tolist(), strict=True):
        pairs.append(EmbeddingPair(samples[i].image, samples[j].image, float(max(0.0, dist[i, j]))))
    return pairs


# --- splits, leakage, annotations ------------------------------------------------------------


def straddling_parts(samples: Sequence[Sample], split_of: dict[Path, str]) -> dict[str, list[str]]:
    """Parts with photos in more than one split: part id -> the splits it is in."""
    where: dict[str, set[str]] = defaultdict(set)
    for s in samples:
        where[s.part_id].add(split_of[s.image])
    return {p: sorted(v) for p, v in sorted(where.items()) if len(v) > 1}


@dataclass(frozen=True)
class LeakFinding:
    """How well one attribute alone predicts the label: cross-validated AUC (one-vs-rest, macro
    over classes); `flagged` when at or above the threshold."""

    attribute: str
    auc: float
    flagged: bool
    values: int  # distinct values of the attribute


def metadata_leaks(
    samples: Sequence[Sample],
    stats: Sequence[ImageStats],
    *,
    flag_at: float = 0.75,
    folds: int = 5,
    seed: int = 0,
) -> list[LeakFinding]:
    """Can station, batch, camera, capture time, image size, brightness or border colour alone
    predict the label? Each attribute gets its own small model (one-hot logistic regression for
    categories, a shallow tree for numbers) scored by stratified k-fold AUC, so a value seen in
    training only cannot score by memorising it. Attributes with a single value are skipped
    (they carry no information); labels with fewer than two images are left out of the check.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.preprocessing import OneHotEncoder
    from sklearn.tree import DecisionTreeClassifier

    labels = Counter(s.label for s in samples)
    keep = [i for i, s in enumerate(samples) if labels[s.label] >= 2]
    y_all = np.array([samples[i].label for i in keep])
    classes = sorted(set(y_all.tolist()))
    if len(classes) < 2:
        return []
    k = max(2, min(folds, min(Counter(y_all.tolist()).values())))
    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)

    def extra(s: Sample, key: str) -> str:
        return dict(s.extra).get(key, "")

    categorical: dict[str, list[str]] = {
        "station": [samples[i].station for i in keep],
        "batch": [samples[i].batch for i in keep],
        "camera": [extra(samples[i], "camera") for i in keep],
        "image_size": [f"{stats[i].width}x{stats[i].height}" for i in keep],
    }
    numeric: dict[str, list[float]] = {
        "capture_time": [_timestamp(samples[i]) for i in keep],
        "brightness": [stats[i].brightness for i in keep],
        "border_colour": [stats[i].border for i in keep],
    }
    out: list[LeakFinding] = []

    def score(name: str, x: np.ndarray, model: Any, distinct: int) -> None:
        proba = cross_val_predict(model, x, y_all, cv=cv, method="predict_proba")
        if len(classes) == 2:
            auc = float(roc_auc_score(y_all == classes[1], proba[:, 1]))
        else:
            auc = float(roc_auc_score(y_all, proba, multi_class="ovr", average="macro", labels=classes))
        out.append(LeakFinding(name, auc, auc >= flag_at, distinct))

    for name, values in categorical.items():
        distinct = len(set(values))
        if distinct < 2:
            continue
        x = OneHotEncoder(handle_unknown="ignore").fit_transform(np.array(values)[:, None])
        score(name, x, LogisticRegression(max_iter=1000), distinct)
    for name, nums in numeric.items():
        v = np.asarray(nums, dtype=np.float64)
        if np.isnan(v).any() or np.ptp(v) == 0:
            continue
        score(name, v[:, None], DecisionTreeClassifier(max_depth=3, random_state=seed), len(set(nums)))
    return out


def _timestamp(s: Sample) -> float:
    return s.captured_at.timestamp() if s.captured_at is not None else float("nan")


@dataclass(frozen=True)
class AnnotationIssue:
    image: Path
    reason: str


def annotation_issues(samples: Sequence[Sample], stats: Sequence[ImageStats]) -> list[AnnotationIssue]:
    """Masks and boxes that cannot be right: an empty defect mask, a mask of another size than
    its image, a box outside the image, boxes on a good image, a box of another class."""
    from linesight.vision.data.manifest import load_mask

    issues: list[AnnotationIssue] = []
    for s, st in zip(samples, stats, strict=True):
        if s.mask is not None:
            try:
                m = load_mask(s.mask)
            except Exception as exc:  # unreadable mask: say so rather than skip it
                issues.append(AnnotationIssue(s.image, f"mask unreadable: {exc}"))
            else:
                if m.shape != (st.height, st.width):
                    issues.append(AnnotationIssue(
                        s.image, f"mask is {m.shape[1]}x{m.shape[0]}, image {st.width}x{st.height}"
                    ))  # fmt: skip
                elif not m.any():
                    issues.append(AnnotationIssue(s.image, "defect mask is empty"))
        if s.boxes and s.is_good:
            issues.append(AnnotationIssue(s.image, "good image has boxes"))
        for cls, x0, y0, x1, y1 in s.boxes:
            if x1 > st.width or y1 > st.height:
                issues.append(AnnotationIssue(s.image, f"box {[x0, y0, x1, y1]} outside the image"))
            if not s.is_good and cls != s.label:
                issues.append(AnnotationIssue(s.image, f"box class {cls!r} differs from label {s.label!r}"))
    return issues
