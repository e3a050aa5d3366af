"""AuditLog on real PostgreSQL: append/page/filter, append-only triggers, tampering, concurrent appends."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import psycopg
import pytest

from linesight.common.audit import GENESIS, AuditEntry, AuditLog
from linesight.common.db import Database
from linesight.common.identity import Grant, Principal

pytestmark = pytest.mark.integration

QA = Principal("u_qa", "Quinn", "user", (Grant.parse("qa_owner@plant1"),))
ENG = Principal("u_eng", "Eve", "user", (Grant.parse("engineer"),))


def promote(model: str, who: Principal = QA, role: str = "qa_owner") -> AuditEntry:
    return AuditEntry.by(
        who, role, "model.promote", "model", model,
        old_value={"stage": "shadow", "threshold": 0.5}, new_value={"stage": "active", "threshold": 1e20},
        reason="validated on line 1", client="10.1.2.3",
    )  # fmt: skip


async def test_append_page_filter_and_verify(db: Database) -> None:
    log = AuditLog(db)
    assert await log.head() is None and await log.verify() is None
    first = await log.append(promote("m1"))
    await log.append(promote("m2"))
    await log.append(
        AuditEntry.by(ENG, "engineer", "taxonomy.publish", "taxonomy", "v3", new_value={"classes": 7})
    )
    assert first.seq == 1 and first.prev_hash == GENESIS
    head = await log.head()
    assert head is not None and head.seq == 3

    records = await log.page()
    assert [r.seq for r in records] == [1, 2, 3]
    assert records[0] == first  # what was hashed is what is read back, timestamps included
    assert records[1].new() == {"stage": "active", "threshold": 1e20}  # no JSONB number rewriting
    assert [r.object_id for r in await log.page(actor="u_qa")] == ["m1", "m2"]
    assert [r.seq for r in await log.page(action="taxonomy.publish")] == [3]
    assert [r.seq for r in await log.page(object_kind="model", object_id="m2")] == [2]
    assert [r.seq for r in await log.page(after_seq=1, limit=1)] == [2]
    assert await log.page(since=head.at + timedelta(seconds=1)) == []
    assert [r.seq for r in await log.page(until=head.at)] == [1, 2]
    assert await log.verify(batch=2) is None


async def test_rows_cannot_be_updated_deleted_or_truncated(db: Database) -> None:
    log = AuditLog(db)
    await log.append(promote("m1"))
    for statement in (
        "UPDATE audit_trail SET reason = 'x'",
        "DELETE FROM audit_trail",
        "TRUNCATE audit_trail",
    ):
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            async with db.connection() as conn:
                await conn.execute(statement)
    assert len(await log.page()) == 1


async def test_direct_sql_edit_is_named_by_verify(db: Database) -> None:
    log = AuditLog(db)
    for i in range(5):
        await log.append(promote(f"m{i}"))
    async with db.connection() as conn:  # a superuser getting round the trigger
        await conn.execute("ALTER TABLE audit_trail DISABLE TRIGGER audit_trail_append_only")
        await conn.execute("UPDATE audit_trail SET actor_name = 'Mallory' WHERE seq = 3")
        await conn.execute("ALTER TABLE audit_trail ENABLE TRIGGER audit_trail_append_only")
    brk = await log.verify(batch=2)
    assert brk is not None and brk.seq == 3 and "changed" in brk.reason


async def test_deleted_row_is_named_by_verify(db: Database) -> None:
    log = AuditLog(db)
    for i in range(4):
        await log.append(promote(f"m{i}"))
    async with db.connection() as conn:
        await conn.execute("ALTER TABLE audit_trail DISABLE TRIGGER audit_trail_append_only")
        await conn.execute("DELETE FROM audit_trail WHERE seq = 2")
        await conn.execute("ALTER TABLE audit_trail ENABLE TRIGGER audit_trail_append_only")
    brk = await log.verify()
    assert brk is not None and brk.seq == 3 and "missing" in brk.reason


async def test_concurrent_appends_keep_one_chain(db: Database) -> None:
    log_a, log_b = AuditLog(db), AuditLog(db)  # two writers sharing the table, as two replicas would

    async def writer(log: AuditLog, name: str) -> None:
        for i in range(15):
            await log.append(promote(f"{name}{i}"))

    await asyncio.gather(writer(log_a, "a"), writer(log_b, "b"), writer(log_a, "c"))
    records = await log_a.page(limit=100)
    assert [r.seq for r in records] == list(range(1, 46))
    assert len({r.prev_hash for r in records}) == 45  # no record has two successors
    assert await log_b.verify() is None
