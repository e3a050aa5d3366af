"""Composition root of the training service (gRPC jobs and registry, confirmed-label consumer),
and `train_once`: the same application run once without the service (`linesight train`)."""

from __future__ import annotations

import asyncio
import functools
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from linesight.common.audit import AUDIT_MIGRATIONS, AuditLog
from linesight.common.bus import Bus
from linesight.common.db import Database, aapply_migrations, open_database
from linesight.common.embedded.config import child_env
from linesight.common.pb import events_pb2
from linesight.common.ports import EventPublisher
from linesight.common.service import ServiceContext
from linesight.common.settings import Settings
from linesight.common.storage import ObjectStore, S3Config
from linesight.training.api.bus import (
    DURABLE,
    LABELS,
    RESULTS,
    RESULTS_DURABLE,
    SHADOW_DURABLE,
    SHADOW_RESULTS,
    TAXONOMIES,
    TAXONOMY_DURABLE,
    make_label_handler,
    make_result_handler,
    make_taxonomy_handler,
)
from linesight.training.api.grpc import TrainingServicer, register
from linesight.training.api.policy import POLICY
from linesight.training.app.datasets import DatasetApp
from linesight.training.app.job_config import JobsConfig
from linesight.training.app.jobs import ArtifactStore, Progress, TrainingApp, TrainingOutcome
from linesight.training.app.promotion import PromotionApp
from linesight.training.app.runner import JobRunner, Spawn, WorkerProcess
from linesight.training.app.trainer import ReleaseGate, TrainingOptions
from linesight.training.app.uploads import UploadLimits
from linesight.training.store import MIGRATIONS_DIR, SCHEMA

GATE_FILE = "release_gate.yaml"  # under LINESIGHT_STATE_DIR; absent = ReleaseGate defaults
POOL_SIZE = 4  # one training at a time; the registry sees little traffic


@dataclass(frozen=True)
class TrainingServiceOptions:
    """What an in-process run may change: the release gate, training defaults, no label consumer."""

    gate: ReleaseGate | None = None  # None: <state dir>/release_gate.yaml
    defaults: TrainingOptions | None = None  # None: TrainingOptions for LINESIGHT_PRODUCT
    consume: bool = True
    jobs: JobsConfig | None = None  # None: LINESIGHT_TRAINING_* (JobsConfig)
    run_jobs: bool = True  # False: jobs stay queued (a service instance that only serves the API)


def job_spawner(settings: Settings, jobs: JobsConfig) -> tuple[Spawn, Callable[[], Awaitable[None]] | None]:
    """The runner's `spawn` for the configured mode, and what closes it (None: nothing)."""
    if jobs.runner == "kubernetes":
        from linesight.training.kube import KubeAccess, KubeJobs

        access = KubeAccess.resolve(
            jobs.kube_account_dir, namespace=jobs.kube_namespace, server=jobs.kube_api_server
        )
        kube = KubeJobs.from_files(jobs.kube_job_template, access, poll_s=jobs.kube_poll_s)
        return kube, kube.close
    return worker_spawner(settings), None


def worker_spawner(settings: Settings) -> Spawn:
    """Start `python -m linesight.training.worker JOB_ID` with this service's settings, in its own
    session (a Ctrl-C meant for the service does not reach it; the runner stops it)."""
    env = child_env(settings)

    async def spawn(job_id: str) -> WorkerProcess:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "linesight.training.worker", job_id, env=env, start_new_session=True
        )

    return spawn


async def _open_app(
    settings: Settings,
    db: Database,
    bus: EventPublisher,
    store: ArtifactStore,
    options: TrainingServiceOptions,
) -> TrainingApp:
    """The application over an open database (jobs a previous process left are the runner's)."""
    return TrainingApp(
        db, bus, store, plant=settings.plant,
        gate=options.gate or ReleaseGate.load(Path(settings.state_dir) / GATE_FILE),
        defaults=options.defaults or TrainingOptions(product=settings.product),
        datasets_root=settings.datasets_root,
    )  # fmt: skip


