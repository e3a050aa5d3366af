"""Inference service on the real Triton server from nvidia-pytriton (python-backend model)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from linesight.common.bus import Bus
from linesight.common.embedded.process import free_port
from linesight.common.embedded.triton import TritonServer
from linesight.common.pb import common_pb2
from linesight.inference.api.bus import InspectionWorker
from linesight.inference.app import BackendKind, InferenceApp, InferenceConfig, TritonDownPolicy
from linesight.inference.app.bundle import ModelLoadError
from linesight.inference.app.triton_repo import model_name, versions
from tests.integration.inference import helpers as h
from tests.unit.inference.standin import LOADER, make_export

pytestmark = [pytest.mark.integration, pytest.mark.triton, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    root = tmp_path_factory.mktemp("triton")
    server = TritonServer(root, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    server.start()
    yield server
    server.stop()


def config(triton: TritonServer, kind: BackendKind, tmp: Path, **kw: Any) -> InferenceConfig:
    return InferenceConfig(
        backend=kind,
        triton_url=triton.grpc_url,
        triton_http_url=triton.http_url,
        triton_model_repository=triton.model_repository,
        model_loader=LOADER,
        work_dir=tmp / "work",
        consumers=8,
        **kw,
    )


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    b = await Bus.connect(nats_url, "inference-triton-test")
    await b.ensure_streams()
    yield b
    await b.close()


@pytest.mark.parametrize("kind", [BackendKind.TRITON_GRPC, BackendKind.TRITON_HTTP, BackendKind.TRITON_SHM])
async def test_frames_scored_on_triton_match_in_process(
    kind: BackendKind, triton: TritonServer, bus: Bus, nats_url: str, s3: Any, tmp_path: Path
) -> None:
    settings = h.settings_for(nats_url, s3, tmp_path)
    settings = settings.model_copy(update={"product": f"widget_{kind.value}"})
    store = h.store_for(s3)
    app = InferenceApp(settings, store, bus, config(triton, kind, tmp_path, station_group=settings.plant))
    await app.start()
    worker = InspectionWorker(app, bus)
    await worker.start()
    try:
        export = make_export(tmp_path / "m1", "v1", product=settings.product)
        await app.install_directory(export)
        assert app.model_info().backend == kind.value
        values = [20, 230, 40, 90, 10, 200]
        async with h.collect(nats_url, settings) as results:
            frames = []
            for i, v in enumerate(values):
                f = h.frame_for(settings, f"s{i % 3}", await h.put_frame(store, h.png(v)))
                frames.append(f)
                await h.publish_frame(bus, f)
            await results.wait(len(frames))
        # Reference: the same frames scored in-process.
        ref_app = InferenceApp(
            settings, store, None, InferenceConfig(model_loader=LOADER, work_dir=tmp_path / "w2")
        )
        await ref_app.start()
        await ref_app.install_directory(export)
        for f in frames:
            r = results.one(f.frame_id)
            expected = (await ref_app.inspect(f)).result
            assert r.model_version == "v1"
            assert r.verdict == expected.verdict and r.verdict != common_pb2.VERDICT_ERROR
            assert r.anomaly_score == pytest.approx(expected.anomaly_score, rel=1e-5)
            assert [c.defect_class for c in r.class_scores] == [c.defect_class for c in expected.class_scores]
        await ref_app.stop()
        assert results.count == len(frames)
    finally:
        await worker.stop()
        await app.stop()


async def test_hot_swap_and_broken_version_on_triton(
    triton: TritonServer, s3: Any, nats_url: str, tmp_path: Path
) -> None:
    settings = h.settings_for(nats_url, s3, tmp_path).model_copy(update={"product": "swap"})
    store = h.store_for(s3)
    app = InferenceApp(settings, store, None, config(triton, BackendKind.TRITON_GRPC, tmp_path))
    await app.start()
    try:
        name = model_name("swap")
        await app.install_directory(make_export(tmp_path / "m1", "v1", product="swap"))
        frame = h.frame_for(settings, "s1", await h.put_frame(store, h.png(20)))
        assert (await app.inspect(frame)).result.model_version == "v1"
        await app.install_directory(make_export(tmp_path / "m2", "v2", product="swap", gain=1.5))
        r2 = (await app.inspect(frame)).result
        assert r2.model_version == "v2"
        await app.inspect(frame)  # one more batch: the retired v1 is removed between batches
        assert list(versions(triton.model_repository, name).values()) == ["v2"]
        with pytest.raises(ModelLoadError):
            await app.install_directory(make_export(tmp_path / "bad", "v3", product="swap", fail_load=True))
        r3 = (await app.inspect(frame)).result
        assert r3.model_version == "v2" and r3.verdict != common_pb2.VERDICT_ERROR
    finally:
        await app.stop()


async def test_station_defect_threshold_recalibrated_on_triton(
    triton: TritonServer, s3: Any, nats_url: str, tmp_path: Path
) -> None:
    """Triton scores the golden frames; the reference scores come from the export directory the
    service unpacked, and the station's defect threshold applies to Triton's predictions."""
    settings = h.settings_for(nats_url, s3, tmp_path).model_copy(update={"product": "recal"})
    store = h.store_for(s3)
    app = InferenceApp(settings, store, None, config(triton, BackendKind.TRITON_GRPC, tmp_path))
    await app.start()
    try:
        reference = 1.0 / (1.0 + np.exp(-np.linspace(-6.0, -4.0, 200)))
        export = make_export(
            tmp_path / "m1", "v1", product="recal", reference_good=reference, defect_threshold=0.05
        )
        await app.install_directory(export)
        assert app.model_info().backend == BackendKind.TRITON_GRPC.value
        golden = [await h.put_frame(store, h.png(150 + i)) for i in range(5)]
        station = common_pb2.StationRef(plant=settings.plant, line="l1", station="s1")
        event = await app.recalibrate(station, golden)
        assert event.defect_recalibrated and event.old_defect_threshold == pytest.approx(0.05)
        assert 0.3 < event.new_defect_threshold < 0.4
        s1 = (await app.inspect(h.frame_for(settings, "s1", await h.put_frame(store, h.png(150))))).result
        assert s1.verdict == common_pb2.VERDICT_PASS and s1.model_version == "v1", s1
        s2 = (await app.inspect(h.frame_for(settings, "s2", await h.put_frame(store, h.png(150))))).result
        assert s2.verdict == common_pb2.VERDICT_REVIEW and s2.model_version == "v1"
    finally:
        await app.stop()


@pytest.mark.parametrize("policy", [TritonDownPolicy.FAILOVER, TritonDownPolicy.STOP])
async def test_triton_unreachable(policy: TritonDownPolicy, s3: Any, nats_url: str, tmp_path: Path) -> None:
    settings = h.settings_for(nats_url, s3, tmp_path)
    store = h.store_for(s3)
    dead = f"127.0.0.1:{free_port()}"
    cfg = InferenceConfig(
        backend=BackendKind.TRITON_GRPC,
        triton_url=dead,
        triton_model_repository=tmp_path / "repo",
        triton_down_policy=policy,
        model_loader=LOADER,
        work_dir=tmp_path / "work",
        triton_timeout_s=2.0,
    )
    app = InferenceApp(settings, store, None, cfg)
    await app.start()
    try:
        frame = h.frame_for(settings, "s1", await h.put_frame(store, h.png(20)))
        if policy == TritonDownPolicy.FAILOVER:
            await app.install_directory(make_export(tmp_path / "m1", "v1"))
            r = (await app.inspect(frame)).result
            assert r.verdict == common_pb2.VERDICT_PASS and r.model_version == "v1"
            assert app.model_info().backend == "in_process"
        else:
            with pytest.raises(ModelLoadError):
                await app.install_directory(make_export(tmp_path / "m1", "v1"))
            r = (await app.inspect(frame)).result
            assert r.verdict == common_pb2.VERDICT_ERROR and r.disposition == common_pb2.DISPOSITION_REVIEW
    finally:
        await app.stop()
    assert np.isfinite(r.anomaly_score)


@pytest.mark.parametrize("kind", [BackendKind.TRITON_GRPC, BackendKind.TRITON_HTTP, BackendKind.TRITON_SHM])
async def test_triton_restart_under_stop_policy_loses_no_frame(
    kind: BackendKind, bus: Bus, nats_url: str, s3: Any, tmp_path: Path
) -> None:
    """Triton down for 6 s mid-stream under policy `stop`: frames wait on the bus, and once Triton
    is back (without our model: it loads nothing by itself) every frame gets one real result."""
    server = TritonServer(
        tmp_path / "triton", http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()
    )
    server.start()
    settings = h.settings_for(nats_url, s3, tmp_path)
    store = h.store_for(s3)
    cfg = config(
        server,
        kind,
        tmp_path,
        station_group=settings.plant,
        triton_down_policy=TritonDownPolicy.STOP,
        triton_timeout_s=2.0,
        retry_base_s=0.5,
        retry_max_s=2.0,
    )
    app = InferenceApp(settings, store, bus, cfg)
    await app.start()
    worker = InspectionWorker(app, bus)
    await worker.start()
    sent: list[str] = []
    try:
        await app.install_directory(make_export(tmp_path / "m1", "v1"))
        refs = [await h.put_frame(store, h.png(20 + i)) for i in range(4)]
        async with h.dead_letters(nats_url, settings) as dlq, h.collect(nats_url, settings) as results:
            await h.run_line(bus, settings, refs, sent, 1.0)
            await asyncio.to_thread(server.stop)
            await h.run_line(bus, settings, refs, sent, 6.0)
            await asyncio.to_thread(server.start)
            await h.run_line(bus, settings, refs, sent, 1.0)
            await results.wait(len(sent), timeout_s=60)
            await asyncio.sleep(0.5)
        assert app.model_info().backend == kind.value
    finally:
        await worker.stop()
        await app.stop()
        server.stop()
    assert results.count == len(sent) and set(results.by_frame) == set(sent)
    for frame_id in sent:
        r = results.one(frame_id)
        assert r.verdict == common_pb2.VERDICT_PASS and not r.error and r.model_version == "v1", r
    assert dlq == []
