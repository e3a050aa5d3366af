"""gRPC side: a server interceptor that authenticates and authorises every call, and a client one
that attaches the caller's bearer token.

The operation of an RPC is its full method name without the leading slash
(`linesight.v1.LabelingService/SubmitLabel`) unless `operations` maps it to another name, so
the policy can be checked against the service descriptors. The interceptor authorises without a
plant/product scope (any grant of an allowed role); a servicer that knows the scope from the
request calls `policy.authorize(current_principal(), ...)` again with it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextvars import ContextVar
from typing import Any

import grpc
import grpc.aio
from google.protobuf.descriptor import ServiceDescriptor

from linesight.common.identity.model import Forbidden, Principal, Unauthenticated
from linesight.common.identity.policy import Policy
from linesight.common.identity.tokens import TokenVerifier

_principal: ContextVar[Principal | None] = ContextVar("linesight_principal", default=None)


def current_principal() -> Principal:
    """The caller of the RPC being served (set by AuthInterceptor)."""
    principal = _principal.get()
    if principal is None:
        raise Unauthenticated("no authenticated caller in this context (is AuthInterceptor installed?)")
    return principal


def operation_of(method: str) -> str:
    """`/pkg.Service/Method` -> `pkg.Service/Method`, the default operation name of an RPC."""
    return method.removeprefix("/")


def service_operations(*services: ServiceDescriptor) -> list[str]:
    """The operation name of every method of the given services (for the endpoint matrix test:
    `policy.unmapped(service_operations(labeling_pb2.DESCRIPTOR.services_by_name[...]))`)."""
    return [f"{svc.full_name}/{method.name}" for svc in services for method in svc.methods]


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Deny by default: UNAUTHENTICATED without a valid bearer token, PERMISSION_DENIED without a
    grant the policy accepts (undeclared methods included); public operations pass untouched."""

    def __init__(
        self, verifier: TokenVerifier, policy: Policy, operations: Mapping[str, str] | None = None
    ) -> None:
        self._verifier = verifier
        self._policy = policy
        self._operations = dict(operations or {})

    def operation(self, method: str) -> str:
        return self._operations.get(method, operation_of(method))

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler  # unknown method: gRPC answers UNIMPLEMENTED
        operation = self.operation(handler_call_details.method)
        if self._policy.is_public(operation):
            return handler
        try:
            principal = self._authenticate(handler_call_details.invocation_metadata)
            self._policy.authorize(principal, operation)
        except Unauthenticated as exc:
            return _refusing(handler, grpc.StatusCode.UNAUTHENTICATED, str(exc))
        except Forbidden as exc:
            return _refusing(handler, grpc.StatusCode.PERMISSION_DENIED, str(exc))
        return _as(handler, principal)

    def _authenticate(self, metadata: Any) -> Principal:
        values = [v for k, v in (metadata or ()) if k == "authorization" and isinstance(v, str)]
        if not values:
            raise Unauthenticated("authentication required ('authorization: Bearer <token>' metadata)")
        scheme, _, token = values[0].partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("expected 'authorization: Bearer <token>' metadata")
        return self._verifier.verify(token.strip()).principal


def _replace(handler: grpc.RpcMethodHandler, **behaviours: Any) -> grpc.RpcMethodHandler:
    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(handler.request_streaming, handler.response_streaming)]
    (behaviour,) = behaviours.values()
    return make(
        behaviour,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _refusing(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape that only aborts with `code`."""
    if handler.response_streaming:

        async def refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await context.abort(code, message)
            yield  # pragma: no cover - abort raises; the yield makes this an async generator

        return _replace(handler, behaviour=refuse_stream)

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    return _replace(handler, behaviour=refuse)


def _as(handler: grpc.RpcMethodHandler, principal: Principal) -> grpc.RpcMethodHandler:
    """The same handler, run with `principal` as current_principal(); a Forbidden/Unauthenticated
    raised by the servicer's own finer checks becomes its status code."""
    inner: Any = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream

    async def fail(context: grpc.aio.ServicerContext, exc: Exception) -> None:
        code = (
            grpc.StatusCode.UNAUTHENTICATED
            if isinstance(exc, Unauthenticated)
            else grpc.StatusCode.PERMISSION_DENIED
        )
        await context.abort(code, str(exc))

    if handler.response_streaming:

        async def serve_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            token = _principal.set(principal)
            try:
                result = inner(request, context)
                if hasattr(result, "__aiter__"):
                    async for item in result:
                        yield item
                else:  # writes through context.write()
                    await result
            except (Unauthenticated, Forbidden) as exc:
                await fail(context, exc)
            finally:
                _principal.reset(token)

        return _replace(handler, behaviour=serve_stream)

    async def serve(request: Any, context: grpc.aio.ServicerContext) -> Any:
        token = _principal.set(principal)
        try:
            return await inner(request, context)
        except (Unauthenticated, Forbidden) as exc:
            await fail(context, exc)
        finally:
            _principal.reset(token)

    return _replace(handler, behaviour=serve)


class _Bearer:
    def __init__(self, token: Callable[[], str]) -> None:
        self._token = token

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = [(k, v) for k, v in (details.metadata or ()) if k != "authorization"]
        metadata.extend(bearer_metadata(self._token()))
        return grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            grpc.aio.Metadata(*metadata),
            details.credentials,
            details.wait_for_ready,
        )


class _BearerUnaryUnary(_Bearer, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)


class _BearerUnaryStream(_Bearer, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)


class _BearerStreamUnary(_Bearer, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


class _BearerStreamStream(_Bearer, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


def bearer_interceptors(token: Callable[[], str]) -> list[Any]:
    """Client interceptors adding `authorization: Bearer <token>` to every kind of RPC (grpc.aio
    files an interceptor under one kind only, hence four). `token` is called per RPC, so a renewed
    token is picked up without rebuilding the channel:

        grpc.aio.insecure_channel(target, interceptors=bearer_interceptors(lambda: creds.token))
    """
    return [
        _BearerUnaryUnary(token),
        _BearerUnaryStream(token),
        _BearerStreamUnary(token),
        _BearerStreamStream(token),
    ]
