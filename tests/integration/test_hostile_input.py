"""Hostile input against every service: no request a caller can send may end in an HTTP 500 or a
gRPC INTERNAL/UNKNOWN.

HTTP: schemathesis generates requests from each running service's /openapi.json (valid ones and
schema-violating ones), sent with a token holding every role and anonymously; every valid request
is sent again poisoned (a NUL byte appended to each string it carries) and bloated (each string
100 000 characters long), which must be refused with a 4xx. gRPC: every method of every service
gets requests whose strings hold a NUL byte, a control character or 100 000 characters, and whose
enum fields hold numbers no enum declares; each must be refused (INVALID_ARGUMENT, NOT_FOUND,
PERMISSION_DENIED, FAILED_PRECONDITION), never INTERNAL or UNKNOWN.

Generation is derandomized and bounded (`EXAMPLES` per operation and mode), so a failure
reproduces and the module stays within a few minutes. Services run in-process on the test stack,
started as the endpoint matrix starts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import grpc.aio
import httpx
import hypothesis
import pytest
import requests
import schemathesis
from google.protobuf import symbol_database
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, Phase, given
from schemathesis import GenerationMode
from schemathesis.core.result import Err

from linesight.common.identity.grpc import bearer_metadata
from linesight.common.identity.model import Role
from linesight.common.settings import SERVICE_PORTS, Settings
from tests.integration.test_endpoint_matrix import grpc_services, matrix_settings, running

__all__ = ["matrix_settings"]  # the fixture, imported so pytest finds it here

pytestmark = pytest.mark.integration

EXAMPLES = 3  # per operation and mode with all roles: the module runs in ~3 minutes on 2 shared cores
ANONYMOUS_EXAMPLES = 1  # refused before validation: one positive request per operation shows it
LONG = 100_000
HOSTILE_STRINGS = {"NUL": "fuzz\x00zz", "control": "fuzz\x1b[2J\x07", "100 KB": "x" * LONG}
UNKNOWN_ENUM = 9_999
REFUSED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION,
}
SETTINGS = hypothesis.settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],  # report what was found; shrinking costs minutes
    suppress_health_check=list(HealthCheck),
)


@dataclass
class Tally:
    """What the HTTP pass sent and what it got back that it should not have."""

    operations: int = 0
    requests: int = 0
    problems: list[str] = field(default_factory=list)

    def check(self, label: str, reply: schemathesis.Response, *, must_refuse: bool) -> None:
        self.requests += 1
        status = reply.status_code
        if status >= 500:
            self.problems.append(f"{label}: {status} {reply.text[:300]}")
        elif must_refuse and status < 400:
            self.problems.append(f"{label}: accepted ({status}) {reply.text[:200]}")


def _strings(value: Any, change: Callable[[str], str]) -> tuple[Any, bool]:
    """`value` with every string in it (keys aside) replaced by `change(s)`; and whether any was."""
    if isinstance(value, str):
        return change(value), True
    if isinstance(value, dict):
        items = {k: _strings(v, change) for k, v in value.items()}
        return {k: v for k, (v, _) in items.items()}, any(c for _, c in items.values())
    if isinstance(value, list):
        items_ = [_strings(v, change) for v in value]
        return [v for v, _ in items_], any(c for _, c in items_)
    return value, False


def _hostile_copies(case: schemathesis.Case) -> Iterator[tuple[str, schemathesis.Case]]:
    """The case with a NUL byte in every string it carries, and with every string 100 KB long.
    Path parameters are percent-encoded as an HTTP client would (schemathesis sends them raw, and
    a raw NUL in a request line never gets past the HTTP parser to the app)."""
    variants: dict[str, Callable[[str], str]] = {
        "NUL": lambda s: s + "\x00",
        "100 KB": lambda s: (s or "x") * (LONG // max(1, len(s)) + 1),
    }
    for name, change in variants.items():
        changed = False
        parts: dict[str, Any] = {}
        for part in ("path_parameters", "query", "body"):
            original = getattr(case, part)
            if part == "body" and not isinstance(original, dict | list | str):
                continue
            encode = _percent_encoded(change) if part == "path_parameters" else change
            parts[part], touched = _strings(copy.deepcopy(original), encode)
            changed = changed or touched
        if changed:
            yield name, case.operation.Case(media_type=case.media_type, **parts)


def _percent_encoded(change: Callable[[str], str]) -> Callable[[str], str]:
    return lambda s: quote(change(s), safe="")


def fuzz_http(base_url: str, document: dict[str, Any], token: str) -> Tally:
    """Blocking: run in a thread while the service serves on the test's event loop."""
    schema = schemathesis.openapi.from_dict(document)
    tally = Tally()
    session = requests.Session()
    callers = {"all roles": {"Authorization": f"Bearer {token}"}, "anonymous": {}}
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()  # an operation schemathesis cannot read is a broken document
        operation = result.ok()
        tally.operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for caller, headers in callers.items():
                if caller == "anonymous" and mode is GenerationMode.NEGATIVE:
                    continue  # refused before validation: the positive pass shows it never fails
                _fuzz_operation(operation, mode, caller, headers, base_url, session, tally)
    return tally


