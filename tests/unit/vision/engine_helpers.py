"""Shared data for the detection-engine tests: a handful of real magnetic-tile images when
../shared/datasets is present, otherwise a deterministic synthetic stand-in."""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path

import cv2
import numpy as np

from linesight.vision.model import InspectionModel

ROOT = Path(__file__).resolve().parents[3]
DATASETS = ROOT.parent / "shared" / "datasets"
MAGNETIC = DATASETS / "magnetic_tile"


def have_magnetic() -> bool:
    return (MAGNETIC / "manifest.csv").is_file()


def magnetic_rows() -> list[dict[str, str]]:
    with (MAGNETIC / "manifest.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def read_gray(rel: str) -> np.ndarray:
    img = cv2.imread(str(MAGNETIC / rel), cv2.IMREAD_GRAYSCALE)
    assert img is not None, rel
    return img


def magnetic_subset(
    per_class: dict[str, int],
    *,
    seed: int = 0,
    exclude: set[str] | None = None,
    batches: set[str] | None = None,
) -> tuple[list[np.ndarray], list[str], list[str]]:
    """Seeded sample of images, labels and part ids (``exclude``: image paths to skip)."""
    rng = np.random.default_rng(seed)
    rows = [
        r
        for r in magnetic_rows()
        if (batches is None or r["batch"] in batches) and (exclude is None or r["image"] not in exclude)
    ]
    out: list[dict[str, str]] = []
    for label, n in per_class.items():
        pool = [r for r in rows if r["label"] == label]
        idx = rng.choice(len(pool), size=min(n, len(pool)), replace=False)
        out.extend(pool[int(i)] for i in sorted(idx))
    return [read_gray(r["image"]) for r in out], [r["label"] for r in out], [r["image"] for r in out]


def synthetic(label: str, rng: np.random.Generator, size: tuple[int, int] = (96, 120)) -> np.ndarray:
    """Textured gray surface; 'spot' gets a dark blob, 'scratch' a bright line."""
    h, w = size
    base = cv2.GaussianBlur(rng.normal(128, 25, (h, w)).astype(np.float32), (0, 0), 2.0)
    img = np.clip(base, 0, 255).astype(np.uint8)
    if label == "spot":
        cx, cy = int(rng.integers(20, w - 20)), int(rng.integers(20, h - 20))
        cv2.circle(img, (cx, cy), int(rng.integers(6, 10)), 20, -1)
    elif label == "scratch":
        y = int(rng.integers(15, h - 15))
        cv2.line(img, (10, y), (w - 10, y + int(rng.integers(-10, 10))), 250, 3)
    return img


def synthetic_set(counts: dict[str, int], seed: int = 0) -> tuple[list[np.ndarray], list[str]]:
    rng = np.random.default_rng(seed)
    imgs: list[np.ndarray] = []
    labels: list[str] = []
    for label, n in counts.items():
        for _ in range(n):
            imgs.append(synthetic(label, rng))
            labels.append(label)
    return imgs, labels


@functools.lru_cache(maxsize=1)
def small_model() -> tuple[InspectionModel, list[np.ndarray], list[str]]:
    """A quickly fitted model (small input, few images) shared by the model/export/decide tests."""
    imgs, labels = synthetic_set({"good": 24, "spot": 8, "scratch": 8}, seed=1)
    model = InspectionModel.create(seed=0, input_size=(96, 96), min_examples=6, augment_copies=1, cv_folds=3)
    model.fit(imgs, labels)
    return model, imgs, labels


# arrays.npz names of the format-1 layout (flat arrays) for each format-2 name
FORMAT_1_ARRAYS = {
    "patchcore.bank": "bank",
    "patchcore.projection": "projection",
    "patchcore.bank_nn": "bank_nn",
    "replay.x": "replay_x",
    "replay.groups": "replay_group",
    "replay.original": "replay_orig",
    "replay.oof": "replay_oof",
    "calibration.good_anomaly": "cal_good_anomaly",
    "calibration.good_defect": "cal_good_defect",
    "calibration.defect": "cal_defect",
    "head.mean": "head_mean",
    "head.scale": "head_scale",
    "head.weight": "head_weight",
    "head.bias": "head_bias",
}


def as_format_1(directory: Path) -> Path:
    """Rewrite a format-2 save in place into the format-1 layout earlier releases wrote: flat
    arrays, the scoring state as ``state`` (without the provisional classes' training counts,
    which format 1 did not record) and the replay labels as ``replay_labels``."""
    meta = json.loads((directory / "model.json").read_text())
    scoring = dict(meta.pop("scoring"))
    del scoring["provisional_examples"], scoring["min_examples"]
    meta.update(format_version=1, state=scoring, replay_labels=meta.pop("replay")["labels"])
    (directory / "model.json").write_text(json.dumps(meta, indent=1))
    arrays = dict(np.load(directory / "arrays.npz"))
    np.savez(directory / "arrays.npz", **{FORMAT_1_ARRAYS.get(k, k): v for k, v in arrays.items()})
    return directory
