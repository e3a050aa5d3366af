"""Outbox repository. The caller owns the connection and therefore the transaction."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from linesight.common.pb import common_pb2

# A re-queued row (correction, redelivery) goes to the back of its station's queue and drops any claim.
_REQUEUE = "seq = nextval(pg_get_serial_sequence('outbox', 'seq')), claim_token = '', claimed_until = NULL"


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
    verdict: int | None = None  # the first result's verdict (None: a row from before it was kept)
    result_disposition: int | None = None  # the first result's disposition (None: same as disposition)
    delivery_key: str = ""  # Idempotency-Key at MES; '' = the frame id
    corrects_event_id: str = ""  # set on a correction: the original result it replaces
    decision_latency_s: float | None = None
    late: bool = False
    seq: int = 0  # arrival order within the outbox (a station's messages go out in this order)
    image_bucket: str = ""
    image_key: str = ""
    traceparent: str = ""
    batch: str = ""
    captured_at: datetime | None = None
    created_at: datetime | None = None
    claim_token: str = ""

    @property
    def station_key(self) -> tuple[str, str, str]:
        """The ordering unit: one station's dispositions are delivered one after another."""
        return (self.plant, self.line, self.station)

    @property
    def key(self) -> str:
        """The Idempotency-Key MES de-duplicates on."""
        return self.delivery_key or self.frame_id


@dataclass(frozen=True)
class ConflictRow:
    """A later result for a frame that disagreed with the first one."""

    frame_id: str
    part_id: str
    original_event_id: str
    conflicting_event_id: str
    original_verdict: int | None
    original_disposition: int
    verdict: int
    disposition: int
    producer: str
    model_version: str
    at: datetime | None = None


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
        verdict=d["verdict"],
        result_disposition=d["result_disposition"],
        delivery_key=d["delivery_key"],
        corrects_event_id=d["corrects_event_id"],
        decision_latency_s=d["decision_latency_s"],
        late=d["late"],
        seq=d["seq"],
        image_bucket=d["image_bucket"],
        image_key=d["image_key"],
        traceparent=d["traceparent"],
        batch=d["batch"],
        captured_at=d["captured_at"],
        created_at=d["created_at"],
        claim_token=d["claim_token"],
    )


_INGEST = (
    "WITH i AS (SELECT * FROM unnest(%(frame)s::text[], %(event)s::text[], %(part)s::text[],"
    "  %(plant)s::text[], %(line)s::text[], %(station)s::text[], %(disposition)s::int[],"
    "  %(payload)s::text[], %(verdict)s::int[], %(latency)s::float8[], %(late)s::bool[],"
    "  %(bucket)s::text[], %(key)s::text[], %(trace)s::text[], %(batch)s::text[],"
    "  %(captured)s::timestamptz[], %(at)s::timestamptz[]) WITH ORDINALITY AS i(frame_id, event_id,"
    "  part_id, plant, line, station, disposition, payload, verdict, latency, late, bucket, key, trace,"
    "  batch, captured_at, at, ord)),"
    " x AS (SELECT i.*, c.order_no, c.product, c.customer_requirement, c.batch AS context_batch,"
    "  h.ids, h.reason FROM i LEFT JOIN part_context c ON c.serial = i.part_id AND i.part_id <> ''"
    "  LEFT JOIN LATERAL (SELECT array_agg(hd.id ORDER BY hd.id) AS ids,"
    "   (array_agg(hd.reason ORDER BY hd.id))[1] AS reason FROM holds hd WHERE hd.released_at IS NULL AND ("
    "   (hd.kind = 'batch' AND hd.value IN (i.batch, COALESCE(c.batch, '')))"
    "   OR (hd.kind = 'order' AND hd.value = c.order_no)"
    "   OR (hd.kind = 'time_range' AND hd.from_ts <= i.at AND i.at < hd.until_ts))) h ON TRUE),"
    " o AS (INSERT INTO outbox (frame_id, event_id, part_id, plant, line, station, disposition,"
    "  payload, verdict, result_disposition, decision_latency_s, late, image_bucket, image_key,"
    "  traceparent, batch, captured_at)"
    "  SELECT frame_id, event_id, part_id, plant, line, station,"
    "  CASE WHEN ids IS NULL THEN disposition ELSE %(hold)s END,"
    "  payload::jsonb || jsonb_build_object('order', COALESCE(order_no, ''),"
    "   'product', COALESCE(product, ''), 'customer_requirement', COALESCE(customer_requirement, ''),"
    "   'context_batch', COALESCE(context_batch, ''))"
    "  || CASE WHEN ids IS NULL THEN '{}'::jsonb ELSE jsonb_build_object('disposition', 'hold',"
    "   'holds', to_jsonb(ids), 'hold_reason', reason,"
    "   'held_disposition', payload::jsonb ->> 'disposition') END,"
    "  verdict, disposition, latency, late, bucket, key, trace, batch, captured_at"
    "  FROM x ORDER BY ord"
    "  ON CONFLICT (frame_id) DO NOTHING RETURNING frame_id, plant, line, station, seq),"
    " d AS (INSERT INTO deliveries (frame_id, endpoint, plant, line, station, seq)"
    "  SELECT o.frame_id, e, o.plant, o.line, o.station, o.seq FROM o, unnest(%(endpoints)s::text[]) e),"
    " held AS (INSERT INTO held_parts (hold_id, frame_id)"
    "  SELECT unnest(x.ids), o.frame_id FROM o JOIN x USING (frame_id))"
    " SELECT o.frame_id, COALESCE(x.ids, '{}') FROM o JOIN x USING (frame_id)"
)


