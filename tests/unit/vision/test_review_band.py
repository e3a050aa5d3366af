"""Review bands fitted to a review target; the three-way trade-off; why frames go to review."""

from __future__ import annotations

import numpy as np
import pytest

from linesight.vision.decide import decide
from linesight.vision.model import Prediction
from linesight.vision.model.review_band import (
    band_outcomes,
    fit_review_band,
    review_breakdown,
    review_reason_code,
    review_report,
    tradeoff,
)
from linesight.vision.taxonomy import bundled_taxonomy


def _scores(seed: int = 0, spread: float = 1.2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    good = 1 / (1 + np.exp(-rng.normal(-4.0, spread, 900)))
    bad = 1 / (1 + np.exp(-rng.normal(4.0, spread, 100)))
    d = np.r_[good, bad]
    top = np.clip(d * rng.uniform(0.85, 1.0, len(d)), 0, 1)  # most defect mass on one class
    return d, top, np.r_[np.zeros(900, bool), np.ones(100, bool)]


def test_band_meets_the_error_targets_with_the_least_review() -> None:
    d, top, y = _scores()
    band = fit_review_band(d, top, y, 0.5, target_review=0.05, target_frr=0.02, target_escape=0.02)
    assert band.feasible
    assert band.oof.false_reject_rate <= 0.02 and band.oof.escape_rate <= 0.02
    assert band.oof.review_rate <= 0.05
    cheaper = [
        p
        for p in tradeoff(d, top, y, 0.5)
        if p.false_reject_rate <= 0.02 and p.escape_rate <= 0.02 and p.review_rate < band.oof.review_rate
    ]
    assert cheaper == []  # nothing reviews less within the targets


def test_infeasible_targets_stay_within_the_review_budget_and_say_so() -> None:
    d, top, y = _scores(spread=3.0)  # overlapping: no band is error-free without review
    band = fit_review_band(d, top, y, 0.5, target_review=0.0, target_frr=1e-4, target_escape=1e-4)
    least = min(p.review_rate for p in tradeoff(d, top, y, 0.5))
    assert not band.feasible and band.oof.review_rate == least


def test_forced_review_frames_are_never_automatic() -> None:
    d = np.array([0.9, 0.1])
    forced = np.array([True, False])
    rej, acc = band_outcomes(d, d, 0.5, 0.5, 0.5, forced)
    assert list(rej) == [False, False] and list(acc) == [False, True]


def test_prevalence_weights_the_review_load() -> None:
    d, top, y = _scores()
    p_mix = tradeoff(d, top, y, 0.5, grid=[0.99])[0]
    p_rare = tradeoff(d, top, y, 0.5, grid=[0.99], prevalence=0.01)[0]
    assert p_mix.review_rate != pytest.approx(p_rare.review_rate)


def test_decide_uses_the_fitted_band_and_reasons_are_coded() -> None:
    tax = bundled_taxonomy("magnetic_tile")  # auto_accept 0.85
    heat = np.zeros((20, 20), np.float32)
    pred = Prediction(0.2, {"good": 0.3, "crack": 0.7}, heat, 0.7, 0.5)
    assert decide(pred, tax).verdict == "review"
    pred.review_band = (0.9, 0.6)
    assert decide(pred, tax).verdict == "defect"
    ok = Prediction(0.2, {"good": 0.8, "crack": 0.2}, heat, 0.2, 0.5, review_band=(0.75, 0.6))
    assert decide(ok, tax).verdict == "pass"
    ok.review_band = (0.9, 0.6)
    r = decide(ok, tax)
    assert r.verdict == "review" and review_reason_code(r.review_reason) == "low_confidence_good"
    table = review_breakdown(
        [r.review_reason, None, "anomaly score above threshold"], ["good", "good", "crack"]
    )
    assert table == {"crack": {"anomaly_without_class": 1}, "good": {"low_confidence_good": 1}}


def test_segmentation_veto_what_if_moves_only_unlocalised_anomaly_reviews() -> None:
    tax = bundled_taxonomy("magnetic_tile")
    seg = np.zeros((4, 4), np.int64)
    flat = np.zeros((20, 20), np.float32)
    spot = flat.copy()
    spot[5:8, 5:8] = 1.5  # the segmentation head localises something

    def pred(heat: np.ndarray, novelty: float) -> Prediction:
        p = Prediction(1.4, {"good": 0.95, "crack": 0.05}, heat, 0.05, 0.5, novelty=novelty)
        p.segmentation = seg
        p.segmentation_classes = ("_background", "crack")
        return p

    preds = [pred(flat, 0.5), pred(flat, 2.0), pred(spot, 0.5), pred(flat, 0.5)]
    labels = ["good", "good", "crack", "crack"]
    rep = review_report(preds, labels, tax)
    assert rep["review_rate"] == 1.0  # all four: anomaly over threshold without a class
    veto = rep["segmentation_veto"]
    # segmentation alone: the three flat maps leave review (two good passes, one defect escapes)
    assert veto["segmentation"]["left_review_good"] == 2 and veto["segmentation"]["left_review_defect"] == 1
    assert veto["segmentation"]["review_rate"] == 0.25 and veto["segmentation"]["escape_rate"] == 0.5
    # with the novelty guard the novel-looking good frame stays in review
    assert veto["novelty"]["left_review_good"] == 1 and veto["novelty"]["review_rate"] == 0.5
    plain = review_report([Prediction(1.4, {"good": 0.95, "crack": 0.05}, flat, 0.05, 0.5)], ["good"], tax)
    assert plain["segmentation_veto"] is None  # no segmentation head: nothing to trust
