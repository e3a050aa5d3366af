"""Helpers for the `EventMeta` header every bus event starts with."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from google.protobuf.message import Message

from linesight.common.pb import events_pb2


def new_event_id() -> str:
    """A fresh UUID4; it doubles as `Nats-Msg-Id`, so a retried publish is de-duplicated."""
    return str(uuid.uuid4())


def new_meta(producer: str, correlation_id: str = "") -> events_pb2.EventMeta:
    """Meta for a new event: uuid4 event id and the current time."""
    if not producer:
        raise ValueError("producer must name the emitting service, e.g. 'capture' or 'capture/station1'")
    meta = events_pb2.EventMeta(event_id=new_event_id(), producer=producer, correlation_id=correlation_id)
    meta.emitted_at.FromDatetime(datetime.now(UTC))
    return meta


def event_id_of(message: Message) -> str:
    """`meta.event_id` when the message carries a meta with an id, else ''."""
    descriptor = message.DESCRIPTOR
    if "meta" not in descriptor.fields_by_name:
        return ""
    if not message.HasField("meta"):
        return ""
    meta = getattr(message, "meta", None)  # Message declares no fields; the descriptor said it has one
    return str(getattr(meta, "event_id", ""))
