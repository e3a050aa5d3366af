"""Per-client token buckets for the inbound API: one MES client's loop gone wild gets 429s and
cannot starve the others, nor the outbox's database. Written here rather than pulled in: a token
bucket is a dozen lines, and the library ones bring storage backends we do not use."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class RateLimit:
    """`rate_per_s` sustained, bursts of `burst` requests, per client (the token's subject)."""

    rate_per_s: float = 50.0
    burst: int = 200


class TokenBuckets:
    """Buckets by client; the least recently seen are forgotten beyond `max_clients` (a forgotten
    client starts full again, which only ever admits more)."""

    def __init__(
        self, limit: RateLimit, *, max_clients: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.max_clients = max_clients
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, at)

    def take(self, client: str) -> float:
        """0.0 when the request may go ahead (a token is taken), else the seconds until it may."""
        now = self.clock()
        tokens, at = self._buckets.pop(client, (float(self.limit.burst), now))
        tokens = min(float(self.limit.burst), tokens + (now - at) * self.limit.rate_per_s)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.limit.rate_per_s if self.limit.rate_per_s > 0 else math.inf
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait
