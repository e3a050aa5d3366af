"""Review policy, audit sampling, role table and agreement figures (no servers needed)."""

import pytest

from linesight.common.identity import Forbidden, Grant, Principal, Role
from linesight.common.identity.grpc import service_operations
from linesight.common.pb import common_pb2, events_pb2, labeling_pb2
from linesight.labeling.api.auth import safe_next
from linesight.labeling.api.policy import POLICY, RPC_OPERATIONS
from linesight.labeling.app import roles
from linesight.labeling.app.agreement import agreement, disagreement_rates
from linesight.labeling.app.routing import AuditSampler, ReviewPolicy, reason_words


def result(
    verdict: int, confidence: float, frame_id: str = "f", station: str = "st1"
) -> events_pb2.InspectionResult:
    r = events_pb2.InspectionResult(frame_id=frame_id, verdict=verdict, confidence=confidence)  # type: ignore[arg-type]
    r.capture.station.station = station
    return r


def test_policy_routes_doubtful_results_to_review() -> None:
    policy = ReviewPolicy(min_confidence=0.6)
    assert policy.reason(result(common_pb2.VERDICT_ERROR, 0.99)) == "ERROR"
    assert policy.reason(result(common_pb2.VERDICT_REVIEW, 0.99)) == "REVIEW"
    assert policy.reason(result(common_pb2.VERDICT_DEFECT, 0.5)) == "LOW_CONFIDENCE"
    assert policy.reason(result(common_pb2.VERDICT_PASS, 0.59)) == "LOW_CONFIDENCE"
    assert policy.reason(result(common_pb2.VERDICT_PASS, 0.95)) == ""
    assert policy.reason(result(common_pb2.VERDICT_UNSPECIFIED, 0.95)) == "NO_VERDICT"


def test_audit_sample_is_seeded_per_station_and_only_for_automatic_calls() -> None:
    sampler = AuditSampler(share=0.1, by_station={"hot": 1.0, "off": 0.0}, seed="a")
    frames = [f"frame-{i}" for i in range(2000)]
    picked = [f for f in frames if sampler.reason(result(common_pb2.VERDICT_PASS, 0.99, f))]
    assert 140 < len(picked) < 260  # ~10 %
    again = AuditSampler(share=0.1, seed="a")
    assert picked == [f for f in frames if again.reason(result(common_pb2.VERDICT_PASS, 0.99, f))]
    other_seed = AuditSampler(share=0.1, seed="b")
    assert picked != [f for f in frames if other_seed.reason(result(common_pb2.VERDICT_PASS, 0.99, f))]
    assert sampler.reason(result(common_pb2.VERDICT_DEFECT, 0.99, "x", "hot")) == "AUDIT_SAMPLE_REJECT"
    assert sampler.reason(result(common_pb2.VERDICT_PASS, 0.99, "x", "off")) == ""
    assert sampler.reason(result(common_pb2.VERDICT_REVIEW, 0.99, "x", "hot")) == ""


def test_reasons_read_as_plain_words() -> None:
    assert reason_words("LOW_CONFIDENCE") == "the model is not sure of its call"
    assert reason_words("AUDIT_SAMPLE_PASS") == "random audit of an automatic pass"
    assert reason_words("low confidence pass") == "low confidence pass"  # the engine's words stay


def test_every_rpc_and_role_is_in_the_policy() -> None:
    ops = service_operations(labeling_pb2.DESCRIPTOR.services_by_name["LabelingService"])
    assert POLICY.unmapped(ops) == []
    assert set(RPC_OPERATIONS) == {op.split("/")[1] for op in ops}
    reviewer = Principal("r", "r", "user", (Grant(Role.REVIEWER, "p1", "tile"),))
    assert roles.acting_role(reviewer, roles.REVIEW, "p1", "tile") == Role.REVIEWER
    with pytest.raises(Forbidden):
        roles.acting_role(reviewer, roles.REVIEW, "p1", "glass")  # another product
    with pytest.raises(Forbidden):
        roles.acting_role(reviewer, roles.DECIDE, "p1", "tile")


def test_kappa_figures_match_the_hand_computed_ones() -> None:
    labels = {
        "ann": {"f1": "good", "f2": "scratch", "f3": "dent", "f4": "good"},
        "bob": {"f1": "good", "f2": "scratch", "f3": "scratch", "f4": "good"},
        "cat": {"f1": "good", "f2": "dent", "f3": "dent", "f4": "good"},
    }
    fig = agreement(labels)
    pairs = {(p.rater_a, p.rater_b): p.kappa for p in fig.pairs}
    # ann/bob: observed 3/4; chance (2*2 + 1*2 + 1*0)/16 = 0.375; kappa = 0.375/0.625 = 0.6
    assert pairs[("ann", "bob")] == pytest.approx(0.6)
    # bob: good 2, scratch 2; cat: good 2, dent 2 -> chance = (2*2)/16 = 0.25; kappa = 0.25/0.75 = 1/3
    assert pairs[("bob", "cat")] == pytest.approx(1 / 3)
    # Fleiss: per-frame agreement 1, 1/3, 1/3, 1 -> 2/3; label shares .5/.25/.25 -> chance .375
    assert fig.fleiss_kappa == pytest.approx((2 / 3 - 0.375) / 0.625)
    assert fig.classes["good"] == pytest.approx(1.0)  # everyone agrees on what is good
    assert fig.confusion == [("dent", "scratch", 4)]
    assert fig.frames == 4 and fig.raters == ["ann", "bob", "cat"]
    with pytest.raises(ValueError, match="two raters"):
        agreement({"ann": {"f1": "good"}})


def test_disagreement_rates() -> None:
    assert disagreement_rates([("scratch", True), ("scratch", False), ("dent", True)]) == {
        "dent": 0.0,
        "scratch": 0.5,
    }


def test_login_redirects_stay_on_this_site() -> None:
    assert safe_next("/api/queues?x=1") == "/api/queues?x=1"
    for hostile in ("//evil.example/", "https://evil.example/", "/\\evil.example", "javascript:alert(1)", ""):
        assert safe_next(hostile) == "/"