def _fuzz_operation(
    operation: schemathesis.APIOperation,
    mode: GenerationMode,
    caller: str,
    headers: dict[str, str],
    base_url: str,
    session: requests.Session,
    tally: Tally,
) -> None:
    label = f"{operation.label} [{mode.value}, {caller}]"
    hostile_too = mode is GenerationMode.POSITIVE and caller == "all roles"

    @hypothesis.settings(SETTINGS, max_examples=EXAMPLES if caller == "all roles" else ANONYMOUS_EXAMPLES)
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        tally.check(label, case.call(base_url, session, headers=headers, timeout=30), must_refuse=False)
        for hostile, poisoned in _hostile_copies(case) if hostile_too else ():
            reply = poisoned.call(base_url, session, headers=headers, timeout=30)
            tally.check(f"{label} {hostile}", reply, must_refuse=True)

    try:
        run()
    except hypothesis.errors.Unsatisfiable:
        # Nothing to violate (no parameters, no body): the positive mode covers the operation.
        assert mode is GenerationMode.NEGATIVE, f"{label}: schemathesis generated no request"


def _hostile_request(message: Descriptor, text: str | None, enum_number: int | None) -> Message | None:
    """A request whose every string (nested messages included) is `text` and every enum
    `enum_number`, where given; repeated fields hold one such element. None when the request has
    no such field (nothing hostile to send)."""
    request: Message = symbol_database.Default().GetSymbol(message.full_name)()
    return request if _fill(request, text, enum_number, depth=0) else None


def _fill(msg: Message, text: str | None, enum_number: int | None, depth: int) -> bool:
    filled = False
    for f in msg.DESCRIPTOR.fields:
        value: str | int | None = None
        if f.type == FieldDescriptor.TYPE_STRING:
            value = text
        elif f.type == FieldDescriptor.TYPE_ENUM:
            value = enum_number
        elif (
            f.type == FieldDescriptor.TYPE_MESSAGE and depth < 3 and not f.message_type.GetOptions().map_entry
        ):
            if not f.message_type.full_name.startswith("google.protobuf."):
                child = getattr(msg, f.name).add() if f.is_repeated else getattr(msg, f.name)
                filled = _fill(child, text, enum_number, depth + 1) or filled
            continue
        if value is None:
            continue
        if f.is_repeated:
            getattr(msg, f.name).append(value)
        else:
            setattr(msg, f.name, value)
        filled = True
    return filled


def _has_enum(message: Descriptor, depth: int = 0) -> bool:
    return any(
        f.type == FieldDescriptor.TYPE_ENUM
        or (f.type == FieldDescriptor.TYPE_MESSAGE and depth < 3 and _has_enum(f.message_type, depth + 1))
        for f in message.fields
    )


async def fuzz_grpc(service: str, settings: Settings, token: str) -> tuple[int, int, list[str]]:
    """Every method with every hostile variant; (methods, calls, problems)."""
    problems: list[str] = []
    methods = calls = 0
    async with grpc.aio.insecure_channel(
        settings.grpc_target(service), options=[("grpc.max_receive_message_length", 16 * 1024 * 1024)]
    ) as channel:
        for svc in grpc_services(service):
            for method in svc.methods:
                methods += 1
                variants: dict[str, tuple[str, int | None]] = {
                    name: (text, None) for name, text in HOSTILE_STRINGS.items()
                }
                if _has_enum(method.input_type):
                    variants["unknown enum"] = ("fuzz", UNKNOWN_ENUM)
                for name, (text, number) in variants.items():
                    request = _hostile_request(method.input_type, text, number)
                    if request is None:
                        continue
                    code, details = await _call(channel, method, request, token)
                    calls += 1
                    if code not in REFUSED:
                        problems.append(
                            f"{svc.full_name}/{method.name} [{name}]: {code.name} {details[:300]}"
                        )
    return methods, calls, problems


