"""The embedded stack: servers plus every service as a supervised child process.

`linesight up`, `linesight demo` and the end-to-end tests share this one implementation:

    with Stack(settings) as stack:        # start() on enter, stop() on exit
        stack.start(services=["capture", "inference"])   # or Stack(...).start() / .stop()

Start order is servers (NATS, PostgreSQL, S3), the JetStream streams (created by the provisioner
NATS user: services may not), optional Triton, then services from consumers to producers; stop is
the reverse. Each child runs in its own process group and gets a parent-death
signal, so neither Ctrl-C nor a crashed supervisor leaves processes behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import json
import os
import shutil
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import psutil

from linesight.common.backoff import Backoff
from linesight.common.bus import PROVISIONER_USER
from linesight.common.embedded.config import child_env
from linesight.common.embedded.nats import NatsServer
from linesight.common.embedded.nats_auth import (
    CREDENTIALS_FILE,
    nats_user_env,
    settings_as,
    with_installation_credentials,
)
from linesight.common.embedded.postgres import PostgresServer, remove_stale_postmaster_pid
from linesight.common.embedded.process import (
    AlreadyRunningError,
    EmbeddedError,
    ManagedProcess,
    PortInUseError,
    StartFailedError,
    log_tail,
    pidfile_process,
    port_is_free,
    terminate_tree,
)
from linesight.common.embedded.seaweed import SeaweedS3
from linesight.common.provision import provision_streams
from linesight.common.settings import Settings

# Service -> module run with `python -m`. Order = start order: consumers before producers, so
# nothing a producer emits at start-up lacks a reader (the bus would keep it anyway; logs are calmer).
SERVICE_MODULES: dict[str, str] = {
    "taxonomy": "linesight.taxonomy",
    "training": "linesight.training",
    "inference": "linesight.inference",
    "labeling": "linesight.labeling",
    "mes": "linesight.mes",
    "capture": "linesight.capture",
}

# Service -> {variable: folder under the state dir} for service paths that default to relative ones.
SERVICE_WORK_DIRS: dict[str, dict[str, str]] = {
    "inference": {"LINESIGHT_INFERENCE_WORK_DIR": "inference"},
    "training": {"LINESIGHT_DATASETS_DIR": "datasets"},
}

# A crashed service is relaunched at once (its parts are on the line: a capture restart gap is
# refused triggers, an inference or MES one is dispositions near the reject window), then with
# fast-growing delays, so a service that keeps crashing is still given up on after ~40 s.
RESTART_BACKOFF = Backoff(base_s=0.25, cap_s=16.0, factor=4.0)  # 0.25, 1, 4, 16, 16 s
# Servers come back sooner: every service waits on them, and a line cannot afford a long outage.
SERVER_RESTART_BACKOFF = Backoff(base_s=0.2, cap_s=8.0)  # 0.2, 0.4, 0.8 ... 8 s
SERVER_READY_TIMEOUT_S = 60.0
SUPERVISE_INTERVAL_S = 0.25
MAX_RESTARTS = 5  # within RESTART_WINDOW_S; one more crash = give up
RESTART_WINDOW_S = 600.0  # crashes older than this are forgiven
SUPERVISOR_PID = "supervisor.pid"


class Stoppable(Protocol):
    def stop(self) -> None: ...


class ServiceProcess(ManagedProcess):
    """`python -m linesight.<service>` with the stack's LINESIGHT_* environment; ready = GET /readyz 200."""

    start_timeout = 180.0  # first import of torch & co. on 2 busy cores is slow

    def __init__(self, service: str, settings: Settings, *, command: Sequence[str] | None = None) -> None:
        super().__init__(settings.state_dir, settings.host)
        self.name = service
        self.settings = settings
        self._command = list(command) if command is not None else None

    @property
    def data_dir(self) -> Path:
        return self.state_dir

    @property
    def module(self) -> str:
        return SERVICE_MODULES[self.name]

    @property
    def http_url(self) -> str:
        return self.settings.http_url(self.name)

    @property
    def simulates_line(self) -> bool:
        """Capture with no camera profile runs the line simulator: a generated set, replayed one
        frame per gRPC Trigger, so a fresh `linesight up` has a station a PLC (or you) can fire."""
        return (
            self.name == "capture"
            and self._command is None
            and not os.environ.get("LINESIGHT_CAPTURE_PROFILE")
        )

    @property
    def simulator_dataset(self) -> Path:
        return Path(self.settings.state_dir).absolute() / "datasets" / "line-simulator"

    def prepare(self) -> None:
        if self.simulates_line:
            from linesight.vision.data.synth import generate_dataset

            generate_dataset(self.simulator_dataset, n_good=40, per_class=8, seed=0, size=256, reuse=True)

    def command(self) -> list[str]:
        if self._command is not None:
            return list(self._command)
        if self.simulates_line:
            return [sys.executable, "-m", self.module, "--replay", str(self.simulator_dataset), "--triggered"]
        return [sys.executable, "-m", self.module]

    def ports(self) -> dict[str, int]:
        return {
            f"LINESIGHT_GRPC_PORTS ('{{\"{self.name}\": PORT}}')": self.settings.grpc_ports[self.name],
            f"LINESIGHT_HTTP_PORTS ('{{\"{self.name}\": PORT}}')": self.settings.http_ports[self.name],
        }

    def env(self) -> dict[str, str]:
        """The stack's settings, plus absolute per-service work dirs inside the state dir.

        A child runs with the state dir as its working directory, so a service default relative
        to the current directory (inference's `.linesight/inference`) would land in
        `<state_dir>/.linesight/...`; the stack names the place instead, unless the user did.
        """
        env = child_env(self.settings)
        env.update(nats_user_env(self.state_dir, self.name))
        for var, sub in SERVICE_WORK_DIRS.get(self.name, {}).items():
            # Children run in the state dir: a path the user gave relative to where they ran
            # `linesight up` is resolved here, before it would be resolved a second time there.
            env[var] = str(Path(env[var]).absolute()) if env.get(var) else str(self.state_dir / sub)
        return env

    def is_healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/readyz", timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False


