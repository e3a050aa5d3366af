"""`linesight demo`: the main job. Start the embedded stack and run a line end to end.

    dataset ─► training (gRPC StartTraining) ─► ModelPublished ─► inference (hot swap)
    demo as PLC ─► capture (gRPC Trigger, replaying the later session) ─► FrameCaptured
      ─► inference ─► InspectionResult ─► labeling (ledger, review queue)
      + mes (outbox ─► webhook receiver, MQTT broker, its OPC UA Machine Vision server)

The dataset is split by time the way a line lives: the model trains on the earlier batches
(capped like a real first deployment: a few hundred good parts, <= 50 per defect class) and the
line replays the latest batch, a session the model has never seen. Every count in the summary
is read back from the services (labeling ledger) or from where MES delivered (the webhook receiver,
a QoS-1 MQTT subscriber, an OPC UA client of the station's ResultManagement), never from the demo's
own loop or from MES's own record of what it sent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import hashlib
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import nats.errors
import uvicorn
import yaml
from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError as JsNotFoundError
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn

from linesight.cli.cmd_up import settings_from_args
from linesight.common import subjects
from linesight.common.bus import inbox_prefix
from linesight.common.clients import CaptureClient, InferenceClient, TaxonomyClient, TrainingClient
from linesight.common.embedded.config import SettingsError
from linesight.common.embedded.mqtt import MosquittoBroker, mosquitto_binary
from linesight.common.embedded.nats_auth import OPERATOR_USER, settings_as
from linesight.common.embedded.process import AlreadyRunningError, EmbeddedError, free_port
from linesight.common.embedded.stack import GATE_FILE, Stack, clear_state_dir
from linesight.common.grpcutil import InvalidArgument, NotFound, ServiceError
from linesight.common.identity.config import AuthSettings
from linesight.common.identity.installation import installation_signer
from linesight.common.identity.model import Grant, Principal, Role
from linesight.common.pb import events_pb2, inference_pb2, training_pb2
from linesight.common.settings import Settings
from linesight.vision.data.manifest import Sample, load_manifest
from linesight.vision.data.splits import cap_training, split_by_batches
from linesight.vision.taxonomy import Taxonomy, TaxonomyError, bundled_taxonomy

EXIT_CONFIG = 2
MANIFEST_COLUMNS = ("image", "label", "mask", "part_id", "batch", "station", "captured_at", "boxes")


class DemoError(RuntimeError):
    """The line could not run to its summary; the message names the stage and the cause."""


DEMO_SUBJECT = "linesight-demo"
TOKEN_TTL_S = 600


def demo_principal(settings: Settings) -> Principal:
    """Who the demo acts as: the plant's PLC gateway (service), the engineer who trains, and the
    QA owner who signs the release off, on this plant. The registry records it as the approver."""
    roles = (Role.SERVICE, Role.ENGINEER, Role.QA_OWNER, Role.LINE_OPERATOR, Role.REVIEWER, Role.ADMIN)
    grants = tuple(Grant(role, settings.plant) for role in roles)
    return Principal(DEMO_SUBJECT, "linesight demo (acting QA owner)", "service", grants)


class DemoTokens:
    """The demo's token source, signed with the installation key in the state dir (only whoever
    holds the state dir can do this); renewed well before it expires. Call it for a token."""

    def __init__(self, settings: Settings) -> None:
        self._signer = installation_signer(AuthSettings(), Path(settings.state_dir), ttl_s=TOKEN_TTL_S)
        self._principal = demo_principal(settings)
        self._token = ""
        self._renew_at = 0.0

    def __call__(self) -> str:
        now = time.monotonic()
        if now >= self._renew_at:
            self._token = self._signer.issue(self._principal).token
            self._renew_at = now + TOKEN_TTL_S / 2
        return self._token


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="start the stack, train on a dataset, run a line through every service, print a summary",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dataset", type=Path, help="dataset folder with manifest.csv (default: synthetic set)")
    p.add_argument("--frames", type=int, default=120, help="parts to run through the line (default 120)")
    p.add_argument("--ppm", type=float, default=120.0, help="line rate in parts per minute (default 120)")
    p.add_argument("--test-batches", help="batches the line replays (default: the latest batch)")
    p.add_argument("--max-good", type=int, default=300, help="good images for training (default 300)")
    p.add_argument("--max-per-class", type=int, default=50, help="images per defect class (default 50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--exit", action="store_true", help="stop the stack after the summary")
    p.add_argument("--json", type=Path, help="write the summary as JSON to this file")
    p.add_argument("--state-dir", type=Path, help="state directory (LINESIGHT_STATE_DIR, default .linesight)")
    p.add_argument("--triton", action="store_true", help="serve the model with a real Triton server")
    p.add_argument("--timeout", type=float, help="seconds to wait for each component to become ready")
    p.add_argument("--train-timeout", type=float, default=900.0, help="seconds to wait for training")
    p.set_defaults(func=run_demo)


# --- the line's data ---------------------------------------------------------------------------
@dataclass
class LinePlan:
    """What trains the model and what the line replays, as two manifest folders."""

    dataset: Path
    train_dir: Path
    replay_dir: Path
    test_batches: list[str]
    train_counts: dict[str, int] = field(default_factory=dict)
    replay_counts: dict[str, int] = field(default_factory=dict)


def _counts(samples: Sequence[Sample]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in samples:
        out[s.label] = out.get(s.label, 0) + 1
    return dict(sorted(out.items()))


def write_subset(samples: Sequence[Sample], root: Path, out_dir: Path) -> Path:
    """A manifest folder over `samples` whose files are symlinks into the source dataset.

    Manifests name files relative to their folder, so a subset cannot point at the source
    directly; links keep the real images out of the state dir and out of the repo.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for s in samples:
        rel_image = s.image.relative_to(root)
        _link(s.image, out_dir / rel_image)
        rel_mask = ""
        if s.mask is not None:
            rel_mask = str(s.mask.relative_to(root))
            _link(s.mask, out_dir / rel_mask)
        rows.append(
            {
                "image": str(rel_image),
                "label": s.label,
                "mask": rel_mask,
                "part_id": s.part_id,
                "batch": s.batch,
                "station": s.station,
                "captured_at": s.captured_at.isoformat() if s.captured_at else "",
                "boxes": json.dumps([list(b) for b in s.boxes]) if s.boxes else "",
            }
        )
    tmp = out_dir / "manifest.csv.tmp"
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(out_dir / "manifest.csv")
    return out_dir


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        if dst.resolve() == src.resolve():
            return
        dst.unlink()
    os.symlink(src.resolve(), dst)


