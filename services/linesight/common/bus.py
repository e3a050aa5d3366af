"""The one NATS JetStream client every service uses (rules: docs/messaging.md).

Publishing: protobuf payload, `Nats-Msg-Id` = event id (JetStream drops a repeat inside the
stream's duplicate window), `Ls-Type` = protobuf full name, W3C `traceparent`.

Consuming: a durable pull consumer per (service, event); each message is decoded, checked
against `Ls-Type` and handed to the handler inside a span that continues the producer's trace.

- handler returns             -> ack
- TransientError / any other  -> nak with a growing delay (redelivered later)
- PoisonMessage, undecodable, wrong or missing Ls-Type
                              -> copy to `linesight.dlq.<subject>` with `Ls-Dlq-*` headers, term
- failure on the last allowed delivery (num_delivered >= max_deliver) -> DLQ + term

If the DLQ copy itself cannot be published the message is nak'ed instead of terminated, so a
dead letter is never lost silently. Handlers must be idempotent: delivery is at-least-once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from google.protobuf.message import DecodeError, Message
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from linesight.common import subjects as subj
from linesight.common import telemetry
from linesight.common.backoff import Backoff
from linesight.common.consumers import ConsumerMissing, ConsumerSpec, ConsumerUnreadable, require_consumer
from linesight.common.events import event_id_of, new_event_id
from linesight.common.settings import Settings

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
Handler = Callable[[M, "Delivery"], Awaitable[None]]
# consume_batches: the decoded messages of one fetch -> one outcome each (None = ack, else why not).
BatchHandler = Callable[[list[tuple[M, "Delivery"]]], Awaitable[Sequence[BaseException | None]]]

HDR_MSG_ID = "Nats-Msg-Id"
HDR_TYPE = "Ls-Type"
HDR_TRACEPARENT = "traceparent"
HDR_DLQ_REASON = "Ls-Dlq-Reason"
HDR_DLQ_ERROR = "Ls-Dlq-Error"
HDR_DLQ_SUBJECT = "Ls-Dlq-Subject"
HDR_DLQ_STREAM = "Ls-Dlq-Stream"
HDR_DLQ_CONSUMER = "Ls-Dlq-Consumer"
HDR_DLQ_DELIVERED = "Ls-Dlq-Delivered"
HDR_DLQ_AT = "Ls-Dlq-At"

# DLQ reasons (values of Ls-Dlq-Reason).
REASON_POISON = "poison"
REASON_UNDECODABLE = "undecodable"
REASON_WRONG_TYPE = "wrong_type"
REASON_MAX_DELIVER = "max_deliver"

_FORBIDDEN_SUBJECT_CHARS = set(" \t\r\n*>")
_NO_ANSWER = (nats.errors.TimeoutError, nats.errors.ConnectionClosedError, nats.errors.NoRespondersError)


class BusUnavailable(RuntimeError):  # noqa: N818 - team contract name
    """The bus could not take a message (server down, reconnecting, no stream for the subject)."""


class PayloadTooLarge(ValueError):  # noqa: N818 - reads as the condition, like BusUnavailable
    """An event larger than the server's max payload: publishing it can never succeed."""


# The NATS user that creates and updates streams (the embedded stack at `up`, the chart's Job);
# service users may only read stream info and create consumers on the streams they consume.
PROVISIONER_USER = "provisioner"
STREAM_WAIT_S = 120.0  # how long a service waits at start for the provisioner's streams

# Room for Nats-Msg-Id, Ls-Type, traceparent and the NATS/1.0 header line, which count against
# the server's max_payload together with the body.
HEADER_ALLOWANCE = 1024


def check_fits(publisher: object, message: Message) -> None:
    """PayloadTooLarge when the bus behind `publisher` could never carry `message`.

    For app code that holds an EventPublisher port: call it before committing what the event will
    announce. A publisher without a server limit (a unit test's stand-in) accepts everything.
    """
    check = getattr(publisher, "check_payload", None)
    if callable(check):
        check(message)


class TransientError(Exception):
    """Raise from a handler when a retry may succeed (dependency down); the message is nak'ed."""

    def __init__(self, message: str = "", *, delay_s: float | None = None) -> None:
        super().__init__(message)
        self.delay_s = delay_s


class PoisonMessage(Exception):  # noqa: N818 - team contract name
    """Raise from a handler when the message can never be processed; it goes to the DLQ."""


@dataclass
class Delivery:
    """What a handler may want to know about the message besides its payload."""

    subject: str
    headers: dict[str, str]
    num_delivered: int
    event_id: str
    stream: str = ""
    stream_seq: int = 0
    consumer: str = ""


@dataclass(frozen=True)
class Published:
    """JetStream's acknowledgement of a publish; `duplicate` means the event id was seen before."""

    stream: str
    seq: int
    duplicate: bool


def validate_publish_subject(subject: str) -> str:
    """A concrete subject: no wildcards, no spaces, no empty tokens."""
    if not subject or any(c in _FORBIDDEN_SUBJECT_CHARS for c in subject) or "" in subject.split("."):
        raise ValueError(
            f"invalid publish subject {subject!r}: no wildcards, spaces or empty tokens "
            "(build it with linesight.common.subjects.station_subject / plant_subject)"
        )
    return subject


