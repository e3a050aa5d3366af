"""The capture service's composition root: one station, its gRPC API, /capture/status, free-run."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from linesight.capture.api.grpc import register
from linesight.capture.api.http import status_router
from linesight.capture.api.policy import POLICY
from linesight.capture.app.config import CaptureOptions, load_profile, spool_dir_for
from linesight.capture.app.sources import ReplaySource, SourceError, make_source
from linesight.capture.app.station import CaptureStation
from linesight.common.service import ServiceContext

log = logging.getLogger("linesight.capture")


async def setup(ctx: ServiceContext, options: CaptureOptions | None = None) -> CaptureStation:
    """The station of `options` (default: the profile named by LINESIGHT_CAPTURE_PROFILE)."""
    options = options or CaptureOptions()
    ctx.use_auth(POLICY)
    profile = load_profile(options, ctx.settings)
    if profile.source == "replay" and not profile.source_uri:
        raise SourceError("no frame source: give --profile with a camera, or --replay DATASET")
    source = make_source(profile)
    if isinstance(source, ReplaySource):
        source.loop = options.loop
    station = CaptureStation(
        profile,
        bus=ctx.bus,
        store=ctx.store,
        spool_dir=spool_dir_for(profile, ctx.settings),
        source=source,
    )
    await station.start()
    ctx.on_shutdown(station.stop)
    ctx.add_grpc(register(station))
    ctx.app.include_router(status_router(station))

    async def spool_ok() -> bool:
        return not station.line_stopped

    ctx.add_readiness_check("capture-spool", spool_ok)
    free_run = options.free_run
    if free_run is None:
        free_run = profile.source == "replay" or profile.trigger_mode in ("free_run", "hardware")
    if free_run:
        ppm = options.ppm if profile.source == "replay" else None
        ctx.add_task(
            station.run_free_run(
                ppm=ppm,
                jitter=options.jitter if ppm else 0.0,
                stop=ctx.stop,
                trigger_source="replay" if profile.source == "replay" else profile.trigger_mode,
            ),
            name="capture-free-run",
        )
    log.info(
        "capture station %s/%s/%s profile %s source %s trigger %s spool %s",
        profile.plant,
        profile.line,
        profile.station,
        profile.version,
        source.name,
        profile.trigger_mode,
        station.spool.dir,
    )
    return station


def make_setup(options: CaptureOptions) -> Callable[[ServiceContext], Awaitable[CaptureStation]]:
    """`setup` bound to command-line options, for `run_service` and `service_running`."""

    async def setup_with_options(ctx: ServiceContext) -> CaptureStation:
        return await setup(ctx, options)

    return setup_with_options