def check_service_modules(services: Sequence[str]) -> None:
    """Fail before starting anything when a service is unknown or its module is not installed."""
    unknown = [s for s in services if s not in SERVICE_MODULES]
    if unknown:
        raise EmbeddedError(f"unknown service(s): {', '.join(unknown)}; known: {', '.join(SERVICE_MODULES)}")
    missing = []
    for svc in services:
        mod = SERVICE_MODULES[svc]
        try:
            spec = importlib.util.find_spec(f"{mod}.__main__")
        except ModuleNotFoundError:
            spec = None
        if spec is None:
            missing.append(f"{svc} ({mod}.__main__ not found)")
    if missing:
        raise EmbeddedError(
            "cannot start service(s): "
            + "; ".join(missing)
            + ". Install the package (pip install -e .) or leave them out with --services."
        )


@dataclass
class _Watch:
    """Restart bookkeeping for one service."""

    crashes: list[float] = field(default_factory=list)
    restart_at: float | None = None
    died_at: float | None = None  # servers: when the death was noticed (for the recovery time)
    restarting: threading.Thread | None = None  # servers: the restart in progress


@dataclass(frozen=True)
class Recovery:
    """One supervised server restart: how long the server was gone, and what was done."""

    server: str
    down_s: float
    exit_code: int | None
    stale_pid_removed: bool


