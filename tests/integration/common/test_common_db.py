"""Database pool and yoyo migrations against a real PostgreSQL."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
import pytest

from linesight.common.db import Database, DatabaseUnavailable, MigrationError, apply_migrations

pytestmark = pytest.mark.integration


def migrations(tmp_path: Path, name: str, files: dict[str, str]) -> Path:
    d = tmp_path / name
    d.mkdir()
    for fname, body in files.items():
        (d / fname).write_text(body)
    return d


@pytest.fixture
def schemas() -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return f"svc_a_{suffix}", f"svc_b_{suffix}"


def test_migrations_apply_once_and_schemas_are_isolated(
    pg_dsn: str, tmp_path: Path, schemas: tuple[str, str]
) -> None:
    a, b = schemas
    dir_a = migrations(
        tmp_path,
        "a",
        {
            "0001_frames.sql": "CREATE TABLE frames (id text PRIMARY KEY, station text NOT NULL);",
            "0002_index.sql": "CREATE INDEX frames_station ON frames (station);",
        },
    )
    dir_b = migrations(
        tmp_path, "b", {"0001_frames.sql": "CREATE TABLE frames (id text PRIMARY KEY, n int);"}
    )
    assert apply_migrations(pg_dsn, a, dir_a) == ["0001_frames", "0002_index"]
    assert apply_migrations(pg_dsn, a, dir_a) == []
    # Same table name and same migration id in another schema: yoyo's bookkeeping is per schema.
    assert apply_migrations(pg_dsn, b, dir_b) == ["0001_frames"]
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema = ANY(%s) ORDER BY 1, 2",
            ([a, b],),
        ).fetchall()
    tables = {(s, t) for s, t in rows}
    for schema in (a, b):
        assert (schema, "frames") in tables and (schema, "_yoyo_migration") in tables
    assert not any(t.startswith("_yoyo") or t == "yoyo_lock" for s, t in rows if s not in (a, b))


async def test_pool_connections_see_only_their_schema(
    pg_dsn: str, tmp_path: Path, schemas: tuple[str, str]
) -> None:
    a, b = schemas
    apply_migrations(pg_dsn, a, migrations(tmp_path, "a", {"0001.sql": "CREATE TABLE items (v text);"}))
    apply_migrations(pg_dsn, b, migrations(tmp_path, "b", {"0001.sql": "CREATE TABLE items (v text);"}))
    async with Database(pg_dsn, a, max_size=2) as db_a, Database(pg_dsn, b, max_size=2) as db_b:
        async with db_a.connection() as conn:
            await conn.execute("INSERT INTO items VALUES ('from a')")
        async with db_b.connection() as conn:
            rows = await (await conn.execute("SELECT v FROM items")).fetchall()
            assert rows == []
        async with db_a.connection() as conn:
            assert await (await conn.execute("SELECT v FROM items")).fetchall() == [("from a",)]
        with pytest.raises(psycopg.errors.UniqueViolation):  # failed block rolls back
            async with db_a.connection() as conn:
                await conn.execute("INSERT INTO items VALUES ('rolled back')")
                await conn.execute("CREATE UNIQUE INDEX ON items ((1))")
        async with db_a.connection() as conn:
            assert await (await conn.execute("SELECT count(*) FROM items")).fetchone() == (1,)
        await db_a.ping()


def test_failing_migration_is_rolled_back_and_named(
    pg_dsn: str, tmp_path: Path, schemas: tuple[str, str]
) -> None:
    a, _ = schemas
    d = migrations(
        tmp_path,
        "a",
        {
            "0001_ok.sql": "CREATE TABLE t (v int);",
            "0002_bad.sql": "CREATE TABLE u (v int); SELECT nope FROM t;",
        },
    )
    with pytest.raises(MigrationError, match="0002_bad"):
        apply_migrations(pg_dsn, a, d)
    with psycopg.connect(pg_dsn) as conn:
        names = {
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema=%s", (a,)
            )
        }
    assert "t" in names and "u" not in names


async def test_server_down_is_a_clear_error_without_password(tmp_path: Path) -> None:
    dsn = "postgresql://svc:topsecret@127.0.0.1:1/linesight"
    with pytest.raises(DatabaseUnavailable) as err:
        await Database(dsn, "capture", connect_timeout_s=1).open()
    assert "postgresql://svc@127.0.0.1:1/linesight" in str(err.value) and "topsecret" not in str(err.value)
    with pytest.raises(DatabaseUnavailable, match="schema 'capture'"):
        apply_migrations(dsn, "capture", migrations(tmp_path, "m", {"0001.sql": "SELECT 1;"}))
