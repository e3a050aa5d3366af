"""Review selection policy: reasons, priorities, audit sampling, rate cap and budget."""

from __future__ import annotations

import numpy as np
import pytest

from linesight.vision.components.scoring import Prediction
from linesight.vision.selection import Reason, ReviewSelector, ScoreBatch, SelectionConfig, candidates


def _batch(
    p: list[float], anomaly: list[float] | None = None, novelty: list[float] | None = None
) -> ScoreBatch:
    n = len(p)
    return ScoreBatch.of(p, 0.5, anomaly if anomaly is not None else [0.5] * n, novelty)


def test_each_reason_is_found_and_named() -> None:
    cfg = SelectionConfig(audit_pass_rate=0.0, audit_reject_rate=0.0, anomaly_high=3.0, anomaly_low=0.2)
    batch = _batch(
        [0.05, 0.55, 0.02, 0.99, 0.03, 0.97],
        anomaly=[5.0, 1.0, 0.5, 0.1, 0.5, 1.5],
        novelty=[0.1, 0.1, 2.5, 0.1, 0.5, float("nan")],
    )
    reasons, _ = candidates(batch, cfg, np.ones(6))
    assert reasons == [Reason.DISAGREEMENT, Reason.UNCERTAIN, Reason.NOVEL, Reason.DISAGREEMENT, None, None]


def test_audit_samples_passes_and_rejects_at_their_rates() -> None:
    cfg = SelectionConfig(band_logit=0.0, audit_pass_rate=0.05, audit_reject_rate=0.3, anomaly_high=99)
    n = 20000
    rng = np.random.default_rng(1)
    p = np.where(rng.random(n) < 0.5, 0.01, 0.99)
    reasons, _ = candidates(ScoreBatch.of(p, 0.5, np.zeros(n)), cfg, rng.random(n))
    audited = np.array([r == Reason.AUDIT for r in reasons])
    assert abs(audited[p < 0.5].mean() - 0.05) < 0.01
    assert abs(audited[p > 0.5].mean() - 0.3) < 0.02


def test_audit_draws_depend_on_frame_keys_not_batching() -> None:
    cfg = SelectionConfig(band_logit=0.0, audit_pass_rate=0.2, rate_cap=1.0, burst=1000)
    keys = [f"frame-{i}" for i in range(200)]
    batch = _batch([0.01] * 200)
    whole = ReviewSelector(cfg).select(batch, station="s1", keys=keys).review
    sel = ReviewSelector(cfg)
    parts = [
        sel.select(_batch([0.01] * 50), station="s1", keys=keys[i : i + 50]).review for i in range(0, 200, 50)
    ]
    assert np.array_equal(whole, np.concatenate(parts))
    assert 20 < whole.sum() < 60
    other = ReviewSelector(
        SelectionConfig(band_logit=0.0, audit_pass_rate=0.2, rate_cap=1.0, burst=1000, seed=1)
    )
    assert not np.array_equal(whole, other.select(batch, station="s1", keys=keys).review)


def test_rate_cap_takes_the_best_candidates_first_and_keeps_stations_apart() -> None:
    cfg = SelectionConfig(band_logit=2.0, audit_pass_rate=0.0, audit_reject_rate=0.0, rate_cap=0.1, burst=2)
    sel = ReviewSelector(cfg)
    p = [0.3, 0.49, 0.6, 0.45, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01]  # four within the band
    r = sel.select(_batch(p), station="a")
    assert r.routed == [1, 3]  # 1 starting token + 10 x 0.1: the two closest to the threshold
    assert r.reasons[1] == "uncertain" and r.candidates[0] == "uncertain"
    r2 = sel.select(_batch(p * 3), station="a")  # 3 more tokens refilled, burst 2 caps them
    assert len(r2.routed) == 2
    assert len(sel.select(_batch(p[:5]), station="b").routed) == 1  # another station, own bucket
    assert sel.station_state("a")["routed"] == 4
    assert sel.station_state("a")["by_reason"] == {"uncertain": 4}