class Stack:
    """Servers + services for one state dir. `start()`/`stop()` or use as a context manager.

    `service_commands` replaces the command of a service (tests use a dummy child); `on_event`
    receives one-line progress messages (default: print to stderr).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        triton: bool = False,
        durable: bool = True,
        service_commands: dict[str, Sequence[str]] | None = None,
        on_event: Callable[[str], None] | None = None,
        restart_backoff: Backoff = RESTART_BACKOFF,
        server_restart_backoff: Backoff = SERVER_RESTART_BACKOFF,
        max_restarts: int = MAX_RESTARTS,
    ) -> None:
        settings = with_installation_credentials(settings)  # generated S3 keys, not fixed defaults
        self.settings = settings
        self.triton = triton
        self.state_dir = Path(settings.state_dir).absolute()
        self.nats = NatsServer.from_settings(settings)
        self.postgres = PostgresServer.from_settings(settings)
        self.postgres.durable = durable
        self.s3 = SeaweedS3.from_settings(settings)
        self.triton_server: Stoppable | None = None
        self.service_commands = dict(service_commands or {})
        self.services: dict[str, ServiceProcess] = {}
        self.restart_backoff = restart_backoff
        self.server_restart_backoff = server_restart_backoff
        self.max_restarts = max_restarts
        self.recoveries: list[Recovery] = []  # supervised server restarts, oldest first
        self._server_watch: dict[str, _Watch] = {}
        self.on_event = on_event or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.failed: str | None = None  # set when a service crashed more often than we restart it
        self.failed_event = threading.Event()
        self.timings: dict[str, float] = {}
        self._watch: dict[str, _Watch] = {}
        self._stop_watch = threading.Event()
        self._watcher: threading.Thread | None = None
        self._lock = threading.RLock()
        self._started: list[ManagedProcess] = []
        self._owns_supervisor_pid = False

    # --- start ------------------------------------------------------------------------------
    @property
    def supervisor_pid_path(self) -> Path:
        return self.state_dir / "run" / SUPERVISOR_PID

    def _claim_state_dir(self) -> None:
        path = self.supervisor_pid_path
        proc = pidfile_process(path)
        if proc is not None and proc.pid != os.getpid():
            raise AlreadyRunningError(
                f"a LineSight stack is already running from {self.state_dir} (supervisor pid {proc.pid}). "
                f"Stop it with `linesight down --state-dir {self.state_dir}` or press Ctrl-C in its terminal."
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        me = psutil.Process()
        path.write_text(json.dumps({"pid": me.pid, "create_time": me.create_time(), "name": "supervisor"}))
        self._owns_supervisor_pid = True

    def preflight(self, services: Sequence[str]) -> None:
        """Every check that can fail before anything starts: modules, pid files, all ports."""
        for svc in services:
            if svc not in self.service_commands:
                check_service_modules([svc])
        procs: list[ManagedProcess] = [self.nats, self.postgres, self.s3]
        procs += [self._service(svc) for svc in services]
        for proc in procs:
            proc.check_pidfile()
        busy: list[str] = []
        seen: dict[int, str] = {}
        for proc in procs:
            for var, port in proc.ports().items():
                if port in seen:
                    raise PortInUseError(
                        f"port {port} is configured twice: {seen[port]} and {var}; give each a distinct port"
                    )
                seen[port] = var
                if not port_is_free(proc.host, port):
                    busy.append(f"{proc.host}:{port} for {proc.name} (set {var} to change it)")
        if busy:
            raise PortInUseError(
                "port(s) already in use:\n  " + "\n  ".join(busy) + "\nStop the program using them or "
                "choose free ports; nothing was started."
            )

    def _service(self, svc: str) -> ServiceProcess:
        if svc not in self.services:
            self.services[svc] = ServiceProcess(svc, self.settings, command=self.service_commands.get(svc))
        return self.services[svc]

    def start(self, services: Sequence[str] | None = None, *, timeout: float | None = None) -> None:
        """Start servers, then `services` (default: all), wait for readiness, begin supervising.

        On any failure everything already started is stopped before the error propagates.
        """
        names = list(SERVICE_MODULES) if services is None else list(services)
        names = [s for s in SERVICE_MODULES if s in names] + [s for s in names if s not in SERVICE_MODULES]
        self._claim_state_dir()
        try:
            self.preflight(names)
            for server in (self.nats, self.postgres, self.s3):
                self.on_event(f"starting {server.name} ...")
                server.start(timeout)
                self._started.append(server)
                self.timings[server.name] = server.started_in_s
                self.on_event(f"{server.name} ready in {server.started_in_s:.1f}s")
            self._provision()
            if self.triton:
                self._start_triton(timeout)
            launched = []
            for svc in names:
                proc = self._service(svc)
                self.on_event(f"starting service {svc} ...")
                proc.launch()
                self._started.append(proc)
                launched.append(proc)
            for proc in launched:
                proc.wait_ready(timeout)
                self.timings[proc.name] = proc.started_in_s
                self.on_event(f"{proc.name} ready in {proc.started_in_s:.1f}s at {proc.http_url}")
        except BaseException:
            self.stop()
            raise
        self._watch = {svc: _Watch() for svc in names}
        self._server_watch = {server.name: _Watch() for server in self.servers()}
        self._stop_watch.clear()
        self._watcher = threading.Thread(target=self._supervise, name="linesight-supervisor", daemon=True)
        self._watcher.start()

    def _provision(self) -> None:
        """Create or update the JetStream streams as the provisioner user (services may not)."""
        settings = settings_as(self.settings, PROVISIONER_USER)
        outcome: list[str] = []
        failure: list[BaseException] = []

        def run() -> None:  # its own thread: start() may be called from a running event loop
            try:
                outcome.extend(asyncio.run(provision_streams(settings, wait_s=10.0)))
            except BaseException as exc:
                failure.append(exc)

        worker = threading.Thread(target=run, name="linesight-provision", daemon=True)
        worker.start()
        worker.join()
        if failure:
            raise EmbeddedError(f"could not provision the JetStream streams: {failure[0]}") from failure[0]
        self.on_event(f"streams provisioned ({', '.join(outcome) or 'no change'})")

    def _start_triton(self, timeout: float | None) -> None:
        try:
            mod = importlib.import_module("linesight.common.embedded.triton")
        except ImportError as exc:
            raise EmbeddedError(f"--triton: linesight.common.embedded.triton is unavailable: {exc}") from exc
        start: Callable[..., Any] | None = getattr(mod, "start_triton", None)
        if start is None:
            raise EmbeddedError("--triton: linesight.common.embedded.triton has no start_triton(settings)")
        self.on_event("starting triton ...")
        t0 = time.monotonic()
        self.triton_server = start(self.settings, timeout=timeout)
        self.timings["triton"] = time.monotonic() - t0
        self.on_event(f"triton ready in {self.timings['triton']:.1f}s")

    # --- supervision ------------------------------------------------------------------------
    def servers(self) -> list[ManagedProcess]:
        """The servers this stack started (NATS, PostgreSQL, S3, and Triton when it runs as ours)."""
        out = [p for p in self._started if not isinstance(p, ServiceProcess)]
        if isinstance(self.triton_server, ManagedProcess):
            out.append(self.triton_server)
        return out

    def _supervise(self) -> None:
        """Restart dead servers and crashed services with growing delays; give up (flag failure)
        when one keeps dying."""
        while not self._stop_watch.wait(SUPERVISE_INTERVAL_S):
            with self._lock:
                for server in self.servers():
                    if self._stop_watch.is_set():
                        return
                    self._check_server(server, self._server_watch.setdefault(server.name, _Watch()))
                for svc, watch in self._watch.items():
                    if self._stop_watch.is_set():
                        return
                    self._check_service(svc, watch)

    def _check_server(self, server: ManagedProcess, watch: _Watch) -> None:
        """A dead server is relaunched in its own thread (waiting for health must not hold up the
        others, nor Ctrl-C); its services reconnect on their own."""
        if watch.restarting is not None:
            if watch.restarting.is_alive():
                return
            watch.restarting = None
        now = time.monotonic()
        if watch.restart_at is None:
            code = server.exit_code()
            if code is None:
                return
            watch.died_at = watch.died_at or now
            n = self._count_crash(watch, now)
            if n > self.max_restarts:
                self._give_up(
                    server.name, server.log_path, f"server {server.name} exited with code {code}", n
                )
                return
            delay = self.server_restart_backoff.delay(n)
            self.on_event(
                f"server {server.name} exited with code {code}; restarting in {delay:g}s "
                f"(restart {n} of {self.max_restarts})"
            )
            watch.restart_at = now + delay
            return
        if now >= watch.restart_at:
            watch.restart_at = None
            code = server.exit_code()
            try:
                server.stop(timeout=1)  # reap its process group (orphaned helpers hold ports / memory)
                stale = isinstance(server, PostgresServer) and remove_stale_postmaster_pid(server.pgdata)
                # Launched from this long-lived thread: the parent-death signal follows the thread
                # that forked, so a short-lived helper thread would take the server down with it.
                server.launch()
            except EmbeddedError as exc:
                self._restart_failed(server, watch, exc)
                return
            watch.restarting = threading.Thread(
                target=self._await_server,
                args=(server, watch, code, stale),
                name=f"restart-{server.name}",
                daemon=True,
            )
            watch.restarting.start()

    def _await_server(self, server: ManagedProcess, watch: _Watch, code: int | None, stale: bool) -> None:
        """Wait for a relaunched server's health (off the supervisor thread) and record the recovery."""
        try:
            server.wait_ready(SERVER_READY_TIMEOUT_S)
        except EmbeddedError as exc:
            self._restart_failed(server, watch, exc)
            return
        down_s = time.monotonic() - (watch.died_at or time.monotonic())
        watch.died_at = None
        if server is self.nats:
            # Streams live on disk and survive a restart; provisioning again costs little and
            # covers a store that was lost with the server.
            try:
                self._provision()
            except EmbeddedError as exc:
                self.on_event(f"server nats restarted but {exc}")
        self.recoveries.append(Recovery(server.name, down_s, code, stale))
        self.on_event(
            f"server {server.name} restarted (pid {server.pid}), back {down_s:.1f}s after its death"
            + ("; removed a stale postmaster.pid" if stale else "")
        )

    def _restart_failed(self, server: ManagedProcess, watch: _Watch, exc: Exception) -> None:
        n = self._count_crash(watch, time.monotonic())
        if n > self.max_restarts:
            self._give_up(server.name, server.log_path, f"server {server.name} failed to restart: {exc}", n)
            return
        delay = self.server_restart_backoff.delay(n)
        self.on_event(f"server {server.name} failed to restart ({exc}); next try in {delay:g}s")
        watch.restart_at = time.monotonic() + delay

    def _count_crash(self, watch: _Watch, now: float) -> int:
        watch.crashes = [t for t in watch.crashes if now - t < RESTART_WINDOW_S] + [now]
        return len(watch.crashes)

    def _give_up(self, name: str, log_path: Path, why: str, n: int) -> None:
        self.failed = (
            f"{why}; {n} failures within {RESTART_WINDOW_S:.0f}s, giving up. "
            f"Last lines of {log_path}:\n{log_tail(log_path)}"
        )
        self.on_event(self.failed)
        self.failed_event.set()
        self._stop_watch.set()

    def _check_service(self, svc: str, watch: _Watch) -> None:
        proc = self.services[svc]
        now = time.monotonic()
        if watch.restart_at is None:
            code = proc.exit_code()
            if code is None:
                return
            proc.stop(timeout=1)  # reap helpers it may have left in its group, drop the pid file
            self._crashed(svc, watch, f"exited with code {code}")
            return
        if now >= watch.restart_at:
            watch.restart_at = None
            try:
                # launch only: waiting for readiness here would make Ctrl-C wait for it too
                proc.launch()
                self.on_event(f"service {svc} restarted (pid {proc.pid})")
            except EmbeddedError as exc:
                self._crashed(svc, watch, f"failed to restart: {exc}")

    def _crashed(self, svc: str, watch: _Watch, why: str) -> None:
        now = time.monotonic()
        proc = self.services[svc]
        n = self._count_crash(watch, now)
        if n > self.max_restarts:
            self._give_up(svc, proc.log_path, f"service {svc} {why}", n)
            return
        delay = self.restart_backoff.delay(n)
        self.on_event(f"service {svc} {why}; restarting in {delay:g}s (restart {n} of {self.max_restarts})")
        watch.restart_at = now + delay

    def wait(self, stop: threading.Event | None = None) -> bool:
        """Block until `stop` is set (True) or supervision gave up on a service (False)."""
        stop = stop or threading.Event()
        while not stop.is_set():
            if self.failed_event.wait(0.2):
                return False
        return True

    # --- stop -------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop services, then Triton, S3, PostgreSQL, NATS (reverse start order). Idempotent."""
        self._stop_watch.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(timeout=30)
        for watch in self._server_watch.values():
            if watch.restarting is not None and watch.restarting is not threading.current_thread():
                watch.restarting.join(timeout=SERVER_READY_TIMEOUT_S)
        with self._lock:
            for proc in reversed([p for p in self._started if isinstance(p, ServiceProcess)]):
                self._stop_one(proc)
            if self.triton_server is not None:
                with contextlib.suppress(Exception):
                    self.triton_server.stop()
                self.triton_server = None
            for server in reversed([p for p in self._started if not isinstance(p, ServiceProcess)]):
                self._stop_one(server)
            self._started.clear()
            if self._owns_supervisor_pid:
                self.supervisor_pid_path.unlink(missing_ok=True)
                self._owns_supervisor_pid = False

    def _stop_one(self, proc: ManagedProcess) -> None:
        try:
            proc.stop()
        except Exception as exc:  # keep stopping the others
            self.on_event(f"error stopping {proc.name}: {exc}")

    def __enter__(self) -> Stack:
        if not self._started:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- reporting --------------------------------------------------------------------------
    def urls(self) -> dict[str, str]:
        """What to open or connect to, in print order."""
        s = self.settings
        out: dict[str, str] = {}
        if "labeling" in self.services:
            out["labeling UI"] = f"{s.http_url('labeling')}/"
        for svc in self.services:
            out[f"{svc} health"] = f"{s.http_url(svc)}/healthz  (gRPC {s.grpc_target(svc)})"
        if "mes" in self.services and s.mes_opcua:
            out["OPC UA"] = f"opc.tcp://{s.host}:{s.mes_opcua_port}  (MES, Machine Vision)"
        out["NATS"] = f"{self.nats.url}  (monitor {self.nats.monitor_url})"
        out["S3"] = f"http://{self.s3.endpoint}  (keys in {self.state_dir / CREDENTIALS_FILE})"
        out["PostgreSQL"] = self.postgres.dsn
        if self.triton_server is not None:
            out["Triton"] = f"{s.host}:{s.triton_grpc_port} (gRPC), http://{s.host}:{s.triton_http_port}"
        out["state"] = str(self.state_dir)
        out["logs"] = str(self.state_dir / "logs")
        return out


