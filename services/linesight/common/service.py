"""The process shell every service runs in: `asyncio.run(run_service("capture", setup))`.

`run_service` connects what every service needs (bus, object store), calls the service's
`setup(ctx)` to register consumers, routes, gRPC servicers and readiness checks, serves HTTP
(`/healthz`, `/readyz`, `/metrics`, service routes) and gRPC, and on SIGTERM/SIGINT shuts down in
order: readiness goes 503, consumers stop (a message in flight finishes or is nak'ed), gRPC and
HTTP stop with a grace period, shutdown hooks run, then the database and the bus are closed.

`setup` returns the service's application object (or None); tests run a service in-process with
`async with service_running(name, setup, settings=...) as svc:` and reach it as `svc.app`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc.aio
import uvicorn
from fastapi import FastAPI
from google.protobuf.message import Message

from linesight.common import telemetry
from linesight.common.bus import Bus, BusUnavailable, Delivery
from linesight.common.db import Database, DatabaseUnavailable, MigrationError, open_database
from linesight.common.grpcutil import start_grpc_server
from linesight.common.health import Health, ReadinessCheck, health_router
from linesight.common.identity.config import AuthSettings
from linesight.common.identity.fastapi import Authenticator, SessionCheck, unprotected_routes
from linesight.common.identity.fastapi import install as install_auth
from linesight.common.identity.grpc import AuthInterceptor
from linesight.common.identity.installation import installation_verifier
from linesight.common.identity.policy import Policy
from linesight.common.limits import MAX_BODY_BYTES, BodyLimit
from linesight.common.log import configure_logging
from linesight.common.settings import Settings, check_environment, get_settings
from linesight.common.storage import ObjectStore, S3Config, StorageUnavailable

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
# Open to anyone who can reach the port: probes, Prometheus, and the API's own description.
OPEN_PATHS = ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")
T = TypeVar("T")
Setup = Callable[["ServiceContext"], Awaitable[Any]]


class StartupError(RuntimeError):
    """The service could not start; the message names the dependency and the fix."""


@dataclass
class ServiceContext:
    """Everything `setup` needs; `stop` is set when the service is shutting down."""

    name: str
    settings: Settings
    bus: Bus
    store: ObjectStore
    app: FastAPI
    health: Health
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    db: Database | None = None
    grpc_server: grpc.aio.Server | None = None
    auth: Authenticator | None = None
    _grpc_registrations: list[Callable[[grpc.aio.Server], None]] = field(default_factory=list)
    _grpc_interceptors: list[grpc.aio.ServerInterceptor] = field(default_factory=list)
    _open_paths: tuple[str, ...] = OPEN_PATHS
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    _shutdown_hooks: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def add_readiness_check(self, name: str, check: ReadinessCheck) -> None:
        """`check()` raises or returns False while the service cannot do its job."""
        self.health.add(name, check)

    def add_grpc(self, register: Callable[[grpc.aio.Server], None]) -> None:
        """e.g. `ctx.add_grpc(lambda s: capture_pb2_grpc.add_CaptureServicer_to_server(svc, s))`."""
        self._grpc_registrations.append(register)

    def on_shutdown(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Runs after consumers and servers stopped, before the bus closes (may still publish)."""
        self._shutdown_hooks.append(hook)

    def add_task(self, coro: Coroutine[Any, Any, Any], name: str = "") -> asyncio.Task[Any]:
        """A background loop; it should exit when `ctx.stop` is set, else it is cancelled."""
        task = asyncio.create_task(coro, name=name or None)
        self._tasks.append(task)
        return task

    def consume(
        self,
        subject: str,
        durable: str,
        message_type: type[M],
        handler: Callable[[M, Delivery], Awaitable[None]],
        **kwargs: Any,
    ) -> asyncio.Task[None]:
        """A durable consumer that stops with the service (see Bus.consume for kwargs)."""
        task = self.bus.consume_in_background(
            subject, durable, message_type, handler, stop=self.stop, **kwargs
        )
        self._tasks.append(task)
        return task

    def use_auth(
        self, policy: Policy, *, session_check: SessionCheck | None = None, open_paths: Iterable[str] = ()
    ) -> Authenticator:
        """Deny by default: every HTTP route and gRPC method needs a caller the policy admits.

        HTTP routes declare their operation with `identity.fastapi.require(...)`; a route without
        one (other than health, readiness, metrics and the API docs) stops the service at start.
        gRPC methods are named `pkg.Service/Method` in the policy; an undeclared one is refused.
        `open_paths` names mounts that cannot carry a rule (vendored static files of the UI).
        """
        settings = AuthSettings()
        verifier = installation_verifier(settings, self.settings.state_dir)
        self.auth = Authenticator(verifier, policy, settings, session_check)
        self._open_paths = (*OPEN_PATHS, *open_paths)
        install_auth(self.app, self.auth)
        self._grpc_interceptors.append(AuthInterceptor(verifier, policy))
        return self.auth

    async def use_database(
        self, schema: str | None = None, migrations_dir: Path | None = None, *, max_size: int | None = None
    ) -> Database:
        """Apply migrations (if a dir is given), open the pool, add a `db` readiness check.

        `max_size` caps the pool below LINESIGHT_PG_POOL_MAX for services that write rarely.
        """
        db = await open_database(self.settings, schema or self.name, migrations_dir, max_size=max_size)
        self.db = db
        self.health.add("db", db.ping)
        return db


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: run_service owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int, what: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(
            f"cannot bind {what} to {host}:{port}: {exc.strerror or exc} "
            "(another instance running? change LINESIGHT_HTTP_PORTS / LINESIGHT_GRPC_PORTS)"
        ) from exc
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def _step(what: str, coro: Awaitable[Any]) -> None:
    """One shutdown step; a failure is logged and the next step still runs."""
    try:
        await coro
    except Exception as exc:
        log.warning("shutdown: %s failed: %s", what, exc)


