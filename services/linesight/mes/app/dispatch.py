"""What the MES service does: turn each InspectionResult into exactly one disposition delivered
to MES/ERP, surviving endpoint outages and restarts.

Write path: the bus handler inserts one outbox row per frame (primary key = frame id, so a
redelivered result is a no-op), a bus fetch's results in one statement, and acks only after the
commit; a failed commit naks and the bus redelivers. A later result for the same frame that
disagrees with the first (verdict or disposition) is never dropped silently: it is recorded in
`result_conflicts`, counted and logged, and the part's disposition becomes review, sent as a
correction under its own Idempotency-Key that names the original message. A result arriving
after the reject window is counted and flagged (`late`), and announced as a CaptureAlarm: the
part has passed the reject gate by then.

The dispatcher never holds a database transaction across the network: it claims rows in a short
transaction (a lease with a token), delivers with no transaction open, and records each outcome in
another short transaction, only while its claim still holds. Order is kept per station: a station's
messages go out one after another in arrival order, and while its oldest one waits out a retry the
rest wait too; stations proceed in parallel. Failures back off exponentially with jitter and stay
pending; after `max_attempts` (or a permanent 4xx) the row is dead until an operator calls
Redeliver, and the station's next message proceeds (a dead row is an alarm, not a stop of the line).
A crash between delivery and record leaves the claim to expire and the same key is delivered
again, which the receiver de-duplicates: at-least-once on the wire, exactly-once at MES.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from linesight.common import subjects, telemetry
from linesight.common.backoff import Backoff
from linesight.common.enums import enum_word, enum_words
from linesight.common.events import new_meta
from linesight.common.limits import check_name
from linesight.common.pb import common_pb2, events_pb2
from linesight.common.ports import ConnectionSource, EventPublisher
from linesight.mes.store import inbound, outbox
from linesight.mes.store.inbound import Hold
from linesight.mes.store.outbox import ConflictRow, OutboxRow

log = logging.getLogger(__name__)

PRODUCER = "mes"
CONFLICT_REASON = "CONFLICTING_RESULTS"
# DispositionDispatched events published (concurrently) per announcer transaction.
ANNOUNCE_PAGE = 256
LATE_DISPOSITION = "LATE_DISPOSITION"  # CaptureAlarm.kind of a disposition past the reject window

_meter = telemetry.meter("linesight.mes")
_conflicts = _meter.create_counter(
    "linesight_mes_result_conflicts",
    description="later InspectionResults for a frame that disagree with the first (part sent to review)",
)
_late = _meter.create_counter(
    "linesight_mes_late_dispositions",
    description="results that reached MES after the reject window (the part passed the reject gate)",
)


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
    # Capture -> disposition budget of the line's reject gate; a later result is counted and alarmed.
    reject_window_s: float = 5.0
    # A station's messages claimed at once and sent one after another (batch = stations per cycle).
    per_station: int = 8
    # How long the presigned image link in each message stays valid, from the delivery.
    image_link_ttl_s: int = 24 * 3600

    @property
    def lease_s(self) -> float:
        """How long a claim holds: the whole chain timing out, plus slack. A dispatcher stops
        delivering before its lease ends, so an expired claim is never still being sent."""
        return self.timeout_s * self.per_station + 5.0

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


def held_payload(payload: dict[str, Any], holds: Sequence[Hold], *, original: int) -> dict[str, Any]:
    """The message for a part under quality hold: disposition `hold`, which holds, and what the
    part's own disposition is (sent again when the last hold on it is released)."""
    out = dict(payload)
    out.update(
        {
            "disposition": "hold",
            "holds": sorted({*out.get("holds", []), *(h.id for h in holds)}),
            "hold_reason": holds[0].reason,
            "held_disposition": _word(common_pb2.Disposition, original),
        }
    )
    return out


def released_payload(payload: dict[str, Any], hold: Hold, *, disposition: int) -> dict[str, Any]:
    """The message once the last hold on a part is released: its own disposition again."""
    out = {k: v for k, v in payload.items() if k not in ("holds", "hold_reason", "held_disposition")}
    out["disposition"] = _word(common_pb2.Disposition, disposition)
    out["released_hold"] = hold.id
    return out


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


class ImageLinks(Protocol):
    """Presigns a stored frame for MES (the ObjectStore in the service)."""

    def presigned_get_url(self, bucket: str, key: str, expires_s: int = 3600) -> str:
        """A GET link valid for `expires_s`; raises when the store cannot sign."""
        ...


