"""InspectionModel end to end on a small synthetic set: fit, predict, recalibrate, save/load, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from linesight.vision.model import GOOD, InputError, InspectionModel
from linesight.vision.taxonomy import bundled_taxonomy
from tests.unit.vision.engine_helpers import small_model, synthetic_set


def test_fit_predict_shapes_and_operating_point() -> None:
    model, _imgs, _labels = small_model()
    assert model.classes == [GOOD, "scratch", "spot"]
    assert set(model.thresholds) == {"anomaly", "defect"}
    assert model.version != "untrained"
    test_imgs, test_labels = synthetic_set({"good": 6, "spot": 4, "scratch": 4}, seed=99)
    preds = model.predict(test_imgs)
    assert len(preds) == len(test_imgs)
    for img, p in zip(test_imgs, preds, strict=True):
        assert p.heatmap.shape == img.shape[:2] and p.heatmap.dtype == np.float32
        assert set(p.class_probs) == set(model.classes)
        assert 0.0 <= p.defect_probability <= 1.0
        assert p.defect_threshold == model.thresholds["defect"]
    y = np.array([lab != GOOD for lab in test_labels])
    s = np.array([p.defect_probability for p in preds])
    assert s[y].min() > s[~y].max()  # synthetic defects are easy: perfect separation
    correct = [
        max(p.class_probs, key=p.class_probs.get) == lab for p, lab in zip(preds, test_labels, strict=True)
    ]
    assert np.mean(correct) >= 0.9


def test_fit_report_has_timings_and_bank_size() -> None:
    imgs, labels = synthetic_set({"good": 12, "spot": 6}, seed=3)
    model = InspectionModel.create(seed=0, input_size=(64, 64), min_examples=5, augment_copies=1, cv_folds=3)
    rep = model.fit(imgs, labels)
    assert rep.classes == [GOOD, "spot"]
    assert rep.memory_bank_rows > 0 and rep.memory_bank_mb > 0
    assert rep.memory_bank_mb_per_100_images == pytest.approx(
        rep.memory_bank_mb / rep.n_bank_images * 100, rel=0.01
    )
    assert {"features", "patchcore", "head", "total"} <= set(rep.timings)
    assert rep.n_bank_images + rep.n_calibration_good == 12  # bank and calibration images are disjoint


def test_rare_class_is_anomaly_only() -> None:
    imgs, labels = synthetic_set({"good": 12, "spot": 6, "scratch": 3}, seed=4)
    model = InspectionModel.create(seed=0, input_size=(64, 64), min_examples=5, augment_copies=1, cv_folds=3)
    rep = model.fit(imgs, labels)
    assert rep.anomaly_only_classes == ["scratch"]
    # too few for an automatic head: a provisional output (reviewer's hint), or none below 5
    assert "scratch" not in model.classes
    imgs5, labels5 = synthetic_set({"good": 12, "spot": 6, "scratch": 5}, seed=4)
    model5 = InspectionModel.create(seed=0, input_size=(64, 64), min_examples=7, augment_copies=1, cv_folds=3)
    rep5 = model5.fit(imgs5, labels5)
    assert rep5.anomaly_only_classes == ["scratch", "spot"]
    pred5 = model5.predict(imgs5[:1])[0]
    assert pred5.provisional_classes == ("scratch", "spot")
    # what the review reason quotes: labelled training images of each, and the minimum
    assert pred5.provisional_examples == {"scratch": 5, "spot": 6} and pred5.min_examples == 7


def test_save_load_gives_identical_predictions(tmp_path: Path) -> None:
    model, imgs, _ = small_model()
    model.save(tmp_path / "m")
    loaded = InspectionModel.load(tmp_path / "m")
    assert loaded.version == model.version and loaded.classes == model.classes
    assert loaded.thresholds == model.thresholds
    a, b = model.predict(imgs[:5]), loaded.predict(imgs[:5])
    for pa, pb in zip(a, b, strict=True):
        assert pa.defect_probability == pytest.approx(pb.defect_probability, abs=1e-6)
        assert pa.anomaly_score == pytest.approx(pb.anomaly_score, rel=1e-5)
    with pytest.raises(InputError, match="not a saved"):
        InspectionModel.load(tmp_path / "missing")


def test_golden_sample_recalibration_moves_thresholds_with_the_session(tmp_path: Path) -> None:
    model, _, _ = small_model()
    model.save(tmp_path / "m")
    m = InspectionModel.load(tmp_path / "m")  # keep the shared model untouched
    imgs, _ = synthetic_set({"good": 10}, seed=7)
    brighter = [np.clip(i.astype(np.int16) + 40, 0, 255).astype(np.uint8) for i in imgs]  # new lighting
    rep = m.recalibrate(brighter)
    assert rep.n_images == 10
    assert rep.old_thresholds == model.thresholds
    assert rep.new_thresholds == m.thresholds
    assert rep.new_thresholds["anomaly"] != rep.old_thresholds["anomaly"]
    assert m.version != model.version
    with pytest.raises(InputError, match="at least 5"):
        m.recalibrate(brighter[:2])


def test_bad_input_fails_clearly() -> None:
    model, imgs, _ = small_model()
    with pytest.raises(InputError, match="empty"):
        model.predict([])
    with pytest.raises(InputError, match="dtype float32"):
        model.predict([np.zeros((32, 32), np.float32)])
    with pytest.raises(InputError, match="shape"):
        model.predict([np.zeros((32, 32, 5), np.uint8)])
    with pytest.raises(InputError, match="too small"):
        model.predict([np.zeros((4, 4), np.uint8)])
    with pytest.raises(InputError, match="list"):
        model.predict(np.zeros((32, 32), np.uint8))
    fresh = InspectionModel.create(seed=0, input_size=(64, 64))
    with pytest.raises(RuntimeError, match="not fitted"):
        fresh.predict(imgs[:1])
    with pytest.raises(InputError, match="empty"):
        fresh.fit([], [])
    with pytest.raises(InputError, match="single example"):
        fresh.fit(imgs[:8] + imgs[-1:], ["good"] * 8 + ["scratch"])
    with pytest.raises(InputError, match="labels"):
        fresh.fit(imgs[:3], ["good"] * 2)
    with pytest.raises(InputError, match="not classes of taxonomy"):
        fresh.fit(imgs[:10], ["good"] * 8 + ["dent"] * 2, taxonomy=bundled_taxonomy("magnetic_tile"))
    with pytest.raises(InputError, match="at least 4"):
        fresh.fit(imgs[:2], ["good"] * 2)
    with pytest.raises(InputError, match="input_size"):
        InspectionModel.create(input_size=(100, 100))
    with pytest.raises(InputError, match="unknown model option"):
        InspectionModel.create(colour=True)


def test_rgba_and_16bit_inputs_are_accepted() -> None:
    model, imgs, _ = small_model()
    g = imgs[0]
    rgba = np.dstack([g, g, g, np.full_like(g, 255)])
    deep = g.astype(np.uint16) * 257
    p = model.predict([g, rgba, deep])
    assert p[0].defect_probability == pytest.approx(p[1].defect_probability, abs=1e-4)
    assert p[0].defect_probability == pytest.approx(p[2].defect_probability, abs=1e-4)


def test_without_good_images_the_model_classifies_types_only(tmp_path: Path) -> None:
    imgs, labels = synthetic_set({"spot": 8, "scratch": 8}, seed=5)
    model = InspectionModel.create(seed=0, input_size=(64, 64), min_examples=5, augment_copies=0, cv_folds=3)
    rep = model.fit(imgs, labels)
    assert rep.classes == ["scratch", "spot"] and rep.memory_bank_rows == 0
    test, test_labels = synthetic_set({"spot": 3, "scratch": 3}, seed=6)
    preds = model.predict(test)
    assert all(p.defect_probability == 1.0 and p.anomaly_score == 0.0 for p in preds)
    assert [max(p.class_probs, key=p.class_probs.get) for p in preds] == test_labels
    model.save(tmp_path / "m")
    assert InspectionModel.load(tmp_path / "m").predict(test[:1])[0].class_probs.keys() == {"scratch", "spot"}
    with pytest.raises(InputError, match="no 'good' class"):
        model.recalibrate(test + test)
    with pytest.raises(InputError, match="two classes"):
        InspectionModel.create(seed=0, input_size=(64, 64), min_examples=5).fit(imgs[:8], labels[:8])


def test_recalibration_moves_the_defect_threshold_only_beyond_sampling_noise() -> None:
    from linesight.vision.components.calibrate import logit, recalibrated_threshold

    rng = np.random.default_rng(0)
    reference = 1 / (1 + np.exp(-rng.normal(-4.0, 1.5, 300)))
    thr0 = 0.3

    def golden(mu: float, sd: float, seed: int) -> np.ndarray:
        return 1 / (1 + np.exp(-np.random.default_rng(seed).normal(mu, sd, 20)))

    # Sessions drawn from the training side's own distribution: the threshold stays put in most
    # draws and never moves by more than a fraction of a logit.
    same = [recalibrated_threshold(reference, golden(-4.0, 1.5, s), thr0, guard=False) for s in range(40)]
    assert sum(r.shift_logit == 0.0 for r in same) >= 20
    assert max(abs(r.shift_logit) for r in same) < 0.6
    # A brighter session (every good frame +2 logits) raises it by most of the shift; a quieter
    # one lowers it; the evidence is reported.
    up = recalibrated_threshold(reference, golden(-2.0, 1.5, 1), thr0, guard=False)
    down = recalibrated_threshold(reference, golden(-6.0, 1.5, 2), thr0, guard=False)
    assert up.threshold > thr0 and up.shift_logit > 1.0
    assert down.threshold < thr0 and down.shift_logit < -1.0
    assert float(logit(up.threshold) - logit(thr0)) == pytest.approx(up.shift_logit)
    assert abs(up.shift_logit) == pytest.approx(abs(up.observed_shift_logit) - up.noise_logit)
    assert up.noise_logit > 0 and up.n_frames == 20 and up.quantile == 0.75
    # Seeded: the same frames give the same threshold.
    assert recalibrated_threshold(reference, golden(-2.0, 1.5, 1), thr0, guard=False) == up
    # Guarded (the default): the move goes no further than the golden frames' highest score
    # allows, so it may decline part or all of it, and says how much.
    for unguarded, seed, mu in ((up, 1, -2.0), (down, 2, -6.0)):
        g = recalibrated_threshold(reference, golden(mu, 1.5, seed), thr0)
        assert 0.0 <= g.shift_logit / unguarded.shift_logit <= 1.0
        assert g.shift_logit + g.declined_logit == pytest.approx(unguarded.shift_logit)
        assert g.anchor_logit is not None
    guarded_same = [recalibrated_threshold(reference, golden(-4.0, 1.5, s), thr0) for s in range(40)]
    assert sum(r.shift_logit == 0.0 for r in guarded_same) >= sum(r.shift_logit == 0.0 for r in same)
    with pytest.raises(ValueError, match="reference and golden"):
        recalibrated_threshold(reference, np.zeros(0), thr0)
    with pytest.raises(ValueError, match="quantile"):
        recalibrated_threshold(reference, golden(-4.0, 1.5, 3), thr0, quantile=1.0)


def test_recalibrate_reports_the_shift_and_changes_version() -> None:
    import copy

    base, imgs, labels = small_model()
    model = copy.deepcopy(base)
    good = [im for im, lab in zip(imgs, labels, strict=True) if lab == "good"]
    before = model.version
    rep = model.recalibrate(good[:10])
    assert {"defect_logit", "observed_shift_logit", "noise_logit", "golden_above_old"} <= set(rep.shift)
    assert rep.model_version == model.version != before
    assert 0.0 < model.thresholds["defect"] < 1.0


def test_chunking_does_not_change_a_frames_prediction() -> None:
    """Frames of different sizes in chunks of three give each frame its own prediction, in order."""
    model, imgs, _ = small_model()
    frames = [imgs[i] if i % 3 else imgs[i][: 60 + i, : 70 + 2 * i] for i in range(11)]
    one_by_one = [model.predict([f])[0] for f in frames]
    chunked = model.predict(frames, batch_size=3)
    assert len(chunked) == len(frames)
    for a, b in zip(one_by_one, chunked, strict=True):
        assert a.heatmap.shape == b.heatmap.shape
        assert abs(a.defect_probability - b.defect_probability) < 1e-5
        assert abs(a.anomaly_score - b.anomaly_score) < 1e-4
        assert a.top_class == b.top_class
    with pytest.raises(InputError, match="batch_size"):
        model.predict(frames, batch_size=0)