async def ingest(
    conn: AsyncConnection[Any], rows: list[OutboxRow], endpoints: list[str]
) -> dict[str, list[int]]:
    """Insert new results' messages and queue each for every endpoint, in one statement for the
    whole batch (the ingest path: one round trip per bus fetch), in the order given (a station's
    messages go out in that order). On the way in, what MES pushed about a serial (part context)
    is added to its payload, and when active quality holds cover a part (batch from its capture
    or context, order from context, capture time in a hold's range) its message says `hold`
    (`holds`, `hold_reason`, `held_disposition` = the result's own disposition, which stays in
    result_disposition) and the part is recorded as held. Frame ids must be distinct. Returns
    {frame id: the holds that hold it} for the rows inserted; a frame already in the outbox is
    absent (nothing written for it)."""
    if not rows:
        return {}
    now = datetime.now(UTC)
    cur = await conn.execute(
        _INGEST,
        {
            "frame": [r.frame_id for r in rows],
            "event": [r.event_id for r in rows],
            "part": [r.part_id for r in rows],
            "plant": [r.plant for r in rows],
            "line": [r.line for r in rows],
            "station": [r.station for r in rows],
            "disposition": [int(r.disposition) for r in rows],
            "payload": [json.dumps(r.payload) for r in rows],
            "verdict": [r.verdict for r in rows],
            "latency": [r.decision_latency_s for r in rows],
            "late": [r.late for r in rows],
            "bucket": [r.image_bucket for r in rows],
            "key": [r.image_key for r in rows],
            "trace": [r.traceparent for r in rows],
            "batch": [r.batch for r in rows],
            "captured": [r.captured_at for r in rows],
            "at": [r.captured_at or now for r in rows],
            "hold": common_pb2.DISPOSITION_HOLD,
            "endpoints": endpoints,
        },
    )
    return {str(frame): [int(h) for h in holds] for frame, holds in await cur.fetchall()}


