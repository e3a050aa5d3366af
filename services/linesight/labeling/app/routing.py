"""Which inspection results a person looks at, on which queue and why: the review policy
(errors, review verdicts, low confidence), inference's own learning picks, and the audit sample
of confident calls; plus the queue reasons in the words a reviewer reads."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from linesight.common.pb import common_pb2, events_pb2
from linesight.labeling.app.config import QUEUES

QUEUE_REVIEW, QUEUE_AUDIT, QUEUE_DISPUTE, QUEUE_RELABEL = QUEUES

# Review reasons this service assigns, in the words a reviewer reads; the engine's own reasons
# ("low confidence pass", ...) are already words and are shown as they are.
REASON_WORDS = {
    "ERROR": "the inspection failed",
    "REVIEW": "the model asked for a human look",
    "NO_VERDICT": "the model gave no verdict",
    "LOW_CONFIDENCE": "the model is not sure of its call",
    "ANOMALY_ONLY": "looks unusual but matches no known defect class",
    "AUDIT_FLAGGED": "the image-quality audit flagged the frame",
    "AUDIT_SAMPLE_PASS": "random audit of an automatic pass",
    "AUDIT_SAMPLE_REJECT": "random audit of an automatic reject",
    "UNCERTAIN": "the call sits close to the model's operating point",
    "NOVEL": "unlike anything the model was trained on",
    "DISAGREEMENT": "the defect classifier and the anomaly score disagree",
    "REPEATED_FRAME": "the camera delivered the same image again",
    "MANUAL": "added by a reviewer",
    "OPERATOR_OVERRIDE": "a line operator overrode the machine verdict",
    "REVIEWER_DISAGREEMENT": "the reviewer rejected the first label",
    "TAXONOMY_CHANGED": "the class definition changed since this label",
}


def reason_words(reason: str) -> str:
    """A queue reason as plain words (`LOW_CONFIDENCE` -> `the model is not sure of its call`)."""
    return REASON_WORDS.get(reason, reason)


@dataclass(frozen=True)
class ReviewPolicy:
    """Which results a human must look at: review/error verdicts and low-confidence calls."""

    min_confidence: float = 0.6

    def reason(self, result: events_pb2.InspectionResult) -> str:
        """Why this result needs review, or '' when it can stand on its own."""
        if result.verdict == common_pb2.VERDICT_ERROR:
            return "ERROR"
        if result.verdict == common_pb2.VERDICT_REVIEW:
            return result.review_reason or "REVIEW"
        if result.verdict == common_pb2.VERDICT_UNSPECIFIED:
            return "NO_VERDICT"
        if result.confidence < self.min_confidence:
            return "LOW_CONFIDENCE"
        return ""

    @staticmethod
    def priority(result: events_pb2.InspectionResult) -> int:
        """Errors and severe calls first: a reviewer's time goes where escapes cost most."""
        if result.verdict == common_pb2.VERDICT_ERROR:
            return 10
        return int(result.severity) + (1 if result.disposition == common_pb2.DISPOSITION_ESCALATE else 0)


def routed_reason(result: events_pb2.InspectionResult) -> tuple[str, str]:
    """(queue, reason) for an automatic call inference routed to a person for learning
    (`route_reason`); ('', '') when it did not, or its station's rate cap held it back."""
    route = result.route_reason
    automatic = result.verdict in (common_pb2.VERDICT_PASS, common_pb2.VERDICT_DEFECT)
    if not route or result.route_capped or not automatic:
        return "", ""
    if route == "audit":
        sample = "AUDIT_SAMPLE_PASS" if result.verdict == common_pb2.VERDICT_PASS else "AUDIT_SAMPLE_REJECT"
        return QUEUE_AUDIT, sample
    return QUEUE_REVIEW, route.upper()[:64]


@dataclass(frozen=True)
class AuditSampler:
    """Picks a configurable share of automatic passes and rejects per station for a human re-check.

    The pick is sha256(seed, frame id) < share: deterministic (a redelivery or a replay samples the
    same frames, and a test can reproduce it) yet uncorrelated with time, part or station order.
    """

    share: float
    by_station: dict[str, float] = field(default_factory=dict)
    seed: str = "linesight"

    def reason(self, result: events_pb2.InspectionResult) -> str:
        """AUDIT_SAMPLE_PASS / AUDIT_SAMPLE_REJECT when this automatic call is sampled, else ''."""
        if result.verdict == common_pb2.VERDICT_PASS:
            reason = "AUDIT_SAMPLE_PASS"
        elif result.verdict == common_pb2.VERDICT_DEFECT:
            reason = "AUDIT_SAMPLE_REJECT"
        else:
            return ""
        share = self.by_station.get(result.capture.station.station, self.share)
        digest = hashlib.sha256(f"{self.seed}:{result.frame_id}".encode()).digest()
        return reason if int.from_bytes(digest[:8], "big") / 2**64 < share else ""


def queue_for(
    result: events_pb2.InspectionResult, policy: ReviewPolicy, sampler: AuditSampler
) -> tuple[str, str, int]:
    """(queue, reason, priority) of a result: the policy's reason first, then inference's own pick
    (within its caps), then the audit sample; reason '' when it stands on its own. Shadow results
    are never queued."""
    queue, reason, priority = QUEUE_REVIEW, "", policy.priority(result)
    if not result.shadow:
        reason = policy.reason(result)
        if not reason:
            queue, reason = routed_reason(result)  # inference's selection, within its caps
            priority = 1
        if not reason and not result.route_capped:
            queue, reason, priority = QUEUE_AUDIT, sampler.reason(result), 1
    return queue, reason, priority
