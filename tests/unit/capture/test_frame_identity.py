"""One frame id per capture event: identical bytes on two captures are two frames, flagged, never merged."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from linesight.capture.app import audit as qa
from linesight.capture.app.sources import RawFrame
from linesight.capture.app.station import CaptureStation
from linesight.common.pb import events_pb2
from tests.unit.capture.helpers import FakeBus, FakeStore, textured, write_png
from tests.unit.capture.test_station import frames, profile


def _raw(image: np.ndarray, *, part_id: str) -> RawFrame:
    now = datetime.now(UTC)
    return RawFrame(
        trigger_source="software",
        triggered_at=now,
        acquired_at=now,
        image=image,
        pixel_format="Mono8",
        part_id=part_id,
    )


async def test_replay_longer_than_its_dataset_gives_one_frame_per_trigger(tmp_path: Path) -> None:
    d = tmp_path / "line"
    d.mkdir()
    for i in range(6):
        write_png(d / f"{i:02d}.png", textured(30 + i))
    bus, store = FakeBus(), FakeStore()
    async with CaptureStation(profile(), bus=bus, store=store, spool_dir=tmp_path / "spool") as st:
        report = await st.run_replay(d, ppm=None, limit=7, loop=True, drain_timeout_s=10)
    got = frames(bus)
    assert report.frames == 7 and report.published == 7 and len(got) == 7
    assert len({f.frame_id for f in got}) == 7  # 7 triggers, 7 frame ids
    assert len({f.content_sha256 for f in got}) == 6  # over 6 distinct images
    assert len(store.objects) == 6  # the frames bucket stays content-addressed
    first, seventh = got[0], got[6]
    assert seventh.content_sha256 == first.content_sha256 and seventh.image.key == first.image.key
    assert list(seventh.audit.reason_codes) == [qa.DUPLICATE] and not seventh.audit.passed
    assert seventh.audit.duplicate_of == first.frame_id


async def test_stuck_buffer_is_flagged_counted_and_alarmed_once_per_run(tmp_path: Path) -> None:
    image = textured(5)
    bus = FakeBus()
    async with CaptureStation(profile(), bus=bus, store=FakeStore(), spool_dir=tmp_path / "s") as st:
        for n, img in enumerate([image, image, image, textured(6), image]):
            await st.process(_raw(img, part_id=f"P{n}"))
        assert await st.drain(timeout_s=10)
        for _ in range(100):  # alarms travel through the control queue
            if bus.of_type("CaptureAlarm"):
                break
            await asyncio.sleep(0.02)
    got = frames(bus)
    assert [f.capture.part_id for f in got] == ["P0", "P1", "P2", "P3", "P4"]
    assert len({f.frame_id for f in got}) == 5
    assert [list(f.audit.reason_codes) for f in got] == [
        [],
        [qa.REPEATED_FRAME],
        [qa.REPEATED_FRAME],
        [],
        [qa.DUPLICATE],  # same bytes as P0, but not the previous capture
    ]
    assert got[1].audit.duplicate_of == got[0].frame_id
    alarms: list[events_pb2.CaptureAlarm] = bus.of_type("CaptureAlarm")
    assert [a.kind for a in alarms] == ["REPEATED_FRAME"]
    assert list(alarms[0].frame_ids) == [got[1].frame_id]
    assert st.audit_rejects[qa.REPEATED_FRAME] == 2


def test_same_part_same_bytes_same_instant_still_get_distinct_ids(tmp_path: Path) -> None:
    st = CaptureStation(profile(), bus=FakeBus(), store=FakeStore(), spool_dir=tmp_path / "s")
    raw = _raw(textured(1), part_id="P")
    assert len({st._frame_id(raw) for _ in range(3)}) == 3


async def test_trigger_refuses_bad_identifiers_before_acquiring(tmp_path: Path) -> None:
    from linesight.capture.app.sources import ReplaySource
    from linesight.common.limits import TextError

    d = tmp_path / "line"
    d.mkdir()
    write_png(d / "a.png", textured(1))
    bus = FakeBus()
    source = ReplaySource(d, loop=True)
    async with CaptureStation(
        profile(), bus=bus, store=FakeStore(), spool_dir=tmp_path / "s", source=source
    ) as st:
        for kwargs in (
            {"part_id": "P\n1"},
            {"part_id": "x" * 201},
            {"batch": "B\x00"},
            {"extra": {"k": 5}},
            {"extra": {"k\n": "v"}},
        ):
            try:
                await st.trigger(**kwargs)  # type: ignore[arg-type]
            except TextError as exc:
                assert str(exc)
            else:
                raise AssertionError(f"accepted {kwargs}")
        assert st.frames_captured == 0
        event, _ = await st.trigger(part_id="P-1", extra={"lot": "7"})
        assert event.capture.part_id == "P-1" and st.frames_captured == 1