async def get_for_update(conn: AsyncConnection[Any], frame_id: str) -> OutboxRow | None:
    """The frame's row, locked until the transaction ends (a conflict check and its correction)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT * FROM outbox WHERE frame_id = %s FOR UPDATE", (frame_id,))
        d = await cur.fetchone()
    return _row(d) if d else None


async def record_conflict(conn: AsyncConnection[Any], c: ConflictRow) -> bool:
    """Keep a conflicting result; False when this conflicting event was recorded already."""
    cur = await conn.execute(
        "INSERT INTO result_conflicts (frame_id, part_id, original_event_id, conflicting_event_id, "
        "original_verdict, original_disposition, verdict, disposition, producer, model_version) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (frame_id, conflicting_event_id) DO NOTHING RETURNING id",
        (
            c.frame_id,
            c.part_id,
            c.original_event_id,
            c.conflicting_event_id,
            c.original_verdict,
            c.original_disposition,
            c.verdict,
            c.disposition,
            c.producer,
            c.model_version,
        ),
    )
    return await cur.fetchone() is not None


async def make_correction(
    conn: AsyncConnection[Any],
    frame_id: str,
    *,
    disposition: int,
    payload: dict[str, Any],
    key: str,
    corrects: str,
) -> None:
    """Turn the row into a correction to send (again) under its own key, with a fresh attempt budget."""
    await conn.execute(
        "UPDATE outbox SET disposition = %s, payload = %s::jsonb, delivery_key = %s, corrects_event_id = %s, "
        "state = 'pending', attempts = 0, next_attempt_at = now(), last_error = '', announced = FALSE, "
        f"{_REQUEUE} WHERE frame_id = %s",
        (disposition, json.dumps(payload), key, corrects, frame_id),
    )


async def rewrite_unsent(
    conn: AsyncConnection[Any], frame_id: str, *, disposition: int, payload: dict[str, Any]
) -> None:
    """Change a message MES has not been sent yet in place (same key, same place in the queue)."""
    await conn.execute(
        "UPDATE outbox SET disposition = %s, payload = %s::jsonb WHERE frame_id = %s",
        (disposition, json.dumps(payload), frame_id),
    )


def row_from(d: dict[str, Any]) -> OutboxRow:
    """An OutboxRow from a `SELECT outbox.*` record (other repositories of the schema)."""
    return _row(d)


async def conflicts(
    conn: AsyncConnection[Any], *, frame_id: str | None = None, limit: int = 100
) -> list[ConflictRow]:
    """Recorded conflicts, newest first; one frame's when `frame_id` is given."""
    where, args = ("WHERE frame_id = %s", [frame_id]) if frame_id else ("", [])
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT frame_id, part_id, original_event_id, conflicting_event_id, original_verdict, "
            "original_disposition, verdict, disposition, producer, model_version, at "
            f"FROM result_conflicts {where} ORDER BY id DESC LIMIT %s",
            (*args, limit),
        )
        return [ConflictRow(**d) for d in await cur.fetchall()]


async def late_count(conn: AsyncConnection[Any]) -> int:
    """Dispositions that reached MES after the reject window."""
    cur = await conn.execute("SELECT count(*) FROM outbox WHERE late")
    row = await cur.fetchone()
    return int(row[0]) if row else 0


# Claims are serialised by this advisory lock (held only for the claim's short transaction), so two
# dispatchers never claim the same queue's messages.
_CLAIM_LOCK = 0x4C534D4553  # "LSMES"

_QUEUE_COLUMNS = (
    "seq = EXCLUDED.seq, state = 'pending', attempts = 0, next_attempt_at = now(), last_error = '', "
    "status_code = NULL, claim_token = '', claimed_until = NULL, delivered_at = NULL"
)


async def queue(conn: AsyncConnection[Any], frame_id: str, endpoints: list[str]) -> None:
    """(Re)queue the frame's current message for every endpoint, at the outbox row's seq (a
    correction or redelivery took a new one): a fresh attempt budget, any claim dropped."""
    await conn.execute(
        "INSERT INTO deliveries (frame_id, endpoint, plant, line, station, seq) "
        "SELECT o.frame_id, e, o.plant, o.line, o.station, o.seq FROM outbox o, unnest(%s::text[]) e "
        f"WHERE o.frame_id = %s ON CONFLICT (frame_id, endpoint) DO UPDATE SET {_QUEUE_COLUMNS}",
        (endpoints, frame_id),
    )


async def adopt(conn: AsyncConnection[Any], *, plant: str, endpoints: list[str]) -> int:
    """At start: pending messages of `plant` get a delivery for each configured endpoint they
    lack (rows from before per-endpoint deliveries, or an endpoint added to the configuration);
    pending deliveries to an endpoint no longer configured become dead (shown, redeliverable).
    Returns the messages whose summary changed."""
    await conn.execute(
        "INSERT INTO deliveries (frame_id, endpoint, plant, line, station, seq, attempts, next_attempt_at) "
        "SELECT o.frame_id, e, o.plant, o.line, o.station, o.seq, 0, o.next_attempt_at "
        "FROM outbox o, unnest(%s::text[]) e WHERE o.state = 'pending' AND o.plant = %s "
        "ON CONFLICT (frame_id, endpoint) DO NOTHING",
        (endpoints, plant),
    )
    cur = await conn.execute(
        "UPDATE deliveries SET state = 'dead', last_error = 'endpoint removed from the configuration', "
        "claim_token = '', claimed_until = NULL "
        "WHERE state = 'pending' AND plant = %s AND NOT (endpoint = ANY(%s)) RETURNING frame_id",
        (plant, endpoints),
    )
    frames = sorted({str(r[0]) for r in await cur.fetchall()})
    if frames:
        await summarise(conn, frames)
    return len(frames)


