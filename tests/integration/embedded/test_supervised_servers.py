"""The stack's supervisor brings a SIGKILLed NATS, PostgreSQL or S3 back within seconds, and a
service's database pool follows within seconds of PostgreSQL's return."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable

import psycopg
import pytest

from linesight.common.bus import Bus
from linesight.common.db import Database
from linesight.common.embedded.nats_auth import settings_as
from linesight.common.embedded.process import ManagedProcess
from linesight.common.embedded.stack import Recovery, Stack
from linesight.common.settings import Settings
from linesight.common.storage import ObjectStore, S3Config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TARGET_S = 10.0  # each server back within this long after its death


def _kill_and_wait(stack: Stack, server: ManagedProcess) -> Recovery:
    before = len(stack.recoveries)
    pid = server.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while len(stack.recoveries) == before:
        assert time.monotonic() < deadline, f"{server.name} was not restarted"
        assert not stack.failed_event.is_set(), stack.failed
        time.sleep(0.05)
    rec = stack.recoveries[-1]
    assert rec.server == server.name and server.pid not in (None, pid)
    print(f"{server.name}: back {rec.down_s:.2f}s after SIGKILL")
    return rec


async def _first_query_after(db: Database, since: Callable[[], bool]) -> float:
    """Seconds from `since()` turning true until the pool serves a query again."""
    while not since():  # noqa: ASYNC110 - the condition is set by the supervisor's thread
        await asyncio.sleep(0.02)
    t0 = time.monotonic()
    while True:
        try:
            async with db.connection() as conn:
                await conn.execute("SELECT 1")
            return time.monotonic() - t0
        except Exception:
            await asyncio.sleep(0.05)


def test_killed_servers_come_back_and_pools_follow(make_settings, pg_template, watch) -> None:
    settings: Settings = make_settings()
    events: list[str] = []
    stack = Stack(settings, durable=False, on_event=events.append)
    stack.postgres.template = pg_template
    stack.start([])
    try:
        for server in (stack.nats, stack.postgres, stack.s3):
            watch.add(server.pid)

        # PostgreSQL: a client holds a backend, which outlives a SIGKILLed postmaster.
        with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (x int)")
            conn.execute("INSERT INTO kept VALUES (7)")
            conn.execute("CHECKPOINT")  # the test cluster runs without synchronous commit

        async def postgres_round() -> tuple[Recovery, float]:
            db = Database(settings.pg_dsn, "chaos", max_size=2)
            await db.open()
            try:
                async with db.connection() as conn:
                    await conn.execute("SELECT 1")
                n = len(stack.recoveries)
                kill = asyncio.to_thread(_kill_and_wait, stack, stack.postgres)
                pool = _first_query_after(db, lambda: len(stack.recoveries) > n)
                rec, pool_s = await asyncio.gather(kill, pool)
                return rec, pool_s
            finally:
                await db.close()

        rec, pool_s = asyncio.run(postgres_round())
        assert rec.down_s <= TARGET_S
        assert pool_s <= 3.0, f"pool needed {pool_s:.1f}s after PostgreSQL was back"
        print(f"postgres pool: first query {pool_s:.2f}s after the server was back")
        with psycopg.connect(settings.pg_dsn) as conn:
            assert conn.execute("SELECT x FROM kept").fetchone() == (7,)
        watch.add(stack.postgres.pid)

        assert _kill_and_wait(stack, stack.nats).down_s <= TARGET_S
        watch.add(stack.nats.pid)

        async def bus_works() -> None:
            bus = await Bus.connect_as(settings_as(settings, "inference"), "supervision-test")
            try:
                await bus.ensure_streams()
            finally:
                await bus.close()

        asyncio.run(bus_works())

        assert _kill_and_wait(stack, stack.s3).down_s <= TARGET_S
        watch.add(stack.s3.pid)
        store = ObjectStore(S3Config.from_settings(settings_as(settings, "capture")))  # generated S3 keys
        store.ensure_buckets()
        ref = store.put_content_addressed("frames", b"after the restart", ".bin", "application/octet-stream")
        assert store.get_bytes(ref.bucket, ref.key) == b"after the restart"
        assert any("server postgres exited" in e for e in events)
    finally:
        stack.stop()
    assert watch.alive() == []
