"""Role x endpoint matrix: every HTTP route and gRPC method of every service, called anonymously
and as each role, against the policy the running service enforces.

Routes come from each service's OpenAPI document and methods from the service descriptors
(`linesight.common.pb.<service>_pb2`), so a new endpoint is checked without editing this file, and
one the policy does not declare fails it. Expectations:

- anonymous: 401 / UNAUTHENTICATED, except the policy's public operations (login) and the shell's
  open paths (health, readiness, metrics, API docs). A browser page may instead send the visitor
  to the login page (a redirect whose Location names it).
- a role the policy does not allow: 403 / PERMISSION_DENIED;
- a role it allows: anything but 401/403 (the request itself is empty, so most answers are
  400/404/422 or INVALID_ARGUMENT/NOT_FOUND: the point is that authorisation let it through).

Requests are empty (JSON `{}`, path parameters `x`), so the allowed calls change nothing that
matters; `PROBES` gives a request that fails validation after authorisation where an empty one
would start work (an empty StartTraining trains on the confirmed labels).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import httpx
import pytest
from fastapi.routing import iter_route_contexts
from google.protobuf import symbol_database
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from linesight.capture.app.config import CaptureOptions
from linesight.capture.app.profile import StationProfile
from linesight.capture.service import make_setup as capture_setup
from linesight.common.identity.fastapi import AUTHENTICATION_REQUIRED, route_operations
from linesight.common.identity.grpc import bearer_metadata
from linesight.common.identity.model import Role
from linesight.common.identity.policy import Policy
from linesight.common.pb import training_pb2
from linesight.common.service import OPEN_PATHS, RunningService, ServiceContext, service_running
from linesight.common.settings import SERVICE_PORTS, Settings
from linesight.inference.service import setup as inference_setup
from linesight.labeling.service import setup as labeling_setup
from linesight.mes.service import MesOptions
from linesight.mes.service import make_setup as mes_setup
from linesight.taxonomy.service import setup as taxonomy_setup
from linesight.training.service import TrainingServiceOptions
from linesight.training.service import make_setup as training_setup
from tests.unit.capture.helpers import textured, write_png
from tests.unit.inference.standin import LOADER

pytestmark = pytest.mark.integration

PLANT = f"matrix{uuid.uuid4().hex[:6]}"  # results and frames of this test stay in a plant of their own
PATH_PARAM = "x"
ROLES = tuple(Role)
POLICY_REFUSAL = AUTHENTICATION_REQUIRED
# Requests that pass authorisation and then fail validation, where an empty one would start work.
PROBES: dict[str, Message] = {
    "linesight.v1.TrainingService/StartTraining": training_pb2.StartTrainingRequest(
        product="matrix", dataset_version="../outside-the-dataset-root"
    ),
}


def _capture(tmp: Path) -> Callable[[ServiceContext], Awaitable[Any]]:
    frames = tmp / "frames"
    frames.mkdir()
    for i in range(2):
        write_png(frames / f"p{i}.png", textured(900 + i))
    profile = StationProfile(
        plant=PLANT, line="l1", station="s1", version="1", trigger_mode="software", source="replay",
        source_uri=str(frames), spool_dir=str(tmp / "spool"),
    )  # fmt: skip
    profile.save(tmp / "station.yaml")
    return capture_setup(CaptureOptions(profile=str(tmp / "station.yaml"), free_run=False))


SETUPS: dict[str, Callable[[Path], Callable[[ServiceContext], Awaitable[Any]]]] = {
    "capture": _capture,
    "inference": lambda _: inference_setup,
    "labeling": lambda _: labeling_setup,
    "training": lambda _: training_setup(TrainingServiceOptions(consume=False)),
    "taxonomy": lambda _: taxonomy_setup,
    "mes": lambda _: mes_setup(MesOptions(consume=False, dispatch=False)),
}


def grpc_services(name: str) -> list[ServiceDescriptor]:
    """The gRPC services `name` serves, from its generated module's descriptor."""
    module = importlib.import_module(f"linesight.common.pb.{name}_pb2")
    return list(module.DESCRIPTOR.services_by_name.values())


