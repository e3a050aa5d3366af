"""Recording inspection results (once each, queued when the routing says so), the reads of the
ledger and labels the pages show, and the product taxonomies labels are checked against (a class
whose definition changed sends its confirmed labels back for relabeling).

Delivery from the bus is at-least-once, so recording is idempotent on (frame_id, model_version):
a redelivered result never double-counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC

from linesight.common.audit import AuditEntry
from linesight.common.enums import enum_word
from linesight.common.pb import common_pb2, events_pb2
from linesight.labeling.app.core import LabelingCore, limited
from linesight.labeling.app.events import PRODUCER, review_requested
from linesight.labeling.app.routing import QUEUE_RELABEL, queue_for
from linesight.labeling.store import ledger, workflow
from linesight.labeling.store.ledger import LedgerRow, LedgerStats, QueueItem, ResultRow
from linesight.labeling.store.workflow import FrameLabel, TaxonomyRow


@dataclass(frozen=True)
class RecordOutcome:
    recorded: bool  # False: a redelivery of something already in the ledger
    queued: bool  # entered a queue now
    queue: str  # which queue ('' when none)


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


class ResultUseCases(LabelingCore):
    async def record_result(self, result: events_pb2.InspectionResult) -> RecordOutcome:
        """Append a result to the ledger and queue it when the policy or the audit sample says so.

        Raises ValueError for a result that can never be recorded (no frame id); database and
        bus errors propagate so the bus redelivers (the insert is idempotent).
        """
        if not result.frame_id:
            raise ValueError("InspectionResult without frame_id")
        row = to_ledger_row(result)
        queue, reason, priority = queue_for(result, self.policy, self.sampler)
        product = result.capture.extra.get("product") or self.product
        async with self.db.connection() as conn, conn.transaction():
            recorded = await ledger.insert_result(conn, row)
            queued = False
            if reason:
                queued = await ledger.enqueue_review(
                    conn, result.frame_id, result.model_version, queue, reason, priority, product
                )
                if recorded or queued:
                    # Also on a redelivery whose first attempt failed to publish: the event id
                    # is deterministic, so JetStream drops a repeat.
                    await self._publish_review(
                        review_requested(
                            result.capture.station, result.frame_id, queue, reason, priority, product
                        )
                    )
        return RecordOutcome(recorded=recorded, queued=queued, queue=queue if reason else "")

    async def list_results(
        self, *, limit: int = 100, verdict: str = "", station: str = ""
    ) -> list[ResultRow]:
        async with self.db.connection() as conn:
            return await ledger.list_results(conn, limit=limited(limit), verdict=verdict, station=station)

    async def review_queue(self, *, queue: str = "", frame_id: str = "", limit: int = 100) -> list[QueueItem]:
        async with self.db.connection() as conn:
            return await ledger.list_review_queue(conn, queue=queue, frame_id=frame_id, limit=limited(limit))

    async def latest_result(self, frame_id: str) -> LedgerRow | None:
        """The frame's newest non-shadow inspection result (the UI shows its regions and scores)."""
        async with self.db.connection() as conn:
            return await ledger.latest_result(conn, frame_id)

    async def stats(self) -> LedgerStats:
        async with self.db.connection() as conn:
            return await ledger.stats(conn)

    async def frame_labels(self, frame_id: str) -> list[FrameLabel]:
        async with self.db.connection() as conn:
            return await workflow.labels_for(conn, frame_id)

    # ---- taxonomy ------------------------------------------------------------------------

    async def on_taxonomy(self, row: TaxonomyRow) -> list[str]:
        """Keep the product's latest taxonomy; put confirmed labels of the classes whose definition
        changed (made under another version) on the relabel queue. Returns the frames requeued."""
        async with self.db.connection() as conn, conn.transaction():
            await workflow.put_taxonomy(conn, row)
            requeued = []
            if row.changed_classes:
                requeued = await workflow.queue_for_relabel(
                    conn, row.product, row.changed_classes, row.version
                )
            for entry in requeued:
                station = self._station(await ledger.latest_result(conn, entry.frame_id))
                await self._publish_review(
                    review_requested(
                        station,
                        entry.frame_id,
                        QUEUE_RELABEL,
                        "TAXONOMY_CHANGED",
                        2,
                        row.product,
                        entry.round,
                    )
                )
            await workflow.audit(
                conn,
                AuditEntry(
                    f"service:{PRODUCER}",
                    PRODUCER,
                    "service",
                    "taxonomy.received",
                    "taxonomy",
                    row.product,
                    new_value={
                        "version": row.version,
                        "changed_classes": row.changed_classes,
                        "relabel": [e.frame_id for e in requeued],
                    },
                ),
            )
        return [e.frame_id for e in requeued]

    async def taxonomy(self, product: str) -> TaxonomyRow | None:
        async with self.db.connection() as conn:
            return await workflow.get_taxonomy(conn, product)
