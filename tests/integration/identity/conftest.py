"""A fresh schema per test with the identity and audit migrations applied, on the session PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from linesight.common.audit import AUDIT_MIGRATIONS
from linesight.common.db import Database, aapply_migrations
from linesight.common.identity.users import IDENTITY_MIGRATIONS


@pytest.fixture
async def db(pg_dsn: str) -> AsyncIterator[Database]:
    schema = f"ident_{uuid.uuid4().hex[:8]}"
    # Both sets go into one schema, as in the issuing service; their ids must not collide.
    assert await aapply_migrations(pg_dsn, schema, IDENTITY_MIGRATIONS) == ["auth_0001_users"]
    assert await aapply_migrations(pg_dsn, schema, AUDIT_MIGRATIONS) == ["audit_0001_trail"]
    async with Database(pg_dsn, schema, max_size=6) as database:
        yield database
