"""PgUserStore on real PostgreSQL: users, grants, last-admin guard, service accounts, sessions."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import timedelta
from typing import TypeVar

import psycopg
import pytest
from argon2 import PasswordHasher

from linesight.common.db import Database
from linesight.common.identity import Grant, Role
from linesight.common.identity.passwords import Passwords
from linesight.common.identity.users import LastAdmin, PgUserStore, UnknownUser, UserExists

pytestmark = pytest.mark.integration

# Cheap argon2 parameters keep the suite fast; production uses argon2's defaults.
FAST = Passwords(PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
PW = "correct horse battery"
T = TypeVar("T")


@pytest.fixture
def store(db: Database) -> PgUserStore:
    return PgUserStore(db, FAST)


async def test_add_get_list_and_unique_usernames(store: PgUserStore) -> None:
    ann = await store.add_user(
        "ann", display_name="Ann A.", password=PW, grants=[Grant.parse("labeler@plant1")]
    )
    assert ann.id.startswith("u_") and ann.has_password and not ann.disabled
    assert ann.grants == (Grant(Role.LABELER, "plant1"),)
    assert ann.principal().name == "Ann A." and ann.principal().kind == "user"
    await store.add_user("bob")
    assert [u.username for u in await store.list_users()] == ["ann", "bob"]
    assert (await store.get_user("ANN")).id == ann.id
    with pytest.raises(UserExists):
        await store.add_user("Ann")
    with pytest.raises(UnknownUser):
        await store.get_user("nobody")
    with pytest.raises(ValueError, match="no spaces"):
        await store.add_user("ann smith")


async def test_authenticate(store: PgUserStore) -> None:
    await store.add_user("ann", password=PW, grants=[Grant.parse("admin")])
    await store.add_user("sso-only")
    assert (await store.authenticate("ann", PW)) is not None
    assert await store.authenticate("ann", PW + "x") is None
    assert await store.authenticate("nobody", PW) is None
    assert await store.authenticate("sso-only", PW) is None
    await store.add_user("bob", password=PW)
    await store.set_disabled("bob", True)
    assert await store.authenticate("bob", PW) is None
    await store.set_password("bob", "another long password")
    await store.set_disabled("bob", False)
    assert await store.authenticate("bob", "another long password") is not None


async def test_login_upgrades_hashes_made_with_older_parameters(db: Database) -> None:
    await PgUserStore(db, FAST).add_user("ann", password=PW)
    stronger = PgUserStore(db, Passwords(PasswordHasher(time_cost=2, memory_cost=2048, parallelism=1)))
    assert await stronger.authenticate("ann", PW) is not None
    async with db.connection() as conn:
        row = await (await conn.execute("SELECT password_hash FROM auth_users")).fetchone()
    assert row is not None and "m=2048,t=2" in row[0]


async def test_set_grants_replaces_and_the_last_admin_stays(store: PgUserStore) -> None:
    await store.add_user("root", grants=[Grant.parse("admin")])
    ann = await store.add_user("ann", grants=[Grant.parse("labeler")])
    ann = await store.set_grants(
        "ann", [Grant.parse("reviewer@plant1/widget"), Grant.parse("labeler@plant1")]
    )
    assert {str(g) for g in ann.grants} == {"reviewer@plant1/widget", "labeler@plant1/*"}
    with pytest.raises(LastAdmin):
        await store.set_grants("root", [Grant.parse("engineer")])
    with pytest.raises(LastAdmin):
        await store.set_disabled("root", True)
    assert (await store.get_user("root")).grants == (Grant(Role.ADMIN),)  # rolled back


async def released_together(db: Database, *calls: Awaitable[T]) -> list[T | BaseException]:
    """Run `calls` so they reach auth_grants at the same moment: a gate transaction holds the
    table until all of them are waiting on it, then lets them go at once."""
    async with await psycopg.AsyncConnection.connect(db.dsn, options=f"-c search_path={db.schema}") as gate:
        await gate.execute("LOCK TABLE auth_grants IN SHARE ROW EXCLUSIVE MODE")
        tasks = [asyncio.ensure_future(c) for c in calls]
        for _ in range(200):  # until every call is blocked on the gate
            cur = await gate.execute(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'auth_grants'::regclass"
            )
            row = await cur.fetchone()
            if row is not None and row[0] == len(tasks):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the calls never reached auth_grants")
        await gate.commit()
    return await asyncio.gather(*tasks, return_exceptions=True)


async def test_two_admins_demoting_each_other_at_once_leave_one(store: PgUserStore, db: Database) -> None:
    await store.add_user("a", grants=[Grant.parse("admin")])
    await store.add_user("b", grants=[Grant.parse("admin")])
    results = await released_together(
        db, store.set_grants("a", [Grant.parse("engineer")]), store.set_grants("b", [Grant.parse("engineer")])
    )
    assert sum(isinstance(r, LastAdmin) for r in results) == 1
    admins = [u.username for u in await store.list_users() if any(g.role == Role.ADMIN for g in u.grants)]
    assert len(admins) == 1


async def test_first_admin_is_created_once_even_when_raced(store: PgUserStore, db: Database) -> None:
    passwords = await released_together(db, *(store.ensure_first_admin() for _ in range(3)))
    assert not [p for p in passwords if isinstance(p, BaseException)]
    assert passwords.count(None) == 2
    created = [p for p in passwords if isinstance(p, str)]
    assert len(created) == 1
    admin = await store.authenticate("admin", created[0])
    assert admin is not None and admin.grants == (Grant(Role.ADMIN),)
    assert await store.ensure_first_admin() is None


async def test_service_account_api_keys(store: PgUserStore) -> None:
    account, key = await store.add_service_account("capture-line1", [Grant.parse("service@plant1")])
    assert key.startswith("lsk_")
    found = await store.authenticate_api_key(key)
    assert found == account and found.principal().kind == "service"
    assert await store.authenticate_api_key(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert await store.authenticate_api_key("lsk_nope.nope") is None
    assert await store.authenticate_api_key("garbage") is None
    async with store._db.connection() as conn:  # the secret itself is never stored
        rows = await (await conn.execute("SELECT key_hash FROM auth_service_accounts")).fetchall()
    assert key.split(".")[1] not in rows[0][0]
    with pytest.raises(UserExists):
        await store.add_service_account("capture-line1", [])
    assert [a.name for a in await store.list_service_accounts()] == ["capture-line1"]


async def test_sessions_expire_idle_out_and_are_revoked(store: PgUserStore, db: Database) -> None:
    await store.add_user("root", grants=[Grant.parse("admin")])
    ann = await store.add_user("ann", password=PW, grants=[Grant.parse("labeler")])
    sid, csrf = await store.create_session(ann, ttl=timedelta(hours=8))
    session = await store.resume_session(sid, idle=timedelta(minutes=30))
    assert session is not None and session.user.id == ann.id and session.csrf_token == csrf
    assert await store.resume_session("not-a-session", idle=timedelta(minutes=30)) is None

    async with db.connection() as conn:  # only the hash of the id is stored; age the session
        assert (
            await (await conn.execute("SELECT 1 FROM auth_sessions WHERE id_hash = %s", (sid,))).fetchone()
            is None
        )
        await conn.execute("UPDATE auth_sessions SET last_seen_at = now() - interval '31 minutes'")
    assert await store.resume_session(sid, idle=timedelta(minutes=30)) is None

    expired, _ = await store.create_session(ann, ttl=timedelta(seconds=-1))
    assert await store.resume_session(expired, idle=timedelta(minutes=30)) is None

    live, _ = await store.create_session(ann, ttl=timedelta(hours=1))
    await store.revoke_session(live)
    assert await store.resume_session(live, idle=timedelta(minutes=30)) is None

    other, _ = await store.create_session(ann, ttl=timedelta(hours=1))
    await store.set_disabled("ann", True)  # disabling ends every session of the user
    await store.set_disabled("ann", False)
    assert await store.resume_session(other, idle=timedelta(minutes=30)) is None
