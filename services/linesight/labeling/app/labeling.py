"""What the labeling service does: record every inspection result once, route doubtful ones to
human review, run the two-pass label workflow and keep its audit trail.

Delivery from the bus is at-least-once, so recording is idempotent on (frame_id, model_version):
a redelivered result never double-counts. Events this service emits carry deterministic event
ids (`review:<frame>`, `label:<frame>:<state>`), so a retried publish is de-duplicated by
JetStream. Each write publishes *before* its transaction commits: if the bus refuses, nothing is
recorded and the caller retries (bus redelivery, or the reviewer re-submits).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC
from typing import cast

from linesight.common import subjects
from linesight.common.enums import enum_word
from linesight.common.events import new_meta
from linesight.common.pb import common_pb2, events_pb2
from linesight.common.ports import ConnectionSource, EventPublisher
from linesight.labeling.store import ledger
from linesight.labeling.store.ledger import AuditEntry, LabelRow, LedgerRow, LedgerStats, QueueItem, ResultRow

log = logging.getLogger(__name__)

PRODUCER = "labeling"
GOOD = "good"
QUEUE_REVIEW = "review"
QUEUE_DISPUTE = "dispute"

# Label workflow states (SubmitLabelResponse.state).
FIRST_PASS = "first_pass"
AGREED = "agreed"
DISPUTED = "disputed"
RESOLVED = "resolved"
FINAL_STATES = (AGREED, RESOLVED)


class InvalidLabelError(ValueError):
    """A label submission that breaks the workflow rules (same user twice, already final, ...)."""


class FrameNotFoundError(KeyError):
    """No result for this frame is in the ledger."""


# Review reasons this service assigns, in the words a reviewer reads; the engine's own reasons
# ("low confidence pass", ...) are already words and are shown as they are.
REASON_WORDS = {
    "ERROR": "the inspection failed",
    "REVIEW": "the model asked for a human look",
    "NO_VERDICT": "the model gave no verdict",
    "LOW_CONFIDENCE": "the model is not sure of its call",
    "ANOMALY_ONLY": "looks unusual but matches no known defect class",
    "MANUAL": "added by a reviewer",
    "REVIEWER_DISAGREEMENT": "the first two reviewers disagree",
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


@dataclass(frozen=True)
class RecordOutcome:
    recorded: bool  # False: a redelivery of something already in the ledger
    queued: bool  # entered the review queue now


def to_ledger_row(result: events_pb2.InspectionResult) -> LedgerRow:
    cap = result.capture
    captured_at = cap.captured_at.ToDatetime(tzinfo=UTC) if cap.HasField("captured_at") else None
    return LedgerRow(
        frame_id=result.frame_id,
        model_version=result.model_version,
        event_id=result.meta.event_id,
        plant=cap.station.plant,
        line=cap.station.line,
        station=cap.station.station,
        part_id=cap.part_id,
        verdict=enum_word(common_pb2.Verdict, result.verdict) or "unspecified",
        defect_class=result.defect_class,
        severity=enum_word(common_pb2.Severity, result.severity),
        confidence=result.confidence,
        anomaly_score=result.anomaly_score,
        disposition=enum_word(common_pb2.Disposition, result.disposition),
        taxonomy_version=result.taxonomy_version,
        review_reason=result.review_reason,
        error=result.error,
        image_bucket=result.image.bucket,
        image_key=result.image.key,
        heatmap_bucket=result.heatmap.bucket,
        heatmap_key=result.heatmap.key,
        latency_ms=result.latency_ms,
        shadow=result.shadow,
        captured_at=captured_at,
        payload=result.SerializeToString(),
    )


class LabelingApp:
    """The labeling use cases over its database schema and the bus."""

    def __init__(
        self, db: ConnectionSource, bus: EventPublisher, *, plant: str, policy: ReviewPolicy | None = None
    ) -> None:
        self.db = db
        self.bus = bus
        self.plant = plant
        self.policy = policy or ReviewPolicy()

    # ---- results -------------------------------------------------------------------------

    async def record_result(self, result: events_pb2.InspectionResult) -> RecordOutcome:
        """Append a result to the ledger and queue it for review when the policy says so.

        Raises ValueError for a result that can never be recorded (no frame id); database and
        bus errors propagate so the bus redelivers (the insert is idempotent).
        """
        if not result.frame_id:
            raise ValueError("InspectionResult without frame_id")
        row = to_ledger_row(result)
        reason = "" if result.shadow else self.policy.reason(result)
        async with self.db.connection() as conn, conn.transaction():
            recorded = await ledger.insert_result(conn, row)
            queued = False
            if reason:
                queued = await ledger.enqueue_review(
                    conn,
                    result.frame_id,
                    result.model_version,
                    QUEUE_REVIEW,
                    reason,
                    self.policy.priority(result),
                )
                if recorded or queued:
                    # Also on a redelivery whose first attempt failed to publish: the event id
                    # is deterministic, so JetStream drops a repeat.
                    await self._publish_review(
                        result.capture.station,
                        result.frame_id,
                        QUEUE_REVIEW,
                        reason,
                        self.policy.priority(result),
                    )
            if recorded:
                await ledger.audit(
                    conn,
                    PRODUCER,
                    "result_recorded",
                    result.frame_id,
                    {"model_version": row.model_version, "verdict": row.verdict, "review_reason": reason},
                )
        return RecordOutcome(recorded=recorded, queued=queued)

    async def _publish_review(
        self, station: common_pb2.StationRef, frame_id: str, queue: str, reason: str, priority: int
    ) -> None:
        meta = new_meta(PRODUCER, correlation_id=frame_id)
        meta.event_id = f"review:{queue}:{frame_id}"
        event = events_pb2.ReviewRequested(
            meta=meta, frame_id=frame_id, queue=queue, reason=reason, priority=priority, station=station
        )
        subject = subjects.station_subject(
            station.plant or self.plant,
            station.line or "unknown",
            station.station or "unknown",
            subjects.REVIEW_REQUESTED,
        )
        await self.bus.publish(subject, event)

    async def list_results(
        self, *, limit: int = 100, verdict: str = "", station: str = ""
    ) -> list[ResultRow]:
        async with self.db.connection() as conn:
            return await ledger.list_results(
                conn, limit=min(max(limit, 1), 1000), verdict=verdict, station=station
            )

    async def review_queue(self, *, queue: str = "", limit: int = 100) -> list[QueueItem]:
        async with self.db.connection() as conn:
            return await ledger.list_review_queue(conn, queue=queue, limit=min(max(limit, 1), 1000))

    async def stats(self) -> LedgerStats:
        async with self.db.connection() as conn:
            return await ledger.stats(conn)

    async def audit_trail(self, frame_id: str = "", limit: int = 100) -> list[AuditEntry]:
        async with self.db.connection() as conn:
            return await ledger.audit_trail(conn, frame_id, limit)

    # ---- labels --------------------------------------------------------------------------

    async def submit_label(
        self,
        *,
        frame_id: str,
        label: str,
        user: str,
        severity: int = common_pb2.SEVERITY_UNSPECIFIED,
        ambiguous: bool = False,
        comment: str = "",
        regions: list[common_pb2.Region] | None = None,
    ) -> str:
        """Record one reviewer's label and return the frame's workflow state.

        First label -> first_pass. A second, different user agreeing -> agreed (LabelSubmitted);
        disagreeing -> disputed (back on the dispute queue). A third user on a dispute
        adjudicates -> resolved (LabelSubmitted). The same user twice, or a label on a final
        frame, raises InvalidLabelError; an unknown frame raises FrameNotFoundError.
        """
        label = label.strip()
        user = user.strip()
        if not label or not user:
            raise InvalidLabelError("label and user are required")
        severity_name = enum_word(common_pb2.Severity, severity)
        async with self.db.connection() as conn, conn.transaction():
            result = await ledger.latest_result(conn, frame_id)
            if result is None:
                raise FrameNotFoundError(frame_id)
            entry = await ledger.lock_review(conn, frame_id)
            if entry is None:
                # A frame nobody queued (e.g. a missed defect spotted on the results page).
                await ledger.enqueue_review(conn, frame_id, result.model_version, QUEUE_REVIEW, "MANUAL", 0)
                entry = await ledger.lock_review(conn, frame_id)
                assert entry is not None
            previous = await ledger.labels_for(conn, frame_id)
            state, queue, pass_no = self._next_state(entry.state, previous, label, user)
            await ledger.insert_label(
                conn,
                frame_id=frame_id,
                pass_no=pass_no,
                label=label,
                severity=severity_name,
                user=user,
                ambiguous=ambiguous,
                comment=comment,
            )
            await ledger.set_review_state(conn, frame_id, state, queue)
            await ledger.audit(
                conn,
                user,
                "label_submitted",
                frame_id,
                {
                    "label": label,
                    "pass": pass_no,
                    "state": state,
                    "severity": severity_name,
                    "ambiguous": ambiguous,
                    "comment": comment,
                },
            )
            if state in FINAL_STATES:
                labeler = previous[0].user_name if previous else user
                await self._publish_label(
                    result, label, severity, labeler, user, ambiguous, regions or [], state
                )
                await ledger.audit(
                    conn, PRODUCER, "label_published", frame_id, {"label": label, "state": state}
                )
            elif state == DISPUTED:
                station = common_pb2.StationRef(plant=result.plant, line=result.line, station=result.station)
                await self._publish_review(station, frame_id, QUEUE_DISPUTE, "REVIEWER_DISAGREEMENT", 5)
        return state

    @staticmethod
    def _next_state(current: str, previous: list[LabelRow], label: str, user: str) -> tuple[str, str, int]:
        """(new state, queue, pass number) for a submission; raises InvalidLabelError when not allowed."""
        if current in FINAL_STATES:
            raise InvalidLabelError(f"frame is already {current}; relabel through a taxonomy change")
        if not previous:
            return FIRST_PASS, QUEUE_REVIEW, 1
        if user in {p.user_name for p in previous}:
            raise InvalidLabelError(
                f"{user} already labeled this frame; the next pass needs a different reviewer"
            )
        if current == DISPUTED:
            return RESOLVED, QUEUE_DISPUTE, 3
        if previous[0].label == label:
            return AGREED, QUEUE_REVIEW, 2
        return DISPUTED, QUEUE_DISPUTE, 2

    async def _publish_label(
        self,
        result: LedgerRow,
        label: str,
        severity: int,
        labeler: str,
        reviewer: str,
        ambiguous: bool,
        regions: list[common_pb2.Region],
        state: str,
    ) -> None:
        frame_id = result.frame_id
        original = events_pb2.InspectionResult.FromString(bytes(result.payload))
        meta = new_meta(PRODUCER, correlation_id=frame_id)
        meta.event_id = f"label:{frame_id}:{state}"
        event = events_pb2.LabelSubmitted(
            meta=meta,
            frame_id=frame_id,
            label=label,
            severity=cast(common_pb2.Severity, severity),  # a Severity number from the API
            regions=regions,
            taxonomy_version=original.taxonomy_version,
            labeler=labeler,
            reviewer=reviewer,
            source="review",
            station=original.capture.station,
            image=original.image,
            ambiguous=ambiguous,
        )
        await self.bus.publish(
            subjects.plant_subject(result.plant or self.plant, subjects.LABEL_SUBMITTED), event
        )
