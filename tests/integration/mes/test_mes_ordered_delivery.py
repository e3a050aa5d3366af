"""Ordered, at-least-once delivery against a real, misbehaving HTTP receiver and a service restart.

The receiver (uvicorn, in this loop) fails, times out and answers slowly at random from a fixed
seed; it records the first arrival of each Idempotency-Key per station. Four stations publish
interleaved results over the real bus into the real outbox (PostgreSQL), the MES service is
restarted mid-stream, and at the end every disposition must be at the receiver exactly once (by
key), in publish order per station, with its image link and trace context.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request, Response

from linesight.common import subjects, telemetry
from linesight.common.bus import Bus
from linesight.common.embedded import free_port
from linesight.common.events import new_meta
from linesight.common.pb import common_pb2, events_pb2
from linesight.common.service import service_running
from linesight.common.settings import Settings
from linesight.common.storage import ObjectStore, S3Config
from linesight.mes.app.dispatch import DispatchConfig, UnknownFrameError
from linesight.mes.service import MesOptions, make_setup

pytestmark = pytest.mark.integration

PLANT = f"mesord{uuid.uuid4().hex[:6]}"
TIMEOUT_S = 0.5
# Cumulative odds of each behaviour per request.
KINDS = ((0.15, "fail"), (0.25, "timeout_before"), (0.35, "timeout_after"), (0.5, "slow"), (1.0, "ok"))


class ChaosReceiver:
    """An MES endpoint that misbehaves at random (seeded) and records what it accepted."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.first_seen: dict[str, list[str]] = {}  # station -> keys in order of first acceptance
        self.bodies: dict[str, dict[str, Any]] = {}
        self.duplicates = 0
        self.behaviour: dict[str, int] = {}
        self.app = FastAPI()
        self.app.post("/dispositions")(self.receive)

    async def receive(self, request: Request) -> Response:
        key = request.headers["Idempotency-Key"]
        body = await request.json()
        roll = self.rng.random()
        kind = (
            "fail"
            if roll < 0.15
            else "timeout_before"
            if roll < 0.25
            else "timeout_after"
            if roll < 0.35
            else "slow"
            if roll < 0.5
            else "ok"
        )
        self.behaviour[kind] = self.behaviour.get(kind, 0) + 1
        if kind == "fail":
            return Response(status_code=503)
        if kind == "timeout_before":  # the client gives up before MES has recorded anything
            await asyncio.sleep(TIMEOUT_S * 3)
            return Response(status_code=504)
        if key in self.bodies:
            self.duplicates += 1
        else:
            self.bodies[key] = body
            self.first_seen.setdefault(body["station"], []).append(key)
        if kind == "timeout_after":  # recorded, but the answer never reaches the client in time
            await asyncio.sleep(TIMEOUT_S * 3)
        elif kind == "slow":
            await asyncio.sleep(TIMEOUT_S * 0.6)
        return Response(status_code=200, content=b'{"accepted": true}', media_type="application/json")


@contextlib.asynccontextmanager
async def serve(app: FastAPI, port: int) -> AsyncIterator[None]:
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers a flag, not an event
        await asyncio.sleep(0.05)
    try:
        yield
    finally:
        server.should_exit = True
        await task


def make_result(station: str, n: int, image: common_pb2.ObjectRef) -> events_pb2.InspectionResult:
    frame_id = uuid.uuid4().hex
    return events_pb2.InspectionResult(
        meta=new_meta("inference", correlation_id=frame_id),
        frame_id=frame_id,
        capture=common_pb2.CaptureMeta(
            station=common_pb2.StationRef(plant=PLANT, line="line1", station=station),
            part_id=f"{station}-P{n:03d}",
        ),
        verdict=common_pb2.VERDICT_DEFECT,
        defect_class="scratch",
        severity=common_pb2.SEVERITY_MAJOR,
        confidence=0.87,
        disposition=common_pb2.DISPOSITION_REJECT,
        model_version="m-7",
        taxonomy_version="t-3",
        image=image,
    )