@dataclass
class Matrix:
    service: str
    policy: Policy
    tokens: dict[Role, str]
    problems: list[str]
    exercised: set[str]

    def expect(
        self, endpoint: str, operation: str | None, caller: Role | None, status: str, detail: str = ""
    ) -> None:
        """Record a problem when `status` is not what `policy` says `caller` should get.

        A public operation may still answer 401 on its own (a refresh without a session, a login
        with wrong credentials); what it must never do is refuse by policy, whose 401 says
        "authentication required"."""
        denied_anon = status in ("401", "UNAUTHENTICATED")
        denied_role = status in ("403", "PERMISSION_DENIED")
        who = caller.value if caller is not None else "anonymous"
        if operation is not None:
            self.exercised.add(operation)
        if operation is None:  # an open path of the shell: health, readiness, metrics, docs
            if denied_anon or denied_role:
                self.problems.append(f"{endpoint}: open path refused {who} ({status})")
            return
        if self.policy.is_public(operation):
            if denied_role or (denied_anon and detail == POLICY_REFUSAL):
                self.problems.append(f"{endpoint} ({operation}, public): refused {who} ({status})")
            return
        if caller is None:
            if not denied_anon:
                self.problems.append(f"{endpoint} ({operation}): anonymous got {status}, not 401")
            return
        allowed = caller in self.policy.allowed_roles(operation)
        if allowed and (denied_anon or denied_role):
            self.problems.append(f"{endpoint} ({operation}): {who} is allowed but got {status}")
        if not allowed and not denied_role:
            self.problems.append(f"{endpoint} ({operation}): {who} is not allowed but got {status}")


@contextlib.asynccontextmanager
async def running(name: str, settings: Settings, tmp: Path) -> AsyncIterator[RunningService[Any]]:
    async with service_running(name, SETUPS[name](tmp), settings=settings) as svc:
        yield svc


async def check_grpc(matrix: Matrix, settings: Settings) -> int:
    services = grpc_services(matrix.service)
    declared = [f"{s.full_name}/{m.name}" for s in services for m in s.methods]
    matrix.problems += [f"gRPC {op}: missing from the policy" for op in matrix.policy.unmapped(declared)]
    calls = 0
    async with grpc.aio.insecure_channel(settings.grpc_target(matrix.service)) as channel:
        for svc in services:
            for method in svc.methods:
                operation = f"{svc.full_name}/{method.name}"
                for caller in (None, *ROLES):
                    token = matrix.tokens[caller] if caller is not None else None
                    status = await _call(channel, method, operation, token)
                    matrix.expect(f"gRPC {operation}", operation, caller, status)
                    calls += 1
    return calls


async def _call(
    channel: grpc.aio.Channel, method: MethodDescriptor, operation: str, token: str | None
) -> str:
    if method.server_streaming:
        raise AssertionError(f"{operation} streams: teach the endpoint matrix to call streaming methods")
    db = symbol_database.Default()
    request_type = db.GetSymbol(method.input_type.full_name)
    response_type = db.GetSymbol(method.output_type.full_name)
    request = PROBES.get(operation) or request_type()
    metadata = bearer_metadata(token) if token else None
    try:
        if method.client_streaming:  # an upload: the same probe as its one message
            upload = channel.stream_unary(
                f"/{operation}",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=response_type.FromString,
            )
            await upload(iter([request]), timeout=30, metadata=metadata)
            return "OK"
        call = channel.unary_unary(
            f"/{operation}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_type.FromString,
        )
        await call(request, timeout=30, metadata=metadata)
    except grpc.aio.AioRpcError as exc:
        return str(exc.code().name)
    return "OK"


def http_operations(svc: RunningService[Any]) -> dict[tuple[str, str], str | None]:
    """(METHOD, path) -> the operation its `require` declares, None for the shell's open paths."""
    out: dict[tuple[str, str], str | None] = {}
    for route in iter_route_contexts(svc.ctx.app.routes):  # routes of included routers too
        if not route.methods or not route.path:
            continue
        ops = route_operations(route)
        for method in route.methods:
            out[(method, route.path)] = ops[0] if ops else None
    return out


