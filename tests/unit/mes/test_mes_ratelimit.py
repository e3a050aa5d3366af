"""Per-client token buckets of the inbound MES API (fake clock: no sleeping)."""

from __future__ import annotations

import pytest

from linesight.mes.api.ratelimit import RateLimit, TokenBuckets


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_burst_then_refill_at_the_rate() -> None:
    clock = Clock()
    buckets = TokenBuckets(RateLimit(rate_per_s=2.0, burst=3), clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)  # one token needs half a second at 2/s
    clock.t += 0.5
    assert buckets.take("a") == 0.0
    clock.t += 100  # refills to the burst, not beyond
    assert [buckets.take("a") for _ in range(4)][-1] > 0


def test_clients_do_not_share_a_bucket_and_old_ones_are_forgotten() -> None:
    clock = Clock()
    buckets = TokenBuckets(RateLimit(rate_per_s=1.0, burst=1), max_clients=2, clock=clock)
    assert buckets.take("a") == 0.0 and buckets.take("a") > 0
    assert buckets.take("b") == 0.0
    assert buckets.take("c") == 0.0  # "a" (least recently seen) is forgotten: starts full again
    assert buckets.take("a") == 0.0
