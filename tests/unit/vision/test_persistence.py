"""InspectionModel artifacts: format 2 round trip, format 1 (the flat layout of earlier releases)
still loads and predicts as the engine that wrote it, and a newer format is refused clearly.

tests/fixtures/inspection_model_v1 was written by the engine before its state was typed
(a small frozen-feature model fitted on good + spot, then ``add_class("scratch")``), together
with that engine's predictions on six images (``expected.npz``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from linesight.vision.model import InputError, InspectionModel
from linesight.vision.model.persistence import FORMAT_VERSION
from linesight.vision.model.state import CalibrationSet, ReplayStore

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "inspection_model_v1"


def _expected() -> tuple[dict[str, np.ndarray], dict[str, object]]:
    return dict(np.load(FIXTURE / "expected.npz")), json.loads((FIXTURE / "expected.json").read_text())


def _outputs(model: InspectionModel, images: list[np.ndarray]) -> dict[str, np.ndarray]:
    preds = model.predict(images)
    return {
        "defect_probability": np.array([p.defect_probability for p in preds]),
        "anomaly_score": np.array([p.anomaly_score for p in preds]),
        "class_probs": np.array([[p.class_probs[c] for c in model.classes] for p in preds]),
        "heatmap": np.stack([p.heatmap for p in preds]),
    }


def test_format_1_artifact_predicts_as_the_engine_that_wrote_it() -> None:
    assert json.loads((FIXTURE / "model" / "model.json").read_text())["format_version"] == 1
    expected, meta = _expected()
    model = InspectionModel.load(FIXTURE / "model")
    assert model.classes == meta["classes"] and model.thresholds == meta["thresholds"]
    assert model.version == meta["version"]
    got = _outputs(model, list(expected["images"]))
    for key in ("defect_probability", "anomaly_score", "class_probs"):
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-6, err_msg=key)
    np.testing.assert_allclose(got["heatmap"], expected["heatmap"].astype(np.float32), rtol=2e-3, atol=2e-3)


def test_format_1_and_its_format_2_save_are_the_same_model(tmp_path: Path) -> None:
    v1 = InspectionModel.load(FIXTURE / "model")
    v1.save(tmp_path / "v2")
    meta = json.loads((tmp_path / "v2" / "model.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION == 2
    v2 = InspectionModel.load(tmp_path / "v2")
    assert (v2.version, v2.classes, v2.thresholds, v2.metrics) == (
        v1.version,
        v1.classes,
        v1.thresholds,
        v1.metrics,
    )
    assert v2.anomaly_only_classes == v1.anomaly_only_classes and v2.target_frr == v1.target_frr
    for name in ("x", "groups", "original", "oof"):
        np.testing.assert_array_equal(getattr(v2.replay, name), getattr(v1.replay, name), err_msg=name)
    assert v2.replay.labels == v1.replay.labels
    for name in ("good_anomaly", "good_defect", "defect"):
        np.testing.assert_array_equal(getattr(v2.calibration, name), getattr(v1.calibration, name))
    images = list(_expected()[0]["images"])
    a, b = _outputs(v1, images), _outputs(v2, images)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # the incremental state survived too: both grow the same head from the replayed rows
    rng = np.random.default_rng(3)
    extra = [np.clip(rng.normal(128, 30, (64, 64)), 0, 255).astype(np.uint8) for _ in range(6)]
    ra, rb = v1.add_class(extra, "dent"), v2.add_class(extra, "dent")
    assert ra.classes == rb.classes and ra.thresholds == rb.thresholds and ra.cv_metrics == rb.cv_metrics


def test_a_save_from_before_the_interior_extremes_keeps_its_descriptor(tmp_path: Path) -> None:
    """Configs saved before ``interior_margin`` existed describe frames without the interior
    extremes: loading one must not give its head a descriptor of another length."""
    InspectionModel.load(FIXTURE / "model").save(tmp_path / "v2")
    meta = json.loads((tmp_path / "v2" / "model.json").read_text())
    assert meta["config"].pop("interior_margin") == 0.0
    (tmp_path / "v2" / "model.json").write_text(json.dumps(meta))
    model = InspectionModel.load(tmp_path / "v2")
    assert model.config.interior_margin == 0.0 and model.net.pooled_dim == model.replay.x.shape[1]
    expected, _ = _expected()
    got = _outputs(model, list(expected["images"]))
    np.testing.assert_allclose(
        got["defect_probability"], expected["defect_probability"], rtol=1e-5, atol=1e-6
    )


def test_a_newer_format_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    target = tmp_path / "future"
    shutil.copytree(FIXTURE / "model", target)
    meta = json.loads((target / "model.json").read_text())
    meta["format_version"] = 3
    (target / "model.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"model format 3 is not one this engine reads \(1 or 2\)"):
        InspectionModel.load(target)


def test_replay_rows_cannot_fall_out_of_step() -> None:
    x = np.zeros((3, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="out of step"):
        ReplayStore(x, ("good", "good"), np.zeros(3, np.int64), np.ones(3, bool))
    store = ReplayStore.of(x, ["good", "spot", "spot"], np.array([0, 1, 1]), np.array([True, True, False]))
    store = store.with_oof(np.ones((3, 2)))
    grown = store.append(np.ones((2, 4)), ["dent", "dent"], np.array([2, 2]), np.array([True, False]))
    assert len(grown) == 5 and grown.oof.shape == (3, 2)  # new rows have no out-of-fold logits yet
    assert grown.original_counts() == {"good": 1, "spot": 1, "dent": 1} and grown.next_group() == 3
    with pytest.raises(ValueError, match="out-of-fold rows"):
        ReplayStore(x[:1], ("good",), np.zeros(1, np.int64), np.ones(1, bool), np.ones((2, 2), np.float32))
    cal = CalibrationSet().with_defect_scores(np.array([0.1, 0.9, 0.2]), np.array([True, False, True]))
    assert cal.good_defect.tolist() == pytest.approx([0.1, 0.2]) and cal.defect.tolist() == pytest.approx(
        [0.9]
    )
