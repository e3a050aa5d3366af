"""MES benchmark: dispositions/s through the outbox and InspectionResult -> delivery delay, per adapter.

Starts its own NATS and PostgreSQL (and Mosquitto for MQTT) in a temp dir, runs the MES service
in this process (consumer, outbox, dispatcher), and publishes InspectionResults on the bus as
inference would. Per adapter, side by side:

- throughput: `--burst` results over 8 stations published at once; dispositions/s from the first
  publish to the last arrival at the receiver;
- delay at line rate: 8 stations x 120 parts/min (16 results/s) for `--seconds`; p50/p99/max from
  publish to arrival.

Receivers: a local webhook (uvicorn, its own thread; HMAC-signed posts), an MQTT subscriber
(aiomqtt, QoS 1) on Mosquitto, and an OPC UA client subscribed to every station's ResultReady
events. Prints figures; never asserts on time (shared 2-core machines are noisy). Target from the
design: >= 500/s to the webhook, p99 < 50 ms at 8 x 120 ppm.

    python -m tests.bench.bench_mes [--quick] [--burst 2000] [--seconds 20] [--adapters webhook,mqtt,opcua]
    python -m tests.bench.bench_mes --profile webhook   # cProfile of the burst, top functions
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import getpass
import json
import multiprocessing
import os
import pstats
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from typing import Any

import uvicorn
from fastapi import FastAPI, Request

from linesight.common import subjects
from linesight.common.bus import Bus
from linesight.common.embedded import NatsServer, PostgresServer, SeaweedS3, free_port
from linesight.common.embedded.postgres import SYSTEM_USER, ensure_system_user, ensure_traversable
from linesight.common.events import new_meta
from linesight.common.pb import common_pb2, events_pb2
from linesight.common.service import service_running
from linesight.common.settings import SERVICE_PORTS, Settings
from linesight.mes.__main__ import loop_factory
from linesight.mes.app.adapters import AnyEndpoint, MqttEndpoint, OpcUaEndpoint, WebhookEndpoint
from linesight.mes.app.dispatch import DispatchConfig
from linesight.mes.service import MesOptions, make_setup
from tests.conftest import S3_ACCESS_KEY, S3_SECRET_KEY, seaweed_free_ports

STATIONS = 8
PPM = 120
LINE = "line1"
MOSQUITTO = Path("/usr/sbin/mosquitto")


@dataclass
class Arrivals:
    """Wall-clock arrival time per frame id (first arrival; repeats are counted)."""

    at: dict[str, float] = field(default_factory=dict)
    repeats: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    changed: asyncio.Event | None = None

    def add(self, frame_id: str, at: float | None = None) -> None:
        now = time.time() if at is None else at
        with self.lock:
            if frame_id in self.at:
                self.repeats += 1
            else:
                self.at[frame_id] = now

    def count(self, frames: set[str]) -> int:
        with self.lock:
            return len(frames & self.at.keys())


@dataclass
class Figures:
    adapter: str
    burst: int = 0
    burst_s: float = 0.0
    paced: int = 0
    delays_ms: list[float] = field(default_factory=list)
    repeats: int = 0
    missing: int = 0
    cpu_s: float = 0.0  # this process's CPU during the burst (MES service; OPC UA/MQTT subscribers too)

    @property
    def rate(self) -> float:
        return self.burst / self.burst_s if self.burst_s else 0.0

    def pct(self, q: float) -> float:
        if not self.delays_ms:
            return float("nan")
        s = sorted(self.delays_ms)
        return s[min(len(s) - 1, int(q * len(s)))]


# ---- receivers --------------------------------------------------------------------------------


def _serve_webhook(port: int, arrivals: multiprocessing.Queue[tuple[str, float]]) -> None:
    """The MES side of the webhook, in a process of its own (as the plant's MES would be)."""
    app = FastAPI()

    @app.post("/dispositions")
    async def receive(request: Request) -> dict[str, bool]:
        body = json.loads(await request.body())
        arrivals.put((str(body["frame_id"]), time.time()))
        return {"accepted": True}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off", access_log=False)


@contextlib.asynccontextmanager
async def webhook_receiver(arrivals: Arrivals) -> AsyncIterator[str]:
    port = free_port()
    queue: multiprocessing.Queue[tuple[str, float]] = multiprocessing.get_context("spawn").Queue()
    proc = multiprocessing.get_context("spawn").Process(
        target=_serve_webhook, args=(port, queue), daemon=True
    )
    proc.start()
    done = threading.Event()

    def drain() -> None:
        while not done.is_set():
            with contextlib.suppress(Empty):
                frame_id, at = queue.get(timeout=0.2)
                arrivals.add(frame_id, at)

    drainer = threading.Thread(target=drain, name="bench-webhook-drain", daemon=True)
    drainer.start()
    for _ in range(400):
        with socket.socket() as sock, contextlib.suppress(OSError):
            sock.connect(("127.0.0.1", port))
            break
        await asyncio.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/dispositions"
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.join, 10)
        done.set()
        await asyncio.to_thread(drainer.join, 5)


