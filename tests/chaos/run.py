"""`make chaos`: a line under faults and abuse, counted by frame id from capture to the MES receiver.

The line is the embedded stack as `linesight up` runs it: supervised servers (NATS, PostgreSQL, S3,
and Triton for the Triton scenario) and every service as a supervised child process (capture
replaying real magnetic-tile frames when ../shared/datasets/magnetic_tile exists, else synthetic
tiles; inference on a stand-in model published on the bus like a trained one; labeling; MES
delivering to the demo's receiver in this process). This process acts as the PLC: one gRPC
Trigger per part at the line rate, with a service token. The replay folder holds one image twice
in a row, so repeated images occur on every pass.

Fault scenarios inject one fault a third of the way in, then wait for every captured part:

    kill-<server>            SIGKILL of nats, postgres, s3 (the supervisor restarts it)
    kill-<service>           SIGKILL of capture, inference, labeling, taxonomy, training, mes
    kill-triton              SIGKILL of the embedded Triton (inference serves through it); skipped,
                             with the reason printed, where Triton cannot run
    nats-outage              NATS frozen (SIGSTOP) for --outage-s (default 30 s)
    crash-during-recovery    SIGKILL of PostgreSQL, and again as soon as it is relaunched

and print, per scenario: parts triggered, refused (capture down: the PLC sees the failure),
captured -> results (MES outbox) -> ledger (labeling) -> delivered (receiver), duplicates at the
receiver, error results (an inspection that did not happen: no model, no image), recovery seconds
of what was killed, `late`: dispositions whose first arrival at the receiver came more than the
5 s reject window after capture (where the line sees it; `mes_late` is what MES itself flagged,
on the result's arrival), and `worst_s`, the slowest capture -> delivery. A service crash must
leave no late disposition; server faults and the NATS outage report theirs. `--keep-logs DIR`
keeps the stack's logs (the slowest parts of each scenario are named on stderr).

Abuse scenarios try what an intruder or a bad night shift would, and count what got through:

    abuse-forged-result      anonymous NATS; a PASS published as capture on the result subject
    abuse-anonymous          promote, recalibrate, publish taxonomy, redeliver (gRPC and HTTP),
                             trigger and inspect without a token
    abuse-repeated-image     identical bytes on consecutive captures: distinct frame ids, each
                             delivered, routed to review
    abuse-hostile-strings    NUL and oversized part ids, NUL in HTTP paths: refused, never a 500

    python -m tests.chaos.run                         # everything, 60 frames per fault
    python -m tests.chaos.run --scenarios kill-mes,abuse-anonymous --frames 12
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import uvicorn

from linesight.common import subjects
from linesight.common.bus import Bus, BusUnavailable
from linesight.common.clients.capture import CaptureClient
from linesight.common.clients.inference import InferenceClient
from linesight.common.clients.mes import MesClient
from linesight.common.clients.taxonomy import TaxonomyClient
from linesight.common.clients.training import TrainingClient
from linesight.common.embedded import free_port
from linesight.common.embedded.nats_auth import settings_as
from linesight.common.embedded.process import EmbeddedError, ManagedProcess
from linesight.common.embedded.stack import Stack
from linesight.common.embedded.triton import pytriton_server_dir
from linesight.common.events import new_meta
from linesight.common.grpcutil import InvalidArgument, ServiceError
from linesight.common.identity.config import AuthSettings
from linesight.common.identity.installation import installation_signer
from linesight.common.identity.model import Grant, Principal, Role, Unauthenticated
from linesight.common.pb import common_pb2, events_pb2
from linesight.common.settings import SERVICE_PORTS, Settings
from linesight.common.storage import ObjectStore, S3Config
from linesight.mes.api.receiver import DispositionLog, create_receiver_app
from tests.integration.inference.helpers import publish_model
from tests.unit.capture.helpers import textured, write_png
from tests.unit.inference.standin import LOADER, make_export

REPO = Path(__file__).resolve().parents[2]
DATASET = REPO.parent / "shared" / "datasets" / "magnetic_tile"
SERVERS = ("nats", "postgres", "s3")
SERVICES = ("capture", "inference", "labeling", "taxonomy", "training", "mes")
LINE_SERVICES = ("capture", "inference", "labeling", "mes")  # what a part passes through
FAULTS = (
    *(f"kill-{s}" for s in SERVERS),
    *(f"kill-{s}" for s in SERVICES),
    "kill-triton",
    "nats-outage",
    "crash-during-recovery",
)
ABUSE = ("abuse-forged-result", "abuse-anonymous", "abuse-repeated-image", "abuse-hostile-strings")
SCENARIOS = (*FAULTS, *ABUSE)
RECOVERY_TARGET_S = 10.0  # servers; services are reported (their restart includes Python start-up)
MODEL_VERSION = "chaos-1"
REPLAY_IMAGES = 40
CHAOS_SUBJECT = "linesight-chaos"
REJECT_WINDOW_S = 5.0  # the line's capture -> disposition budget (MES's default reject window)


@dataclass
class Row:
    """One fault scenario, counted by frame id."""

    scenario: str
    triggered: int
    refused: int
    captured: int
    results: int
    ledger: int
    delivered: int
    duplicates: int
    recovery_s: float | None
    late: int  # first delivery at the receiver later than REJECT_WINDOW_S after capture
    elapsed_s: float
    skipped: str = ""
    late_flagged: int = 0  # what MES itself flagged late (result arrival, not delivery)
    errors: int = 0  # error results (no model, no image): delivered, but not an inspection
    worst_s: float = 0.0  # slowest capture -> delivery

    @property
    def complete(self) -> bool:
        """Every part captured has one result, one ledger row and one disposition at MES.

        Duplicates are reported, not failed: a POST whose outcome the outbox could not commit
        (PostgreSQL died in between) is sent again under the same Idempotency-Key, and the
        receiver drops it. That is the outbox's documented at-least-once on the wire.
        """
        return bool(self.skipped) or self.captured == self.results == self.ledger == self.delivered

    @property
    def server(self) -> bool:
        name = self.scenario.removeprefix("kill-")
        return name in (*SERVERS, "triton") or self.scenario == "crash-during-recovery"

    @property
    def ok(self) -> bool:
        slow = self.server and (self.recovery_s or 0.0) > RECOVERY_TARGET_S
        late = self.service and self.late > 0  # the target: none after a service crash
        return self.complete and not slow and not late and self.errors == 0

    @property
    def service(self) -> bool:
        return self.scenario.removeprefix("kill-") in SERVICES


@dataclass
class AbuseRow:
    """One abuse scenario: attempts, how many were refused, how many got through."""

    scenario: str
    attempts: int = 0
    refused: int = 0
    accepted: int = 0
    notes: list[str] = field(default_factory=list)

    def refuse(self) -> None:
        self.attempts += 1
        self.refused += 1

    def accept(self, what: str) -> None:
        self.attempts += 1
        self.accepted += 1
        self.notes.append(what)

    @property
    def ok(self) -> bool:
        return self.attempts > 0 and self.accepted == 0


class TimedLog(DispositionLog):
    """The receiver's log plus the wall-clock arrival of each frame's first disposition: lateness
    is judged where the line sees it (delivered - captured), not where MES thinks it decided."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived: dict[str, float] = {}  # frame id -> first delivery, epoch seconds
        self.captured: dict[str, float] = {}

    def add(self, key: str, body: dict[str, Any]) -> bool:
        now = time.time()
        new = super().add(key, body)
        frame = str(body.get("frame_id", ""))
        if new and frame and frame not in self.arrived:
            with contextlib.suppress(KeyError, TypeError, ValueError):
                self.captured[frame] = datetime.fromisoformat(str(body["captured_at"])).timestamp()
                self.arrived[frame] = now
        return new

    def slowest(self, ids: Sequence[str], n: int = 3) -> str:
        """The `n` slowest deliveries among `ids`, for the log: which part, how late."""
        got = sorted(
            ((self.arrived[f] - self.captured[f], f) for f in set(ids) if f in self.arrived), reverse=True
        )
        return ", ".join(f"{f} {s:.2f}s" for s, f in got[:n])

    def latencies(self, ids: Sequence[str]) -> list[float]:
        """Capture -> first delivery of each delivered frame among `ids`, seconds."""
        return [self.arrived[f] - self.captured[f] for f in set(ids) if f in self.arrived]