def build_headers(
    message: Message, *, event_id: str | None = None, extra: dict[str, str] | None = None
) -> tuple[str, dict[str, str]]:
    """Headers for a publish: (event id, headers). Injects the current span's traceparent.

    The event id is `meta.event_id` when the message carries one; otherwise `event_id` or a new
    uuid. A given `event_id` that disagrees with `meta.event_id` is an error, since de-duplication
    would then key on something the consumer cannot see.
    """
    meta_id = event_id_of(message)
    if meta_id and event_id and meta_id != event_id:
        raise ValueError(f"event_id {event_id!r} differs from meta.event_id {meta_id!r}; pass one of them")
    chosen = meta_id or event_id or new_event_id()
    headers: dict[str, str] = {}
    for key, value in (extra or {}).items():
        if "\n" in value or "\r" in value or "\n" in key or ":" in key:
            raise ValueError(f"invalid header {key!r}: names may not contain ':' and values no newlines")
        headers[key] = value
    headers[HDR_MSG_ID] = chosen
    headers[HDR_TYPE] = message.DESCRIPTOR.full_name
    telemetry.inject_trace_headers(headers)
    return chosen, headers


NAK_BACKOFF = Backoff(base_s=0.5, cap_s=30.0)


def nak_delay_s(num_delivered: int, backoff: Backoff = NAK_BACKOFF) -> float:
    """Backoff before redelivery: 0.5 s, 1 s, 2 s, ... up to 30 s."""
    return backoff.delay(num_delivered)


def _header_safe(text: str, limit: int = 512) -> str:
    flat = " ".join(text.split())
    return flat[:limit]


def inbox_prefix(user: str) -> str:
    """Where a NATS user's replies arrive; its permissions allow subscribing only there."""
    return f"_INBOX.{user}"


