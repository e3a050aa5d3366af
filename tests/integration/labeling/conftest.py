"""Fixtures for labeling integration tests: a bus on the session NATS, a running labeling service
(one per module), signed-in principals and the product's taxonomy.

The session's NATS and PostgreSQL are shared with every other test module, so these tests run in a
plant and product of their own (`PLANT`, `PRODUCT`): the labeling consumer reads only its plant's
results, and a taxonomy change here requeues only this product's labels.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from linesight.common.bus import Bus
from linesight.common.events import new_meta
from linesight.common.identity import Grant, Principal
from linesight.common.pb import common_pb2, events_pb2
from linesight.common.service import RunningService, service_running
from linesight.common.settings import Settings
from linesight.labeling.app.labeling import LabelingApp
from linesight.labeling.service import setup
from linesight.labeling.store.workflow import TaxonomyRow

PLANT = f"lab{uuid.uuid4().hex[:8]}"
PRODUCT = f"tile{uuid.uuid4().hex[:6]}"
CLASSES = ["scratch", "crack", "dent"]


@pytest.fixture(scope="session")
def labeling_settings(stack_settings: Settings) -> Settings:
    """The session stack's settings with this package's own plant and product."""
    return stack_settings.model_copy(update={"plant": PLANT, "product": PRODUCT})


def person(*roles: str, subject: str, product: str = PRODUCT) -> Principal:
    """A principal holding `roles` on this package's plant and product (as a token would carry)."""
    return Principal(subject, subject, "user", tuple(Grant.parse(f"{r}@{PLANT}/{product}") for r in roles))


@pytest.fixture
async def bus(labeling_settings: Settings) -> AsyncIterator[Bus]:
    b = await Bus.connect(labeling_settings.nats_url, "test-labeling")
    await b.ensure_streams()
    yield b
    await b.close()


@pytest.fixture(scope="module")
async def labeling_svc(labeling_settings: Settings) -> AsyncIterator[RunningService[LabelingApp]]:
    """The service, with version 1 of the product's taxonomy (as the taxonomy service publishes it).
    The random audit sample is off so which frames get queued is what each test arranges."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LINESIGHT_LABELING_AUDIT_SHARE", "0")
        async with service_running("labeling", setup, settings=labeling_settings) as svc:
            version_1 = TaxonomyRow(
                product=PRODUCT,
                version="1",
                previous_version="",
                classes=CLASSES,
                changed_classes=[],
                event_id="",
            )
            await svc.app.on_taxonomy(version_1)
            yield svc


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
            station=common_pb2.StationRef(plant=PLANT, line="line1", station=station),
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
