"""The training service in cluster mode (training.jobs.runner: kubernetes) against real NATS,
PostgreSQL and S3, with a stand-in Kubernetes API whose "kubelet" runs each Job's container
command as a local process (tests/unit/training/fake_kube.py; no cluster exists here): a queued
job becomes a schema-valid Job running the worker entry point with the job id, the worker's
model is registered, and cancelling deletes the Job."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from linesight.common.embedded.config import child_env
from linesight.common.identity.grpc import bearer_interceptors
from linesight.common.pb import training_pb2, training_pb2_grpc
from linesight.common.service import service_running
from linesight.common.settings import Settings
from linesight.common.storage import ObjectStore, S3Config
from linesight.training.app.job_config import JobsConfig
from linesight.training.app.trainer import ReleaseGate, TrainingOptions
from linesight.training.service import TrainingServiceOptions, make_setup
from tests.unit.training.fake_kube import FakeKube

pytestmark = pytest.mark.integration

Cluster = tuple[Settings, FakeKube, JobsConfig]
TEMPLATE = {
    "apiVersion": "batch/v1",
    "kind": "Job",
    "metadata": {"name": "ls-linesight-train-job", "labels": {"app.kubernetes.io/part-of": "linesight"}},
    "spec": {
        "backoffLimit": 0,
        "template": {"spec": {"restartPolicy": "Never", "containers": [
            {"name": "training", "image": "linesight-training:test",
             "command": ["python", "-m", "linesight.training.worker"]},
        ]}},
    },
}  # fmt: skip


@pytest.fixture
async def cluster(
    stack_settings: Settings, tmp_path: Path
) -> AsyncIterator[tuple[Settings, FakeKube, JobsConfig]]:
    root = tmp_path / "datasets"
    root.mkdir()
    settings = stack_settings.model_copy(update={"datasets_dir": str(root)})
    ObjectStore(S3Config.from_settings(settings)).ensure_buckets()
    account = tmp_path / "sa"
    account.mkdir()
    (account / "token").write_text("sa-token")
    (account / "namespace").write_text("linesight")
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(TEMPLATE))
    kube = await FakeKube(
        token="sa-token", namespace="linesight", run=lambda _job: child_env(settings)
    ).start()
    jobs = JobsConfig(
        runner="kubernetes", kube_job_template=tmp_path / "job.yaml", kube_account_dir=account,
        kube_api_server=kube.url, kube_poll_s=0.2, poll_s=0.2, auto_update=False,
    )  # fmt: skip
    try:
        yield settings, kube, jobs
    finally:
        await kube.stop()


def _setup(jobs: JobsConfig) -> Any:
    return make_setup(TrainingServiceOptions(
        gate=ReleaseGate(min_defect_recall=0.0, max_false_reject_rate=1.0),
        defaults=TrainingOptions(input_size=(64, 64)), consume=False, jobs=jobs,
    ))  # fmt: skip


async def _until(stub: training_pb2_grpc.TrainingServiceStub, job_id: str, states: tuple[str, ...]) -> Any:
    deadline = asyncio.get_running_loop().time() + 240
    while True:
        job = await stub.GetTrainingJob(training_pb2.GetTrainingJobRequest(job_id=job_id))
        if job.state in states:
            return job
        assert asyncio.get_running_loop().time() < deadline, f"{job.state} {job.progress_stage} {job.percent}"
        await asyncio.sleep(0.3)


async def test_jobs_run_as_kubernetes_jobs(cluster: Cluster, mint: Any) -> None:
    from linesight.vision.data.synth import generate_dataset

    settings, kube, jobs = cluster
    product = f"kube{uuid.uuid4().hex[:6]}"
    generate_dataset(Path(settings.datasets_dir) / "ds", n_good=16, per_class=6, seed=1, size=64,
                     classes=("scratch",), n_batches=2, n_stations=1)  # fmt: skip
    engineer = mint(f"engineer@*/{product}", subject="erin")
    async with (
        service_running("training", _setup(jobs), settings=settings) as svc,
        grpc.aio.insecure_channel(
            settings.grpc_target("training"), interceptors=bearer_interceptors(lambda: engineer)
        ) as channel,
    ):
        stub = training_pb2_grpc.TrainingServiceStub(channel)
        job = await stub.StartTraining(
            training_pb2.StartTrainingRequest(product=product, dataset_version="ds")
        )
        done = await _until(stub, job.job_id, ("succeeded", "failed", "cancelled"))
        assert done.state == "succeeded", done.error
        (created,) = kube.created
        container = created["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] == ["python", "-m", "linesight.training.worker"]
        assert container["args"] == [job.job_id] and created["spec"]["backoffLimit"] == 0
        run = await svc.app.get_run(job.job_id)
        assert int(run.worker.rsplit(":", 1)[1]) == kube.procs[created["metadata"]["name"]].pid
        assert done.model_version and (await svc.app.get_model(done.model_version)).product == product

        # Cancel: the Job is deleted (its pod with it), the job ends cancelled.
        slow = await stub.StartTraining(
            training_pb2.StartTrainingRequest(product=product, dataset_version="ds")
        )
        await _until(stub, slow.job_id, ("running",))
        deadline = asyncio.get_running_loop().time() + 60
        while len(kube.created) < 2:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.1)
        await stub.CancelTrainingJob(training_pb2.CancelTrainingJobRequest(job_id=slow.job_id))
        name = kube.created[1]["metadata"]["name"]
        while name not in kube.deleted:
            assert asyncio.get_running_loop().time() < deadline, kube.deleted
            await asyncio.sleep(0.1)
        assert (await _until(stub, slow.job_id, ("cancelled",))).state == "cancelled"
        proc = kube.procs[name]
        await asyncio.wait_for(proc.wait(), 30)