class MesApp:
    """Outbox ingest, delivery loop, status and redelivery."""

    def __init__(
        self,
        db: ConnectionSource,
        bus: EventPublisher,
        deliverers: Mapping[str, Deliverer],
        config: DispatchConfig,
        *,
        plant: str,
        images: ImageLinks | None = None,
    ) -> None:
        self.db = db
        self.bus = bus
        if not deliverers:
            raise ValueError("MES needs at least one endpoint")
        self.deliverers = dict(deliverers)
        self.endpoints = list(self.deliverers)
        self.config = config
        self.plant = plant
        self.images = images
        self._wakes = {name: asyncio.Event() for name in self.endpoints}
        self._announce_wake = asyncio.Event()
        # This dispatcher's name in claim tokens and heartbeats (one per process lifetime).
        self.owner = uuid.uuid4().hex[:16]

    def wake(self) -> None:
        """Something became due (a new message, a correction): every endpoint's loop looks at once."""
        for event in self._wakes.values():
            event.set()

    # ---- ingest --------------------------------------------------------------------------

    async def enqueue(self, result: events_pb2.InspectionResult, *, traceparent: str = "") -> bool:
        """Add the frame's disposition to the outbox; True when something new will be sent to MES.

        False for an identical redelivery (absorbed) and for a conflict on a part already sent to
        review (recorded, nothing more to send). Shadow-model results never reach MES.
        `traceparent` (W3C) travels with the message so MES can join the result's trace. Raises
        ValueError for a result without frame id. On a database error nothing is written and the
        caller's nak brings the result back.
        """
        (outcome,) = await self.enqueue_many([(result, traceparent)])
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def enqueue_many(
        self, items: Sequence[tuple[events_pb2.InspectionResult, str]]
    ) -> list[bool | Exception]:
        """`enqueue` for a bus fetch of (result, traceparent): the new results enter the outbox in
        one statement and one commit, in the order given (a station's order). One outcome per
        item: True / False as `enqueue`, or the exception that refused or failed it (ValueError:
        never writable; a database error on a repeat's conflict check: retry it). A database
        error on the batch itself raises, and nothing of the batch is written."""
        outcomes: list[bool | Exception] = [False] * len(items)
        fresh: list[tuple[int, OutboxRow]] = []
        repeats: list[tuple[int, OutboxRow]] = []  # a frame seen earlier in this batch
        seen: set[str] = set()
        for i, (result, traceparent) in enumerate(items):
            try:
                row = self._row(result, traceparent)
            except ValueError as exc:
                outcomes[i] = exc
                continue
            if row is None:
                continue
            (repeats if row.frame_id in seen else fresh).append((i, row))
            seen.add(row.frame_id)
        if fresh:
            async with self.db.connection() as conn:  # one statement, committed when the block ends
                inserted = await outbox.ingest(conn, [row for _, row in fresh], self.endpoints)
        else:
            inserted = {}
        late: list[OutboxRow] = []
        for i, row in fresh:
            holds = inserted.get(row.frame_id)
            if holds is None:
                repeats.append((i, row))
                continue
            outcomes[i] = True
            if holds:
                log.info("part %r frame %s arrived under quality hold %s", row.part_id, row.frame_id, holds)
            if row.late:
                late.append(row)
        for i, row in sorted(repeats, key=lambda r: r[0]):
            try:
                async with self.db.connection() as conn, conn.transaction():
                    outcomes[i] = await self._second_result(conn, items[i][0], row)
            except Exception as exc:
                outcomes[i] = exc
        if any(o is True for o in outcomes):
            self.wake()
        if late:
            await asyncio.gather(*(self._late_alarm(row, row.decision_latency_s or 0.0) for row in late))
        return outcomes

    def _row(self, result: events_pb2.InspectionResult, traceparent: str) -> OutboxRow | None:
        """The outbox row of a result; None for a shadow result; ValueError when MES must not get it."""
        if not result.frame_id:
            raise ValueError("InspectionResult without frame_id")
        if result.shadow:
            return None
        check_result(result)
        cap = result.capture
        latency_s = _latency_s(result)
        return OutboxRow(
            frame_id=result.frame_id,
            event_id=result.meta.event_id,
            part_id=cap.part_id,
            plant=cap.station.plant,
            line=cap.station.line,
            station=cap.station.station,
            disposition=result.disposition or common_pb2.DISPOSITION_REVIEW,
            payload=disposition_payload(result),
            verdict=result.verdict,
            decision_latency_s=latency_s,
            late=latency_s is not None and latency_s > self.config.reject_window_s,
            image_bucket=result.image.bucket,
            image_key=result.image.key,
            traceparent=traceparent or _current_traceparent(),
            batch=cap.batch,
            captured_at=cap.captured_at.ToDatetime(tzinfo=UTC) if cap.HasField("captured_at") else None,
        )

    async def _late_alarm(self, row: OutboxRow, latency_s: float) -> None:
        """Count, log and announce (CaptureAlarm LATE_DISPOSITION) a disposition past the reject window.

        After the commit, and advisory: a bus that cannot take the alarm delays nothing (the
        disposition still goes out; the log line and the metric remain). The event id is derived
        from the frame, so a retried alarm is stored once.
        """
        _late.add(1, {"station": row.station})
        message = (
            f"late disposition: part {row.part_id!r} frame {row.frame_id} decided {latency_s:.1f}s after "
            f"capture, past the {self.config.reject_window_s:.1f}s reject window (the part has passed "
            "the reject gate)"
        )
        log.error("ALARM %s", message)
        alarm = events_pb2.CaptureAlarm(
            meta=new_meta(PRODUCER, correlation_id=row.frame_id),
            station=common_pb2.StationRef(plant=row.plant, line=row.line, station=row.station),
            kind=LATE_DISPOSITION,
            message=message,
            frame_ids=[row.frame_id],
        )
        alarm.meta.event_id = f"late:{row.frame_id}"
        try:
            await self.bus.publish(
                subjects.station_subject(row.plant, row.line, row.station, subjects.CAPTURE_ALARM), alarm
            )
        except Exception as exc:  # BusUnavailable, an invalid station token: the log line stands
            log.warning("could not publish the late-disposition alarm of frame %s: %s", row.frame_id, exc)

    async def _second_result(self, conn: Any, result: events_pb2.InspectionResult, new: OutboxRow) -> bool:
        """A result for a frame already in the outbox: absorb a redelivery, act on a disagreement."""
        first = await outbox.get_for_update(conn, result.frame_id)
        if first is None:  # cannot happen inside the transaction that just saw the row
            raise RuntimeError(f"outbox row of {result.frame_id} vanished")
        first_disposition = (
            first.disposition if first.result_disposition is None else first.result_disposition
        )
        same_verdict = first.verdict is None or first.verdict == new.verdict
        if first.event_id == new.event_id or (same_verdict and first_disposition == new.disposition):
            return False
        conflict = ConflictRow(
            frame_id=first.frame_id,
            part_id=first.part_id,
            original_event_id=first.event_id,
            conflicting_event_id=new.event_id,
            original_verdict=first.verdict,
            original_disposition=first_disposition,
            verdict=new.verdict or 0,
            disposition=new.disposition,
            producer=result.meta.producer,
            model_version=result.model_version,
        )
        if not await outbox.record_conflict(conn, conflict):
            return False  # this conflicting event was handled on an earlier delivery
        _conflicts.add(1, {"station": first.station})
        log.error(
            "ALARM conflicting results for part %r frame %s: first %s (%s, event %s), then %s (%s, "
            "event %s from %s); disposition set to review",
            first.part_id,
            first.frame_id,
            _word(common_pb2.Verdict, first.verdict or 0),
            _word(common_pb2.Disposition, first_disposition),
            first.event_id,
            _word(common_pb2.Verdict, new.verdict or 0),
            _word(common_pb2.Disposition, new.disposition),
            new.event_id,
            result.meta.producer or "?",
        )
        if first.disposition == common_pb2.DISPOSITION_REVIEW:
            return False  # MES has (or will get) review already; the conflict is on record
        if first.disposition == common_pb2.DISPOSITION_HOLD and (
            await inbound.holds_of(conn, [first.frame_id])
        ):
            return False  # held: the hold stands; its release sends review (the conflict is on record)
        payload = dict(first.payload)
        payload.update(
            {
                "disposition": "review",
                "review_reason": CONFLICT_REASON,
                "correction_of": first.event_id,
                "conflicting_event_id": new.event_id,
            }
        )
        await outbox.make_correction(
            conn,
            first.frame_id,
            disposition=common_pb2.DISPOSITION_REVIEW,
            payload=payload,
            key=f"{first.frame_id}:correction",
            corrects=first.event_id,
        )
        await outbox.queue(conn, first.frame_id, self.endpoints)
        return True

    # ---- delivery ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set: one loop per endpoint, so a slow or failing endpoint delays
        only its own queues. Database or bus trouble only delays delivery."""
        while not stop.is_set():
            try:
                async with self.db.connection() as conn, conn.transaction():
                    adopted = await outbox.adopt(conn, plant=self.plant, endpoints=self.endpoints)
                if adopted:
                    log.warning(
                        "%d pending dispositions had deliveries to removed endpoints (now dead)", adopted
                    )
                break
            except Exception as exc:
                log.warning("mes dispatcher cannot start (%s); retrying", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.config.poll_interval_s)
        await asyncio.gather(
            *(self._run_endpoint(name, stop) for name in self.endpoints), self._run_announcer(stop)
        )
        with contextlib.suppress(Exception):  # best effort: a stale heartbeat frees the claims too
            async with self.db.connection() as conn:
                await outbox.forget_owner(conn, self.owner)

    async def _beat_while_delivering(self) -> None:
        """Keep this dispatcher's claims alive while it sends (a claim whose owner is silent for
        outbox.OWNER_STALE_S is taken over). A failed beat is only logged: at worst another
        dispatcher sends the same messages again under their keys."""
        while True:
            await asyncio.sleep(outbox.OWNER_STALE_S / 4)
            try:
                async with self.db.connection() as conn:
                    await outbox.heartbeat(conn, owner=self.owner, plant=self.plant)
            except Exception as exc:
                log.warning("mes dispatcher heartbeat failed: %s", exc)

    async def _run_announcer(self, stop: asyncio.Event) -> None:
        """Publish DispositionDispatched off the delivery path (the next claim does not wait for
        the bus); a bus outage leaves rows unannounced until it returns."""
        while not stop.is_set():
            self._announce_wake.clear()
            try:
                if await self.announce_pending():
                    continue  # a full page: more may be waiting
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("mes announcer cycle failed (%s); retrying", exc)
            stop_task = asyncio.ensure_future(stop.wait())
            wake_task = asyncio.ensure_future(self._announce_wake.wait())
            try:
                await asyncio.wait(
                    {stop_task, wake_task},
                    timeout=self.config.poll_interval_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                stop_task.cancel()
                wake_task.cancel()

    async def _run_endpoint(self, endpoint: str, stop: asyncio.Event) -> None:
        wake = self._wakes[endpoint]
        while not stop.is_set():
            wait_s = self.config.poll_interval_s
            wake.clear()  # before looking: a wake while we look is kept for the wait below
            try:
                attempted = await self.dispatch_once(endpoint)
                if attempted:
                    self._announce_wake.set()
                    continue  # more may be due right away
                async with self.db.connection() as conn:
                    due = await outbox.next_due_in_s(conn, endpoint=endpoint, plant=self.plant)
                if due is not None:
                    wait_s = min(wait_s, max(due, 0.05))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("mes dispatcher (%s) cycle failed (%s); retrying in %.1fs", endpoint, exc, wait_s)
            stop_task = asyncio.ensure_future(stop.wait())
            wake_task = asyncio.ensure_future(wake.wait())
            try:
                await asyncio.wait(
                    {stop_task, wake_task}, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                stop_task.cancel()
                wake_task.cancel()

    async def dispatch_once(self, endpoint: str | None = None) -> int:
        """One cycle for `endpoint` (None: each in turn): claim its station queues, deliver each
        station's messages in order (stations in parallel), record every outcome as it comes.
        Returns the messages attempted."""
        if endpoint is None:
            return sum([await self.dispatch_once(name) for name in self.endpoints])
        token = f"{self.owner}:{uuid.uuid4().hex}"
        lease_s = self.config.lease_s
        async with self.db.connection() as conn, conn.transaction():
            claimed = await outbox.claim_heads(
                conn,
                endpoint=endpoint,
                plant=self.plant,
                token=token,
                queues=self.config.batch,
                per_queue=self.config.per_station,
                lease_s=lease_s,
            )
        if not claimed:
            return 0
        # Stop sending a little before the lease ends: after it, another dispatcher may own the rows.
        deadline = asyncio.get_running_loop().time() + lease_s - 1.0
        chains: dict[tuple[str, str, str], list[outbox.Claimed]] = {}
        for c in claimed:  # seq order
            chains.setdefault(c.row.station_key, []).append(c)
        beating = asyncio.ensure_future(self._beat_while_delivering())
        try:
            sent = await asyncio.gather(
                *(self._deliver_chain(endpoint, chain, deadline) for chain in chains.values())
            )
        finally:
            beating.cancel()
        outcomes = [o for done, _ in sent for o in done]
        rest = [frame for _, left in sent for frame in left]
        # Every station's outcomes in one transaction (the cycle waits for its slowest chain anyway).
        # Database trouble leaves the claims to expire: the messages are sent again under their
        # keys (MES de-duplicates).
        try:
            async with self.db.connection() as conn, conn.transaction():
                held = await outbox.record_deliveries(
                    conn, outcomes, endpoint=endpoint, token=token, target=self.config.endpoint
                )
                if rest:
                    await outbox.release(conn, rest, endpoint=endpoint, token=token)
        except Exception as exc:
            log.warning(
                "mes delivery outcomes at %s not recorded (%d sent again after their claims expire): %s",
                endpoint,
                len(outcomes),
                exc,
            )
            return len(outcomes)
        for o in outcomes:
            if o.frame_id not in held:
                log.warning(
                    "claim on %s at %s lost before its outcome (%s) was recorded",
                    o.frame_id,
                    endpoint,
                    o.outcome,
                )
            elif o.new_state == "dead":
                log.error(
                    "disposition for %s is dead at %s after %d attempts: %s",
                    o.frame_id,
                    endpoint,
                    o.attempt,
                    o.error,
                )
        return len(outcomes)

    async def _deliver_chain(
        self, endpoint: str, chain: Sequence[outbox.Claimed], deadline: float
    ) -> tuple[list[outbox.Outcome], list[str]]:
        """Send one station's claimed messages to `endpoint` in order, stopping at the first that
        must retry. Returns the outcomes and the claims to give back (not attempted: an earlier
        message must retry first). An adapter that fails unexpectedly keeps the rest of its
        claims until they expire, so a broken adapter is not hammered."""
        deliverer = self.deliverers[endpoint]
        outcomes: list[outbox.Outcome] = []
        try:
            for c in chain:
                if asyncio.get_running_loop().time() + self.config.timeout_s > deadline:
                    break
                att = await deliverer.deliver(c.row.key, await self.message(c.row))
                outcomes.append(self._outcome(c, att))
                if outcomes[-1].new_state == "pending":
                    break  # retry: later messages of this station wait
        except Exception as exc:
            station = "/".join(chain[0].row.station_key)
            log.warning("mes delivery to %s for station %s stopped: %s", endpoint, station, exc)
            return outcomes, []
        return outcomes, [c.row.frame_id for c in chain[len(outcomes) :]]

    def _outcome(self, c: outbox.Claimed, att: Attempt) -> outbox.Outcome:
        """What to record for one attempt: a retry past the attempt budget is dead."""
        n = c.attempts + 1
        outcome = att.outcome
        if outcome == "retry" and n >= self.config.max_attempts:
            outcome = "dead"
        state = {"delivered": "delivered", "dead": "dead"}.get(outcome, "pending")
        return outbox.Outcome(
            frame_id=c.row.frame_id,
            attempt=n,
            key=c.row.key,
            status_code=att.status_code,
            error=att.error,
            outcome=outcome,
            new_state=state,
            retry_in_s=self.config.backoff_s(n) if state == "pending" else 0.0,
        )

    async def message(self, row: OutboxRow) -> dict[str, Any]:
        """What MES receives: the stored disposition, a presigned link to the frame valid for
        `image_link_ttl_s` from now, and the trace context. A frame that cannot be signed goes out
        without a link (`image_url` null, `image_error` says why): the line needs the disposition."""
        msg = dict(row.payload)
        msg["image_url"] = None
        msg["image_url_expires_at"] = None
        if row.image_bucket and row.image_key and self.images is not None:
            ttl = self.config.image_link_ttl_s
            try:
                msg["image_url"] = await asyncio.to_thread(
                    self.images.presigned_get_url, row.image_bucket, row.image_key, ttl
                )
                msg["image_url_expires_at"] = (datetime.now(UTC) + timedelta(seconds=ttl)).isoformat()
            except Exception as exc:
                log.warning("no image link for %s: %s", row.frame_id, exc)
                msg["image_error"] = str(exc)[:300]
        msg["trace"] = {"traceparent": row.traceparent} if row.traceparent else None
        return msg

    async def announce_pending(self) -> int:
        """Publish DispositionDispatched for finished rows (concurrently; JetStream de-duplicates
        by event id); what the bus did not take is left for the next cycle."""
        async with self.db.connection() as conn, conn.transaction():
            rows = await outbox.unannounced(conn, ANNOUNCE_PAGE)
            if not rows:
                return 0
            sent = await asyncio.gather(*(self._announce(row) for row in rows), return_exceptions=True)
            done = [
                row.frame_id for row, r in zip(rows, sent, strict=True) if not isinstance(r, BaseException)
            ]
            if done:
                await outbox.mark_announced(conn, done)
        failed = [r for r in sent if isinstance(r, BaseException)]
        if failed:
            raise failed[0]
        return len(rows)

    async def _announce(self, row: OutboxRow) -> None:
        meta = new_meta(PRODUCER, correlation_id=row.frame_id)
        meta.event_id = f"mes:{row.key}:{row.state}:{row.attempts}"
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
            await outbox.queue(conn, frame_id, self.endpoints)
        self.wake()
        return await self.status(frame_id)

    async def delivered(self, endpoint: str, per_station: int) -> list[tuple[str, dict[str, Any]]]:
        """(key, payload) of each station's newest `per_station` messages delivered to `endpoint`,
        oldest first: the history a restarted adapter serves again."""
        async with self.db.connection() as conn:
            return await outbox.delivered_to(
                conn, endpoint=endpoint, plant=self.plant, per_station=per_station
            )

    async def counts(self) -> dict[str, int]:
        async with self.db.connection() as conn:
            return await outbox.counts(conn)

    async def conflicts(self, frame_id: str | None = None, limit: int = 100) -> list[ConflictRow]:
        """Recorded result conflicts (newest first), for operators and audits."""
        async with self.db.connection() as conn:
            return await outbox.conflicts(conn, frame_id=frame_id, limit=limit)

    async def late_dispositions(self) -> int:
        """How many dispositions arrived after the reject window."""
        async with self.db.connection() as conn:
            return await outbox.late_count(conn)


def check_result(result: events_pb2.InspectionResult) -> None:
    """Refuse what MES must not receive in a changed form: an unknown enum number would go out as
    a guess, and an identifier with control characters or of any length as whatever MES makes of
    it. Raises ValueError naming the field (the bus handler dead-letters the result)."""
    for field, enum, value in (
        ("verdict", common_pb2.Verdict, result.verdict),
        ("severity", common_pb2.Severity, result.severity),
        ("disposition", common_pb2.Disposition, result.disposition),
    ):
        try:
            enum.Name(value)
        except ValueError:
            raise ValueError(
                f"InspectionResult.{field}: unknown value {value} (known: {', '.join(enum_words(enum))})"
            ) from None
    cap = result.capture
    for field, text in (
        ("frame_id", result.frame_id),
        ("meta.event_id", result.meta.event_id),
        ("capture.part_id", cap.part_id),
        ("capture.batch", cap.batch),
        ("capture.station.plant", cap.station.plant),
        ("capture.station.line", cap.station.line),
        ("capture.station.station", cap.station.station),
        ("defect_class", result.defect_class),
        ("review_reason", result.review_reason),
        ("model_version", result.model_version),
        ("taxonomy_version", result.taxonomy_version),
    ):
        check_name(text, f"InspectionResult.{field}")


def _current_traceparent() -> str:
    """The W3C traceparent of the span handling the result ('' when tracing is off)."""
    headers: dict[str, str] = {}
    telemetry.inject_trace_headers(headers)
    return headers.get("traceparent", "")


def _latency_s(result: events_pb2.InspectionResult) -> float | None:
    """Capture -> arrival at MES in seconds; None when the result carries no capture time."""
    if not result.capture.HasField("captured_at"):
        return None
    captured = result.capture.captured_at.ToDatetime(tzinfo=UTC)
    return (datetime.now(UTC) - captured).total_seconds()
