"""Repository for the label workflow: frame labels, claims on queue items, taxonomies per product,
shared agreement samples, and audit records written in the caller's transaction.

Like ledger.py, every function runs on a connection the caller owns, so a label, the queue move
and its audit record commit together or not at all.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from psycopg import AsyncConnection

from linesight.common.audit import AuditEntry, AuditLog, AuditRecord
from linesight.common.db import Database
from linesight.labeling.store.ledger import OPEN_STATES, ReviewEntry
from linesight.labeling.store.rows import fetch_all, fetch_one, returns_row

FINAL_STATES = ("confirmed", "agreed", "resolved")


@dataclass(frozen=True)
class _LabelFields:
    """What a label says and who said it, in which round; both label rows below start with it."""

    frame_id: str
    round: int
    kind: str
    label: str
    severity: str
    boxes: list[dict[str, Any]]
    polygons: list[dict[str, Any]]
    ambiguous: bool
    ambiguity_reason: str
    comment: str
    author: str
    author_name: str
    role: str
    taxonomy_version: str


@dataclass(frozen=True)
class NewLabel(_LabelFields):
    """What a use case writes; the store adds id, version and times."""

    accepted: bool | None = None
    reason: str = ""
    provenance: dict[str, Any] | None = None


@dataclass(frozen=True)
class FrameLabel(_LabelFields):
    """One person's label, review or decision on a frame in one round (`version`: optimistic edits)."""

    id: int
    accepted: bool | None
    reason: str
    provenance: dict[str, Any] | None
    version: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class TaxonomyRow:
    product: str
    version: str
    previous_version: str
    classes: list[str]
    changed_classes: list[str]
    event_id: str


@dataclass(frozen=True)
class QueueDepth:
    queue: str
    depth: int
    oldest: datetime | None
    claimed: int


@dataclass(frozen=True)
class ReviewOutcome:
    """A second pass with what it reviewed: the rows disagreement is measured on."""

    accepted: bool
    first_label: str
    corrected_label: str
    station: str
    part_id: str
    reviewer: str
    frame_id: str = ""
    labeler: str = ""  # who gave the first pass (its author's name)


@dataclass(frozen=True)
class Sample:
    id: str
    name: str
    product: str
    frames: list[str]
    created_by: str
    created_at: datetime


@dataclass(frozen=True)
class SampleLabel:
    frame_id: str
    rater: str
    rater_name: str
    label: str


_LABEL_COLUMNS = (
    "frame_id", "round", "kind", "label", "severity", "boxes", "polygons", "ambiguous",
    "ambiguity_reason", "comment", "author", "author_name", "role", "taxonomy_version", "accepted",
    "reason", "provenance",
)  # fmt: skip
_JSON_COLUMNS = ("boxes", "polygons", "provenance")


def _param(label: NewLabel, column: str) -> Any:
    value = getattr(label, column)
    return json.dumps(value) if column in _JSON_COLUMNS and value is not None else value


async def insert_label(conn: AsyncConnection[Any], label: NewLabel) -> FrameLabel:
    placeholders = ", ".join("%s::jsonb" if c in _JSON_COLUMNS else "%s" for c in _LABEL_COLUMNS)
    row = await fetch_one(
        conn,
        FrameLabel,
        f"INSERT INTO frame_labels ({', '.join(_LABEL_COLUMNS)}) VALUES ({placeholders}) RETURNING *",
        tuple(_param(label, c) for c in _LABEL_COLUMNS),
    )
    if row is None:  # pragma: no cover - INSERT ... RETURNING always returns the row
        raise RuntimeError("insert into frame_labels returned nothing")
    return row


async def labels_for(
    conn: AsyncConnection[Any], frame_id: str, round_no: int | None = None
) -> list[FrameLabel]:
    """A frame's labels in order, of one round (None: all rounds)."""
    if round_no is None:
        return await fetch_all(
            conn, FrameLabel, "SELECT * FROM frame_labels WHERE frame_id = %s ORDER BY id", (frame_id,)
        )
    return await fetch_all(
        conn,
        FrameLabel,
        "SELECT * FROM frame_labels WHERE frame_id = %s AND round = %s ORDER BY id",
        (frame_id, round_no),
    )


async def get_label(conn: AsyncConnection[Any], label_id: int) -> FrameLabel | None:
    return await fetch_one(conn, FrameLabel, "SELECT * FROM frame_labels WHERE id = %s", (label_id,))


