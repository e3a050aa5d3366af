"""A service that calls ctx.use_auth is deny-by-default on HTTP and gRPC, and cannot start with an
HTTP route that has no rule."""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio
import httpx
import pytest

from linesight.common.grpcutil import Forbidden, ServiceClient, Unauthenticated
from linesight.common.identity.fastapi import CurrentPrincipal, require
from linesight.common.identity.grpc import current_principal
from linesight.common.identity.model import Role
from linesight.common.identity.policy import Policy
from linesight.common.pb import common_pb2
from linesight.common.service import ServiceContext, StartupError, service_running
from linesight.common.settings import Settings

pytestmark = pytest.mark.integration

SERVICE = "taxonomy"
POLICY = Policy(
    public={"test.login"},
    rules={"test.read": {Role.LABELER, Role.REVIEWER}, "test.Echo/Echo": {Role.ENGINEER}},
)


class EchoStub:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.Echo = channel.unary_unary(
            "/test.Echo/Echo",
            request_serializer=common_pb2.StationRef.SerializeToString,
            response_deserializer=common_pb2.StationRef.FromString,
        )


class EchoClient(ServiceClient[EchoStub]):
    def __init__(self, target: str, **kw: Any) -> None:
        super().__init__(target, EchoStub, service="echo", retries=0, **kw)

    async def echo(self) -> common_pb2.StationRef:
        result: common_pb2.StationRef = await self.call("Echo", common_pb2.StationRef())
        return result


async def _echo(request: common_pb2.StationRef, context: grpc.aio.ServicerContext) -> common_pb2.StationRef:
    return common_pb2.StationRef(plant=current_principal().subject)


async def setup(ctx: ServiceContext) -> None:
    ctx.use_auth(POLICY)
    handler = grpc.method_handlers_generic_handler(
        "test.Echo",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(
                _echo,
                request_deserializer=common_pb2.StationRef.FromString,
                response_serializer=common_pb2.StationRef.SerializeToString,
            )
        },
    )
    ctx.add_grpc(lambda server: server.add_generic_rpc_handlers((handler,)))

    @ctx.app.get("/things", dependencies=[require("test.read")])
    async def things(who: CurrentPrincipal) -> dict[str, str]:
        return {"who": who.subject}

    @ctx.app.post("/login", dependencies=[require("test.login")])
    async def login() -> dict[str, str]:
        return {"ok": "yes"}


async def test_http_and_grpc_deny_by_default(stack_settings: Settings, mint: Any) -> None:
    labeler = mint("labeler@plant1/tile", subject="ann")
    engineer = mint("engineer", subject="eve")
    async with service_running(SERVICE, setup, settings=stack_settings):
        async with httpx.AsyncClient(base_url=stack_settings.http_url(SERVICE), timeout=10) as http:
            assert (await http.get("/healthz")).status_code == 200
            anonymous = await http.get("/things")
            assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer"
            assert (
                await http.get("/things", headers={"authorization": f"Bearer {engineer}"})
            ).status_code == 403
            ok = await http.get("/things", headers={"authorization": f"Bearer {labeler}"})
            assert ok.status_code == 200 and ok.json() == {"who": "ann"}
            assert (
                await http.get("/things", headers={"authorization": "Bearer forged.token.x"})
            ).status_code == 401
            assert (await http.post("/login")).json() == {"ok": "yes"}
        target = stack_settings.grpc_target(SERVICE)
        async with EchoClient(target) as anonymous_client:
            with pytest.raises(Unauthenticated):
                await anonymous_client.echo()
        async with EchoClient(target, token=labeler) as wrong_role:
            with pytest.raises(Forbidden):
                await wrong_role.echo()
        async with EchoClient(target, token=lambda: engineer) as right_role:
            assert (await right_role.echo()).plant == "eve"


async def test_route_without_a_rule_stops_the_service(stack_settings: Settings) -> None:
    async def open_route(ctx: ServiceContext) -> None:
        ctx.use_auth(POLICY)

        @ctx.app.get("/forgotten")
        async def forgotten() -> dict[str, str]:
            return {}

    with pytest.raises(StartupError, match="GET /forgotten"):
        async with service_running(SERVICE, open_route, settings=stack_settings):
            pass