@contextlib.contextmanager
def mosquitto(root: Path) -> Iterator[int]:
    """An anonymous Mosquitto on a free port for the run (the machine's own broker is not used)."""
    port = free_port()
    conf = root / "mosquitto.conf"
    conf.write_text(f"user {getpass.getuser()}\nlistener {port} 127.0.0.1\nallow_anonymous true\n")
    with (root / "mosquitto.log").open("ab") as log:
        proc = subprocess.Popen([str(MOSQUITTO), "-c", str(conf)], stdout=log, stderr=log)
        try:
            for _ in range(200):
                with socket.socket() as s, contextlib.suppress(OSError):
                    s.connect(("127.0.0.1", port))
                    break
                time.sleep(0.05)
            yield port
        finally:
            proc.terminate()
            proc.wait(timeout=10)


@contextlib.asynccontextmanager
async def mqtt_subscriber(port: int, plant: str, arrivals: Arrivals) -> AsyncIterator[None]:
    import aiomqtt

    async with aiomqtt.Client("127.0.0.1", port, identifier=f"bench-{uuid.uuid4().hex[:6]}") as client:
        await client.subscribe(f"linesight/{plant}/+/+/disposition", qos=1)

        async def pump() -> None:
            async for msg in client.messages:
                arrivals.add(str(json.loads(bytes(msg.payload))["frame_id"]))

        task = asyncio.create_task(pump())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@contextlib.asynccontextmanager
async def opcua_subscriber(url: str, stations: list[str], arrivals: Arrivals) -> AsyncIterator[None]:
    from asyncua import Client, ua

    from linesight.mes.api.opcua import LOCAL_NS, MACHINE_VISION_NS, RESULT_READY_EVENT_TYPE, browse_name

    class Handler:
        def event_notification(self, event: Any) -> None:
            frame = next(
                (
                    kv.Value.Value
                    for kv in (i.Value for i in event.ResultContent)
                    if kv.Key.Name == "frame_id"
                ),
                "",
            )
            arrivals.add(str(frame))

    async with Client(url, timeout=30) as client:
        await client.load_data_type_definitions()
        mv = await client.get_namespace_index(MACHINE_VISION_NS)
        local = await client.get_namespace_index(LOCAL_NS)
        sub = await client.create_subscription(0, Handler())
        event_type = client.get_node(ua.NodeId(ua.Int32(RESULT_READY_EVENT_TYPE), ua.Int16(mv)))
        for s in stations:
            node = await client.nodes.objects.get_child(f"{local}:{browse_name(s)}")
            await sub.subscribe_events(node, event_type, queuesize=10_000)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                await sub.delete()


# ---- load -------------------------------------------------------------------------------------


def result(plant: str, station: str, n: int) -> events_pb2.InspectionResult:
    frame_id = uuid.uuid4().hex
    r = events_pb2.InspectionResult(
        meta=new_meta("inference", correlation_id=frame_id),
        frame_id=frame_id,
        capture=common_pb2.CaptureMeta(
            station=common_pb2.StationRef(plant=plant, line=LINE, station=station),
            part_id=f"P-{station}-{n}",
            batch="B-bench",
        ),
        verdict=common_pb2.VERDICT_DEFECT if n % 7 == 0 else common_pb2.VERDICT_PASS,
        defect_class="scratch" if n % 7 == 0 else "",
        confidence=0.93,
        disposition=common_pb2.DISPOSITION_REJECT if n % 7 == 0 else common_pb2.DISPOSITION_PASS,
        model_version="m-bench",
    )
    r.capture.captured_at.GetCurrentTime()
    return r


