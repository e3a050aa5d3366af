"""MES outbox against real NATS + PostgreSQL and a real HTTP receiver that goes down and up.

The session's NATS and PostgreSQL are shared with every other test module; this module runs in a
plant of its own (`PLANT`), so the MES consumer sees only the results published here.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
import uvicorn

from linesight.common import subjects
from linesight.common.bus import HDR_DLQ_REASON, Bus, Delivery
from linesight.common.embedded import free_port
from linesight.common.events import new_meta
from linesight.common.identity.grpc import bearer_interceptors
from linesight.common.pb import common_pb2, events_pb2, mes_pb2, mes_pb2_grpc
from linesight.common.service import RunningService, service_running
from linesight.common.settings import Settings
from linesight.mes.api.receiver import DispositionLog, create_receiver_app
from linesight.mes.app.dispatch import DispatchConfig, MesApp
from linesight.mes.service import MesOptions, make_setup
from linesight.mes.store import outbox

pytestmark = pytest.mark.integration

PLANT = f"mes{uuid.uuid4().hex[:8]}"


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def receiver(port: int, log: DispositionLog) -> AsyncIterator[None]:
    """The demo's MES receiver served by uvicorn on `port` until the block ends."""
    server = uvicorn.Server(
        uvicorn.Config(
            create_receiver_app(log), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
        )
    )
    task = asyncio.create_task(server.serve())
    await eventually(lambda: asyncio.sleep(0, server.started), timeout_s=10)
    try:
        yield
    finally:
        server.should_exit = True
        await task


@pytest.fixture(scope="module")
def mes_settings(stack_settings: Settings) -> Settings:
    """The session stack's settings with this module's own plant."""
    return stack_settings.model_copy(update={"plant": PLANT})


@pytest.fixture
async def bus(mes_settings: Settings) -> AsyncIterator[Bus]:
    b = await Bus.connect(mes_settings.nats_url, "test-mes")
    await b.ensure_streams()
    yield b
    await b.close()


def result(station: str, disposition: int = common_pb2.DISPOSITION_REJECT) -> events_pb2.InspectionResult:
    frame_id = uuid.uuid4().hex
    return events_pb2.InspectionResult(
        meta=new_meta("inference", correlation_id=frame_id),
        frame_id=frame_id,
        capture=common_pb2.CaptureMeta(
            station=common_pb2.StationRef(plant=PLANT, line="line1", station=station),
            part_id="P-" + frame_id[:6],
        ),
        verdict=common_pb2.VERDICT_DEFECT,
        defect_class="scratch",
        confidence=0.9,
        disposition=disposition,  # type: ignore[arg-type]
        model_version="m-test-1",
    )


def fast(endpoint: str, max_attempts: int = DispatchConfig.max_attempts) -> DispatchConfig:
    return DispatchConfig(
        endpoint=endpoint,
        max_attempts=max_attempts,
        base_backoff_s=0.1,
        max_backoff_s=0.4,
        poll_interval_s=0.2,
        timeout_s=2.0,
    )


def mes_running(
    settings: Settings, config: DispatchConfig, *, consume: bool = True, dispatch: bool = True
) -> contextlib.AbstractAsyncContextManager[RunningService[MesApp]]:
    """The MES service in this event loop with a fast delivery policy."""
    options = MesOptions(config=config, consume=consume, dispatch=dispatch)
    return service_running("mes", make_setup(options), settings=settings)


async def states(svc: RunningService[MesApp], frames: list[str]) -> dict[str, tuple[str, int]]:
    out = {}
    for f in frames:
        with contextlib.suppress(KeyError):
            row = await svc.app.status(f)
            out[f] = (row.state, row.attempts)
    return out