def test_budget_is_a_hard_cap_per_station() -> None:
    cfg = SelectionConfig(band_logit=10.0, rate_cap=1.0, burst=100, budget=7)
    sel = ReviewSelector(cfg)
    total = sum(len(sel.select(_batch([0.5] * 5), station="a").routed) for _ in range(5))
    assert total == 7
    assert len(sel.select(_batch([0.5] * 5), station="b").routed) == 5


def test_predictions_are_read_with_type_confidence_and_novelty() -> None:
    heat = np.zeros((2, 2), np.float32)
    preds = [
        Prediction(0.5, {"good": 0.2, "crack": 0.45, "break": 0.35}, heat, 0.8, 0.5, "crack", novelty=0.3),
        Prediction(0.5, {"good": 0.9, "crack": 0.1}, heat, 0.1, 0.5),
    ]
    batch = ScoreBatch.from_predictions(preds)
    assert batch.type_confidence[0] == pytest.approx(0.45 / 0.8)
    assert batch.novelty[0] == pytest.approx(0.3) and np.isnan(batch.novelty[1])
    reasons, _ = candidates(
        batch, SelectionConfig(band_logit=0.5, type_band=0.7, audit_pass_rate=0), np.ones(2)
    )
    assert reasons == [Reason.UNCERTAIN, None]


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError):
        SelectionConfig(rate_cap=1.5)
    with pytest.raises(ValueError):
        ScoreBatch.of([0.1, 0.2], 0.5, [1.0])


def test_segmentation_region_on_a_passed_frame_is_a_disagreement() -> None:
    """A frame the head passes but whose segmentation map peaks above ``region_high`` goes to
    review first; without a segmentation head (NaN) or below the line it does not."""
    heat = np.zeros((4, 4), np.float32)
    hot = heat.copy()
    hot[1, 2] = 2.5
    seg = np.zeros((2, 2), np.int64)
    preds = [
        Prediction(0.5, {"good": 0.98, "blowhole": 0.02}, hot, 0.02, 0.5, segmentation=seg),
        Prediction(0.5, {"good": 0.98, "blowhole": 0.02}, hot, 0.02, 0.5),  # PatchCore's map only
        Prediction(0.5, {"good": 0.98, "blowhole": 0.02}, heat, 0.02, 0.5, segmentation=seg),
    ]
    batch = ScoreBatch.from_predictions(preds)
    assert batch.region_score[0] == pytest.approx(2.5) and np.isnan(batch.region_score[1])
    cfg = SelectionConfig(region_high=2.0, audit_pass_rate=0.0)
    reasons, priority = candidates(batch, cfg, np.ones(3))
    assert reasons == [Reason.DISAGREEMENT, None, None]
    assert priority[0] == pytest.approx(2.5)
    assert candidates(batch, SelectionConfig(audit_pass_rate=0.0), np.ones(3))[0] == [None, None, None]
    with pytest.raises(ValueError):
        SelectionConfig(region_high=0.0)


def test_fill_spends_the_budget_on_the_least_certain_frames_last() -> None:
    """With ``fill`` frames without a reason still compete, after every reason, closest to the
    operating point first, so a budget is used where the reasons run out."""
    p = [0.01, 0.3, 0.6, 0.001, 0.45, 0.2]  # 0.45 and 0.6 are within the band
    base = {"band_logit": 0.5, "audit_pass_rate": 0.0, "audit_reject_rate": 0.0, "rate_cap": 1.0, "burst": 4}
    strict = ReviewSelector(SelectionConfig(**base)).select(_batch(p), station="s")  # type: ignore[arg-type]
    assert strict.routed == [2, 4]
    filled = ReviewSelector(SelectionConfig(**base, fill=True)).select(_batch(p), station="s")  # type: ignore[arg-type]
    assert filled.routed == [1, 2, 4, 5]
    assert [filled.reasons[i] for i in (1, 2, 4, 5)] == [
        "least_certain",
        "uncertain",
        "uncertain",
        "least_certain",
    ]
    reasons, _ = candidates(_batch(p), SelectionConfig(**base, fill=True), np.ones(6))  # type: ignore[arg-type]
    assert None not in reasons
