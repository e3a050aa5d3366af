"""The training service's Kubernetes mode against a stand-in API server (fake_kube.py): the Job
it creates from a template is schema-valid, named per job and never retried by Kubernetes; its
status reads as a worker's exit code; cancel deletes it; a create after a restart adopts the
existing Job; credentials and a broken template fail clearly."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from linesight.training.app.job_config import JobsConfig
from linesight.training.app.runner import detached, where
from linesight.training.kube import (
    EXIT_DELETED,
    JOB_LABEL,
    KubeAccess,
    KubeClient,
    KubeJobs,
    KubernetesError,
    job_manifest,
    job_name,
)
from tests.unit.training.fake_kube import FakeKube

TEMPLATE: dict[str, Any] = {
    "apiVersion": "batch/v1",
    "kind": "Job",
    "metadata": {"name": "ls-linesight-train-job", "namespace": "linesight", "labels": {"a": "b"}},
    "spec": {
        "backoffLimit": 3,
        "template": {
            "metadata": {"labels": {"a": "b"}},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "training",
                        "image": "reg/linesight-training:1",
                        "command": ["python", "-m", "linesight.training.worker"],
                    }
                ],
            },
        },
    },
}


def _access(tmp_path: Path, server: str) -> KubeAccess:
    account = tmp_path / "sa"
    account.mkdir(exist_ok=True)
    (account / "token").write_text("tok-1\n")
    (account / "namespace").write_text("linesight")
    return KubeAccess.resolve(account, server=server)


def test_manifest_is_named_per_job_and_carries_the_job_id() -> None:
    job = job_manifest(TEMPLATE, "job-2026-12-02_ABC/1")
    name = job["metadata"]["name"]
    assert name.startswith("ls-linesight-train-job-job-2026-12-02-abc-1-") and len(name) <= 63
    assert job["spec"]["backoffLimit"] == 0  # the runner requeues; Kubernetes must not retry
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["job-2026-12-02_ABC/1"]
    assert job["metadata"]["annotations"][JOB_LABEL] == "job-2026-12-02_ABC/1"
    assert job["spec"]["template"]["metadata"]["labels"][JOB_LABEL] == "job-2026-12-02_ABC-1"
    assert TEMPLATE["spec"]["backoffLimit"] == 3 and "args" not in TEMPLATE["spec"]["template"]["spec"][
        "containers"][0]  # fmt: skip  # the template itself is untouched
    assert job_name("p", "x" * 200) != job_name("p", "x" * 199)  # long ids stay distinct
    assert all(len(job_name("ls-linesight-train-job", "j" * n)) <= 63 for n in (1, 50, 300))
    with pytest.raises(KubernetesError, match="not a batch/v1 Job"):
        job_manifest({**TEMPLATE, "kind": "Pod"}, "j")


def test_credentials_are_required(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(KubernetesError, match="KUBERNETES_SERVICE_HOST"):
        KubeAccess.resolve(tmp_path)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    with pytest.raises(KubernetesError, match="no service-account token"):
        KubeAccess.resolve(tmp_path)
    (tmp_path / "token").write_text("t")
    (tmp_path / "namespace").write_text("plant-a\n")
    access = KubeAccess.resolve(tmp_path)
    assert (access.server, access.namespace, access.ca_file) == ("https://10.0.0.1:443", "plant-a", None)


def test_jobs_config_reads_the_chart_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LINESIGHT_TRAINING_RUNNER", "kubernetes")
    monkeypatch.setenv("LINESIGHT_TRAINING_MAX_WORKERS", "2")
    assert (JobsConfig().runner, JobsConfig().max_workers) == ("kubernetes", 2)
    monkeypatch.setenv("LINESIGHT_TRAINING_RUNNER", "thread")
    with pytest.raises(ValueError, match="runner"):
        JobsConfig()


async def test_jobs_are_created_followed_and_deleted(tmp_path: Path) -> None:
    kube = await FakeKube(token="tok-1", namespace="linesight").start()
    spawn = KubeJobs(KubeClient(_access(tmp_path, kube.url)), TEMPLATE, poll_s=0.05)
    try:
        ok = await spawn("job-ok")
        assert detached(ok) and where(ok) == f"Kubernetes Job {ok.name}" and ok.returncode is None
        assert kube.created[0]["spec"]["template"]["spec"]["containers"][0]["args"] == ["job-ok"]
        kube.finish(ok.name, succeeded=True)
        assert await asyncio.wait_for(ok.wait(), 5) == 0

        bad = await spawn("job-bad")
        kube.finish(bad.name, succeeded=False)
        assert await asyncio.wait_for(bad.wait(), 5) == 1

        # The same job dispatched again: a running Job is adopted (a service restart), a finished
        # one (an earlier attempt of a requeued job) is replaced by a new attempt.
        running = await spawn("job-run")
        again = await spawn("job-run")
        assert again.name == running.name and len(kube.created) == 3 and again.returncode is None
        retry = await spawn("job-bad")
        assert retry.name == bad.name and kube.deleted == [bad.name] and len(kube.created) == 4
        assert kube.jobs[bad.name]["status"] == {"active": 1}

        cancelled = await spawn("job-cancel")
        waiting = asyncio.ensure_future(cancelled.wait())
        cancelled.terminate()
        assert await asyncio.wait_for(waiting, 5) == EXIT_DELETED
        assert kube.deleted[-1] == cancelled.name and cancelled.name not in kube.jobs
    finally:
        await spawn.close()
        await kube.stop()


async def test_refusals_of_the_api_are_named(tmp_path: Path) -> None:
    kube = await FakeKube(token="another-token", namespace="linesight").start()
    spawn = KubeJobs(KubeClient(_access(tmp_path, kube.url)), TEMPLATE, poll_s=0.05)
    try:
        with pytest.raises(KubernetesError, match="HTTP 401: Unauthorized"):
            await spawn("job-1")
        kube.token = "tok-1"
        broken = {**TEMPLATE, "spec": {**TEMPLATE["spec"], "parallelism": "two"}}
        with pytest.raises(KubernetesError, match="HTTP 422"):
            await KubeJobs(spawn.client, broken)("job-2")
    finally:
        await spawn.close()
        await kube.stop()
