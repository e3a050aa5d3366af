"""Fixtures for labeling integration tests: a bus on the session NATS and a running labeling runtime."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from linesight.common.bus import Bus
from linesight.common.events import new_meta
from linesight.common.pb import common_pb2, events_pb2
from linesight.common.settings import Settings
from linesight.labeling.api.service import LabelingRuntime, start_labeling


@pytest.fixture
async def bus(stack_settings: Settings) -> AsyncIterator[Bus]:
    b = await Bus.connect(stack_settings.nats_url, "test-labeling")
    await b.ensure_streams()
    yield b
    await b.close()


@pytest.fixture
async def labeling_rt(stack_settings: Settings, bus: Bus) -> AsyncIterator[LabelingRuntime]:
    rt = await start_labeling(stack_settings, bus)
    yield rt
    await rt.close()


def make_result(
    *,
    verdict: int = common_pb2.VERDICT_PASS,
    defect_class: str = "",
    confidence: float = 0.97,
    disposition: int = common_pb2.DISPOSITION_PASS,
    frame_id: str | None = None,
    model_version: str = "m-test-1",
    latency_ms: float = 42.0,
    station: str = "st1",
) -> events_pb2.InspectionResult:
    frame_id = frame_id or uuid.uuid4().hex
    return events_pb2.InspectionResult(
        meta=new_meta("inference", correlation_id=frame_id),
        frame_id=frame_id,
        capture=common_pb2.CaptureMeta(
            station=common_pb2.StationRef(plant="plant1", line="line1", station=station),
            part_id="P-" + frame_id[:6],
        ),
        verdict=verdict,  # type: ignore[arg-type]
        defect_class=defect_class,
        confidence=confidence,
        disposition=disposition,  # type: ignore[arg-type]
        model_version=model_version,
        taxonomy_version="tax-1",
        latency_ms=latency_ms,
        review_reason="ANOMALY_ONLY" if verdict == common_pb2.VERDICT_REVIEW else "",
    )