async def test_outbox_survives_receiver_outage_and_restart(mes_settings: Settings, bus: Bus) -> None:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}/dispositions"
    station = f"mes{uuid.uuid4().hex[:6]}"
    subject = subjects.station_subject(PLANT, "line1", station, subjects.INSPECTION_RESULT)
    results = [result(station) for _ in range(5)]
    frames = [r.frame_id for r in results]
    dispatched: dict[str, events_pb2.DispositionDispatched] = {}

    async def on_dispatched(msg: events_pb2.DispositionDispatched, _: Delivery) -> None:
        if msg.delivered:
            dispatched[msg.frame_id] = msg

    stop = asyncio.Event()
    watcher = bus.consume_in_background(
        subjects.plant_pattern(subjects.MES_DISPATCHED, plant=PLANT),
        f"t-mes-{uuid.uuid4().hex[:8]}",
        events_pb2.DispositionDispatched,
        on_dispatched,
        stop=stop,
    )
    try:
        async with mes_running(mes_settings, fast(endpoint)) as svc:
            for r in results:
                await bus.publish(subject, r)

            # Receiver down: every row is in the outbox, pending; the station's first has been
            # tried and the others wait behind it (per-station order).
            async def tried() -> bool:
                s = await states(svc, frames)
                return (
                    len(s) == 5
                    and all(st == "pending" for st, _ in s.values())
                    and s[frames[0]][1] >= 1
                    and all(s[f][1] == 0 for f in frames[1:])
                )

            await eventually(tried)
            # Redelivery of a result (new event id) must not create a second row or a second POST.
            dup = events_pb2.InspectionResult()
            dup.CopyFrom(results[1])
            dup.meta.event_id = str(uuid.uuid4())
            await bus.publish(subject, dup)
        # The block's end was a service restart while the endpoint is down.

        log = DispositionLog()
        async with mes_running(mes_settings, fast(endpoint)) as svc, receiver(port, log):

            async def delivered() -> bool:
                s = await states(svc, frames)
                return all(st == "delivered" for st, _ in s.values()) and len(s) == 5

            await eventually(delivered)
            got = log.snapshot()
            assert set(frames) <= set(got)
            assert log.duplicates == 0
            assert got[frames[0]]["disposition"] == "reject" and got[frames[0]]["station"] == station

            async def announced() -> bool:
                return set(frames) <= set(dispatched)

            await eventually(announced)
            assert dispatched[frames[0]].target == endpoint and dispatched[frames[0]].attempts >= 2
            assert svc.ctx.db is not None
            async with svc.ctx.db.connection() as conn:
                cur = await conn.execute("SELECT count(*) FROM outbox WHERE frame_id = ANY(%s)", (frames,))
                row = await cur.fetchone()
            assert row is not None and row[0] == 5
    finally:
        stop.set()
        await watcher


async def test_dead_after_max_attempts_then_redeliver_over_grpc(mes_settings: Settings, mint: Any) -> None:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}/dispositions"
    r = result("st-dead", common_pb2.DISPOSITION_HOLD)
    async with mes_running(mes_settings, fast(endpoint, max_attempts=2), consume=False) as svc:
        assert await svc.app.enqueue(r)
        assert not await svc.app.enqueue(r)  # de-duplicated by frame id

        async def dead() -> bool:
            return (await svc.app.status(r.frame_id)).state == "dead"

        await eventually(dead)
        token = {"value": mint("line_operator@*/*", subject="olga")}
        async with grpc.aio.insecure_channel(
            mes_settings.grpc_target("mes"), interceptors=bearer_interceptors(lambda: token["value"])
        ) as channel:
            stub = mes_pb2_grpc.MesIntegrationServiceStub(channel)
            status = await stub.GetDispatchStatus(mes_pb2.GetDispatchStatusRequest(frame_id=r.frame_id))
            assert status.state == "dead" and status.attempts == 2 and status.last_error
            assert status.disposition == common_pb2.DISPOSITION_HOLD
            log = DispositionLog()
            with pytest.raises(grpc.aio.AioRpcError) as refused:  # redelivery is an engineer's call
                await stub.Redeliver(mes_pb2.RedeliverRequest(frame_id=r.frame_id))
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert (await svc.app.status(r.frame_id)).state == "dead"
            token["value"] = mint("engineer@*/*", subject="erin")
            async with receiver(port, log):
                again = await stub.Redeliver(mes_pb2.RedeliverRequest(frame_id=r.frame_id))
                assert again.state in ("pending", "delivered")

                async def delivered() -> bool:
                    return (await svc.app.status(r.frame_id)).state == "delivered"

                await eventually(delivered)
                assert log.snapshot()[r.frame_id]["disposition"] == "hold"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetDispatchStatus(mes_pb2.GetDispatchStatusRequest(frame_id="unknown"))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_malformed_result_goes_to_dlq(mes_settings: Settings, bus: Bus) -> None:
    async with mes_running(mes_settings, fast(mes_settings.mes_endpoint), dispatch=False) as svc:
        station = f"bad{uuid.uuid4().hex[:6]}"
        subject = subjects.station_subject(PLANT, "line1", station, subjects.INSPECTION_RESULT)
        await bus.jetstream.publish(
            subject,
            b"\x08\x96\x01garbage",
            headers={"Ls-Type": "linesight.v1.InspectionResult", "Nats-Msg-Id": uuid.uuid4().hex},
        )

        async def dead_lettered() -> bool:
            try:
                msg = await bus.jetstream.get_last_msg("DLQ", subjects.dlq_subject(subject))
            except Exception:
                return False
            return bool(msg.headers and msg.headers.get(HDR_DLQ_REASON) in ("undecodable", "poison"))

        await eventually(dead_lettered)
        ok = result(station)
        await bus.publish(subject, ok)

        async def recorded() -> bool:
            return bool(await states(svc, [ok.frame_id]))

        await eventually(recorded)  # the consumer survived the bad message


