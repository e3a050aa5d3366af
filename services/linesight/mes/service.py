"""Composition root of the MES service: outbox schema, result consumer, webhook dispatcher loop,
HTTP status views and gRPC."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from linesight.common.pb import events_pb2
from linesight.common.service import ServiceContext
from linesight.mes.api import http
from linesight.mes.api.bus import DURABLE, make_result_handler, result_subject
from linesight.mes.api.grpc import MesServicer, register
from linesight.mes.api.policy import POLICY
from linesight.mes.api.webhook import WebhookDeliverer
from linesight.mes.app.dispatch import DispatchConfig, MesApp
from linesight.mes.store import MIGRATIONS_DIR, SCHEMA

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MesOptions:
    """What an in-process run may change: a faster delivery policy, no consumer, no dispatcher."""

    config: DispatchConfig | None = None  # None: LINESIGHT_MES_ENDPOINT with the default policy
    consume: bool = True
    dispatch: bool = True


async def setup(ctx: ServiceContext, options: MesOptions | None = None) -> MesApp:
    """Migrate the `mes` schema, consume results into the outbox and deliver them."""
    options = options or MesOptions()
    ctx.use_auth(POLICY)
    db = await ctx.use_database(SCHEMA, MIGRATIONS_DIR)
    config = options.config or DispatchConfig(endpoint=ctx.settings.mes_endpoint)
    deliverer = WebhookDeliverer(config.endpoint, timeout_s=config.timeout_s)
    ctx.on_shutdown(deliverer.close)
    mes = MesApp(db, ctx.bus, deliverer, config, plant=ctx.settings.plant, images=ctx.store)
    http.mount(ctx.app, mes)
    ctx.add_grpc(lambda server: register(server, MesServicer(mes)))
    if options.consume:
        ctx.consume(
            result_subject(mes.plant),
            DURABLE,
            events_pb2.InspectionResult,
            make_result_handler(mes),
            batch=32,
        )
    if options.dispatch:
        ctx.add_task(mes.run(ctx.stop), name="mes-dispatcher")
    log.info("mes delivering dispositions to %s", config.endpoint)
    return mes


def make_setup(options: MesOptions) -> Callable[[ServiceContext], Awaitable[MesApp]]:
    """`setup` with `options` (tests: a fast retry policy, the consumer or dispatcher left off)."""
    return functools.partial(setup, options=options)
