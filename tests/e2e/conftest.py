"""Helpers for end-to-end tests: the real `linesight` command as a subprocess on free ports.

Each run gets its own state dir under the session's `embedded_root` (reachable by the unprivileged
PostgreSQL user when we are root, unlike pytest's tmp_path), every port given explicitly through
LINESIGHT_* variables (never the defaults of settings.py: a developer's own stack may use them),
and a marker variable that every process it starts inherits, so the tests can find anything left
behind afterwards, whatever its command line.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from linesight.common.embedded import free_port
from linesight.common.settings import SERVICE_PORTS

# Inherited by every process a run starts; outside LINESIGHT_*, where it would be an unknown setting.
MARKER_VAR = "E2E_STACK_MARKER"


def linesight_command() -> list[str]:
    """The installed console script next to this interpreter (the README's `.venv/bin/linesight`)."""
    script = Path(sys.executable).parent / "linesight"
    if script.exists():
        return [str(script)]
    found = shutil.which("linesight")
    return [found] if found else [sys.executable, "-m", "linesight.cli"]


class _Ports:
    """Free ports that are distinct from each other, including the ports servers derive (+N)."""

    def __init__(self) -> None:
        self.taken: set[int] = set()

    def get(self, *offsets: int) -> int:
        for _ in range(500):
            p = free_port(also_free=offsets)
            wanted = {p, *(p + o for o in offsets)}
            if not wanted & self.taken and max(wanted) < 65536:
                self.taken |= wanted
                return p
        raise RuntimeError("no free ports")


@dataclass
class E2EStack:
    """State dir, ports and environment for one `linesight up` / `linesight demo` stack."""

    state_dir: Path
    env: dict[str, str]
    grpc_ports: dict[str, int]
    http_ports: dict[str, int]
    pg_port: int
    nats_port: int
    s3_port: int
    mes_receiver_port: int
    marker: str
    log_dir: Path
    s3_all_ports: list[int] = field(default_factory=list)  # every port weed binds (HTTP and gRPC)
    started: list[psutil.Process] = field(default_factory=list)
    seen: dict[int, set[str]] = field(default_factory=dict)  # pid -> command lines it showed, see snapshot()
    _seen_procs: dict[int, psutil.Process] = field(default_factory=dict)

    @property
    def pg_dsn(self) -> str:
        return f"postgresql://linesight@127.0.0.1:{self.pg_port}/linesight"

    def http_url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.http_ports[service]}"

    def grpc_target(self, service: str) -> str:
        return f"127.0.0.1:{self.grpc_ports[service]}"

    # --- processes ----------------------------------------------------------------------------
    def popen(
        self, args: Sequence[str], name: str, *, env: dict[str, str] | None = None, stdout_file: bool = False
    ) -> subprocess.Popen[str]:
        """`linesight ARGS` with stderr to a log file and stdout piped (line-buffered text) or to a file."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        err = (self.log_dir / f"{name}.stderr").open("a")
        out = (self.log_dir / f"{name}.stdout").open("a") if stdout_file else None
        try:
            proc = subprocess.Popen(
                [*linesight_command(), *args],
                env=env or self.env,
                stdin=subprocess.DEVNULL,
                stdout=out or subprocess.PIPE,
                stderr=err,
                text=True,
                bufsize=1,
            )
        finally:
            err.close()
            if out is not None:
                out.close()
        with contextlib.suppress(psutil.NoSuchProcess):
            self.started.append(psutil.Process(proc.pid))
        return proc

    def run(
        self, args: Sequence[str], name: str, timeout: float, *, env: dict[str, str] | None = None
    ) -> tuple[int, str, str]:
        """Run `linesight ARGS` to completion, noting every process it starts on the way (`seen`).

        Returns (exit code, stdout, stderr).
        """
        proc = self.popen(args, name, env=env, stdout_file=True)
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            self.snapshot()
            if time.monotonic() > deadline:
                stop_process(proc, signal.SIGINT, 60)
                raise AssertionError(
                    f"`linesight {' '.join(args)}` did not finish within {timeout:.0f}s\n"
                    f"{self.stderr_tail(name)}\n{self.service_log_tails()}"
                )
            time.sleep(2.0)
        return proc.returncode, self.log_text(name, "stdout"), self.stderr_text(name)

    def snapshot(self) -> None:
        """Remember the processes running for this stack right now, descendants included.

        PostgreSQL's backends overwrite their environment with their process title, so the marker
        does not find them; remembered here, they are still checked by `leftovers`. Every command
        line a pid showed is kept: a forked child shows its parent's until it execs, and a process
        that is exiting shows an empty one while the kernel unmaps its memory (seconds for a
        service holding gigabytes), so the last look alone can miss a service that ran all along.
        """
        for proc, cmd in self._scan():
            self.seen.setdefault(proc.pid, set()).add(cmd)
            self._seen_procs[proc.pid] = proc

    def log_text(self, name: str, stream: str) -> str:
        path = self.log_dir / f"{name}.{stream}"
        return path.read_text(errors="replace") if path.exists() else ""

    def stderr_text(self, name: str) -> str:
        return self.log_text(name, "stderr")

    def stderr_tail(self, name: str, lines: int = 60) -> str:
        text = "\n".join(self.stderr_text(name).splitlines()[-lines:])
        return f"--- stderr of {name} (last {lines} lines) ---\n{text}"

    def service_log_tails(self, under: str = "", lines: int = 25) -> str:
        """The last lines of every log the stack wrote (for failure messages); `under` names a
        stack state dir inside this one (the demo's `demo`)."""
        out = []
        for log in sorted((self.state_dir / under / "logs").glob("*.log")):
            with contextlib.suppress(OSError):
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
                out.append(f"--- {log.name} ---\n{tail}")
        return "\n".join(out)

    # --- what is left behind ------------------------------------------------------------------
    def _scan(self) -> list[tuple[psutil.Process, str]]:
        me = os.getpid()
        state = str(self.state_dir)
        found: dict[int, psutil.Process] = {}
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                if p.pid == me:
                    continue
                if state in " ".join(p.info["cmdline"] or []) or p.environ().get(MARKER_VAR) == self.marker:
                    found[p.pid] = p
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        roots = [*found.values(), *self.started, *self._seen_procs.values()]
        for p in roots:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                if p.is_running():  # same pid *and* creation time: not a reused pid
                    found[p.pid] = p
                    for child in p.children(recursive=True):
                        found[child.pid] = child
        out = []
        for _, p in sorted(found.items()):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                if p.status() != psutil.STATUS_ZOMBIE:
                    out.append((p, " ".join(p.cmdline())))
        return out

    def leftovers(self) -> list[str]:
        """Live processes started for this stack: marker in their environment, state dir in their
        command line, processes this test started or saw earlier, and all their descendants."""
        return [f"pid {p.pid}: {cmd[:300]}" for p, cmd in self._scan()]

    def assert_seen_whole_stack(self) -> None:
        """The process detector saw every server and service while the stack ran; otherwise
        "nothing left behind" would prove nothing."""
        cmds = sorted({cmd for shown in self.seen.values() for cmd in shown if cmd})
        state = str(self.state_dir)
        expected: dict[str, Callable[[str], bool]] = {
            "nats-server": lambda c: "nats-server" in c,
            "postgres": lambda c: "postgres" in c and state in c,
            "postgres backend/helper": lambda c: c.startswith("postgres:"),
            "weed": lambda c: "weed" in c and " mini " in c,
        }
        for svc in SERVICE_PORTS:
            expected[f"linesight.{svc}"] = _contains(f"-m linesight.{svc}")
        missing = [name for name, match in expected.items() if not any(match(c) for c in cmds)]
        assert not missing, f"never saw {missing} among the processes of the stack: {cmds}"

    def wait_no_leftovers(self, timeout: float = 15.0) -> list[str]:
        """Leftovers after a short grace period (processes that are exiting right now get time)."""
        deadline = time.monotonic() + timeout
        while True:
            left = self.leftovers()
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.3)

    def leftover_sockets(self) -> list[Path]:
        """weed's unix sockets for this stack's ports (it hard-wires some to /tmp) still on disk."""
        ports = {str(p) for p in self.s3_all_ports}
        folders = [Path("/tmp"), *(self.state_dir / "s3").glob("tmp")]
        return [
            sock
            for folder in folders
            for sock in folder.glob("seaweedfs-*.sock")
            if sock.stem.rsplit("-", 1)[-1] in ports
        ]

    def kill_leftovers(self) -> None:
        """Cleanup after a failed test: only processes carrying this stack's marker or state dir."""
        for line in self.leftovers():
            pid = int(line.split(":", 1)[0].removeprefix("pid "))
            with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
                psutil.Process(pid).kill()


