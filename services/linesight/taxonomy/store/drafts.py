"""Repository for taxonomy drafts (editable until approved); the caller owns the transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

DRAFT = "draft"
IN_REVIEW = "in_review"


@dataclass(frozen=True)
class DraftRow:
    product: str
    version: str
    yaml: str
    state: str
    author: str
    submitted_by: str = ""
    review_comment: str = ""
    migration_notes: str = ""
    base_version: str = ""
    updated_at: datetime | None = None


def _row(d: dict[str, Any]) -> DraftRow:
    return DraftRow(
        product=d["product"], version=d["version"], yaml=d["yaml"], state=d["state"], author=d["author"],
        submitted_by=d["submitted_by"], review_comment=d["review_comment"],
        migration_notes=d["migration_notes"], base_version=d["base_version"], updated_at=d["updated_at"],
    )  # fmt: skip


async def get(
    conn: AsyncConnection[Any], product: str, version: str, *, lock: bool = False
) -> DraftRow | None:
    """`lock`: hold the row until the transaction ends, so a state change cannot race another."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT * FROM taxonomy_drafts WHERE product = %s AND version = %s"
            + (" FOR UPDATE" if lock else ""),
            (product, version),
        )
        d = await cur.fetchone()
    return _row(d) if d else None


async def list_for(conn: AsyncConnection[Any], product: str) -> list[DraftRow]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT * FROM taxonomy_drafts WHERE product = %s ORDER BY created_at", (product,))
        return [_row(d) for d in await cur.fetchall()]


async def insert(conn: AsyncConnection[Any], row: DraftRow) -> bool:
    """False when a draft of that (product, version) already exists."""
    cur = await conn.execute(
        "INSERT INTO taxonomy_drafts (product, version, yaml, state, author, migration_notes, base_version) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (product, version) DO NOTHING RETURNING 1",
        (row.product, row.version, row.yaml, row.state, row.author, row.migration_notes, row.base_version),
    )
    return await cur.fetchone() is not None


async def update(conn: AsyncConnection[Any], row: DraftRow) -> None:
    await conn.execute(
        "UPDATE taxonomy_drafts SET yaml = %s, state = %s, submitted_by = %s, review_comment = %s, "
        "migration_notes = %s, base_version = %s, updated_at = now() WHERE product = %s AND version = %s",
        (row.yaml, row.state, row.submitted_by, row.review_comment, row.migration_notes, row.base_version,
         row.product, row.version),
    )  # fmt: skip


async def delete(conn: AsyncConnection[Any], product: str, version: str) -> None:
    await conn.execute("DELETE FROM taxonomy_drafts WHERE product = %s AND version = %s", (product, version))
