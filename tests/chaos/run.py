"""`make chaos`: a line under faults, counted by frame id from capture to the MES receiver.

Servers (NATS, PostgreSQL, S3) run as the embedded stack's supervised processes; inference (a
stand-in model), labeling and MES run in this process, with the demo's MES receiver. Each scenario
runs a paced replay (real magnetic-tile frames when ../shared/datasets/magnetic_tile exists, else
synthetic tiles; the replay loops, so repeated images occur) and injects one fault a third of the
way in: SIGKILL of a server, or a NATS outage (the server frozen with SIGSTOP for `--outage-s`).
It then waits for every captured frame to reach the receiver and prints, per scenario:

    captured -> results (at MES) -> ledger (labeling) -> delivered (receiver), duplicates at the
    receiver, the server's recovery seconds, and dispositions later than the reject window.

    python -m tests.chaos.run                  # every scenario, 60 frames each at 120 ppm
    python -m tests.chaos.run --scenarios kill-nats --frames 12   # the short version
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
import uvicorn

from linesight.capture.app.profile import StationProfile
from linesight.capture.app.station import CaptureStation
from linesight.common.bus import Bus
from linesight.common.embedded import free_port
from linesight.common.embedded.nats_auth import settings_as
from linesight.common.embedded.stack import Stack
from linesight.common.service import service_running
from linesight.common.settings import SERVICE_PORTS, Settings
from linesight.common.storage import ObjectStore, S3Config
from linesight.inference.service import setup as inference_setup
from linesight.labeling.service import setup as labeling_setup
from linesight.mes.api.receiver import DispositionLog, create_receiver_app
from linesight.mes.app.dispatch import DispatchConfig
from linesight.mes.service import MesOptions, make_setup
from tests.unit.capture.helpers import textured, write_png
from tests.unit.inference.standin import LOADER, make_export

REPO = Path(__file__).resolve().parents[2]
DATASET = REPO.parent / "shared" / "datasets" / "magnetic_tile"
SCENARIOS = ("kill-nats", "kill-postgres", "kill-s3", "nats-outage")
RECOVERY_TARGET_S = 10.0


@dataclass
class Row:
    scenario: str
    captured: int
    results: int
    ledger: int
    delivered: int
    duplicates: int
    recovery_s: float | None
    late: int
    elapsed_s: float

    @property
    def complete(self) -> bool:
        """Every part captured has one result, one ledger row and one disposition at MES.

        Duplicates are reported, not failed: a POST whose outcome the outbox could not commit
        (PostgreSQL died in between) is sent again under the same Idempotency-Key, and the
        receiver drops it. That is the outbox's documented at-least-once on the wire.
        """
        return self.captured == self.results == self.ledger == self.delivered


def _ports(n: int, also_free: tuple[int, ...] = ()) -> list[int]:
    out: list[int] = []
    while len(out) < n:
        p = free_port(also_free=also_free)
        if p not in out and all(p + o not in out for o in also_free):
            out.append(p)
    return out


def make_settings(state_dir: Path) -> Settings:
    """A private stack on free ports (never the defaults: a developer's own stack may use them)."""
    nats_port, pg_port = _ports(1, (4000,))[0], _ports(1)[0]
    s3, master, volume = _ports(3, (10000,))
    filer = _ports(1, (1, 10000, 10001))[0]
    svc = _ports(2 * len(SERVICE_PORTS))
    receiver = free_port()
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
    )


def line_images(work: Path, n_synthetic: int = 8) -> tuple[Path, str]:
    """The replay folder: the magnetic-tile dataset when present, else synthetic tiles."""
    if DATASET.is_dir():
        return DATASET, f"real frames ({DATASET})"
    folder = work / "synthetic"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_synthetic):
        write_png(folder / f"tile-{i:02d}.png", textured(500 + i, (96, 96)))
    return folder, f"synthetic frames ({n_synthetic} images, {DATASET} absent)"


