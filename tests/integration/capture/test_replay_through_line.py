"""A replay longer than its dataset, through capture -> inference -> MES: one result and one
disposition per trigger, repeated images flagged and sent to review, never merged."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import pytest
import uvicorn

from linesight.capture.app.profile import StationProfile
from linesight.capture.app.station import CaptureStation
from linesight.common.bus import Bus
from linesight.common.embedded import free_port
from linesight.common.service import service_running
from linesight.common.settings import Settings
from linesight.common.storage import ObjectStore, S3Config
from linesight.inference.service import setup as inference_setup
from linesight.mes.api.receiver import DispositionLog, create_receiver_app
from linesight.mes.app.dispatch import DispatchConfig
from linesight.mes.service import MesOptions, make_setup
from tests.unit.capture.helpers import textured, write_png
from tests.unit.inference.standin import LOADER, make_export

pytestmark = pytest.mark.integration

IMAGES, TRIGGERS = 4, 10


async def test_replay_past_its_dataset_gives_one_disposition_per_trigger(
    stack_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in [k for k in os.environ if k.startswith("LINESIGHT_INFERENCE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("LINESIGHT_INFERENCE_MODEL_LOADER", LOADER)
    monkeypatch.setenv("LINESIGHT_INFERENCE_WORK_DIR", str(tmp_path / "work"))
    port = free_port()
    settings = stack_settings.model_copy(
        update={"plant": f"rp{uuid.uuid4().hex[:8]}", "mes_endpoint": f"http://127.0.0.1:{port}/dispositions"}
    )
    line = tmp_path / "line"
    line.mkdir()
    for i in range(IMAGES):
        write_png(line / f"tile-{i}.png", textured(200 + i, (96, 96)))
    log = DispositionLog()
    receiver = uvicorn.Server(
        uvicorn.Config(
            create_receiver_app(log), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
        )
    )
    served = asyncio.create_task(receiver.serve())
    mes_options = MesOptions(config=DispatchConfig(endpoint=settings.mes_endpoint, poll_interval_s=0.2))
    bus = await Bus.connect(settings.nats_url, "replay-line-test")
    await bus.ensure_streams()
    store = ObjectStore(S3Config.from_settings(settings))
    await asyncio.to_thread(store.ensure_buckets)
    try:
        async with (
            service_running("inference", inference_setup, settings=settings) as inference,
            service_running("mes", make_setup(mes_options), settings=settings),
        ):
            await inference.app.install_directory(
                make_export(tmp_path / "m1", "v1", product=settings.product)
            )
            profile = StationProfile(plant=settings.plant, line="l1", station="cam-1")
            async with CaptureStation(profile, bus=bus, store=store, spool_dir=tmp_path / "spool") as station:
                report = await station.run_replay(line, ppm=None, limit=TRIGGERS, loop=True, jitter=0.0)
            assert report.frames == TRIGGERS and report.published == TRIGGERS
            frame_ids = report.frame_ids
            assert len(set(frame_ids)) == TRIGGERS

            deadline = asyncio.get_running_loop().time() + 60
            while set(frame_ids) - set(log.snapshot()):
                assert asyncio.get_running_loop().time() < deadline, (
                    f"{len(set(frame_ids) - set(log.snapshot()))} of {TRIGGERS} dispositions missing"
                )
                await asyncio.sleep(0.2)
    finally:
        receiver.should_exit = True
        await served
        await bus.close()
    bodies = log.snapshot()
    # parts in = dispositions (the shared outbox may also hand this receiver other tests' leftovers)
    assert set(frame_ids) <= set(bodies)
    repeats = frame_ids[IMAGES:]  # every frame after the first pass repeats an earlier image
    for fid in repeats:
        assert bodies[fid]["disposition"] == "review", bodies[fid]
        assert bodies[fid]["review_reason"]  # says why: the audit flagged the repeated image
