"""Training jobs in worker processes, against real NATS, PostgreSQL and S3 on tiny generated
datasets: a job from a dataset version (progress with ETA, a worker process of its own, the model
registered), the automatic incremental update from confirmed labels arriving on the bus, cancel
(the worker is killed; idempotent), restart recovery (requeue or fail with the reason), errors
for a missing dataset version or base model, and who may cancel."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from linesight.common import subjects
from linesight.common.bus import Bus, Delivery
from linesight.common.db import Database
from linesight.common.events import new_meta
from linesight.common.identity.grpc import bearer_interceptors
from linesight.common.pb import common_pb2, events_pb2, training_pb2, training_pb2_grpc
from linesight.common.service import RunningService, service_running
from linesight.common.settings import Settings
from linesight.common.storage import ObjectStore, S3Config
from linesight.training.app.job_config import JobsConfig
from linesight.training.app.jobs import TrainingApp
from linesight.training.app.trainer import ReleaseGate, TrainingOptions
from linesight.training.service import TrainingServiceOptions, make_setup
from linesight.training.store import datasets as dataset_repo
from linesight.training.store import jobs as job_repo
from linesight.training.store import registry

pytestmark = pytest.mark.integration

LENIENT = ReleaseGate(min_defect_recall=0.0, max_false_reject_rate=1.0)
FINISHED = ("succeeded", "failed", "cancelled")


def _synth(out: Path, classes: tuple[str, ...], seed: int, n_good: int = 16, per_class: int = 6) -> Path:
    from linesight.vision.data.synth import generate_dataset

    return generate_dataset(
        out, n_good=n_good, per_class=per_class, seed=seed, size=64, classes=classes, n_batches=2,
        n_stations=1,
    )  # fmt: skip


@dataclass
class Stack:
    settings: Settings
    root: Path
    store: ObjectStore
    mint: Any
    progress: list[events_pb2.TrainingProgress]
    bus: Bus


@pytest.fixture
async def stack(stack_settings: Settings, mint: Any, tmp_path: Path) -> AsyncIterator[Stack]:
    root = tmp_path / "datasets"
    root.mkdir()
    settings = stack_settings.model_copy(update={"datasets_dir": str(root)})
    bus = await Bus.connect(settings.nats_url, "test-jobs")
    await bus.ensure_streams()
    progress: list[events_pb2.TrainingProgress] = []
    stop = asyncio.Event()

    async def on_progress(msg: events_pb2.TrainingProgress, _: Delivery) -> None:
        progress.append(msg)

    task = bus.consume_in_background(
        subjects.plant_pattern(subjects.TRAINING_PROGRESS), f"t-jobs-{uuid.uuid4().hex[:8]}",
        events_pb2.TrainingProgress, on_progress, stop=stop,
    )  # fmt: skip
    store = ObjectStore(S3Config.from_settings(settings))
    store.ensure_buckets()
    try:
        yield Stack(settings, root, store, mint, progress, bus)
    finally:
        stop.set()
        await task
        await bus.close()


def _setup(jobs: JobsConfig | None = None, *, consume: bool = False, run_jobs: bool = True) -> Any:
    return make_setup(TrainingServiceOptions(
        gate=LENIENT, defaults=TrainingOptions(input_size=(64, 64)), consume=consume,
        jobs=jobs or JobsConfig(poll_s=0.2), run_jobs=run_jobs,
    ))  # fmt: skip


def _stub(channel: grpc.aio.Channel) -> training_pb2_grpc.TrainingServiceStub:
    return training_pb2_grpc.TrainingServiceStub(channel)


async def _wait(
    app: TrainingApp, job_id: str, states: tuple[str, ...] = FINISHED, within: float = 240
) -> Any:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        run = await app.get_run(job_id)
        if run.state in states:
            return run
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(
                f"job {job_id} still {run.state} ({run.stage} {run.percent}%) after {within} s"
            )
        await asyncio.sleep(0.3)


async def _wait_worker(app: TrainingApp, job_id: str, within: float = 90) -> Any:
    """The job once its worker process has reported (worker = host:pid)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        run = await app.get_run(job_id)
        if run.worker.rsplit(":", 1)[-1].isdigit() or run.state in FINISHED:
            return run
        assert asyncio.get_running_loop().time() < deadline, run
        await asyncio.sleep(0.2)


