"""The protected holdout in code: a training set holding one of its parts is refused before any
fit; seeded known-defect parts are validated, always land in the holdout and are counted apart."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from linesight.training.app.datasets import (
    HOLDOUT,
    DatasetImportError,
    assign_splits,
    inspect_manifest,
    seeded_summary,
)
from linesight.training.app.trainer import TrainingOptions, train
from linesight.vision.data.manifest import load_manifest
from linesight.vision.data.splits import LeakageError
from linesight.vision.data.synth import generate_dataset


def _rewrite(root: Path, edit: dict[int, dict[str, str]]) -> list[dict[str, str]]:
    rows = list(csv.DictReader((root / "manifest.csv").open(newline="")))
    for r in rows:
        r.setdefault("seeded", "")
        r.setdefault("split", "")
    for i, change in edit.items():
        rows[i].update(change)
    with (root / "manifest.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return rows


def test_training_on_a_holdout_part_is_refused_before_fitting(tmp_path: Path) -> None:
    root = generate_dataset(tmp_path / "s", n_good=8, per_class=6, seed=5, size=64, classes=("scratch",),
                            n_batches=1, n_stations=1)  # fmt: skip
    samples = load_manifest(root, unknown_columns="ignore")
    with pytest.raises(LeakageError, match="part_id"):
        train(root, TrainingOptions(input_size=(64, 64)), tmp_path / "w", holdout=samples[:2])
    assert not (tmp_path / "w").exists()  # nothing fitted, nothing written


def test_seeded_parts_go_to_the_holdout_and_are_counted(tmp_path: Path) -> None:
    root = generate_dataset(tmp_path / "s", n_good=30, per_class=20, seed=6, size=64, classes=("scratch",),
                            n_batches=1, n_stations=1)  # fmt: skip
    rows = list(csv.DictReader((root / "manifest.csv").open(newline="")))
    defects = [i for i, r in enumerate(rows) if r["label"] == "scratch"][:6]
    rows = _rewrite(root, {i: {"seeded": "yes"} for i in defects})
    inspected = inspect_manifest(root, None)
    split_of, policy = assign_splits(inspected.samples)
    seeded_parts = {rows[i]["part_id"] for i in defects}
    assert "seeded known-defect part group(s) in the holdout" in policy
    assert all(split_of[s.image] == HOLDOUT for s in inspected.samples if s.part_id in seeded_parts)
    summary = seeded_summary([
        {"part_id": s.part_id, "label": s.label, "split": split_of[s.image],
         "seeded": s.part_id in seeded_parts and dict(s.extra).get("seeded") == "yes"}
        for s in inspected.samples
    ])  # fmt: skip
    assert summary["images"] == 6 and summary["parts"] == len(seeded_parts)
    assert summary["by_class"] == {"scratch": 6} and summary["holdout_parts"] >= len(seeded_parts)


def test_bad_seeded_values_are_each_named(tmp_path: Path) -> None:
    root = generate_dataset(tmp_path / "s", n_good=6, per_class=4, seed=7, size=64, classes=("scratch",),
                            n_batches=1, n_stations=1)  # fmt: skip
    rows = list(csv.DictReader((root / "manifest.csv").open(newline="")))
    good = next(i for i, r in enumerate(rows) if r["label"] == "good")
    bad = [i for i, r in enumerate(rows) if r["label"] == "scratch"][:2]
    _rewrite(root, {good: {"seeded": "yes"}, bad[0]: {"seeded": "maybe"},
                    bad[1]: {"seeded": "1", "split": "train"}})  # fmt: skip
    with pytest.raises(DatasetImportError) as err:
        inspect_manifest(root, None)
    issues = err.value.issues
    assert any(f"row {good + 2} " in i and "label is good" in i for i in issues)
    assert any(f"row {bad[0] + 2} " in i and "'maybe' is not yes/no" in i for i in issues)
    assert any(f"row {bad[1] + 2} " in i and "belongs to the holdout, not 'train'" in i for i in issues)
    assert len(issues) == 3
