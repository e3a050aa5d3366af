"""A managed server process: start, wait for health, stop, pid file, clear errors.

Every embedded server (NATS, PostgreSQL, SeaweedFS) has the same life cycle, so the failure modes
(occupied port, stale pid file, binary that dies on start) are handled once here and each server
only says how to prepare, launch and probe itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

LOG_TAIL_LINES = 30


class EmbeddedError(RuntimeError):
    """A server of the embedded stack could not be started or stopped; the message says the fix."""


class PortInUseError(EmbeddedError):
    """A port we need is taken by another process."""


class AlreadyRunningError(EmbeddedError):
    """Our pid file names a live process of the same server."""


class StartFailedError(EmbeddedError):
    """The server exited or never became healthy; the message carries its log tail."""


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port (bind test, like the server itself will do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


# Ports a server may derive from its own (SeaweedFS's admin port is its filer port + 1) stay
# this far below the kernel's range for outgoing connections too.
_DERIVED_SLACK = 8
_LOWEST_PORT = 10000  # below: well-known and registered services (PostgreSQL 5432, NATS 4222, ...)
# Ports (with their offset twins) this process has handed out: never handed out twice, so callers
# drawing several ports before any server binds them get distinct ones.
_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()


def ephemeral_ports() -> tuple[int, int]:
    """The kernel's range for the local ports of outgoing connections (IANA's where it is unknown)."""
    try:
        low, high = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return 49152, 65535
    return low, high


def free_port(host: str = "127.0.0.1", *, also_free: Sequence[int] = ()) -> int:
    """A port that is free now, whose `port + offset` are free too for each offset, all outside the
    kernel's range for outgoing connections.

    Why outside: a server that dies is restarted on the same ports (its clients know them), and a
    client connection opened meanwhile may have been given one of them as its local port; the
    restart then fails for as long as that connection lives. Ports from that range (a bind to
    port 0) made supervised restarts fail that way under load.
    """
    low, high = ephemeral_ports()
    reach = max((0, *also_free)) + _DERIVED_SLACK
    windows = [(a, b) for a, b in ((_LOWEST_PORT, low - reach), (high + 1, 65535 - reach)) if b - a >= 1000]
    rng = random.SystemRandom()
    for _ in range(200):
        if windows:
            a, b = rng.choice(windows)
            port = rng.randint(a, b)
        else:  # no room outside that range on this machine: any port the kernel hands out
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((host, 0))
                port = int(s.getsockname()[1])
        block = {port + off for off in (0, *also_free)}
        with _handed_out_lock:
            if block & _handed_out:
                continue
        if all(q < 65536 and port_is_free(host, q) for q in block):
            with _handed_out_lock:
                _handed_out.update(block)
            return port
    raise EmbeddedError("could not find a free port")


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """Last lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def _set_parent_death_signal(sig: int) -> Callable[[], None]:
    """preexec_fn: the child gets `sig` when the supervisor dies, so a crash leaves no orphans."""

    def preexec() -> None:
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, sig)  # PR_SET_PDEATHSIG

    return preexec


