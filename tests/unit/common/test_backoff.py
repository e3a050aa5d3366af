"""The shared retry-delay policy: growth, cap, jitter bounds, and no overflow after a long outage."""

import random

import pytest

from linesight.common.backoff import Backoff


def test_grows_then_caps():
    policy = Backoff(base_s=0.5, cap_s=30.0)
    assert [policy.delay(n) for n in range(1, 9)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_days_of_retries_do_not_overflow():
    policy = Backoff(base_s=0.1, cap_s=5.0)
    assert policy.delay(10**6) == 5.0


def test_jitter_stays_in_band():
    policy = Backoff(base_s=1.0, cap_s=1.0, jitter=0.1)
    rng = random.Random(7)
    values = [policy.delay(3, rng) for _ in range(500)]
    assert min(values) >= 0.9 and max(values) < 1.1 and max(values) - min(values) > 0.1


def test_delays_iterator_and_validation():
    it = Backoff(base_s=0.2, cap_s=0.8).delays()
    assert [next(it) for _ in range(4)] == [0.2, 0.4, 0.8, 0.8]
    with pytest.raises(ValueError, match="invalid backoff"):
        Backoff(base_s=2.0, cap_s=1.0)