def _db(svc: RunningService[Any]) -> Database:
    assert svc.ctx.db is not None
    return svc.ctx.db


async def _cancel_leftovers(app: TrainingApp, product: str) -> None:
    """Jobs a test leaves queued would be run by the next test's service: cancel them."""
    async with app.db.connection() as conn:
        jobs = await job_repo.list_jobs(conn, ("queued", "running"))
    for j in jobs:
        if j.product == product:
            await app.cancel(j.job_id, "test cleanup")


async def test_dataset_version_job_then_automatic_incremental_update(stack: Stack) -> None:
    product = f"jobs{uuid.uuid4().hex[:6]}"
    _synth(stack.root / "base", ("scratch",), seed=1)
    engineer = stack.mint(f"engineer@*/{product}", subject="erin")
    jobs = JobsConfig(poll_s=0.2, auto_update_labels=4, auto_check_s=3600)
    async with (
        service_running("training", _setup(jobs, consume=True), settings=stack.settings) as svc,
        grpc.aio.insecure_channel(
            stack.settings.grpc_target("training"), interceptors=bearer_interceptors(lambda: engineer)
        ) as channel,
    ):
        stub = _stub(channel)
        version = await stub.ImportDataset(
            training_pb2.ImportDatasetRequest(product=product, directory="base", reason="first set")
        )
        # A missing dataset version or base model is a clear error, and nothing is queued.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.StartTraining(
                training_pb2.StartTrainingRequest(product=product, dataset_version="nope-1")
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "no dataset version 'nope-1'" in (
            err.value.details() or ""
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.StartTraining(training_pb2.StartTrainingRequest(product=product, incremental=True))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "needs a base model" in (
            err.value.details() or ""
        )

        job = await stub.StartTraining(
            training_pb2.StartTrainingRequest(product=product, dataset_version=version.version)
        )
        assert job.state in ("queued", "running") and job.mode == "full"
        assert job.dataset_version == version.version and "erin" in job.requested_by
        run = await _wait_worker(svc.app, job.job_id)
        assert int(run.worker.rsplit(":", 1)[1]) != os.getpid()  # a process of its own
        done = await _wait(svc.app, job.job_id)
        assert done.state == "succeeded", done.error
        got = await stub.GetTrainingJob(training_pb2.GetTrainingJobRequest(job_id=job.job_id))
        assert got.percent == 100 and got.model_version
        assert got.stage == "candidate"  # a gate pass makes it eligible; only a QA owner promotes
        assert got.production_eligible == (not version.blocking)
        model = await svc.app.get_model(got.model_version)
        assert model.dataset_version == version.version
        # Evaluated on the version's protected holdout, read once through the logged reader for the
        # release evaluation; fitted on train and val only.
        async with _db(svc).connection() as conn:
            reads = await dataset_repo.holdout_reads(conn, product)
        ((read_version, purpose, reader, n_holdout),) = reads
        assert read_version == version.version
        assert purpose == f"release evaluation of training job {job.job_id}"
        assert job.job_id in reader and "erin" in reader and n_holdout > 0
        entry = await stub.GetModel(training_pb2.GetModelRequest(model_version=got.model_version))
        lineage = json.loads(entry.lineage_json)
        assert lineage["holdout"] == "protected" and lineage["holdout_images"] == n_holdout
        assert lineage["train_images"] + n_holdout == version.images
        assert stack.store.get_bytes("models", f"{product}/{got.model_version}.engine.tar.gz")
        mine = [p for p in stack.progress if p.job_id == job.job_id]
        assert any(p.eta_seconds > 0 for p in mine), [(p.stage, p.fraction, p.eta_seconds) for p in mine]
        assert mine and mine[-1].finished and not mine[-1].error
        assert len({p.stage for p in mine}) >= 3, [p.stage for p in mine]  # starting, fit stages, done

        # Confirmed labels on the bus: a new class and more of a known one. The fourth starts
        # an incremental job on its own.
        extra = _synth(stack.root / "extra", ("scratch", "crack"), seed=7, n_good=2, per_class=3)
        import csv

        with (extra / "manifest.csv").open() as fh:
            rows = [r for r in csv.DictReader(fh) if r["label"] in ("crack", "scratch")]
        rows = [r for r in rows if r["label"] == "crack"][:3] + [r for r in rows if r["label"] == "scratch"][
            :1
        ]
        for i, r in enumerate(rows):
            ref = stack.store.put_content_addressed("frames", (extra / r["image"]).read_bytes())
            label = events_pb2.LabelSubmitted(
                meta=new_meta("labeling"), frame_id=f"{product}-f{i}", label=r["label"], product=product,
                image=common_pb2.ObjectRef(bucket=ref.bucket, key=ref.key), part_id=f"{product}-p{i}",
                labeler="ann", reviewer="quinn",
                station=common_pb2.StationRef(plant=stack.settings.plant, line="l1", station="s1"),
            )  # fmt: skip
            await stack.bus.publish(
                subjects.plant_subject(stack.settings.plant, subjects.LABEL_SUBMITTED), label
            )
        deadline = asyncio.get_running_loop().time() + 60
        auto: list[job_repo.JobRun] = []
        while not auto and asyncio.get_running_loop().time() < deadline:
            async with _db(svc).connection() as conn:
                auto = [j for j in await job_repo.list_jobs(conn, ("queued", "running", *FINISHED))
                        if j.product == product and j.mode == "incremental"]  # fmt: skip
            await asyncio.sleep(0.3)
        assert (
            len(auto) == 1
            and auto[0].requested_by == "auto-update"
            and auto[0].base_model == got.model_version
        )
        inc = await _wait(svc.app, auto[0].job_id)
        assert inc.state == "succeeded", inc.error
        new_model = await svc.app.get_model(inc.model_version)
        assert new_model.model_version != got.model_version
        assert inc.metrics["new_classes"] == 1.0
        assert 0.0 <= inc.metrics["old_class_recall_before"] <= 1.0
        assert 0.0 <= inc.metrics["old_class_recall_after"] <= 1.0
        # The count starts again from the new model: no second job for the same labels.
        assert await svc.app.runner.auto_update(product) == []


async def test_cancel_kills_the_worker_and_is_idempotent(stack: Stack) -> None:
    product = f"cancel{uuid.uuid4().hex[:6]}"
    _synth(stack.root / "ds", ("scratch",), seed=2, n_good=40, per_class=12)
    engineer = stack.mint(f"engineer@*/{product}", subject="erin")
    async with (
        service_running("training", _setup(), settings=stack.settings) as svc,
        grpc.aio.insecure_channel(
            stack.settings.grpc_target("training"), interceptors=bearer_interceptors(lambda: engineer)
        ) as channel,
    ):
        stub = _stub(channel)
        job = await stub.StartTraining(
            training_pb2.StartTrainingRequest(product=product, dataset_version="ds")
        )
        run = await _wait_worker(svc.app, job.job_id)
        pid = int(run.worker.rsplit(":", 1)[1])
        cancelled = await stub.CancelTrainingJob(training_pb2.CancelTrainingJobRequest(job_id=job.job_id))
        assert cancelled.state == "cancelled" and "erin" in cancelled.error
        for _ in range(50):  # terminated by the runner
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError(f"worker {pid} still alive after cancel")
        again = await stub.CancelTrainingJob(training_pb2.CancelTrainingJobRequest(job_id=job.job_id))
        assert again.state == "cancelled" and again.error == cancelled.error
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CancelTrainingJob(training_pb2.CancelTrainingJobRequest(job_id="missing"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert (await svc.app.get_run(job.job_id)).model_version == ""


async def test_restart_requeues_or_fails_jobs_whose_worker_died(stack: Stack) -> None:
    product = f"restart{uuid.uuid4().hex[:6]}"
    async with service_running(
        "training", _setup(JobsConfig(max_attempts=2, heartbeat_timeout_s=30), run_jobs=False),
        settings=stack.settings,
    ) as svc:  # fmt: skip
        ids = {}
        async with _db(svc).connection() as conn, conn.transaction():
            for name, attempts in (("once", 1), ("twice", 2), ("alive", 1), ("cli", 1)):
                ids[name] = f"{product}-{name}"
                options = {"in_process": True} if name == "cli" else {}  # a `linesight train` that died
                spec = job_repo.JobSpec(job_id=ids[name], product=product, dataset="x", options=options)
                await job_repo.create(conn, spec)
                await conn.execute("UPDATE jobs SET state = 'running' WHERE job_id = %s", (ids[name],))
                age = "5 seconds" if name == "alive" else "10 minutes"
                await conn.execute(
                    f"UPDATE job_runs SET attempts = %s, worker = 'gone:4242', "
                    f"heartbeat_at = now() - interval '{age}' WHERE job_id = %s",
                    (attempts, ids[name]),
                )
        actions = await svc.app.runner.recover()
        assert {k: actions[v] for k, v in ids.items()} == {
            "once": "requeued",
            "twice": "failed",
            "alive": "adopted",
            "cli": "failed",
        }
        once, twice = await svc.app.get_run(ids["once"]), await svc.app.get_run(ids["twice"])
        assert once.state == "queued" and "worker gone:4242 lost" in once.error and "requeued" in once.error
        assert (
            twice.state == "failed" and "worker gone:4242 lost" in twice.error and "2 attempt" in twice.error
        )
        cli = await svc.app.get_run(ids["cli"])
        assert cli.state == "failed" and "not requeued" in cli.error
        await svc.app.runner.stop()
        await _cancel_leftovers(svc.app, product)


async def test_automatic_update_thresholds_and_off_switch(stack: Stack) -> None:
    product = f"auto{uuid.uuid4().hex[:6]}"
    async with service_running("training", _setup(run_jobs=False), settings=stack.settings) as svc:
        runner = svc.app.runner
        async with _db(svc).connection() as conn, conn.transaction():
            await registry.register_model(conn, registry.ModelRow(
                model_version=f"{product}-m1", product=product, stage="candidate", metrics={},
                taxonomy_version="", dataset_version="", artifact_bucket="models", artifact_key="k",
                artifact_sha256="0" * 64, artifact_bytes=0, gate={},
            ))  # fmt: skip
            # signed off an hour ago (the sign-off path itself is tested with the registry)
            await conn.execute(
                "UPDATE models SET stage = 'production', created_at = now() - interval '1 hour' "
                "WHERE product = %s", (product,),
            )  # fmt: skip
            for i in range(3):
                await registry.upsert_label(conn, {
                    "frame_id": f"{product}-{i}", "label": "good", "image_bucket": "frames",
                    "image_key": "x", "product": product,
                })  # fmt: skip
        runner.config = JobsConfig(auto_update_labels=5, auto_update_after_s=3600)
        assert await runner.auto_update(product) == []  # 3 of 5, and the oldest is seconds old
        runner.config = JobsConfig(auto_update=False, auto_update_labels=2)
        assert await runner.auto_update(product) == []  # switched off
        runner.config = JobsConfig(auto_update_labels=50, auto_update_after_s=0.001)
        started = await runner.auto_update(product)  # the time rule: one label waiting long enough
        assert len(started) == 1
        run = await svc.app.get_run(started[0])
        assert run.mode == "incremental" and run.base_model == f"{product}-m1" and run.state == "queued"
        assert await runner.auto_update(product) == []  # one job at a time per product
        await _cancel_leftovers(svc.app, product)


async def test_cancel_permissions(stack: Stack) -> None:
    async with service_running("training", _setup(run_jobs=False), settings=stack.settings):
        target = stack.settings.grpc_target("training")
        request = training_pb2.CancelTrainingJobRequest(job_id="missing")
        for grant, code in (("qa_owner@*/tile", grpc.StatusCode.NOT_FOUND),
                            ("engineer@*/tile", grpc.StatusCode.NOT_FOUND),
                            ("labeler@*/tile", grpc.StatusCode.PERMISSION_DENIED),
                            ("", grpc.StatusCode.UNAUTHENTICATED)):  # fmt: skip
            token: str = stack.mint(grant, subject="someone") if grant else ""
            interceptors = bearer_interceptors(functools.partial(str, token)) if token else []
            async with grpc.aio.insecure_channel(target, interceptors=interceptors) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await _stub(channel).CancelTrainingJob(request)
                assert err.value.code() == code, grant


async def test_blocking_version_trains_only_a_candidate(stack: Stack) -> None:
    """A version with an unwaived blocking hygiene finding: the job is queued, marked not
    production-eligible with the findings named, and its model registers as a candidate."""
    from tests.unit.training.planted import planted_dataset

    product = f"block{uuid.uuid4().hex[:6]}"
    planted_dataset(stack.root / "planted")
    engineer = stack.mint(f"engineer@*/{product}", subject="erin")
    async with (
        service_running("training", _setup(run_jobs=False), settings=stack.settings) as svc,
        grpc.aio.insecure_channel(
            stack.settings.grpc_target("training"), interceptors=bearer_interceptors(lambda: engineer)
        ) as channel,
    ):
        stub = _stub(channel)
        version = await stub.ImportDataset(
            training_pb2.ImportDatasetRequest(product=product, directory="planted", reason="planted")
        )
        assert version.blocking
        job = await stub.StartTraining(
            training_pb2.StartTrainingRequest(product=product, dataset_version=version.version)
        )
        assert not job.production_eligible and "metadata_leak" in job.ineligible_reason
        # What the runner does with the worker's result: the gate passes, the model stays a candidate.
        got = await _register_fake_result(svc, stub, job.job_id, f"{product}-m1", version.version)
        assert got.state == "succeeded" and got.stage == "candidate"
        assert any("unwaived blocking hygiene findings" in f for f in got.gate_failures)

        # A QA owner waives every blocking finding while a second job runs: its model becomes
        # eligible for production (still a candidate until a QA owner signs it off).
        second = await stub.StartTraining(
            training_pb2.StartTrainingRequest(product=product, dataset_version=version.version)
        )
        assert not second.production_eligible
        qa = stack.mint(f"qa_owner@*/{product}", subject="quinn")
        async with grpc.aio.insecure_channel(
            stack.settings.grpc_target("training"), interceptors=bearer_interceptors(lambda: qa)
        ) as qa_channel:
            report = await _stub(qa_channel).GetDatasetReport(
                training_pb2.GetDatasetReportRequest(version=version.version)
            )
            for f in json.loads(report.report_json)["findings"]:
                if f["severity"] == "blocking":
                    await _stub(qa_channel).WaiveDatasetFinding(training_pb2.WaiveDatasetFindingRequest(
                        version=version.version, kind=f["kind"], reason="planted on purpose",
                    ))  # fmt: skip
        got = await _register_fake_result(svc, stub, second.job_id, f"{product}-m2", version.version)
        assert got.state == "succeeded" and got.stage == "candidate" and not list(got.gate_failures)


async def _register_fake_result(
    svc: RunningService[Any], stub: Any, job_id: str, model_version: str, dataset_version: str
) -> Any:
    """A worker's result stored on the job row, registered as the runner would."""
    async with _db(svc).connection() as conn, conn.transaction():
        await conn.execute("UPDATE jobs SET state = 'running' WHERE job_id = %s", (job_id,))
        await job_repo.set_result(conn, job_id, {
            "model_version": model_version, "metrics": {"defect_recall": 1.0, "false_reject_rate": 0.0},
            "taxonomy_version": "", "dataset_version": dataset_version,
            "artifact": {"bucket": "models", "key": f"x/{model_version}.tar.gz", "sha256": "0" * 64,
                         "size_bytes": 1},
        })  # fmt: skip
    await svc.app.register_result(await svc.app.get_run(job_id))
    return await stub.GetTrainingJob(training_pb2.GetTrainingJobRequest(job_id=job_id))


async def test_cli_follows_a_service_job(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`linesight train --version NAME` queues the job in the running service and follows it."""
    from linesight.cli.main import main
    from linesight.common.embedded.config import settings_env

    product = f"cli{uuid.uuid4().hex[:6]}"
    _synth(stack.root / "cli-set", ("scratch",), seed=4)
    for key, value in settings_env(stack.settings).items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "job.json"
    async with service_running("training", _setup(), settings=stack.settings):
        code = await asyncio.to_thread(
            main, ["train", "--version", "cli-set", "--product", product, "--json", str(out)]
        )
    err = capsys.readouterr().err
    assert code == 0, err
    assert "[train] job" in err and "queued" in err and "[train] succeeded" in err  # stage lines, no TTY
    result = json.loads(out.read_text())
    assert result["model_version"] and result["stage"] in ("production", "candidate")
