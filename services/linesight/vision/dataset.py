"""Dataset manifests (the import format of ../shared/datasets/README.md) and data-discipline checks.

`load_manifest` validates everything up front (columns, files, masks, boxes, timestamps) so that
training never starts on a half-broken dataset. Policy for columns:

* required: ``image``, ``label``;
* optional (known): ``mask``, ``part_id``, ``batch``, ``station``, ``captured_at``, ``boxes``;
  an empty ``part_id`` falls back to the image path (each photo its own part: the only safe guess);
* unknown columns: ``unknown_columns="warn"`` (default) emits a `ManifestWarning` and keeps their
  values in `Sample.extra`; ``"error"`` raises; ``"ignore"`` keeps them silently.

The checks (`find_duplicates`, `balance_report`, `bias_report`) follow the usual dataset advice:
duplicates inflate accuracy when they straddle a split, and a trivial attribute (brightness, size)
that separates good from defect images means the model may learn the lighting, not the defect.
"""

from __future__ import annotations

import csv
import json
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from linesight.vision.imageio import ImageError, dhash, phash, read_image, sha256_file, to_gray

__all__ = [
    "GOOD",
    "KNOWN_COLUMNS",
    "REQUIRED_COLUMNS",
    "BalanceReport",
    "BiasFinding",
    "DuplicateReport",
    "ManifestError",
    "ManifestWarning",
    "NearDuplicate",
    "Sample",
    "balance_report",
    "bias_report",
    "find_duplicates",
    "load_manifest",
    "load_mask",
]

GOOD = "good"
REQUIRED_COLUMNS = ("image", "label")
KNOWN_COLUMNS = ("image", "label", "mask", "part_id", "batch", "station", "captured_at", "boxes")
MANIFEST_NAME = "manifest.csv"

Box = tuple[str, int, int, int, int]


class ManifestError(ValueError):
    """The manifest cannot be used as is; the message says which rows and why."""


class ManifestWarning(UserWarning):
    """Something in the manifest is suspicious but loading continued."""


@dataclass(frozen=True)
class Sample:
    """One manifest row with resolved absolute paths."""

    image: Path
    label: str
    mask: Path | None
    part_id: str
    batch: str
    station: str
    captured_at: datetime | None
    boxes: tuple[Box, ...]
    extra: tuple[tuple[str, str], ...] = ()

    @property
    def is_good(self) -> bool:
        return self.label == GOOD


def _resolve(root: Path, rel: str, what: str, row: int) -> Path:
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts:
        raise ManifestError(
            f"row {row}: {what} path {rel!r} must be relative to the dataset folder, without '..'"
        )
    return root / p


def _parse_boxes(text: str, row: int) -> tuple[Box, ...]:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"row {row}: boxes is not valid JSON ({exc.msg})") from exc
    if not isinstance(raw, list):
        raise ManifestError(f"row {row}: boxes must be a JSON list of [class, xmin, ymin, xmax, ymax]")
    out: list[Box] = []
    for item in raw:
        if not (isinstance(item, list) and len(item) == 5 and isinstance(item[0], str)):
            raise ManifestError(f"row {row}: each box must be [class, xmin, ymin, xmax, ymax], got {item!r}")
        try:
            x0, y0, x1, y1 = (int(v) for v in item[1:])
        except (TypeError, ValueError) as exc:
            raise ManifestError(f"row {row}: box coordinates must be integers, got {item!r}") from exc
        if x1 <= x0 or y1 <= y0 or min(x0, y0) < 0:
            raise ManifestError(f"row {row}: box {item!r} is empty or has negative coordinates")
        out.append((item[0], x0, y0, x1, y1))
    return tuple(out)


def _parse_time(text: str, row: int) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError as exc:
        raise ManifestError(f"row {row}: captured_at {text!r} is not an ISO-8601 timestamp") from exc