def _credentials(user: str, password: str, tls_ca_file: str) -> dict[str, object]:
    """nats.connect keyword arguments for an authenticated (and optionally TLS) connection."""
    out: dict[str, object] = {}
    if user:
        out.update(user=user, password=password, inbox_prefix=inbox_prefix(user))
    if tls_ca_file:
        try:
            out["tls"] = ssl.create_default_context(cafile=tls_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise BusUnavailable(f"cannot read the NATS CA bundle {tls_ca_file}: {exc}") from exc
    return out


def producer_service(producer: str) -> str:
    """`inference/station1` -> `inference`: the service part of EventMeta.producer."""
    return producer.split("/", 1)[0]


def require_producer(message: Message, service: str) -> None:
    """PoisonMessage unless `message` was published by `service`.

    The bus stamps EventMeta.producer with the publisher's NATS user and the server lets no
    other user publish on the subject; consumers still refuse the rest, so a result sent through
    a misconfigured (anonymous) server never reaches the ledger or the plant's MES.
    """
    meta = getattr(message, "meta", None)
    producer = str(getattr(meta, "producer", "")) if meta is not None else ""
    if producer_service(producer) != service:
        raise PoisonMessage(f"{message.DESCRIPTOR.name} from producer {producer!r}, not {service!r}: refused")


def stamp_producer(message: M, user: str) -> M:
    """`message` with meta.producer naming the authenticated NATS user as its service.

    The code's own producer name is kept when it already names that service; anything else is
    replaced, so an event never claims a producer other than the account that sent it.
    """
    if not user or "meta" not in message.DESCRIPTOR.fields_by_name or not message.HasField("meta"):
        return message
    producer = str(message.meta.producer)  # type: ignore[attr-defined]
    if producer_service(producer) == user:
        return message
    stamped = type(message)()
    stamped.CopyFrom(message)
    _, _, detail = producer.partition("/")
    stamped.meta.producer = f"{user}/{detail}" if detail else user  # type: ignore[attr-defined]
    return stamped


async def _keep_all_in_progress(msgs: Sequence[Msg], every_s: float) -> None:
    """`_keep_in_progress` for every message of a batch the handler is still working on."""
    while True:
        await asyncio.sleep(every_s)
        for msg in msgs:
            with contextlib.suppress(Exception):
                await msg.in_progress()


async def _keep_in_progress(msg: Msg, every_s: float) -> None:
    """Reset the message's ack_wait every `every_s` until cancelled (the handler finished)."""
    while True:
        await asyncio.sleep(every_s)
        with contextlib.suppress(Exception):  # a lost connection: the server redelivers, as it should
            await msg.in_progress()


def _redact(url: str) -> str:
    """nats://user:pass@host -> nats://user:***@host (never log secrets)."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


class Bus:
    """A NATS connection with JetStream; create with `await Bus.connect(url, name)`."""

    def __init__(
        self, nc: NatsClient, url: str, name: str, *, publish_timeout_s: float = 5.0, user: str = ""
    ) -> None:
        self._nc = nc
        self.user = user  # the NATS account this connection authenticated as ('' = anonymous)
        # how long a service user's consume waits for the provisioner's durable consumer
        self.consumer_wait_s = STREAM_WAIT_S
        self._consumers_found: set[tuple[str, str]] = set()  # (stream, durable) already checked
        self._js: JetStreamContext = nc.jetstream(timeout=publish_timeout_s)
        self.url = url
        self.name = name
        self.publish_timeout_s = publish_timeout_s
        self._tracer = telemetry.tracer("linesight.bus")
        self._meter = telemetry.meter("linesight.bus")
        self._published = self._meter.create_counter(
            "linesight_bus_published", description="events published, by subject family"
        )
        self._consumed = self._meter.create_counter(
            "linesight_bus_consumed", description="deliveries handled, by consumer and outcome"
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._closing_flag: dict[str, bool] = {}

    @classmethod
    async def connect(
        cls,
        url: str,
        name: str,
        *,
        connect_timeout_s: float = 5.0,
        connect_attempts: int = 3,
        publish_timeout_s: float = 5.0,
        user: str = "",
        password: str = "",
        tls_ca_file: str = "",
    ) -> Bus:
        """Connect, failing with BusUnavailable if NATS cannot be reached within a few attempts.

        After the first connection nats-py reconnects forever in the background; publishes
        during an outage fail with BusUnavailable after `publish_timeout_s`.

        With `user`, the connection authenticates as that NATS user, whose subject permissions
        decide what it may publish, and replies come to `_INBOX.<user>.*`, the only inbox its
        permissions let it read. `tls_ca_file` verifies the server's certificate (tls:// URLs).
        """

        async def on_error(exc: Exception) -> None:
            log.warning("nats %s: %s", _redact(url), exc)

        closing = {"yes": False}  # set by close(): a disconnect then is expected, not news

        async def on_disconnected() -> None:
            if not closing["yes"]:
                log.warning("nats disconnected from %s; reconnecting", _redact(url))

        async def on_reconnected() -> None:
            log.info("nats reconnected to %s", _redact(url))

        try:
            nc = await nats.connect(
                url,
                name=name,
                connect_timeout=max(1, int(connect_timeout_s)),
                allow_reconnect=True,
                max_reconnect_attempts=connect_attempts,
                reconnect_time_wait=0.5,
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
                **_credentials(user, password, tls_ca_file),
            )
        except Exception as exc:  # NoServersError, OSError, TimeoutError...
            raise BusUnavailable(
                f"cannot connect to NATS at {_redact(url)} as {name!r}: "
                f"{type(exc).__name__}: {exc or 'no server'}"
                " (is the server running? `linesight up` starts one; check LINESIGHT_NATS_URL)"
            ) from exc
        # Once connected, never give up: a line keeps running through a broker restart.
        nc.options["max_reconnect_attempts"] = -1
        bus = cls(nc, url, name, publish_timeout_s=publish_timeout_s, user=user)
        bus._closing_flag = closing
        return bus

    @classmethod
    async def connect_as(cls, settings: Settings, name: str, **kwargs: Any) -> Bus:
        """`connect` with the NATS URL, user, password and CA of `settings`."""
        return await cls.connect(
            settings.nats_url,
            name,
            user=settings.nats_user,
            password=settings.nats_password,
            tls_ca_file=settings.nats_tls_ca_file,
            **kwargs,
        )

    @property
    def is_connected(self) -> bool:
        return bool(self._nc.is_connected)

    @property
    def jetstream(self) -> JetStreamContext:
        """Escape hatch for tests and tools (stream info, purges); services should not need it."""
        return self._js

    # ---- streams -------------------------------------------------------------------------

    @property
    def provisions(self) -> bool:
        """Whether this connection creates and updates streams: the provisioner user, or an
        anonymous connection (a development server without users has no provisioner)."""
        return not self.user or self.user == PROVISIONER_USER

    async def ensure_streams(
        self, specs: list[subj.StreamSpec] | None = None, *, wait_s: float = STREAM_WAIT_S
    ) -> list[str]:
        """Make sure every stream in `subjects.STREAMS` exists (safe to call on every start).

        The provisioner (or an anonymous connection) creates missing streams and updates those
        whose layout changed. A service user may not: it waits up to `wait_s` for the provisioner
        to create a missing stream (a cluster may start the provisioning Job and the services
        together) and only warns about a changed layout. Returns what was created or updated.
        """
        changed: list[str] = []
        for spec in specs if specs is not None else subj.STREAMS:
            config = _stream_config(spec)
            try:
                info = await self._stream_config_or_none(spec.name)
                if not self.provisions:
                    if info is None:
                        info = await self._await_stream(spec, wait_s)
                    if _differs(info, config):
                        log.warning(
                            "stream %s differs from this version's layout (%s); the provisioner updates "
                            "it (`linesight up`, the chart's provisioning Job)",
                            spec.name,
                            ", ".join(spec.subjects),
                        )
                elif info is None:
                    await self._js.add_stream(config)
                    changed.append(f"created {spec.name}")
                    log.info("created stream %s %s", spec.name, list(spec.subjects))
                elif _differs(info, config):
                    await self._js.update_stream(config)
                    changed.append(f"updated {spec.name}")
                    log.info("updated stream %s %s", spec.name, list(spec.subjects))
            except nats.js.errors.APIError as exc:
                raise BusUnavailable(
                    f"JetStream refused stream {spec.name} ({', '.join(spec.subjects)}): "
                    f"{exc.description or exc}"
                    " (an overlapping stream from an older layout may exist; delete it with `nats stream rm`)"
                ) from exc
            except _NO_ANSWER as exc:
                raise BusUnavailable(
                    f"JetStream at {_redact(self.url)} did not answer for stream {spec.name}: "
                    f"{type(exc).__name__} (is JetStream enabled, `nats-server -js`? Does NATS user "
                    f"{self.user or '(anonymous)'} have the permission?)"
                ) from exc
        return changed

    async def _stream_config_or_none(self, name: str) -> js_api.StreamConfig | None:
        try:
            info = await self._js.stream_info(name)
        except nats.js.errors.NotFoundError:
            return None
        return info.config

    async def _await_stream(self, spec: subj.StreamSpec, wait_s: float) -> js_api.StreamConfig:
        """The stream's config once the provisioner created it; BusUnavailable after `wait_s`."""
        deadline = asyncio.get_running_loop().time() + wait_s
        log.info("waiting up to %.0f s for the provisioner to create stream %s", wait_s, spec.name)
        while True:
            info = await self._stream_config_or_none(spec.name)
            if info is not None:
                return info
            if asyncio.get_running_loop().time() >= deadline:
                raise BusUnavailable(
                    f"stream {spec.name} does not exist, and NATS user {self.user!r} may not create it: "
                    f"streams are created by the {PROVISIONER_USER!r} user (`linesight up` does it; the "
                    "Helm chart runs its nats-provision Job; by hand: LINESIGHT_NATS_USER=provisioner "
                    "LINESIGHT_NATS_PASSWORD=... python -m linesight.common.provision)"
                )
            await asyncio.sleep(0.5)

    # ---- publish -------------------------------------------------------------------------

    async def publish(
        self,
        subject: str,
        message: Message,
        *,
        event_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Published:
        """Publish and wait for JetStream's ack; raises BusUnavailable when it cannot be stored.

        Publishing the same event id twice within the stream's duplicate window stores it once
        (the second call returns `duplicate=True`), so a caller may simply retry on failure.
        """
        validate_publish_subject(subject)
        with self._tracer.start_as_current_span(
            f"publish {subject}",
            kind=SpanKind.PRODUCER,
            attributes={"messaging.system": "nats", "messaging.destination.name": subject},
        ) as span:
            message = stamp_producer(message, self.user)
            eid, hdrs = build_headers(message, event_id=event_id, extra=headers)
            span.set_attribute("messaging.message.id", eid)
            payload = message.SerializeToString()
            self._check_size(message, len(payload) + sum(len(k) + len(v) + 4 for k, v in hdrs.items()) + 16)
            ack = await self._publish_raw(subject, payload, hdrs)
            self._published.add(1, {"type": message.DESCRIPTOR.name, "duplicate": ack.duplicate})
            return ack

    @property
    def max_payload(self) -> int:
        """The connected server's largest message in bytes (headers included); 0 before INFO."""
        return int(self._nc.max_payload or 0)

    def check_payload(self, message: Message) -> int:
        """Raise PayloadTooLarge when `message` could never be published; its size otherwise.

        Call it BEFORE committing what the event announces: a commit whose event cannot be sent
        leaves consumers forever behind the database.
        """
        size = message.ByteSize()
        self._check_size(message, size + HEADER_ALLOWANCE)
        return size

    def _check_size(self, message: Message, size: int) -> None:
        limit = self.max_payload
        if limit and size > limit:
            raise PayloadTooLarge(
                f"{message.DESCRIPTOR.name} needs {size} bytes with headers; the NATS server at "
                f"{_redact(self.url)} accepts at most {limit} per message (max_payload). Make the "
                "event smaller (large data belongs in S3, referenced by key) or raise max_payload."
            )

    async def _publish_raw(self, subject: str, payload: bytes, headers: dict[str, str]) -> Published:
        try:
            ack = await self._js.publish(subject, payload, headers=headers, timeout=self.publish_timeout_s)
        except nats.js.errors.NoStreamResponseError as exc:
            raise BusUnavailable(
                f"no JetStream stream stores {subject!r} at {_redact(self.url)}"
                " (was Bus.ensure_streams() run, and does the subject follow docs/messaging.md?)"
            ) from exc
        except nats.js.errors.APIError as exc:
            raise BusUnavailable(
                f"JetStream rejected publish to {subject!r}: {exc.description or exc}"
            ) from exc
        except (TimeoutError, nats.errors.TimeoutError) as exc:
            raise BusUnavailable(
                f"NATS at {_redact(self.url)} did not acknowledge publish to {subject!r} within "
                f"{self.publish_timeout_s:g}s (server down or reconnecting; the caller may retry, "
                "the event id de-duplicates)"
            ) from exc
        except nats.errors.MaxPayloadError as exc:
            raise PayloadTooLarge(
                f"message for {subject!r} is {len(payload)} bytes, over the bus limit of "
                f"{self._nc.max_payload} bytes"
            ) from exc
        except nats.errors.Error as exc:  # closed, outbound buffer full, ...
            raise BusUnavailable(
                f"cannot publish to {subject!r}: NATS connection to {_redact(self.url)} unusable "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        return Published(stream=ack.stream, seq=ack.seq, duplicate=bool(ack.duplicate))

    # ---- consume -------------------------------------------------------------------------

    async def consume(
        self,
        subject: str | Sequence[str],
        durable: str,
        message_type: type[M],
        handler: Callable[[M, Delivery], Awaitable[None]],
        *,
        batch: int = 16,
        max_deliver: int = 5,
        ack_wait_s: float = 30.0,
        stop: asyncio.Event | None = None,
        fetch_timeout_s: float = 1.0,
    ) -> None:
        """Run a durable pull consumer until `stop` is set (or the task is cancelled).

        `subject` may be a filter such as `subjects.station_pattern(FRAME_CAPTURED)`, or several
        non-overlapping filters of one stream (e.g. the stations of a station group). A
        provisioning connection creates or updates the consumer with these settings; a service
        user binds to the provisioner's (`linesight.common.consumers`), waiting up to
        `consumer_wait_s` for it. Its name is the durable name.
        """
        stop = stop or asyncio.Event()
        fetches = self._fetches(subject, durable, batch, max_deliver, ack_wait_s, stop, fetch_timeout_s)
        async with contextlib.aclosing(fetches):  # unsubscribes on break and cancellation too
            async for msgs in fetches:
                for i, msg in enumerate(msgs):
                    if stop.is_set() or self._closing:
                        await self._give_back(msgs[i:])
                        break
                    await self._handle(msg, message_type, handler, durable, max_deliver, ack_wait_s)

    async def consume_batches(
        self,
        subject: str | Sequence[str],
        durable: str,
        message_type: type[M],
        handler: BatchHandler[M],
        *,
        batch: int = 64,
        max_deliver: int = 5,
        ack_wait_s: float = 30.0,
        stop: asyncio.Event | None = None,
        fetch_timeout_s: float = 1.0,
    ) -> None:
        """`consume` for handlers that write a fetch's messages at once (one transaction for the
        batch instead of one per message).

        `handler` gets every decodable message of a fetch, in stream order, and returns one
        outcome per message: None -> ack, PoisonMessage -> DLQ, any other exception -> nak with
        backoff (DLQ on the last allowed delivery), exactly as `consume` settles one message. A
        handler that raises settles the whole batch with that exception. Nothing is acked before
        the handler returns, so a crash mid-batch brings every message of it back. Undecodable,
        mistyped and over-delivered messages go to the DLQ without reaching the handler.
        """
        stop = stop or asyncio.Event()
        fetches = self._fetches(subject, durable, batch, max_deliver, ack_wait_s, stop, fetch_timeout_s)
        async with contextlib.aclosing(fetches):
            async for msgs in fetches:
                if stop.is_set() or self._closing:
                    await self._give_back(msgs)
                    break
                await self._handle_batch(msgs, message_type, handler, durable, max_deliver, ack_wait_s)

    async def _fetches(
        self,
        subject: str | Sequence[str],
        durable: str,
        batch: int,
        max_deliver: int,
        ack_wait_s: float,
        stop: asyncio.Event,
        fetch_timeout_s: float,
    ) -> AsyncGenerator[list[Msg], None]:
        """The non-empty fetches of a durable pull consumer until `stop`, closing or a dead
        connection; the subscription is dropped when the loop ends (a caller's break included)."""
        sub = await self._subscribe(
            subject, durable, batch=batch, max_deliver=max_deliver, ack_wait_s=ack_wait_s
        )
        try:
            while not stop.is_set() and not self._closing:
                msgs = await self._fetch(sub, durable, batch, fetch_timeout_s)
                if msgs is None:
                    break
                if msgs:
                    yield msgs
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _subscribe(
        self, subject: str | Sequence[str], durable: str, *, batch: int, max_deliver: int, ack_wait_s: float
    ) -> JetStreamContext.PullSubscription:
        """Bind to the durable pull consumer: a provisioning connection creates or updates it
        first; a service user may not (a compromised service could rewrite another's consumer on
        a shared stream), so it waits for the provisioner's and warns when its settings differ."""
        if batch < 1 or max_deliver < 1 or ack_wait_s <= 0:
            raise ValueError(f"batch ({batch}) and max_deliver ({max_deliver}) must be >= 1, ack_wait_s > 0")
        _validate_durable(durable)
        filters = [subject] if isinstance(subject, str) else list(dict.fromkeys(subject))
        if not filters:
            raise ValueError(f"consumer {durable!r}: no filter subject given")
        stream = subj.stream_for_subject(filters[0])
        others = {subj.stream_for_subject(f).name for f in filters} - {stream.name}
        if others:
            raise ValueError(f"consumer {durable!r}: filters {filters} span streams {stream.name}, {others}")
        shown = ", ".join(filters)
        spec = ConsumerSpec(
            self.user or "",
            durable,
            tuple(filters),
            ack_wait_s=ack_wait_s,
            max_deliver=max_deliver,
            batch=batch,
        )
        try:
            if self.provisions:
                await self._js.add_consumer(stream.name, spec.config())
            else:
                await self.require_consumer(spec)
            sub = await self._js.pull_subscribe_bind(durable=durable, stream=stream.name)
        except nats.js.errors.APIError as exc:
            raise BusUnavailable(
                f"JetStream refused consumer {durable!r} on {stream.name} for {shown!r}: "
                f"{exc.description or exc} (a consumer's filter cannot change; pick a new durable name)"
            ) from exc
        except _NO_ANSWER as exc:
            raise BusUnavailable(
                f"cannot bind consumer {durable!r} on {stream.name}: NATS at {_redact(self.url)} "
                f"did not answer ({type(exc).__name__}); was ensure_streams() run?"
            ) from exc
        log.info("consuming %s as %s (stream %s, max_deliver %d)", shown, durable, stream.name, max_deliver)
        return sub

    async def require_consumer(self, spec: ConsumerSpec, *, hint: str = "") -> list[str]:
        """A service user's check that the provisioner's durable consumer exists: waits up to
        `consumer_wait_s` for it (the chart's Job may start with the service), BusUnavailable
        naming the provisioning step if it never comes. Warns once per consumer when the broker's
        settings differ from `spec` (`hint`: what the operator should do about it) and returns the
        differences; a consumer already found on this connection is not asked for again."""
        key = (spec.stream, spec.durable)
        if key in self._consumers_found:
            return []
        try:
            drift = await require_consumer(self._js, spec, wait_s=self.consumer_wait_s)
        except (ConsumerMissing, ConsumerUnreadable) as exc:
            raise BusUnavailable(str(exc)) from exc
        if drift:
            log.warning(
                "consumer %s differs from this version's settings (%s); %s",
                spec.durable,
                "; ".join(drift),
                hint or "the provisioner updates it (`linesight up`, the chart's provisioning Job)",
            )
        self._consumers_found.add(key)
        return drift

    async def _fetch(
        self, sub: JetStreamContext.PullSubscription, durable: str, batch: int, timeout_s: float
    ) -> list[Msg] | None:
        """Up to `batch` messages ([] when none came or the connection is recovering); None when
        the bus is closing."""
        try:
            return list(await sub.fetch(batch, timeout=timeout_s))
        except (TimeoutError, nats.errors.TimeoutError):
            return []
        except nats.errors.ConnectionClosedError:
            if self._closing:
                return None
            raise
        except nats.errors.Error as exc:
            # Disconnected / reconnecting: nats-py reconnects on its own; wait and retry.
            log.warning("fetch for %s failed (%s); retrying", durable, exc)
            await asyncio.sleep(0.5)
            return []

    @staticmethod
    async def _give_back(msgs: Sequence[Msg]) -> None:
        """Shutting down: hand fetched messages back for prompt redelivery."""
        for msg in msgs:
            with contextlib.suppress(Exception):
                await msg.nak()

    def consume_in_background(
        self,
        subject: str | Sequence[str],
        durable: str,
        message_type: type[M],
        handler: Callable[[M, Delivery], Awaitable[None]],
        *,
        batch: int = 16,
        max_deliver: int = 5,
        ack_wait_s: float = 30.0,
        stop: asyncio.Event | None = None,
        fetch_timeout_s: float = 1.0,
    ) -> asyncio.Task[None]:
        """`consume` as a task owned by the bus; `close()` stops it. Failures are logged."""
        task = asyncio.create_task(
            self.consume(
                subject,
                durable,
                message_type,
                handler,
                batch=batch,
                max_deliver=max_deliver,
                ack_wait_s=ack_wait_s,
                stop=stop,
                fetch_timeout_s=fetch_timeout_s,
            ),
            name=f"consume:{durable}",
        )
        self._tasks.add(task)

        def _done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("consumer %s stopped: %s", durable, t.exception(), exc_info=t.exception())

        task.add_done_callback(_done)
        return task

    async def _handle(
        self,
        msg: Msg,
        message_type: type[M],
        handler: Callable[[M, Delivery], Awaitable[None]],
        durable: str,
        max_deliver: int,
        ack_wait_s: float,
    ) -> None:
        headers = dict(msg.headers or {})
        md = msg.metadata
        delivery = Delivery(
            subject=msg.subject,
            headers=headers,
            num_delivered=md.num_delivered,
            event_id=headers.get(HDR_MSG_ID, ""),
            stream=md.stream,
            stream_seq=md.sequence.stream,
            consumer=durable,
        )
        parent = telemetry.extract_trace_context(headers)
        with self._tracer.start_as_current_span(
            f"consume {msg.subject}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": msg.subject,
                "messaging.consumer.group.name": durable,
                "messaging.message.id": delivery.event_id,
                "messaging.message.delivery_count": delivery.num_delivered,
            },
        ) as span:
            # ack_wait is short (a crashed consumer's message must come back within the line's
            # reject window), so a handler that is merely slow says "still working" instead.
            beat = asyncio.create_task(_keep_in_progress(msg, ack_wait_s / 2))
            try:
                outcome = await self._dispatch(msg, message_type, handler, delivery, max_deliver, span)
            finally:
                beat.cancel()
            self._consumed.add(1, {"consumer": durable, "outcome": outcome})

    async def _dispatch(
        self,
        msg: Msg,
        message_type: type[M],
        handler: Callable[[M, Delivery], Awaitable[None]],
        delivery: Delivery,
        max_deliver: int,
        span: trace.Span,
    ) -> str:
        expected = message_type.DESCRIPTOR.full_name
        got = delivery.headers.get(HDR_TYPE)
        if delivery.num_delivered > max_deliver:
            return await self._dead_letter(
                msg, delivery, REASON_MAX_DELIVER, "redelivery limit reached without a handler result", span
            )
        if got != expected:
            return await self._dead_letter(
                msg, delivery, REASON_WRONG_TYPE, f"Ls-Type {got!r}, consumer expects {expected!r}", span
            )
        try:
            decoded = message_type.FromString(msg.data)
        except (DecodeError, ValueError) as exc:
            return await self._dead_letter(msg, delivery, REASON_UNDECODABLE, f"{expected}: {exc}", span)

        try:
            await handler(decoded, delivery)
        except PoisonMessage as exc:
            return await self._dead_letter(msg, delivery, REASON_POISON, str(exc) or "PoisonMessage", span)
        except asyncio.CancelledError:
            # Stopping mid-message: let the server redeliver it promptly.
            with contextlib.suppress(Exception):
                await msg.nak()
            raise
        except Exception as exc:
            return await self._failed(msg, delivery, exc, max_deliver, span)
        await self._settle(msg.ack(), delivery, "ack")
        return "ack"

    async def _failed(
        self, msg: Msg, delivery: Delivery, exc: BaseException, max_deliver: int, span: trace.Span
    ) -> str:
        """Settle a message its handler failed on: DLQ for poison or on the last allowed
        delivery, else nak with a growing delay (or the TransientError's own)."""
        if isinstance(exc, PoisonMessage):
            return await self._dead_letter(msg, delivery, REASON_POISON, str(exc) or "PoisonMessage", span)
        if not isinstance(exc, TransientError):
            log.error(
                "handler %s failed on %s; retrying",
                delivery.consumer,
                msg.subject,
                exc_info=(type(exc), exc, exc.__traceback__),
            )
        span.record_exception(exc)
        if delivery.num_delivered >= max_deliver:
            return await self._dead_letter(
                msg,
                delivery,
                REASON_MAX_DELIVER,
                f"failed {delivery.num_delivered} times; last: {type(exc).__name__}: {exc}",
                span,
            )
        delay = nak_delay_s(delivery.num_delivered)
        if isinstance(exc, TransientError) and exc.delay_s is not None:
            delay = exc.delay_s
        span.set_status(Status(StatusCode.ERROR, f"retry in {delay:g}s: {exc}"))
        await self._settle(msg.nak(delay=delay), delivery, "nak")
        return "nak"

    async def _handle_batch(
        self,
        msgs: Sequence[Msg],
        message_type: type[M],
        handler: BatchHandler[M],
        durable: str,
        max_deliver: int,
        ack_wait_s: float,
    ) -> None:
        """One span for the fetch (linked to each message's producer span); what cannot reach the
        handler is dead-lettered first, the rest settled by the handler's outcomes."""
        items: list[tuple[Msg, Delivery]] = []
        links: list[trace.Link] = []
        for msg in msgs:
            headers = dict(msg.headers or {})
            md = msg.metadata
            items.append(
                (
                    msg,
                    Delivery(
                        subject=msg.subject,
                        headers=headers,
                        num_delivered=md.num_delivered,
                        event_id=headers.get(HDR_MSG_ID, ""),
                        stream=md.stream,
                        stream_seq=md.sequence.stream,
                        consumer=durable,
                    ),
                )
            )
            if HDR_TRACEPARENT in headers:
                ctx = trace.get_current_span(telemetry.extract_trace_context(headers)).get_span_context()
                if ctx.is_valid:
                    links.append(trace.Link(ctx))
        with self._tracer.start_as_current_span(
            f"consume {msgs[0].subject}" if len(msgs) == 1 else f"consume batch of {len(msgs)}",
            kind=SpanKind.CONSUMER,
            links=links,
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": msgs[0].subject,
                "messaging.consumer.group.name": durable,
                "messaging.batch.message_count": len(msgs),
            },
        ) as span:
            beat = asyncio.create_task(_keep_all_in_progress(msgs, ack_wait_s / 2))
            try:
                outcomes = await self._dispatch_batch(items, message_type, handler, max_deliver, span)
            finally:
                beat.cancel()
            for outcome in outcomes:
                self._consumed.add(1, {"consumer": durable, "outcome": outcome})

    async def _dispatch_batch(
        self,
        items: list[tuple[Msg, Delivery]],
        message_type: type[M],
        handler: BatchHandler[M],
        max_deliver: int,
        span: trace.Span,
    ) -> list[str]:
        expected = message_type.DESCRIPTOR.full_name
        outcomes = [""] * len(items)
        ready: list[int] = []
        decoded: list[tuple[M, Delivery]] = []
        for i, (msg, delivery) in enumerate(items):
            got = delivery.headers.get(HDR_TYPE)
            if delivery.num_delivered > max_deliver:
                outcomes[i] = await self._dead_letter(
                    msg,
                    delivery,
                    REASON_MAX_DELIVER,
                    "redelivery limit reached without a handler result",
                    span,
                )
            elif got != expected:
                outcomes[i] = await self._dead_letter(
                    msg, delivery, REASON_WRONG_TYPE, f"Ls-Type {got!r}, consumer expects {expected!r}", span
                )
            else:
                try:
                    decoded.append((message_type.FromString(msg.data), delivery))
                    ready.append(i)
                except (DecodeError, ValueError) as exc:
                    outcomes[i] = await self._dead_letter(
                        msg, delivery, REASON_UNDECODABLE, f"{expected}: {exc}", span
                    )
        if not decoded:
            return outcomes
        results: Sequence[BaseException | None]
        try:
            results = await handler(decoded)
        except asyncio.CancelledError:
            await self._give_back([items[i][0] for i in ready])
            raise
        except Exception as exc:
            results = [exc] * len(decoded)
        if len(results) != len(decoded):
            wrong = RuntimeError(
                f"batch handler returned {len(results)} outcomes for {len(decoded)} messages"
            )
            results = [wrong] * len(decoded)
        for i, result in zip(ready, results, strict=True):
            msg, delivery = items[i]
            if result is None:
                await self._settle(msg.ack(), delivery, "ack")
                outcomes[i] = "ack"
            else:
                outcomes[i] = await self._failed(msg, delivery, result, max_deliver, span)
        return outcomes

    async def _settle(self, op: Awaitable[None], delivery: Delivery, what: str) -> None:
        """Ack/nak/term; if the connection dropped the server redelivers after ack_wait."""
        try:
            await op
        except Exception as exc:
            log.warning(
                "%s of %s seq %d failed (%s); it will be redelivered after ack_wait",
                what,
                delivery.subject,
                delivery.stream_seq,
                exc,
            )

    async def _dead_letter(
        self, msg: Msg, delivery: Delivery, reason: str, error: str, span: trace.Span
    ) -> str:
        """Copy the raw message to the DLQ, then term it; nak instead if the copy failed."""
        span.set_status(Status(StatusCode.ERROR, f"dead letter ({reason}): {error}"))
        headers = {k: v for k, v in delivery.headers.items() if not k.startswith("Ls-Dlq-")}
        headers.update(
            {
                HDR_DLQ_REASON: reason,
                HDR_DLQ_ERROR: _header_safe(error),
                HDR_DLQ_SUBJECT: delivery.subject,
                HDR_DLQ_STREAM: delivery.stream,
                HDR_DLQ_CONSUMER: delivery.consumer,
                HDR_DLQ_DELIVERED: str(delivery.num_delivered),
                HDR_DLQ_AT: datetime.now(UTC).isoformat(),
            }
        )
        # One dead letter per (event, consumer) even if term fails and we see it again.
        headers[HDR_MSG_ID] = f"{delivery.event_id or delivery.stream_seq}:{delivery.consumer}"
        try:
            await self._publish_raw(subj.dlq_subject(delivery.subject), msg.data, headers)
        except (BusUnavailable, ValueError) as exc:
            log.error(
                "could not dead-letter %s seq %d: %s; nak'ed", delivery.subject, delivery.stream_seq, exc
            )
            await self._settle(msg.nak(delay=nak_delay_s(delivery.num_delivered)), delivery, "nak")
            return "dlq_failed"
        log.warning(
            "dead-lettered %s seq %d for %s: %s (%s)",
            delivery.subject,
            delivery.stream_seq,
            delivery.consumer,
            reason,
            _header_safe(error, 200),
        )
        await self._settle(msg.term(), delivery, "term")
        return f"dlq_{reason}"

    # ---- lifecycle -----------------------------------------------------------------------

    async def close(self, drain_timeout_s: float = 5.0) -> None:
        """Stop background consumers (current message finishes or is nak'ed), then drain."""
        self._closing = True
        self._closing_flag["yes"] = True
        tasks = list(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(drain_timeout_s, 0.1) + 1.5)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        if self._nc.is_closed:
            return
        try:
            await asyncio.wait_for(self._nc.drain(), timeout=drain_timeout_s)
        except Exception as exc:
            log.warning("nats drain failed (%s); closing", exc)
            with contextlib.suppress(Exception):
                await self._nc.close()


def _stream_config(spec: subj.StreamSpec) -> js_api.StreamConfig:
    return js_api.StreamConfig(
        name=spec.name,
        description=spec.description or None,
        subjects=list(spec.subjects),
        retention=js_api.RetentionPolicy.LIMITS,
        storage=js_api.StorageType.FILE,
        discard=js_api.DiscardPolicy.OLD,
        max_age=spec.max_age_s,
        max_bytes=spec.max_bytes,
        duplicate_window=spec.duplicate_window_s,
    )


def _differs(current: js_api.StreamConfig, wanted: js_api.StreamConfig) -> bool:
    """Whether the fields we set differ (the server fills in the rest with its defaults)."""

    def close(a: float | None, b: float | None) -> bool:
        return abs((a or 0.0) - (b or 0.0)) < 1e-3

    return (
        sorted(current.subjects or []) != sorted(wanted.subjects or [])
        or (current.description or None) != wanted.description
        or current.retention != wanted.retention
        or current.storage != wanted.storage
        or current.discard != wanted.discard
        or (current.max_bytes or -1) != (wanted.max_bytes or -1)
        or not close(current.max_age, wanted.max_age)
        or not close(current.duplicate_window, wanted.duplicate_window)
    )


def _validate_durable(durable: str) -> None:
    if not durable or any(c in durable for c in ". \t\r\n*>/\\"):
        raise ValueError(
            f"invalid durable consumer name {durable!r}: no dots, spaces, wildcards or slashes "
            "(use subjects.durable_name(service, event), e.g. 'inference-frame-captured')"
        )


__all__ = [
    "HDR_DLQ_REASON",
    "HDR_MSG_ID",
    "HDR_TRACEPARENT",
    "HDR_TYPE",
    "PROVISIONER_USER",
    "Bus",
    "BusUnavailable",
    "Delivery",
    "PoisonMessage",
    "Published",
    "TransientError",
    "build_headers",
    "check_fits",
    "nak_delay_s",
]