async def check_http(matrix: Matrix, settings: Settings, svc: RunningService[Any]) -> int:
    base = settings.http_url(matrix.service)
    operations = http_operations(svc)
    calls = 0
    async with httpx.AsyncClient(base_url=base, timeout=30, follow_redirects=False) as http:
        document = (await http.get("/openapi.json")).json()
        routes = [
            (method.upper(), path)
            for path, item in document["paths"].items()
            for method in item
            if method.upper() in {"GET", "POST", "PUT", "PATCH", "DELETE"}
        ]
        assert routes, f"{matrix.service}: the OpenAPI document lists no routes"
        for method, path in routes:
            endpoint = f"HTTP {method} {path}"
            operation = operations.get((method, path))
            if operation is None and path not in OPEN_PATHS:
                matrix.problems.append(f"{endpoint}: no authorization rule (require) on the route")
                continue
            if operation is not None and not matrix.policy.declares(operation):
                matrix.problems.append(f"{endpoint}: operation {operation!r} missing from the policy")
                continue
            url = _fill(path)
            for caller in (None, *ROLES):
                headers = {"Authorization": f"Bearer {matrix.tokens[caller]}"} if caller is not None else {}
                kwargs: dict[str, Any] = {} if method in ("GET", "DELETE") else {"json": {}}
                reply = await http.request(method, url, headers=headers, **kwargs)
                status = str(reply.status_code)
                public = operation is not None and matrix.policy.is_public(operation)
                if (
                    caller is None
                    and not public
                    and reply.is_redirect
                    and "login" in reply.headers.get("location", "")
                ):
                    status = "401"  # a page sending the anonymous visitor to the login page
                detail = _detail(reply) if status == "401" else ""
                matrix.expect(endpoint, operation, caller, status, detail)
                calls += 1
    return calls


def _detail(reply: httpx.Response) -> str:
    try:
        body = reply.json()
    except ValueError:
        return ""
    return str(body.get("detail", "")) if isinstance(body, dict) else ""


def _fill(path: str) -> str:
    """/api/dispatch/{frame_id} -> /api/dispatch/x"""
    parts = [PATH_PARAM if p.startswith("{") and p.endswith("}") else p for p in path.split("/")]
    return "/".join(parts)


@pytest.fixture
def matrix_settings(stack_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in [k for k in os.environ if k.startswith("LINESIGHT_INFERENCE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("LINESIGHT_INFERENCE_MODEL_LOADER", LOADER)
    monkeypatch.setenv("LINESIGHT_INFERENCE_WORK_DIR", str(tmp_path / "inference"))
    return stack_settings.model_copy(update={"plant": PLANT})


@pytest.mark.parametrize("service", list(SERVICE_PORTS))
async def test_every_endpoint_admits_exactly_the_roles_its_policy_names(
    service: str, matrix_settings: Settings, mint: Any, tmp_path: Path
) -> None:
    tokens = {role: mint(f"{role.value}@*/*", subject=f"matrix-{role.value}") for role in ROLES}
    async with running(service, matrix_settings, tmp_path) as svc:
        auth = svc.ctx.auth
        assert auth is not None, f"{service} does not turn on authentication (ctx.use_auth(POLICY))"
        matrix = Matrix(service, auth.policy, tokens, [], set())
        grpc_calls = await check_grpc(matrix, matrix_settings)
        http_calls = await check_http(matrix, matrix_settings, svc)
    stale = sorted((set(matrix.policy.rules) | matrix.policy.public) - matrix.exercised)
    matrix.problems += [f"policy rule {op!r} matches no route or method (stale?)" for op in stale]
    assert not matrix.problems, f"{service}:\n" + "\n".join(matrix.problems)
    assert grpc_calls + http_calls >= (len(ROLES) + 1) * len(matrix.exercised) > 0


async def test_anonymous_promote_model_is_unauthenticated(matrix_settings: Settings, tmp_path: Path) -> None:
    """The measured attack: PromoteModel(approved_by="mallory") without credentials."""
    async with (
        running("training", matrix_settings, tmp_path),
        grpc.aio.insecure_channel(matrix_settings.grpc_target("training")) as channel,
    ):
        call = channel.unary_unary(
            "/linesight.v1.TrainingService/PromoteModel",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=training_pb2.ModelEntry.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(
                training_pb2.PromoteModelRequest(model_version="any", approved_by="mallory"), timeout=10
            )
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