async def test_every_disposition_arrives_once_in_station_order_across_chaos_and_restart(
    stack_settings: Settings,
) -> None:
    settings = stack_settings.model_copy(update={"plant": PLANT})
    store = ObjectStore(S3Config.from_settings(settings))
    await asyncio.to_thread(store.ensure_buckets)
    image = await store.aput_content_addressed("frames", b"\x89PNG frame bytes " + uuid.uuid4().bytes)
    port = free_port()
    config = DispatchConfig(
        endpoint=f"http://127.0.0.1:{port}/dispositions",
        max_attempts=1000,  # this test is about order and loss, never about giving up
        base_backoff_s=0.05,
        max_backoff_s=0.3,
        timeout_s=TIMEOUT_S,
        poll_interval_s=0.2,
        per_station=4,
    )
    stations = [f"st{i}{uuid.uuid4().hex[:4]}" for i in range(4)]
    per_station = 15
    results = {s: [make_result(s, n, image) for n in range(per_station)] for s in stations}
    receiver = ChaosReceiver(seed=20261202)
    bus = await Bus.connect(settings.nats_url, "test-mes-order")
    await bus.ensure_streams()

    tracer = telemetry.tracer("test.mes")
    trace_ids: dict[str, str] = {}

    async def publish(lo: int, hi: int) -> None:
        for n in range(lo, hi):
            for s in stations:
                subject = subjects.station_subject(PLANT, "line1", s, subjects.INSPECTION_RESULT)
                with tracer.start_as_current_span("inspect") as span:  # inference's span, here
                    await bus.publish(subject, results[s][n])
                trace_ids[results[s][n].frame_id] = f"{span.get_span_context().trace_id:032x}"

    def running() -> Any:
        return service_running("mes", make_setup(MesOptions(config=config)), settings=settings)

    try:
        async with serve(receiver.app, port):
            async with running():
                await publish(0, 8)
                while sum(len(v) for v in receiver.first_seen.values()) < 10:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            # Restart mid-stream: some rows delivered, some claimed or retrying, more arriving.
            await publish(8, per_station)
            async with running() as svc:
                frames = [r.frame_id for rs in results.values() for r in rs]
                deadline = asyncio.get_running_loop().time() + 90

                async def states() -> list[str]:
                    out = []
                    for f in frames:
                        try:
                            out.append((await svc.app.status(f)).state)
                        except UnknownFrameError:
                            out.append("not yet consumed")
                    return out

                while set(await states()) != {"delivered"}:
                    assert asyncio.get_running_loop().time() < deadline, sorted(await states())
                    await asyncio.sleep(0.2)
    finally:
        await bus.close()

    # Nothing lost, nothing twice at MES (counted by id), order kept per station.
    for s in stations:
        expected = [r.frame_id for r in results[s]]
        assert receiver.first_seen[s] == expected, s
    # (The outbox is shared with other tests of the session: rows of other plants may pass by too.)
    ours = {key for key, body in receiver.bodies.items() if body["plant"] == PLANT}
    assert ours == {r.frame_id for rs in results.values() for r in rs}
    # The chaos really happened: failures, timeouts after recording (so repeats) and slow answers.
    assert {"fail", "timeout_before", "timeout_after", "slow", "ok"} <= set(receiver.behaviour)
    assert receiver.duplicates > 0
    body = receiver.bodies[results[stations[0]][3].frame_id]
    assert body["part_id"] == f"{stations[0]}-P003" and body["station"] == stations[0]
    assert (body["verdict"], body["defect_class"], body["severity"], body["disposition"]) == (
        "defect",
        "scratch",
        "major",
        "reject",
    )
    assert body["confidence"] == 0.87 and body["model_version"] == "m-7" and body["taxonomy_version"] == "t-3"
    # The result's trace continues at MES (same trace id as the span that published the result).
    for key in ours:
        got = receiver.bodies[key]
        assert got["trace"]["traceparent"].split("-")[1] == trace_ids[key]
    assert body["image_url_expires_at"]
    async with httpx.AsyncClient() as client:
        fetched = await client.get(body["image_url"])
    assert fetched.status_code == 200 and fetched.content == await store.aget_ref(image)
