"""argon2 password hashing: verify, wrong password, unknown user, rehash, one-time passwords."""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher

from linesight.common.identity.passwords import MIN_LENGTH, Passwords, generate_password

# Cheap parameters keep the suite fast on shared cores; production uses argon2's defaults.
FAST = Passwords(PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


def test_hash_and_verify() -> None:
    stored = FAST.hash("correct horse battery")
    assert stored.startswith("$argon2id$")
    assert FAST.verify(stored, "correct horse battery")
    assert not FAST.verify(stored, "correct horse battery!")
    assert FAST.hash("correct horse battery") != stored  # salted


def test_unknown_user_and_garbage_hash_never_verify() -> None:
    assert not FAST.verify(None, "anything at all")
    assert not FAST.verify("not-a-hash", "anything at all")


def test_weaker_parameters_need_rehash() -> None:
    stronger = Passwords(PasswordHasher(time_cost=2, memory_cost=2048, parallelism=1))
    old = FAST.hash("correct horse battery")
    assert stronger.needs_rehash(old)
    assert not FAST.needs_rehash(old)
    assert FAST.needs_rehash("garbage")


def test_short_passwords_are_refused() -> None:
    with pytest.raises(ValueError, match="too short"):
        FAST.hash("x" * (MIN_LENGTH - 1))


def test_generated_passwords_are_long_random_and_hashable() -> None:
    a, b = generate_password(), generate_password()
    assert len(a) == 20 and a.isalnum() and a != b
    assert FAST.verify(FAST.hash(a), a)
    with pytest.raises(ValueError):
        generate_password(8)


async def test_async_variants_run_off_the_event_loop() -> None:
    stored = await FAST.ahash("correct horse battery")
    assert await FAST.averify(stored, "correct horse battery")
