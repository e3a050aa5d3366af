"""Outbox repository. The caller owns the connection and therefore the transaction."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from linesight.common.pb import common_pb2


@dataclass(frozen=True)
class OutboxRow:
    frame_id: str
    event_id: str
    part_id: str
    plant: str
    line: str
    station: str
    disposition: common_pb2.Disposition
    payload: dict[str, Any]
    state: str = "pending"
    attempts: int = 0
    last_error: str = ""
    target: str = ""
    next_attempt_at: datetime | None = None
    delivered_at: datetime | None = None


def _row(d: dict[str, Any]) -> OutboxRow:
    return OutboxRow(
        frame_id=d["frame_id"],
        event_id=d["event_id"],
        part_id=d["part_id"],
        plant=d["plant"],
        line=d["line"],
        station=d["station"],
        disposition=d["disposition"],
        payload=d["payload"],
        state=d["state"],
        attempts=d["attempts"],
        last_error=d["last_error"],
        target=d["target"],
        next_attempt_at=d["next_attempt_at"],
        delivered_at=d["delivered_at"],
    )


async def insert(conn: AsyncConnection[Any], row: OutboxRow) -> bool:
    """Add a frame's disposition; False when the frame is already in the outbox (a redelivery)."""
    cur = await conn.execute(
        "INSERT INTO outbox (frame_id, event_id, part_id, plant, line, station, disposition, payload) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb) ON CONFLICT (frame_id) DO NOTHING RETURNING frame_id",
        (
            row.frame_id,
            row.event_id,
            row.part_id,
            row.plant,
            row.line,
            row.station,
            row.disposition,
            json.dumps(row.payload),
        ),
    )
    return await cur.fetchone() is not None


async def claim_due(conn: AsyncConnection[Any], limit: int) -> list[OutboxRow]:
    """Pending rows whose time has come, locked (SKIP LOCKED: several dispatchers never collide)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT * FROM outbox WHERE state = 'pending' AND next_attempt_at <= now() "
            "ORDER BY next_attempt_at LIMIT %s FOR UPDATE SKIP LOCKED",
            (limit,),
        )
        return [_row(d) for d in await cur.fetchall()]


async def record_attempt(
    conn: AsyncConnection[Any],
    frame_id: str,
    *,
    attempt: int,
    target: str,
    status_code: int | None,
    error: str,
    new_state: str,
    retry_in_s: float,
) -> None:
    """Log the attempt and move the row: delivered, dead, or pending again after `retry_in_s`."""
    await conn.execute(
        "INSERT INTO delivery_attempts (frame_id, attempt, target, status_code, error) "
        "VALUES (%s, %s, %s, %s, %s)",
        (frame_id, attempt, target, status_code, error),
    )
    await conn.execute(
        "UPDATE outbox SET state = %s, attempts = %s, last_error = %s, target = %s, "
        "next_attempt_at = now() + make_interval(secs => %s), "
        "delivered_at = CASE WHEN %s = 'delivered' THEN now() ELSE delivered_at END "
        "WHERE frame_id = %s",
        (new_state, attempt, error, target, retry_in_s, new_state, frame_id),
    )


async def get(conn: AsyncConnection[Any], frame_id: str) -> OutboxRow | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT * FROM outbox WHERE frame_id = %s", (frame_id,))
        d = await cur.fetchone()
    return _row(d) if d else None


async def reset(conn: AsyncConnection[Any], frame_id: str) -> bool:
    """Make a row pending again with a fresh attempt budget (operator-requested redelivery)."""
    cur = await conn.execute(
        "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = now(), last_error = '', "
        "announced = FALSE "
        "WHERE frame_id = %s RETURNING frame_id",
        (frame_id,),
    )
    return await cur.fetchone() is not None


async def counts(conn: AsyncConnection[Any]) -> dict[str, int]:
    cur = await conn.execute("SELECT state, count(*) FROM outbox GROUP BY state")
    out = {"pending": 0, "delivered": 0, "dead": 0}
    out.update({str(k): int(v) for k, v in await cur.fetchall()})
    return out


async def next_due_in_s(conn: AsyncConnection[Any]) -> float | None:
    """Seconds until the earliest pending row is due (None: nothing pending)."""
    cur = await conn.execute(
        "SELECT EXTRACT(EPOCH FROM (min(next_attempt_at) - now())) FROM outbox WHERE state = 'pending'"
    )
    row = await cur.fetchone()
    return None if row is None or row[0] is None else max(0.0, float(row[0]))


async def unannounced(conn: AsyncConnection[Any], limit: int) -> list[OutboxRow]:
    """Finished rows whose DispositionDispatched event has not been published yet."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT * FROM outbox WHERE state <> 'pending' AND NOT announced ORDER BY frame_id LIMIT %s "
            "FOR UPDATE SKIP LOCKED",
            (limit,),
        )
        return [_row(d) for d in await cur.fetchall()]


async def mark_announced(conn: AsyncConnection[Any], frame_id: str) -> None:
    await conn.execute("UPDATE outbox SET announced = TRUE WHERE frame_id = %s", (frame_id,))
