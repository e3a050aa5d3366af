"""CaptureStation with in-memory bus/store: bad input, spool policies, restart, drift, pacing."""

from __future__ import annotations

import asyncio
import itertools
import struct
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from linesight.capture.app import audit as qa
from linesight.capture.app.profile import StationProfile
from linesight.capture.app.station import CaptureStation, LineStopped
from linesight.capture.store.spool import DiskSpool
from linesight.common.pb import events_pb2
from tests.unit.capture.helpers import FakeBus, FakeStore, textured, write_png


def profile(**kw: Any) -> StationProfile:
    return StationProfile(
        plant="p1",
        line="l1",
        station="s1",
        version="7",
        camera_model="Sim",
        camera_serial="42",
        lighting_profile="ring-white",
        px_per_mm=12.5,
        **kw,
    )


def frames(bus: FakeBus) -> list[events_pb2.FrameCaptured]:
    return bus.of_type("FrameCaptured")


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG declaring a huge size: a decompression bomb stand-in (never decoded)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    body = struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    idat = zlib.compress(b"\x00" * 1000)
    idat_chunk = struct.pack(">I", len(idat)) + b"IDAT" + idat + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    iend = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return b"\x89PNG\r\n\x1a\n" + body + idat_chunk + iend


@pytest.fixture
def bad_folder(tmp_path: Path) -> Path:
    d = tmp_path / "line"
    d.mkdir()
    write_png(d / "a_good.png", textured(1))
    good = (d / "a_good.png").read_bytes()
    (d / "b_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 50)
    (d / "c_truncated.png").write_bytes(good[: len(good) // 2])
    _ok, jpg = cv2.imencode(".jpg", textured(2))
    (d / "d_truncated.jpg").write_bytes(jpg.tobytes()[:-600])
    sixteen = textured(3).astype(np.uint16) * 257
    _ok, buf16 = cv2.imencode(".png", sixteen)
    (d / "e_16bit.png").write_bytes(buf16.tobytes())
    (d / "f_empty.png").write_bytes(b"")
    (d / "g_bomb.png").write_bytes(png_header_only(20000, 20000))
    write_png(d / "h_good.png", textured(4))
    return d


async def test_bad_files_are_flagged_kept_and_the_station_keeps_running(
    tmp_path: Path, bad_folder: Path
) -> None:
    bus, store = FakeBus(), FakeStore()
    async with CaptureStation(profile(), bus=bus, store=store, spool_dir=tmp_path / "spool") as station:
        report = await station.run_replay(bad_folder, ppm=None, drain_timeout_s=10)
    assert report.frames == 8 and report.published == 8 and report.spool_depth == 0
    by_part = {f.capture.part_id: f for f in frames(bus)}
    assert by_part["a_good"].audit.passed and by_part["h_good"].audit.passed
    assert list(by_part["b_corrupt"].audit.reason_codes) == [qa.DECODE_ERROR]
    assert list(by_part["c_truncated"].audit.reason_codes) == [qa.TRUNCATED]
    assert list(by_part["d_truncated"].audit.reason_codes) == [qa.TRUNCATED]
    assert list(by_part["f_empty"].audit.reason_codes) == [qa.EMPTY]
    assert list(by_part["g_bomb"].audit.reason_codes) == [qa.TOO_LARGE]
    assert "20000x20000" in by_part["g_bomb"].capture.extra["audit_error"]
    sixteen = by_part["e_16bit"]
    assert sixteen.pixel_format == "Mono16" and list(sixteen.audit.reason_codes) == [qa.PIXEL_FORMAT]
    # every frame, flagged or not, is stored: nothing is dropped silently
    for f in frames(bus):
        data, meta = store.objects[f.image.key]
        assert f.content_sha256 == f.image.sha256 and len(data) == f.image.size_bytes
        assert f.frame_id != f.content_sha256
        assert meta["audit-passed"] == str(f.audit.passed).lower()
    # the 16-bit PNG is stored bit-exact (lossless), not rescaled to 8 bit
    assert store.objects[sixteen.image.key][0] == (bad_folder / "e_16bit.png").read_bytes()
    assert station.status().audit_rejects[qa.TRUNCATED] == 2


async def test_every_frame_carries_capture_standards(tmp_path: Path) -> None:
    d = tmp_path / "ds"
    (d / "img").mkdir(parents=True)
    write_png(d / "img" / "x.png", textured(8))
    (d / "manifest.csv").write_text(
        "image,label,mask,part_id,batch,station\nimg/x.png,good,,P-001,B7,cam-a\n"
    )
    bus = FakeBus()
    async with CaptureStation(
        profile(shift="night"), bus=bus, store=FakeStore(), spool_dir=tmp_path / "s"
    ) as st:
        await st.run_replay(d, ppm=None)
    (f,) = frames(bus)
    c = f.capture
    assert (c.station.plant, c.station.line, c.station.station) == ("p1", "l1", "s1")
    assert (c.camera_id, c.profile_version, c.part_id, c.batch, c.shift) == (
        "Sim 42",
        "7",
        "P-001",
        "B7",
        "night",
    )
    assert c.lighting_profile == "ring-white" and c.px_per_mm == 12.5 and c.captured_at.seconds > 0
    assert c.extra["source_station"] == "cam-a" and f.trigger_source == "replay"
    assert f.width == 160 and f.height == 120 and f.pixel_format == "Mono8"
    assert f.image.key == f"{f.content_sha256[:2]}/{f.content_sha256}.png" and f.image.bucket == "frames"


async def test_outage_spools_in_order_and_replays_after_restart(tmp_path: Path) -> None:
    d = tmp_path / "line"
    d.mkdir()
    for i in range(6):
        write_png(d / f"{i:02d}.png", textured(10 + i))
    bus, store = FakeBus(), FakeStore()
    store.down = True
    station = CaptureStation(profile(), bus=bus, store=store, spool_dir=tmp_path / "spool")
    report = await station.run_replay(d, ppm=None, drain_timeout_s=0)
    await station.stop(drain_timeout_s=0)
    assert report.frames == 6 and report.published == 0 and station.spool.depth == 6
    # a new process (new station object) on the same spool delivers everything, in order
    store.down = False
    bus2 = FakeBus()
    async with CaptureStation(profile(), bus=bus2, store=store, spool_dir=tmp_path / "spool") as again:
        assert await again.drain(timeout_s=10)
    assert [f.capture.part_id for f in frames(bus2)] == [f"{i:02d}" for i in range(6)]
    assert len({f.frame_id for f in frames(bus2)}) == 6


async def test_full_spool_drop_oldest_records_and_alarms(tmp_path: Path) -> None:
    d = tmp_path / "line"
    d.mkdir()
    for i in range(5):
        write_png(d / f"{i:02d}.png", textured(20 + i))
    bus, store = FakeBus(), FakeStore()
    store.down = True
    p = profile(spool_policy="drop_oldest", spool_max_frames=3)
    station = CaptureStation(p, bus=bus, store=store, spool_dir=tmp_path / "spool")
    await station.run_replay(d, ppm=None, drain_timeout_s=0)
    await asyncio.sleep(0.3)  # let the control loop publish the alarms
    assert station.spool.depth == 3 and station.frames_dropped == 2
    dropped = station.spool.dropped_records()
    assert len(dropped) == 2 and all(r.reason.startswith("spool full") for r in dropped)
    alarms = bus.of_type("CaptureAlarm")
    assert [a.kind for a in alarms] == ["FRAME_DROPPED", "FRAME_DROPPED"]
    assert {a.frame_ids[0] for a in alarms} == {r.frame_id for r in dropped}
    store.down = False
    assert await station.drain(timeout_s=10)
    await station.stop()
    # the in-flight (oldest) frame is never the one dropped; the newest frames survive
    assert [f.capture.part_id for f in frames(bus)][-2:] == ["03", "04"]


async def test_full_spool_stop_line_signals_and_resumes(tmp_path: Path) -> None:
    d = tmp_path / "line"
    d.mkdir()
    for i in range(4):
        write_png(d / f"{i:02d}.png", textured(30 + i))
    bus, store = FakeBus(), FakeStore()
    store.down = True
    signals: list[bool] = []
    stopped = asyncio.Event()

    def on_stop_line(flag: bool) -> None:
        signals.append(flag)
        if flag:
            stopped.set()

    p = profile(spool_policy="stop_line", spool_max_frames=2)
    station = CaptureStation(p, bus=bus, store=store, spool_dir=tmp_path / "spool", on_stop_line=on_stop_line)
    run = asyncio.create_task(station.run_replay(d, ppm=None, drain_timeout_s=10))
    await asyncio.wait_for(stopped.wait(), timeout=10)
    assert station.line_stopped and signals == [True] and station.status().alarm
    assert not run.done()  # acquisition waits: the frame in hand is not dropped
    store.down = False
    report = await asyncio.wait_for(run, timeout=20)
    await station.stop()
    assert report.frames == 4 and report.published == 4
    # stop/restart signals alternate (the line may stop again while the spool is refilled) and end restarted
    assert signals[0] is True and signals[-1] is False and all(a != b for a, b in itertools.pairwise(signals))
    kinds = [a.kind for a in bus.of_type("CaptureAlarm")]
    assert "SPOOL_FULL" in kinds and "STOP_LINE" in kinds


async def test_software_trigger_refuses_when_line_stopped(tmp_path: Path) -> None:
    d = tmp_path / "line"
    d.mkdir()
    write_png(d / "a.png", textured(40))
    from linesight.capture.app.sources import ReplaySource

    store = FakeStore()
    store.down = True
    st = CaptureStation(
        profile(spool_max_frames=1),
        bus=FakeBus(),
        store=store,
        spool_dir=tmp_path / "sp",
        source=ReplaySource(d, loop=True),
        trigger_wait_s=0.2,
    )
    await st.start()
    event, spooled = await st.trigger(part_id="P9", batch="B1")
    assert spooled and event.capture.part_id == "P9" and event.trigger_source == "software"
    with pytest.raises(LineStopped):
        await st.trigger(part_id="P10")
    store.down = False
    assert await st.drain(timeout_s=10)
    event, spooled = await st.trigger(part_id="P11")
    assert not spooled  # published within trigger_wait_s
    await st.stop()


async def test_replay_rate_is_close_to_the_target(tmp_path: Path) -> None:
    d = tmp_path / "line"
    d.mkdir()
    for i in range(3):
        write_png(d / f"{i}.png", textured(50 + i))
    async with CaptureStation(profile(), bus=FakeBus(), store=FakeStore(), spool_dir=tmp_path / "s") as st:
        report = await st.run_replay(d, ppm=600, limit=11, loop=True, jitter=0.2, seed=1)
    assert report.frames == 11
    # 10 intervals of 0.1 s: loosely checked (shared CI cores)
    assert 0.8 <= report.elapsed_s <= 3.0, report.elapsed_s
    assert 200 <= report.achieved_ppm <= 750, report.achieved_ppm


def test_spool_survives_reopen_and_quarantines_garbage(tmp_path: Path) -> None:
    s = DiskSpool(tmp_path, max_bytes=10_000, max_frames=10)
    a = s.put(events_pb2.FrameCaptured(frame_id="a").SerializeToString(), b"A" * 10, {"k": "v"})
    s.put(events_pb2.FrameCaptured(frame_id="b").SerializeToString(), b"B" * 10)
    (tmp_path / "0000000000000099.tmp").write_bytes(b"half")  # crashed mid-write
    again = DiskSpool(tmp_path, max_bytes=10_000, max_frames=10)
    assert again.depth == 2 and not list(tmp_path.glob("*.tmp"))
    first = again.oldest()
    assert first is not None and first.seq == a and first.payload == b"A" * 10 and first.header == {"k": "v"}
    again.remove(first.seq)
    (tmp_path / f"{first.seq + 1:016d}.frame").write_bytes(b"junk")
    from linesight.capture.store.spool import SpoolCorrupt

    with pytest.raises(SpoolCorrupt):
        again.oldest()
    assert (tmp_path / "corrupt").is_dir() and again.depth == 0
