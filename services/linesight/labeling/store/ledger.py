"""Repository for the labeling schema; every function runs on a connection the caller owns,
so the use case decides the transaction boundary (ledger row + queue entry commit together).
Reads return the typed rows below."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from linesight.common.pb import events_pb2
from linesight.labeling.store.rows import fetch_all, fetch_one, returns_row

OPEN_STATES = ("open", "first_pass", "disputed")


@dataclass(frozen=True)
class _ResultColumns:
    """The ledger columns an inspection result fills (enum values as short lowercase names); the
    rows below read them with what each adds."""

    frame_id: str
    model_version: str
    event_id: str
    plant: str
    line: str
    station: str
    part_id: str
    verdict: str
    defect_class: str
    severity: str
    confidence: float
    anomaly_score: float
    disposition: str
    taxonomy_version: str
    review_reason: str
    error: str
    image_bucket: str
    image_key: str
    heatmap_bucket: str
    heatmap_key: str
    latency_ms: float
    shadow: bool
    captured_at: datetime | None


@dataclass(frozen=True)
class LedgerRow(_ResultColumns):
    """One inspection result as the ledger stores it, with the serialized result itself."""

    payload: bytes


# Every column a result writes, in LedgerRow's order (insert and read both follow it).
_LEDGER_COLUMNS = tuple(f.name for f in fields(LedgerRow))


@dataclass(frozen=True)
class ResultRow(_ResultColumns):
    """A ledger row as the results page lists it: no payload, with its review state if queued."""

    id: int
    recorded_at: datetime
    review_state: str | None
    review_queue: str | None


@dataclass(frozen=True)
class QueueItem:
    """An open review item with the result that put it there (None fields: no ledger row).

    `best_class` is the model's own top class (a defect class, or `good`) even when its verdict
    was `review`, so a reviewer sees what the model leaned towards.
    """

    frame_id: str
    queue: str
    reason: str
    priority: int
    state: str
    created_at: datetime
    plant: str | None
    line: str | None
    station: str | None
    part_id: str | None
    verdict: str | None
    defect_class: str | None
    best_class: str
    confidence: float | None
    image_bucket: str | None
    image_key: str | None
    heatmap_bucket: str | None
    heatmap_key: str | None
    model_version: str | None
    product: str
    assigned_to: str
    claimed_by: str
    claim_expires_at: datetime | None
    version: int


@dataclass(frozen=True)
class ReviewEntry:
    """A frame's place in the review workflow."""

    frame_id: str
    model_version: str
    queue: str
    reason: str
    priority: int
    state: str
    created_at: datetime
    updated_at: datetime
    product: str
    round: int
    assigned_to: str
    claimed_by: str
    claim_expires_at: datetime | None
    version: int
    final_label: str
    final_taxonomy: str


@dataclass(frozen=True)
class LatencyPercentiles:
    p50: float
    p99: float


@dataclass(frozen=True)
class LedgerStats:
    """Counts by verdict, class and disposition, open queue size and latency percentiles."""

    results: int
    verdicts: dict[str, int]
    classes: dict[str, int]
    dispositions: dict[str, int]
    verdicts_by_class: dict[str, int]  # the verdict, or the defect class for a classified defect
    review_queue: int
    latency_ms: LatencyPercentiles


def best_class(defect_class: str, payload: bytes | None) -> str:
    """The result's defect class, else the top of its class scores (scores are sorted, best first)."""
    if defect_class or not payload:
        return defect_class
    scores = events_pb2.InspectionResult.FromString(bytes(payload)).class_scores
    return scores[0].defect_class if scores else ""


async def insert_result(conn: AsyncConnection[Any], row: LedgerRow) -> bool:
    """Append a result; False when (frame_id, model_version) is already recorded (a redelivery)."""
    cols = ", ".join(_LEDGER_COLUMNS)
    params = ", ".join(["%s"] * len(_LEDGER_COLUMNS))
    return await returns_row(
        conn,
        f"INSERT INTO ledger ({cols}) VALUES ({params}) "
        "ON CONFLICT (frame_id, model_version) DO NOTHING RETURNING id",
        tuple(getattr(row, c) for c in _LEDGER_COLUMNS),
    )


async def enqueue_review(
    conn: AsyncConnection[Any],
    frame_id: str,
    model_version: str,
    queue: str,
    reason: str,
    priority: int,
    product: str = "",
    state: str = "open",
) -> bool:
    """Put a frame on a review queue; False when it is already queued (idempotent)."""
    return await returns_row(
        conn,
        "INSERT INTO review_queue (frame_id, model_version, queue, reason, priority, product, state) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (frame_id) DO NOTHING RETURNING frame_id",
        (frame_id, model_version, queue, reason, priority, product, state),
    )


async def set_review_state(
    conn: AsyncConnection[Any], frame_id: str, state: str, queue: str, *, assigned_to: str = ""
) -> None:
    """Move a frame on; the claim ends with the step its holder just finished."""
    await conn.execute(
        "UPDATE review_queue SET state = %s, queue = %s, assigned_to = %s, claimed_by = '', "
        "claim_expires_at = NULL, version = version + 1, updated_at = now() WHERE frame_id = %s",
        (state, queue, assigned_to, frame_id),
    )


