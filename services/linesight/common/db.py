"""PostgreSQL through psycopg 3: one pool per service, one schema per service, yoyo migrations.

Each service owns a schema (`capture`, `labeling`, ...). Its pool's connections have
`search_path` set to that schema only, so unqualified table names can never reach another
service's tables. Migrations are raw SQL files in `services/linesight/<svc>/store/migrations/`, applied by
yoyo-migrations with its bookkeeping tables (`_yoyo_migration`, `yoyo_lock`, ...) inside the same
schema, so services migrate independently and concurrently.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from psycopg_pool.base import AttemptWithBackoff

from linesight.common.settings import Settings

log = logging.getLogger(__name__)

_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
MIGRATION_TABLE = "_yoyo_migration"

# psycopg_pool retries a lost server after 1, 2, 4, 8, 16 ... s (its AttemptWithBackoff), so after
# an outage of some seconds the next attempt can be tens of seconds away: labeling and MES needed
# 46-66 s after PostgreSQL returned. Our pools retry at a steady pace instead (one cheap connect
# attempt per pool per interval) and are back within about a second of the server. These are the
# class's own tuning knobs; every pool in a LineSight process is one of ours.
RECONNECT_EVERY_S = 0.5
RECONNECT_GIVE_UP_S = 24 * 3600.0  # keep trying: giving up only shrinks the pool
AttemptWithBackoff.INITIAL_DELAY = RECONNECT_EVERY_S
AttemptWithBackoff.DELAY_BACKOFF = 1.0


class DatabaseUnavailable(RuntimeError):  # noqa: N818 - matches BusUnavailable/StorageUnavailable
    """PostgreSQL could not be reached or refused the connection."""


class MigrationError(RuntimeError):
    """A migration failed; it was rolled back and later ones were not applied."""


def validate_schema(schema: str) -> str:
    if not _SCHEMA.match(schema or ""):
        raise ValueError(
            f"invalid schema name {schema!r}: lowercase letters, digits and '_' only, "
            "starting with a letter (one schema per service, e.g. 'labeling')"
        )
    return schema


def redact_dsn(dsn: str) -> str:
    """The DSN without its password, safe for logs and error messages."""
    if "://" in dsn:
        parts = urlsplit(dsn)
        netloc = parts.netloc
        if "@" in netloc:
            creds, host = netloc.rsplit("@", 1)
            user = creds.split(":", 1)[0]
            netloc = f"{user}@{host}"
        query = urlencode([(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query)])
        return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", dsn)


def _unavailable(dsn: str, schema: str, exc: BaseException) -> DatabaseUnavailable:
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return DatabaseUnavailable(
        f"cannot connect to PostgreSQL at {redact_dsn(dsn)} (schema {schema!r}): {reason} "
        "(is the server running? `linesight up` starts one; check LINESIGHT_PG_DSN)"
    )


def _ensure_schema_sync(dsn: str, schema: str, connect_timeout_s: float) -> None:
    try:
        with psycopg.connect(dsn, connect_timeout=max(1, int(connect_timeout_s)), autocommit=True) as conn:
            _create_schema(conn, schema)
    except psycopg.OperationalError as exc:
        raise _unavailable(dsn, schema, exc) from exc


def _create_schema(conn: psycopg.Connection[Any], schema: str) -> None:
    # Two services racing on IF NOT EXISTS can still collide; the other one created it.
    with suppress(psycopg.errors.UniqueViolation):
        conn.execute(_create_schema_sql(schema))


def _create_schema_sql(schema: str) -> sql.Composed:
    return sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))


def _yoyo_uri(dsn: str, schema: str) -> str:
    """yoyo wants `postgresql+psycopg://...?schema=` (psycopg 3 driver, search_path = schema)."""
    if "://" not in dsn:
        # key=value DSN: rebuild a URI from its parts.
        from psycopg.conninfo import conninfo_to_dict

        d = conninfo_to_dict(dsn)
        user = str(d.pop("user", ""))
        password = str(d.pop("password", ""))
        host = str(d.pop("host", "localhost"))
        port = str(d.pop("port", ""))
        dbname = str(d.pop("dbname", ""))
        auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
        dsn = f"postgresql://{auth}{host}{':' + port if port else ''}/{dbname}"
        if d:
            dsn += "?" + urlencode({k: str(v) for k, v in d.items()})
    parts = urlsplit(dsn)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "schema"] + [("schema", schema)]
    return urlunsplit(("postgresql+psycopg", parts.netloc, parts.path, urlencode(query), ""))


def apply_migrations(
    dsn: str, schema: str, migrations_dir: Path, *, connect_timeout_s: float = 5.0
) -> list[str]:
    """Create `schema` if missing and apply pending migrations; returns the ids applied now.

    Safe to run from several replicas at once: yoyo takes a lock (a row in the schema's
    `yoyo_lock`) and each migration runs in its own transaction; a failing one is rolled back,
    later ones are not applied, and MigrationError names the file.
    """
    from yoyo import get_backend, read_migrations

    validate_schema(schema)
    migrations_dir = Path(migrations_dir)
    if not migrations_dir.is_dir():
        raise FileNotFoundError(f"migrations directory {migrations_dir} does not exist (schema {schema!r})")
    _ensure_schema_sync(dsn, schema, connect_timeout_s)
    try:
        backend = get_backend(_yoyo_uri(dsn, schema), migration_table=MIGRATION_TABLE)
    except psycopg.OperationalError as exc:
        raise _unavailable(dsn, schema, exc) from exc
    migrations = read_migrations(str(migrations_dir))
    applied: list[str] = []
    try:
        with backend.lock():
            pending = backend.to_apply(migrations)
            for migration in pending:
                try:
                    backend.apply_one(migration)
                except Exception as exc:
                    raise MigrationError(
                        f"migration {migration.id} ({migrations_dir}) failed in schema {schema!r}: {exc}; "
                        f"rolled back, applied before it: {applied or 'none'}"
                    ) from exc
                applied.append(migration.id)
            if pending:
                backend.run_post_apply(pending)
    finally:
        backend.connection.close()
    if applied:
        log.info("schema %s: applied migrations %s", schema, applied)
    return applied


async def aapply_migrations(dsn: str, schema: str, migrations_dir: Path) -> list[str]:
    """`apply_migrations` in a worker thread (yoyo is synchronous)."""
    return await asyncio.to_thread(apply_migrations, dsn, schema, migrations_dir)


class Database:
    """An async connection pool whose connections see only `schema` (search_path)."""

    def __init__(self, dsn: str, schema: str, *, max_size: int = 8, connect_timeout_s: float = 5.0) -> None:
        self.dsn = dsn
        self.schema = validate_schema(schema)
        self.connect_timeout_s = connect_timeout_s
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        self._pool = AsyncConnectionPool(
            conninfo=dsn,
            min_size=1,
            max_size=max_size,
            open=False,
            timeout=connect_timeout_s,
            # A restarted server leaves every pooled connection broken: test each one as it is
            # handed out, so callers get a fresh connection instead of the dead one's error.
            check=AsyncConnectionPool.check_connection,
            reconnect_timeout=RECONNECT_GIVE_UP_S,
            kwargs={
                "options": f"-c search_path={schema}",
                "connect_timeout": max(1, int(connect_timeout_s)),
            },
            name=f"pg-{schema}",
        )
        self._opened = False

    async def open(self) -> None:
        """Connect (fails fast with DatabaseUnavailable naming the DSN) and create the schema."""
        try:
            conn = await psycopg.AsyncConnection.connect(
                self.dsn, connect_timeout=max(1, int(self.connect_timeout_s)), autocommit=True
            )
        except psycopg.OperationalError as exc:
            raise _unavailable(self.dsn, self.schema, exc) from exc
        try:
            with suppress(psycopg.errors.UniqueViolation):
                await conn.execute(_create_schema_sql(self.schema))
        finally:
            await conn.close()
        try:
            await self._pool.open(wait=True, timeout=self.connect_timeout_s)
        except PoolTimeout as exc:
            raise _unavailable(self.dsn, self.schema, exc) from exc
        self._opened = True

    async def close(self) -> None:
        if self._opened:
            await self._pool.close()
            self._opened = False

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection; commits when the block succeeds, rolls back when it raises."""
        if not self._opened:
            raise RuntimeError(f"Database({self.schema!r}) is not open; await db.open() first")
        try:
            cm = self._pool.connection()
            conn = await cm.__aenter__()
        except PoolTimeout as exc:
            raise _unavailable(self.dsn, self.schema, exc) from exc
        try:
            yield conn
        except BaseException as exc:
            if not await cm.__aexit__(type(exc), exc, exc.__traceback__):
                raise
        else:
            await cm.__aexit__(None, None, None)

    async def ping(self) -> None:
        """SELECT 1 for /readyz; raises DatabaseUnavailable."""
        try:
            async with self.connection() as conn:
                await conn.execute("SELECT 1")
        except psycopg.OperationalError as exc:
            raise _unavailable(self.dsn, self.schema, exc) from exc

    async def __aenter__(self) -> Database:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def open_database(
    settings: Settings, schema: str, migrations_dir: Path | None = None, *, max_size: int | None = None
) -> Database:
    """Migrate `schema` (when `migrations_dir` is given) and open its pool: the one way a service,
    or a one-shot command running a service's code without the service, gets its database."""
    if migrations_dir is not None:
        await aapply_migrations(settings.pg_dsn, schema, migrations_dir)
    size = settings.pg_pool_max if max_size is None else min(settings.pg_pool_max, max_size)
    db = Database(settings.pg_dsn, schema, max_size=size)
    await db.open()
    return db
