"""Review policy and the two-pass label state machine (no servers needed)."""

import pytest

from linesight.common.pb import common_pb2, events_pb2
from linesight.labeling.app.labeling import InvalidLabelError, Labeling, ReviewPolicy, enum_name


def result(verdict: int, confidence: float) -> events_pb2.InspectionResult:
    return events_pb2.InspectionResult(frame_id="f", verdict=verdict, confidence=confidence)  # type: ignore[arg-type]


def test_policy_routes_doubtful_results_to_review() -> None:
    policy = ReviewPolicy(min_confidence=0.6)
    assert policy.reason(result(common_pb2.VERDICT_ERROR, 0.99)) == "ERROR"
    assert policy.reason(result(common_pb2.VERDICT_REVIEW, 0.99)) == "REVIEW"
    assert policy.reason(result(common_pb2.VERDICT_DEFECT, 0.5)) == "LOW_CONFIDENCE"
    assert policy.reason(result(common_pb2.VERDICT_PASS, 0.59)) == "LOW_CONFIDENCE"
    assert policy.reason(result(common_pb2.VERDICT_PASS, 0.95)) == ""
    assert policy.reason(result(common_pb2.VERDICT_UNSPECIFIED, 0.95)) == "NO_VERDICT"


def test_two_pass_state_machine() -> None:
    nxt = Labeling._next_state
    assert nxt("open", [], "scratch", "alice") == ("first_pass", "review", 1)
    first = [{"user_name": "alice", "label": "scratch"}]
    assert nxt("first_pass", first, "scratch", "bob") == ("agreed", "review", 2)
    assert nxt("first_pass", first, "crack", "bob") == ("disputed", "dispute", 2)
    with pytest.raises(InvalidLabelError):
        nxt("first_pass", first, "scratch", "alice")
    both = [*first, {"user_name": "bob", "label": "crack"}]
    assert nxt("disputed", both, "crack", "qa") == ("resolved", "dispute", 3)
    with pytest.raises(InvalidLabelError):
        nxt("agreed", both, "crack", "qa")


def test_enum_names_are_short() -> None:
    assert enum_name(common_pb2.Verdict, common_pb2.VERDICT_REVIEW, "VERDICT_") == "review"
    assert enum_name(common_pb2.Disposition, 0, "DISPOSITION_") == ""
    assert enum_name(common_pb2.Disposition, 99, "DISPOSITION_") == "99"
