"""`linesight capture calibrate` on known-good frames, and a camera that drops out mid-run."""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2

from linesight.capture.app.profile import StationProfile
from linesight.capture.app.sources import RawFrame, SourceError
from linesight.capture.app.station import CaptureStation
from linesight.cli.cmd_capture import register, run_calibrate, run_init
from tests.unit.capture.helpers import FakeBus, FakeStore, textured, write_png


def build_parser() -> argparse.ArgumentParser:
    """Only the capture command (the full CLI also loads commands other engineers own)."""
    parser = argparse.ArgumentParser(prog="linesight")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_calibrate_writes_thresholds_under_a_new_profile_version(tmp_path: Path, capsys: Any) -> None:
    good = tmp_path / "good"
    good.mkdir()
    for i in range(12):
        write_png(good / f"g{i}.png", textured(200 + i))
    (good / "broken.png").write_bytes(b"not an image")
    profile_path = tmp_path / "station.yaml"
    parser = build_parser()
    assert run_init(parser.parse_args(["capture", "init-profile", "--out", str(profile_path)])) == 0
    args = parser.parse_args(["capture", "calibrate", "--profile", str(profile_path), "--frames", str(good)])
    assert run_calibrate(args) == 0
    out = capsys.readouterr().out
    assert "version 1 -> 2" in out and "known-good frames flagged under the new thresholds: 0" in out
    p = StationProfile.load(profile_path)
    assert p.version == "2" and p.audit.calibrated_from == 12 and p.audit.blur_min > 10.0
    # too few frames: clear error, exit 2, profile untouched
    few = tmp_path / "few"
    few.mkdir()
    write_png(few / "a.png", textured(1))
    args = parser.parse_args(["capture", "calibrate", "--profile", str(profile_path), "--frames", str(few)])
    assert run_calibrate(args) == 2
    assert "at least 10" in capsys.readouterr().err
    assert StationProfile.load(profile_path).version == "2"


class FlakyCamera:
    """Delivers, fails twice (cable pulled), then delivers again."""

    name = "flaky"

    def __init__(self) -> None:
        self.calls = 0

    async def open(self) -> None: ...

    async def acquire(self, trigger_source: str) -> RawFrame | None:
        self.calls += 1
        if self.calls in (2, 3):
            raise SourceError("camera gone")
        now = datetime.now(UTC)
        image = cv2.cvtColor(textured(self.calls), cv2.COLOR_GRAY2RGB)
        return RawFrame(
            trigger_source=trigger_source, triggered_at=now, acquired_at=now, image=image, pixel_format="RGB8"
        )

    def settings(self) -> dict[str, Any]:
        return {}

    def expected_settings(self) -> dict[str, Any]:
        return {}

    async def close(self) -> None: ...


async def test_camera_dropout_raises_one_alarm_and_capture_continues(tmp_path: Path) -> None:
    bus = FakeBus()
    p = StationProfile(plant="p", line="l", station="s", source="opencv")
    async with CaptureStation(
        p, bus=bus, store=FakeStore(), spool_dir=tmp_path / "s", source=FlakyCamera()
    ) as st:
        report = await st.run_free_run(limit=3)
        assert await st.drain(timeout_s=10)
        await asyncio.sleep(0.2)
    assert report.frames == 3
    assert [a.kind for a in bus.of_type("CaptureAlarm")] == ["CAMERA_LOST"]
    assert len(bus.of_type("FrameCaptured")) == 3
