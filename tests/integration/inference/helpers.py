"""Shared helpers of the inference integration tests: a plant per test, frames, result capture."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import nats
import numpy as np

from linesight.common import subjects
from linesight.common.bus import Bus
from linesight.common.events import new_meta
from linesight.common.pb import common_pb2, events_pb2
from linesight.common.settings import Settings
from linesight.common.storage import BUCKET_FRAMES, BUCKET_MODELS, ObjectStore, S3Config
from linesight.inference.store.objects import pack_export


def png(value: int, size: int = 96) -> bytes:
    img = np.full((size, size), value, dtype=np.uint8)
    img[10:20, 10:20] = min(255, value + 40)
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return bytes(buf)


def settings_for(nats_url: str, s3: Any, tmp: Path) -> Settings:
    return Settings(
        plant="p" + uuid.uuid4().hex[:8],
        line="l1",
        station="s1",
        product="widget",
        nats_url=nats_url,
        s3_endpoint=s3.endpoint,
        s3_access_key=s3.access_key,
        s3_secret_key=s3.secret_key,
        state_dir=tmp / "state",
        log_json=False,
    )


def store_for(s3: Any) -> ObjectStore:
    store = ObjectStore(S3Config(endpoint=s3.endpoint, access_key=s3.access_key, secret_key=s3.secret_key))
    store.ensure_buckets()
    return store


def frame_for(
    settings: Settings,
    station: str,
    ref: common_pb2.ObjectRef,
    *,
    line: str = "l1",
    audit_passed: bool = True,
) -> events_pb2.FrameCaptured:
    frame = events_pb2.FrameCaptured(meta=new_meta("capture"), frame_id=uuid.uuid4().hex, image=ref)
    frame.capture.station.CopyFrom(common_pb2.StationRef(plant=settings.plant, line=line, station=station))
    frame.capture.part_id = frame.frame_id[:8]
    frame.audit.passed = audit_passed
    frame.triggered_at.FromDatetime(datetime.now(UTC))
    return frame


async def put_frame(store: ObjectStore, data: bytes) -> common_pb2.ObjectRef:
    # A unique key per frame: content addressing would share keys between equal test images.
    return await store.aput_bytes(BUCKET_FRAMES, f"test/{uuid.uuid4().hex}.png", data, "image/png")


async def publish_frame(bus: Bus, frame: events_pb2.FrameCaptured) -> None:
    st = frame.capture.station
    await bus.publish(subjects.station_subject(st.plant, st.line, st.station, subjects.FRAME_CAPTURED), frame)


async def publish_model(
    bus: Bus,
    store: ObjectStore,
    settings: Settings,
    export_dir: Path,
    version: str,
    stage: str = "production",
) -> events_pb2.ModelPublished:
    key = f"{settings.product}/{version}.tar.gz"
    ref = await store.aput_bytes(BUCKET_MODELS, key, pack_export(export_dir), "application/gzip")
    event = events_pb2.ModelPublished(
        meta=new_meta("training"), model_version=version, product=settings.product, artifact=ref, stage=stage
    )
    await bus.publish(subjects.plant_subject(settings.plant, subjects.MODEL_PUBLISHED), event)
    return event


@dataclass
class Results:
    by_frame: dict[str, list[events_pb2.InspectionResult]] = field(default_factory=dict)
    shadow: list[events_pb2.InspectionResult] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.by_frame.values())

    async def wait(self, n: int, timeout_s: float = 60.0) -> None:
        async with asyncio.timeout(timeout_s):
            while len(self.by_frame) < n:  # noqa: ASYNC110 - polled, results arrive by callback
                await asyncio.sleep(0.05)

    def one(self, frame_id: str) -> events_pb2.InspectionResult:
        return self.by_frame[frame_id][0]


@asynccontextmanager
async def collect(nats_url: str, settings: Settings) -> AsyncIterator[Results]:
    """Every InspectionResult (and shadow result) of the test's plant, as it is published."""
    nc = await nats.connect(nats_url)
    out = Results()

    async def on_result(msg: Any) -> None:
        r = events_pb2.InspectionResult.FromString(msg.data)
        out.by_frame.setdefault(r.frame_id, []).append(r)

    async def on_shadow(msg: Any) -> None:
        out.shadow.append(events_pb2.InspectionResult.FromString(msg.data))

    await nc.subscribe(
        subjects.station_pattern(subjects.INSPECTION_RESULT, plant=settings.plant), cb=on_result
    )
    await nc.subscribe(
        subjects.station_pattern(subjects.INSPECTION_SHADOW, plant=settings.plant), cb=on_shadow
    )
    try:
        yield out
    finally:
        await nc.close()


@asynccontextmanager
async def dead_letters(nats_url: str, settings: Settings) -> AsyncIterator[list[Any]]:
    """Every dead letter of the test's plant (any consumer), as it is published."""
    nc = await nats.connect(nats_url)
    out: list[Any] = []

    async def on_msg(msg: Any) -> None:
        out.append(msg)

    await nc.subscribe(f"linesight.dlq.linesight.{settings.plant}.>", cb=on_msg)
    try:
        yield out
    finally:
        await nc.close()


async def run_line(
    bus: Bus,
    settings: Settings,
    refs: list[common_pb2.ObjectRef],
    sent: list[str],
    seconds: float,
    stations: tuple[str, ...] = ("s1", "s2"),
    interval_s: float = 0.25,
) -> None:
    """Stations triggering every `interval_s` for `seconds`; frame ids are appended to `sent`."""
    end = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < end:
        for st in stations:
            frame = frame_for(settings, st, refs[len(sent) % len(refs)])
            sent.append(frame.frame_id)
            await publish_frame(bus, frame)
        await asyncio.sleep(interval_s)
