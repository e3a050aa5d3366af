"""gRPC plumbing done once: server start with tracing and error mapping, and thick clients.

Servers: servicers raise the domain errors below (or ValueError/KeyError) and the interceptor
turns them into status codes; every call runs in a span continuing the caller's `traceparent`.

Clients: subclass `ServiceClient` with one method per RPC; deadlines, retries with backoff for
idempotent calls (UNAVAILABLE, DEADLINE_EXCEEDED), trace metadata and mapping of status codes to
ServiceUnavailable / InvalidArgument / NotFound happen in `call()`, not at every call site.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Generic, Self, TypeVar

import grpc
import grpc.aio
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from opentelemetry.trace import SpanKind, Status, StatusCode

from linesight.common import telemetry
from linesight.common.backoff import Backoff

# Re-exported: callers catch the identity errors whether raised locally or answered by a peer.
from linesight.common.identity.model import Forbidden as Forbidden
from linesight.common.identity.model import Unauthenticated as Unauthenticated
from linesight.common.limits import MAX_TEXT, check_text

log = logging.getLogger(__name__)

S = TypeVar("S")
# A bearer token, or a function that returns a current one (service accounts renew theirs).
TokenSource = str | Callable[[], str]
R = TypeVar("R", bound=Message)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # heatmaps and small images may travel inline
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


class ServiceError(RuntimeError):
    """A peer call failed for a reason with no more specific class; `code` is the gRPC status."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class ServiceUnavailable(ServiceError):  # noqa: N818 - team contract name
    """The peer could not be reached or did not answer in time (after retries)."""


class InvalidArgument(ValueError):  # noqa: N818 - team contract name
    """The peer rejected the request's content; retrying will not help."""


class NotFound(KeyError):  # noqa: N818 - team contract name
    """The peer does not know the requested entity."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not found"


_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


MAX_DETAILS = 1_000  # status details travel in a header, which gRPC caps (16 KiB by default)


def brief_details(text: str) -> str:
    """Details short enough for the status header: an error that quotes a 100 KB argument would
    otherwise turn INVALID_ARGUMENT into RESOURCE_EXHAUSTED on the caller's side."""
    marker = " ... (truncated)"
    return text if len(text) <= MAX_DETAILS else text[: MAX_DETAILS - len(marker)] + marker


def status_for_exception(exc: BaseException) -> grpc.StatusCode:
    """Status code a servicer's exception becomes on the wire."""
    if isinstance(exc, InvalidArgument | ValueError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, NotFound | KeyError | FileNotFoundError):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, ServiceUnavailable | ConnectionError | TimeoutError):
        return grpc.StatusCode.UNAVAILABLE
    if isinstance(exc, PermissionError):
        return grpc.StatusCode.PERMISSION_DENIED
    if isinstance(exc, Unauthenticated):
        return grpc.StatusCode.UNAUTHENTICATED
    return grpc.StatusCode.INTERNAL


def error_from_status(code: grpc.StatusCode, details: str, where: str) -> Exception:
    """Domain exception for a failed call (client side)."""
    text = f"{where}: {code.name}: {details or 'no details'}"
    if code in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
    ):
        return InvalidArgument(text)
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(text)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return Unauthenticated(text)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return Forbidden(text)
    if code in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ):
        return ServiceUnavailable(text, code)
    return ServiceError(text, code)


