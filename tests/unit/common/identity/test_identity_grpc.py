"""AuthInterceptor on a real grpc.aio server (generic bytes handlers) and the BearerToken client side."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from linesight.common.identity import Grant, Policy, Principal, Role
from linesight.common.identity.grpc import (
    AuthInterceptor,
    bearer_interceptors,
    current_principal,
    operation_of,
    service_operations,
)
from linesight.common.identity.tokens import TokenSigner, TokenVerifier, load_or_create_signing_key
from linesight.common.pb import labeling_pb2

POLICY = Policy(
    public={"test.Echo/Health"},
    rules={
        "test.Echo/Say": {Role.LABELER, Role.SERVICE},
        "test.Echo/Stream": {Role.LABELER},
        "test.Echo/Sum": {Role.SERVICE},
        "test.Echo/Scoped": {Role.LABELER},
    },
)
ANN = Principal("u_ann", "Ann", "user", (Grant.parse("labeler@plant1"),))
BOT = Principal("sa_cam", "capture-bot", "service", (Grant.parse("service"),))
RITA = Principal("u_rita", "Rita", "user", (Grant.parse("reviewer"),))


async def say(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return f"hello {current_principal().name}: {request.decode()}".encode()


async def stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    for i in range(3):
        yield f"{current_principal().name}-{i}".encode()


async def total(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
    n = sum([int(r) async for r in requests])
    return f"{current_principal().subject}={n}".encode()


async def scoped(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    # A servicer that learns the plant from the request checks the finer scope itself.
    POLICY.authorize(current_principal(), "test.Echo/Scoped", plant=request.decode())
    return b"ok"


async def health(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return b"serving"


HANDLER = grpc.method_handlers_generic_handler(
    "test.Echo",
    {
        "Say": grpc.unary_unary_rpc_method_handler(say),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Sum": grpc.stream_unary_rpc_method_handler(total),
        "Scoped": grpc.unary_unary_rpc_method_handler(scoped),
        "Health": grpc.unary_unary_rpc_method_handler(health),
        "Undeclared": grpc.unary_unary_rpc_method_handler(health),
    },
)


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> TokenSigner:
    key = load_or_create_signing_key(Path(tmp_path_factory.mktemp("auth")) / "signing-key.pem")
    return TokenSigner(key, issuer="linesight", audience="linesight", ttl_s=60)


@pytest.fixture
async def target(signer: TokenSigner) -> AsyncIterator[str]:
    verifier = TokenVerifier(signer.public_keys(), issuer="linesight", audience="linesight")
    server = grpc.aio.server(interceptors=[AuthInterceptor(verifier, POLICY)])
    server.add_generic_rpc_handlers((HANDLER,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(None)


def rpc(ch: grpc.aio.Channel, kind: str, method: str) -> Any:
    """A bytes-in/bytes-out callable for `method` (generic handlers need no serializers)."""
    return getattr(ch, kind)(method)


def channel(target: str, token: str | None) -> grpc.aio.Channel:
    interceptors = bearer_interceptors(lambda: token) if token is not None else []
    return grpc.aio.insecure_channel(target, interceptors=interceptors)


async def code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value.code()


async def test_allowed_call_sees_its_principal(target: str, signer: TokenSigner) -> None:
    async with channel(target, signer.issue(ANN).token) as ch:
        assert await rpc(ch, "unary_unary", "/test.Echo/Say")(b"hi") == b"hello Ann: hi"
        assert [m async for m in rpc(ch, "unary_stream", "/test.Echo/Stream")(b"")] == [
            b"Ann-0",
            b"Ann-1",
            b"Ann-2",
        ]


async def test_client_streaming_call_as_a_service_account(target: str, signer: TokenSigner) -> None:
    async def numbers() -> AsyncIterator[bytes]:
        for n in (1, 2, 3):
            yield str(n).encode()

    async with channel(target, signer.issue(BOT).token) as ch:
        assert await rpc(ch, "stream_unary", "/test.Echo/Sum")(numbers()) == b"sa_cam=6"


async def test_no_or_bad_token_is_unauthenticated(target: str, signer: TokenSigner) -> None:
    async with channel(target, None) as ch:
        assert (
            await code_of(rpc(ch, "unary_unary", "/test.Echo/Say")(b"x")) == grpc.StatusCode.UNAUTHENTICATED
        )
        assert await code_of(
            rpc(ch, "unary_unary", "/test.Echo/Say")(b"x", metadata=(("authorization", "Basic a"),))
        ) == (grpc.StatusCode.UNAUTHENTICATED)
    async with channel(target, signer.issue(ANN).token[:-4] + "AAAA") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await rpc(ch, "unary_unary", "/test.Echo/Say")(b"x")
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "signature" in (info.value.details() or "")


async def test_wrong_role_and_undeclared_method_are_permission_denied(
    target: str, signer: TokenSigner
) -> None:
    async with channel(target, signer.issue(RITA).token) as ch:
        assert (
            await code_of(rpc(ch, "unary_unary", "/test.Echo/Say")(b"x")) == grpc.StatusCode.PERMISSION_DENIED
        )
        stream_call = rpc(ch, "unary_stream", "/test.Echo/Stream")(b"")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            [m async for m in stream_call]
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    async with channel(target, signer.issue(ANN).token) as ch:
        assert (
            await code_of(rpc(ch, "unary_unary", "/test.Echo/Undeclared")(b"x"))
            == grpc.StatusCode.PERMISSION_DENIED
        )


async def test_public_method_needs_no_token(target: str) -> None:
    async with channel(target, None) as ch:
        assert await rpc(ch, "unary_unary", "/test.Echo/Health")(b"") == b"serving"


async def test_servicer_scope_check_becomes_permission_denied(target: str, signer: TokenSigner) -> None:
    async with channel(target, signer.issue(ANN).token) as ch:
        assert await rpc(ch, "unary_unary", "/test.Echo/Scoped")(b"plant1") == b"ok"
        assert (
            await code_of(rpc(ch, "unary_unary", "/test.Echo/Scoped")(b"plant2"))
            == grpc.StatusCode.PERMISSION_DENIED
        )


def test_operation_name_is_the_method_full_name(signer: TokenSigner) -> None:
    assert (
        operation_of("/linesight.v1.LabelingService/SubmitLabel")
        == "linesight.v1.LabelingService/SubmitLabel"
    )
    verifier = TokenVerifier.from_jwks(signer.jwks(), issuer="i", audience="a")
    mapped = AuthInterceptor(verifier, POLICY, {"/x.Y/Z": "svc.z"})
    assert mapped.operation("/x.Y/Z") == "svc.z" and mapped.operation("/x.Y/W") == "x.Y/W"


def test_service_operations_enumerate_descriptors_for_the_matrix_test() -> None:
    labeling = labeling_pb2.DESCRIPTOR.services_by_name["LabelingService"]
    ops = service_operations(labeling)
    assert "linesight.v1.LabelingService/SubmitLabel" in ops
    assert len(ops) == len(labeling.methods)
    # Nothing in this test policy covers the labeling service: all of it would be reported.
    assert POLICY.unmapped(ops) == sorted(ops)
