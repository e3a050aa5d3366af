"""Review policy and the two-pass label state machine (no servers needed)."""

from datetime import UTC, datetime

import pytest

from linesight.common.pb import common_pb2, events_pb2
from linesight.labeling.app.labeling import InvalidLabelError, LabelingApp, ReviewPolicy, reason_words
from linesight.labeling.store.ledger import LabelRow


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


def label(user: str, text: str, pass_no: int) -> LabelRow:
    return LabelRow(
        id=pass_no, frame_id="f", pass_no=pass_no, label=text, severity="", user_name=user,
        ambiguous=False, comment="", created_at=datetime.now(UTC),
    )  # fmt: skip


def test_two_pass_state_machine() -> None:
    nxt = LabelingApp._next_state
    assert nxt("open", [], "scratch", "alice") == ("first_pass", "review", 1)
    first = [label("alice", "scratch", 1)]
    assert nxt("first_pass", first, "scratch", "bob") == ("agreed", "review", 2)
    assert nxt("first_pass", first, "crack", "bob") == ("disputed", "dispute", 2)
    with pytest.raises(InvalidLabelError):
        nxt("first_pass", first, "scratch", "alice")
    both = [*first, label("bob", "crack", 2)]
    assert nxt("disputed", both, "crack", "qa") == ("resolved", "dispute", 3)
    with pytest.raises(InvalidLabelError):
        nxt("agreed", both, "crack", "qa")


def test_reasons_read_as_plain_words() -> None:
    assert reason_words("LOW_CONFIDENCE") == "the model is not sure of its call"
    assert reason_words("REVIEWER_DISAGREEMENT") == "the first two reviewers disagree"
    assert reason_words("low confidence pass") == "low confidence pass"  # the engine's words stay