async def _call(
    channel: grpc.aio.Channel, method: MethodDescriptor, request: Message, token: str
) -> tuple[grpc.StatusCode, str]:
    response_type = symbol_database.Default().GetSymbol(method.output_type.full_name)
    path = f"/{method.containing_service.full_name}/{method.name}"
    try:
        if method.client_streaming:  # an upload: the hostile message as its whole stream
            upload = channel.stream_unary(
                path,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=response_type.FromString,
            )
            await upload(iter([request]), timeout=30, metadata=bearer_metadata(token))
            return grpc.StatusCode.OK, ""
        call = channel.unary_unary(
            path,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_type.FromString,
        )
        await call(request, timeout=30, metadata=bearer_metadata(token))
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def _all_roles(mint: Any) -> str:
    return str(mint(*(f"{r.value}@*/*" for r in Role), subject=f"fuzz-{uuid.uuid4().hex[:6]}"))


@pytest.mark.parametrize("service", list(SERVICE_PORTS))
async def test_hostile_http_input_never_ends_in_a_server_error(
    service: str, matrix_settings: Settings, mint: Any, tmp_path: Path
) -> None:
    token = _all_roles(mint)
    # Labeling's taxonomy editor answers through the taxonomy service: with it down, a valid
    # request is rightly a 503, which says nothing about how hostile input is handled.
    peer: contextlib.AbstractAsyncContextManager[Any] = contextlib.nullcontext()
    if service == "labeling":
        peer = running("taxonomy", matrix_settings, tmp_path)
    async with peer, running(service, matrix_settings, tmp_path):
        base = matrix_settings.http_url(service)
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            document = (await http.get("/openapi.json")).json()
        tally = await asyncio.to_thread(fuzz_http, base, document, token)
    print(f"{service}: HTTP {tally.operations} operations, {tally.requests} requests")
    assert tally.operations > 0 and tally.requests >= 2 * tally.operations  # all roles + anonymous
    assert not tally.problems, f"{service}:\n" + "\n".join(sorted(set(tally.problems)))


@pytest.mark.parametrize("service", list(SERVICE_PORTS))
async def test_hostile_grpc_input_is_refused_never_internal(
    service: str, matrix_settings: Settings, mint: Any, tmp_path: Path
) -> None:
    token = _all_roles(mint)
    async with running(service, matrix_settings, tmp_path):
        methods, calls, problems = await fuzz_grpc(service, matrix_settings, token)
    print(f"{service}: gRPC {methods} methods, {calls} calls")
    assert methods > 0 and calls > 0
    assert not problems, f"{service}:\n" + "\n".join(problems)


# ---- regressions: what the fuzzers found and the measured cases they stand for ------------------


def _locations(reply: httpx.Response) -> list[str]:
    detail = reply.json()["detail"]
    assert isinstance(detail, list), detail
    return [".".join(str(p) for p in d["loc"]) for d in detail]


async def test_labeling_refuses_hostile_label_fields_naming_them(
    matrix_settings: Settings, mint: Any, tmp_path: Path
) -> None:
    token = _all_roles(mint)
    label = {"frame_id": "f-1", "label": "crack", "severity": "minor"}
    cases: list[tuple[dict[str, Any], str]] = [
        ({**label, "label": "crack\x00"}, "body.label"),
        ({**label, "comment": "ok\x07"}, "body.comment"),
        ({**label, "comment": "c" * 5_000}, "body.comment"),
        ({**label, "label": 5}, "body.label"),  # numbers are not coerced into strings
        ({**label, "ambiguous": "true"}, "body.ambiguous"),  # nor strings into bools
        ({**label, "severity": "catastrophic"}, "body.severity"),  # unknown word: not "unspecified"
    ]
    async with (
        running("labeling", matrix_settings, tmp_path),
        httpx.AsyncClient(
            base_url=matrix_settings.http_url("labeling"), headers={"Authorization": f"Bearer {token}"}
        ) as http,
    ):
        for body, field_name in cases:
            reply = await http.post("/api/labels", json=body)
            assert reply.status_code == 422, (body, reply.text)
            assert field_name in _locations(reply), (body, reply.text)
        big = await http.post("/api/labels", json={**label, "comment": "c" * (5 * 1024 * 1024)})
        assert big.status_code == 413
        for path in ("/api/frames/f%00/labels", "/api/results?station=s%00", "/api/results?verdict=passed"):
            assert (await http.get(path)).status_code == 422, path
        assert (await http.get("/api/results?verdict=PASS")).status_code == 200
        for body in ({"username": 5, "password": "x"}, {"username": "ann\x00", "password": "x"}):
            login = await http.post("/login", json=body)
            assert login.status_code == 422 and "body.username" in _locations(login), login.text


