"""Pieces of training jobs that need no server: near-duplicate grouping before a split, the
worker's ETA, job options as stored, the jobs settings and the CLI's progress output."""

from __future__ import annotations

import csv
import io
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from linesight.training.app.job_config import JobsConfig
from linesight.training.app.jobs import options_from_json, options_to_json
from linesight.training.app.trainer import TrainingOptions
from linesight.training.app.worker import _Progress
from linesight.vision.data.imageio import encode_png, read_image
from linesight.vision.data.manifest import load_manifest
from linesight.vision.data.splits import group_near_duplicates, split_by_group
from linesight.vision.data.synth import generate_dataset


def test_reshot_parts_are_merged_into_one_split_group(tmp_path: Path) -> None:
    root = generate_dataset(tmp_path / "ds", n_good=20, per_class=8, seed=5, size=64, classes=("scratch",),
                            n_batches=2, n_stations=1)  # fmt: skip
    with (root / "manifest.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    # Re-shoot three parts: a one-grey-level brighter copy under a new part id each (what a
    # second capture session of the same tile looks like to the manifest).
    originals = [r for r in rows if r["label"] == "good"][:2] + [r for r in rows if r["label"] == "scratch"][
        :1
    ]
    for i, r in enumerate(originals):
        img = read_image(root / r["image"]).astype(np.int16)
        copy = f"images/reshot_{i}.png"
        (root / copy).write_bytes(encode_png(np.clip(img + 1, 0, 255).astype(np.uint8)))
        rows.append({**r, "image": copy, "part_id": f"reshot-{i}", "mask": ""})
    with (root / "manifest.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    samples = load_manifest(root, unknown_columns="ignore")
    merged, links = group_near_duplicates(samples, embeddings=False)
    assert links >= 3
    part = {s.image.name: s.part_id for s in merged}
    for i, r in enumerate(originals):
        assert part[f"reshot_{i}.png"] == part[Path(r["image"]).name]
    # Without merging some seed puts a re-shot part and its original on two sides; merged, none does.
    for seed in range(10):
        split = split_by_group(merged, 0.3, seed=seed)
        test_names = {s.image.name for s in split.test}
        for i, r in enumerate(originals):
            assert (f"reshot_{i}.png" in test_names) == (Path(r["image"]).name in test_names)
    unmerged_straddles = 0
    for seed in range(10):
        split = split_by_group(samples, 0.3, seed=seed)
        test_names = {s.image.name for s in split.test}
        unmerged_straddles += sum(
            (f"reshot_{i}.png" in test_names) != (Path(r["image"]).name in test_names)
            for i, r in enumerate(originals)
        )
    assert unmerged_straddles > 0  # the check above is not vacuous


def test_distinct_parts_are_left_alone(tmp_path: Path) -> None:
    root = generate_dataset(tmp_path / "ds", n_good=12, per_class=4, seed=6, size=64, classes=("scratch",),
                            n_batches=1, n_stations=1)  # fmt: skip
    samples = load_manifest(root, unknown_columns="ignore")
    merged, links = group_near_duplicates(samples, embeddings=False)
    # synth's own second shots share their part id already: nothing to merge across parts
    assert links == 0 and [s.part_id for s in merged] == [s.part_id for s in samples]


def test_eta_follows_elapsed_time() -> None:
    p = _Progress()
    assert p.eta_s() is None  # nothing to extrapolate from yet
    p.started = time.monotonic() - 10.0
    p.update("heads", 0.5, "fitting")
    eta = p.eta_s()
    assert eta is not None and 9.0 < eta < 11.5
    p.update("features", 0.2, "")  # a stage reporting less never moves the bar back
    assert p.fraction == 0.5 and p.stage == "features" and p.message == "fitting"


def test_options_survive_the_job_row() -> None:
    opts = TrainingOptions(product="tile", input_size=(96, 96), max_good=300, max_per_class=50, seed=3,
                           model_overrides={"augment_copies": 2})  # fmt: skip
    back = options_from_json(options_to_json(opts), "tile")
    assert back == opts
    assert options_from_json({"seed": 4, "unknown": 1}, "p") == TrainingOptions(product="p", seed=4)
    assert options_from_json(options_to_json(replace(opts, product="x")), "tile").product == "tile"


def test_jobs_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LINESIGHT_TRAINING_AUTO_UPDATE", "false")
    monkeypatch.setenv("LINESIGHT_TRAINING_AUTO_UPDATE_LABELS", "35")
    cfg = JobsConfig()
    assert cfg.auto_update is False and cfg.auto_update_labels == 35 and cfg.auto_update_after_s == 3600
    monkeypatch.setenv("LINESIGHT_TRAINING_MAX_WORKERS", "0")
    with pytest.raises(ValueError, match="max_workers"):
        JobsConfig()


def test_cli_progress_prints_a_line_per_stage_without_a_terminal() -> None:
    from linesight.cli.cmd_train import TrainingBar

    out = io.StringIO()
    with TrainingBar(out) as bar:
        for stage, f in (("dataset", 0.05), ("features", 0.1), ("features", 0.3), ("export", 0.9)):
            bar.update(stage, f, "")
    lines = out.getvalue().splitlines()
    assert lines == ["[train] dataset 5%", "[train] features 10%", "[train] export 90%"]
