"""Bus.consume_batches against a real nats-server: one handler call per fetch, each message settled
by its own outcome (ack, nak and redelivery, DLQ), and undecodable messages kept from the handler."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest
from nats.aio.msg import Msg

from linesight.common import subjects as s
from linesight.common import telemetry
from linesight.common.bus import Bus, Delivery, PoisonMessage, TransientError
from linesight.common.events import new_meta
from linesight.common.pb import events_pb2

pytestmark = pytest.mark.integration

Batch = list[tuple[events_pb2.FrameCaptured, Delivery]]


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    telemetry.setup_telemetry("bus-batch-tests")
    b = await Bus.connect(nats_url, "bus-batch-tests")
    await b.ensure_streams()
    yield b
    await b.close()


@pytest.fixture
def subject() -> str:
    """A fresh plant per test: consumers and DLQ entries never mix between tests."""
    return s.station_subject("p" + uuid.uuid4().hex[:10], "l1", "st1", s.FRAME_CAPTURED)


def frame(frame_id: str) -> events_pb2.FrameCaptured:
    return events_pb2.FrameCaptured(meta=new_meta("tests"), frame_id=frame_id)


async def eventually(cond: Callable[[], bool], within_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def consume(
    bus: Bus,
    subject: str,
    handler: Callable[[Batch], Awaitable[Sequence[BaseException | None]]],
    until: Callable[[], bool],
    **kwargs: Any,
) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(
        bus.consume_batches(
            subject,
            "tests-" + uuid.uuid4().hex[:8],
            events_pb2.FrameCaptured,
            handler,
            stop=stop,
            fetch_timeout_s=0.2,
            **kwargs,
        )
    )
    try:
        await eventually(until)
        await asyncio.sleep(0.5)  # a further (wrong) delivery would show up now
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def dead_letters(bus: Bus, subject: str, n: int) -> list[Msg]:
    sub = await bus.jetstream.pull_subscribe(s.dlq_subject(subject), stream="DLQ")
    got: list[Msg] = []
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while len(got) < n and asyncio.get_running_loop().time() < deadline:
            try:
                got += await sub.fetch(n - len(got), timeout=1)
            except TimeoutError:
                continue
    finally:
        await sub.unsubscribe()
    return got


async def test_a_fetch_is_one_call_and_each_message_is_settled_by_its_outcome(bus: Bus, subject: str) -> None:
    for name in ("ok-1", "poison", "retry", "ok-2"):
        await bus.publish(subject, frame(name))
    calls: list[list[tuple[str, int]]] = []

    async def handle(batch: Batch) -> list[BaseException | None]:
        calls.append([(m.frame_id, d.num_delivered) for m, d in batch])
        out: list[BaseException | None] = []
        for m, d in batch:
            if m.frame_id == "poison":
                out.append(PoisonMessage("never valid"))
            elif m.frame_id == "retry" and d.num_delivered == 1:
                out.append(TransientError("store away", delay_s=0.1))
            else:
                out.append(None)
        return out

    await consume(bus, subject, handle, lambda: len(calls) >= 2, batch=16)
    # Stream order in one call; only the nak'ed message comes back, alone.
    assert calls == [[("ok-1", 1), ("poison", 1), ("retry", 1), ("ok-2", 1)], [("retry", 2)]]
    (dead,) = await dead_letters(bus, subject, 1)
    assert (dead.headers or {})["Ls-Dlq-Reason"] == "poison"
    assert events_pb2.FrameCaptured.FromString(dead.data).frame_id == "poison"


async def test_a_handler_that_raises_naks_the_whole_batch(bus: Bus, subject: str) -> None:
    await bus.publish(subject, frame("a"))
    await bus.publish(subject, frame("b"))
    seen: list[tuple[str, int]] = []

    async def handle(batch: Batch) -> list[BaseException | None]:
        seen.extend((m.frame_id, d.num_delivered) for m, d in batch)
        if any(d.num_delivered == 1 for _, d in batch):
            raise TransientError("database down", delay_s=0.1)
        return [None] * len(batch)

    await consume(bus, subject, handle, lambda: len(seen) >= 4, batch=16)
    assert sorted(seen) == [("a", 1), ("a", 2), ("b", 1), ("b", 2)]
    assert await dead_letters(bus, subject, 1) == []


async def test_undecodable_and_mistyped_messages_never_reach_the_handler(bus: Bus, subject: str) -> None:
    await bus.publish(subject, events_pb2.InspectionResult(meta=new_meta("tests"), frame_id="x"))
    await bus.jetstream.publish(
        subject,
        b"\xff\xff\xff\xff",
        headers={"Nats-Msg-Id": uuid.uuid4().hex, "Ls-Type": "linesight.v1.FrameCaptured"},
    )
    await bus.publish(subject, frame("good"))
    handled: list[str] = []

    async def handle(batch: Batch) -> list[BaseException | None]:
        handled.extend(m.frame_id for m, _ in batch)
        return [None] * len(batch)

    await consume(bus, subject, handle, lambda: handled == ["good"], batch=16)
    assert handled == ["good"]
    dead = await dead_letters(bus, subject, 2)
    assert sorted((d.headers or {})["Ls-Dlq-Reason"] for d in dead) == ["undecodable", "wrong_type"]


async def test_the_last_allowed_failure_goes_to_the_dlq(bus: Bus, subject: str) -> None:
    await bus.publish(subject, frame("f1"))
    deliveries: list[int] = []

    async def handle(batch: Batch) -> list[BaseException | None]:
        deliveries.extend(d.num_delivered for _, d in batch)
        return [TransientError("still down", delay_s=0.05)] * len(batch)

    await consume(bus, subject, handle, lambda: len(deliveries) >= 3, max_deliver=3)
    assert deliveries == [1, 2, 3]
    (dead,) = await dead_letters(bus, subject, 1)
    headers = dead.headers or {}
    assert headers["Ls-Dlq-Reason"] == "max_deliver" and "still down" in headers["Ls-Dlq-Error"]
