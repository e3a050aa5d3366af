"""run_service in-process against the real stack: health, readiness, gRPC, consumers, shutdown."""

from __future__ import annotations

import asyncio
import socket
import uuid
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import httpx
import pytest

from linesight.common import subjects as s
from linesight.common import telemetry
from linesight.common.bus import Delivery
from linesight.common.events import new_meta
from linesight.common.grpcutil import InvalidArgument, NotFound, ServiceClient, ServiceUnavailable
from linesight.common.pb import common_pb2, events_pb2
from linesight.common.service import ServiceContext, StartupError, service_running
from linesight.common.settings import Settings

pytestmark = pytest.mark.integration

SERVICE = "capture"


class EchoStub:
    """A hand-written stub so the test does not depend on any service's proto."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.Echo = channel.unary_unary(
            "/test.Echo/Echo",
            request_serializer=common_pb2.StationRef.SerializeToString,
            response_deserializer=common_pb2.StationRef.FromString,
        )


class EchoClient(ServiceClient[EchoStub]):
    def __init__(self, target: str, **kw: Any) -> None:
        super().__init__(target, EchoStub, service="echo", **kw)

    async def echo(self, plant: str) -> common_pb2.StationRef:
        result: common_pb2.StationRef = await self.call("Echo", common_pb2.StationRef(plant=plant))
        return result


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def test_service_serves_health_grpc_and_consumers_then_stops(
    stack_settings: Settings, tmp_path: Path
) -> None:
    telemetry.setup_telemetry("service-tests")
    plant = "p" + uuid.uuid4().hex[:8]
    subject = s.station_subject(plant, "l1", "st1", s.FRAME_CAPTURED)
    received: list[str] = []
    grpc_traces: list[str] = []
    healthy = {"camera": True}

    async def echo(request: common_pb2.StationRef, context: Any) -> common_pb2.StationRef:
        grpc_traces.append(telemetry.current_trace_id())
        if request.plant == "bad":
            raise ValueError("plant 'bad' is not configured")
        if request.plant == "missing":
            raise KeyError("no such plant")
        return common_pb2.StationRef(plant=request.plant, line="echoed")

    async def camera_check() -> bool:
        return healthy["camera"]

    async def on_frame(msg: events_pb2.FrameCaptured, d: Delivery) -> None:
        received.append(msg.frame_id)

    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "0001.sql").write_text("CREATE TABLE spool (frame_id text PRIMARY KEY);")
    schema = "svc_" + uuid.uuid4().hex[:8]

    async def setup(ctx: ServiceContext) -> None:
        handler = grpc.method_handlers_generic_handler(
            "test.Echo",
            {
                "Echo": grpc.unary_unary_rpc_method_handler(
                    echo,
                    request_deserializer=common_pb2.StationRef.FromString,
                    response_serializer=common_pb2.StationRef.SerializeToString,
                )
            },
        )
        ctx.add_grpc(lambda server: server.add_generic_rpc_handlers((handler,)))
        ctx.add_readiness_check("camera", camera_check)
        ctx.consume(subject, "svc-test-" + plant, events_pb2.FrameCaptured, on_frame)
        await ctx.use_database(schema, migrations)

        @ctx.app.get("/hello")
        async def hello() -> dict[str, str]:
            return {"service": ctx.name}

    http = stack_settings.http_url(SERVICE)
    grpc_port = stack_settings.grpc_ports[SERVICE]
    async with service_running(SERVICE, setup, settings=stack_settings) as svc:
        ctx = svc.ctx
        async with httpx.AsyncClient(base_url=http, timeout=10) as client:
            assert (await client.get("/healthz")).json()["status"] == "ok"
            ready = await client.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["checks"] == {"bus": "ok", "storage": "ok", "camera": "ok", "db": "ok"}
            healthy["camera"] = False
            not_ready = await client.get("/readyz")
            assert not_ready.status_code == 503 and not_ready.json()["checks"]["camera"] == "not ready"
            healthy["camera"] = True
            assert (await client.get("/hello")).json() == {"service": SERVICE}
            metrics = await client.get("/metrics")
            assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")

        async with EchoClient(stack_settings.grpc_target(SERVICE)) as peer:
            with telemetry.tracer("tests").start_as_current_span("call"):
                caller_trace = telemetry.current_trace_id()
                assert (await peer.echo("p1")).line == "echoed"
            assert grpc_traces[-1] == caller_trace
            with pytest.raises(InvalidArgument, match="not configured"):
                await peer.echo("bad")
            with pytest.raises(NotFound, match="no such plant"):
                await peer.echo("missing")

        await ctx.bus.publish(subject, events_pb2.FrameCaptured(meta=new_meta("tests"), frame_id="f1"))
        for _ in range(200):
            if received:
                break
            await asyncio.sleep(0.05)
        assert received == ["f1"]
        assert ctx.db is not None
        async with ctx.db.connection() as conn:
            await conn.execute("INSERT INTO spool VALUES ('f1')")

    assert not _port_open(stack_settings.http_ports[SERVICE])
    assert not _port_open(grpc_port)
    assert ctx.stop.is_set() and ctx.bus.is_connected is False


async def test_client_retries_then_reports_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    async with EchoClient(f"127.0.0.1:{dead}", timeout_s=0.5, retries=2, backoff_s=0.01) as peer:
        with pytest.raises(
            ServiceUnavailable, match=r"echo Echo at 127\.0\.0\.1:\d+: UNAVAILABLE.*3 attempt"
        ):
            await peer.echo("p1")


async def test_startup_errors_name_the_cause(stack_settings: Settings) -> None:
    async def setup(ctx: ServiceContext) -> None:
        return None

    no_bus = stack_settings.model_copy(update={"nats_url": "nats://127.0.0.1:1"})
    with pytest.raises(StartupError, match=r"cannot connect to NATS at nats://127\.0\.0\.1:1"):
        async with service_running(SERVICE, setup, settings=no_bus):
            pass

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", stack_settings.http_ports[SERVICE]))
        blocker.listen(1)
        with pytest.raises(StartupError, match=r"cannot bind capture HTTP to 127\.0\.0\.1:\d+"):
            async with service_running(SERVICE, setup, settings=stack_settings):
                pass
    # Nothing half-started is left behind: the gRPC port is free again.
    assert not _port_open(stack_settings.grpc_ports[SERVICE])

    with pytest.raises(ValueError, match="unknown service 'nope'"):
        async with service_running("nope", setup, settings=stack_settings):
            pass
