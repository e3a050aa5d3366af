"""No frame lost: S3 and then NATS stop mid-run; afterwards every frame is in S3 and on the bus exactly once.

The session-wide fixtures' servers must not be stopped, so this test starts its own NATS and
SeaweedFS S3 on free ports.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from linesight.capture.app.profile import StationProfile
from linesight.capture.app.station import CaptureStation
from linesight.common.bus import Bus
from linesight.common.embedded import NatsServer, SeaweedS3, free_port
from linesight.common.pb import events_pb2
from linesight.common.storage import ObjectStore, S3Config
from tests.conftest import S3_ACCESS_KEY, S3_SECRET_KEY, seaweed_free_ports
from tests.unit.capture.helpers import textured, write_png

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FRAMES = 36


@pytest.fixture
async def own_stack(tmp_path: Path) -> AsyncIterator[tuple[NatsServer, SeaweedS3]]:
    nats = NatsServer(tmp_path / "nats", free_port(also_free=(4000,)))
    s3 = SeaweedS3(tmp_path / "s3", seaweed_free_ports(), S3_ACCESS_KEY, S3_SECRET_KEY)
    await asyncio.gather(asyncio.to_thread(nats.start), asyncio.to_thread(s3.start))
    try:
        yield nats, s3
    finally:
        await asyncio.gather(asyncio.to_thread(nats.stop), asyncio.to_thread(s3.stop))


async def wait_until(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_s3_then_nats_outage_every_frame_arrives_exactly_once(
    tmp_path: Path, own_stack: tuple[NatsServer, SeaweedS3]
) -> None:
    nats, s3 = own_stack
    line = tmp_path / "line"
    line.mkdir()
    for i in range(FRAMES):
        write_png(line / f"part-{i:03d}.png", textured(1000 + i))
    expected = {hashlib.sha256((line / f"part-{i:03d}.png").read_bytes()).hexdigest() for i in range(FRAMES)}
    assert len(expected) == FRAMES

    bus = await Bus.connect(nats.url, "capture-outage-test", publish_timeout_s=2.0)
    await bus.ensure_streams()
    store = ObjectStore(S3Config(s3.endpoint, S3_ACCESS_KEY, S3_SECRET_KEY), timeout_s=3.0, retries=0)
    store.ensure_buckets()
    profile = StationProfile(plant="pt", line="l1", station="outage")
    station = CaptureStation(
        profile, bus=bus, store=store, spool_dir=tmp_path / "spool", deliver_timeout_s=5.0
    )
    await station.start()
    run = asyncio.create_task(station.run_replay(line, ppm=400, jitter=0.1, seed=3, drain_timeout_s=0))
    max_depth = 0

    def captured(n: int) -> Callable[[], bool]:
        return lambda: station.frames_captured >= n or run.done()

    try:
        await wait_until(captured(4), 60, "first frames")
        await asyncio.to_thread(s3.stop)  # 1. S3 goes away
        await wait_until(captured(10), 60, "frames during the S3 outage")
        max_depth = max(max_depth, station.spool.depth)
        assert station.spool.depth >= 3, "frames must wait in the spool while S3 is down"
        await asyncio.to_thread(nats.stop)  # 2. then NATS as well
        await wait_until(captured(16), 60, "frames while both are down")
        await asyncio.to_thread(s3.start)  # 3. S3 back, NATS still down: frames still spooled
        await wait_until(captured(22), 60, "frames while NATS is down")
        max_depth = max(max_depth, station.spool.depth)
        assert station.spool.depth >= 3
        await asyncio.to_thread(nats.start)  # 4. NATS back
        report = await asyncio.wait_for(run, timeout=120)
        assert await station.drain(timeout_s=120), f"spool still holds {station.spool.depth} frames"
    finally:
        await station.stop(drain_timeout_s=0)

    assert report.frames == FRAMES and station.frames_published == FRAMES
    # on the bus: every frame exactly once (by content hash), in capture order
    info = await bus.jetstream.stream_info("FRAMES")
    events: list[events_pb2.FrameCaptured] = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await bus.jetstream.get_msg("FRAMES", seq)
        if msg.subject == station.subject:
            events.append(events_pb2.FrameCaptured.FromString(msg.data or b""))
    counts = Counter(e.content_sha256 for e in events)
    assert set(counts) == expected and all(n == 1 for n in counts.values()), counts.most_common(3)
    assert len({e.frame_id for e in events}) == FRAMES
    assert [e.capture.part_id for e in events] == [f"part-{i:03d}" for i in range(FRAMES)]
    # in S3: every frame's lossless PNG, content-addressed, with its capture metadata
    for e in events:
        data = store.get_bytes(e.image.bucket, e.image.key)
        assert hashlib.sha256(data).hexdigest() == e.content_sha256
    meta = store.metadata(events[0].image.bucket, events[0].image.key)
    assert meta["part-id"] == "part-000" and meta["station"] == "outage" and meta["audit-passed"] == "true"
    await bus.close()
    print(f"max spool depth during the outage: {max_depth}")