class _Ports:
    """Free ports, none handed out twice (with the offset twins a server also binds)."""

    def __init__(self) -> None:
        self.taken: set[int] = set()

    def take(self, n: int, also_free: tuple[int, ...] = ()) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            p = free_port(also_free=also_free)
            block = {p, *(p + o for o in also_free)}
            if not block & self.taken:
                self.taken |= block
                out.append(p)
        return out


def make_settings(state_dir: Path, *, triton: bool = False) -> Settings:
    """A private stack on free ports (never the defaults: a developer's own stack may use them)."""
    ports = _Ports()
    nats_port = ports.take(1, (4000,))[0]
    s3, master, volume = ports.take(3, (10000,))
    filer = ports.take(1, (1, 10000, 10001))[0]
    pg_port, receiver, t_http, t_grpc, t_metrics = ports.take(5)
    svc = ports.take(2 * len(SERVICE_PORTS))
    return Settings(
        state_dir=state_dir,
        plant=f"chaos{uuid.uuid4().hex[:6]}",
        nats_port=nats_port,
        nats_url=f"nats://127.0.0.1:{nats_port}",
        pg_port=pg_port,
        pg_dsn=f"postgresql://linesight@127.0.0.1:{pg_port}/linesight",
        s3_port=s3,
        s3_endpoint=f"127.0.0.1:{s3}",
        s3_master_port=master,
        s3_volume_port=volume,
        s3_filer_port=filer,
        grpc_ports=dict(zip(SERVICE_PORTS, svc[: len(SERVICE_PORTS)], strict=True)),
        http_ports=dict(zip(SERVICE_PORTS, svc[len(SERVICE_PORTS) :], strict=True)),
        mes_receiver_port=receiver,
        mes_endpoint=f"http://127.0.0.1:{receiver}/dispositions",
        triton_http_port=t_http,
        triton_grpc_port=t_grpc,
        triton_metrics_port=t_metrics,
        triton_url=f"127.0.0.1:{t_grpc}" if triton else "",
    )