def _metadata_dict(metadata: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in metadata or ():
        key, value = item[0], item[1]
        if isinstance(value, str):
            out[key] = value
    return out


class _ServerInterceptor(grpc.aio.ServerInterceptor):
    """Span per call (continuing `traceparent`) and domain exception -> status code."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        tracer = telemetry.tracer("linesight.grpc")

        def start_span(context: grpc.aio.ServicerContext) -> Any:
            parent = telemetry.extract_trace_context(_metadata_dict(context.invocation_metadata()))
            return tracer.start_as_current_span(
                method,
                context=parent,
                kind=SpanKind.SERVER,
                attributes={"rpc.system": "grpc", "rpc.method": method},
            )

        async def fail(context: grpc.aio.ServicerContext, exc: Exception, span: Any) -> None:
            code = status_for_exception(exc)
            span.set_status(Status(StatusCode.ERROR, str(exc)))
            if code == grpc.StatusCode.INTERNAL:
                log.exception("%s failed", method)
            await context.abort(code, brief_details(str(exc) or type(exc).__name__))

        if handler.unary_unary is not None:
            inner_uu: Any = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                with start_span(context) as span:
                    try:
                        return await inner_uu(request, context)
                    except (asyncio.CancelledError, grpc.aio.AbortError):
                        raise
                    except Exception as exc:
                        await fail(context, exc, span)
                        raise  # unreachable: abort raises

            return grpc.unary_unary_rpc_method_handler(
                unary_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            inner_us: Any = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                with start_span(context) as span:
                    try:
                        async for item in inner_us(request, context):
                            yield item
                    except (asyncio.CancelledError, grpc.aio.AbortError):
                        raise
                    except Exception as exc:
                        await fail(context, exc, span)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


DOCUMENT_FIELDS = frozenset({"yaml", "document_yaml"})  # whole documents, bounded by their owner
MAX_DOCUMENT_CHARS = 1024 * 1024


def check_request(message: Message, prefix: str = "") -> None:
    """Refuse what no request has a reason to carry, whatever the method: a NUL or other control
    character in any string (PostgreSQL refuses NUL: an INTERNAL otherwise), a string over
    MAX_TEXT (a document field over MAX_DOCUMENT_CHARS), an enum number the enum does not declare
    (proto3 keeps it, and it would silently read as 'unspecified' or an unknown word). Raises
    TextError/InvalidArgument naming the field: INVALID_ARGUMENT. Methods still bound their own
    fields more tightly (a Name is 200 characters)."""
    for fd, value in message.ListFields():
        path = f"{prefix}{fd.name}"
        values = list(value) if fd.is_repeated and not _is_map(fd) else [value]
        for item in values:
            if _is_map(fd):
                for key, entry in item.items():
                    _check_scalar(fd.message_type.fields_by_name["key"], key, f"{path} (key)")
                    _check_scalar(fd.message_type.fields_by_name["value"], entry, f"{path}[{str(key)[:40]}]")
            else:
                _check_scalar(fd, item, path)


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.type == FieldDescriptor.TYPE_MESSAGE and fd.message_type.GetOptions().map_entry


def _check_scalar(fd: FieldDescriptor, value: Any, path: str) -> None:
    if fd.type == FieldDescriptor.TYPE_STRING:
        limit = MAX_DOCUMENT_CHARS if fd.name in DOCUMENT_FIELDS else MAX_TEXT
        check_text(value, path, max_len=limit)
    elif fd.type == FieldDescriptor.TYPE_ENUM and value not in fd.enum_type.values_by_number:
        allowed = ", ".join(v.name for v in fd.enum_type.values)
        raise InvalidArgument(f"{path}: unknown value {value}; expected one of: {allowed}")
    elif fd.type == FieldDescriptor.TYPE_MESSAGE:
        check_request(value, f"{path}.")


class _RequestCheck(grpc.aio.ServerInterceptor):
    """check_request on every unary request, after authentication (an anonymous caller learns
    nothing about what the method accepts); its TextError is mapped by _ServerInterceptor."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming:
            return handler
        if handler.unary_unary is not None:
            inner_uu: Any = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                check_request(request)
                return await inner_uu(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        inner_us: Any = handler.unary_stream

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            check_request(request)
            async for item in inner_us(request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(
            unary_stream,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


async def start_grpc_server(
    port: int,
    register: Callable[[grpc.aio.Server], None],
    host: str = "127.0.0.1",
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> grpc.aio.Server:
    """Start a grpc.aio server on host:port; raises OSError if taken.

    The tracing/error interceptor runs first so a refusal by a later one (authentication) is
    traced and mapped like any other error; the request check runs last, on authorised calls.
    """
    server = grpc.aio.server(
        interceptors=[_ServerInterceptor(), *interceptors, _RequestCheck()], options=_CHANNEL_OPTIONS
    )
    register(server)
    address = f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:  # grpcio >= 1.5x raises instead of returning 0
        bound = 0
        cause: Exception | None = exc
    else:
        cause = None
    if bound == 0:
        raise OSError(
            f"cannot bind gRPC server to {address}: port in use or address unavailable "
            "(another instance running? change LINESIGHT_GRPC_PORTS)"
        ) from cause
    await server.start()
    log.info("gRPC listening on %s", address)
    return server


class ServiceClient(Generic[S]):
    """Base of the thick client for one peer service; subclasses add one method per RPC.

    The clients of the project's own APIs live in `linesight.common.clients`, e.g.

    >>> class MesClient(ServiceClient[mes_pb2_grpc.MesIntegrationServiceStub]):
    ...     async def dispatch_status(self, frame_id: str) -> mes_pb2.DispatchStatus:
    ...         request = mes_pb2.GetDispatchStatusRequest(frame_id=frame_id)
    ...         return await self.call("GetDispatchStatus", request)

    Retry delays follow `backoff` (jittered so replicas do not retry in lockstep).
    """

    def __init__(
        self,
        target: str,
        stub_factory: Callable[[grpc.aio.Channel], S],
        *,
        service: str = "",
        timeout_s: float = 5.0,
        retries: int = 3,
        backoff_s: float = 0.1,
        max_backoff_s: float = 2.0,
        token: TokenSource | None = None,
    ) -> None:
        if timeout_s <= 0 or retries < 0:
            raise ValueError(f"timeout_s must be > 0 and retries >= 0 (got {timeout_s}, {retries})")
        self.target = target
        self.service = service or target
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff = Backoff(base_s=backoff_s, cap_s=max_backoff_s, jitter=0.5)
        self._token = token
        self._channel = grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
        self.stub: S = stub_factory(self._channel)
        self._tracer = telemetry.tracer("linesight.grpc")

    async def call(
        self,
        method: str,
        request: Message,
        *,
        timeout_s: float | None = None,
        idempotent: bool = True,
    ) -> Any:
        """Call `stub.<method>(request)`; retried on UNAVAILABLE/DEADLINE_EXCEEDED when idempotent.

        Each attempt gets its own deadline. Non-idempotent calls are never retried: a timed-out
        call may have taken effect, so the caller decides (ServiceUnavailable says so).
        """
        rpc = getattr(self.stub, method, None)
        if rpc is None:
            raise AttributeError(f"{type(self.stub).__name__} has no RPC {method!r}")
        deadline = timeout_s if timeout_s is not None else self.timeout_s
        attempts = 1 + (self.retries if idempotent else 0)
        where = f"{self.service} {method} at {self.target}"
        with self._tracer.start_as_current_span(
            f"{self.service}/{method}",
            kind=SpanKind.CLIENT,
            attributes={"rpc.system": "grpc", "rpc.method": method},
        ) as span:
            headers: dict[str, str] = {}
            telemetry.inject_trace_headers(headers)
            if self._token is not None:
                # Asked per call: a token source renews short-lived tokens before they expire.
                token = self._token() if callable(self._token) else self._token
                headers["authorization"] = f"Bearer {token}"
            metadata = tuple(headers.items())
            for attempt in range(1, attempts + 1):
                try:
                    return await rpc(request, timeout=deadline, metadata=metadata)
                except grpc.aio.AioRpcError as exc:
                    code = exc.code()
                    if code in _RETRYABLE and attempt < attempts:
                        delay = self.backoff.delay(attempt)
                        log.info(
                            "%s: %s, retry %d/%d in %.2fs", where, code.name, attempt, attempts - 1, delay
                        )
                        await asyncio.sleep(delay)
                        continue
                    span.set_status(Status(StatusCode.ERROR, code.name))
                    suffix = f" after {attempt} attempt(s)" if code in _RETRYABLE else ""
                    raise error_from_status(code, (exc.details() or "") + suffix, where) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def wait_ready(self, timeout_s: float = 10.0) -> None:
        """Block until the channel connects; ServiceUnavailable after `timeout_s`."""
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout_s)
        except TimeoutError as exc:
            raise ServiceUnavailable(
                f"{self.service} at {self.target} not reachable within {timeout_s:g}s"
            ) from exc

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
