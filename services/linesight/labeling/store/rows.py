"""Typed statements for the labeling repositories: the cursor with a dataclass row factory, and
"did the statement return a row", written once instead of in every repository function."""

from __future__ import annotations

from typing import Any, TypeVar

from psycopg import AsyncConnection
from psycopg.abc import Params
from psycopg.rows import class_row

T = TypeVar("T")


async def fetch_one(
    conn: AsyncConnection[Any], row: type[T], query: str, params: Params | None = None
) -> T | None:
    """The first row of `query` as a `row` (columns by name), or None when it returns none."""
    async with conn.cursor(row_factory=class_row(row)) as cur:
        await cur.execute(query, params)
        return await cur.fetchone()


async def fetch_all(
    conn: AsyncConnection[Any], row: type[T], query: str, params: Params | None = None
) -> list[T]:
    """Every row of `query` as a `row` (columns by name), in the order the query gives."""
    async with conn.cursor(row_factory=class_row(row)) as cur:
        await cur.execute(query, params)
        return await cur.fetchall()


async def returns_row(conn: AsyncConnection[Any], query: str, params: Params) -> bool:
    """Whether the statement returned a row: an `INSERT ... ON CONFLICT DO NOTHING RETURNING`
    answers False for a row that was already there (how the idempotent writes tell a repeat)."""
    cur = await conn.execute(query, params)
    return await cur.fetchone() is not None