async def update_label(
    conn: AsyncConnection[Any], label_id: int, expected_version: int, label: NewLabel
) -> FrameLabel | None:
    """Replace a label's content if its version is still `expected_version`; None when another
    edit got there first (the caller answers 409 and nothing is written)."""
    columns = ("label", "severity", "boxes", "polygons", "ambiguous", "ambiguity_reason", "comment")
    sets = ", ".join(f"{c} = %s::jsonb" if c in _JSON_COLUMNS else f"{c} = %s" for c in columns)
    return await fetch_one(
        conn,
        FrameLabel,
        f"UPDATE frame_labels SET {sets}, version = version + 1, updated_at = now() "
        "WHERE id = %s AND version = %s RETURNING *",
        (*(_param(label, c) for c in columns), label_id, expected_version),
    )


# ---- queue entries and claims -------------------------------------------------------------------


async def lock_entry(conn: AsyncConnection[Any], frame_id: str) -> ReviewEntry | None:
    """The frame's queue entry, row-locked so concurrent steps on one frame serialise."""
    return await fetch_one(
        conn, ReviewEntry, "SELECT * FROM review_queue WHERE frame_id = %s FOR UPDATE", (frame_id,)
    )


async def set_claim(conn: AsyncConnection[Any], frame_id: str, who: str, lease_s: float) -> ReviewEntry:
    row = await fetch_one(
        conn,
        ReviewEntry,
        "UPDATE review_queue SET claimed_by = %s, claim_expires_at = now() + make_interval(secs => %s) "
        "WHERE frame_id = %s RETURNING *",
        (who, lease_s, frame_id),
    )
    if row is None:
        raise KeyError(frame_id)
    return row


async def clear_claim(conn: AsyncConnection[Any], frame_id: str) -> None:
    await conn.execute(
        "UPDATE review_queue SET claimed_by = '', claim_expires_at = NULL WHERE frame_id = %s", (frame_id,)
    )


async def next_claimable(
    conn: AsyncConnection[Any], queue: str, who: str, states: Sequence[str], products: Sequence[str] | None
) -> str | None:
    """The highest-priority, oldest item of `queue` in one of `states` that nobody holds (or whose
    lease ran out), assigned to `who` or to nobody, whose current round `who` has not labeled;
    row-locked (SKIP LOCKED) so two claimers never get the same frame. `products` None = any."""
    cur = await conn.execute(
        "SELECT r.frame_id FROM review_queue r WHERE r.queue = %s AND r.state = ANY(%s) "
        "AND (r.claimed_by = '' OR r.claim_expires_at <= now() OR r.claimed_by = %s) "
        "AND r.assigned_to IN ('', %s) AND (%s::text[] IS NULL OR r.product = ANY(%s::text[])) "
        "AND NOT EXISTS (SELECT 1 FROM frame_labels f WHERE f.frame_id = r.frame_id "
        "  AND f.round = r.round AND f.author = %s) "
        "ORDER BY r.priority DESC, r.created_at LIMIT 1 FOR UPDATE SKIP LOCKED",
        (queue, list(states), who, who, products, products, who),
    )
    row = await cur.fetchone()
    return str(row[0]) if row else None


async def assign(conn: AsyncConnection[Any], frame_id: str, assignee: str) -> None:
    await conn.execute(
        "UPDATE review_queue SET assigned_to = %s, version = version + 1, updated_at = now() "
        "WHERE frame_id = %s",
        (assignee, frame_id),
    )


async def confirm(conn: AsyncConnection[Any], frame_id: str, label: str, taxonomy_version: str) -> None:
    await conn.execute(
        "UPDATE review_queue SET state = 'confirmed', final_label = %s, final_taxonomy = %s, "
        "claimed_by = '', claim_expires_at = NULL, assigned_to = '', version = version + 1, "
        "updated_at = now() WHERE frame_id = %s",
        (label, taxonomy_version, frame_id),
    )


async def queue_depths(conn: AsyncConnection[Any]) -> list[QueueDepth]:
    cur = await conn.execute(
        "SELECT queue, count(*), min(created_at), "
        "count(*) FILTER (WHERE claimed_by <> '' AND claim_expires_at > now()) "
        "FROM review_queue WHERE state = ANY(%s) GROUP BY queue",
        (list(OPEN_STATES),),
    )
    return [QueueDepth(str(q), int(d), o, int(c)) for q, d, o, c in await cur.fetchall()]


async def queue_for_relabel(
    conn: AsyncConnection[Any], product: str, classes: Sequence[str], version: str
) -> list[ReviewEntry]:
    """Confirmed frames of `product` whose label is one of `classes` and was made under another
    taxonomy version: a new round on the relabel queue."""
    return await fetch_all(
        conn,
        ReviewEntry,
        "UPDATE review_queue SET queue = 'relabel', state = 'open', round = round + 1, "
        "reason = 'TAXONOMY_CHANGED', claimed_by = '', claim_expires_at = NULL, assigned_to = '', "
        "version = version + 1, updated_at = now(), created_at = now() "
        "WHERE product = %s AND state = ANY(%s) AND final_label = ANY(%s) AND final_taxonomy <> %s "
        "RETURNING *",
        (product, list(FINAL_STATES), list(classes), version),
    )