async def setup(ctx: ServiceContext, options: TrainingServiceOptions | None = None) -> TrainingApp:
    """Migrate the `training` schema, serve jobs and the registry, consume confirmed labels and
    published taxonomies."""
    options = options or TrainingServiceOptions()
    ctx.use_auth(POLICY)
    await aapply_migrations(ctx.settings.pg_dsn, SCHEMA, AUDIT_MIGRATIONS)  # waivers are audited
    db = await ctx.use_database(SCHEMA, MIGRATIONS_DIR, max_size=POOL_SIZE)
    training = await _open_app(ctx.settings, db, ctx.bus, ctx.store, options)
    datasets = DatasetApp(db, ctx.bus, ctx.store, AuditLog(db), plant=ctx.settings.plant)
    promotions = PromotionApp(
        db, ctx.bus, ctx.store, AuditLog(db), plant=ctx.settings.plant, default_gate=lambda: training.gate
    )
    jobs = options.jobs or JobsConfig()
    limits = UploadLimits(jobs.upload_max_file_bytes, jobs.upload_max_total_bytes, jobs.upload_max_files)
    servicer = TrainingServicer(
        training, POLICY, ctx.settings.datasets_root, plant=ctx.settings.plant, datasets=datasets,
        promotions=promotions, upload_limits=limits,
    )  # fmt: skip
    ctx.add_grpc(lambda server: register(server, servicer))
    spawn, close_spawn = (
        job_spawner(ctx.settings, jobs) if options.run_jobs else (worker_spawner(ctx.settings), None)
    )
    runner = JobRunner(training, spawn, jobs, name=f"{socket.gethostname()}:service")
    if close_spawn is not None:
        ctx.on_shutdown(close_spawn)  # registered first: runs after the runner has stopped
    if options.run_jobs:
        runner.start()
        ctx.on_shutdown(runner.stop)  # local workers stopped and requeued; Kubernetes Jobs left to run
    training.runner = runner
    if options.consume:
        ctx.consume(
            LABELS,
            DURABLE,
            events_pb2.LabelSubmitted,
            make_label_handler(training, runner if jobs.auto_update else None),
        )
        ctx.consume(
            TAXONOMIES, TAXONOMY_DURABLE, events_pb2.TaxonomyPublished, make_taxonomy_handler(training)
        )
        results = make_result_handler(promotions)
        ctx.consume(SHADOW_RESULTS, SHADOW_DURABLE, events_pb2.InspectionResult, results)
        ctx.consume(RESULTS, RESULTS_DURABLE, events_pb2.InspectionResult, results)
    ctx.on_shutdown(training.wait_idle)  # a running job finishes before the database closes
    return training


def make_setup(options: TrainingServiceOptions) -> Callable[[ServiceContext], Awaitable[TrainingApp]]:
    """`setup` with `options` (tests: a fixed release gate, no label consumer)."""
    return functools.partial(setup, options=options)


async def train_once(
    dataset_dir: str | Path | None,
    settings: Settings,
    *,
    product: str = "",
    options: TrainingOptions | None = None,
    gate: ReleaseGate | None = None,
    bus: Bus | None = None,
    store: ObjectStore | None = None,
    progress: Progress | None = None,
) -> TrainingOutcome:
    """Train on a manifest dataset (None: the confirmed labels), upload, register and announce the
    model: `TrainingApp.train_once` without a running training service (`linesight train`, tests).

    Opens (and closes) its own bus, object store and database when none are given, in that order,
    so an unreachable server fails fast with BusUnavailable (NATS), StorageUnavailable (S3) or
    DatabaseUnavailable (PostgreSQL) before any training.
    """
    own_bus = bus is None
    bus = bus or await Bus.connect_as(settings, "training-cli")
    try:
        if own_bus:
            await bus.ensure_streams()
        if store is None:
            store = ObjectStore(S3Config.from_settings(settings))
            await asyncio.to_thread(store.ensure_buckets)
        opts = options or TrainingOptions(product=product or settings.product)
        db = await open_database(settings, SCHEMA, MIGRATIONS_DIR, max_size=POOL_SIZE)
        try:
            training = await _open_app(
                settings, db, bus, store, TrainingServiceOptions(gate=gate, defaults=opts, consume=False)
            )
            try:
                return await training.train_once(
                    None if dataset_dir is None else Path(dataset_dir),
                    product=product or opts.product,
                    options=opts,
                    progress=progress,
                )
            finally:
                await training.wait_idle()
        finally:
            await db.close()
    finally:
        if own_bus:
            await bus.close()
