"""A second, different InspectionResult for a frame never wins silently; a late one is flagged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import nats
import pytest

from linesight.common import subjects
from linesight.common.embedded import free_port
from linesight.common.events import new_meta
from linesight.common.pb import common_pb2, events_pb2
from linesight.common.settings import Settings
from linesight.mes.api.receiver import DispositionLog
from linesight.mes.app.dispatch import LATE_DISPOSITION
from tests.integration.mes.test_mes_outbox import PLANT, eventually, fast, mes_running, receiver, result

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mes_settings(stack_settings: Settings) -> Settings:
    """The session stack with the outbox tests' plant (results of other plants are not consumed)."""
    return stack_settings.model_copy(update={"plant": PLANT})


def forged(original: events_pb2.InspectionResult) -> events_pb2.InspectionResult:
    """Same frame, another producer's event saying the part is good."""
    other = events_pb2.InspectionResult()
    other.CopyFrom(original)
    other.meta.CopyFrom(new_meta("intruder", correlation_id=original.frame_id))
    other.verdict = common_pb2.VERDICT_PASS
    other.disposition = common_pb2.DISPOSITION_PASS
    other.defect_class = ""
    return other


async def test_conflicting_result_alarms_and_sends_review_as_a_correction(mes_settings: Settings) -> None:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}/dispositions"
    log = DispositionLog()
    first = result("st-conflict", common_pb2.DISPOSITION_REJECT)
    second = forged(first)
    async with mes_running(mes_settings, fast(endpoint), consume=False) as svc, receiver(port, log):
        mes = svc.app
        assert await mes.enqueue(first)

        async def original_delivered() -> bool:
            return first.frame_id in log.snapshot()

        await eventually(original_delivered)
        assert not await mes.enqueue(first)  # an identical redelivery is absorbed
        assert await mes.conflicts(first.frame_id) == []

        assert await mes.enqueue(second)  # differs: recorded and corrected, never dropped
        (conflict,) = await mes.conflicts(first.frame_id)
        assert conflict.original_event_id == first.meta.event_id
        assert conflict.conflicting_event_id == second.meta.event_id
        assert conflict.original_disposition == common_pb2.DISPOSITION_REJECT
        assert conflict.disposition == common_pb2.DISPOSITION_PASS and conflict.producer == "intruder"
        correction_key = f"{first.frame_id}:correction"

        async def corrected() -> bool:
            return correction_key in log.snapshot()

        await eventually(corrected)
        body = log.snapshot()[correction_key]
        assert body["disposition"] == "review" and body["review_reason"] == "CONFLICTING_RESULTS"
        assert body["correction_of"] == first.meta.event_id
        assert body["conflicting_event_id"] == second.meta.event_id
        row = await mes.status(first.frame_id)
        assert (
            row.disposition == common_pb2.DISPOSITION_REVIEW and row.corrects_event_id == first.meta.event_id
        )

        # the forged result redelivered, and the original again: nothing new recorded or sent
        assert not await mes.enqueue(second)
        assert not await mes.enqueue(first)
        assert len(await mes.conflicts(first.frame_id)) == 1
        assert log.duplicates == 0
        assert sorted(k for k in log.snapshot() if k.startswith(first.frame_id)) == [
            first.frame_id,
            correction_key,
        ]


async def test_pending_review_part_records_conflict_without_a_second_send(mes_settings: Settings) -> None:
    first = result("st-review", common_pb2.DISPOSITION_REVIEW)
    second = forged(first)
    async with mes_running(
        mes_settings, fast(mes_settings.mes_endpoint), consume=False, dispatch=False
    ) as svc:
        assert await svc.app.enqueue(first)
        assert not await svc.app.enqueue(second)  # already review: on record, nothing more to send
        assert len(await svc.app.conflicts(first.frame_id)) == 1
        assert (await svc.app.status(first.frame_id)).delivery_key == ""


async def test_result_past_the_reject_window_is_counted_late(mes_settings: Settings) -> None:
    config = fast(mes_settings.mes_endpoint)
    on_time, late = result("st-late"), result("st-late")
    late.capture.captured_at.FromDatetime(datetime.now(UTC) - timedelta(seconds=config.reject_window_s + 3))
    on_time.capture.captured_at.FromDatetime(datetime.now(UTC))
    alarms: list[events_pb2.CaptureAlarm] = []

    async def on_alarm(msg: Any) -> None:
        alarms.append(events_pb2.CaptureAlarm.FromString(msg.data))

    nc = await nats.connect(mes_settings.nats_url)
    await nc.subscribe(subjects.station_pattern(subjects.CAPTURE_ALARM, plant=PLANT), cb=on_alarm)
    async with mes_running(mes_settings, config, consume=False, dispatch=False) as svc:
        before = await svc.app.late_dispositions()
        assert await svc.app.enqueue(on_time) and await svc.app.enqueue(late)
        assert not (await svc.app.status(on_time.frame_id)).late
        row = await svc.app.status(late.frame_id)
        assert (
            row.late
            and row.decision_latency_s is not None
            and row.decision_latency_s > config.reject_window_s
        )
        assert await svc.app.late_dispositions() == before + 1

        async def alarmed() -> bool:
            return bool(alarms)

        await eventually(alarmed)  # the alarm reaches the bus, not only the log
    await nc.close()
    (alarm,) = alarms
    assert alarm.kind == LATE_DISPOSITION and list(alarm.frame_ids) == [late.frame_id]
    assert alarm.station.station == "st-late" and alarm.meta.producer.startswith("mes")