@dataclass(frozen=True)
class StopReport:
    """What `stop_state_dir` found: a supervisor (which stops its whole stack) and/or leftovers."""

    supervisor_pid: int | None = None
    leftovers: tuple[str, ...] = ()  # "<name> pid <n>" of processes stopped one by one

    @property
    def stopped_anything(self) -> bool:
        return self.supervisor_pid is not None or bool(self.leftovers)


_RECORDED = [*reversed(SERVICE_MODULES), "triton", "s3", "postgres", "nats"]  # stop order


def stop_state_dir(
    state_dir: Path, *, timeout: float = 60.0, on_event: Callable[[str], None] = print
) -> StopReport:
    """Stop whatever a stack left in `state_dir`: ask the supervisor first, then any recorded process.

    The supervisor stops its servers and services itself; processes still recorded after that
    (a supervisor killed with SIGKILL leaves them) are stopped one by one (`linesight down`).
    """
    run = Path(state_dir).absolute() / "run"
    sup = pidfile_process(run / SUPERVISOR_PID)
    if sup is not None:
        on_event(f"stopping supervisor pid {sup.pid} ...")
        terminate_tree(sup, 15, timeout)
    (run / SUPERVISOR_PID).unlink(missing_ok=True)
    leftovers = []
    for name in _RECORDED:
        path = run / f"{name}.pid"
        proc = pidfile_process(path)
        if proc is not None:
            on_event(f"stopping {name} pid {proc.pid} ...")
            sig = 2 if name == "postgres" else 15
            terminate_tree(proc, sig, 15.0)
            leftovers.append(f"{name} pid {proc.pid}")
        path.unlink(missing_ok=True)
    return StopReport(sup.pid if sup is not None else None, tuple(leftovers))