def load_manifest(
    root: str | Path,
    *,
    unknown_columns: Literal["warn", "error", "ignore"] = "warn",
    check_files: bool = True,
) -> list[Sample]:
    """Read and validate ``root/manifest.csv`` (or a CSV path); raise ManifestError on bad input."""
    path = Path(root)
    if path.is_dir():
        path = path / MANIFEST_NAME
    base = path.parent
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        if not header:
            raise ManifestError(f"{path}: empty manifest (no header row)")
        reader.fieldnames = header
        missing_cols = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing_cols:
            raise ManifestError(f"{path}: missing required column(s) {missing_cols}; header is {header}")
        dup_cols = [c for c, n in Counter(header).items() if n > 1]
        if dup_cols:
            raise ManifestError(f"{path}: duplicate column(s) {dup_cols}")
        unknown = [c for c in header if c not in KNOWN_COLUMNS]
        if unknown and unknown_columns == "error":
            raise ManifestError(f"{path}: unknown column(s) {unknown}; known: {list(KNOWN_COLUMNS)}")
        if unknown and unknown_columns == "warn":
            warnings.warn(
                f"{path}: unknown column(s) {unknown} kept in Sample.extra", ManifestWarning, stacklevel=2
            )
        rows = list(reader)
    if not rows:
        raise ManifestError(f"{path}: manifest has a header but no rows")

    samples: list[Sample] = []
    missing: list[str] = []
    seen: dict[Path, int] = {}
    fallback_parts = 0
    for i, raw in enumerate(rows, start=2):  # row 1 is the header
        if None in raw:
            raise ManifestError(f"{path}: row {i} has more fields than the header")
        rec = {k: (v or "").strip() for k, v in raw.items()}
        if not rec["image"]:
            raise ManifestError(f"{path}: row {i}: empty image path")
        if not rec["label"]:
            raise ManifestError(f"{path}: row {i}: empty label")
        label = GOOD if rec["label"].lower() == GOOD else rec["label"]
        image = _resolve(base, rec["image"], "image", i)
        if image in seen:
            raise ManifestError(
                f"{path}: row {i}: image {rec['image']!r} already listed in row {seen[image]}"
            )
        seen[image] = i
        mask = _resolve(base, rec["mask"], "mask", i) if rec.get("mask") else None
        if mask is not None and label == GOOD:
            warnings.warn(
                f"{path}: row {i}: good image has a mask; mask ignored", ManifestWarning, stacklevel=2
            )
            mask = None
        if check_files:
            if not image.is_file():
                missing.append(rec["image"])
            if mask is not None and not mask.is_file():
                missing.append(rec["mask"])
        part_id = rec.get("part_id", "")
        if not part_id:
            part_id = rec["image"]
            fallback_parts += 1
        try:
            boxes = _parse_boxes(rec["boxes"], i) if rec.get("boxes") else ()
            captured = _parse_time(rec["captured_at"], i) if rec.get("captured_at") else None
        except ManifestError as exc:
            raise ManifestError(f"{path}: {exc}") from None
        extra = tuple((k, rec[k]) for k in header if k not in KNOWN_COLUMNS)
        samples.append(
            Sample(
                image=image,
                label=label,
                mask=mask,
                part_id=part_id,
                batch=rec.get("batch", ""),
                station=rec.get("station", ""),
                captured_at=captured,
                boxes=boxes,
                extra=extra,
            )
        )
    if missing:
        shown = ", ".join(missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ManifestError(f"{path}: {len(missing)} file(s) listed but missing: {shown}{more}")
    if fallback_parts:
        warnings.warn(
            f"{path}: {fallback_parts} row(s) without part_id; each such photo is treated as its own part",
            ManifestWarning,
            stacklevel=2,
        )
    return samples


def load_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Boolean defect mask (soft edges thresholded at >127), optionally checked against a shape."""
    m = to_gray(read_image(path, min_side=1))
    if shape is not None and m.shape != tuple(shape):
        raise ImageError(
            str(path), f"mask is {m.shape[1]}x{m.shape[0]} but the image is {shape[1]}x{shape[0]}"
        )
    return np.asarray(m > 127)


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