async def summarise(
    conn: AsyncConnection[Any], frame_ids: str | list[str], *, target: str | None = None
) -> None:
    """The outbox rows' state from their deliveries. Run after locking the outbox rows (so two
    endpoints recording at once each see the other's committed delivery)."""
    ids = [frame_ids] if isinstance(frame_ids, str) else frame_ids
    await conn.execute(
        "UPDATE outbox o SET state = a.state, attempts = a.attempts, last_error = a.last_error, "
        "target = COALESCE(%s, o.target), next_attempt_at = COALESCE(a.next_at, o.next_attempt_at), "
        "delivered_at = CASE WHEN a.state = 'delivered' THEN a.delivered_at ELSE o.delivered_at END "
        "FROM (SELECT frame_id, CASE WHEN bool_or(state = 'pending') THEN 'pending' "
        "  WHEN bool_or(state = 'dead') THEN 'dead' ELSE 'delivered' END AS state, "
        "  max(attempts) AS attempts, max(delivered_at) AS delivered_at, "
        "  min(next_attempt_at) FILTER (WHERE state = 'pending') AS next_at, "
        "  COALESCE(string_agg(endpoint || ': ' || last_error, '; ' ORDER BY endpoint) "
        "   FILTER (WHERE last_error <> ''), '') AS last_error "
        "  FROM deliveries WHERE frame_id = ANY(%s) GROUP BY frame_id) a "
        "WHERE o.frame_id = a.frame_id",
        (target, ids),
    )


# A claim is free when its lease ran out or when its owner stopped beating (a crashed dispatcher):
# a dead replica's stations are picked up within OWNER_STALE_S, far inside a line's reject window,
# not after the whole lease. Rows come from `ranked` (claimed_until, claim_token); %(s)s = stale s.
OWNER_STALE_S = 2.0
_CLAIM_FREE = (
    "(claimed_until IS NULL OR claimed_until < now() OR NOT EXISTS (SELECT 1 FROM dispatcher_heartbeats h"
    " WHERE h.owner = split_part(claim_token, ':', 1) AND h.seen_at > now() - make_interval(secs => %(s)s)))"
)


def claim_owner(token: str) -> str:
    """The dispatcher a claim token belongs to (tokens are "<owner>:<cycle>")."""
    return token.split(":", 1)[0]


async def heartbeat(conn: AsyncConnection[Any], *, owner: str, plant: str) -> None:
    """`owner` is alive: its claims hold until their lease ends."""
    await conn.execute(
        "INSERT INTO dispatcher_heartbeats (owner, plant) VALUES (%s, %s) "
        "ON CONFLICT (owner) DO UPDATE SET seen_at = now()",
        (owner, plant),
    )


async def forget_owner(conn: AsyncConnection[Any], owner: str) -> None:
    """A dispatcher that stops cleanly leaves no heartbeat behind; owners silent for a day go too."""
    await conn.execute(
        "DELETE FROM dispatcher_heartbeats WHERE owner = %s OR seen_at < now() - interval '1 day'", (owner,)
    )


@dataclass(frozen=True)
class Claimed:
    """A delivery claimed for one endpoint, with the message it carries."""

    endpoint: str
    attempts: int  # at this endpoint, before this one
    row: OutboxRow


