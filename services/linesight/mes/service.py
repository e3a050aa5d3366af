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
from linesight.mes.api.bus import DURABLE, make_batch_handler, result_subject
from linesight.mes.api.grpc import MesServicer, register
from linesight.mes.api.mqtt import MqttDeliverer
from linesight.mes.api.opcua import VisionServer
from linesight.mes.api.policy import POLICY
from linesight.mes.api.ratelimit import RateLimit
from linesight.mes.api.webhook import WebhookDeliverer
from linesight.mes.app.adapters import (
    AnyEndpoint,
    MqttEndpoint,
    OpcUaEndpoint,
    WebhookEndpoint,
    parse_endpoints,
)
from linesight.mes.app.dispatch import Deliverer, DispatchConfig, MesApp
from linesight.mes.store import MIGRATIONS_DIR, SCHEMA

log = logging.getLogger(__name__)

# Results fetched from the bus and written at once (a line's burst enters in a few commits).
RESULT_BATCH = 128


@dataclass(frozen=True)
class MesOptions:
    """What an in-process run may change: a faster delivery policy, no consumer, no dispatcher."""

    # None: the default policy. Given without endpoints, its `endpoint` is a plain webhook URL.
    config: DispatchConfig | None = None
    endpoints: list[AnyEndpoint] | None = None  # None: from settings
    consume: bool = True
    dispatch: bool = True
    rate_limit: RateLimit | None = None  # None: the default per-client limit of the inbound API


async def setup(ctx: ServiceContext, options: MesOptions | None = None) -> MesApp:
    """Migrate the `mes` schema, consume results into the outbox and deliver them."""
    options = options or MesOptions()
    ctx.use_auth(POLICY)
    db = await ctx.use_database(SCHEMA, MIGRATIONS_DIR)
    endpoints = _endpoints(ctx, options)
    described = ", ".join(e.describe() for e in endpoints)
    config = options.config or DispatchConfig(
        endpoint=described, timeout_s=max(e.timeout_s for e in endpoints) + 1.0
    )
    deliverers = {e.name: await _deliverer(ctx, e) for e in endpoints}
    mes = MesApp(db, ctx.bus, deliverers, config, plant=ctx.settings.plant, images=ctx.store)
    for name, d in deliverers.items():
        if isinstance(d, VisionServer):
            await _restore(mes, name, d)
    http.mount(ctx.app, mes, rate_limit=options.rate_limit)
    ctx.add_grpc(lambda server: register(server, MesServicer(mes)))
    if options.consume:
        ctx.add_task(
            _logged(
                ctx.bus.consume_batches(
                    result_subject(mes.plant),
                    DURABLE,
                    events_pb2.InspectionResult,
                    make_batch_handler(mes),
                    # A fetch enters the outbox in one commit: one round trip per batch, not per result.
                    batch=RESULT_BATCH,
                    # A result a crashed MES held comes back within half the reject window (not the
                    # bus default of 30 s, long past the reject gate), so its redelivery still lands
                    # inside the window; slow handlers send in-progress.
                    ack_wait_s=config.reject_window_s / 2,
                    stop=ctx.stop,
                ),
                DURABLE,
            ),
            name=f"consume:{DURABLE}",
        )
    if options.dispatch:
        ctx.add_task(mes.run(ctx.stop), name="mes-dispatcher")
    log.info("mes delivering dispositions to %s", described)
    return mes


def _endpoints(ctx: ServiceContext, options: MesOptions) -> list[AnyEndpoint]:
    """Explicit endpoints; else a plain webhook to a given config's endpoint; else the settings'."""
    if options.endpoints:
        return options.endpoints
    if options.config is not None:
        return [WebhookEndpoint(name="mes", url=options.config.endpoint, timeout_s=options.config.timeout_s)]
    s = ctx.settings
    opcua = (
        OpcUaEndpoint(
            kind="opcua", host=s.listen_host, port=s.mes_opcua_port, stations=[f"{s.line}/{s.station}"]
        )
        if s.mes_opcua
        else None
    )
    return parse_endpoints(s.mes_endpoints, s.mes_endpoint, opcua=opcua)


async def _deliverer(ctx: ServiceContext, endpoint: AnyEndpoint) -> Deliverer:
    """The adapter for one endpoint, closed with the service. The OPC UA server is started here
    (loading the Machine Vision model takes seconds); one that cannot listen stops the service."""
    d: WebhookDeliverer | MqttDeliverer | VisionServer
    if isinstance(endpoint, WebhookEndpoint):
        d = WebhookDeliverer(endpoint)
    elif isinstance(endpoint, MqttEndpoint):
        d = MqttDeliverer(endpoint, plant=ctx.settings.plant)
    else:
        d = VisionServer(endpoint)
        await d.start()
    ctx.on_shutdown(d.close)
    return d


async def _restore(mes: MesApp, name: str, server: VisionServer) -> None:
    """A restarted OPC UA server answers result queries about what it delivered before (from the
    outbox). A database that cannot say now only shortens that history; delivery is unaffected."""
    try:
        restored = await server.restore(await mes.delivered(name, server.retain))
    except Exception as exc:
        log.warning("OPC UA %s starts without its earlier results: %s", name, exc)
        return
    if restored:
        log.info("OPC UA %s serves %d earlier results again", name, restored)


async def _logged(consumer: Awaitable[None], durable: str) -> None:
    """A consumer that stops on an error says so at once (not only when the service ends)."""
    try:
        await consumer
    except Exception as exc:
        log.error("consumer %s stopped: %s", durable, exc, exc_info=exc)
        raise


def make_setup(options: MesOptions) -> Callable[[ServiceContext], Awaitable[MesApp]]:
    """`setup` with `options` (tests: a fast retry policy, the consumer or dispatcher left off)."""
    return functools.partial(setup, options=options)