async def wait_for(arrivals: Arrivals, frames: set[str], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while arrivals.count(frames) < len(frames):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def burst(bus: Bus, plant: str, arrivals: Arrivals, n: int, timeout_s: float) -> tuple[int, float, int]:
    """Publish `n` results over the stations at once; (n, seconds to the last arrival, missing)."""
    results = [result(plant, f"st{i % STATIONS}", i) for i in range(n)]
    frames = {r.frame_id for r in results}
    start = time.time()
    await asyncio.gather(
        *(
            bus.publish(
                subjects.station_subject(plant, LINE, r.capture.station.station, subjects.INSPECTION_RESULT),
                r,
            )
            for r in results
        )
    )
    complete = await wait_for(arrivals, frames, timeout_s)
    last = max((arrivals.at[f] for f in frames if f in arrivals.at), default=time.time())
    return n, (last - start), 0 if complete else len(frames) - arrivals.count(frames)


async def paced(bus: Bus, plant: str, arrivals: Arrivals, seconds: float) -> tuple[list[float], int]:
    """8 stations x 120 ppm for `seconds`; publish -> arrival delays (ms) and how many never came."""
    interval = 60.0 / PPM
    sent: dict[str, float] = {}

    async def station(i: int) -> None:
        name = f"st{i}"
        await asyncio.sleep(interval * i / STATIONS)  # stations out of phase, like a real line
        n = 0
        next_at = time.monotonic()
        end = next_at + seconds
        while next_at < end:
            r = result(plant, name, 100_000 + n)
            sent[r.frame_id] = time.time()
            await bus.publish(subjects.station_subject(plant, LINE, name, subjects.INSPECTION_RESULT), r)
            n += 1
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    await asyncio.gather(*(station(i) for i in range(STATIONS)))
    await wait_for(arrivals, set(sent), 30)
    delays = [(arrivals.at[f] - t) * 1000 for f, t in sent.items() if f in arrivals.at]
    return delays, len(sent) - len(delays)


# ---- scenarios --------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def adapter(kind: str, broker_port: int, arrivals: Arrivals) -> AsyncIterator[AnyEndpoint]:
    stations = [f"{LINE}/st{i}" for i in range(STATIONS)]
    if kind == "webhook":
        async with webhook_receiver(arrivals) as url:
            yield WebhookEndpoint(name="webhook", url=url, secret="bench-secret")
    elif kind == "mqtt":
        yield MqttEndpoint(kind="mqtt", name="mqtt", host="127.0.0.1", port=broker_port)
    elif kind == "opcua":
        yield OpcUaEndpoint(kind="opcua", name="opcua", port=free_port(), stations=stations)
    else:
        raise ValueError(f"unknown adapter {kind!r}")


async def scenario(kind: str, base: Settings, broker_port: int, args: argparse.Namespace) -> Figures:
    plant = f"bench{kind}{uuid.uuid4().hex[:4]}"
    settings = base.model_copy(update={"plant": plant})
    arrivals = Arrivals()
    figures = Figures(kind)
    async with adapter(kind, broker_port, arrivals) as endpoint:
        config = DispatchConfig(endpoint=endpoint.describe(), timeout_s=5.0, poll_interval_s=0.5)
        options = MesOptions(config=config, endpoints=[endpoint])
        async with service_running("mes", make_setup(options), settings=settings, start_timeout_s=120):
            subscribed: contextlib.AbstractAsyncContextManager[None] = contextlib.nullcontext()
            if isinstance(endpoint, MqttEndpoint):
                subscribed = mqtt_subscriber(endpoint.port, plant, arrivals)
            elif isinstance(endpoint, OpcUaEndpoint):
                subscribed = opcua_subscriber(
                    endpoint.url, [f"{LINE}/st{i}" for i in range(STATIONS)], arrivals
                )
            bus = await Bus.connect(settings.nats_url, f"bench-{kind}")
            try:
                async with subscribed:
                    await burst(bus, plant, arrivals, STATIONS * 4, 60)  # warm up: connections, JIT caches
                    profiler = cProfile.Profile(time.process_time) if args.profile == kind else None
                    if profiler:
                        profiler.enable()
                    cpu = time.process_time()
                    figures.burst, figures.burst_s, missing = await burst(
                        bus, plant, arrivals, args.burst, 300
                    )
                    figures.cpu_s = time.process_time() - cpu
                    if profiler:
                        profiler.disable()
                        print_profile(profiler)
                    figures.delays_ms, missing_paced = await paced(bus, plant, arrivals, args.seconds)
                    figures.paced = len(figures.delays_ms) + missing_paced
                    figures.missing = missing + missing_paced
            finally:
                await bus.close()
    figures.repeats = arrivals.repeats
    return figures


def print_profile(profiler: cProfile.Profile) -> None:
    """CPU (not wall) time: by package, then the top functions."""
    stats = pstats.Stats(profiler, stream=sys.stdout)
    by_package: dict[str, float] = {}
    for (filename, _, _), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        parts = Path(filename).parts
        if "site-packages" in parts:
            package = parts[parts.index("site-packages") + 1]
        elif "linesight" in parts:
            package = "linesight." + parts[parts.index("linesight") + 1]
        else:
            package = "python" if filename.startswith("/") else filename[:20]
        by_package[package] = by_package.get(package, 0.0) + tottime
    total = sum(by_package.values()) or 1.0
    for package, t in sorted(by_package.items(), key=lambda kv: -kv[1])[:15]:
        print(f"  {package:30} {t:7.2f} s  {100 * t / total:5.1f} %")
    stats.sort_stats("cumulative").print_stats(35)
    stats.sort_stats("tottime").print_stats(20)


def report(rows: list[Figures]) -> None:
    print(
        f"\nMES delivery: {STATIONS} stations; burst to the last arrival, then {STATIONS} x {PPM} ppm paced"
    )
    print(
        f"(cpu ms: this process's CPU per disposition in the burst; load average {os.getloadavg()[0]:.1f}; "
        f"event loop {LOOP_NAME[0]})"
    )
    print(
        f"{'adapter':8} {'burst':>6} {'disp/s':>8} {'cpu ms':>7} {'paced':>6} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'max ms':>8} {'missing':>8} {'repeats':>8}"
    )
    for f in rows:
        mx = max(f.delays_ms) if f.delays_ms else float("nan")
        print(
            f"{f.adapter:8} {f.burst:6d} {f.rate:8.0f} {f.cpu_s * 1000 / max(1, f.burst):7.2f} "
            f"{f.paced:6d} {f.pct(0.5):8.1f} {f.pct(0.99):8.1f} {mx:8.1f} {f.missing:8d} {f.repeats:8d}"
        )
    web = next((f for f in rows if f.adapter == "webhook"), None)
    if web is not None:
        print(
            f"webhook vs target: {web.rate:.0f}/s of >= 500/s; p99 {web.pct(0.99):.1f} ms of < 50 ms "
            f"(p50 {statistics.median(web.delays_ms) if web.delays_ms else float('nan'):.1f} ms)"
        )


LOOP_NAME = [""]


async def main_async(args: argparse.Namespace, base: Settings, broker_port: int) -> int:
    LOOP_NAME[0] = type(asyncio.get_running_loop()).__module__.split(".")[0]
    rows = []
    for kind in args.adapters.split(","):
        if kind == "mqtt" and not broker_port:
            print(f"mqtt skipped: {MOSQUITTO} missing (apt-get install mosquitto)")
            continue
        print(f"-- {kind}", flush=True)
        rows.append(await scenario(kind, base, broker_port, args))
    report(rows)
    return 0


def run(args: argparse.Namespace) -> int:
    """Servers for the run (NATS, PostgreSQL, Mosquitto) in a temp dir, then the scenarios."""
    root = Path(tempfile.mkdtemp(prefix="bench-mes-"))
    root.chmod(0o711)
    if os.geteuid() == 0:  # PostgreSQL runs as its own user and must reach its data dir
        ensure_system_user(SYSTEM_USER)
        ensure_traversable(root / "x")
    nats = NatsServer(root / "nats", free_port(also_free=(4000,)))
    pg = PostgresServer(root / "pg", free_port())  # durable (fsync on), as in production
    s3 = SeaweedS3(
        root / "s3", seaweed_free_ports(), S3_ACCESS_KEY, S3_SECRET_KEY
    )  # the service needs its store
    nats.start()
    pg.start()
    s3.start()
    try:
        with contextlib.ExitStack() as stack:
            broker = (
                stack.enter_context(mosquitto(root)) if MOSQUITTO.exists() and "mqtt" in args.adapters else 0
            )
            base = Settings(
                nats_url=nats.url,
                pg_dsn=pg.dsn,
                s3_endpoint=s3.endpoint,
                s3_access_key=S3_ACCESS_KEY,
                s3_secret_key=S3_SECRET_KEY,
                s3_secure=False,
                state_dir=root / "state",
                host="127.0.0.1",
                grpc_ports={name: free_port() for name in SERVICE_PORTS},
                http_ports={name: free_port() for name in SERVICE_PORTS},
                log_json=False,
            )
            # The event loop the service runs on (`python -m linesight.mes`), unless told otherwise.
            factory = loop_factory() if args.loop == "service" else None
            with asyncio.Runner(loop_factory=factory) as runner:
                return runner.run(main_async(args, base, broker))
    finally:
        s3.stop()
        pg.stop()
        nats.stop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--burst", type=int, default=2000, help="results published at once per adapter")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds at 8 x 120 ppm per adapter")
    parser.add_argument("--adapters", default="webhook,mqtt,opcua")
    parser.add_argument("--quick", action="store_true", help="--burst 400 --seconds 8")
    parser.add_argument(
        "--loop",
        choices=("service", "asyncio"),
        default="service",
        help="event loop: the service's own (uvloop where installed) or asyncio's",
    )
    parser.add_argument("--profile", default="", help="cProfile this adapter's burst (webhook, mqtt, opcua)")
    args, _ = parser.parse_known_args()  # run_all passes every bench the same arguments
    if args.quick:
        args.burst, args.seconds = min(args.burst, 400), min(args.seconds, 8.0)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
