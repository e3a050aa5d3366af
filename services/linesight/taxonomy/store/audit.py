"""The hash-chained audit trail inside the caller's transaction.

`AuditLog.append` takes its own pooled connection; here it is handed the connection of the
transaction that changes the taxonomy, so the record and the change commit or roll back together
(a publish without its audit record, or a record of a publish that never happened, cannot exist).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

from psycopg import AsyncConnection

from linesight.common.audit import AUDIT_MIGRATIONS, AuditEntry, AuditLog, AuditRecord
from linesight.common.db import Database

__all__ = ["AUDIT_MIGRATIONS", "append"]


class _OneConnection:
    """The `connection()` slice of Database, always yielding the caller's connection."""

    def __init__(self, conn: AsyncConnection[Any]) -> None:
        self._conn = conn

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        yield self._conn


async def append(conn: AsyncConnection[Any], entry: AuditEntry) -> AuditRecord:
    """Append `entry`; the table lock it takes is held until the caller's transaction ends."""
    return await AuditLog(cast(Database, _OneConnection(conn))).append(entry)
