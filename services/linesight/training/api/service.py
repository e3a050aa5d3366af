"""Wiring for the training service, and `train_and_publish` for callers without a running service."""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from linesight.common.bus import Bus
from linesight.common.db import Database, aapply_migrations
from linesight.common.service import ServiceContext, stop_tasks
from linesight.common.settings import Settings
from linesight.common.storage import ObjectStore, S3Config
from linesight.training.api.bus_handlers import start_label_consumer
from linesight.training.api.grpc_api import register
from linesight.training.app.jobs import Trainer
from linesight.training.app.trainer import ReleaseGate, TrainingOptions
from linesight.training.store import MIGRATIONS_DIR, SCHEMA, registry

GATE_FILE = "release_gate.yaml"  # under LINESIGHT_STATE_DIR; absent = ReleaseGate defaults


@dataclass
class TrainingRuntime:
    trainer: Trainer
    db: Database
    stop: asyncio.Event
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def close(self) -> None:
        self.stop.set()
        await self.trainer.wait_idle()
        await stop_tasks(self.stop, self.tasks)
        await self.db.close()


async def start_training(
    settings: Settings,
    bus: Bus,
    store: Any,
    *,
    gate: ReleaseGate | None = None,
    defaults: TrainingOptions | None = None,
    consume: bool = True,
    stop: asyncio.Event | None = None,
) -> TrainingRuntime:
    """Migrate the `training` schema, fail jobs a previous process left running, consume labels."""
    await aapply_migrations(settings.pg_dsn, SCHEMA, MIGRATIONS_DIR)
    db = Database(settings.pg_dsn, SCHEMA, max_size=min(settings.pg_pool_max, 4))
    await db.open()
    async with db.connection() as conn, conn.transaction():
        await registry.fail_interrupted_jobs(conn)
    trainer = Trainer(
        db, bus, store, plant=settings.plant,
        gate=gate or ReleaseGate.load(Path(settings.state_dir) / GATE_FILE),
        defaults=defaults or TrainingOptions(product=settings.product),
        datasets_root=Path(settings.state_dir) / "datasets",
    )  # fmt: skip
    runtime = TrainingRuntime(trainer=trainer, db=db, stop=stop or asyncio.Event())
    if consume:
        runtime.tasks.append(start_label_consumer(bus, trainer, runtime.stop))
    return runtime


async def setup(ctx: ServiceContext) -> None:
    runtime = await start_training(ctx.settings, ctx.bus, ctx.store, stop=ctx.stop)
    ctx.add_readiness_check("database", runtime.db.ping)
    ctx.add_grpc(register(runtime.trainer))
    ctx.on_shutdown(runtime.close)


@dataclass(frozen=True)
class TrainingOutcome:
    """One finished training run: the registered model and the release gate's decision."""

    job_id: str
    product: str
    model_version: str
    stage: str  # candidate (held back by the gate: needs an approver's PromoteModel) or production
    gate_failures: list[str]
    metrics: dict[str, float]
    dataset_version: str


async def train_once(
    dataset_dir: str | Path | None,
    settings: Settings,
    *,
    product: str = "",
    options: TrainingOptions | None = None,
    gate: ReleaseGate | None = None,
    bus: Bus | None = None,
    store: ObjectStore | None = None,
) -> TrainingOutcome:
    """Train on a manifest dataset (None: freeze the confirmed labels into one, like
    StartTraining with no dataset), upload to `models/<product>/<version>.tar.gz`, register the
    model (stage by the release gate) and publish ModelPublished.

    For `linesight train` and tests: works without a running training service, opening (and
    closing) its own bus, object store and database connections when none are given, in that
    order, so an unreachable server fails fast with BusUnavailable (NATS), StorageUnavailable (S3)
    or DatabaseUnavailable (PostgreSQL) before any training. Other failures raise too; once the
    job row exists it records them.
    """
    own_bus = bus is None
    bus = bus or await Bus.connect(settings.nats_url, "training-cli")
    try:
        if own_bus:
            await bus.ensure_streams()
        if store is None:
            store = ObjectStore(S3Config.from_settings(settings))
            await asyncio.to_thread(store.ensure_buckets)
        opts = options or TrainingOptions(product=product or settings.product)
        product = product or opts.product
        runtime = await start_training(settings, bus, store, gate=gate, defaults=opts, consume=False)
        try:
            trainer = runtime.trainer
            job_id = "cli-" + uuid.uuid4().hex[:8]
            async with runtime.db.connection() as conn, conn.transaction():
                await registry.create_job(conn, job_id, product, str(dataset_dir or ""))
            if dataset_dir is not None:
                version = await trainer.run_job(job_id, Path(dataset_dir), product=product, options=opts)
            else:
                with tempfile.TemporaryDirectory(prefix="ls-labels-") as tmp:
                    try:
                        root = await trainer.freeze_labels(Path(tmp))
                    except Exception as exc:
                        await trainer.fail_job(job_id, exc)
                        raise
                    version = await trainer.run_job(job_id, root, product=product, options=opts)
            model = await trainer.get_model(version)
            return TrainingOutcome(
                job_id=job_id, product=product, model_version=version, stage=model["stage"],
                gate_failures=registry.gate_failures(model),
                metrics={k: float(v) for k, v in (model["metrics"] or {}).items()},
                dataset_version=model["dataset_version"],
            )  # fmt: skip
        finally:
            await runtime.close()
    finally:
        if own_bus:
            await bus.close()


async def train_and_publish(
    dataset_dir: str | Path,
    settings: Settings,
    *,
    product: str = "",
    options: TrainingOptions | None = None,
    gate: ReleaseGate | None = None,
    bus: Bus | None = None,
    store: ObjectStore | None = None,
) -> str:
    """`train_once` on a dataset folder; returns the model version."""
    outcome = await train_once(
        dataset_dir, settings, product=product, options=options, gate=gate, bus=bus, store=store
    )
    return outcome.model_version
