"""Inference through outages and restarts (real NATS JetStream and S3, in-process backend).

- an S3 outage mid-stream loses no frame and answers none with an error;
- a restart replays ModelPublished: the newest production version that loads serves (fallback),
  a promoted candidate is not also its own shadow, and frames wait for the model meanwhile;
- station groups consume only their own stations;
- a recalibration made on one replica reaches every replica.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from linesight.common.bus import Bus
from linesight.common.embedded import SeaweedS3
from linesight.common.pb import common_pb2, events_pb2
from linesight.common.settings import Settings
from linesight.common.storage import ObjectStore, S3Config
from linesight.inference.api.bus import InspectionWorker, frames_filters
from linesight.inference.app import InferenceApp, InferenceConfig, Role
from tests.conftest import S3_ACCESS_KEY, S3_SECRET_KEY, seaweed_free_ports
from tests.integration.inference import helpers as h
from tests.unit.inference.standin import LOADER, make_export

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@dataclass
class Replica:
    app: InferenceApp
    worker: InspectionWorker

    async def stop(self) -> None:
        await self.worker.stop()
        await self.app.stop()


def config(tmp: Path, name: str, **kw: Any) -> InferenceConfig:
    base = {"model_loader": LOADER, "work_dir": tmp / f"work-{name}", "consumers": 8, "max_wait_ms": 5.0}
    base.update(kw)
    return InferenceConfig(**base)  # type: ignore[arg-type]


async def start(settings: Settings, store: ObjectStore, bus: Bus, cfg: InferenceConfig) -> Replica:
    app = InferenceApp(settings, store, bus, cfg)
    await app.start()
    worker = InspectionWorker(app, bus)
    await worker.start()
    return Replica(app, worker)


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    b = await Bus.connect(nats_url, "inference-resilience-test")
    await b.ensure_streams()
    yield b
    await b.close()


# --- 1. nothing lost in an outage ------------------------------------------------------------------
async def test_s3_outage_mid_stream_loses_no_frame(
    nats_url: str, bus: Bus, state_root: Path, tmp_path: Path
) -> None:
    """S3 down for 20 s while frames keep arriving: afterwards every frame has exactly one real
    result; none is dead-lettered (the old 5 deliveries x 1-4 s gave up after ~10 s)."""
    outage_s = 20.0
    s3_server = SeaweedS3(state_root / "s3", seaweed_free_ports(), S3_ACCESS_KEY, S3_SECRET_KEY)
    s3_server.start()
    try:
        s3 = S3Config(endpoint=s3_server.endpoint, access_key=S3_ACCESS_KEY, secret_key=S3_SECRET_KEY)
        settings = h.settings_for(nats_url, s3, tmp_path)
        store = h.store_for(s3)
        # Short backoff cap to keep the test fast; max_deliver at its default.
        cfg = config(tmp_path, "a", station_group=settings.plant, retry_base_s=0.5, retry_max_s=2.0)
        assert cfg.outage_budget_s() > 3 * outage_s
        replica = await start(settings, store, bus, cfg)
        refs = [await h.put_frame(store, h.png(20 + i)) for i in range(4)]
        await replica.app.install_directory(make_export(tmp_path / "m1", "v1"))
        sent: list[str] = []
        try:
            async with h.dead_letters(nats_url, settings) as dlq, h.collect(nats_url, settings) as results:
                await h.run_line(bus, settings, refs, sent, 1.5)
                await asyncio.to_thread(s3_server.stop)
                down_at = time.monotonic()
                await h.run_line(bus, settings, refs, sent, 3.0)  # frames keep coming meanwhile
                await asyncio.sleep(max(0.0, outage_s - (time.monotonic() - down_at)))
                await asyncio.to_thread(s3_server.start)
                await h.run_line(bus, settings, refs, sent, 1.0)
                await results.wait(len(sent), timeout_s=60)
                await asyncio.sleep(0.5)
        finally:
            await replica.stop()
        assert set(results.by_frame) == set(sent)
        assert results.count == len(sent)  # exactly one result per frame
        for frame_id in sent:
            r = results.one(frame_id)
            assert r.verdict == common_pb2.VERDICT_PASS and not r.error, r
            assert r.model_version == "v1"
        assert dlq == []
    finally:
        s3_server.stop()


# --- 2. a model that fails to load ---------------------------------------------------------------
async def test_restart_falls_back_to_the_newest_production_version_that_loads(
    nats_url: str, s3: Any, bus: Bus, tmp_path: Path
) -> None:
    settings = h.settings_for(nats_url, s3, tmp_path)
    store = h.store_for(s3)
    # History in the MODELS stream: v1 serves, then v2 is published and cannot load.
    await h.publish_model(bus, store, settings, make_export(tmp_path / "m1", "v1"), "v1")
    await h.publish_model(bus, store, settings, make_export(tmp_path / "m2", "v2", fail_load=True), "v2")
    ref = await h.put_frame(store, h.png(20))
    async with h.collect(nats_url, settings) as results:
        # Frames already wait on the bus when the (restarted) service comes up.
        frames = [h.frame_for(settings, f"s{i % 2}", ref) for i in range(6)]
        for f in frames:
            await h.publish_frame(bus, f)
        replica = await start(settings, store, bus, config(tmp_path, "a", station_group=settings.plant))
        try:
            await results.wait(len(frames), timeout_s=60)
            info = replica.app.model_info()
            assert info.model_version == "v1" and info.fallback
            assert info.failed_version == "v2" and "v2" in info.last_load_error
            assert "stand-in told to fail loading" in info.last_load_error
            assert replica.app.metrics._load_errors == {"production": "v2"}
            # A version that loads clears the error.
            await h.publish_model(bus, store, settings, make_export(tmp_path / "m3", "v3"), "v3")
            await replica.app.wait_for_version("v3")
            info = replica.app.model_info()
            assert info.last_load_error == "" and not info.fallback and info.failed_version == ""
            assert replica.app.metrics._load_errors == {}
        finally:
            await replica.stop()
    for f in frames:  # the model was loading, not missing: real results, no MODEL_UNAVAILABLE
        r = results.one(f.frame_id)
        assert r.verdict == common_pb2.VERDICT_PASS and r.model_version == "v1", r
    assert results.count == len(frames)


async def test_restart_with_only_broken_versions_answers_with_error_results(
    nats_url: str, s3: Any, bus: Bus, tmp_path: Path
) -> None:
    settings = h.settings_for(nats_url, s3, tmp_path)
    store = h.store_for(s3)
    await h.publish_model(bus, store, settings, make_export(tmp_path / "b", "vb", fail_load=True), "vb")
    replica = await start(settings, store, bus, config(tmp_path, "a", station_group=settings.plant))
    try:
        async with asyncio.timeout(30):
            while "vb" not in replica.app.model_info().last_load_error:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        info = replica.app.model_info()
        assert info.model_version == "" and not info.fallback and info.pending_version == ""
        async with h.collect(nats_url, settings) as results:
            frame = h.frame_for(settings, "s1", await h.put_frame(store, h.png(20)))
            await h.publish_frame(bus, frame)
            await results.wait(1)
        r = results.one(frame.frame_id)
        assert r.verdict == common_pb2.VERDICT_ERROR and r.error.startswith("MODEL_UNAVAILABLE:")
        assert "vb" in r.error
    finally:
        await replica.stop()


# --- 3. promotion ----------------------------------------------------------------------------------
async def test_restart_after_promotion_does_not_shadow_production_with_itself(
    nats_url: str, s3: Any, bus: Bus, tmp_path: Path
) -> None:
    settings = h.settings_for(nats_url, s3, tmp_path)
    store = h.store_for(s3)
    await h.publish_model(bus, store, settings, make_export(tmp_path / "p0", "p0"), "p0")
    await h.publish_model(bus, store, settings, make_export(tmp_path / "c1", "c1"), "c1", "candidate")
    # training's PromoteModel: the same version again, stage production
    await h.publish_model(bus, store, settings, make_export(tmp_path / "c1b", "c1"), "c1")
    replica = await start(settings, store, bus, config(tmp_path, "a", station_group=settings.plant))
    try:
        await replica.app.wait_for_version("c1")
        await asyncio.sleep(0.3)
        info = replica.app.model_info()
        assert info.model_version == "c1" and info.candidate_version == ""
        assert replica.app.models.candidate is None
        # A later candidate is shadow-scored as usual.
        await h.publish_model(bus, store, settings, make_export(tmp_path / "c2", "c2"), "c2", "candidate")
        await replica.app.wait_for_version("c2", Role.CANDIDATE)
        assert replica.app.model_info().candidate_version == "c2"
    finally:
        await replica.stop()


# --- 4. station groups -------------------------------------------------------------------------------
async def test_station_groups_consume_only_their_own_stations(
    nats_url: str, s3: Any, bus: Bus, tmp_path: Path
) -> None:
    settings = h.settings_for(nats_url, s3, tmp_path)
    store = h.store_for(s3)
    group_a = config(tmp_path, "a", station_group=f"{settings.plant}-a", stations=("l1/s1", "l1/s2"))
    group_b = config(tmp_path, "b", station_group=f"{settings.plant}-b", stations=("l2/s1", "s3"))
    a = await start(settings, store, bus, group_a)
    b = await start(settings, store, bus, group_b)
    assert frames_filters(b.app) == [
        f"linesight.{settings.plant}.*.s3.frame.captured",
        f"linesight.{settings.plant}.l2.s1.frame.captured",
    ]
    try:
        for r in (a, b):
            await r.app.install_directory(make_export(tmp_path / f"m-{r.app.config.station_group}", "v1"))
        ref = await h.put_frame(store, h.png(20))
        stations = [("l1", "s1"), ("l1", "s2"), ("l2", "s1"), ("l1", "s3"), ("l2", "s3")]
        async with h.collect(nats_url, settings) as results:
            frames = []
            for _ in range(3):
                for line, st in stations:
                    f = h.frame_for(settings, st, ref, line=line)
                    frames.append(f)
                    await h.publish_frame(bus, f)
            orphan = h.frame_for(settings, "s9", ref, line="l3")  # no group serves l3/s9
            await h.publish_frame(bus, orphan)
            await results.wait(len(frames))
            await asyncio.sleep(1.0)
    finally:
        await a.stop()
        await b.stop()
    assert results.count == len(frames) and orphan.frame_id not in results.by_frame
    for f in frames:
        r = results.one(f.frame_id)
        assert r.verdict == common_pb2.VERDICT_PASS and not r.error, r
    assert a.worker.published == 6 and b.worker.published == 9


# --- 5. recalibration reaches every replica --------------------------------------------------------
async def test_recalibration_on_one_replica_reaches_the_others(
    nats_url: str, s3: Any, bus: Bus, tmp_path: Path
) -> None:
    settings = h.settings_for(nats_url, s3, tmp_path)
    store = h.store_for(s3)
    cfg = config(tmp_path, "a", station_group=settings.plant)
    one = await start(settings, store, bus, cfg)
    two = await start(settings, store, bus, replace(cfg, work_dir=tmp_path / "work-b"))
    key = f"station:{settings.plant}/l1/s1"
    defect_key = f"station_defect:{settings.plant}/l1/s1"
    # Reference scores in the export, and a defect threshold (0.05) the session's good parts
    # (~0.13) sit above: only the station's recalibrated defect threshold lets them pass.
    reference = 1.0 / (1.0 + np.exp(-np.linspace(-6.0, -4.0, 200)))
    export = make_export(tmp_path / "m1", "v1", reference_good=reference, defect_threshold=0.05)
    try:
        await h.publish_model(bus, store, settings, export, "v1")
        for r in (one, two):
            await r.app.wait_for_version("v1")
        golden = [await h.put_frame(store, h.png(150 + i)) for i in range(3)]
        station = common_pb2.StationRef(plant=settings.plant, line="l1", station="s1")
        event = await one.app.recalibrate(station, golden)
        assert isinstance(event, events_pb2.RecalibrationPerformed) and event.new_threshold > 1.2
        assert event.defect_recalibrated and event.old_defect_threshold == pytest.approx(0.05)
        assert 0.3 < event.new_defect_threshold < 0.4
        async with asyncio.timeout(10):
            while two.app.model_info().thresholds.get(defect_key) != pytest.approx(  # noqa: ASYNC110
                event.new_defect_threshold
            ):
                await asyncio.sleep(0.05)
        assert two.app.model_info().thresholds[key] == pytest.approx(event.new_threshold)
        frame = h.frame_for(settings, "s1", await h.put_frame(store, h.png(150)))
        passed = (await two.app.inspect(frame)).result
        assert passed.verdict == common_pb2.VERDICT_PASS and passed.model_version == "v1", passed
        other = h.frame_for(settings, "s2", await h.put_frame(store, h.png(150)))
        assert (await two.app.inspect(other)).result.verdict == common_pb2.VERDICT_REVIEW
        # A replica started later gets it from the replay (and from the stored calibration).
        three = await start(settings, store, bus, replace(cfg, work_dir=tmp_path / "work-c"))
        try:
            await three.app.wait_for_version("v1")
            thresholds = three.app.model_info().thresholds
            assert thresholds[key] == pytest.approx(event.new_threshold)
            assert thresholds[defect_key] == pytest.approx(event.new_defect_threshold)
        finally:
            await three.stop()
    finally:
        await one.stop()
        await two.stop()
