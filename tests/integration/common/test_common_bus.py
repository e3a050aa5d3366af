"""The bus against a real nats-server with JetStream: de-dup, nak, DLQ, max_deliver, tracing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from nats.aio.msg import Msg

from linesight.common import subjects as s
from linesight.common import telemetry
from linesight.common.bus import Bus, BusUnavailable, Delivery, PoisonMessage, TransientError
from linesight.common.embedded import NatsServer, free_port
from linesight.common.events import new_meta
from linesight.common.pb import events_pb2

pytestmark = pytest.mark.integration


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    telemetry.setup_telemetry("bus-tests")
    b = await Bus.connect(nats_url, "bus-tests")
    await b.ensure_streams()
    yield b
    await b.close()


@pytest.fixture
def plant() -> str:
    """A fresh plant per test: subjects, consumers and DLQ entries never mix between tests."""
    return "p" + uuid.uuid4().hex[:10]


def frame(frame_id: str) -> events_pb2.FrameCaptured:
    return events_pb2.FrameCaptured(meta=new_meta("tests"), frame_id=frame_id)


async def eventually(cond: Callable[[], bool], within_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def dead_letters(bus: Bus, subject: str, n: int, within_s: float = 10.0) -> list[Msg]:
    sub = await bus.jetstream.pull_subscribe(s.dlq_subject(subject), stream="DLQ")
    try:
        got: list[Msg] = []
        deadline = asyncio.get_running_loop().time() + within_s
        while len(got) < n and asyncio.get_running_loop().time() < deadline:
            try:
                got += await sub.fetch(n - len(got), timeout=1)
            except TimeoutError:
                continue
        return got
    finally:
        await sub.unsubscribe()


async def run_consumer(
    bus: Bus,
    subject: str,
    handler: Callable[[Any, Delivery], Awaitable[None]],
    until: Callable[[], bool],
    message_type: type[Any] = events_pb2.FrameCaptured,
    **kwargs: Any,
) -> None:
    stop = asyncio.Event()
    task = bus.consume_in_background(
        subject,
        "tests-" + uuid.uuid4().hex[:8],
        message_type,
        handler,
        stop=stop,
        fetch_timeout_s=0.2,
        **kwargs,
    )
    try:
        await eventually(until)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_ensure_streams_is_idempotent_and_applies_limits(bus: Bus) -> None:
    await bus.ensure_streams()
    for spec in s.STREAMS:
        info = await bus.jetstream.stream_info(spec.name)
        assert sorted(info.config.subjects or []) == sorted(spec.subjects)
        assert info.config.max_bytes == spec.max_bytes
        assert info.config.duplicate_window == pytest.approx(spec.duplicate_window_s)
        assert info.config.max_age == pytest.approx(spec.max_age_s)


async def test_same_event_id_twice_is_stored_once(bus: Bus, plant: str) -> None:
    subject = s.station_subject(plant, "l1", "st1", s.FRAME_CAPTURED)
    msg = frame("f1")
    first = await bus.publish(subject, msg)
    again = await bus.publish(subject, msg)
    assert not first.duplicate and again.duplicate and again.seq == first.seq
    await bus.publish(subject, frame("f2"))

    seen: list[tuple[str, str]] = []

    async def handle(m: events_pb2.FrameCaptured, d: Delivery) -> None:
        seen.append((m.frame_id, d.event_id))

    await run_consumer(bus, subject, handle, lambda: len(seen) >= 2)
    await asyncio.sleep(0.3)  # a third delivery would show up now
    assert seen == [("f1", msg.meta.event_id), ("f2", seen[1][1])]


async def test_transient_error_is_redelivered_then_acked(bus: Bus, plant: str) -> None:
    subject = s.station_subject(plant, "l1", "st1", s.FRAME_CAPTURED)
    await bus.publish(subject, frame("f1"))
    deliveries: list[int] = []

    async def handle(m: events_pb2.FrameCaptured, d: Delivery) -> None:
        deliveries.append(d.num_delivered)
        if d.num_delivered == 1:
            raise TransientError("storage not reachable yet", delay_s=0.1)

    await run_consumer(bus, subject, handle, lambda: len(deliveries) >= 2)
    await asyncio.sleep(0.5)
    assert deliveries == [1, 2]
    assert await dead_letters(bus, subject, 1, within_s=1) == []


async def test_poison_message_goes_to_dlq_once_with_reason(bus: Bus, plant: str) -> None:
    subject = s.station_subject(plant, "l1", "st1", s.FRAME_CAPTURED)
    msg = frame("bad")
    await bus.publish(subject, msg)
    calls: list[int] = []

    async def handle(m: events_pb2.FrameCaptured, d: Delivery) -> None:
        calls.append(d.num_delivered)
        raise PoisonMessage("image is not a PNG")

    await run_consumer(bus, subject, handle, lambda: len(calls) >= 1)
    (dead,) = await dead_letters(bus, subject, 1)
    headers = dead.headers or {}
    assert headers["Ls-Dlq-Reason"] == "poison"
    assert headers["Ls-Dlq-Error"] == "image is not a PNG"
    assert headers["Ls-Dlq-Subject"] == subject and headers["Ls-Dlq-Stream"] == "FRAMES"
    assert headers["Ls-Type"] == "linesight.v1.FrameCaptured"
    assert events_pb2.FrameCaptured.FromString(dead.data) == msg
    await asyncio.sleep(0.5)
    assert calls == [1]  # terminated: never redelivered


async def test_wrong_type_and_undecodable_payloads_skip_the_handler(bus: Bus, plant: str) -> None:
    subject = s.station_subject(plant, "l1", "st1", s.FRAME_CAPTURED)
    wrong = events_pb2.InspectionResult(meta=new_meta("tests"), frame_id="x")
    await bus.publish(subject, wrong)
    await bus.jetstream.publish(
        subject,
        b"\xff\xff\xff\xff",
        headers={"Nats-Msg-Id": uuid.uuid4().hex, "Ls-Type": "linesight.v1.FrameCaptured"},
    )
    await bus.publish(subject, frame("good"))
    handled: list[str] = []

    async def handle(m: events_pb2.FrameCaptured, d: Delivery) -> None:
        handled.append(m.frame_id)

    await run_consumer(bus, subject, handle, lambda: handled == ["good"])
    dead = await dead_letters(bus, subject, 2)
    reasons = sorted((d.headers or {})["Ls-Dlq-Reason"] for d in dead)
    assert reasons == ["undecodable", "wrong_type"]


async def test_redelivery_limit_sends_to_dlq(bus: Bus, plant: str) -> None:
    subject = s.plant_subject(plant, s.LABEL_SUBMITTED)
    await bus.publish(subject, events_pb2.LabelSubmitted(meta=new_meta("tests"), frame_id="f1"))
    deliveries: list[int] = []

    async def handle(m: events_pb2.LabelSubmitted, d: Delivery) -> None:
        deliveries.append(d.num_delivered)
        raise TransientError("training store down", delay_s=0.05)

    await run_consumer(
        bus,
        subject,
        handle,
        lambda: len(deliveries) >= 3,
        message_type=events_pb2.LabelSubmitted,
        max_deliver=3,
    )
    (dead,) = await dead_letters(bus, subject, 1)
    headers = dead.headers or {}
    assert headers["Ls-Dlq-Reason"] == "max_deliver" and headers["Ls-Dlq-Delivered"] == "3"
    assert "training store down" in headers["Ls-Dlq-Error"]
    await asyncio.sleep(0.5)
    assert deliveries == [1, 2, 3]


async def test_handler_span_continues_the_publishers_trace(bus: Bus, plant: str) -> None:
    subject = s.station_subject(plant, "l1", "st1", s.FRAME_CAPTURED)
    with telemetry.tracer("tests").start_as_current_span("trigger"):
        producer_trace = telemetry.current_trace_id()
        await bus.publish(subject, frame("f1"))
    assert producer_trace
    seen: list[tuple[str, str]] = []

    async def handle(m: events_pb2.FrameCaptured, d: Delivery) -> None:
        seen.append((telemetry.current_trace_id(), d.headers.get("traceparent", "")))

    await run_consumer(bus, subject, handle, lambda: bool(seen))
    handler_trace, traceparent = seen[0]
    assert handler_trace == producer_trace
    assert traceparent.split("-")[1] == producer_trace


async def test_publish_without_a_stream_is_bus_unavailable(bus: Bus) -> None:
    with pytest.raises(BusUnavailable, match="no JetStream stream stores"):
        await bus.publish("linesight.nowhere.unknown.event", frame("x"))


async def test_unreachable_server_is_a_clear_error() -> None:
    with pytest.raises(BusUnavailable, match=r"cannot connect to NATS at nats://127\.0\.0\.1:1"):
        await Bus.connect("nats://127.0.0.1:1", "tests", connect_timeout_s=1, connect_attempts=1)


async def test_publish_during_outage_fails_clearly_and_a_retry_is_stored_once(tmp_path: Path) -> None:
    """A broker restart: the publish fails with BusUnavailable; retrying the same event after the
    reconnect stores it exactly once, even though nats-py may flush the first attempt too."""
    server = NatsServer(tmp_path / "nats", free_port(also_free=(4000,)))
    server.start()
    b = await Bus.connect(server.url, "outage-test", publish_timeout_s=1.0)
    try:
        await b.ensure_streams()
        subject = s.plant_subject("p" + uuid.uuid4().hex[:8], s.MES_DISPATCHED)
        await b.publish(subject, events_pb2.DispositionDispatched(meta=new_meta("tests")))
        await asyncio.to_thread(server.stop)
        during = events_pb2.DispositionDispatched(meta=new_meta("tests"), frame_id="during-outage")
        with pytest.raises(BusUnavailable, match=r"did not acknowledge|connection"):
            await b.publish(subject, during)
        await asyncio.to_thread(server.start)
        await eventually(lambda: b.is_connected, within_s=15)
        await b.publish(subject, during)  # the caller's retry
        info = await b.jetstream.stream_info("MES")
        assert info.state.messages == 2  # file store survived the restart; no duplicate
    finally:
        await b.close()
        await asyncio.to_thread(server.stop)
