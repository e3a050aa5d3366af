"""The identity store the issuing service hosts: users, grants, service accounts, browser sessions.

Other services never read these tables; they verify the tokens the issuer mints from them.
Changes to grants and account state serialise on one lock so two admins demoting each other at
the same moment cannot leave the installation without an enabled admin.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg.rows import dict_row

from linesight.common.db import Database
from linesight.common.identity.model import Grant, Principal, Role
from linesight.common.identity.passwords import Passwords, generate_password

IDENTITY_MIGRATIONS = Path(__file__).parent / "migrations" / "identity"
API_KEY_PREFIX = "lsk_"
_INSERT_USER = "INSERT INTO auth_users (id, username, display_name, password_hash) VALUES (%s, %s, %s, %s)"
_LOCK = "LOCK TABLE auth_grants IN SHARE ROW EXCLUSIVE MODE"  # grant/state changes one at a time


class UserExists(ValueError):  # noqa: N818 - reads as the condition
    """The username (case-insensitive) or service-account name is taken."""


class UnknownUser(KeyError):  # noqa: N818
    """No such user or service account."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown user"


class LastAdmin(ValueError):  # noqa: N818
    """The change would leave no enabled account with an admin grant."""


@dataclass(frozen=True)
class User:
    id: str
    username: str
    display_name: str
    disabled: bool
    created_at: datetime
    grants: tuple[Grant, ...]
    has_password: bool

    def principal(self) -> Principal:
        return Principal(self.id, self.display_name or self.username, "user", self.grants)


@dataclass(frozen=True)
class ServiceAccount:
    id: str
    name: str
    disabled: bool
    created_at: datetime
    grants: tuple[Grant, ...]

    def principal(self) -> Principal:
        return Principal(self.id, self.name, "service", self.grants)


@dataclass(frozen=True)
class Session:
    user: User
    csrf_token: str
    expires_at: datetime
    last_seen_at: datetime


class UserStore(Protocol):
    """What the login endpoints and the `linesight users` CLI need."""

    async def add_user(
        self,
        username: str,
        *,
        display_name: str = "",
        password: str | None = None,
        grants: Iterable[Grant] = (),
    ) -> User: ...
    async def get_user(self, username: str) -> User: ...
    async def list_users(self) -> list[User]: ...
    async def set_disabled(self, username: str, disabled: bool) -> User: ...
    async def set_password(self, username: str, password: str) -> None: ...
    async def set_grants(self, username: str, grants: Iterable[Grant]) -> User: ...
    async def authenticate(self, username: str, password: str) -> User | None: ...
    async def ensure_first_admin(self, username: str = "admin") -> str | None: ...
    async def add_service_account(self, name: str, grants: Iterable[Grant]) -> tuple[ServiceAccount, str]: ...
    async def authenticate_api_key(self, api_key: str) -> ServiceAccount | None: ...
    async def create_session(self, user: User, *, ttl: timedelta) -> tuple[str, str]: ...
    async def resume_session(self, session_id: str, *, idle: timedelta) -> Session | None: ...
    async def revoke_session(self, session_id: str) -> None: ...


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(8)}"


