"""Wiring: schema migrations, pool, consumer, HTTP routes and gRPC servicer for the labeling service.

`start_labeling` is what tests and in-process embeddings call; `setup` is the hook for
linesight.common.service.run_service (`python -m linesight.labeling`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI

from linesight.common.bus import Bus
from linesight.common.db import Database, aapply_migrations
from linesight.common.service import ServiceContext, stop_tasks
from linesight.common.settings import Settings
from linesight.labeling.api import http
from linesight.labeling.api.bus_handlers import start_result_consumer
from linesight.labeling.api.grpc_api import register
from linesight.labeling.app.labeling import Labeling, ReviewPolicy
from linesight.labeling.store import MIGRATIONS_DIR, SCHEMA

log = logging.getLogger(__name__)


@dataclass
class LabelingRuntime:
    """A running labeling service inside this process; `await close()` stops it."""

    labeling: Labeling
    db: Database
    stop: asyncio.Event
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def close(self) -> None:
        await stop_tasks(self.stop, self.tasks)
        await self.db.close()


async def start_labeling(
    settings: Settings,
    bus: Bus,
    object_store: Any = None,
    *,
    app: FastAPI | None = None,
    policy: ReviewPolicy | None = None,
    consume: bool = True,
    stop: asyncio.Event | None = None,
) -> LabelingRuntime:
    """Migrate the `labeling` schema, open the pool, mount the UI on `app`, start consuming results."""
    await aapply_migrations(settings.pg_dsn, SCHEMA, MIGRATIONS_DIR)
    db = Database(settings.pg_dsn, SCHEMA, max_size=settings.pg_pool_max)
    await db.open()
    labeling = Labeling(db, bus, plant=settings.plant, policy=policy)
    if app is not None:
        http.mount(app, labeling, object_store)
    runtime = LabelingRuntime(labeling=labeling, db=db, stop=stop or asyncio.Event())
    if consume:
        runtime.tasks.append(start_result_consumer(bus, labeling, runtime.stop))
    return runtime


async def setup(ctx: ServiceContext) -> None:
    """run_service hook: ctx is linesight.common.service.ServiceContext."""
    runtime = await start_labeling(ctx.settings, ctx.bus, ctx.store, app=ctx.app, stop=ctx.stop)
    ctx.add_readiness_check("database", runtime.db.ping)
    ctx.add_grpc(register(runtime.labeling))
    ctx.on_shutdown(runtime.close)