async def latest_result(conn: AsyncConnection[Any], frame_id: str) -> LedgerRow | None:
    """The most recent ledger row for a frame (a frame may be inspected by several model versions)."""
    return await fetch_one(
        conn,
        LedgerRow,
        f"SELECT {', '.join(_LEDGER_COLUMNS)} FROM ledger "
        "WHERE frame_id = %s AND NOT shadow ORDER BY id DESC LIMIT 1",
        (frame_id,),
    )


async def list_results(
    conn: AsyncConnection[Any], *, limit: int = 100, verdict: str = "", station: str = ""
) -> list[ResultRow]:
    """Newest results first, joined with their review state (payload left out: it is large)."""
    where = ["NOT l.shadow"]
    params: list[Any] = []
    if verdict:
        where.append("l.verdict = %s")
        params.append(verdict)
    if station:
        where.append("l.station = %s")
        params.append(station)
    params.append(limit)
    cols = ", ".join(f"l.{c}" for c in _LEDGER_COLUMNS if c != "payload")
    return await fetch_all(
        conn,
        ResultRow,
        f"SELECT l.id, {cols}, l.recorded_at, r.state AS review_state, r.queue AS review_queue "
        "FROM ledger l LEFT JOIN review_queue r ON r.frame_id = l.frame_id "
        f"WHERE {' AND '.join(where)} ORDER BY l.id DESC LIMIT %s",
        params,
    )


async def list_review_queue(
    conn: AsyncConnection[Any], *, queue: str = "", frame_id: str = "", limit: int = 100
) -> list[QueueItem]:
    """Open review items, highest priority and oldest first, with the result that put them there."""
    params: list[Any] = [list(OPEN_STATES)]
    extra = ""
    if queue:
        extra = " AND r.queue = %s"
        params.append(queue)
    if frame_id:
        extra += " AND r.frame_id = %s"
        params.append(frame_id)
    params.append(limit)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT r.frame_id, r.queue, r.reason, r.priority, r.state, r.created_at, "
            "l.plant, l.line, l.station, l.part_id, l.verdict, l.defect_class, l.confidence, "
            "l.image_bucket, l.image_key, l.heatmap_bucket, l.heatmap_key, l.model_version, l.payload, "
            "r.product, r.assigned_to, "
            "CASE WHEN r.claim_expires_at > now() THEN r.claimed_by ELSE '' END AS claimed_by, "
            "CASE WHEN r.claim_expires_at > now() THEN r.claim_expires_at END AS claim_expires_at, "
            "r.version "
            "FROM review_queue r LEFT JOIN LATERAL ("
            "  SELECT * FROM ledger x WHERE x.frame_id = r.frame_id AND NOT x.shadow "
            "  ORDER BY x.id DESC LIMIT 1"
            ") l ON TRUE "
            f"WHERE r.state = ANY(%s){extra} ORDER BY r.priority DESC, r.created_at LIMIT %s",
            params,
        )
        rows = await cur.fetchall()
    items = []
    for d in rows:
        payload = d.pop("payload")
        items.append(QueueItem(**d, best_class=best_class(d["defect_class"] or "", payload)))
    return items


async def stats(conn: AsyncConnection[Any]) -> LedgerStats:
    """Counts by verdict, class (empty class left out) and disposition, queue size, latency."""

    async def grouped(column: str) -> dict[str, int]:
        cur = await conn.execute(f"SELECT {column}, count(*) FROM ledger WHERE NOT shadow GROUP BY 1")
        return {str(k): int(v) for k, v in await cur.fetchall()}

    cur = await conn.execute(
        "SELECT count(*), "
        "COALESCE(percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms), 0), "
        "COALESCE(percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms), 0) "
        "FROM ledger WHERE NOT shadow"
    )
    total, p50, p99 = await cur.fetchone() or (0, 0.0, 0.0)
    cur = await conn.execute("SELECT count(*) FROM review_queue WHERE state = ANY(%s)", (list(OPEN_STATES),))
    queue_row = await cur.fetchone()
    cur = await conn.execute(
        "SELECT CASE WHEN verdict = 'defect' AND defect_class <> '' THEN defect_class ELSE verdict END, "
        "count(*) FROM ledger WHERE NOT shadow GROUP BY 1"
    )
    by_outcome = {str(k): int(v) for k, v in await cur.fetchall()}
    return LedgerStats(
        results=int(total),
        verdicts=await grouped("verdict"),
        classes={k: v for k, v in (await grouped("defect_class")).items() if k},
        dispositions=await grouped("disposition"),
        verdicts_by_class=by_outcome,
        review_queue=int(queue_row[0]) if queue_row else 0,
        latency_ms=LatencyPercentiles(p50=float(p50), p99=float(p99)),
    )