def plan_line(
    dataset: Path,
    state_dir: Path,
    *,
    test_batches: Sequence[str] | None,
    max_good: int,
    max_per_class: int,
    seed: int,
) -> LinePlan:
    """Split by batch (time): train on earlier sessions, replay the latest one."""
    dataset = dataset.resolve()
    samples = load_manifest(dataset)
    batches = sorted({s.batch for s in samples})
    if len(batches) < 2:
        raise DemoError(f"{dataset}: the line needs at least two batches (train on earlier, replay later)")
    chosen = list(test_batches) if test_batches else [batches[-1]]
    unknown = sorted(set(chosen) - set(batches))
    if unknown:
        raise DemoError(f"--test-batches {','.join(unknown)} not in the dataset's batches {batches}")
    split = split_by_batches(samples, chosen)
    train = cap_training(split.train, max_good=max_good, max_per_class=max_per_class, seed=seed)
    key = hashlib.sha256(f"{dataset}|{chosen}|{max_good}|{max_per_class}|{seed}".encode()).hexdigest()[:10]
    base = state_dir.resolve() / "datasets"
    train_dir = write_subset(train, dataset, base / f"demo-train-{key}")
    replay_dir = write_subset(split.test, dataset, base / f"demo-replay-{key}")
    return LinePlan(dataset, train_dir, replay_dir, chosen, _counts(train), _counts(split.test))


def default_dataset(state_dir: Path, seed: int) -> Path:
    """The synthetic set the project generates itself (the real datasets are not in the repo).

    Good parts are plentiful on a line: after the latest batch goes to the replay, 480 good images
    leave training the 300 good parts `--max-good` allows and the release gate a holdout large
    enough that one false reject is not worth 1.5 points of its false-reject rate.
    """
    from linesight.vision.data.synth import generate_dataset

    return generate_dataset(
        state_dir.resolve() / "datasets" / "synthetic",
        n_good=480,
        per_class=60,
        seed=seed,
        size=256,
        reuse=True,
    )


DEMO_STATE = "demo"  # under the state dir: the demo's own databases, bus, buckets and logs


