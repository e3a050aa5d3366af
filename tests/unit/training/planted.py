"""A small synthetic dataset (linesight.vision.data.synth) with planted hygiene problems, each
recorded so a test can assert the report names exactly it: an exact duplicate across splits, a
near duplicate (one-grey-level brighter copy) across splits, a station that gives the label
away, and one part whose photos sit in two splits."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from linesight.vision.data.imageio import encode_png, read_image
from linesight.vision.data.synth import generate_dataset


@dataclass(frozen=True)
class Planted:
    root: Path
    exact_copy: str  # image path of the byte copy (split val; the original is in train)
    near_copy: str  # image path of the brightened copy (split holdout)
    straddling_part: str


def planted_dataset(out: Path, *, leak: bool = True) -> Planted:
    root = generate_dataset(
        out, n_good=30, per_class=30, seed=3, size=64, classes=("scratch",), n_batches=2, n_stations=1
    )
    with (root / "manifest.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    parts = sorted({r["part_id"] for r in rows})
    split_of = {
        p: ("holdout" if i % 10 == 0 else "val" if i % 5 == 0 else "train") for i, p in enumerate(parts)
    }
    for r in rows:
        r["split"] = split_of[r["part_id"]]
        if leak:  # the planted leak: defects were all photographed at one station
            r["station"] = "cam-defect" if r["label"] != "good" else "cam-good"
    first_train = next(r for r in rows if r["split"] == "train" and r["label"] == "good")
    exact = dict(first_train, image="images/copy_exact.png", part_id="copy-exact", split="val", mask="")
    (root / exact["image"]).write_bytes((root / first_train["image"]).read_bytes())
    second = next(r for r in rows if r["split"] == "train" and r["label"] == "good" and r is not first_train)
    img = read_image(root / second["image"]).astype(np.int16) + 1
    near = dict(second, image="images/copy_near.png", part_id="copy-near", split="holdout", mask="")
    (root / near["image"]).write_bytes(encode_png(np.clip(img, 0, 255).astype(np.uint8)))
    straddler = next(r for r in rows if r["split"] == "train" and r["label"] != "good")
    twin = dict(straddler, image="images/straddle_twin.png", split="holdout")
    twin_img = read_image(root / straddler["image"])[::-1].copy()  # a second, different photo
    (root / twin["image"]).write_bytes(encode_png(twin_img))
    twin["mask"] = ""
    rows += [exact, near, twin]
    with (root / "manifest.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return Planted(root, exact["image"], near["image"], straddler["part_id"])


def reshot_dataset(out: Path, *, copies: int = 10, seed: int = 4) -> tuple[Path, dict[str, str]]:
    """A synthetic set without a split column in which `copies` tiles were shot twice: the second
    shot (one grey level brighter) under a new part id, as a second capture session records it.
    Returns (root, {copy image: original image})."""
    root = generate_dataset(out, n_good=40, per_class=20, seed=seed, size=64, classes=("scratch",),
                            n_batches=1, n_stations=1)  # fmt: skip
    with (root / "manifest.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    half = copies // 2
    originals = [r for r in rows if r["label"] == "good"][:half]
    originals += [r for r in rows if r["label"] != "good"][: copies - half]
    pairs: dict[str, str] = {}
    for i, r in enumerate(originals):
        img = read_image(root / r["image"]).astype(np.int16) + 1
        name = f"images/reshot_{i}.png"
        (root / name).write_bytes(encode_png(np.clip(img, 0, 255).astype(np.uint8)))
        rows.append({**r, "image": name, "part_id": f"reshot-{i}", "mask": ""})
        pairs[name] = r["image"]
    with (root / "manifest.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root, pairs
