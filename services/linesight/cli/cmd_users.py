"""`linesight users add|list|disable|enable|set-role` and `linesight audit verify`: the local admin
tools. They talk to the installation's PostgreSQL directly (the labeling schema, where the identity
store and the audit trail live) with the installation settings, so they work before anyone can
log in, e.g. to recover from a lost admin password. Account changes are recorded in the audit
trail as done by `cli:<os user>`.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from linesight.common.audit import AUDIT_MIGRATIONS, AuditEntry, AuditLog
from linesight.common.db import Database, DatabaseUnavailable, aapply_migrations, open_database
from linesight.common.embedded.config import SettingsError, load_settings
from linesight.common.identity import Grant
from linesight.common.identity.passwords import generate_password
from linesight.common.identity.users import (
    IDENTITY_MIGRATIONS,
    LastAdmin,
    PgUserStore,
    UnknownUser,
    UserExists,
)
from linesight.common.settings import Settings
from linesight.labeling.store import SCHEMA

EXIT_CONFIG = 2


def register(subparsers: Any) -> None:
    users = subparsers.add_parser(
        "users",
        help="manage people's accounts and roles (local admin tool, talks to PostgreSQL directly)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    users.add_argument(
        "--state-dir", type=Path, help="state directory (LINESIGHT_STATE_DIR, default .linesight)"
    )
    sub = users.add_subparsers(dest="users_command", required=True)
    add = sub.add_parser("add", help="create an account; prints a one-time password unless --password-stdin")
    add.add_argument("username")
    add.add_argument("--display-name", default="")
    add.add_argument(
        "--grant", action="append", default=[], metavar="ROLE@PLANT/PRODUCT", help="e.g. reviewer@plant1/tile"
    )
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    sub.add_parser("list", help="accounts with their grants")
    for name, text in (("disable", "disable an account (ends its sessions)"), ("enable", "enable it again")):
        p = sub.add_parser(name, help=text)
        p.add_argument("username")
    role = sub.add_parser("set-role", help="replace an account's grants (refused if no admin would remain)")
    role.add_argument("username")
    role.add_argument("grants", nargs="*", metavar="ROLE@PLANT/PRODUCT")
    role.add_argument("--reason", default="", help="why, for the audit trail")
    users.set_defaults(func=run_users)

    audit = subparsers.add_parser("audit", help="check the labeling audit trail's hash chain")
    audit.add_argument(
        "--state-dir", type=Path, help="state directory (LINESIGHT_STATE_DIR, default .linesight)"
    )
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    audit_sub.add_parser("verify", help="walk the chain; exit 1 naming the first broken record")
    audit.set_defaults(func=run_audit)


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(**({"state_dir": args.state_dir} if args.state_dir else {}))


async def _with_db(settings: Settings, work: Callable[[Database], Awaitable[int]]) -> int:
    for migrations in (IDENTITY_MIGRATIONS, AUDIT_MIGRATIONS):
        await aapply_migrations(settings.pg_dsn, SCHEMA, migrations)
    db = await open_database(settings, SCHEMA, max_size=1)
    try:
        return await work(db)
    finally:
        await db.close()


def _run(args: argparse.Namespace, command: str, work: Callable[[Database], Awaitable[int]]) -> int:
    try:
        settings = _settings(args)
    except SettingsError as exc:
        print(f"linesight {command}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        return asyncio.run(_with_db(settings, work))
    except DatabaseUnavailable as exc:
        print(f"linesight {command}: {exc} (is the stack running? `linesight up`)", file=sys.stderr)
        return 1


def _cli_actor() -> str:
    return f"cli:{getpass.getuser()}"


async def _audit(db: Database, action: str, username: str, old: Any, new: Any, reason: str = "") -> None:
    actor = _cli_actor()
    await AuditLog(db).append(
        AuditEntry(
            actor, actor, "admin", action, "user", username, old_value=old, new_value=new, reason=reason
        )
    )


def run_users(args: argparse.Namespace) -> int:
    async def work(db: Database) -> int:
        store = PgUserStore(db)
        try:
            if args.users_command == "add":
                grants = [Grant.parse(g) for g in args.grant]
                password = sys.stdin.readline().rstrip("\n") if args.password_stdin else generate_password()
                user = await store.add_user(
                    args.username, display_name=args.display_name, password=password, grants=grants
                )
                await _audit(db, "user.add", user.username, None, {"grants": [str(g) for g in user.grants]})
                print(f"added {user.username} ({', '.join(str(g) for g in user.grants) or 'no grants'})")
                if not args.password_stdin:
                    print(f"one-time password: {password}")
            elif args.users_command == "list":
                for u in await store.list_users():
                    state = "disabled" if u.disabled else "enabled"
                    print(f"{u.username}\t{state}\t{' '.join(str(g) for g in u.grants) or '-'}")
            elif args.users_command in ("disable", "enable"):
                disabled = args.users_command == "disable"
                before = await store.get_user(args.username)
                user = await store.set_disabled(args.username, disabled)
                await _audit(db, f"user.{args.users_command}", user.username, {"disabled": before.disabled},
                             {"disabled": disabled})  # fmt: skip
                print(f"{user.username} {'disabled' if disabled else 'enabled'}")
            else:  # set-role
                grants = [Grant.parse(g) for g in args.grants]
                before = await store.get_user(args.username)
                user = await store.set_grants(args.username, grants)
                await _audit(
                    db, "user.set_role", user.username, {"grants": [str(g) for g in before.grants]},
                    {"grants": [str(g) for g in user.grants]}, args.reason,
                )  # fmt: skip
                print(f"{user.username}: {', '.join(str(g) for g in user.grants) or 'no grants'}")
        except (UserExists, UnknownUser, LastAdmin, ValueError) as exc:
            print(f"linesight users: {exc}", file=sys.stderr)
            return 1
        return 0

    return _run(args, "users", work)


def run_audit(args: argparse.Namespace) -> int:
    async def work(db: Database) -> int:
        trail = AuditLog(db)
        broken = await trail.verify()
        head = await trail.head()
        if broken is not None:
            print(f"audit trail BROKEN at record {broken.seq}: {broken.reason}", file=sys.stderr)
            return 1
        print(
            f"audit trail intact: {head.seq if head else 0} records, head {head.hash[:16] if head else '-'}"
        )
        return 0

    return _run(args, "audit", work)