class PgUserStore:
    """UserStore on PostgreSQL (apply IDENTITY_MIGRATIONS to the issuer's schema first)."""

    def __init__(self, db: Database, passwords: Passwords | None = None) -> None:
        self._db = db
        self._passwords = passwords or Passwords()

    # --- users -------------------------------------------------------------------------------
    async def add_user(
        self,
        username: str,
        *,
        display_name: str = "",
        password: str | None = None,
        grants: Iterable[Grant] = (),
    ) -> User:
        username = _check_name(username)
        pw_hash = await self._passwords.ahash(password) if password is not None else None
        uid = _new_id("u_")
        try:
            async with self._db.connection() as conn:
                await conn.execute(
                    _INSERT_USER,
                    (uid, username, display_name, pw_hash),
                )
                await _insert_grants(conn, uid, grants)
        except psycopg.errors.UniqueViolation as exc:
            raise UserExists(f"user {username!r} already exists") from exc
        return await self.get_user(username)

    async def get_user(self, username: str) -> User:
        users = await self._users("lower(u.username) = lower(%s)", [username])
        if not users:
            raise UnknownUser(f"no user {username!r}")
        return users[0]

    async def list_users(self) -> list[User]:
        return await self._users("TRUE", [])

    async def set_disabled(self, username: str, disabled: bool) -> User:
        """Disabling also revokes the user's browser sessions (tokens already issued run out)."""
        async with self._db.connection() as conn:
            await conn.execute(_LOCK)
            uid = await _user_id(conn, username)
            await conn.execute("UPDATE auth_users SET disabled = %s WHERE id = %s", (disabled, uid))
            if disabled:
                await conn.execute(
                    "UPDATE auth_sessions SET revoked_at = now() WHERE user_id = %s AND revoked_at IS NULL",
                    (uid,),
                )
                await _ensure_an_admin(conn)
        return await self.get_user(username)

    async def set_password(self, username: str, password: str) -> None:
        pw_hash = await self._passwords.ahash(password)
        async with self._db.connection() as conn:
            uid = await _user_id(conn, username)
            await conn.execute("UPDATE auth_users SET password_hash = %s WHERE id = %s", (pw_hash, uid))

    async def set_grants(self, username: str, grants: Iterable[Grant]) -> User:
        """Replace the user's grants (refused if that removes the last enabled admin)."""
        async with self._db.connection() as conn:
            await conn.execute(_LOCK)
            uid = await _user_id(conn, username)
            await conn.execute("DELETE FROM auth_grants WHERE subject = %s", (uid,))
            await _insert_grants(conn, uid, grants)
            await _ensure_an_admin(conn)
        return await self.get_user(username)

    async def authenticate(self, username: str, password: str) -> User | None:
        """The enabled user whose password matches, else None (same cost whether or not the user
        exists). A hash made with older argon2 parameters is upgraded on success."""
        async with self._db.connection() as conn:
            cur = await conn.execute(
                "SELECT id, password_hash, disabled FROM auth_users WHERE lower(username) = lower(%s)",
                (username,),
            )
            row = await cur.fetchone()
        stored = row[1] if row else None
        if not await self._passwords.averify(stored, password) or row is None or row[2]:
            return None
        if self._passwords.needs_rehash(stored or ""):
            await self.set_password(username, password)
        return await self.get_user(username)

    async def ensure_first_admin(self, username: str = "admin") -> str | None:
        """Create `username` with an admin grant and a one-time password when there are no users
        yet; returns that password (show it once) or None when users exist."""
        password = generate_password()
        pw_hash = await self._passwords.ahash(password)
        async with self._db.connection() as conn:
            await conn.execute(_LOCK)
            cur = await conn.execute("SELECT 1 FROM auth_users LIMIT 1")
            if await cur.fetchone():
                return None
            uid = _new_id("u_")
            await conn.execute(
                _INSERT_USER,
                (uid, username, "Administrator", pw_hash),
            )
            await _insert_grants(conn, uid, [Grant(Role.ADMIN)])
        return password

    # --- service accounts ----------------------------------------------------------------------
    async def add_service_account(self, name: str, grants: Iterable[Grant]) -> tuple[ServiceAccount, str]:
        """A machine account and its API key `lsk_<key id>.<secret>` (returned once, stored hashed)."""
        name = _check_name(name)
        sid, key_id, secret = _new_id("sa_"), secrets.token_hex(8), secrets.token_urlsafe(32)
        try:
            async with self._db.connection() as conn:
                await conn.execute(
                    "INSERT INTO auth_service_accounts (id, name, key_id, key_hash) VALUES (%s, %s, %s, %s)",
                    (sid, name, key_id, _sha256(secret)),
                )
                await _insert_grants(conn, sid, grants)
        except psycopg.errors.UniqueViolation as exc:
            raise UserExists(f"service account {name!r} already exists") from exc
        accounts = await self._accounts("a.id = %s", [sid])
        return accounts[0], f"{API_KEY_PREFIX}{key_id}.{secret}"

    async def authenticate_api_key(self, api_key: str) -> ServiceAccount | None:
        """The enabled account the key belongs to. API keys carry 256 random bits, so a plain
        sha256 (constant-time compared) is enough; argon2 would cost 0.5 s per call."""
        if not api_key.startswith(API_KEY_PREFIX) or "." not in api_key:
            return None
        key_id, _, secret = api_key[len(API_KEY_PREFIX) :].partition(".")
        accounts = await self._accounts("a.key_id = %s", [key_id], with_key=True)
        if not accounts:
            return None
        account, key_hash = accounts[0]
        if account.disabled or not hmac.compare_digest(key_hash, _sha256(secret)):
            return None
        return account

    async def list_service_accounts(self) -> list[ServiceAccount]:
        return await self._accounts("TRUE", [])

    # --- browser sessions ----------------------------------------------------------------------
    async def create_session(self, user: User, *, ttl: timedelta) -> tuple[str, str]:
        """A new session: (session id for the cookie, CSRF token). Only a hash of the id is stored."""
        session_id, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        async with self._db.connection() as conn:
            await conn.execute(
                "INSERT INTO auth_sessions (id_hash, user_id, csrf_token, expires_at) "
                "VALUES (%s, %s, %s, now() + %s)",
                (_sha256(session_id), user.id, csrf, ttl),
            )
        return session_id, csrf

    async def resume_session(self, session_id: str, *, idle: timedelta) -> Session | None:
        """The live session (not expired, revoked, idle longer than `idle`, nor of a disabled user),
        its last-seen time moved to now; None otherwise."""
        async with self._db.connection() as conn:
            cur = await conn.execute(
                "UPDATE auth_sessions s SET last_seen_at = now() FROM auth_users u "
                "WHERE s.id_hash = %s AND u.id = s.user_id AND NOT u.disabled AND s.revoked_at IS NULL "
                "AND s.expires_at > now() AND s.last_seen_at > now() - %s "
                "RETURNING u.username, s.csrf_token, s.expires_at, s.last_seen_at",
                (_sha256(session_id), idle),
            )
            row = await cur.fetchone()
        if row is None:
            return None
        return Session(
            user=await self.get_user(row[0]), csrf_token=row[1], expires_at=row[2], last_seen_at=row[3]
        )

    async def revoke_session(self, session_id: str) -> None:
        async with self._db.connection() as conn:
            await conn.execute(
                "UPDATE auth_sessions SET revoked_at = now() WHERE id_hash = %s AND revoked_at IS NULL",
                (_sha256(session_id),),
            )

    # --- reads -----------------------------------------------------------------------------------
    async def _users(self, where: str, args: Sequence[Any]) -> list[User]:
        async with self._db.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "SELECT u.id, u.username, u.display_name, u.disabled, u.created_at, "
                "u.password_hash IS NOT NULL AS has_password, "
                "coalesce(array_agg(ARRAY[g.role, g.plant, g.product] ORDER BY g.role, g.plant, g.product) "
                "FILTER (WHERE g.role IS NOT NULL), '{}') AS grants "
                f"FROM auth_users u LEFT JOIN auth_grants g ON g.subject = u.id WHERE {where} "
                "GROUP BY u.id ORDER BY lower(u.username)",
                args,
            )
            rows = await cur.fetchall()
        return [User(**{**r, "grants": _grants(r["grants"])}) for r in rows]

    async def _accounts(self, where: str, args: Sequence[Any], *, with_key: bool = False) -> list[Any]:
        async with self._db.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "SELECT a.id, a.name, a.disabled, a.created_at, a.key_hash, "
                "coalesce(array_agg(ARRAY[g.role, g.plant, g.product] ORDER BY g.role, g.plant, g.product) "
                "FILTER (WHERE g.role IS NOT NULL), '{}') AS grants "
                f"FROM auth_service_accounts a LEFT JOIN auth_grants g ON g.subject = a.id WHERE {where} "
                "GROUP BY a.id ORDER BY a.name",
                args,
            )
            rows = await cur.fetchall()
        out: list[Any] = []
        for r in rows:
            key_hash = r.pop("key_hash")
            account = ServiceAccount(**{**r, "grants": _grants(r["grants"])})
            out.append((account, key_hash) if with_key else account)
        return out