async def run_service(
    name: str,
    setup: Setup,
    *,
    settings: Settings | None = None,
    stop: asyncio.Event | None = None,
    started: Callable[[ServiceContext, Any], None] | None = None,
    configure_logs: bool = True,
    install_signal_handlers: bool = True,
    exit_on_startup_error: bool = True,
) -> None:
    """Run service `name` until SIGTERM/SIGINT (or `stop` is set); see the module docstring.

    A dependency that cannot be reached at start (NATS, S3, PostgreSQL, a port in use) ends the
    process with exit code 1 and one clear log line, after undoing what had started; with
    `exit_on_startup_error=False` it raises StartupError instead (tests).
    """
    if settings is None:
        try:
            check_environment()  # a typo in LINESIGHT_* must not fall back silently to a default
            settings = get_settings()
        except ValueError as exc:  # UnknownSettingError, pydantic.ValidationError
            if not exit_on_startup_error:
                raise
            logging.basicConfig()
            log.error("%s cannot start: invalid settings: %s", name, exc)
            raise SystemExit(1) from exc
    if name not in settings.http_ports or name not in settings.grpc_ports:
        raise ValueError(
            f"unknown service {name!r}: no port in LINESIGHT_HTTP_PORTS / LINESIGHT_GRPC_PORTS "
            f"(known: {', '.join(sorted(settings.http_ports))})"
        )
    if configure_logs:
        configure_logging(name, settings.log_level, settings.log_json)
    telemetry.setup_telemetry(name)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if install_signal_handlers and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)

    bus: Bus | None = None
    ctx: ServiceContext | None = None
    http: _Uvicorn | None = None
    http_task: asyncio.Task[None] | None = None
    try:
        try:
            bus = await Bus.connect_as(settings, name)
            await bus.ensure_streams()
            store = ObjectStore(S3Config.from_settings(settings))
            await asyncio.to_thread(store.ensure_buckets)
            health = Health(name)
            app = FastAPI(title=f"LineSight {name}")
            app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
            app.include_router(health_router(health))
            ctx = ServiceContext(
                name=name, settings=settings, bus=bus, store=store, app=app, health=health, stop=stop
            )
            health.add("bus", _bus_check(bus))
            health.add("storage", store.aping)
            provided = await setup(ctx)
            if ctx.auth is not None:
                open_routes = unprotected_routes(app, ctx.auth.policy, allow=ctx._open_paths)
                if open_routes:
                    raise StartupError(
                        f"{name}: routes without an authorization rule: {', '.join(open_routes)} "
                        "(declare them with identity.fastapi.require and in the service's policy)"
                    )
            http_sock = _bind(settings.listen_host, settings.http_ports[name], f"{name} HTTP")
            try:
                ctx.grpc_server = await start_grpc_server(
                    settings.grpc_ports[name],
                    _register_all(ctx._grpc_registrations),
                    host=settings.listen_host,
                    interceptors=ctx._grpc_interceptors,
                )
            except OSError as exc:
                http_sock.close()
                raise StartupError(str(exc)) from exc
            http = _Uvicorn(
                uvicorn.Config(
                    app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=5
                )
            )
            http_task = asyncio.create_task(http.serve(sockets=[http_sock]), name=f"{name}-http")
            while not http.started:
                if http_task.done():
                    http_task.result()
                    raise StartupError(f"{name} HTTP server exited during start")
                await asyncio.sleep(0.02)
        except (BusUnavailable, StorageUnavailable, DatabaseUnavailable, MigrationError, StartupError) as exc:
            log.error("%s cannot start: %s", name, exc)
            await _shutdown(name, ctx, bus, http, http_task)
            if exit_on_startup_error:
                raise SystemExit(1) from exc
            if isinstance(exc, StartupError):
                raise
            raise StartupError(f"{name} cannot start: {exc}") from exc
        except BaseException:
            await _shutdown(name, ctx, bus, http, http_task)
            raise

        log.info(
            "%s ready: http://%s:%d  grpc %s:%d",
            name,
            settings.listen_host,
            settings.http_ports[name],
            settings.listen_host,
            settings.grpc_ports[name],
        )
        if started is not None:
            started(ctx, provided)
        stop_wait = asyncio.create_task(stop.wait())
        await asyncio.wait({stop_wait, http_task}, return_when=asyncio.FIRST_COMPLETED)
        if not stop.is_set():
            log.error("%s HTTP server stopped unexpectedly; shutting down", name)
        stop_wait.cancel()
        await _shutdown(name, ctx, bus, http, http_task)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def _bus_check(bus: Bus) -> ReadinessCheck:
    async def check() -> bool:
        if not bus.is_connected:
            raise BusUnavailable(f"not connected to NATS at {bus.url} (reconnecting)")
        return True

    return check