def fresh_demo_state(base_dir: Path) -> Path:
    """An empty state dir for this run, `<base_dir>/demo`, so the summary and the UI show this
    run's frames and classes only, and a demo never touches the state of `linesight up`.

    The base dir's release gate applies (it is the plant's configuration); generated datasets
    stay in the base dir, cached across runs. Raises AlreadyRunningError while a stack runs there.
    """
    state_dir = base_dir.absolute() / DEMO_STATE
    clear_state_dir(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    gate = state_dir / GATE_FILE
    gate.unlink(missing_ok=True)
    if (base_dir / GATE_FILE).is_file():
        shutil.copyfile(base_dir / GATE_FILE, gate)
    return state_dir


# --- the MES/ERP stand-in ----------------------------------------------------------------------
class _QuietServer(uvicorn.Server):
    """uvicorn in a thread: the demo's own handlers own SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.contextmanager
def mes_receiver(settings: Settings, state_dir: Path) -> Iterator[str]:
    """Run the local MES/ERP receiver the MES service delivers to; yields its count URL."""
    from linesight.mes.api.receiver import DispositionLog, create_receiver_app

    log_path = state_dir.resolve() / "mes-receiver" / f"dispositions-{int(time.time())}.jsonl"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    app = create_receiver_app(DispositionLog(log_path))
    config = uvicorn.Config(
        app, host=settings.host, port=settings.mes_receiver_port, log_level="warning", lifespan="off"
    )
    server = _QuietServer(config)
    thread = threading.Thread(target=server.run, name="mes-receiver", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise DemoError(
                f"the MES receiver could not listen on {settings.host}:{settings.mes_receiver_port} "
                "(set LINESIGHT_MES_RECEIVER_PORT and LINESIGHT_MES_ENDPOINT to a free port)"
            )
        time.sleep(0.05)
    try:
        yield f"http://{settings.host}:{settings.mes_receiver_port}/dispositions"
    finally:
        server.should_exit = True
        thread.join(timeout=5)


# --- the MES adapters, counted where they arrive -------------------------------------------------
ADAPTERS = ("webhook", "mqtt", "opcua")
NO_BROKER = "no MQTT broker on this machine (the demo starts Debian's Mosquitto: apt-get install mosquitto)"


@dataclass
class DemoAdapters:
    """The endpoints MES delivers to in the demo: where each one is, or why it is not shown."""

    urls: dict[str, str] = field(default_factory=dict)
    not_shown: dict[str, str] = field(default_factory=dict)
    mqtt: tuple[str, int] | None = None
    opcua_url: str = ""


def start_broker(
    settings: Settings, state_dir: Path, timeout: float | None
) -> tuple[MosquittoBroker | None, str]:
    """Mosquitto on a free port under the demo's state dir, or None and why not. A broker that
    cannot start leaves MQTT out of the demo (the line still runs); the reason is in the summary."""
    binary = mosquitto_binary()
    if binary is None:
        return None, NO_BROKER
    broker = MosquittoBroker(state_dir, free_port(settings.host), settings.host, binary=binary)
    try:
        broker.start(timeout=timeout)
    except EmbeddedError as exc:
        return None, f"the demo's Mosquitto did not start: {exc}"
    return broker, ""


def demo_endpoints(
    settings: Settings, receiver_url: str, broker: MosquittoBroker | None, mqtt_missing: str
) -> tuple[list[dict[str, Any]], DemoAdapters]:
    """MES's endpoints for the demo: the local webhook receiver, the demo's MQTT broker and MES's
    own OPC UA server, each a separate delivery of every disposition."""
    adapters = DemoAdapters()
    endpoints: list[dict[str, Any]] = [{"kind": "webhook", "name": "webhook", "url": settings.mes_endpoint}]
    adapters.urls["webhook"] = receiver_url
    if broker is not None:
        endpoints.append({"kind": "mqtt", "name": "mqtt", "host": broker.host, "port": broker.port})
        adapters.mqtt = (broker.host, broker.port)
        adapters.urls["mqtt"] = f"{broker.url}, Mosquitto"
    else:
        adapters.not_shown["mqtt"] = mqtt_missing or NO_BROKER
    if settings.mes_opcua:
        station = f"{settings.line}/{settings.station}"
        endpoints.append(
            {
                "kind": "opcua",
                "name": "opcua",
                "host": settings.listen_host,
                "port": settings.mes_opcua_port,
                "stations": [station],
            }
        )
        adapters.opcua_url = f"opc.tcp://{settings.host}:{settings.mes_opcua_port}"
        adapters.urls["opcua"] = adapters.opcua_url
    else:
        adapters.not_shown["opcua"] = "LINESIGHT_MES_OPCUA is off"
    return endpoints, adapters


class MqttCounter:
    """A QoS-1 subscriber to every station's disposition topic of the plant, counting distinct
    idempotency keys (QoS 1 may deliver a message twice; the key says it is the same one)."""

    def __init__(self, host: str, port: int, plant: str) -> None:
        from linesight.mes.api.mqtt import disposition_topic

        self.host, self.port = host, port
        self.topic = disposition_topic("linesight", plant, "+", "+")
        self.keys: set[str] = set()
        self.malformed = 0
        self.error = ""
        self._subscribed = asyncio.Event()

    @property
    def count(self) -> int:
        return len(self.keys)

    async def run(self) -> None:
        import aiomqtt

        try:
            async with aiomqtt.Client(
                self.host, self.port, identifier=f"linesight-demo-{os.getpid()}"
            ) as client:
                await client.subscribe(self.topic, qos=1)
                self._subscribed.set()
                async for message in client.messages:
                    try:
                        body = json.loads(
                            message.payload if isinstance(message.payload, bytes | str) else b""
                        )
                        self.keys.add(str(body["idempotency_key"]))
                    except (ValueError, KeyError, TypeError):
                        self.malformed += 1
        except aiomqtt.MqttError as exc:
            self.error = f"MQTT subscriber: {exc}"
        finally:
            self._subscribed.set()

    @contextlib.asynccontextmanager
    async def running(self, timeout_s: float = 15.0) -> AsyncIterator[MqttCounter]:
        """Subscribed when the block starts (before the line runs), unsubscribed when it ends."""
        task = asyncio.create_task(self.run(), name="demo-mqtt-subscriber")
        try:
            await asyncio.wait_for(self._subscribed.wait(), timeout_s)
        except TimeoutError:
            self.error = (
                f"MQTT subscriber: not subscribed to {self.host}:{self.port} within {timeout_s:.0f} s"
            )
        try:
            if self.error:
                raise DemoError(self.error)
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class OpcUaCounter:
    """An OPC UA client of MES's Machine Vision server: the distinct result ids held in the
    ResultManagement of every VisionSystem object (GetResultListFiltered, unfiltered, paged). The
    server keeps the last 1000 results per station in memory, so a longer run counts at most that
    many per station.

    The client loads no data type definitions: asyncua's client cannot build the NodeSet's
    subtypes of the abstract BinaryIdBaseDataType (so not ResultDataType either). Filters are sent
    as null structures (no filter) and each result's id is read from its binary encoding."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.error = ""

    async def count(self) -> int:
        from asyncua import Client, ua

        from linesight.mes.api.opcua import MACHINE_VISION_NS, VISION_SYSTEM_TYPE

        try:
            async with Client(self.url, timeout=10) as client:
                mv = await client.get_namespace_index(MACHINE_VISION_NS)
                system_type = ua.NodeId(ua.Int32(VISION_SYSTEM_TYPE), ua.Int16(mv))
                no_filter = [
                    ua.Variant(0, ua.VariantType.Int32),  # ResultState 0: any
                    *[ua.Variant(None, ua.VariantType.ExtensionObject)] * 8,  # MeasId ... JobId: any
                ]
                keys: set[str] = set()
                for node in await client.nodes.objects.get_children():
                    if (await node.read_type_definition()) != system_type:
                        continue
                    management = await node.get_child(f"{mv}:ResultManagement")
                    start = 0
                    while True:
                        complete, count, _, listed, error = await management.call_method(
                            f"{mv}:GetResultListFiltered",
                            *no_filter,
                            ua.Variant(0, ua.VariantType.UInt32),  # MaxResults: the server's page
                            ua.Variant(start, ua.VariantType.UInt32),
                            ua.Variant(5000, ua.VariantType.Int32),  # Timeout ms
                        )
                        if error != 0:
                            raise DemoError(f"GetResultListFiltered answered error {error}")
                        keys.update(result_id(r) for r in listed or [])
                        if complete or not count:
                            break
                        start += int(count)
        except (OSError, TimeoutError, ua.UaError, DemoError, ValueError) as exc:
            self.error = f"OPC UA client of {self.url}: {type(exc).__name__}: {exc}"
            return 0
        self.error = ""
        return len(keys)


def result_id(result: Any) -> str:
    """ResultDataType's ResultId.Id: from a decoded structure (a process that holds the generated
    class), else from the binary body: the optional-fields mask (UInt32), then ResultId, a
    structure of one String (Int32 length, UTF-8)."""
    decoded = getattr(result, "ResultId", None)
    if decoded is not None:
        return str(decoded.Id)
    body = getattr(result, "Body", None)
    if not isinstance(body, bytes) or len(body) < 8:
        raise ValueError(f"not a ResultDataType: {result!r:.200}")
    size = int.from_bytes(body[4:8], "little", signed=True)
    if size < 0 or 8 + size > len(body):
        raise ValueError(f"ResultDataType with a malformed ResultId (length {size})")
    return body[8 : 8 + size].decode("utf-8")


# --- driving the line --------------------------------------------------------------------------


class ProgressView:
    """A training job's progress as the user sees it: a bar with stage, percent and ETA on a
    terminal, one line per stage otherwise (logs, CI). Fed from TrainingProgress events."""

    def __init__(self, say: Callable[[str], None], console: Console | None = None) -> None:
        self.say = say
        self.console = console or Console(stderr=True)
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._t0 = time.monotonic()
        self._stage = ""

    def update(self, stage: str, fraction: float, now: float | None = None) -> None:
        eta = eta_text(fraction, (now or time.monotonic()) - self._t0)
        if self.console.is_terminal:
            if self._bar is None:
                self._bar = Progress(
                    TextColumn("[demo] training: {task.description:<11}"),
                    BarColumn(),
                    TaskProgressColumn(),
                    TextColumn("ETA {task.fields[eta]}"),
                    console=self.console,
                    transient=True,
                )
                self._bar.start()
                self._task = self._bar.add_task(stage, total=1.0, eta=eta)
            assert self._task is not None
            self._bar.update(self._task, description=stage, completed=fraction, eta=eta)
        elif stage != self._stage:
            self.say(f"training: {stage} {fraction:.0%} (ETA {eta})")
        self._stage = stage

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def eta_text(fraction: float, elapsed_s: float) -> str:
    """Remaining time at the average pace so far; unknown until a little is done."""
    if fraction < 0.05 or fraction >= 1.0:
        return "--:--" if fraction < 1.0 else "0:00"
    left = int(elapsed_s * (1.0 - fraction) / fraction)
    return f"{left // 60}:{left % 60:02d}"


@contextlib.asynccontextmanager
async def training_progress(settings: Settings) -> AsyncIterator[dict[str, events_pb2.TrainingProgress]]:
    """The latest TrainingProgress event per job id, kept current while the block runs.

    Subscribed before the job starts, so no early stage is missed. Progress events are best
    effort (the job's state comes from GetTrainingJob): without the bus the dict stays empty.
    """
    latest: dict[str, events_pb2.TrainingProgress] = {}

    async def on_msg(msg: Msg) -> None:
        with contextlib.suppress(DecodeError):
            event = events_pb2.TrainingProgress.FromString(msg.data)
            latest[event.job_id] = event

    watcher = settings_as(settings, OPERATOR_USER)  # read-only on the bus
    try:
        nc = await nats.connect(
            settings.nats_url,
            connect_timeout=5,
            max_reconnect_attempts=3,
            user=watcher.nats_user,
            password=watcher.nats_password,
            inbox_prefix=inbox_prefix(watcher.nats_user),
        )
    except (OSError, nats.errors.Error):
        yield latest
        return
    try:
        await nc.subscribe(subjects.plant_subject(settings.plant, subjects.TRAINING_PROGRESS), cb=on_msg)
        yield latest
    finally:
        await nc.close()


async def _define_classes(
    settings: Settings, plan: LinePlan, say: Callable[[str], None], token: Callable[[], str]
) -> None:
    """Publish the product's taxonomy for the dataset's classes, standing in for its QA owner.

    Training fits only with classes the product's published taxonomy defines (a fresh plant has
    the generic placeholder), so the demo defines them first: a bundled taxonomy that covers
    them (magnetic tile), else one surface class per label. It waits until the training service
    has taken the version in, so the job cannot start on the old one.
    """
    classes = sorted(c for c in plan.train_counts if c != "good")
    async with TaxonomyClient(settings.grpc_target("taxonomy"), token=token) as client:
        current = Taxonomy.from_yaml((await client.get_taxonomy(settings.product)).yaml)
        if set(classes) <= set(current.class_names):
            return
        chosen = Taxonomy.default_for(classes)
        for name in ("magnetic_tile",):
            with contextlib.suppress(TaxonomyError, FileNotFoundError):
                bundled = bundled_taxonomy(name)
                if set(classes) <= set(bundled.class_names):
                    chosen = bundled
        version = str(int(current.version) + 1) if current.version.isdigit() else "1"
        document = chosen.to_dict() | {"product": settings.product, "version": version}
        published = await client.publish_taxonomy(
            settings.product,
            yaml.safe_dump(document, sort_keys=False),
            migration_notes="demo: dataset classes",
        )
    say(f"taxonomy {settings.product} v{published.version} defines {', '.join(classes)} (demo as QA owner)")
    await _wait_consumed(settings, "TAXONOMY", subjects.durable_name("training", subjects.TAXONOMY_PUBLISHED))


async def _wait_consumed(settings: Settings, stream: str, durable: str, timeout_s: float = 60.0) -> None:
    """Until `durable` has acknowledged everything in `stream` (read-only, as the operator user)."""
    watcher = settings_as(settings, OPERATOR_USER)
    nc = await nats.connect(
        settings.nats_url,
        connect_timeout=5,
        user=watcher.nats_user,
        password=watcher.nats_password,
        inbox_prefix=inbox_prefix(watcher.nats_user),
    )
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + timeout_s
        last = (await js.stream_info(stream)).state.last_seq
        while True:
            with contextlib.suppress(JsNotFoundError):
                info = await js.consumer_info(stream, durable)
                if info.ack_floor is not None and (info.ack_floor.stream_seq or 0) >= last:
                    return
            if time.monotonic() > deadline:
                raise DemoError(f"{durable} did not take in {stream} within {timeout_s:.0f} s")
            await asyncio.sleep(0.2)
    finally:
        await nc.close()


async def _train(
    settings: Settings, plan: LinePlan, timeout_s: float, say: Callable[[str], None], token: Callable[[], str]
) -> str:
    """Train through the training service; the candidate is signed off by the demo standing in
    for the QA owner (PromoteModel), so inference serves it."""
    view = ProgressView(say)
    try:
        async with (
            TrainingClient(settings.grpc_target("training"), token=token) as client,
            training_progress(settings) as events,
        ):
            # A name under the training service's dataset root, the only place it reads from.
            job = await client.start_training(settings.product, plan.train_dir.name)
            say(f"training job {job.job_id} on {sum(plan.train_counts.values())} images {plan.train_counts}")
            deadline = time.monotonic() + timeout_s
            while True:
                job = await client.get_job(job.job_id)
                if job.state in ("succeeded", "failed"):
                    break
                if time.monotonic() > deadline:
                    raise DemoError(f"training did not finish within {timeout_s:.0f} s (job {job.job_id})")
                event = events.get(job.job_id)
                if event is not None and not event.finished:
                    view.update(event.stage, event.fraction)
                await asyncio.sleep(0.5)
            view.close()
            if job.state == "failed":
                raise DemoError(f"training job {job.job_id} failed: {job.error or 'no error recorded'}")
            metrics = ", ".join(f"{k}={v:.3g}" for k, v in sorted(job.metrics.items()))
            say(f"model {job.model_version} trained ({metrics})")
            await _release(client, settings, job, say)
            return str(job.model_version)
    except ServiceError as exc:
        raise DemoError(f"training service: {exc}") from exc
    finally:
        view.close()


PILOT_GATE = "min_defect_recall: 0\nmax_false_reject_rate: 1\n"  # the demo's stated, audited pilot gate


async def _release(
    client: TrainingClient, settings: Settings, job: training_pb2.TrainingJob, say: Callable[[str], None]
) -> None:
    """Make the job's model the production model inference serves: the QA owner's sign-off.

    Training never releases anything: every model is a candidate, the release gate only says
    whether it is eligible, and a QA owner promotes it. The demo acts as the plant's QA owner
    and signs off explicitly. When the model fails the gate there is no override: the demo's QA
    owner first sets a pilot gate for its product (a recorded, audited gate version whose reason
    names the failed checks), says so in one line, and then signs off.
    """
    version, stage = job.model_version, job.stage
    if stage == "production":
        say(f"{version} is already the production model")
        return
    if not stage:  # a training service from before stages were reported: nothing to decide here
        say(f"the training service did not report the stage of {version}; waiting for inference to load it")
        return
    if stage not in ("candidate", "shadow"):
        raise DemoError(f"model {version} is {stage!r}, not a candidate: another release replaced it")
    failures = "; ".join(job.gate_failures)
    try:
        if failures:
            await client.set_release_gate(
                settings.product, PILOT_GATE, reason=f"demo pilot gate; the model failed: {failures}"
            )
        entry = await client.promote_model(
            version, reason="demo sign-off by the acting QA owner", product=settings.product
        )
    except (ServiceError, InvalidArgument, NotFound) as exc:
        raise DemoError(f"signing off candidate {version} failed: {exc}") from exc
    if entry.stage != "production":
        raise DemoError(f"promoting {version} left it {entry.stage!r}, not production")
    if failures:
        say(f"gate held {version} back ({failures}); pilot gate set, signed off by the acting QA owner")
    else:
        say(f"release gate passed: {version} eligible, signed off by the acting QA owner")


async def _await_model(
    settings: Settings, version: str, timeout_s: float, token: Callable[[], str]
) -> inference_pb2.ModelInfo:
    """Wait until inference serves `version` (it hot-swaps on ModelPublished)."""
    async with InferenceClient(settings.grpc_target("inference"), timeout_s=5, token=token) as client:
        deadline = time.monotonic() + timeout_s
        info = inference_pb2.ModelInfo()
        while time.monotonic() < deadline:
            with contextlib.suppress(ServiceError):
                info = await client.model_info()
                if info.model_version == version:
                    return info
            await asyncio.sleep(0.5)
        raise DemoError(
            f"inference did not load model {version} within {timeout_s:.0f} s "
            f"(serving {info.model_version or 'nothing'}); see the inference log"
        )


async def _run_line(
    settings: Settings, frames: int, ppm: float, say: Callable[[str], None], token: Callable[[], str]
) -> tuple[int, int, float]:
    """Act as the PLC: one software trigger per part at the line rate. Returns (ok, spooled, s)."""
    interval = 60.0 / ppm
    ok = spooled = 0
    start = time.monotonic()
    async with CaptureClient(settings.grpc_target("capture"), timeout_s=30, token=token) as client:
        for i in range(frames):
            due = start + i * interval
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            try:
                resp = await client.trigger("")
            except (ServiceError, InvalidArgument, NotFound) as exc:
                raise DemoError(f"capture trigger {i + 1} failed: {exc}") from exc
            ok += 1
            spooled += int(resp.spooled)
            if (i + 1) % 50 == 0:
                say(f"triggered {i + 1}/{frames} parts")
    return ok, spooled, time.monotonic() - start


async def _wait_counts(
    stats_url: str,
    receiver_url: str,
    frames: int,
    timeout_s: float,
    token: Callable[[], str],
    mqtt: MqttCounter | None = None,
    opcua: OpcUaCounter | None = None,
) -> tuple[dict, dict, dict[str, int]]:
    """Poll the labeling ledger and each MES adapter's receiving side until every part arrived
    everywhere (or time out). Returns the ledger's stats, the receiver's and the per-adapter counts."""
    deadline = time.monotonic() + timeout_s
    stats: dict[str, Any] = {}
    received: dict[str, Any] = {}
    counts: dict[str, int] = {}
    async with httpx.AsyncClient(timeout=10) as client:
        while time.monotonic() < deadline:
            reply = await client.get(stats_url, headers={"Authorization": f"Bearer {token()}"})
            if reply.status_code != 200:
                raise DemoError(f"labeling {stats_url} answered {reply.status_code}: {reply.text[:200]}")
            stats = reply.json()
            received = (await client.get(receiver_url)).json()
            counts["webhook"] = int(received.get("count", 0))
            if mqtt is not None:
                counts["mqtt"] = mqtt.count
            # An OPC UA session per poll (connect, load types, browse): only once the rest arrived.
            if opcua is not None and (counts.get("opcua", 0) < frames) and min(counts.values()) >= frames:
                counts["opcua"] = await opcua.count()
            elif opcua is not None:
                counts.setdefault("opcua", 0)
            if int(stats.get("results", 0)) >= frames and min(counts.values()) >= frames:
                break
            await asyncio.sleep(0.5)
    if opcua is not None and counts.get("opcua", 0) < frames:  # the last word, even on a timeout
        counts["opcua"] = await opcua.count()
    return stats, received, counts


async def drive(
    settings: Settings, plan: LinePlan, args: argparse.Namespace, adapters: DemoAdapters, say: Any
) -> dict:
    token = DemoTokens(settings)
    async with contextlib.AsyncExitStack() as running:
        mqtt = None
        if adapters.mqtt is not None:
            mqtt = await running.enter_async_context(MqttCounter(*adapters.mqtt, settings.plant).running())
        return await _drive(settings, plan, args, adapters, say, token, mqtt)


async def _drive(
    settings: Settings,
    plan: LinePlan,
    args: argparse.Namespace,
    adapters: DemoAdapters,
    say: Any,
    token: DemoTokens,
    mqtt: MqttCounter | None,
) -> dict:
    t0 = time.monotonic()
    await _define_classes(settings, plan, say, token)
    version = await _train(settings, plan, args.train_timeout, say, token)
    train_s = time.monotonic() - t0
    info = await _await_model(settings, version, 120.0, token)
    say(f"inference serves {info.model_version} on {info.backend}; starting the line at {args.ppm:g} ppm")
    triggered, spooled, line_s = await _run_line(settings, args.frames, args.ppm, say, token)
    opcua = OpcUaCounter(adapters.opcua_url) if adapters.opcua_url else None
    stats, received, counts = await _wait_counts(
        f"{settings.http_url('labeling')}/api/stats",
        adapters.urls["webhook"],
        triggered,
        timeout_s=120 + triggered * 0.5,
        token=token,
        mqtt=mqtt,
        opcua=opcua,
    )
    errors = {name: c.error for name, c in (("mqtt", mqtt), ("opcua", opcua)) if c is not None and c.error}
    latency = stats.get("latency_ms") or {}
    return {
        "dataset": str(plan.dataset),
        "test_batches": plan.test_batches,
        "train_images": plan.train_counts,
        "replay_images": plan.replay_counts,
        "model_version": version,
        "backend": info.backend,
        "train_seconds": round(train_s, 1),
        "line_seconds": round(line_s, 1),
        "ppm_target": args.ppm,
        "ppm_achieved": round(60.0 * triggered / line_s, 1) if line_s > 0 else None,
        "frames_captured": triggered,
        "frames_spooled": spooled,
        "results": int(stats.get("results", 0)),
        "dispositions_delivered": int(received.get("count", 0)),
        "adapters": {name: counts.get(name) for name in ADAPTERS},
        "adapter_urls": adapters.urls,
        "adapters_not_shown": adapters.not_shown,
        "adapter_errors": errors,
        "review_queue": int(stats.get("review_queue", 0)),
        "latency_ms": {"p50": latency.get("p50"), "p99": latency.get("p99")},
        "verdicts": stats.get("verdicts_by_class", {}),
        "verdict_kinds": stats.get("verdicts", {}),
        "dispositions": stats.get("dispositions", {}),
    }


def print_summary(summary: dict[str, Any]) -> None:
    lat = summary["latency_ms"]
    lines = [
        "",
        "LineSight demo summary",
        f"  dataset            {summary['dataset']} (line replays batch {','.join(summary['test_batches'])})",
        f"  model              {summary['model_version']} on {summary['backend']}, "
        f"trained in {summary['train_seconds']} s",
        f"  frames captured    {summary['frames_captured']} at {summary['ppm_achieved']} ppm "
        f"(target {summary['ppm_target']:g})",
        f"  results in ledger  {summary['results']}",
        *adapter_lines(summary),
        f"  review queue       {summary['review_queue']}",
        f"  latency ms         p50 {_fmt(lat.get('p50'))}  p99 {_fmt(lat.get('p99'))} (trigger -> result)",
        "  verdicts by class  " + _fmt_counts(summary["verdicts"]),
        "  dispositions       " + _fmt_counts(summary["dispositions"]),
    ]
    print("\n".join(lines), flush=True)


def adapter_lines(summary: dict[str, Any]) -> list[str]:
    """One line per MES adapter: what its receiving side counted, where, or why it is not shown."""
    lines = []
    for name in ADAPTERS:
        label = f"  MES {name:<14} "
        count = summary["adapters"].get(name)
        if count is None:
            lines.append(label + f"not shown: {summary['adapters_not_shown'].get(name, 'not configured')}")
            continue
        delivered = " delivered" if name == "webhook" else ""
        line = f"{label}{count}{delivered} ({summary['adapter_urls'].get(name, '')})"
        error = summary.get("adapter_errors", {}).get(name)
        lines.append(line + (f"; {error}" if error else ""))
    return lines


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{float(v):.1f}"


def _fmt_counts(counts: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(counts.items(), key=lambda kv: -int(kv[1]))) or "none"


def run_demo(args: argparse.Namespace) -> int:
    if args.frames <= 0 or args.ppm <= 0:
        print("linesight demo: --frames and --ppm must be positive", file=sys.stderr)
        return EXIT_CONFIG
    try:
        settings = settings_from_args(args)
    except SettingsError as exc:
        print(f"linesight demo: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    def say(msg: str) -> None:
        print(f"[demo] {msg}", file=sys.stderr, flush=True)

    base_dir = Path(settings.state_dir)
    try:
        state_dir = fresh_demo_state(base_dir)
        settings = settings.model_copy(update={"state_dir": state_dir})
        dataset = args.dataset or default_dataset(base_dir, args.seed)
        if not (Path(dataset) / "manifest.csv").is_file():
            raise DemoError(f"{dataset}: no manifest.csv (see docs/data-model.md for the layout)")
        batches = [b for b in (args.test_batches or "").split(",") if b]
        plan = plan_line(
            Path(dataset),
            state_dir,
            test_batches=batches or None,
            max_good=args.max_good,
            max_per_class=args.max_per_class,
            seed=args.seed,
        )
    except AlreadyRunningError as exc:
        print(f"linesight demo: {exc}", file=sys.stderr)
        return 1
    except (DemoError, EmbeddedError, ValueError, OSError) as exc:
        print(f"linesight demo: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    say(f"state of this run: {state_dir} (cleared at the start of every demo run)")
    say(f"dataset {plan.dataset}: train {plan.train_counts}; line replays {plan.replay_counts}")

    capture_cmd = [sys.executable, "-m", "linesight.capture", "--replay", str(plan.replay_dir), "--triggered"]
    stack: Stack | None = None
    broker: MosquittoBroker | None = None
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        if not stop.is_set():
            stop.set()
            raise KeyboardInterrupt

    old_int = signal.signal(signal.SIGINT, on_signal)
    old_term = signal.signal(signal.SIGTERM, on_signal)
    code = 0
    try:
        with mes_receiver(settings, state_dir) as receiver_url:
            broker, mqtt_missing = start_broker(settings, state_dir, args.timeout)
            if broker is not None:
                say(f"MQTT broker (Mosquitto) for the demo at {broker.url}")
            if settings.mes_endpoints:
                say("LINESIGHT_MES_ENDPOINTS is replaced in the demo by its own webhook, MQTT and OPC UA")
            endpoints, adapters = demo_endpoints(settings, receiver_url, broker, mqtt_missing)
            settings = settings.model_copy(update={"mes_endpoints": endpoints})
            stack = Stack(
                settings, triton=args.triton, service_commands={"capture": capture_cmd}, on_event=say
            )
            stack.start(timeout=args.timeout)
            summary = asyncio.run(drive(settings, plan, args, adapters, say))
            print_summary(summary)
            if args.json:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(summary, indent=2, sort_keys=True))
            if summary["results"] < summary["frames_captured"]:
                say(
                    "not every frame reached the ledger in time; see the logs under "
                    + str(state_dir / "logs")
                )
                code = 1
            short = [n for n, c in summary["adapters"].items() if c is not None and c < summary["results"]]
            if short:
                say(f"MES adapters short of the ledger's results: {', '.join(short)}; see the mes log")
            if not args.exit:
                print("\nThe line's stack is up (Ctrl-C stops everything):")
                for name, url in stack.urls().items():
                    print(f"  {name:18} {url}", flush=True)
                if broker is not None:
                    print(f"  {'MQTT (demo)':18} {broker.url}", flush=True)
                if not stack.wait(stop):
                    code = 1
    except KeyboardInterrupt:
        say("stopping ...")
    except (DemoError, EmbeddedError) as exc:
        print(f"linesight demo: {exc}", file=sys.stderr)
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if stack is not None:
            stack.stop()
        if broker is not None:
            broker.stop()
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
    return code