async def test_result_not_produced_by_inference_is_dead_lettered(mes_settings: Settings, bus: Bus) -> None:
    """Only inference decides dispositions: a result claiming another producer (sent through a
    server without permissions, where nothing else stops it) never reaches the MES."""
    async with mes_running(mes_settings, fast(mes_settings.mes_endpoint), dispatch=False) as svc:
        station = f"forge{uuid.uuid4().hex[:6]}"
        subject = subjects.station_subject(PLANT, "line1", station, subjects.INSPECTION_RESULT)
        forged = result(station, common_pb2.DISPOSITION_PASS)
        forged.meta.producer = "capture/station1"
        await bus.publish(subject, forged)

        async def dead_lettered() -> bool:
            try:
                msg = await bus.jetstream.get_last_msg("DLQ", subjects.dlq_subject(subject))
            except Exception:
                return False
            return bool(msg.headers and msg.headers.get(HDR_DLQ_REASON) == "poison")

        await eventually(dead_lettered)
        genuine = result(station)
        await bus.publish(subject, genuine)

        async def recorded() -> bool:
            return bool(await states(svc, [genuine.frame_id]))

        await eventually(recorded)
        assert await states(svc, [forged.frame_id]) == {}


async def test_other_plants_results_are_not_dispatched(mes_settings: Settings, bus: Bus) -> None:
    """The outbox feeds this plant's MES endpoint: another plant's results on the bus never enter it."""
    async with mes_running(mes_settings, fast(mes_settings.mes_endpoint), dispatch=False) as svc:
        station = f"mix{uuid.uuid4().hex[:6]}"
        other_plant = f"other{uuid.uuid4().hex[:6]}"
        foreign = result(station)
        foreign.capture.station.plant = other_plant
        await bus.publish(
            subjects.station_subject(other_plant, "line1", station, subjects.INSPECTION_RESULT), foreign
        )
        ours = result(station)
        await bus.publish(subjects.station_subject(PLANT, "line1", station, subjects.INSPECTION_RESULT), ours)

        async def recorded() -> bool:
            return bool(await states(svc, [ours.frame_id]))

        await eventually(recorded)  # published after the foreign one, so that one was seen (or not) first
        assert await states(svc, [foreign.frame_id]) == {}


async def test_claims_of_a_crashed_dispatcher_are_taken_over_within_seconds(mes_settings: Settings) -> None:
    """A dispatcher that dies between claiming and recording leaves its station's queue claimed for
    the whole lease; its silent heartbeat frees the claim at once, a live one's claim holds."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}/dispositions"
    station = f"crash{uuid.uuid4().hex[:6]}"
    r = result(station)
    log = DispositionLog()
    async with (
        mes_running(mes_settings, fast(endpoint), consume=False, dispatch=False) as svc,
        receiver(port, log),
    ):
        assert svc.ctx.db is not None and await svc.app.enqueue(r)
        name = svc.app.endpoints[0]

        async def claim_as(owner: str) -> int:
            assert svc.ctx.db is not None
            async with svc.ctx.db.connection() as conn, conn.transaction():
                got = await outbox.claim_heads(
                    conn, endpoint=name, plant=PLANT, token=f"{owner}:c1", queues=64, per_queue=1, lease_s=600
                )
            return sum(1 for c in got if c.row.frame_id == r.frame_id)

        assert await claim_as("alive-peer") == 1  # a live dispatcher holds the station's head...
        assert await svc.app.dispatch_once() == 0 and r.frame_id not in log.snapshot()
        async with svc.ctx.db.connection() as conn:  # ...until it stops beating (it crashed)
            await conn.execute(
                "UPDATE dispatcher_heartbeats SET seen_at = now() - make_interval(secs => %s) "
                "WHERE owner = %s",
                (outbox.OWNER_STALE_S + 1, "alive-peer"),
            )
            due = await outbox.next_due_in_s(conn, endpoint=name, plant=PLANT)
        assert due is not None and due < 1.0  # not 600 s: the lease no longer counts
        assert await svc.app.dispatch_once() >= 1
        assert r.frame_id in log.snapshot() and log.duplicates == 0
        assert (await svc.app.status(r.frame_id)).state == "delivered"
