"""Password hashing with argon2id; argon2-cffi's defaults (RFC 9106 low-memory profile) in production.

Hashing costs ~0.5 s of CPU by design, so async callers use the `a*` variants (worker thread) to
keep the event loop serving other requests.
"""

from __future__ import annotations

import asyncio
import secrets
import string
from functools import cached_property

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_ALPHABET = string.ascii_letters + string.digits
MIN_LENGTH = 12


class Passwords:
    """Hash/verify/rehash with one set of argon2 parameters (tests pass a cheaper hasher)."""

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self._hasher = hasher or PasswordHasher()

    def hash(self, password: str) -> str:
        if len(password) < MIN_LENGTH:
            raise ValueError(f"password too short: at least {MIN_LENGTH} characters")
        return self._hasher.hash(password)

    def verify(self, stored_hash: str | None, password: str) -> bool:
        """True when `password` matches. A missing user (None) still costs one verification, so a
        login takes as long whether or not the username exists."""
        try:
            ok = self._hasher.verify(stored_hash if stored_hash is not None else self._dummy_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        return ok and stored_hash is not None

    def needs_rehash(self, stored_hash: str) -> bool:
        """True when the hash was made with other parameters than today's; rehash at the next login."""
        try:
            return self._hasher.check_needs_rehash(stored_hash)
        except InvalidHashError:
            return True

    async def ahash(self, password: str) -> str:
        return await asyncio.to_thread(self.hash, password)

    async def averify(self, stored_hash: str | None, password: str) -> bool:
        return await asyncio.to_thread(self.verify, stored_hash, password)

    @cached_property
    def _dummy_hash(self) -> str:
        return self._hasher.hash(secrets.token_urlsafe(16))


def generate_password(length: int = 20) -> str:
    """A one-time password (first admin, resets): ~119 bits at 20 characters, letters and digits only."""
    if length < MIN_LENGTH:
        raise ValueError(f"generated passwords must have at least {MIN_LENGTH} characters")
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))