def line_images(work: Path, n: int = REPLAY_IMAGES) -> tuple[Path, str]:
    """The replay folder: `n` magnetic-tile images (synthetic tiles without the dataset), the first
    of them twice in a row, so every pass over the folder repeats one image."""
    folder = work / "replay"
    folder.mkdir(parents=True, exist_ok=True)
    manifest = DATASET / "manifest.csv"
    if manifest.is_file():
        with manifest.open(newline="") as f:
            images = sorted(DATASET / row["image"] for row in csv.DictReader(f))[:n]
        for i, src in enumerate(images):
            os.symlink(src, folder / f"f{i:03d}{src.suffix}")
        what = f"real frames ({len(images)} from {DATASET})"
    else:
        for i in range(n):
            write_png(folder / f"f{i:03d}.png", textured(500 + i, (96, 96)))
        what = f"synthetic frames ({n} images; {DATASET} absent)"
    first = sorted(folder.iterdir())[0]
    shutil.copyfile(first, folder / f"{first.stem}a{first.suffix}")  # identical bytes, next in order
    return folder, what + ", one repeated"


def triton_unavailable() -> str:
    """Why the embedded Triton cannot run here ('' when it can)."""
    try:
        pytriton_server_dir()
    except EmbeddedError as exc:
        return str(exc)
    return ""


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set variables the stack's children inherit, and restore them afterwards."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Tokens:
    """The PLC gateway's (and the line engineer's) token, signed with the installation key."""

    def __init__(self, settings: Settings) -> None:
        self._signer = installation_signer(AuthSettings(), Path(settings.state_dir), ttl_s=3600)
        roles = (Role.SERVICE, Role.ENGINEER, Role.ADMIN)
        grants = tuple(Grant(role, settings.plant) for role in roles)
        self._principal = Principal(CHAOS_SUBJECT, "chaos runner (PLC gateway)", "service", grants)
        self._token = ""

    def __call__(self) -> str:
        if not self._token:
            self._token = self._signer.issue(self._principal).token
        return self._token


@dataclass
class Drive:
    """What one paced run of triggers produced."""

    triggered: int = 0
    refused: int = 0
    frames: list[events_pb2.FrameCaptured] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        return [f.frame_id for f in self.frames]