def _contains(text: str) -> Callable[[str], bool]:
    return lambda cmd: text in cmd


def stop_process(proc: subprocess.Popen[str], sig: int, timeout: float) -> int | None:
    """Send `sig`, wait up to `timeout`, then SIGKILL; returns the exit code after `sig` (None if killed)."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        return None


def make_stack(state_dir: Path, log_dir: Path) -> E2EStack:
    """Free ports for every component, and the environment that gives each one explicitly."""
    ports = _Ports()
    nats = ports.get(4000)  # monitor = client + 4000
    pg = ports.get()
    s3, master, volume = ports.get(10000), ports.get(10000), ports.get(10000)  # gRPC = HTTP + 10000
    filer = ports.get(1, 10000, 10001)  # admin = filer + 1, each with its gRPC twin
    grpc_ports = {svc: ports.get() for svc in SERVICE_PORTS}
    http_ports = {svc: ports.get() for svc in SERVICE_PORTS}
    mes = ports.get()
    triton = [ports.get() for _ in range(3)]
    marker = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("LINESIGHT_")}
    env.update(
        {
            "LINESIGHT_STATE_DIR": str(state_dir),
            "LINESIGHT_HOST": "127.0.0.1",
            "LINESIGHT_LISTEN_HOST": "127.0.0.1",
            "LINESIGHT_NATS_PORT": str(nats),
            "LINESIGHT_PG_PORT": str(pg),
            "LINESIGHT_S3_PORT": str(s3),
            "LINESIGHT_S3_MASTER_PORT": str(master),
            "LINESIGHT_S3_VOLUME_PORT": str(volume),
            "LINESIGHT_S3_FILER_PORT": str(filer),
            "LINESIGHT_TRITON_HTTP_PORT": str(triton[0]),
            "LINESIGHT_TRITON_GRPC_PORT": str(triton[1]),
            "LINESIGHT_TRITON_METRICS_PORT": str(triton[2]),
            "LINESIGHT_GRPC_PORTS": json.dumps(grpc_ports),
            "LINESIGHT_HTTP_PORTS": json.dumps(http_ports),
            "LINESIGHT_MES_RECEIVER_PORT": str(mes),
            "LINESIGHT_MES_ENDPOINT": f"http://127.0.0.1:{mes}/dispositions",
            "LINESIGHT_MES_OPCUA_PORT": str(ports.get()),
            "LINESIGHT_LOG_JSON": "false",
            MARKER_VAR: marker,
            "PYTHONUNBUFFERED": "1",
        }
    )
    return E2EStack(
        state_dir=state_dir,
        env=env,
        grpc_ports=grpc_ports,
        http_ports=http_ports,
        pg_port=pg,
        nats_port=nats,
        s3_port=s3,
        mes_receiver_port=mes,
        marker=marker,
        log_dir=log_dir,
        s3_all_ports=[q for p in (s3, master, volume, filer, filer + 1) for q in (p, p + 10000)],
    )


@pytest.fixture
def e2e_stack(state_root: Path) -> Iterator[E2EStack]:
    """A private stack description (state dir + free ports); anything it left running is killed at
    teardown so one failed test cannot disturb the next (tests assert on leftovers themselves)."""
    stack = make_stack(state_root / "state", state_root / "cli-logs")
    yield stack
    stack.kill_leftovers()
