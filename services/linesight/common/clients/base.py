"""The base of the project's thick clients: each names its stub, its service and its default
deadline once, and each RPC method is a single typed `_rpc` call.

`ServiceClient` (linesight.common.grpcutil) owns what every client shares: the channel, the call
metadata (trace context, bearer token), retries of idempotent calls and the mapping of status
codes to InvalidArgument / NotFound / Forbidden / ServiceUnavailable.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar, cast

from google.protobuf.message import Message

from linesight.common.grpcutil import ServiceClient, TokenSource

S = TypeVar("S")
R = TypeVar("R", bound=Message)


class PeerClient(ServiceClient[S]):
    """A ServiceClient whose subclass declares `stub_class`, `service_name` and `default_timeout_s`."""

    stub_class: ClassVar[type[Any]]  # the generated stub of the service
    service_name: ClassVar[str]
    default_timeout_s: ClassVar[float] = 10.0

    def __init__(
        self, target: str, *, timeout_s: float | None = None, token: TokenSource | None = None
    ) -> None:
        super().__init__(
            target,
            self.stub_class,
            service=self.service_name,
            timeout_s=self.default_timeout_s if timeout_s is None else timeout_s,
            token=token,
        )

    async def _rpc(self, method: str, request: Message, returns: type[R], *, idempotent: bool = True) -> R:
        """`call()` typed by the response message the RPC declares (`returns`)."""
        return cast(R, await self.call(method, request, idempotent=idempotent))
