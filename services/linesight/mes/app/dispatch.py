"""What the MES service does: turn each InspectionResult into exactly one disposition delivered
to MES/ERP, surviving endpoint outages and restarts.

Write path: the bus handler inserts one outbox row per frame (primary key = frame id, so a
redelivered result is a no-op) and acks only after the commit; a failed commit naks and the bus
redelivers. The dispatcher claims due rows (FOR UPDATE SKIP LOCKED), hands each to the
`Deliverer` (in the service: an HTTP POST with `Idempotency-Key: <frame id>`, see
linesight.mes.api.webhook) and records the outcome in the same transaction. Failures back off
exponentially and stay pending; after `max_attempts` (or a permanent 4xx) the row is dead until
an operator calls Redeliver. A crash between POST and commit re-POSTs the same key later, which
the receiver de-duplicates: at-least-once on the wire, exactly-once at MES.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC
from typing import Any, Protocol

from linesight.common import subjects
from linesight.common.backoff import Backoff
from linesight.common.enums import enum_word
from linesight.common.events import new_meta
from linesight.common.pb import common_pb2, events_pb2
from linesight.common.ports import ConnectionSource, EventPublisher
from linesight.mes.store import outbox
from linesight.mes.store.outbox import OutboxRow

log = logging.getLogger(__name__)

PRODUCER = "mes"


class UnknownFrameError(KeyError):
    """No outbox row for this frame."""


@dataclass(frozen=True)
class DispatchConfig:
    """Delivery policy; the defaults suit a line (seconds of outage recover within a minute)."""

    endpoint: str
    max_attempts: int = 12
    base_backoff_s: float = 0.5
    max_backoff_s: float = 60.0
    timeout_s: float = 5.0
    batch: int = 32
    poll_interval_s: float = 1.0

    def backoff_s(self, attempt: int) -> float:
        """0.5 s, 1 s, 2 s ... capped, with ±10 % jitter so a recovering MES is not hit in lockstep."""
        return Backoff(base_s=self.base_backoff_s, cap_s=self.max_backoff_s, jitter=0.1).delay(attempt)


def _word(enum: Any, value: int) -> str:
    """The MES payload spells an unset enum `unspecified` (the receiving side expects a word)."""
    return enum_word(enum, value) or "unspecified"


def disposition_payload(result: events_pb2.InspectionResult) -> dict[str, Any]:
    """The JSON body MES receives. An unspecified disposition goes out as `review`: a human decides."""
    cap = result.capture
    disposition = result.disposition or common_pb2.DISPOSITION_REVIEW
    return {
        "frame_id": result.frame_id,
        "event_id": result.meta.event_id,
        "part_id": cap.part_id,
        "batch": cap.batch,
        "plant": cap.station.plant,
        "line": cap.station.line,
        "station": cap.station.station,
        "disposition": _word(common_pb2.Disposition, disposition),
        "verdict": _word(common_pb2.Verdict, result.verdict),
        "defect_class": result.defect_class,
        "severity": _word(common_pb2.Severity, result.severity),
        "confidence": round(result.confidence, 6),
        "review_reason": result.review_reason,
        "model_version": result.model_version,
        "taxonomy_version": result.taxonomy_version,
        "captured_at": cap.captured_at.ToDatetime(tzinfo=UTC).isoformat()
        if cap.HasField("captured_at")
        else None,
        "decided_at": (
            result.meta.emitted_at.ToDatetime(tzinfo=UTC).isoformat()
            if result.meta.HasField("emitted_at")
            else None
        ),
    }


@dataclass(frozen=True)
class Attempt:
    """How one delivery went; `outcome` decides the row's next state."""

    frame_id: str
    status_code: int | None
    error: str
    outcome: str  # delivered, retry, dead


class Deliverer(Protocol):
    """Hands one disposition to MES/ERP; the key lets the receiver drop a repeat."""

    async def deliver(self, key: str, payload: dict[str, Any]) -> Attempt:
        """Classify the answer as delivered / retry / dead; never raises."""
        ...


