"""Append-only, tamper-evident audit trail: who did what to which object, when, from where, and why.

Each record's hash covers its content and the previous record's hash (a chain from GENESIS), so
editing or deleting a row in the database breaks the chain at that row and `verify` names it.
Appends take a table lock, so concurrent writers queue instead of forking the chain. Dropping the
newest rows is not detectable from the chain alone; export `head()` to somewhere else (the MES, a
log) when that matters.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from psycopg import sql
from psycopg.rows import dict_row

from linesight.common.db import Database
from linesight.common.identity.model import Principal

GENESIS = "0" * 64
AUDIT_MIGRATIONS = Path(__file__).parent / "identity" / "migrations" / "audit"
_COLUMNS = (
    "seq, at, actor, actor_name, role, action, object_kind, object_id, "
    "old_value, new_value, reason, client, prev_hash, hash"
)


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 text; NaN/Infinity refused (they are not JSON)."""
    _check_finite(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _check_finite(value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"audit values must be finite numbers, got {value!r}")
    if isinstance(value, dict):
        for v in value.values():
            _check_finite(v)
    elif isinstance(value, list | tuple):
        for v in value:
            _check_finite(v)


@dataclass(frozen=True)
class AuditEntry:
    """What a caller records. `actor`/`role` come from the authenticated Principal, never the request."""

    actor: str
    actor_name: str
    role: str
    action: str
    object_kind: str
    object_id: str
    old_value: Any = None
    new_value: Any = None
    reason: str = ""
    client: str = ""

    @classmethod
    def by(
        cls,
        principal: Principal,
        role: str,
        action: str,
        object_kind: str,
        object_id: str,
        *,
        old_value: Any = None,
        new_value: Any = None,
        reason: str = "",
        client: str = "",
    ) -> AuditEntry:
        if role not in {g.role for g in principal.grants}:
            raise ValueError(
                f"{principal.name} does not hold role {role!r}; record the role that authorised it"
            )
        return cls(
            principal.subject, principal.name, role, action, object_kind, object_id,
            old_value, new_value, reason, client,
        )  # fmt: skip


@dataclass(frozen=True)
class AuditRecord:
    """A stored entry: position in the chain, time, the canonical JSON of the values, and the hashes."""

    seq: int
    at: datetime
    actor: str
    actor_name: str
    role: str
    action: str
    object_kind: str
    object_id: str
    old_value: str | None  # canonical JSON text as hashed
    new_value: str | None
    reason: str
    client: str
    prev_hash: str
    hash: str = field(default="")

    def content(self) -> dict[str, Any]:
        """Everything the hash covers (all fields but `hash`), timestamps as UTC ISO-8601 microseconds."""
        data = asdict(self)
        del data["hash"]
        data["at"] = self.at.astimezone(UTC).isoformat(timespec="microseconds")
        return data

    def old(self) -> Any:
        return None if self.old_value is None else json.loads(self.old_value)

    def new(self) -> Any:
        return None if self.new_value is None else json.loads(self.new_value)


def chain_hash(prev_hash: str, record: AuditRecord) -> str:
    """sha256 over the previous hash and the record's canonical JSON (which also contains prev_hash)."""
    if record.prev_hash != prev_hash:
        raise ValueError("record.prev_hash differs from the prev_hash it is chained to")
    return hashlib.sha256(f"{prev_hash}\n{canonical_json(record.content())}".encode()).hexdigest()


def seal(entry: AuditEntry, *, seq: int, prev_hash: str, at: datetime) -> AuditRecord:
    """The record for `entry` at position `seq` after `prev_hash`, with its hash."""
    record = AuditRecord(
        seq=seq,
        at=at.astimezone(UTC),
        actor=entry.actor,
        actor_name=entry.actor_name,
        role=entry.role,
        action=entry.action,
        object_kind=entry.object_kind,
        object_id=entry.object_id,
        old_value=None if entry.old_value is None else canonical_json(entry.old_value),
        new_value=None if entry.new_value is None else canonical_json(entry.new_value),
        reason=entry.reason,
        client=entry.client,
        prev_hash=prev_hash,
    )
    return AuditRecord(**{**asdict(record), "hash": chain_hash(prev_hash, record)})


@dataclass(frozen=True)
class ChainBreak:
    """The first record that does not fit the chain, and how."""

    seq: int
    reason: str


class ChainVerifier:
    """Checks records in order, batch by batch (so a long trail need not fit in memory)."""

    def __init__(self) -> None:
        self.prev_hash = GENESIS
        self.next_seq = 1

    def feed(self, records: Sequence[AuditRecord]) -> ChainBreak | None:
        for r in records:
            if r.seq != self.next_seq:
                return ChainBreak(r.seq, f"expected record {self.next_seq}, found {r.seq}: records missing")
            if r.prev_hash != self.prev_hash:
                return ChainBreak(
                    r.seq, "prev_hash does not match the previous record's hash: a record before it changed"
                )
            if chain_hash(self.prev_hash, r) != r.hash:
                return ChainBreak(r.seq, "content does not match its hash: this record was changed")
            self.prev_hash = r.hash
            self.next_seq += 1
        return None


def verify(records: Sequence[AuditRecord]) -> ChainBreak | None:
    """None when `records` (from seq 1, in order) form an intact chain, else the first break."""
    return ChainVerifier().feed(records)


class AuditLog:
    """The `audit_trail` table in a service's schema (apply AUDIT_MIGRATIONS there first)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def append(self, entry: AuditEntry) -> AuditRecord:
        """Add `entry` to the end of the chain; concurrent appends queue on the table lock."""
        async with self._db.connection() as conn:
            # SHARE ROW EXCLUSIVE conflicts with itself (one appender at a time) but not with readers.
            await conn.execute("LOCK TABLE audit_trail IN SHARE ROW EXCLUSIVE MODE")
            cur = await conn.execute(
                "SELECT clock_timestamp(), last.seq, last.hash FROM (SELECT 1) AS one LEFT JOIN LATERAL "
                "(SELECT seq, hash FROM audit_trail ORDER BY seq DESC LIMIT 1) AS last ON TRUE"
            )
            row = await cur.fetchone()
            if row is None:  # pragma: no cover - the query always returns one row
                raise RuntimeError("audit_trail head query returned nothing")
            now, last_seq, last_hash = row
            seq, prev = (last_seq + 1, str(last_hash)) if last_seq is not None else (1, GENESIS)
            record = seal(entry, seq=seq, prev_hash=prev, at=now)
            await conn.execute(
                f"INSERT INTO audit_trail ({_COLUMNS}) VALUES ({', '.join(['%s'] * 14)})",
                (
                    record.seq, record.at, record.actor, record.actor_name, record.role, record.action,
                    record.object_kind, record.object_id, record.old_value, record.new_value,
                    record.reason, record.client, record.prev_hash, record.hash,
                ),
            )  # fmt: skip
        return record

    async def head(self) -> AuditRecord | None:
        """The newest record (its hash anchors everything before it)."""
        page = await self._select(sql.SQL("TRUE"), [], order_desc=True, limit=1)
        return page[0] if page else None

    async def page(
        self,
        *,
        after_seq: int = 0,
        limit: int = 100,
        actor: str | None = None,
        action: str | None = None,
        object_kind: str | None = None,
        object_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[AuditRecord]:
        """Records with seq > after_seq, oldest first, matching every given filter (`until` exclusive)."""
        if not 1 <= limit <= 10_000:
            raise ValueError(f"limit must be 1..10000, got {limit}")
        conds: list[sql.Composable] = [sql.SQL("seq > %s")]
        args: list[Any] = [after_seq]
        for column, value in (
            ("actor", actor), ("action", action), ("object_kind", object_kind), ("object_id", object_id)
        ):  # fmt: skip
            if value is not None:
                conds.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
                args.append(value)
        if since is not None:
            conds.append(sql.SQL("at >= %s"))
            args.append(since)
        if until is not None:
            conds.append(sql.SQL("at < %s"))
            args.append(until)
        return await self._select(sql.SQL(" AND ").join(conds), args, order_desc=False, limit=limit)

    async def records(self, batch: int = 1000) -> AsyncIterator[AuditRecord]:
        """Every record in chain order, fetched `batch` at a time."""
        after = 0
        while True:
            page = await self.page(after_seq=after, limit=batch)
            for r in page:
                yield r
            if len(page) < batch:
                return
            after = page[-1].seq

    async def verify(self, batch: int = 1000) -> ChainBreak | None:
        """Walk the whole trail; None when intact, else the first record that breaks the chain."""
        checker = ChainVerifier()
        buf: list[AuditRecord] = []
        async for r in self.records(batch):
            buf.append(r)
            if len(buf) >= batch:
                if brk := checker.feed(buf):
                    return brk
                buf.clear()
        return checker.feed(buf)

    async def _select(
        self, where: sql.Composable, args: list[Any], *, order_desc: bool, limit: int
    ) -> list[AuditRecord]:
        query = sql.SQL("SELECT {} FROM audit_trail WHERE {} ORDER BY seq {} LIMIT %s").format(
            sql.SQL(_COLUMNS), where, sql.SQL("DESC" if order_desc else "ASC")
        )
        async with self._db.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(query, [*args, limit])
            rows = await cur.fetchall()
        return [AuditRecord(**row) for row in rows]
