"""Acceptance: a published taxonomy changes a running inference service's disposition for the
next frame, without a restart or a new model (real NATS, PostgreSQL and S3; stand-in model)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from linesight.common.bus import Bus
from linesight.common.clients.taxonomy import TaxonomyClient
from linesight.common.pb import common_pb2, events_pb2
from linesight.common.service import service_running
from linesight.common.settings import Settings
from linesight.inference.api.bus import InspectionWorker
from linesight.inference.app import InferenceApp, InferenceConfig
from linesight.taxonomy.service import setup as taxonomy_setup
from tests.integration.inference import helpers as h
from tests.unit.inference.standin import LOADER, make_export

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

BRIGHT = 230  # the stand-in model calls a bright frame a confident "scratch"


def document(product: str, version: str, classes: list[str], major: str) -> str:
    return yaml.safe_dump({
        "product": product, "version": version,
        "classes": [{"name": c, "default_severity": "major", "definition": f"{c} as the QA owner defines it"}
                    for c in classes],
        "disposition": {"default": {"minor": "rework", "major": major, "critical": "reject"}},
    })  # fmt: skip


class Line:
    def __init__(self, app: InferenceApp, bus: Bus, settings: Settings, store: Any) -> None:
        self.app, self.bus, self.settings, self.store = app, bus, settings, store

    async def inspect(self, results: h.Results) -> events_pb2.InspectionResult:
        """One bright frame through the bus; its result."""
        ref = await h.put_frame(self.store, h.png(BRIGHT))
        frame = h.frame_for(self.settings, "s1", ref)
        await h.publish_frame(self.bus, frame)
        async with asyncio.timeout(30):
            while frame.frame_id not in results.by_frame:  # noqa: ASYNC110 - filled by callback
                await asyncio.sleep(0.05)
        return results.one(frame.frame_id)

    async def wait_for_taxonomy(self, version: str) -> None:
        async with asyncio.timeout(10):
            while self.app.pipeline.taxonomies.version_of(self.settings.product) != version:  # noqa: ASYNC110
                await asyncio.sleep(0.05)


@pytest.fixture
async def line(nats_url: str, s3: Any, tmp_path: Path) -> AsyncIterator[Line]:
    settings = h.settings_for(nats_url, s3, tmp_path)
    store = h.store_for(s3)
    bus = await Bus.connect(nats_url, "taxonomy-line-test")
    await bus.ensure_streams()
    cfg = InferenceConfig(model_loader=LOADER, work_dir=tmp_path / "work", station_group=settings.plant)
    app = InferenceApp(settings, store, bus, cfg)
    await app.start()
    worker = InspectionWorker(app, bus)
    await worker.start()
    try:
        yield Line(app, bus, settings, store)
    finally:
        await worker.stop()
        await app.stop()
        await bus.close()


async def test_published_taxonomy_changes_the_next_frames_disposition(
    line: Line, stack_settings: Settings, mint: Callable[..., str], tmp_path: Path
) -> None:
    await line.app.install_directory(make_export(tmp_path / "m1", "v1", product=line.settings.product))
    product = line.settings.product
    settings = stack_settings.model_copy(update={"plant": line.settings.plant})  # the line's plant
    token = mint(f"qa_owner@{settings.plant}/{product}", subject="quinn")
    async with service_running("taxonomy", taxonomy_setup, settings=settings), \
            TaxonomyClient(settings.grpc_target("taxonomy"), token=token) as taxonomy, \
            h.collect(line.bus.url, line.settings) as results:  # fmt: skip
        before = await line.inspect(results)
        # the model's own taxonomy: every confident defect is rejected
        assert (before.verdict, before.defect_class) == (common_pb2.VERDICT_DEFECT, "scratch")
        assert before.disposition == common_pb2.DISPOSITION_REJECT and before.taxonomy_version == "tx-1"

        await taxonomy.publish_taxonomy(product, document(product, "7", ["scratch"], major="hold"))
        await line.wait_for_taxonomy("7")
        held = await line.inspect(results)
        assert (held.verdict, held.defect_class) == (common_pb2.VERDICT_DEFECT, "scratch")
        assert held.disposition == common_pb2.DISPOSITION_HOLD and held.taxonomy_version == "7"
        assert held.model_version == before.model_version == "v1"  # same model, not restarted

        # a version without the model's class: its frames are never passed
        await taxonomy.publish_taxonomy(product, document(product, "8", ["crack"], major="reject"))
        await line.wait_for_taxonomy("8")
        unknown = await line.inspect(results)
        assert unknown.verdict == common_pb2.VERDICT_REVIEW and unknown.taxonomy_version == "8"
        assert unknown.disposition in (common_pb2.DISPOSITION_REVIEW, common_pb2.DISPOSITION_ESCALATE)
        assert "scratch" in unknown.review_reason and "not in taxonomy v8" in unknown.review_reason
        assert line.app.model_info().taxonomy_version == "8"
