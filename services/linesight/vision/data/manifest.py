"""Dataset manifests: the import format of ../shared/datasets/README.md.

`load_manifest` validates everything up front (columns, files, masks, boxes, timestamps) so that
training never starts on a half-broken dataset. Policy for columns:

* required: ``image``, ``label``;
* optional (known): ``mask``, ``part_id``, ``batch``, ``station``, ``captured_at``, ``boxes``;
  an empty ``part_id`` falls back to the image path (each photo its own part: the only safe guess);
* unknown columns: ``unknown_columns="warn"`` (default) emits a `ManifestWarning` and keeps their
  values in `Sample.extra`; ``"error"`` raises; ``"ignore"`` keeps them silently.

The data-discipline checks on loaded samples live in `linesight.vision.data.hygiene`.
"""

from __future__ import annotations

import csv
import json
import warnings
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np

from linesight.vision.data.imageio import ImageError, read_image, to_gray

__all__ = [
    "GOOD",
    "KNOWN_COLUMNS",
    "REQUIRED_COLUMNS",
    "ManifestError",
    "ManifestWarning",
    "Sample",
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
