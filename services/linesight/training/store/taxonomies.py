"""The newest published taxonomy per product (training's copy); the caller owns the transaction."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection


async def keep_newest(
    conn: AsyncConnection[Any], product: str, version: str, yaml: str, stream_seq: int
) -> bool:
    """Store this version unless a later one (higher stream sequence) is stored; True if stored."""
    cur = await conn.execute(
        "INSERT INTO published_taxonomies (product, version, yaml, stream_seq) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (product) DO UPDATE SET version = EXCLUDED.version, yaml = EXCLUDED.yaml, "
        "stream_seq = EXCLUDED.stream_seq, received_at = now() "
        "WHERE published_taxonomies.stream_seq < EXCLUDED.stream_seq RETURNING 1",
        (product, version, yaml, stream_seq),
    )
    return await cur.fetchone() is not None


async def newest(conn: AsyncConnection[Any], product: str) -> tuple[str, str] | None:
    """(version, yaml) of the product's newest published taxonomy, None before the first."""
    cur = await conn.execute("SELECT version, yaml FROM published_taxonomies WHERE product = %s", (product,))
    row = await cur.fetchone()
    return (str(row[0]), str(row[1])) if row else None
