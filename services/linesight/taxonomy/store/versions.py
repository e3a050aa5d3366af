"""Repository for taxonomy versions; the caller owns the connection and transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row


@dataclass(frozen=True)
class VersionRow:
    product: str
    version: str
    yaml: str
    sha256: str
    approved_by: str
    previous_version: str = ""
    changed_classes: tuple[str, ...] = ()
    document_bucket: str = ""
    document_key: str = ""
    published_at: datetime | None = None
    author: str = ""
    migration_notes: str = ""
    added_classes: tuple[str, ...] = ()
    removed_classes: tuple[str, ...] = ()
    redefined_classes: tuple[str, ...] = ()
    rule_changed_classes: tuple[str, ...] = ()


def _row(d: dict[str, Any]) -> VersionRow:
    return VersionRow(
        product=d["product"], version=d["version"], yaml=d["yaml"], sha256=d["sha256"],
        approved_by=d["approved_by"], previous_version=d["previous_version"],
        changed_classes=tuple(d["changed_classes"] or ()), document_bucket=d["document_bucket"],
        document_key=d["document_key"], published_at=d["published_at"], author=d["author"],
        migration_notes=d["migration_notes"], added_classes=tuple(d["added_classes"] or ()),
        removed_classes=tuple(d["removed_classes"] or ()),
        redefined_classes=tuple(d["redefined_classes"] or ()),
        rule_changed_classes=tuple(d["rule_changed_classes"] or ()),
    )  # fmt: skip


async def get(conn: AsyncConnection[Any], product: str, version: str = "") -> VersionRow | None:
    """A version, or the latest published one when `version` is empty."""
    async with conn.cursor(row_factory=dict_row) as cur:
        if version:
            await cur.execute(
                "SELECT * FROM taxonomy_versions WHERE product = %s AND version = %s", (product, version)
            )
        else:
            await cur.execute(
                "SELECT * FROM taxonomy_versions WHERE product = %s ORDER BY seq DESC LIMIT 1", (product,)
            )
        d = await cur.fetchone()
    return _row(d) if d else None


async def insert(conn: AsyncConnection[Any], row: VersionRow) -> bool:
    """Add a version; False when (product, version) already exists (the caller compares content)."""
    cur = await conn.execute(
        "INSERT INTO taxonomy_versions (product, version, yaml, sha256, approved_by, previous_version, "
        "changed_classes, document_bucket, document_key, author, migration_notes, added_classes, "
        "removed_classes, redefined_classes, rule_changed_classes) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (product, version) DO NOTHING RETURNING seq",
        (row.product, row.version, row.yaml, row.sha256, row.approved_by, row.previous_version,
         list(row.changed_classes), row.document_bucket, row.document_key, row.author,
         row.migration_notes, list(row.added_classes), list(row.removed_classes),
         list(row.redefined_classes), list(row.rule_changed_classes)),
    )  # fmt: skip
    return await cur.fetchone() is not None


async def list_versions(conn: AsyncConnection[Any], product: str) -> list[str]:
    cur = await conn.execute(
        "SELECT version FROM taxonomy_versions WHERE product = %s ORDER BY seq", (product,)
    )
    return [str(r[0]) for r in await cur.fetchall()]


async def count(conn: AsyncConnection[Any]) -> int:
    cur = await conn.execute("SELECT count(*) FROM taxonomy_versions")
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def lock_product(conn: AsyncConnection[Any], product: str) -> None:
    """Serialise publishes of one product so `previous_version` is always the true predecessor."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('taxonomy:' || %s))", (product,))