def _check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 128 or any(c.isspace() for c in name):
        raise ValueError(f"invalid name {name!r}: 1-128 characters, no spaces")
    return name


def _grants(rows: Sequence[Sequence[str]]) -> tuple[Grant, ...]:
    return tuple(Grant(Role(role), plant, product) for role, plant, product in rows)


async def _insert_grants(conn: psycopg.AsyncConnection[Any], subject: str, grants: Iterable[Grant]) -> None:
    rows = [(subject, str(g.role), g.plant, g.product) for g in set(grants)]
    if rows:
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO auth_grants (subject, role, plant, product) VALUES (%s, %s, %s, %s)", rows
            )


async def _user_id(conn: psycopg.AsyncConnection[Any], username: str) -> str:
    cur = await conn.execute("SELECT id FROM auth_users WHERE lower(username) = lower(%s)", (username,))
    row = await cur.fetchone()
    if row is None:
        raise UnknownUser(f"no user {username!r}")
    return str(row[0])


async def _ensure_an_admin(conn: psycopg.AsyncConnection[Any]) -> None:
    """Raise LastAdmin (rolling the change back) when users exist but no enabled one is an admin."""
    cur = await conn.execute(
        "SELECT EXISTS (SELECT 1 FROM auth_users) AND NOT EXISTS (SELECT 1 FROM auth_users u "
        "JOIN auth_grants g ON g.subject = u.id WHERE g.role = 'admin' AND NOT u.disabled)"
    )
    row = await cur.fetchone()
    if row and row[0]:
        raise LastAdmin("refused: no enabled admin would remain (grant admin to someone else first)")