async def claim_heads(
    conn: AsyncConnection[Any],
    *,
    endpoint: str,
    plant: str,
    token: str,
    queues: int,
    per_queue: int,
    lease_s: float,
) -> list[Claimed]:
    """For `endpoint`, claim in up to `queues` stations whose oldest pending delivery is due and
    unclaimed, that delivery and up to `per_queue - 1` that follow it, in seq order. A station
    whose head is waiting out a retry backoff, or is claimed by another dispatcher, is skipped
    entirely: its later messages wait (per-station order at each endpoint). Run in a transaction
    of its own and commit at once."""
    await conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_CLAIM_LOCK & 0x7FFFFFFF, endpoint))
    await heartbeat(conn, owner=claim_owner(token), plant=plant)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "WITH ranked AS ("
            " SELECT frame_id, line, station, next_attempt_at, claimed_until, claim_token,"
            "  row_number() OVER (PARTITION BY line, station ORDER BY seq) AS pos"
            " FROM deliveries WHERE state = 'pending' AND endpoint = %(e)s AND plant = %(p)s),"
            " ready AS ("
            " SELECT line, station FROM ranked WHERE pos = 1 AND next_attempt_at <= now()"
            f"  AND {_CLAIM_FREE} ORDER BY next_attempt_at LIMIT %(q)s),"
            " claimed AS ("
            " UPDATE deliveries d SET claim_token = %(t)s,"
            "  claimed_until = now() + make_interval(secs => %(l)s)"
            " FROM ranked r JOIN ready USING (line, station)"
            " WHERE d.endpoint = %(e)s AND d.frame_id = r.frame_id AND r.pos <= %(n)s"
            " RETURNING d.frame_id, d.attempts, d.seq)"
            " SELECT c.attempts AS delivery_attempts, o.* FROM claimed c JOIN outbox o USING (frame_id)"
            " ORDER BY c.seq",
            {
                "e": endpoint,
                "p": plant,
                "q": queues,
                "t": token,
                "l": lease_s,
                "n": per_queue,
                "s": OWNER_STALE_S,
            },
        )
        return [Claimed(endpoint, int(d.pop("delivery_attempts")), _row(d)) for d in await cur.fetchall()]


async def release(conn: AsyncConnection[Any], frame_ids: list[str], *, endpoint: str, token: str) -> None:
    """Give back claimed deliveries not attempted (an earlier message must retry first)."""
    await conn.execute(
        "UPDATE deliveries SET claim_token = '', claimed_until = NULL "
        "WHERE frame_id = ANY(%s) AND endpoint = %s AND claim_token = %s",
        (frame_ids, endpoint, token),
    )


@dataclass(frozen=True)
class Outcome:
    """One delivery attempt's result, to be recorded."""

    frame_id: str
    attempt: int
    key: str
    status_code: int | None
    error: str
    outcome: str  # delivered, retry, dead (what the adapter said, after the attempt budget)
    new_state: str  # delivered, dead, pending
    retry_in_s: float


async def record_deliveries(
    conn: AsyncConnection[Any], outcomes: list[Outcome], *, endpoint: str, token: str, target: str
) -> set[str]:
    """Log the attempts, move the deliveries (delivered, dead, or pending again after their
    backoff), release their claims and update the messages' summaries, in one transaction (the
    caller's). Returns the frames whose claim still held; for the others the claim was lost
    meanwhile (lease expired and another dispatcher took it, or a correction re-queued the
    message): their attempt is logged, the delivery left to its new owner."""
    if not outcomes:
        return set()
    frames = sorted({o.frame_id for o in outcomes})
    # A correction changing one of these messages waits until this is recorded (rows locked in
    # one order, so two recorders cannot deadlock).
    await conn.execute(
        "SELECT 1 FROM outbox WHERE frame_id = ANY(%s) ORDER BY frame_id FOR UPDATE", (frames,)
    )
    await conn.execute(
        "INSERT INTO delivery_attempts (frame_id, attempt, target, status_code, error, outcome, "
        "delivery_key) SELECT u.frame_id, u.attempt, %s, u.code, u.error, u.outcome, u.key "
        "FROM unnest(%s::text[], %s::int[], %s::int[], %s::text[], %s::text[], %s::text[]) WITH ORDINALITY "
        " AS u(frame_id, attempt, code, error, outcome, key, ord) ORDER BY u.ord",
        (
            endpoint,
            [o.frame_id for o in outcomes],
            [o.attempt for o in outcomes],
            [o.status_code for o in outcomes],
            [o.error for o in outcomes],
            [o.outcome for o in outcomes],
            [o.key for o in outcomes],
        ),
    )
    cur = await conn.execute(
        "UPDATE deliveries d SET state = u.state, attempts = u.attempt, last_error = u.error, "
        "status_code = u.code, next_attempt_at = now() + make_interval(secs => u.retry), "
        "delivered_at = CASE WHEN u.state = 'delivered' THEN now() ELSE d.delivered_at END, "
        "claim_token = '', claimed_until = NULL "
        "FROM unnest(%s::text[], %s::text[], %s::int[], %s::text[], %s::int[], %s::float8[]) "
        " AS u(frame_id, state, attempt, error, code, retry) "
        "WHERE d.frame_id = u.frame_id AND d.endpoint = %s AND d.claim_token = %s RETURNING d.frame_id",
        (
            [o.frame_id for o in outcomes],
            [o.new_state for o in outcomes],
            [o.attempt for o in outcomes],
            [o.error for o in outcomes],
            [o.status_code for o in outcomes],
            [o.retry_in_s for o in outcomes],
            endpoint,
            token,
        ),
    )
    held = {str(r[0]) for r in await cur.fetchall()}
    if held:
        await summarise(conn, sorted(held), target=target)
    return held


