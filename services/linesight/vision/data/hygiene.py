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
    "BalanceReport",
    "BiasFinding",
    "DuplicateReport",
    "NearDuplicate",
    "balance_report",
    "bias_report",
    "find_duplicates",
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
