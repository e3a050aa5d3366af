"""Part context, quality holds and result queries (tables of the inbound MES API). The caller owns
the connection and therefore the transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from linesight.mes.store.outbox import OutboxRow, row_from


@dataclass(frozen=True)
class PartContext:
    """What MES says about a serial."""

    serial: str
    order_no: str = ""
    product: str = ""
    batch: str = ""
    customer_requirement: str = ""
    updated_by: str = ""
    updated_at: datetime | None = None


@dataclass(frozen=True)
class Hold:
    """A quality hold: kind batch/order (on `value`) or time_range ([from_ts, until_ts) of capture)."""

    id: int
    kind: str
    value: str
    from_ts: datetime | None
    until_ts: datetime | None
    reason: str
    created_by: str
    created_at: datetime
    released_at: datetime | None = None
    released_by: str = ""

    @property
    def active(self) -> bool:
        return self.released_at is None


@dataclass(frozen=True)
class EndpointAttempt:
    """The latest attempt of one message (key) at one endpoint, and how many there were."""

    endpoint: str
    delivery_key: str
    attempts: int
    outcome: str
    status_code: int | None
    error: str
    at: datetime


async def upsert_context(conn: AsyncConnection[Any], ctx: PartContext) -> PartContext:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "INSERT INTO part_context (serial, order_no, product, batch, customer_requirement, updated_by) "
            "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (serial) DO UPDATE SET "
            "order_no = EXCLUDED.order_no, product = EXCLUDED.product, batch = EXCLUDED.batch, "
            "customer_requirement = EXCLUDED.customer_requirement, updated_by = EXCLUDED.updated_by, "
            "updated_at = now() RETURNING *",
            (ctx.serial, ctx.order_no, ctx.product, ctx.batch, ctx.customer_requirement, ctx.updated_by),
        )
        d = await cur.fetchone()
    assert d is not None
    return PartContext(**d)


async def get_context(conn: AsyncConnection[Any], serial: str) -> PartContext | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT * FROM part_context WHERE serial = %s", (serial,))
        d = await cur.fetchone()
    return PartContext(**d) if d else None


async def create_hold(
    conn: AsyncConnection[Any],
    *,
    kind: str,
    value: str,
    from_ts: datetime | None,
    until_ts: datetime | None,
    reason: str,
    created_by: str,
) -> Hold:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "INSERT INTO holds (kind, value, from_ts, until_ts, reason, created_by) "
            "VALUES (%s, %s, %s, %s, %s, %s) RETURNING *",
            (kind, value, from_ts, until_ts, reason, created_by),
        )
        d = await cur.fetchone()
    assert d is not None
    return Hold(**d)


async def get_hold(conn: AsyncConnection[Any], hold_id: int, *, lock: bool = False) -> Hold | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"SELECT * FROM holds WHERE id = %s{' FOR UPDATE' if lock else ''}", (hold_id,))
        d = await cur.fetchone()
    return Hold(**d) if d else None


async def list_holds(conn: AsyncConnection[Any], *, active_only: bool, limit: int) -> list[Hold]:
    where = "WHERE released_at IS NULL" if active_only else ""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"SELECT * FROM holds {where} ORDER BY id DESC LIMIT %s", (limit,))
        return [Hold(**d) for d in await cur.fetchall()]


async def mark_released(conn: AsyncConnection[Any], hold_id: int, released_by: str) -> Hold:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "UPDATE holds SET released_at = now(), released_by = %s WHERE id = %s RETURNING *",
            (released_by, hold_id),
        )
        d = await cur.fetchone()
    assert d is not None
    return Hold(**d)


# A part matches a hold by its capture batch or the batch MES gave its serial, by the order MES
# gave its serial, or by its capture time (arrival time when the capture carried none).
_MATCH = (
    "((h.kind = 'batch' AND (o.batch = h.value OR c.batch = h.value))"
    " OR (h.kind = 'order' AND c.order_no = h.value)"
    " OR (h.kind = 'time_range' AND COALESCE(o.captured_at, o.created_at) >= h.from_ts"
    "  AND COALESCE(o.captured_at, o.created_at) < h.until_ts))"
)


async def rows_matching(
    conn: AsyncConnection[Any], hold_id: int, *, part_id: str | None = None
) -> list[OutboxRow]:
    """Outbox rows the hold covers and does not hold yet (one serial's when `part_id` is given),
    locked for the caller's transaction, in arrival order."""
    extra, args = ("AND o.part_id = %s", [part_id]) if part_id is not None else ("", [])
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT o.* FROM outbox o JOIN holds h ON h.id = %s"
            " LEFT JOIN part_context c ON c.serial = o.part_id AND o.part_id <> ''"
            f" WHERE {_MATCH} {extra}"
            " AND NOT EXISTS (SELECT 1 FROM held_parts p WHERE p.hold_id = h.id AND p.frame_id = o.frame_id)"
            " ORDER BY o.seq FOR UPDATE OF o",
            (hold_id, *args),
        )
        return [row_from(d) for d in await cur.fetchall()]


