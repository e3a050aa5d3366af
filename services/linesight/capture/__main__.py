"""`python -m linesight.capture`: one capture station as a service (gRPC Trigger, /capture/status).

    python -m linesight.capture --profile station.yaml            # source from the profile
    python -m linesight.capture --replay DATASET --ppm 120        # the line simulator

The profile path may also come from LINESIGHT_CAPTURE_PROFILE. Without a profile the station is
named by LINESIGHT_PLANT/LINE/STATION and replays `--replay`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from linesight.capture.api.grpc_api import register
from linesight.capture.api.http import status_router
from linesight.capture.app.profile import StationProfile
from linesight.capture.app.sources import ReplaySource, SourceError, make_source
from linesight.capture.app.station import CaptureStation
from linesight.common.service import ServiceContext, Setup, run_service
from linesight.common.settings import Settings

log = logging.getLogger("linesight.capture")


@dataclass
class CaptureOptions:
    profile: str = ""
    replay: str = ""
    ppm: float = 60.0
    jitter: float = 0.1
    loop: bool = True
    free_run: bool | None = None  # None: free-run when the profile says so, or when replaying


def load_profile(options: CaptureOptions, settings: Settings) -> StationProfile:
    path = options.profile or os.environ.get("LINESIGHT_CAPTURE_PROFILE", "")
    if path:
        profile = StationProfile.load(path)
    else:
        profile = StationProfile(plant=settings.plant, line=settings.line, station=settings.station)
    if options.replay:
        profile.source, profile.source_uri = "replay", options.replay
    return profile


def spool_dir_for(profile: StationProfile, settings: Settings) -> Path:
    if profile.spool_dir:
        return Path(profile.spool_dir)
    return settings.state_dir / "capture" / f"{profile.plant}-{profile.line}-{profile.station}" / "spool"


def make_setup(options: CaptureOptions) -> Setup:
    async def setup(ctx: ServiceContext) -> None:
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

    return setup


def parse_args(argv: Sequence[str] | None) -> CaptureOptions:
    parser = argparse.ArgumentParser(
        prog="python -m linesight.capture",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--profile", default="", help="station profile YAML")
    parser.add_argument("--replay", default="", help="replay this folder / dataset instead of a camera")
    parser.add_argument("--ppm", type=float, default=60.0, help="replay rate, parts per minute (default 60)")
    parser.add_argument(
        "--jitter", type=float, default=0.1, help="replay interval jitter share (default 0.1)"
    )
    parser.add_argument("--once", action="store_true", help="replay the dataset once instead of looping")
    parser.add_argument("--triggered", action="store_true", help="no free-run: wait for gRPC Trigger calls")
    a = parser.parse_args(argv)
    if a.ppm <= 0:
        parser.error("--ppm must be positive")
    return CaptureOptions(
        profile=a.profile,
        replay=a.replay,
        ppm=a.ppm,
        jitter=a.jitter,
        loop=not a.once,
        free_run=False if a.triggered else None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    asyncio.run(run_service("capture", make_setup(options)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