def _read_pidfile(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None


def pidfile_process(path: Path) -> psutil.Process | None:
    """The live process a pid file names, or None if it is dead or the pid was reused by another program."""
    data = _read_pidfile(path)
    if data is None:
        return None
    try:
        proc = psutil.Process(data["pid"])
        if abs(proc.create_time() - float(data.get("create_time", 0))) > 1.0:
            return None  # pid reused by an unrelated process
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return proc


def terminate_tree(proc: psutil.Process, sig: int, timeout: float) -> None:
    """Send `sig` to a process, then SIGKILL it and all its descendants (same group) after `timeout`."""
    try:
        children = proc.children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    with contextlib.suppress(psutil.NoSuchProcess):
        proc.send_signal(sig)
    alive = [] if _wait_gone(proc, timeout) else [proc]
    # Kill whatever is left: the main process if it ignored us, and helpers it forked.
    try:
        pgid = os.getpgid(proc.pid)
    except (ProcessLookupError, OSError):
        pgid = None
    if pgid is not None and pgid == proc.pid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    rest = [p for p in [*alive, *children] if p.is_running()]
    for p in rest:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(rest, timeout=5)


def kill_group(pgid: int) -> None:
    """SIGKILL what is left of a process group whose leader was our child (no-op when empty).

    A group id cannot be reused while any member lives, so this never hits an unrelated program.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _wait_gone(proc: psutil.Process, timeout: float) -> bool:
    """Wait until the process has exited; a zombie counts as exited (its parent may not be us)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


class ManagedProcess:
    """One server binary run as a child in its own process group, with pid file and log file.

    Subclasses set `name` and implement `command`, `ports`, `is_healthy`; optionally `prepare`
    (one-time data-dir setup) and `after_start` (e.g. create a database).
    """

    name: str = "server"
    stop_signal: int = signal.SIGTERM
    start_timeout: float = 60.0
    stop_timeout: float = 15.0

    def __init__(self, state_dir: Path, host: str = "127.0.0.1") -> None:
        self.state_dir = Path(state_dir).absolute()
        self.host = host
        self._popen: subprocess.Popen[bytes] | None = None
        self._t0 = time.monotonic()
        self.started_in_s: float = 0.0  # launch -> healthy, for reports

    # --- what subclasses provide -------------------------------------------------------------
    def command(self) -> list[str]:
        raise NotImplementedError

    def ports(self) -> Mapping[str, int]:
        """Ports the server binds, keyed by the LINESIGHT_* variable (or flag) that changes each."""
        return {}

    def is_healthy(self) -> bool:
        raise NotImplementedError

    def prepare(self) -> None:
        """One-time setup before launch (data dirs, config files)."""

    def after_start(self) -> None:
        """Work once healthy (create role / database ...)."""

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def run_as(self) -> str | None:
        """System user to run the binary as (None = current user)."""
        return None

    # --- paths ------------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.state_dir / self.name

    @property
    def log_path(self) -> Path:
        return self.state_dir / "logs" / f"{self.name}.log"

    @property
    def pid_path(self) -> Path:
        return self.state_dir / "run" / f"{self.name}.pid"

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    # --- life cycle ---------------------------------------------------------------------------
    def check_pidfile(self) -> None:
        """Remove a stale pid file; refuse to start when the recorded server is still alive."""
        if not self.pid_path.exists():
            return
        proc = pidfile_process(self.pid_path)
        if proc is None:
            self.pid_path.unlink(missing_ok=True)
            return
        raise AlreadyRunningError(
            f"{self.name} is already running (pid {proc.pid}, pid file {self.pid_path}) with state dir "
            f"{self.state_dir}. Stop it with `linesight down --state-dir {self.state_dir}` "
            f"(or `kill {proc.pid}`), or use another LINESIGHT_STATE_DIR."
        )

    def check_ports(self) -> None:
        busy = [(var, port) for var, port in self.ports().items() if not port_is_free(self.host, port)]
        if busy:
            what = ", ".join(f"{self.host}:{port} (set {var} to change it)" for var, port in busy)
            raise PortInUseError(
                f"cannot start {self.name}: port already in use: {what}. "
                "Stop the program using it or choose a free port."
            )

    def start(self, timeout: float | None = None) -> None:
        """Launch and wait until healthy; on any failure nothing is left running."""
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Checks (pid file, ports), one-time preparation, then spawn without waiting for health."""
        self._t0 = time.monotonic()
        self.check_pidfile()
        self.check_ports()
        for d in (self.log_path.parent, self.pid_path.parent):
            d.mkdir(parents=True, exist_ok=True)
        self.prepare()
        cmd = self.command()
        log = self.log_path.open("ab")
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(cmd)}\n".encode())
        log.flush()
        user = self.run_as()
        try:
            self._popen = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env(),
                cwd=self.data_dir if self.data_dir.is_dir() else self.state_dir,
                start_new_session=True,
                user=user,
                group=_primary_group(user) if user else None,
                extra_groups=[] if user else None,
                preexec_fn=_set_parent_death_signal(self.stop_signal),
            )
        except OSError as exc:
            raise StartFailedError(f"cannot start {self.name}: {cmd[0]}: {exc}") from exc
        finally:
            log.close()
        self._write_pidfile()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until healthy, then run `after_start`; on failure stop the process and raise."""
        try:
            self._wait_healthy(timeout if timeout is not None else self.start_timeout)
            self.after_start()
        except BaseException:
            self.stop()
            raise
        self.started_in_s = time.monotonic() - self._t0

    def _write_pidfile(self) -> None:
        assert self._popen is not None
        try:
            ctime = psutil.Process(self._popen.pid).create_time()
        except psutil.NoSuchProcess:
            ctime = 0.0
        data = {"pid": self._popen.pid, "create_time": ctime, "name": self.name, "cmd": self.command()[0]}
        self.pid_path.write_text(json.dumps(data))

    def _wait_healthy(self, timeout: float) -> None:
        assert self._popen is not None
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            code = self._popen.poll()
            if code is not None:
                raise StartFailedError(
                    f"{self.name} exited with code {code} while starting. Last lines of {self.log_path}:\n"
                    f"{log_tail(self.log_path)}"
                )
            if self.is_healthy():
                return
            if time.monotonic() > deadline:
                raise StartFailedError(
                    f"{self.name} did not become healthy within {timeout:.0f}s. Last lines of "
                    f"{self.log_path}:\n{log_tail(self.log_path)}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def is_running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def exit_code(self) -> int | None:
        """The exit status once the child has ended (None while running or never started)."""
        return self._popen.poll() if self._popen is not None else None

    def stop(self, timeout: float | None = None) -> None:
        """Graceful signal, then SIGKILL to the whole process group; removes the pid file."""
        timeout = self.stop_timeout if timeout is None else timeout
        if self._popen is not None:
            try:
                proc: psutil.Process | None = psutil.Process(self._popen.pid)
            except psutil.NoSuchProcess:
                proc = None
            if proc is not None:
                terminate_tree(proc, self.stop_signal, timeout)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._popen.wait(timeout=5)
            # The leader may have died alone (SIGKILL): helpers it forked still hold ports and, for
            # PostgreSQL, the shared memory a new postmaster refuses to start next to.
            kill_group(self._popen.pid)
            self._popen = None
        else:
            # Not started by this object: stop what the pid file names (e.g. `linesight down`).
            other = pidfile_process(self.pid_path)
            if other is not None:
                terminate_tree(other, self.stop_signal, timeout)
        self.pid_path.unlink(missing_ok=True)

    def __enter__(self) -> ManagedProcess:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _primary_group(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_gid
