"""One retry-delay policy for every loop that waits on something that is down.

Exponential growth with a cap, and optional full jitter so replicas that lost the same dependency
at the same moment do not retry in lockstep. Loops keep their own attempt counters (an outbox row,
a bus redelivery count, a reconnect loop); the policy only turns an attempt number into seconds.

>>> Backoff(base_s=0.5, cap_s=30.0).delay(1), Backoff(base_s=0.5, cap_s=30.0).delay(4)
(0.5, 4.0)
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """`delay(n)` = min(cap, base * factor**(n-1)), times a jitter factor in [1-jitter, 1+jitter)."""

    base_s: float = 0.1
    cap_s: float = 5.0
    factor: float = 2.0
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.base_s <= 0 or self.cap_s < self.base_s or self.factor < 1 or not 0 <= self.jitter < 1:
            raise ValueError(
                f"invalid backoff: base_s={self.base_s} cap_s={self.cap_s} factor={self.factor} "
                f"jitter={self.jitter} (need 0 < base <= cap, factor >= 1, 0 <= jitter < 1)"
            )

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before attempt `attempt + 1`; `attempt` counts from 1."""
        # Past the cap the exponent no longer matters; clamping it keeps an outage of days from
        # overflowing a float (factor ** 1100 does).
        steps = max(0, attempt - 1)
        if self.factor > 1:
            steps = min(steps, math.ceil(math.log(self.cap_s / self.base_s, self.factor)) + 1)
        raw = min(self.cap_s, self.base_s * self.factor**steps)
        if not self.jitter:
            return float(raw)
        u = (rng or random).random()
        return float(raw * (1.0 - self.jitter + 2.0 * self.jitter * u))

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """Endless delays for a reconnect loop: `for d in policy.delays(): ...; await sleep(d)`."""
        attempt = 0
        while True:
            attempt += 1
            yield self.delay(attempt, rng)