def _register_all(
    registrations: list[Callable[[grpc.aio.Server], None]],
) -> Callable[[grpc.aio.Server], None]:
    def register(server: grpc.aio.Server) -> None:
        for reg in registrations:
            reg(server)

    return register


async def _shutdown(
    name: str,
    ctx: ServiceContext | None,
    bus: Bus | None,
    http: _Uvicorn | None,
    http_task: asyncio.Task[None] | None,
) -> None:
    log.info("%s shutting down", name)
    if ctx is not None:
        ctx.health.shutting_down = True
        ctx.stop.set()
        if ctx._tasks:
            _, pending = await asyncio.wait(ctx._tasks, timeout=10)
            for task in pending:
                task.cancel()
            await asyncio.gather(*ctx._tasks, return_exceptions=True)
        if ctx.grpc_server is not None:
            await _step("gRPC stop", ctx.grpc_server.stop(grace=5))
    if http is not None and http_task is not None:
        http.should_exit = True
        await _step("HTTP stop", asyncio.wait_for(http_task, 10))
    if ctx is not None:
        for hook in reversed(ctx._shutdown_hooks):
            await _step(f"hook {getattr(hook, '__qualname__', hook)}", hook())
        if ctx.db is not None:
            await _step("database close", ctx.db.close())
    if bus is not None:
        await _step("bus close", bus.close())
    telemetry.shutdown_telemetry()
    log.info("%s stopped", name)


@dataclass(frozen=True)
class RunningService(Generic[T]):
    """A service started by `service_running`: its context and what its `setup` returned."""

    ctx: ServiceContext
    app: T


@asynccontextmanager
async def service_running(
    name: str,
    setup: Callable[[ServiceContext], Awaitable[T]],
    *,
    settings: Settings | None = None,
    start_timeout_s: float = 30.0,
) -> AsyncIterator[RunningService[T]]:
    """Run a service in this event loop for the block's duration (tests, the demo supervisor)."""
    stop = asyncio.Event()
    ready: asyncio.Future[RunningService[T]] = asyncio.get_running_loop().create_future()

    def started(ctx: ServiceContext, provided: Any) -> None:
        ready.set_result(RunningService(ctx, provided))

    task = asyncio.create_task(
        run_service(
            name,
            setup,
            settings=settings,
            stop=stop,
            started=started,
            configure_logs=False,
            install_signal_handlers=False,
            exit_on_startup_error=False,
        ),
        name=f"service-{name}",
    )
    waiters: set[asyncio.Future[Any]] = {task, ready}
    done, _ = await asyncio.wait(waiters, timeout=start_timeout_s, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()  # raises the startup error
        raise StartupError(f"{name} exited during start")
    if ready not in done:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        raise StartupError(f"{name} did not become ready within {start_timeout_s:g}s")
    try:
        yield ready.result()
    finally:
        stop.set()
        await task