async def test_mes_and_taxonomy_refuse_nul_in_paths_and_bodies(
    matrix_settings: Settings, mint: Any, tmp_path: Path
) -> None:
    token = _all_roles(mint)
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        running("mes", matrix_settings, tmp_path),
        httpx.AsyncClient(base_url=matrix_settings.http_url("mes"), headers=headers) as http,
    ):
        for reply in (
            await http.get("/api/dispatch/f%00"),
            await http.post("/api/dispatch/f%00/redeliver"),
        ):
            assert reply.status_code == 422 and "path.frame_id" in _locations(reply), reply.text
    async with (
        running("taxonomy", matrix_settings, tmp_path),
        httpx.AsyncClient(base_url=matrix_settings.http_url("taxonomy"), headers=headers) as http,
    ):
        reply = await http.post("/api/taxonomies/tile/drafts/1/reject", json={"comment": "no\x00"})
        assert reply.status_code == 422 and "body.comment" in _locations(reply), reply.text
        reply = await http.post("/api/taxonomies/tile/drafts", json={"yaml": 7})
        assert reply.status_code == 422 and "body.yaml" in _locations(reply), reply.text


def test_grpc_request_check_names_the_field() -> None:
    from linesight.common.grpcutil import InvalidArgument, brief_details, check_request
    from linesight.common.limits import TextError
    from linesight.common.pb import capture_pb2, labeling_pb2, taxonomy_pb2

    with pytest.raises(TextError, match=r"^station\.station: control characters"):
        check_request(capture_pb2.GetStationProfileRequest(station={"station": "s\x00"}))
    with pytest.raises(TextError, match=r"^extra\[k\]: control"):
        check_request(capture_pb2.TriggerRequest(extra={"k": "v\x1b"}))
    with pytest.raises(TextError, match=r"^part_id: at most"):
        check_request(capture_pb2.TriggerRequest(part_id="p" * LONG))
    severity = labeling_pb2.SubmitLabelRequest.DESCRIPTOR.fields_by_name.get("severity")
    assert severity is not None and severity.type == FieldDescriptor.TYPE_ENUM
    with pytest.raises(InvalidArgument, match=r"^severity: unknown value 9999"):
        check_request(labeling_pb2.SubmitLabelRequest(severity=UNKNOWN_ENUM))  # type: ignore[arg-type]
    check_request(taxonomy_pb2.PublishTaxonomyRequest(yaml="classes:\n\t- crack\n" + "#" * LONG))
    check_request(capture_pb2.TriggerRequest(part_id="p-1", extra={"k": "v"}))  # ordinary input passes
    assert len(brief_details("x" * LONG)) <= 1_000


async def test_a_message_over_the_bus_limit_is_the_callers_error_not_an_outage(nats_url: str) -> None:
    """Before: nats' MaxPayloadError surfaced as BusUnavailable ("connection unusable", retry);
    now a ValueError naming the size and the limit (INVALID_ARGUMENT; a caller publishing inside
    its transaction, as taxonomy does, commits nothing)."""
    from linesight.common import subjects
    from linesight.common.bus import Bus, PayloadTooLarge
    from linesight.common.events import new_meta
    from linesight.common.pb import events_pb2

    bus = await Bus.connect(nats_url, "hostile-input")
    try:
        await bus.ensure_streams()
        subject = subjects.station_subject(f"p{uuid.uuid4().hex[:8]}", "l1", "s1", subjects.FRAME_CAPTURED)
        huge = events_pb2.FrameCaptured(meta=new_meta("tests"), frame_id="f" * (2 << 20))
        with pytest.raises(PayloadTooLarge, match=r"accepts at most \d+ per message \(max_payload\)"):
            await bus.publish(subject, huge)
        ok = await bus.publish(subject, events_pb2.FrameCaptured(meta=new_meta("tests"), frame_id="f-1"))
        assert ok.seq > 0  # the connection is still usable
    finally:
        await bus.close()
