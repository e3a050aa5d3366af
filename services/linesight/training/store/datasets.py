"""Repository for dataset versions, their waivers and holdout reads; the caller owns the
transaction. Reads return the records below."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import class_row
from psycopg.types.json import Jsonb


@dataclass(frozen=True)
class DatasetRow:
    """What creating a version writes."""

    version: str
    product: str
    content_hash: str
    source: str
    manifest_bucket: str
    manifest_key: str
    images: int
    counts: dict[str, Any]
    taxonomy_version: str
    parent_version: str | None
    created_by: str
    reason: str
    split_policy: str
    input_notes: list[str]
    report: dict[str, Any]
    report_html_key: str
    blocking: bool


@dataclass(frozen=True)
class DatasetRecord:
    version: str
    product: str
    content_hash: str
    source: str
    manifest_bucket: str
    manifest_key: str
    images: int
    counts: dict[str, Any]
    taxonomy_version: str
    parent_version: str | None
    created_by: str
    reason: str
    split_policy: str
    input_notes: list[str]
    report: dict[str, Any]
    report_html_key: str
    blocking: bool
    created_at: datetime


@dataclass(frozen=True)
class Waiver:
    version: str
    kind: str
    waived_by: str
    reason: str
    waived_at: datetime


_COLS = (
    "version, product, content_hash, source, manifest_bucket, manifest_key, images, counts, "
    "taxonomy_version, parent_version, created_by, reason, split_policy, input_notes, report, "
    "report_html_key, blocking"
)


async def insert_version(conn: AsyncConnection[Any], row: DatasetRow) -> bool:
    """Insert unless the product already has a version with this content; True if inserted."""
    cur = await conn.execute(
        f"INSERT INTO dataset_versions ({_COLS}) VALUES ({', '.join(['%s'] * 17)}) "
        "ON CONFLICT (product, content_hash) DO NOTHING RETURNING 1",
        (
            row.version, row.product, row.content_hash, row.source, row.manifest_bucket,
            row.manifest_key, row.images, Jsonb(row.counts), row.taxonomy_version,
            row.parent_version, row.created_by, row.reason, row.split_policy,
            Jsonb(row.input_notes), Jsonb(row.report), row.report_html_key, row.blocking,
        ),
    )  # fmt: skip
    return await cur.fetchone() is not None


async def get_version(conn: AsyncConnection[Any], version: str) -> DatasetRecord | None:
    async with conn.cursor(row_factory=class_row(DatasetRecord)) as cur:
        await cur.execute(f"SELECT {_COLS}, created_at FROM dataset_versions WHERE version = %s", (version,))
        return await cur.fetchone()


async def find_by_content(
    conn: AsyncConnection[Any], product: str, content_hash: str
) -> DatasetRecord | None:
    async with conn.cursor(row_factory=class_row(DatasetRecord)) as cur:
        await cur.execute(
            f"SELECT {_COLS}, created_at FROM dataset_versions WHERE product = %s AND content_hash = %s",
            (product, content_hash),
        )
        return await cur.fetchone()


async def list_versions(conn: AsyncConnection[Any], product: str = "") -> list[DatasetRecord]:
    async with conn.cursor(row_factory=class_row(DatasetRecord)) as cur:
        await cur.execute(
            f"SELECT {_COLS}, created_at FROM dataset_versions WHERE (%s = '' OR product = %s) "
            "ORDER BY created_at, version",
            (product, product),
        )
        return await cur.fetchall()


async def add_waiver(
    conn: AsyncConnection[Any], version: str, kind: str, waived_by: str, reason: str
) -> bool:
    """Record a waiver; False when this finding of this version was already waived (kept as is)."""
    cur = await conn.execute(
        "INSERT INTO dataset_waivers (version, kind, waived_by, reason) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (version, kind) DO NOTHING RETURNING 1",
        (version, kind, waived_by, reason),
    )
    return await cur.fetchone() is not None


async def waivers(conn: AsyncConnection[Any], version: str) -> list[Waiver]:
    async with conn.cursor(row_factory=class_row(Waiver)) as cur:
        await cur.execute(
            "SELECT version, kind, waived_by, reason, waived_at FROM dataset_waivers WHERE version = %s "
            "ORDER BY kind",
            (version,),
        )
        return await cur.fetchall()


async def set_blocking(conn: AsyncConnection[Any], version: str, blocking: bool) -> None:
    await conn.execute("UPDATE dataset_versions SET blocking = %s WHERE version = %s", (blocking, version))


async def set_report_entry(conn: AsyncConnection[Any], version: str, key: str, value: Any) -> None:
    """Add a derived entry (the on-demand learning curve) to a version's report; the findings and
    everything the version holds stay as they were."""
    await conn.execute(
        "UPDATE dataset_versions SET report = jsonb_set(report, %s, %s) WHERE version = %s",
        ([key], Jsonb(value), version),
    )


async def log_holdout_read(
    conn: AsyncConnection[Any], product: str, version: str, purpose: str, reader: str, images: int
) -> None:
    await conn.execute(
        "INSERT INTO holdout_reads (product, version, purpose, reader, images) VALUES (%s, %s, %s, %s, %s)",
        (product, version, purpose, reader, images),
    )


async def holdout_reads(conn: AsyncConnection[Any], product: str) -> list[tuple[str, str, str, int]]:
    """(version, purpose, reader, images) of every read of the product's holdout, oldest first."""
    cur = await conn.execute(
        "SELECT version, purpose, reader, images FROM holdout_reads WHERE product = %s ORDER BY id",
        (product,),
    )
    return [(str(r[0]), str(r[1]), str(r[2]), int(r[3])) for r in await cur.fetchall()]