class MesApp:
    """Outbox ingest, delivery loop, status and redelivery."""

    def __init__(
        self,
        db: ConnectionSource,
        bus: EventPublisher,
        deliverer: Deliverer,
        config: DispatchConfig,
        *,
        plant: str,
    ) -> None:
        self.db = db
        self.bus = bus
        self.deliverer = deliverer
        self.config = config
        self.plant = plant
        self._wake = asyncio.Event()

    # ---- ingest --------------------------------------------------------------------------

    async def enqueue(self, result: events_pb2.InspectionResult) -> bool:
        """Add the frame's disposition to the outbox; False when already there (redelivery).

        Shadow-model results never reach MES. Raises ValueError for a result without frame id.
        """
        if not result.frame_id:
            raise ValueError("InspectionResult without frame_id")
        if result.shadow:
            return False
        cap = result.capture
        row = OutboxRow(
            frame_id=result.frame_id,
            event_id=result.meta.event_id,
            part_id=cap.part_id,
            plant=cap.station.plant,
            line=cap.station.line,
            station=cap.station.station,
            disposition=result.disposition or common_pb2.DISPOSITION_REVIEW,
            payload=disposition_payload(result),
        )
        async with self.db.connection() as conn, conn.transaction():
            inserted = await outbox.insert(conn, row)
        if inserted:
            self._wake.set()
        return inserted

    # ---- delivery ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set; database or bus trouble only delays delivery."""
        while not stop.is_set():
            wait_s = self.config.poll_interval_s
            try:
                delivered = await self.dispatch_once()
                await self.announce_pending()
                if delivered:
                    continue  # more may be due right away
                async with self.db.connection() as conn:
                    due = await outbox.next_due_in_s(conn)
                if due is not None:
                    wait_s = min(wait_s, max(due, 0.05))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("mes dispatcher cycle failed (%s); retrying in %.1fs", exc, wait_s)
            self._wake.clear()
            stop_task = asyncio.ensure_future(stop.wait())
            wake_task = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait(
                    {stop_task, wake_task}, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                stop_task.cancel()
                wake_task.cancel()

    async def dispatch_once(self) -> int:
        """One batch: claim due rows, deliver them concurrently, record outcomes. Returns rows handled."""
        async with self.db.connection() as conn, conn.transaction():
            rows = await outbox.claim_due(conn, self.config.batch)
            if not rows:
                return 0
            attempts = await asyncio.gather(*(self.deliverer.deliver(r.frame_id, r.payload) for r in rows))
            for row, att in zip(rows, attempts, strict=True):
                n = row.attempts + 1
                outcome = att.outcome
                if outcome == "retry" and n >= self.config.max_attempts:
                    outcome = "dead"
                state = {"delivered": "delivered", "dead": "dead"}.get(outcome, "pending")
                await outbox.record_attempt(
                    conn,
                    row.frame_id,
                    attempt=n,
                    target=self.config.endpoint,
                    status_code=att.status_code,
                    error=att.error,
                    new_state=state,
                    retry_in_s=self.config.backoff_s(n) if state == "pending" else 0.0,
                )
                if state == "dead":
                    log.error("disposition for %s is dead after %d attempts: %s", row.frame_id, n, att.error)
        return len(rows)

    async def announce_pending(self) -> int:
        """Publish DispositionDispatched for finished rows; a bus outage leaves them for the next cycle."""
        async with self.db.connection() as conn, conn.transaction():
            rows = await outbox.unannounced(conn, self.config.batch)
            for row in rows:
                meta = new_meta(PRODUCER, correlation_id=row.frame_id)
                meta.event_id = f"mes:{row.frame_id}:{row.state}:{row.attempts}"
                event = events_pb2.DispositionDispatched(
                    meta=meta,
                    frame_id=row.frame_id,
                    part_id=row.part_id,
                    disposition=row.disposition,
                    target=row.target,
                    attempts=row.attempts,
                    delivered=row.state == "delivered",
                    error=row.last_error,
                )
                await self.bus.publish(
                    subjects.plant_subject(row.plant or self.plant, subjects.MES_DISPATCHED), event
                )
                await outbox.mark_announced(conn, row.frame_id)
        return len(rows)

    # ---- status --------------------------------------------------------------------------

    async def status(self, frame_id: str) -> OutboxRow:
        async with self.db.connection() as conn:
            row = await outbox.get(conn, frame_id)
        if row is None:
            raise UnknownFrameError(frame_id)
        return row

    async def redeliver(self, frame_id: str) -> OutboxRow:
        """Send a frame's disposition again (dead rows, or MES lost it); the key stays the frame id."""
        async with self.db.connection() as conn, conn.transaction():
            if not await outbox.reset(conn, frame_id):
                raise UnknownFrameError(frame_id)
        self._wake.set()
        return await self.status(frame_id)

    async def counts(self) -> dict[str, int]:
        async with self.db.connection() as conn:
            return await outbox.counts(conn)
