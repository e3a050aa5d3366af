"""Unit tests of review routing (inference/app/routing.py) and of the labeling side's queueing of
routed frames: every routed frame carries its reason, the audit sample is seeded per frame,
hard reasons pass the per-station cap and soft ones are held back (and counted) over it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from linesight.common.pb import common_pb2, events_pb2
from linesight.inference.app import routing
from linesight.inference.app.routing import ReviewRouter, RoutingConfig, TokenBucket
from linesight.labeling.app.routing import routed_reason
from linesight.vision.components.scoring import Prediction


def _prediction(p: float, anomaly: float, threshold: float = 0.5) -> Prediction:
    return Prediction(
        anomaly_score=anomaly,
        class_probs={"good": 1 - p, "scratch": p},
        heatmap=np.zeros((4, 4), np.float32),
        defect_probability=p,
        defect_threshold=threshold,
    )


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    clock = _Clock()
    bucket = TokenBucket(rate_per_s=1.0, burst=3, clock=clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    clock.t = 1.5
    assert bucket.take() and not bucket.take()
    clock.t = 100.0
    assert sum(bucket.take() for _ in range(10)) == 3


def test_the_engines_selection_gives_the_reasons_of_automatic_calls() -> None:
    cfg = RoutingConfig(selection={"band_logit": 1.0, "anomaly_high": 3.0, "anomaly_low": 0.2})
    router = ReviewRouter(cfg)
    kw: dict[str, Any] = {"frame_id": "f", "station": "p/l/s"}
    assert router.route(verdict="pass", prediction=_prediction(0.02, 0.3), **kw).reason == ""
    assert router.route(verdict="pass", prediction=_prediction(0.4, 0.3), **kw).reason == "uncertain"
    assert router.route(verdict="pass", prediction=_prediction(0.02, 3.5), **kw).reason == "disagreement"
    assert router.route(verdict="defect", prediction=_prediction(0.99, 0.1), **kw).reason == "disagreement"
    novel = _prediction(0.02, 0.3)
    novel.novelty = 1.7
    assert router.route(verdict="pass", prediction=novel, **kw).reason == "novel"
    # the engine's audit rates are the router's business (off unless configured here)
    assert (
        not ReviewRouter(RoutingConfig())
        .route(verdict="pass", prediction=_prediction(0.001, 0.1), **kw)
        .reason
    )
    with pytest.raises(ValueError, match="review_selection"):
        ReviewRouter(RoutingConfig(selection={"no_such_field": 1}))
    # not automatic: always routed, hard
    review = router.route(verdict="review", prediction=_prediction(0.8, 1.4), **kw)
    assert review.reason == "uncertain" and review.hard and review.routed
    assert router.route(verdict="error", prediction=None, **kw).reason == "error"
    repeated = router.route(
        verdict="pass", prediction=_prediction(0.02, 0.3), audit_codes=("REPEATED_FRAME",), **kw
    )
    assert repeated.reason == "repeated_frame" and repeated.hard


def test_audit_sample_is_seeded_per_frame_and_per_station() -> None:
    cfg = RoutingConfig(audit_rate=0.1, audit_rate_by_station={"s2": 0.5}, audit_seed="x")
    router = ReviewRouter(cfg, selector=lambda p, s: (False, ""))
    quiet = _prediction(0.01, 0.2)
    picks = [
        router.route(frame_id=f"f{i}", station="p/l/s1", verdict="pass", prediction=quiet).reason
        for i in range(2000)
    ]
    share = picks.count("audit") / len(picks)
    assert 0.08 < share < 0.12 and set(picks) == {"", "audit"}
    again = ReviewRouter(cfg, selector=lambda p, s: (False, ""))
    assert picks == [
        again.route(frame_id=f"f{i}", station="p/l/s1", verdict="pass", prediction=quiet).reason
        for i in range(2000)
    ]
    s2 = [
        router.route(frame_id=f"f{i}", station="p/l/s2", verdict="defect", prediction=quiet).reason
        for i in range(1000)
    ]
    assert 0.45 < s2.count("audit") / len(s2) < 0.55
    assert routing.sampled("x", "f", 0.0) is False


def test_over_the_cap_soft_reasons_are_held_back_and_counted_hard_ones_pass() -> None:
    clock = _Clock()
    cfg = RoutingConfig(rate_per_min=6.0, burst=2, rate_by_station={"s9": 0.0})
    router = ReviewRouter(cfg, selector=lambda p, s: (True, "novel"), clock=clock)
    novel = [
        router.route(frame_id=f"n{i}", station="p/l/s1", verdict="pass", prediction=_prediction(0.1, 0.2))
        for i in range(5)
    ]
    assert [r.routed for r in novel] == [True, True, False, False, False]
    assert all(r.reason == "novel" for r in novel) and [r.capped for r in novel[2:]] == [True] * 3
    # a hard reason is always routed, even with the bucket empty
    hard = router.route(frame_id="h", station="p/l/s1", verdict="review", prediction=_prediction(0.6, 1.3))
    assert hard.routed and not hard.capped
    assert router.counts[("p/l/s1", "novel", True)] == 3 and router.counts[("p/l/s1", "novel", False)] == 2
    # another station has its own bucket; one with rate 0 has no cap
    assert router.route(
        frame_id="o", station="p/l/s2", verdict="pass", prediction=_prediction(0.1, 0.2)
    ).routed
    assert all(
        router.route(
            frame_id=f"u{i}", station="p/l/s9", verdict="pass", prediction=_prediction(0.1, 0.2)
        ).routed
        for i in range(20)
    )
    clock.t = 10.0  # 6 per minute: one token back after 10 s
    assert router.route(
        frame_id="later", station="p/l/s1", verdict="pass", prediction=_prediction(0.1, 0.2)
    ).routed


def test_a_failing_selection_costs_only_the_selection() -> None:
    def broken(prediction: Any, station: str) -> tuple[bool, str]:
        raise RuntimeError("bug")

    router = ReviewRouter(RoutingConfig(audit_rate=1.0), selector=broken)
    assert (
        router.route(frame_id="f", station="p/l/s", verdict="pass", prediction=_prediction(0.1, 0.1)).reason
        == "audit"
    )


@pytest.mark.parametrize(
    ("verdict", "route", "capped", "expected"),
    [
        (common_pb2.VERDICT_PASS, "audit", False, ("audit", "AUDIT_SAMPLE_PASS")),
        (common_pb2.VERDICT_DEFECT, "audit", False, ("audit", "AUDIT_SAMPLE_REJECT")),
        (common_pb2.VERDICT_PASS, "novel", False, ("review", "NOVEL")),
        (common_pb2.VERDICT_DEFECT, "disagreement", False, ("review", "DISAGREEMENT")),
        (common_pb2.VERDICT_PASS, "novel", True, ("", "")),
        (common_pb2.VERDICT_PASS, "", False, ("", "")),
        (common_pb2.VERDICT_REVIEW, "uncertain", False, ("", "")),  # the review policy queues those
    ],
)
def test_labeling_queues_routed_automatic_calls_with_their_reason(
    verdict: int, route: str, capped: bool, expected: tuple[str, str]
) -> None:
    result = events_pb2.InspectionResult(
        frame_id="f", verdict=verdict, route_reason=route, route_capped=capped
    )  # type: ignore[arg-type]
    assert routed_reason(result) == expected


def test_routing_and_drift_settings_come_from_the_environment() -> None:
    from linesight.inference.app.config import InferenceConfig

    cfg = InferenceConfig.from_env(
        {
            "LINESIGHT_INFERENCE_REVIEW_SELECTION": '{"band_logit": 0.5}',
            "LINESIGHT_INFERENCE_REVIEW_AUDIT_RATE": "0.02",
            "LINESIGHT_INFERENCE_REVIEW_AUDIT_RATE_BY_STATION": '{"s1": 0.1}',
            "LINESIGHT_INFERENCE_REVIEW_RATE_PER_MIN": "30",
            "LINESIGHT_INFERENCE_REVIEW_RATE_BY_STATION": '{"l1/s2": 5}',
            "LINESIGHT_INFERENCE_REVIEW_BURST": "7",
            "LINESIGHT_INFERENCE_DRIFT_WINDOW": "300",
        }
    )
    assert cfg.review_selection == {"band_logit": 0.5} and cfg.review_audit_rate == 0.02
    assert cfg.review_audit_rate_by_station == {"s1": 0.1} and cfg.review_rate_by_station == {"l1/s2": 5.0}
    assert (cfg.review_rate_per_min, cfg.review_burst, cfg.drift_window) == (30.0, 7, 300)
    for bad in (
        {"LINESIGHT_INFERENCE_REVIEW_AUDIT_RATE": "1.5"},
        {"LINESIGHT_INFERENCE_REVIEW_RATE_BY_STATION": "[1, 2]"},
        {"LINESIGHT_INFERENCE_REVIEW_BURST": "0"},
    ):
        with pytest.raises(ValueError):
            InferenceConfig.from_env(bad)