class Line:
    """The running line: the embedded stack with services as processes, and the MES receiver."""

    def __init__(
        self, work: Path, images: Path, say: Callable[[str], None], *, services: Sequence[str], triton: bool
    ) -> None:
        self.work = work
        self.images = images
        self.say = say
        self.triton = triton
        self.settings = make_settings(work / "state", triton=triton)
        capture_cmd = [sys.executable, "-m", "linesight.capture", "--replay", str(images), "--triggered"]
        self.stack = Stack(
            self.settings,
            durable=True,  # as `linesight up`: without fsync a killed PostgreSQL loses commits
            triton=triton,
            on_event=say,
            service_commands={"capture": capture_cmd},
        )
        self.services = [s for s in SERVICES if s in services]
        self.log = TimedLog()
        self.token = Tokens(self.settings)
        self.capture: CaptureClient | None = None
        self.seen: set[str] = set()  # frame ids of every earlier scenario

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Line]:
        env = {"LINESIGHT_INFERENCE_MODEL_LOADER": LOADER}
        if self.triton:
            env["LINESIGHT_INFERENCE_BACKEND"] = "triton_grpc"
        receiver = uvicorn.Server(
            uvicorn.Config(
                create_receiver_app(self.log),
                host="127.0.0.1",
                port=self.settings.mes_receiver_port,
                log_level="warning",
                lifespan="off",
            )
        )
        served = asyncio.create_task(receiver.serve())
        try:
            # For the line's whole life: the supervisor relaunches a killed service with the
            # environment of that moment (a restarted inference without the stand-in loader served
            # nothing but MODEL_UNAVAILABLE error results).
            with environment(env):
                t0 = time.monotonic()
                await asyncio.to_thread(self.stack.start, self.services)
                self.say(f"chaos: stack up in {time.monotonic() - t0:.0f}s ({', '.join(self.services)})")
                await self._publish_model()
                async with CaptureClient(
                    self.settings.grpc_target("capture"), timeout_s=5, token=self.token
                ) as capture:
                    self.capture = capture
                    yield self
        finally:
            self.capture = None
            receiver.should_exit = True
            await served
            await asyncio.to_thread(self.stack.stop)

    async def _publish_model(self) -> None:
        """Upload the stand-in model and announce it as training would; wait until it serves."""
        as_training = settings_as(self.settings, "training")
        export = make_export(self.work / "model", MODEL_VERSION, product=self.settings.product)
        bus = await Bus.connect_as(as_training, "chaos-training")
        try:
            store = ObjectStore(S3Config.from_settings(as_training))
            await publish_model(bus, store, self.settings, export, MODEL_VERSION)
        finally:
            await bus.close()
        async with InferenceClient(self.settings.grpc_target("inference"), token=self.token) as client:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                with contextlib.suppress(ServiceError):
                    info = await client.model_info()
                    if info.model_version == MODEL_VERSION:
                        self.say(f"chaos: inference serves {MODEL_VERSION} on backend {info.backend}")
                        return
                await asyncio.sleep(0.5)
        raise RuntimeError(f"inference did not load {MODEL_VERSION} within 120 s (see its log)")

    # --- the line -------------------------------------------------------------------------
    async def drive(self, name: str, frames: int, ppm: float, started: asyncio.Event) -> Drive:
        """Trigger `frames` parts at `ppm`; a refused trigger is counted (the PLC sees it)."""
        assert self.capture is not None
        out = Drive()
        interval = 60.0 / ppm
        t0 = time.monotonic()
        for i in range(frames):
            await asyncio.sleep(max(0.0, t0 + i * interval - time.monotonic()))
            out.triggered += 1
            try:
                resp = await self.capture.trigger(f"{name}-{i:04d}")
            except (ServiceError, InvalidArgument) as exc:
                out.refused += 1
                if out.refused == 1:
                    self.say(f"chaos: trigger refused ({str(exc)[:120]})")
            else:
                out.frames.append(resp.frame)
            if out.triggered >= max(1, frames // 3):
                started.set()
        started.set()
        return out

    async def ready(self, timeout_s: float = 60.0) -> None:
        """Every service answers /readyz and capture takes calls (after an earlier scenario's
        restart the PLC's channel may still be backing off): each scenario starts from a whole line."""
        assert self.capture is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if await asyncio.to_thread(self._all_healthy):
                with contextlib.suppress(ServiceError):
                    await self.capture.wait_ready(5)
                    await self.capture.status()
                    return
            await asyncio.sleep(0.25)
        raise RuntimeError(f"the line was not whole again within {timeout_s:.0f}s")

    def _all_healthy(self) -> bool:
        return all(p.is_healthy() for p in self.stack.services.values())

    async def scenario(self, name: str, *, frames: int, ppm: float, outage_s: float, timeout_s: float) -> Row:
        await self.ready()
        dupes_before = self.log.duplicates
        t0 = time.monotonic()
        third = asyncio.Event()
        driving = asyncio.create_task(self.drive(name, frames, ppm, third))
        await third.wait()
        recovery = await self._fault(name, outage_s)
        drive = await driving
        ids = drive.ids
        self.seen |= set(ids)
        counts = await self._settle(ids, timeout_s)
        latencies = self.log.latencies(ids)
        self.say(f"chaos: {name}: slowest capture -> delivery: {self.log.slowest(ids)}")
        return Row(
            scenario=name,
            triggered=drive.triggered,
            refused=drive.refused,
            captured=len(set(ids)),
            results=counts[0],
            ledger=counts[1],
            delivered=len(set(ids) & set(self.log.snapshot())),
            duplicates=self.log.duplicates - dupes_before,
            recovery_s=recovery,
            late=sum(1 for s in latencies if s > REJECT_WINDOW_S),
            late_flagged=counts[2],
            errors=counts[3],
            worst_s=max(latencies, default=0.0),
            elapsed_s=time.monotonic() - t0,
        )

    async def _settle(self, ids: list[str], timeout_s: float) -> tuple[int, int, int, int]:
        """Wait until every part has its result, ledger row and delivery (or `timeout_s`)."""
        deadline = time.monotonic() + timeout_s
        while True:
            counts = await asyncio.to_thread(self._db_counts, ids)
            delivered = len(set(ids) & set(self.log.snapshot()))
            done = counts[0] == counts[1] == delivered == len(set(ids))
            if done or time.monotonic() > deadline:
                return counts
            await asyncio.sleep(0.5)

    def _db_counts(self, ids: list[str]) -> tuple[int, int, int, int]:
        """(results that reached MES, frames in the labeling ledger, results MES flagged late,
        error results) for `ids`."""
        try:
            with psycopg.connect(self.settings.pg_dsn, connect_timeout=3) as conn:
                results, late, errors = conn.execute(
                    "SELECT count(*), count(*) FILTER (WHERE late), count(*) FILTER (WHERE verdict = %s)"
                    " FROM mes.outbox WHERE frame_id = ANY(%s)",
                    (common_pb2.VERDICT_ERROR, ids),
                ).fetchone() or (0, 0, 0)
                (ledger,) = conn.execute(
                    "SELECT count(DISTINCT frame_id) FROM labeling.ledger WHERE frame_id = ANY(%s)", (ids,)
                ).fetchone() or (0,)
        except psycopg.Error:  # PostgreSQL restarting, or a schema not migrated yet
            return 0, 0, 0, 0
        return int(results), int(ledger), int(late), int(errors)

    # --- faults -----------------------------------------------------------------------------
    async def _fault(self, name: str, outage_s: float) -> float | None:
        """Inject the fault; returns the recovery seconds of what was killed."""
        if name == "nats-outage":
            pid = self.stack.nats.pid
            assert pid is not None
            self.say(f"chaos: NATS frozen for {outage_s:g}s (SIGSTOP pid {pid})")
            os.kill(pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(outage_s)
            finally:
                os.kill(pid, signal.SIGCONT)
            return None
        if name == "crash-during-recovery":
            return await self._kill_server(self.stack.postgres, again_while_restarting=True)
        target = name.removeprefix("kill-")
        if target in SERVERS:
            server = {"nats": self.stack.nats, "postgres": self.stack.postgres, "s3": self.stack.s3}[target]
            return await self._kill_server(server)
        if target == "triton":
            assert isinstance(self.stack.triton_server, ManagedProcess)
            return await self._kill_server(self.stack.triton_server)
        if target in SERVICES:
            return await self._kill_service(target)
        raise ValueError(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)})")

    async def _kill_server(self, server: ManagedProcess, *, again_while_restarting: bool = False) -> float:
        pid = server.pid
        assert pid is not None
        before = len(self.stack.recoveries)
        self.say(f"chaos: SIGKILL {server.name} (pid {pid})")
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 90
        if again_while_restarting:
            while time.monotonic() < deadline and server.pid in (None, pid):  # noqa: ASYNC110 - supervisor thread
                await asyncio.sleep(0.01)
            second = server.pid
            if second is not None and second != pid:
                self.say(f"chaos: SIGKILL {server.name} again while it restarts (pid {second})")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(second, signal.SIGKILL)
        while len(self.stack.recoveries) == before and time.monotonic() < deadline:  # noqa: ASYNC110 - supervisor thread
            await asyncio.sleep(0.05)
        new = self.stack.recoveries[before:]
        return max((r.down_s for r in new), default=float("inf"))

    async def _kill_service(self, svc: str) -> float:
        """SIGKILL the service process; recovery = until its restarted process answers /readyz."""
        proc = self.stack.services[svc]
        pid = proc.pid
        assert pid is not None
        self.say(f"chaos: SIGKILL service {svc} (pid {pid})")
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        deadline = t0 + 180
        while time.monotonic() < deadline:
            if proc.pid not in (None, pid) and await asyncio.to_thread(proc.is_healthy):
                return time.monotonic() - t0
            await asyncio.sleep(0.1)
        return float("inf")

    # --- abuse ------------------------------------------------------------------------------
    async def abuse(self, name: str, *, frames: int, ppm: float, timeout_s: float) -> AbuseRow:
        await self.ready()
        row = AbuseRow(name)
        if name == "abuse-forged-result":
            await self._forged_result(row)
        elif name == "abuse-anonymous":
            await self._anonymous(row)
        elif name == "abuse-repeated-image":
            await self._repeated_image(row, frames=frames, ppm=ppm, timeout_s=timeout_s)
        elif name == "abuse-hostile-strings":
            await self._hostile_strings(row)
        else:
            raise ValueError(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)})")
        return row

    async def _one_frame(self, name: str) -> events_pb2.FrameCaptured:
        drive = await self.drive(name, 1, 600.0, asyncio.Event())
        if not drive.frames:
            raise RuntimeError("capture refused the abuse scenario's own trigger")
        await self._settle(drive.ids, 60)
        return drive.frames[0]

    async def _forged_result(self, row: AbuseRow) -> None:
        """A PASS for a real part from anyone but inference must never reach MES."""
        frame = await self._one_frame("forge")
        st = frame.capture.station
        subject = subjects.station_subject(st.plant, st.line, st.station, subjects.INSPECTION_RESULT)
        forged = events_pb2.InspectionResult(
            meta=new_meta("inference/forged", correlation_id=frame.frame_id),
            frame_id=frame.frame_id,
            capture=frame.capture,
            image=frame.image,
            verdict=common_pb2.VERDICT_PASS,
            disposition=common_pb2.DISPOSITION_PASS,
            model_version=MODEL_VERSION,
        )
        try:
            intruder = await Bus.connect(self.settings.nats_url, "intruder", connect_attempts=1)
        except BusUnavailable:
            row.refuse()  # anonymous NATS connection refused
        else:
            await intruder.close()
            row.accept("anonymous NATS connection accepted")
        for user in ("capture", "labeling", "mes"):  # credentials a compromised service would hold
            bus = await Bus.connect_as(
                settings_as(self.settings, user), f"forger-{user}", publish_timeout_s=2
            )
            try:
                await bus.publish(subject, forged)
            except BusUnavailable:
                row.refuse()
            else:
                row.accept(f"{user} published an InspectionResult")
            finally:
                await bus.close()
        await asyncio.sleep(1.0)
        conflicts, disposition = await asyncio.to_thread(self._outbox_of, frame.frame_id)
        if conflicts:
            row.notes.append(f"{conflicts} conflicting result(s) recorded for {frame.frame_id}")
        row.notes.append(f"MES holds disposition {disposition} for the part")

    def _outbox_of(self, frame_id: str) -> tuple[int, str]:
        with psycopg.connect(self.settings.pg_dsn) as conn:
            (conflicts,) = conn.execute(
                "SELECT count(*) FROM mes.result_conflicts WHERE frame_id = %s", (frame_id,)
            ).fetchone() or (0,)
            found = conn.execute(
                "SELECT disposition FROM mes.outbox WHERE frame_id = %s", (frame_id,)
            ).fetchone()
        word = common_pb2.Disposition.Name(found[0]) if found else "none"
        return int(conflicts), word

    async def _anonymous(self, row: AbuseRow) -> None:
        """Every control-plane mutation without a token: UNAUTHENTICATED (gRPC) or 401 (HTTP)."""
        s = self.settings
        frame = await self._one_frame("anon")
        station = frame.capture.station
        running = set(self.services)

        async def expect_refused(what: str, service: str, call: Callable[[], Awaitable[object]]) -> None:
            if service not in running:
                row.notes.append(f"{what}: {service} not running in this run")
                return
            try:
                await call()
            except Unauthenticated:
                row.refuse()
            except Exception as exc:
                row.accept(f"{what}: {type(exc).__name__}: {str(exc)[:80]}")
            else:
                row.accept(f"{what}: accepted")

        async with (
            TrainingClient(s.grpc_target("training"), timeout_s=5) as training,
            InferenceClient(s.grpc_target("inference"), timeout_s=5) as inference,
            TaxonomyClient(s.grpc_target("taxonomy"), timeout_s=5) as taxonomy,
            MesClient(s.grpc_target("mes"), timeout_s=5) as mes,
            CaptureClient(s.grpc_target("capture"), timeout_s=5) as capture,
        ):
            await expect_refused(
                "PromoteModel",
                "training",
                lambda: training.promote_model(MODEL_VERSION, approved_by="mallory"),
            )
            await expect_refused(
                "Recalibrate", "inference", lambda: inference.recalibrate(station, [frame.image])
            )
            await expect_refused(
                "PublishTaxonomy",
                "taxonomy",
                lambda: taxonomy.publish_taxonomy(s.product, "product: x\nclasses: []\n"),
            )
            await expect_refused("Redeliver", "mes", lambda: mes.redeliver(frame.frame_id))
            await expect_refused("Trigger", "capture", lambda: capture.trigger("anon-part"))
            await expect_refused("Inspect", "inference", lambda: inference.inspect(frame, b"\x89PNG"))
        async with httpx.AsyncClient(timeout=5) as http:
            r = await http.post(f"{s.http_url('mes')}/api/dispatch/{frame.frame_id}/redeliver")
            if r.status_code == 401:
                row.refuse()
            else:
                row.accept(f"HTTP redeliver: {r.status_code}")

    async def _repeated_image(self, row: AbuseRow, *, frames: int, ppm: float, timeout_s: float) -> None:
        """A pass over the replay folder and a bit: the repeated image gets its own frame id, is
        flagged, routed to review and delivered like every other part."""
        n = max(frames, len(list(self.images.iterdir())) + 2)
        drive = await self.drive("repeat", n, ppm, asyncio.Event())
        await self._settle(drive.ids, timeout_s)
        repeated = [f for f in drive.frames if "REPEATED_FRAME" in f.audit.reason_codes]
        delivered = set(self.log.snapshot())
        dispositions = await asyncio.to_thread(self._dispositions, [f.frame_id for f in repeated])
        for f in repeated:
            ok = f.frame_id in delivered and dispositions.get(f.frame_id) == common_pb2.DISPOSITION_REVIEW
            if ok:
                row.refuse()  # the repeat did not slip through as a merged or silent pass
            else:
                got = common_pb2.Disposition.Name(dispositions.get(f.frame_id, 0))
                row.accept(f"repeat {f.frame_id}: delivered={f.frame_id in delivered}, {got}")
        ids = drive.ids
        row.notes.append(
            f"{len(ids)} captures, {len(set(ids))} frame ids, {len(repeated)} repeats flagged, "
            f"{len(set(ids) & delivered)} delivered"
        )
        if len(set(ids)) != len(ids) or not repeated:
            row.accept("repeated images were merged or not flagged")

    def _dispositions(self, ids: list[str]) -> dict[str, int]:
        with psycopg.connect(self.settings.pg_dsn) as conn:
            rows = conn.execute(
                "SELECT frame_id, result_disposition FROM mes.outbox WHERE frame_id = ANY(%s)", (ids,)
            ).fetchall()
        return {str(f): int(d) for f, d in rows}

    async def _hostile_strings(self, row: AbuseRow) -> None:
        """NUL and oversized strings: a clear refusal (INVALID_ARGUMENT / 4xx), never a 500."""
        assert self.capture is not None
        for part in ("P\x00-nul", "P" * 5000, "P\x1b[31m-escape"):
            try:
                await self.capture.trigger(part)
            except InvalidArgument:
                row.refuse()
            except Exception as exc:
                row.accept(f"Trigger({part[:12]!r}): {type(exc).__name__}")
            else:
                row.accept(f"Trigger({part[:12]!r}) captured a part")
        headers = {"authorization": f"Bearer {self.token()}"}
        s = self.settings
        paths = [
            ("mes", "/api/dispatch/%00"),
            ("mes", "/api/dispatch/" + "x" * 5000),
            ("labeling", "/api/results?station=%00"),
            ("labeling", "/api/frames/%00/labels"),
        ]
        async with httpx.AsyncClient(timeout=10, headers=headers) as http:
            for service, path in paths:
                if service not in self.services:
                    continue
                r = await http.get(f"{s.http_url(service)}{path}")
                if 400 <= r.status_code < 500:
                    row.refuse()
                else:
                    row.accept(f"GET {service}{path[:40]}: {r.status_code}")