def running_processes(state_dir: Path) -> list[str]:
    """ "<name> pid <n>" for every live process a stack recorded in `state_dir` (supervisor first)."""
    run = Path(state_dir).absolute() / "run"
    out = []
    for name in ["supervisor", *_RECORDED]:
        proc = pidfile_process(run / (SUPERVISOR_PID if name == "supervisor" else f"{name}.pid"))
        if proc is not None:
            out.append(f"{name} pid {proc.pid}")
    return out


# What a stack writes into its state dir; a folder with none of these is not one (reset refuses it).
STATE_ENTRIES = frozenset(
    {"run", "logs", "nats", "postgres", "s3", "triton", "datasets", "inference", "capture"}
)
GATE_FILE = "release_gate.yaml"  # the training service's release gate thresholds
CONFIG_FILES = frozenset({GATE_FILE})  # written by people, kept by a reset


def clear_state_dir(state_dir: Path, *, keep: Sequence[str] = ()) -> list[Path]:
    """Delete a stopped stack's state (databases, bus, objects, models, logs), keeping the
    configuration files and the entries named in `keep`; returns what was deleted.

    Raises AlreadyRunningError while anything recorded there still runs (its data would vanish
    under it), and EmbeddedError for a folder that is not a state dir.
    """
    root = Path(state_dir).absolute()
    if not root.exists():
        return []
    running = running_processes(root)
    if running:
        raise AlreadyRunningError(
            f"a LineSight stack is running from {root} ({', '.join(running)}); "
            f"stop it first with `linesight down --state-dir {root}` (or Ctrl-C in its terminal)"
        )
    entries = sorted(root.iterdir())
    if entries and not any(e.name in STATE_ENTRIES | CONFIG_FILES for e in entries):
        raise EmbeddedError(f"{root} does not look like a LineSight state dir; nothing deleted")
    removed = []
    for entry in entries:
        if entry.name in CONFIG_FILES or entry.name in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        removed.append(entry)
    return removed


__all__ = [
    "SERVICE_MODULES",
    "ServiceProcess",
    "Stack",
    "StartFailedError",
    "StopReport",
    "check_service_modules",
    "clear_state_dir",
    "running_processes",
    "stop_state_dir",
]