class Line:
    """The running line: supervised servers, in-process services, receiver and one capture station."""

    def __init__(self, work: Path, say: Callable[[str], None]) -> None:
        self.work = work
        self.say = say
        self.settings = make_settings(work / "state")
        self.stack = Stack(self.settings, durable=False, on_event=say)
        self.log = DispositionLog()
        self.station: CaptureStation | None = None
        self.bus: Bus | None = None

    def _as(self, service: str) -> Settings:
        """The settings `service` runs with in this stack: its own NATS user, the generated S3 keys."""
        return settings_as(self.settings, service)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Line]:
        os.environ["LINESIGHT_INFERENCE_MODEL_LOADER"] = LOADER
        os.environ["LINESIGHT_INFERENCE_WORK_DIR"] = str(self.work / "inference")
        await asyncio.to_thread(self.stack.start, [])
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
        mes_options = MesOptions(
            config=DispatchConfig(endpoint=self.settings.mes_endpoint, poll_interval_s=0.2)
        )
        try:
            async with (
                service_running("inference", inference_setup, settings=self._as("inference")) as inference,
                service_running("labeling", labeling_setup, settings=self._as("labeling")),
                service_running("mes", make_setup(mes_options), settings=self._as("mes")),
            ):
                export = make_export(self.work / "model", "chaos-1", product=self.settings.product)
                await inference.app.install_directory(export)
                self.bus = await Bus.connect_as(self._as("capture"), "chaos-capture")
                await self.bus.ensure_streams()
                store = ObjectStore(S3Config.from_settings(self._as("capture")))
                await asyncio.to_thread(store.ensure_buckets)
                profile = StationProfile(plant=self.settings.plant, line="l1", station="chaos-cam")
                self.station = CaptureStation(
                    profile, bus=self.bus, store=store, spool_dir=self.work / "spool"
                )
                async with self.station:
                    yield self
        finally:
            if self.bus is not None:
                await self.bus.close()
            receiver.should_exit = True
            await served
            await asyncio.to_thread(self.stack.stop)

    async def scenario(
        self, name: str, images: Path, *, frames: int, ppm: float, outage_s: float, timeout_s: float
    ) -> Row:
        assert self.station is not None
        station = self.station
        recoveries_before = len(self.stack.recoveries)
        dupes_before = self.log.duplicates
        captured_before = station.frames_captured
        t0 = time.monotonic()
        replay = asyncio.create_task(
            station.run_replay(images, ppm=ppm, limit=frames, loop=True, jitter=0.0, drain_timeout_s=0)
        )
        while not replay.done() and station.frames_captured - captured_before < max(1, frames // 3):  # noqa: ASYNC110 - polls a counter
            await asyncio.sleep(0.05)
        await self._fault(name, outage_s)
        report = await replay
        await station.drain(timeout_s=timeout_s)
        ids = report.frame_ids
        deadline = time.monotonic() + timeout_s
        while set(ids) - set(self.log.snapshot()) and time.monotonic() < deadline:  # noqa: ASYNC110 - receiver thread
            await asyncio.sleep(0.2)
        new = self.stack.recoveries[recoveries_before:]
        results, ledger, late = await asyncio.to_thread(self._db_counts, ids)
        delivered = len(set(ids) & set(self.log.snapshot()))
        return Row(
            scenario=name,
            captured=len(set(ids)),
            results=results,
            ledger=ledger,
            delivered=delivered,
            duplicates=self.log.duplicates - dupes_before,
            recovery_s=max((r.down_s for r in new), default=None),
            late=late,
            elapsed_s=time.monotonic() - t0,
        )

    async def _fault(self, name: str, outage_s: float) -> None:
        servers = {"nats": self.stack.nats, "postgres": self.stack.postgres, "s3": self.stack.s3}
        if name.startswith("kill-"):
            server = servers[name.removeprefix("kill-")]
            assert server.pid is not None
            self.say(f"chaos: SIGKILL {server.name} (pid {server.pid})")
            os.kill(server.pid, signal.SIGKILL)
            before = len(self.stack.recoveries)
            deadline = time.monotonic() + 60
            while len(self.stack.recoveries) == before and time.monotonic() < deadline:  # noqa: ASYNC110 - supervisor thread
                await asyncio.sleep(0.05)
        elif name == "nats-outage":
            pid = self.stack.nats.pid
            assert pid is not None
            self.say(f"chaos: NATS frozen for {outage_s:g}s (SIGSTOP pid {pid})")
            os.kill(pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(outage_s)
            finally:
                os.kill(pid, signal.SIGCONT)
        else:
            raise ValueError(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)})")

    def _db_counts(self, ids: list[str]) -> tuple[int, int, int]:
        """(results that reached MES, frames in the labeling ledger, late dispositions) for `ids`."""
        with psycopg.connect(self.settings.pg_dsn) as conn:
            results, late = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE late) FROM mes.outbox WHERE frame_id = ANY(%s)",
                (ids,),
            ).fetchone() or (0, 0)
            (ledger,) = conn.execute(
                "SELECT count(DISTINCT frame_id) FROM labeling.ledger WHERE frame_id = ANY(%s)", (ids,)
            ).fetchone() or (0,)
        return int(results), int(ledger), int(late)


def table(rows: list[Row]) -> str:
    head = (
        "scenario",
        "captured",
        "results",
        "ledger",
        "delivered",
        "dupes",
        "recovery_s",
        "late",
        "secs",
        "ok",
    )
    lines = [head] + [
        (
            r.scenario,
            str(r.captured),
            str(r.results),
            str(r.ledger),
            str(r.delivered),
            str(r.duplicates),
            "-" if r.recovery_s is None else f"{r.recovery_s:.2f}",
            str(r.late),
            f"{r.elapsed_s:.0f}",
            "yes" if r.complete else "NO",
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines)


async def run(
    scenarios: list[str], *, frames: int, ppm: float, outage_s: float, timeout_s: float, quiet: bool = False
) -> list[Row]:
    work = Path(tempfile.mkdtemp(prefix="linesight-chaos-"))
    say: Callable[[str], None] = (
        (lambda _m: None) if quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    )
    rows = []
    try:
        images, what = line_images(work)
        say(f"chaos: {len(scenarios)} scenario(s), {frames} frames each at {ppm:g} ppm on {what}")
        line = Line(work, say)
        async with line.running():
            for name in scenarios:
                rows.append(
                    await line.scenario(
                        name, images, frames=frames, ppm=ppm, outage_s=outage_s, timeout_s=timeout_s
                    )
                )
                say(table(rows[-1:]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.chaos.run", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help=f"comma-separated: {', '.join(SCENARIOS)}"
    )
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--ppm", type=float, default=120.0)
    p.add_argument("--outage-s", type=float, default=30.0)
    p.add_argument("--timeout-s", type=float, default=180.0)
    a = p.parse_args(argv)
    names = [s for s in a.scenarios.split(",") if s]
    rows = asyncio.run(run(names, frames=a.frames, ppm=a.ppm, outage_s=a.outage_s, timeout_s=a.timeout_s))
    print(table(rows))
    bad = [r.scenario for r in rows if not r.complete or (r.recovery_s or 0) > RECOVERY_TARGET_S]
    if bad:
        print(f"chaos: FAILED {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
