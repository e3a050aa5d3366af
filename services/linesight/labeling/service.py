"""Composition root of the labeling service: ledger schema, result consumer, review UI and APIs
on the service's HTTP port, gRPC."""

from __future__ import annotations

from linesight.common.pb import events_pb2
from linesight.common.service import ServiceContext
from linesight.labeling.api import http
from linesight.labeling.api.bus import DURABLE, make_result_handler, result_subject
from linesight.labeling.api.grpc import LabelingServicer, register
from linesight.labeling.app.labeling import LabelingApp
from linesight.labeling.store import MIGRATIONS_DIR, SCHEMA


async def setup(ctx: ServiceContext) -> LabelingApp:
    """Migrate the `labeling` schema, mount the UI, consume our plant's results into the ledger."""
    db = await ctx.use_database(SCHEMA, MIGRATIONS_DIR)
    labeling = LabelingApp(db, ctx.bus, plant=ctx.settings.plant)
    http.mount(ctx.app, labeling, ctx.store)
    ctx.add_grpc(lambda server: register(server, LabelingServicer(labeling)))
    ctx.consume(
        result_subject(labeling.plant),
        DURABLE,
        events_pb2.InspectionResult,
        make_result_handler(labeling),
        batch=32,
    )
    return labeling
