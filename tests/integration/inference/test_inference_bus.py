"""Inference service through real NATS JetStream and S3 with the in-process backend."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import nats
import numpy as np
import pytest

from linesight.common import subjects
from linesight.common.bus import Bus
from linesight.common.pb import common_pb2, events_pb2
from linesight.common.storage import BUCKET_FRAMES, BUCKET_HEATMAPS, BUCKET_MODELS, ObjectStore
from linesight.inference.api.bus import InspectionWorker
from linesight.inference.app import InferenceApp, InferenceConfig, Role
from linesight.inference.app.inspection import result_event_id
from tests.integration.inference import helpers as h
from tests.unit.inference.standin import LOADER, make_export

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


class Service:
    def __init__(
        self, app: InferenceApp, worker: InspectionWorker, bus: Bus, store: ObjectStore, settings: Any
    ):
        self.app, self.worker, self.bus, self.store, self.settings = app, worker, bus, store, settings


@pytest.fixture
async def service(
    request: pytest.FixtureRequest, nats_url: str, s3: Any, tmp_path: Path
) -> AsyncIterator[Service]:
    settings = h.settings_for(nats_url, s3, tmp_path)
    store = h.store_for(s3)
    bus = await Bus.connect(nats_url, "inference-test")
    await bus.ensure_streams()
    overrides = getattr(request, "param", {})
    cfg = InferenceConfig(
        model_loader=LOADER,
        work_dir=tmp_path / "work",
        station_group=settings.plant,
        consumers=8,
        max_wait_ms=5.0,
        **overrides,
    )
    app = InferenceApp(settings, store, bus, cfg)
    await app.start()
    worker = InspectionWorker(app, bus)
    await worker.start()
    try:
        yield Service(app, worker, bus, store, settings)
    finally:
        await worker.stop()
        await app.stop()
        await bus.close()


async def test_frames_from_three_stations_get_qualified_results(service: Service, tmp_path: Path) -> None:
    await service.app.install_directory(make_export(tmp_path / "m1", "v1"))
    async with h.collect(service.bus.url, service.settings) as results:
        frames = []
        for i, station in enumerate(["s1", "s2", "s3"] * 2):
            value = 20 if i % 2 == 0 else 230  # dark = good part, bright = anomaly
            ref = await h.put_frame(service.store, h.png(value))
            frame = h.frame_for(service.settings, station, ref)
            frame.capture.px_per_mm = 4.0
            frames.append((frame, value))
            await h.publish_frame(service.bus, frame)
        await results.wait(len(frames))
        await asyncio.sleep(0.3)
    assert results.count == len(frames)  # exactly one result per frame
    for frame, value in frames:
        r = results.one(frame.frame_id)
        assert r.model_version == "v1" and r.taxonomy_version == "tx-1"
        assert r.capture.station.station == frame.capture.station.station
        assert r.capture.part_id == frame.capture.part_id
        if value == 20:
            assert r.verdict == common_pb2.VERDICT_PASS and r.disposition == common_pb2.DISPOSITION_PASS
            assert r.anomaly_score < 1.0
        else:
            assert r.verdict in (common_pb2.VERDICT_DEFECT, common_pb2.VERDICT_REVIEW)
            assert r.disposition != common_pb2.DISPOSITION_PASS and r.anomaly_score > 1.0
            assert len(r.regions) >= 1
        assert {"fetch", "preprocess", "model", "decision"} <= set(r.stage_ms)
        assert r.latency_ms > 0
        assert r.heatmap.bucket == BUCKET_HEATMAPS
        assert service.store.exists(BUCKET_HEATMAPS, r.heatmap.key)


async def test_audit_flagged_frame_goes_to_review(service: Service, tmp_path: Path) -> None:
    await service.app.install_directory(make_export(tmp_path / "m1", "v1"))
    async with h.collect(service.bus.url, service.settings) as results:
        ref = await h.put_frame(service.store, h.png(20))
        frame = h.frame_for(service.settings, "s1", ref, audit_passed=False)
        await h.publish_frame(service.bus, frame)
        await results.wait(1)
    r = results.one(frame.frame_id)
    assert r.verdict == common_pb2.VERDICT_REVIEW and r.disposition == common_pb2.DISPOSITION_REVIEW


@pytest.mark.parametrize("service", [{"stations": ("l1/s1", "l1/s2")}], indirect=True)
async def test_bad_inputs_get_error_results_and_service_keeps_running(
    service: Service, tmp_path: Path
) -> None:
    settings, store = service.settings, service.store
    async with h.collect(service.bus.url, settings) as results:
        # 1. no model at all yet
        no_model = h.frame_for(settings, "s1", await h.put_frame(store, h.png(20)))
        await h.publish_frame(service.bus, no_model)
        await results.wait(1)
        # 2. a model that fails to load (published through the bus)
        broken = make_export(tmp_path / "broken", "v-broken", fail_load=True)
        await h.publish_model(service.bus, store, settings, broken, "v-broken")
        async with asyncio.timeout(30):
            while "v-broken" not in service.app.models.last_error:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        load_failed = h.frame_for(settings, "s1", await h.put_frame(store, h.png(20)))
        await h.publish_frame(service.bus, load_failed)
        await results.wait(2)
        # 3. then a good model; the bad frames below must not stop it
        await h.publish_model(service.bus, store, settings, make_export(tmp_path / "m1", "v1"), "v1")
        await service.app.wait_for_version("v1")
        garbage = h.frame_for(settings, "s1", await h.put_frame(store, b"\x89PNG\r\n\x1a\nnot really a png"))
        missing = h.frame_for(settings, "s2", common_pb2.ObjectRef(bucket=BUCKET_FRAMES, key="test/nope.png"))
        unknown = h.frame_for(settings, "s9", await h.put_frame(store, h.png(20)))
        good = h.frame_for(settings, "s2", await h.put_frame(store, h.png(20)))
        for f in (unknown, garbage, missing, good):
            await h.publish_frame(service.bus, f)
        await results.wait(5)
        await asyncio.sleep(0.5)
    # s9 belongs to no station of this group: its frames are not even delivered here (the group
    # serving s9 answers them), so nothing is published for it by this group.
    assert unknown.frame_id not in results.by_frame
    # Asked directly (gRPC Inspect), it is an error result with an event id of its own, which can
    # never shadow the real result of the group serving s9 (JetStream de-duplicates by event id).
    direct = (await service.app.inspect(unknown)).result
    assert direct.verdict == common_pb2.VERDICT_ERROR and direct.error.startswith("UNKNOWN_STATION:")
    assert direct.meta.event_id != result_event_id(unknown)
    expected = {
        no_model.frame_id: "MODEL_UNAVAILABLE",
        load_failed.frame_id: "MODEL_UNAVAILABLE",
        garbage.frame_id: "UNDECODABLE_IMAGE",
        missing.frame_id: "IMAGE_NOT_FOUND",
    }
    for frame_id, code in expected.items():
        r = results.one(frame_id)
        assert r.verdict == common_pb2.VERDICT_ERROR, (code, r)
        assert r.disposition == common_pb2.DISPOSITION_REVIEW
        assert r.error.startswith(code + ":"), r.error
    assert "v-broken" in results.one(load_failed.frame_id).error
    assert results.one(good.frame_id).verdict == common_pb2.VERDICT_PASS
    assert results.one(good.frame_id).model_version == "v1"
    assert results.count == 5
    info = service.app.model_info()  # the broken version is history once v1 serves
    assert info.model_version == "v1" and info.last_load_error == "" and not info.fallback


async def test_hot_swap_under_load_scores_every_frame_exactly_once(service: Service, tmp_path: Path) -> None:
    settings, store, bus = service.settings, service.store, service.bus
    await h.publish_model(bus, store, settings, make_export(tmp_path / "m1", "v1", delay_s=0.01), "v1")
    await service.app.wait_for_version("v1")
    refs = [await h.put_frame(store, h.png(20 + (i % 5))) for i in range(8)]
    n = 120
    sent: list[str] = []
    async with h.collect(bus.url, settings) as results:
        for i in range(n):
            frame = h.frame_for(settings, f"s{i % 4}", refs[i % len(refs)])
            sent.append(frame.frame_id)
            await h.publish_frame(bus, frame)
            if i == n // 3:
                await h.publish_model(bus, store, settings, make_export(tmp_path / "m2", "v2"), "v2")
            await asyncio.sleep(0.005)
        await service.app.wait_for_version("v2")
        late = h.frame_for(settings, "s0", refs[0])
        await h.publish_frame(bus, late)
        await results.wait(n + 1, timeout_s=120)
        await asyncio.sleep(0.5)
    assert set(results.by_frame) == {*sent, late.frame_id}
    assert results.count == n + 1  # none dropped, none scored twice
    versions = [results.one(f).model_version for f in sent]
    assert set(versions) == {"v1", "v2"}
    assert all(results.one(f).verdict == common_pb2.VERDICT_PASS for f in sent)
    assert results.one(late.frame_id).model_version == "v2"


async def test_shadow_candidate_results_only_on_shadow_subject(service: Service, tmp_path: Path) -> None:
    settings, store, bus = service.settings, service.store, service.bus
    await service.app.install_directory(make_export(tmp_path / "m1", "v1"))
    await h.publish_model(
        bus, store, settings, make_export(tmp_path / "c", "cand", gain=3.0), "cand", "candidate"
    )
    await service.app.wait_for_version("cand", Role.CANDIDATE)
    async with h.collect(bus.url, settings) as results:
        frames = [h.frame_for(settings, "s1", await h.put_frame(store, h.png(60))) for _ in range(4)]
        for f in frames:
            await h.publish_frame(bus, f)
        await results.wait(4)
        async with asyncio.timeout(20):
            while len(results.shadow) < 4:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    for f in frames:
        assert results.one(f.frame_id).model_version == "v1"
        assert results.one(f.frame_id).verdict == common_pb2.VERDICT_PASS
        assert not results.one(f.frame_id).shadow
    assert {r.frame_id for r in results.shadow} == {f.frame_id for f in frames}
    assert all(r.shadow and r.model_version == "cand" for r in results.shadow)
    assert all(r.verdict != common_pb2.VERDICT_PASS for r in results.shadow)  # gain 3 -> anomalous
    info = service.app.model_info()
    assert info.model_version == "v1" and info.candidate_version == "cand"
    # Promoting the candidate makes it production.
    await h.publish_model(bus, store, settings, make_export(tmp_path / "c2", "cand", gain=3.0), "cand")
    await service.app.wait_for_version("cand")
    assert service.app.models.candidate is None


async def test_recalibration_moves_the_station_threshold(service: Service, tmp_path: Path) -> None:
    settings, store = service.settings, service.store
    await service.app.install_directory(make_export(tmp_path / "m1", "v1"))
    # A brighter session: good parts now score ~1.25 on the model's own threshold, over the line at
    # which PatchCore alone sends a frame the head calls good to review (decide.ANOMALY_ALONE).
    golden = [await h.put_frame(store, h.png(160 + i)) for i in range(5)]
    frame = h.frame_for(settings, "s1", await h.put_frame(store, h.png(160)))
    before = (await service.app.inspect(frame)).result
    assert before.verdict != common_pb2.VERDICT_PASS
    station = common_pb2.StationRef(plant=settings.plant, line="l1", station="s1")
    event = await service.app.recalibrate(station, golden)
    assert isinstance(event, events_pb2.RecalibrationPerformed)
    assert event.golden_frames == 5 and event.old_threshold == 1.0 and event.new_threshold > 1.2
    # this export has no reference scores: the defect threshold stays the model's own, and says so
    assert not event.defect_recalibrated
    assert event.old_defect_threshold == event.new_defect_threshold == pytest.approx(0.5)
    assert f"station_defect:{settings.plant}/l1/s1" not in service.app.model_info().thresholds
    frame2 = h.frame_for(settings, "s1", await h.put_frame(store, h.png(160)))
    after = (await service.app.inspect(frame2)).result
    assert after.verdict == common_pb2.VERDICT_PASS and after.anomaly_score < 1.0
    other = h.frame_for(settings, "s2", await h.put_frame(store, h.png(160)))
    assert (await service.app.inspect(other)).result.verdict != common_pb2.VERDICT_PASS  # per station
    # A restarted service finds the calibration again.
    app2 = InferenceApp(settings, store, None, replace(service.app.config, station_group="x"))
    await app2.start()
    try:
        await app2.install_directory(make_export(tmp_path / "m1b", "v1"))
        assert app2.model_info().thresholds["station:" + f"{settings.plant}/l1/s1"] == pytest.approx(
            event.new_threshold
        )
    finally:
        await app2.stop()


async def test_recalibration_moves_the_station_defect_threshold(service: Service, tmp_path: Path) -> None:
    """An export with reference scores: the station's defect threshold moves by the engine's rule,
    reaches the bus and the store, and decides that station's frames only."""
    settings, store = service.settings, service.store
    reference = 1.0 / (1.0 + np.exp(-np.linspace(-6.0, -4.0, 200)))  # training-side good: 0.3-1.8 %
    export = make_export(tmp_path / "m1", "v1", reference_good=reference, defect_threshold=0.05)
    await service.app.install_directory(export)
    station = common_pb2.StationRef(plant=settings.plant, line="l1", station="s1")
    # A brighter session: good parts score ~0.13 defect probability, above the model's 0.05.
    golden = [await h.put_frame(store, h.png(150 + i)) for i in range(5)]
    nc = await nats.connect(service.bus.url)
    published: list[events_pb2.RecalibrationPerformed] = []

    async def on_event(msg: Any) -> None:
        published.append(events_pb2.RecalibrationPerformed.FromString(msg.data))

    subject = subjects.station_subject(settings.plant, "l1", "s1", subjects.MODEL_RECALIBRATED)
    await nc.subscribe(subject, cb=on_event)
    try:
        event = await service.app.recalibrate(station, golden)
        async with asyncio.timeout(10):
            while not published:  # noqa: ASYNC110 - arrives by callback
                await asyncio.sleep(0.05)
    finally:
        await nc.close()
    assert published[0] == event
    assert event.defect_recalibrated and event.old_defect_threshold == pytest.approx(0.05)
    assert 0.3 < event.new_defect_threshold < 0.4 and event.defect_quantile == 0.75
    assert event.defect_observed_shift_logit > event.defect_shift_logit > 0.0 < event.defect_noise_logit
    key = f"{settings.plant}/l1/s1"
    assert service.app.model_info().thresholds["station_defect:" + key] == pytest.approx(
        event.new_defect_threshold
    )
    # s1: 0.125 is below the station's threshold -> pass; s2: the model's own 0.05 -> review
    after = (
        await service.app.inspect(h.frame_for(settings, "s1", await h.put_frame(store, h.png(150))))
    ).result
    assert after.verdict == common_pb2.VERDICT_PASS and after.model_version == "v1", after
    other = (
        await service.app.inspect(h.frame_for(settings, "s2", await h.put_frame(store, h.png(150))))
    ).result
    assert other.verdict == common_pb2.VERDICT_REVIEW
    assert other.review_reason == "defect without a confident class" and other.model_version == "v1"
    # stored in the format that holds both values; a restarted service finds both again
    stored = json.loads(await store.aget_bytes(BUCKET_MODELS, f"{settings.product}/calibration/v1.json"))
    assert stored["stations"][key] == pytest.approx(event.new_threshold)
    assert stored["defect_thresholds"][key] == pytest.approx(event.new_defect_threshold)
    app2 = InferenceApp(settings, store, None, replace(service.app.config, station_group="x"))
    await app2.start()
    try:
        await app2.install_directory(export)
        thresholds = app2.model_info().thresholds
        assert thresholds["station_defect:" + key] == pytest.approx(event.new_defect_threshold)
        assert thresholds["station:" + key] == pytest.approx(event.new_threshold)
    finally:
        await app2.stop()
