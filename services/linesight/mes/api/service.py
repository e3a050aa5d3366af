"""Wiring for the MES service: migrations, pool, outbox consumer, dispatcher loop, HTTP and gRPC.

`start_mes` is what tests and in-process embeddings call; `setup` is the run_service hook.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from fastapi import FastAPI

from linesight.common.bus import Bus
from linesight.common.db import Database, aapply_migrations
from linesight.common.service import ServiceContext, stop_tasks
from linesight.common.settings import Settings
from linesight.mes.api import http
from linesight.mes.api.bus_handlers import start_result_consumer
from linesight.mes.api.grpc_api import register
from linesight.mes.app.dispatch import DispatchConfig, MesDispatcher
from linesight.mes.store import MIGRATIONS_DIR, SCHEMA

log = logging.getLogger(__name__)


@dataclass
class MesRuntime:
    """A running MES service inside this process; `await close()` stops consumer and dispatcher."""

    mes: MesDispatcher
    db: Database
    stop: asyncio.Event
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def close(self) -> None:
        await stop_tasks(self.stop, self.tasks)
        await self.db.close()


async def start_mes(
    settings: Settings,
    bus: Bus,
    *,
    app: FastAPI | None = None,
    config: DispatchConfig | None = None,
    consume: bool = True,
    stop: asyncio.Event | None = None,
    dispatch: bool = True,
) -> MesRuntime:
    """Migrate the `mes` schema, start consuming results into the outbox and delivering them."""
    await aapply_migrations(settings.pg_dsn, SCHEMA, MIGRATIONS_DIR)
    db = Database(settings.pg_dsn, SCHEMA, max_size=settings.pg_pool_max)
    await db.open()
    mes = MesDispatcher(
        db, bus, config or DispatchConfig(endpoint=settings.mes_endpoint), plant=settings.plant
    )
    if app is not None:
        http.mount(app, mes)
    runtime = MesRuntime(mes=mes, db=db, stop=stop or asyncio.Event())
    if consume:
        runtime.tasks.append(start_result_consumer(bus, mes, runtime.stop))
    if dispatch:
        runtime.tasks.append(asyncio.create_task(mes.run(runtime.stop), name="mes-dispatcher"))
    log.info("mes delivering dispositions to %s", mes.config.endpoint)
    return runtime


async def setup(ctx: ServiceContext) -> None:
    """run_service hook: ctx is linesight.common.service.ServiceContext."""
    runtime = await start_mes(ctx.settings, ctx.bus, app=ctx.app, stop=ctx.stop)
    ctx.add_readiness_check("database", runtime.db.ping)
    ctx.add_grpc(register(runtime.mes))
    ctx.on_shutdown(runtime.close)
