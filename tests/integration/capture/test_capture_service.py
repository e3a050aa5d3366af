"""The capture service in-process on the session's real NATS and S3: gRPC Trigger, status, dataset replay."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from linesight.capture.app.config import CaptureOptions
from linesight.capture.app.profile import StationProfile
from linesight.capture.app.station import CaptureStation
from linesight.capture.service import make_setup
from linesight.common.bus import Bus
from linesight.common.clients.capture import CaptureClient
from linesight.common.grpcutil import NotFound
from linesight.common.identity.model import Forbidden, Unauthenticated
from linesight.common.pb import common_pb2, events_pb2
from linesight.common.service import service_running
from linesight.common.settings import Settings
from linesight.common.storage import ObjectStore, S3Config
from tests.unit.capture.helpers import textured, write_png

pytestmark = pytest.mark.integration


async def test_service_trigger_status_and_profile(
    tmp_path: Path, stack_settings: Settings, mint: Any
) -> None:
    line = tmp_path / "line"
    line.mkdir()
    for i in range(3):
        write_png(line / f"p{i}.png", textured(300 + i))
    profile = StationProfile(
        plant="svc",
        line="l1",
        station="s1",
        version="3",
        trigger_mode="software",
        source="replay",
        source_uri=str(line),
        spool_dir=str(tmp_path / "spool"),
    )
    profile.save(tmp_path / "station.yaml")
    options = CaptureOptions(profile=str(tmp_path / "station.yaml"), free_run=False)
    settings = stack_settings
    async with service_running("capture", make_setup(options), settings=settings) as svc:
        async with CaptureClient(settings.grpc_target("capture")) as anonymous:
            with pytest.raises(Unauthenticated):
                await anonymous.trigger("PART-76")
        reviewer = mint("reviewer@*/*", subject="rita")
        async with CaptureClient(settings.grpc_target("capture"), token=reviewer) as not_at_the_line:
            with pytest.raises(Forbidden):
                await not_at_the_line.trigger("PART-76")
        client = CaptureClient(
            settings.grpc_target("capture"), token=mint("service@svc/*", subject="plc", kind="service")
        )
        response = await client.trigger("PART-77", batch="B2", shift="A")
        frame = response.frame
        assert (
            frame.capture.part_id == "PART-77" and frame.capture.batch == "B2" and frame.capture.shift == "A"
        )
        assert frame.capture.profile_version == "3" and frame.trigger_source == "software"
        assert frame.audit.passed  # the trigger returns once spooled; delivery follows at once
        assert await svc.app.drain(timeout_s=10)
        status = await client.status()
        assert (
            status.frames_captured == 1 and status.frames_published == 1 and status.spool_depth == 0
        )  # refusals took none
        assert svc.app.status().frames_published == 1  # setup returns the station it serves
        prof = await client.profile()
        assert prof.version == "3" and prof.trigger_mode == "software"
        with pytest.raises(NotFound):
            await client.profile(common_pb2.StationRef(plant="svc", line="l1", station="other"))
        async with httpx.AsyncClient() as http:
            url = settings.http_url("capture") + "/capture/status"
            assert (await http.get(url)).status_code == 401
            body = (await http.get(url, headers={"Authorization": f"Bearer {reviewer}"})).json()
            assert body["frames_published"] == 1 and body["line_stopped"] is False
            metrics = (await http.get(settings.http_url("capture") + "/metrics")).text
            assert "linesight_capture_frames" in metrics
        await client.close()
    # the event is on the bus, with the image in S3
    bus = await Bus.connect(settings.nats_url, "capture-svc-test")
    msg = await bus.jetstream.get_last_msg("FRAMES", "linesight.svc.l1.s1.frame.captured")
    event = events_pb2.FrameCaptured.FromString(msg.data or b"")
    assert event.frame_id == frame.frame_id and msg.headers and msg.headers.get("traceparent")
    store = ObjectStore(S3Config.from_settings(settings))
    assert store.exists(event.image.bucket, event.image.key)
    await bus.close()


@pytest.mark.dataset
async def test_replay_real_dataset_at_a_rate(
    tmp_path: Path, stack_settings: Settings, datasets_dir: Path
) -> None:
    """The demo's call: replay magnetic_tile with manifest part ids, published on the real bus."""
    bus = await Bus.connect(stack_settings.nats_url, "capture-replay-test")
    await bus.ensure_streams()
    store = ObjectStore(S3Config.from_settings(stack_settings))
    await asyncio.to_thread(store.ensure_buckets)
    profile = StationProfile(plant="demo", line="l1", station="mt-cam-1")
    async with CaptureStation(profile, bus=bus, store=store, spool_dir=tmp_path / "spool") as station:
        report = await station.run_replay(datasets_dir / "magnetic_tile", ppm=300, limit=12, seed=1)
    await bus.close()
    assert report.frames == 12 and report.published == 12 and report.spool_depth == 0
    assert 100 <= report.achieved_ppm <= 400, report.achieved_ppm  # loose: shared cores
    assert len(set(report.frame_ids)) == 12  # one id per capture, never the content hash