def table(rows: Sequence[Row]) -> str:
    head = (
        "scenario",
        "triggered",
        "refused",
        "captured",
        "results",
        "ledger",
        "delivered",
        "dupes",
        "errors",
        "recovery_s",
        "late",
        "mes_late",
        "worst_s",
        "secs",
        "ok",
    )
    lines: list[tuple[str, ...]] = [head]
    for r in rows:
        if r.skipped:
            lines.append((r.scenario, *(["-"] * 13), f"skipped: {r.skipped}"))
            continue
        lines.append(
            (
                r.scenario,
                str(r.triggered),
                str(r.refused),
                str(r.captured),
                str(r.results),
                str(r.ledger),
                str(r.delivered),
                str(r.duplicates),
                str(r.errors),
                "-" if r.recovery_s is None else f"{r.recovery_s:.2f}",
                str(r.late),
                str(r.late_flagged),
                f"{r.worst_s:.2f}",
                f"{r.elapsed_s:.0f}",
                "yes" if r.ok else "NO",
            )
        )
    return _columns(lines)


def abuse_table(rows: Sequence[AbuseRow]) -> str:
    lines = [("abuse", "attempts", "refused", "accepted", "ok", "notes")]
    lines += [
        (
            r.scenario,
            str(r.attempts),
            str(r.refused),
            str(r.accepted),
            "yes" if r.ok else "NO",
            "; ".join(r.notes),
        )
        for r in rows
    ]
    return _columns(lines)


