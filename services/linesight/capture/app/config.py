"""How one capture process is told what to run: command-line options, the station profile, the spool.

    python -m linesight.capture --profile station.yaml            # source from the profile
    python -m linesight.capture --replay DATASET --ppm 120        # the line simulator

The profile path may also come from LINESIGHT_CAPTURE_PROFILE. Without a profile the station is
named by LINESIGHT_PLANT/LINE/STATION and replays `--replay`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from linesight.capture.app.profile import StationProfile
from linesight.common.settings import Settings


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
