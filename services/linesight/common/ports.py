"""What an app layer needs from the shared runtime, as protocols.

App code (`services/linesight/<svc>/app/`) must not import transports, yet it publishes events and opens
database connections. These protocols name that slice once; `linesight.common.bus.Bus` and
`linesight.common.db.Database` satisfy them, and tests can pass small fakes.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol

from google.protobuf.message import Message


class EventPublisher(Protocol):
    """The publishing slice of `linesight.common.bus.Bus`."""

    def publish(
        self,
        subject: str,
        message: Message,
        *,
        event_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Awaitable[Any]: ...


class ConnectionSource(Protocol):
    """The slice of `linesight.common.db.Database` an app uses: `async with db.connection()`."""

    def connection(self) -> Any: ...