async def unsent(conn: AsyncConnection[Any], frame_id: str) -> bool:
    """True when no endpoint has been tried or is being tried with the frame's current message
    (it may be changed in place: nobody can have seen it)."""
    cur = await conn.execute(
        "SELECT NOT EXISTS (SELECT 1 FROM deliveries WHERE frame_id = %s "
        "AND (attempts > 0 OR state <> 'pending' OR claim_token <> ''))",
        (frame_id,),
    )
    row = await cur.fetchone()
    return bool(row and row[0])


async def endpoint_deliveries(conn: AsyncConnection[Any], frame_id: str) -> list[dict[str, Any]]:
    """Each endpoint's delivery of the frame's current message."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT endpoint, state, attempts, last_error, status_code, next_attempt_at, delivered_at "
            "FROM deliveries WHERE frame_id = %s ORDER BY endpoint",
            (frame_id,),
        )
        return list(await cur.fetchall())


async def get(conn: AsyncConnection[Any], frame_id: str) -> OutboxRow | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT * FROM outbox WHERE frame_id = %s", (frame_id,))
        d = await cur.fetchone()
    return _row(d) if d else None


async def reset(conn: AsyncConnection[Any], frame_id: str) -> bool:
    """Make a row pending again with a fresh attempt budget (operator-requested redelivery)."""
    cur = await conn.execute(
        "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = now(), last_error = '', "
        f"announced = FALSE, {_REQUEUE} "
        "WHERE frame_id = %s RETURNING frame_id",
        (frame_id,),
    )
    return await cur.fetchone() is not None


async def counts(conn: AsyncConnection[Any]) -> dict[str, int]:
    cur = await conn.execute("SELECT state, count(*) FROM outbox GROUP BY state")
    out = {"pending": 0, "delivered": 0, "dead": 0}
    out.update({str(k): int(v) for k, v in await cur.fetchall()})
    return out


async def next_due_in_s(conn: AsyncConnection[Any], *, endpoint: str, plant: str) -> float | None:
    """Seconds until some station's oldest pending delivery to `endpoint` may be tried (backoff or
    another dispatcher's claim over); None: nothing pending. Later messages wait for their head."""
    cur = await conn.execute(
        "SELECT EXTRACT(EPOCH FROM (min(GREATEST(next_attempt_at, CASE WHEN "
        f"{_CLAIM_FREE} THEN next_attempt_at ELSE claimed_until END))"
        " - now())) FROM (SELECT DISTINCT ON (line, station) next_attempt_at, claimed_until, claim_token"
        " FROM deliveries WHERE state = 'pending' AND endpoint = %(e)s AND plant = %(p)s"
        " ORDER BY line, station, seq) heads",
        {"e": endpoint, "p": plant, "s": OWNER_STALE_S},
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


async def mark_announced(conn: AsyncConnection[Any], frame_ids: list[str]) -> None:
    await conn.execute("UPDATE outbox SET announced = TRUE WHERE frame_id = ANY(%s)", (frame_ids,))


async def delivered_to(
    conn: AsyncConnection[Any], *, endpoint: str, plant: str, per_station: int
) -> list[tuple[str, dict[str, Any]]]:
    """(Idempotency-Key, payload) of the messages delivered to `endpoint`: each station's newest
    `per_station`, oldest first (what a restarted OPC UA server answers result queries from). A
    corrected part appears with its correction (the message it has now)."""
    cur = await conn.execute(
        "SELECT key, payload FROM (SELECT COALESCE(NULLIF(o.delivery_key, ''), o.frame_id) AS key,"
        " o.payload, d.seq, row_number() OVER (PARTITION BY d.line, d.station ORDER BY d.seq DESC) AS n"
        " FROM deliveries d JOIN outbox o USING (frame_id)"
        " WHERE d.endpoint = %s AND d.plant = %s AND d.state = 'delivered') r"
        " WHERE n <= %s ORDER BY seq",
        (endpoint, plant, per_station),
    )
    return [(str(key), dict(payload)) for key, payload in await cur.fetchall()]
