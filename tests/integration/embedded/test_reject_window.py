"""Bus guarantees the line relies on: a crashed consumer's message is redelivered within the
reject window (ack_wait), a slow live handler keeps its message, and an oversized event is refused
before anything is sent."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import pytest

from linesight.common import subjects
from linesight.common.bus import Bus, Delivery, PayloadTooLarge
from linesight.common.events import new_meta
from linesight.common.pb import events_pb2

pytestmark = pytest.mark.integration

WINDOW_S = 1.0


def frame() -> tuple[str, events_pb2.FrameCaptured]:
    station = f"rw{uuid.uuid4().hex[:8]}"
    subject = subjects.station_subject("rwplant", "l1", station, subjects.FRAME_CAPTURED)
    return subject, events_pb2.FrameCaptured(meta=new_meta("test"), frame_id=uuid.uuid4().hex)


async def test_crashed_consumer_message_comes_back_within_the_window(nats_url: str) -> None:
    subject, event = frame()
    durable = f"rw-{uuid.uuid4().hex[:8]}"
    crashed = await Bus.connect(nats_url, "rw-crashed")
    live = await Bus.connect(nats_url, "rw-live")
    await live.ensure_streams()
    got_first = asyncio.Event()
    redelivered: list[tuple[float, Delivery]] = []
    came_back = asyncio.Event()

    async def hang(_msg: events_pb2.FrameCaptured, _d: Delivery) -> None:
        got_first.set()
        await asyncio.Event().wait()  # the replica dies while holding the frame

    async def record(_msg: events_pb2.FrameCaptured, d: Delivery) -> None:
        redelivered.append((time.monotonic(), d))
        came_back.set()

    crashed.consume_in_background(
        subject, durable, events_pb2.FrameCaptured, hang, batch=1, ack_wait_s=WINDOW_S
    )
    await live.publish(subject, event)
    await asyncio.wait_for(got_first.wait(), 10)
    t_crash = time.monotonic()
    await crashed._nc.close()  # no ack, no nak, no in-progress: like a SIGKILLed process
    stop = asyncio.Event()
    task = live.consume_in_background(
        subject, durable, events_pb2.FrameCaptured, record, batch=1, ack_wait_s=WINDOW_S, stop=stop
    )
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(came_back.wait(), 10)
    stop.set()
    await task
    await live.close()
    assert redelivered, "the frame never came back"
    at, delivery = redelivered[0]
    assert delivery.num_delivered == 2 and at - t_crash <= WINDOW_S + 1.0, at - t_crash


async def test_slow_live_handler_keeps_its_message(nats_url: str) -> None:
    subject, event = frame()
    bus = await Bus.connect(nats_url, "rw-slow")
    await bus.ensure_streams()
    calls: list[int] = []
    done = asyncio.Event()

    async def slow(_msg: events_pb2.FrameCaptured, d: Delivery) -> None:
        calls.append(d.num_delivered)
        await asyncio.sleep(WINDOW_S * 3)  # longer than ack_wait: in-progress acks keep it
        done.set()

    stop = asyncio.Event()
    task = bus.consume_in_background(
        subject,
        f"rw-{uuid.uuid4().hex[:8]}",
        events_pb2.FrameCaptured,
        slow,
        batch=1,
        ack_wait_s=WINDOW_S,
        stop=stop,
    )
    await bus.publish(subject, event)
    await asyncio.wait_for(done.wait(), 15)
    await asyncio.sleep(WINDOW_S * 1.5)
    stop.set()
    await task
    await bus.close()
    assert calls == [1]


async def test_oversized_event_is_refused_before_anything_is_sent(nats_url: str) -> None:
    subject, event = frame()
    bus = await Bus.connect(nats_url, "rw-size")
    await bus.ensure_streams()
    assert bus.max_payload > 0
    assert bus.check_payload(event) == event.ByteSize()
    event.capture.extra["blob"] = "x" * bus.max_payload
    with pytest.raises(PayloadTooLarge, match="max_payload"):
        bus.check_payload(event)
    with pytest.raises(PayloadTooLarge, match="FrameCaptured needs"):
        await bus.publish(subject, event)
    info = await bus.jetstream.stream_info("FRAMES", subjects_filter=subject)
    await bus.close()
    assert not (info.state.subjects or {}).get(subject)
