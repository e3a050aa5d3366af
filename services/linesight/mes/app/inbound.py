"""What MES tells us and asks: part context (serial -> order, product, batch, customer
requirement), quality holds and their release, result queries, per-endpoint delivery status.

A hold changes dispositions through the outbox, so MES hears about it the way it hears about any
disposition (ordered per station, at least once, de-duplicated by key): a part whose message has
not been sent yet is changed in place; a part MES may already have (sent, being sent, retrying,
dead) gets a correction under its own key (`<frame>:hold:<id>`) that names the original message
(`correction_of`). Parts arriving later under an active hold go out as `hold` in the first place
(see MesApp.enqueue). A release sends each part the hold held, and no other active hold holds,
its own disposition again (review when its results conflicted), as a correction
(`<frame>:release:<id>`). Every change of one request happens in one transaction: on a database
error nothing is changed and the caller gets the error.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from linesight.common.pb import common_pb2
from linesight.mes.app.dispatch import MesApp, UnknownFrameError, held_payload, released_payload
from linesight.mes.store import inbound, outbox
from linesight.mes.store.inbound import EndpointAttempt, Hold, PartContext
from linesight.mes.store.outbox import OutboxRow

HOLD_KINDS = ("batch", "order", "time_range")


class UnknownHoldError(KeyError):
    """No hold with this id."""


@dataclass(frozen=True)
class DeliveryStatus:
    """A message's state in the outbox and what each endpoint answered, per key."""

    row: OutboxRow
    endpoints: list[EndpointAttempt]  # every attempt so far, per message key and endpoint
    holds: list[int]
    current: list[dict[str, Any]]  # each endpoint's delivery of the current message


class InboundApp:
    """The inbound API's use cases over the MES outbox."""

    def __init__(self, mes: MesApp) -> None:
        self.mes = mes

    async def put_context(self, context: PartContext) -> tuple[PartContext, int]:
        """Store what MES says about a serial; parts of it already here that an active batch or
        order hold now covers are put on hold. Returns the stored context and the parts changed."""
        async with self.mes.db.connection() as conn, conn.transaction():
            saved = await inbound.upsert_context(conn, context)
            changed = 0
            for hold in await inbound.list_holds(conn, active_only=True, limit=10_000):
                if hold.kind != "time_range":
                    changed += await self._apply(conn, hold, part_id=context.serial)
        if changed:
            self.mes.wake()
        return saved, changed

    async def get_context(self, serial: str) -> PartContext | None:
        async with self.mes.db.connection() as conn:
            return await inbound.get_context(conn, serial)

    async def hold(
        self,
        *,
        kind: str,
        value: str = "",
        from_ts: datetime | None = None,
        until_ts: datetime | None = None,
        reason: str,
        by: str,
    ) -> tuple[Hold, int]:
        """Start a hold and put every part it covers on hold. Returns it and the parts changed."""
        if kind not in HOLD_KINDS:
            raise ValueError(f"hold kind must be one of {', '.join(HOLD_KINDS)}")
        if kind == "time_range":
            if from_ts is None or until_ts is None or not from_ts < until_ts:
                raise ValueError("a time_range hold needs from_ts < until_ts")
            value = ""
        elif not value:
            raise ValueError(f"a {kind} hold needs a value (the {kind})")
        else:
            from_ts = until_ts = None
        async with self.mes.db.connection() as conn, conn.transaction():
            hold = await inbound.create_hold(
                conn, kind=kind, value=value, from_ts=from_ts, until_ts=until_ts, reason=reason, created_by=by
            )
            changed = await self._apply(conn, hold)
        if changed:
            self.mes.wake()
        return hold, changed

    async def release(self, hold_id: int, *, by: str) -> tuple[Hold, int]:
        """End a hold; parts no other active hold holds get their own disposition again. Releasing
        a released hold changes nothing (a retried request is harmless)."""
        async with self.mes.db.connection() as conn, conn.transaction():
            hold = await inbound.get_hold(conn, hold_id, lock=True)
            if hold is None:
                raise UnknownHoldError(hold_id)
            if not hold.active:
                return hold, 0
            rows = await inbound.rows_to_release(conn, hold_id)
            hold = await inbound.mark_released(conn, hold_id, by)
            changed = 0
            for row in rows:
                if row.disposition != common_pb2.DISPOSITION_HOLD:
                    continue
                own = (
                    common_pb2.DISPOSITION_REVIEW
                    if await inbound.has_conflict(conn, row.frame_id)
                    else (row.result_disposition or row.disposition)
                )
                payload = released_payload(row.payload, hold, disposition=own)
                await self._change(conn, row, own, payload, key=f"{row.frame_id}:release:{hold.id}")
                changed += 1
        if changed:
            self.mes.wake()
        return hold, changed

    async def get_hold(self, hold_id: int) -> Hold:
        async with self.mes.db.connection() as conn:
            hold = await inbound.get_hold(conn, hold_id)
        if hold is None:
            raise UnknownHoldError(hold_id)
        return hold

    async def holds(self, *, active_only: bool, limit: int) -> list[Hold]:
        async with self.mes.db.connection() as conn:
            return await inbound.list_holds(conn, active_only=active_only, limit=limit)

    async def results(self, **filters: Any) -> list[tuple[OutboxRow, list[int]]]:
        """Results matching `filters` (see store.inbound.query_results), each with its active holds."""
        async with self.mes.db.connection() as conn:
            rows = await inbound.query_results(conn, **filters)
            held = await inbound.holds_of(conn, [r.frame_id for r in rows])
        return [(r, held.get(r.frame_id, [])) for r in rows]

    async def delivery(self, frame_id: str) -> DeliveryStatus:
        async with self.mes.db.connection() as conn:
            row = await outbox.get(conn, frame_id)
            if row is None:
                raise UnknownFrameError(frame_id)
            attempts = await inbound.endpoint_attempts(conn, frame_id)
            current = await outbox.endpoint_deliveries(conn, frame_id)
            held = await inbound.holds_of(conn, [frame_id])
        return DeliveryStatus(row, attempts, held.get(frame_id, []), current)

    async def _apply(self, conn: Any, hold: Hold, *, part_id: str | None = None) -> int:
        """Put the parts `hold` covers (one serial's when given) on hold; returns those changed."""
        changed = 0
        for row in await inbound.rows_matching(conn, hold.id, part_id=part_id):
            await inbound.add_held(conn, hold.id, row.frame_id)
            if row.disposition == common_pb2.DISPOSITION_HOLD:
                continue  # already hold (the result said so, or another hold): nothing new for MES
            payload = held_payload(row.payload, [hold], original=row.disposition)
            await self._change(
                conn, row, common_pb2.DISPOSITION_HOLD, payload, key=f"{row.frame_id}:hold:{hold.id}"
            )
            changed += 1
        return changed

    async def _change(
        self, conn: Any, row: OutboxRow, disposition: int, payload: dict[str, Any], *, key: str
    ) -> None:
        """Rewrite a message no endpoint has been sent yet; anything MES may have seen is
        corrected under `key`, naming the original message, and queued for every endpoint."""
        if row.state == "pending" and await outbox.unsent(conn, row.frame_id):
            await outbox.rewrite_unsent(conn, row.frame_id, disposition=disposition, payload=payload)
            return
        payload = {**payload, "correction_of": row.event_id}
        await outbox.make_correction(
            conn, row.frame_id, disposition=disposition, payload=payload, key=key, corrects=row.event_id
        )
        await outbox.queue(conn, row.frame_id, self.mes.endpoints)
