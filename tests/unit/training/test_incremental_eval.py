"""What makes the incremental job fast must not change what it measures: predictions scored from
one stored backbone pass (FrozenFeatures) equal the engine's own `predict` under the base head and
under the extended one; the job measures old classes on the version's val rows, which it never
learns, and says when it could only measure in-sample."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from linesight.training.app.trainer import TrainingOptions
from linesight.training.app.worker import FrozenFeatures, train_incremental
from linesight.vision.data.imageio import read_image
from linesight.vision.data.manifest import load_manifest
from linesight.vision.data.synth import generate_dataset


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 64 px model of good and scratch, saved as an incremental job's engine state, and a
    second generated set with a new class (crack) and fresh good and scratch images."""
    from linesight.vision.model import InspectionModel

    tmp = tmp_path_factory.mktemp("inc")
    root = generate_dataset(tmp / "base", n_good=24, per_class=14, seed=11, size=64, classes=("scratch",),
                            n_batches=1, n_stations=1)  # fmt: skip
    samples = load_manifest(root, unknown_columns="ignore")
    model = InspectionModel.create("efficientnet-lite0", seed=0, input_size=(64, 64))
    model.fit([read_image(s.image) for s in samples], [s.label for s in samples],
              groups=[s.part_id for s in samples])  # fmt: skip
    model.save(tmp / "engine")
    extra = generate_dataset(tmp / "extra", n_good=8, per_class=8, seed=12, size=64,
                             classes=("scratch", "crack"), n_batches=1, n_stations=1)  # fmt: skip
    return tmp / "engine", extra


def _same(a: list[Any], b: list[Any]) -> None:
    assert len(a) == len(b)
    for p, q in zip(a, b, strict=True):
        assert p.is_defect == q.is_defect and p.top_class == q.top_class
        assert p.anomaly_score == pytest.approx(q.anomaly_score, rel=1e-3, abs=1e-4)
        assert p.defect_probability == pytest.approx(q.defect_probability, rel=1e-3, abs=1e-4)


def test_frozen_features_predict_what_the_engine_predicts(base: tuple[Path, Path]) -> None:
    from linesight.vision.model import InspectionModel

    engine, extra = base
    model = InspectionModel.load(engine)
    samples = load_manifest(extra, unknown_columns="ignore")
    images = [read_image(s.image) for s in samples]
    frozen = FrozenFeatures(model, images)
    _same(frozen.predict(model), model.predict(images))
    model.add_class([img for s, img in zip(samples, images, strict=True) if s.label == "crack"], "crack")
    _same(frozen.predict(model), model.predict(images))  # the extended head, no second network pass
    assert {p.top_class for p in frozen.predict(model)} >= {"crack"}


def _with_splits(extra: Path, out: Path, split_of: dict[str, str]) -> Path:
    """A copy of `extra` whose every other row of the classes in `split_of` has that split."""
    shutil.copytree(extra, out)
    rows = list(csv.DictReader((extra / "manifest.csv").open(newline="")))
    seen: dict[str, int] = {}
    for r in rows:
        seen[r["label"]] = seen.get(r["label"], 0) + 1
        r["split"] = split_of.get(r["label"], "train") if seen[r["label"]] % 2 else "train"
    with (out / "manifest.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out


def test_old_classes_are_measured_on_val_rows_never_learned(base: tuple[Path, Path], tmp_path: Path) -> None:
    engine, extra = base
    data = _with_splits(extra, tmp_path / "data", {"scratch": "val", "good": "val"})
    rows = list(csv.DictReader((data / "manifest.csv").open(newline="")))
    val_scratch = sum(1 for r in rows if r["label"] == "scratch" and r["split"] == "val")
    good_train = sum(1 for r in rows if r["label"] == "good" and r["split"] == "train")
    assert 0 < good_train < sum(1 for r in rows if r["label"] == "good")
    said: list[str] = []
    trained = train_incremental(engine, data, TrainingOptions(), tmp_path / "work",
                                lambda stage, _f, _m: said.append(stage), base_model="m0")  # fmt: skip
    m = trained.metrics
    assert m["old_class_recall_in_sample"] == 0.0 and m["old_class_images_measured"] == val_scratch
    assert m["new_classes"] == 1.0 and 0.0 <= m["new_class_recall_after"] <= 1.0
    assert 0.0 <= m["old_class_recall_before"] <= 1.0 and 0.0 <= m["old_class_recall_after"] <= 1.0
    # the good rows of the val split were measured, not learned
    assert any("confirmed frames learned" in n and f"good: {good_train}" in n for n in trained.notes), (
        trained.notes
    )
    assert {"seconds_eval_before", "seconds_add_class", "seconds_export", "seconds_package"} <= set(m)
    assert said[:2] == ["load", "dataset"] and "export" in said
    assert trained.artifact[:2] == b"\x1f\x8b" and trained.engine[:2] == b"\x1f\x8b"  # gzip


def test_without_val_rows_the_figure_is_marked_in_sample(base: tuple[Path, Path], tmp_path: Path) -> None:
    engine, extra = base
    trained = train_incremental(engine, extra, TrainingOptions(), tmp_path / "work", lambda *_: None)
    assert trained.metrics["old_class_recall_in_sample"] == 1.0
    scratch = sum(1 for s in load_manifest(extra, unknown_columns="ignore") if s.label == "scratch")
    assert trained.metrics["old_class_images_measured"] == scratch
    assert np.isfinite(trained.metrics["old_class_recall_after"])


def test_incremental_model_carries_its_lineage(base: tuple[Path, Path], tmp_path: Path) -> None:
    import io
    import json
    import tarfile

    engine, extra = base
    trained = train_incremental(engine, extra, TrainingOptions(seed=3), tmp_path / "work", lambda *_: None,
                                base_model="m-base")  # fmt: skip
    with tarfile.open(fileobj=io.BytesIO(trained.artifact), mode="r:gz") as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/lineage.json"))
        handle = tar.extractfile(member)
        assert handle is not None
        lineage = json.loads(handle.read())
    assert lineage["parameters"]["mode"] == "incremental" and lineage["parameters"]["base_model"] == "m-base"
    assert lineage["parameters"]["added_classes"] == ["crack"] and lineage["code_version"]


def test_seeded_known_defect_parts_are_reported_apart(base: tuple[Path, Path]) -> None:
    from dataclasses import replace

    from linesight.training.app.trainer import evaluate_model
    from linesight.vision.model import InspectionModel

    engine, extra = base
    model = InspectionModel.load(engine)
    samples = load_manifest(extra, unknown_columns="ignore")
    scratch = [s for s in samples if s.label == "scratch"]
    holdout = [replace(s, extra=(("seeded", "yes"),)) for s in scratch[:4]] + [
        s for s in samples if s not in scratch[:4]
    ]
    evaluation = evaluate_model(model, holdout, None)
    seeded = evaluation["seeded"]
    assert seeded["images"] == 4 and seeded["parts"] == len({s.part_id for s in scratch[:4]})
    assert evaluation["metrics"]["seeded_recall"] == seeded["caught"] / 4
    assert len(seeded["missed"]) == 4 - seeded["caught"]
    assert "seeded" not in evaluate_model(model, samples, None)