def _columns(lines: Sequence[Sequence[str]]) -> str:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]) - 1)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line[:-1], widths, strict=True)) + "  " + line[-1]
        for line in lines
    )


async def run(
    scenarios: Sequence[str],
    *,
    frames: int,
    ppm: float,
    outage_s: float,
    timeout_s: float,
    quiet: bool = False,
    replay_images: int = REPLAY_IMAGES,
    keep_logs: Path | None = None,
) -> tuple[list[Row], list[AbuseRow]]:
    """Run `scenarios` on one line (and a second one with Triton for kill-triton)."""
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown scenario(s) {unknown} (known: {', '.join(SCENARIOS)})")
    work = Path(tempfile.mkdtemp(prefix="linesight-chaos-"))
    say: Callable[[str], None] = (
        (lambda _m: None) if quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    )
    rows: list[Row] = []
    abuse: list[AbuseRow] = []
    try:
        images, what = line_images(work, replay_images)
        say(f"chaos: {len(scenarios)} scenario(s), {frames} frames per fault at {ppm:g} ppm on {what}")
        plain = [s for s in scenarios if s != "kill-triton"]
        wanted = set(LINE_SERVICES) | {s.removeprefix("kill-") for s in plain} & set(SERVICES)
        if "abuse-anonymous" in plain:
            wanted |= {"training", "taxonomy"}
        if plain:
            line = Line(work / "line", images, say, services=sorted(wanted), triton=False)
            async with line.running():
                for name in plain:
                    if name in ABUSE:
                        abuse.append(await line.abuse(name, frames=frames, ppm=ppm, timeout_s=timeout_s))
                        say(abuse_table(abuse[-1:]))
                        continue
                    rows.append(
                        await line.scenario(
                            name, frames=frames, ppm=ppm, outage_s=outage_s, timeout_s=timeout_s
                        )
                    )
                    say(table(rows[-1:]))
        if "kill-triton" in scenarios:
            why = triton_unavailable()
            if why:
                say(f"chaos: kill-triton skipped: {why}")
                rows.append(Row("kill-triton", 0, 0, 0, 0, 0, 0, 0, None, 0, 0.0, skipped=why))
            else:
                line = Line(work / "triton", images, say, services=LINE_SERVICES, triton=True)
                async with contextlib.AsyncExitStack() as running:
                    try:
                        await running.enter_async_context(line.running())
                    except EmbeddedError as exc:  # the server is installed but cannot run here
                        why = f"Triton did not start here: {str(exc).splitlines()[0]}"
                        say(f"chaos: kill-triton skipped: {exc}")
                        rows.append(Row("kill-triton", 0, 0, 0, 0, 0, 0, 0, None, 0, 0.0, skipped=why))
                    else:
                        rows.append(
                            await line.scenario(
                                "kill-triton", frames=frames, ppm=ppm, outage_s=outage_s, timeout_s=timeout_s
                            )
                        )
                        say(table(rows[-1:]))
    finally:
        if keep_logs is not None:  # the services' and servers' logs, for a slow or late part
            await asyncio.to_thread(_keep_logs, work, keep_logs)
            say(f"chaos: logs kept in {keep_logs}")
        shutil.rmtree(work, ignore_errors=True)
    return rows, abuse


def _keep_logs(work: Path, to: Path) -> None:
    for logs in work.glob("*/state/logs"):
        shutil.copytree(logs, to / logs.parent.parent.name, dirs_exist_ok=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.chaos.run", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help=f"comma-separated: {', '.join(SCENARIOS)}"
    )
    p.add_argument("--frames", type=int, default=60, help="parts per fault scenario")
    p.add_argument("--ppm", type=float, default=120.0)
    p.add_argument("--outage-s", type=float, default=30.0)
    p.add_argument("--timeout-s", type=float, default=180.0)
    p.add_argument("--keep-logs", type=Path, default=None, help="copy the stack's logs here at the end")
    a = p.parse_args(argv)
    names = [s for s in a.scenarios.split(",") if s]
    rows, abuse = asyncio.run(
        run(
            names,
            frames=a.frames,
            ppm=a.ppm,
            outage_s=a.outage_s,
            timeout_s=a.timeout_s,
            keep_logs=a.keep_logs,
        )
    )
    if rows:
        print(table(rows))
    if abuse:
        print(abuse_table(abuse))
    bad = [r.scenario for r in rows if not r.ok] + [r.scenario for r in abuse if not r.ok]
    if bad:
        print(f"chaos: FAILED {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