async def active_holds_for(
    conn: AsyncConnection[Any], *, batch: str, context: PartContext | None, at: datetime
) -> list[Hold]:
    """Active holds covering a part arriving now (batch from its capture or its context)."""
    batches = [b for b in (batch, context.batch if context else "") if b]
    order = context.order_no if context and context.order_no else None
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT * FROM holds WHERE released_at IS NULL AND ("
            " (kind = 'batch' AND value = ANY(%s)) OR (kind = 'order' AND value = %s)"
            " OR (kind = 'time_range' AND from_ts <= %s AND %s < until_ts)) ORDER BY id",
            (batches, order, at, at),
        )
        return [Hold(**d) for d in await cur.fetchall()]


async def add_held(conn: AsyncConnection[Any], hold_id: int, frame_id: str) -> None:
    await conn.execute(
        "INSERT INTO held_parts (hold_id, frame_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
        (hold_id, frame_id),
    )


async def rows_to_release(conn: AsyncConnection[Any], hold_id: int) -> list[OutboxRow]:
    """Rows this hold holds that no other active hold holds, locked, in arrival order."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT o.* FROM outbox o JOIN held_parts p ON p.frame_id = o.frame_id AND p.hold_id = %s"
            " WHERE NOT EXISTS (SELECT 1 FROM held_parts q JOIN holds h ON h.id = q.hold_id"
            "  WHERE q.frame_id = o.frame_id AND q.hold_id <> %s AND h.released_at IS NULL)"
            " ORDER BY o.seq FOR UPDATE OF o",
            (hold_id, hold_id),
        )
        return [row_from(d) for d in await cur.fetchall()]


async def holds_of(conn: AsyncConnection[Any], frame_ids: list[str]) -> dict[str, list[int]]:
    """Active holds on each of `frame_ids`."""
    cur = await conn.execute(
        "SELECT p.frame_id, p.hold_id FROM held_parts p JOIN holds h ON h.id = p.hold_id"
        " WHERE p.frame_id = ANY(%s) AND h.released_at IS NULL ORDER BY p.hold_id",
        (frame_ids,),
    )
    out: dict[str, list[int]] = {}
    for frame_id, hold_id in await cur.fetchall():
        out.setdefault(frame_id, []).append(int(hold_id))
    return out


async def has_conflict(conn: AsyncConnection[Any], frame_id: str) -> bool:
    cur = await conn.execute("SELECT 1 FROM result_conflicts WHERE frame_id = %s LIMIT 1", (frame_id,))
    return await cur.fetchone() is not None


async def query_results(
    conn: AsyncConnection[Any],
    *,
    serial: str | None,
    batch: str | None,
    line: str | None,
    station: str | None,
    since: datetime | None,
    until: datetime | None,
    after_seq: int,
    limit: int,
) -> list[OutboxRow]:
    """Outbox rows by serial, batch (capture or context), line/station and capture time range,
    in arrival order after `after_seq` (the page cursor)."""
    where = ["o.seq > %s"]
    args: list[Any] = [after_seq]
    if serial is not None:
        where.append("o.part_id = %s")
        args.append(serial)
    if batch is not None:
        where.append("(o.batch = %s OR c.batch = %s)")
        args += [batch, batch]
    if line is not None:
        where.append("o.line = %s")
        args.append(line)
    if station is not None:
        where.append("o.station = %s")
        args.append(station)
    if since is not None:
        where.append("COALESCE(o.captured_at, o.created_at) >= %s")
        args.append(since)
    if until is not None:
        where.append("COALESCE(o.captured_at, o.created_at) < %s")
        args.append(until)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT o.* FROM outbox o LEFT JOIN part_context c ON c.serial = o.part_id AND o.part_id <> ''"
            f" WHERE {' AND '.join(where)} ORDER BY o.seq LIMIT %s",
            (*args, limit),
        )
        return [row_from(d) for d in await cur.fetchall()]


async def endpoint_attempts(conn: AsyncConnection[Any], frame_id: str) -> list[EndpointAttempt]:
    """Per (message key, endpoint): the latest attempt and the attempt count."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT DISTINCT ON (delivery_key, target) delivery_key, target AS endpoint, outcome,"
            " status_code, error, at,"
            " count(*) OVER (PARTITION BY delivery_key, target) AS attempts"
            " FROM delivery_attempts WHERE frame_id = %s ORDER BY delivery_key, target, id DESC",
            (frame_id,),
        )
        return [EndpointAttempt(**d) for d in await cur.fetchall()]