async def review_outcomes(conn: AsyncConnection[Any]) -> list[ReviewOutcome]:
    """Every second pass with the first-pass label it judged and where the frame came from."""
    return await fetch_all(
        conn,
        ReviewOutcome,
        "SELECT r.accepted, first.label AS first_label, "
        "CASE WHEN r.accepted THEN first.label ELSE r.label END AS corrected_label, "
        "coalesce(led.station, '') AS station, coalesce(led.part_id, '') AS part_id, "
        "r.author_name AS reviewer, r.frame_id, first.author_name AS labeler "
        "FROM frame_labels r JOIN LATERAL (SELECT label, author_name FROM frame_labels x "
        "  WHERE x.frame_id = r.frame_id AND x.round = r.round AND x.kind IN ('label', 'override') "
        "  ORDER BY x.id LIMIT 1) first ON TRUE "
        "LEFT JOIN LATERAL (SELECT station, part_id FROM ledger l WHERE l.frame_id = r.frame_id "
        "  AND NOT l.shadow ORDER BY l.id DESC LIMIT 1) led ON TRUE "
        "WHERE r.kind = 'review' AND r.accepted IS NOT NULL",
    )


# ---- taxonomies ----------------------------------------------------------------------------------


async def put_taxonomy(conn: AsyncConnection[Any], row: TaxonomyRow) -> None:
    """Keep `row` as the product's latest taxonomy (a redelivery of the same version changes nothing)."""
    await conn.execute(
        "INSERT INTO taxonomies (product, version, previous_version, classes, changed_classes, event_id) "
        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (product) DO UPDATE SET version = EXCLUDED.version, "
        "previous_version = EXCLUDED.previous_version, classes = EXCLUDED.classes, "
        "changed_classes = EXCLUDED.changed_classes, event_id = EXCLUDED.event_id, received_at = now() "
        "WHERE taxonomies.version <> EXCLUDED.version",
        (row.product, row.version, row.previous_version, row.classes, row.changed_classes, row.event_id),
    )


async def get_taxonomy(conn: AsyncConnection[Any], product: str) -> TaxonomyRow | None:
    return await fetch_one(
        conn,
        TaxonomyRow,
        "SELECT product, version, previous_version, classes, changed_classes, event_id "
        "FROM taxonomies WHERE product = %s",
        (product,),
    )


# ---- shared samples ------------------------------------------------------------------------------


async def insert_sample(conn: AsyncConnection[Any], sample: Sample) -> None:
    await conn.execute(
        "INSERT INTO samples (id, name, product, frames, created_by) VALUES (%s, %s, %s, %s, %s)",
        (sample.id, sample.name, sample.product, sample.frames, sample.created_by),
    )


async def get_sample(conn: AsyncConnection[Any], sample_id: str) -> Sample | None:
    return await fetch_one(conn, Sample, "SELECT * FROM samples WHERE id = %s", (sample_id,))


async def add_sample_label(conn: AsyncConnection[Any], sample_id: str, label: SampleLabel) -> bool:
    """False when this rater already labeled this frame of the sample (labels are independent: no edits)."""
    return await returns_row(
        conn,
        "INSERT INTO sample_labels (sample_id, frame_id, rater, rater_name, label) "
        "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING rater",
        (sample_id, label.frame_id, label.rater, label.rater_name, label.label),
    )


async def sample_labels(conn: AsyncConnection[Any], sample_id: str) -> list[SampleLabel]:
    return await fetch_all(
        conn,
        SampleLabel,
        "SELECT frame_id, rater, rater_name, label FROM sample_labels WHERE sample_id = %s "
        "ORDER BY frame_id, rater",
        (sample_id,),
    )


async def existing_frames(conn: AsyncConnection[Any], frame_ids: Sequence[str]) -> set[str]:
    cur = await conn.execute(
        "SELECT DISTINCT frame_id FROM ledger WHERE frame_id = ANY(%s) AND NOT shadow", (list(frame_ids),)
    )
    return {str(r[0]) for r in await cur.fetchall()}


# ---- audit ---------------------------------------------------------------------------------------


class _OnConnection:
    """A Database look-alike that hands AuditLog the caller's connection, so the audit record is
    written in the same transaction as the change it records (both commit, or neither)."""

    def __init__(self, conn: AsyncConnection[Any]) -> None:
        self._conn = conn

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        yield self._conn


async def audit(conn: AsyncConnection[Any], entry: AuditEntry) -> AuditRecord:
    """Append `entry` to the hash-chained trail inside the caller's transaction; the trail's lock is
    held until that commits, so append it last."""
    return await AuditLog(cast(Database, _OnConnection(conn))).append(entry)
