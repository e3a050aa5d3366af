"""The chart's cluster mode of training jobs (training.jobs.runner: kubernetes): the training
service gets its own ServiceAccount with a Role for Jobs only, a projected API token in the
training container alone, and the worker Job template; the Job the service builds from that
template (linesight.training.kube.job_manifest) validates against the Kubernetes schema and is
as hardened as every other pod. The default (process) renders none of it."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from linesight.training.app.job_config import JobsConfig
from linesight.training.kube import JOB_LABEL, job_manifest
from tests.unit.deploy.test_charts import (
    KUBE_VERSIONS,
    KV_PROBLEM,
    _by_kind,
    _env,
    _pod_spec,
    _skip,
    _tools,  # noqa: F401 - the module's skip-if-no-helm fixture
    render,
)

CLUSTER = {"training": {"jobs": {"runner": "kubernetes", "maxWorkers": 3, "heartbeatTimeoutS": 900}}}
SA = "ls-linesight-training-jobs"


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return render(CLUSTER)


def _template(docs: list[dict[str, Any]]) -> dict[str, Any]:
    data = _by_kind(docs, "ConfigMap")["ls-linesight-training-job"]["data"]
    template: dict[str, Any] = yaml.safe_load(data["job.yaml"])
    return template


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
def test_rendered_and_service_built_manifests_validate(docs: list[dict[str, Any]], kube: str) -> None:
    if KV_PROBLEM:
        _skip(KV_PROBLEM)
    import kubernetes_validate

    job = job_manifest(_template(docs), "job-20261202-0001")
    for doc in [*docs, _template(docs), job]:
        try:
            kubernetes_validate.validate(doc, kube, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} invalid for {kube}: {exc.message}")


def test_service_may_manage_jobs_and_nothing_else(docs: list[dict[str, Any]]) -> None:
    role = _by_kind(docs, "Role")[SA]
    assert role["rules"] == [
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "get", "delete"]}
    ]
    binding = _by_kind(docs, "RoleBinding")[SA]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": SA}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": SA, "namespace": "linesight"}]
    assert _by_kind(docs, "ServiceAccount")[SA]["automountServiceAccountToken"] is False
    assert not _by_kind(docs, "ClusterRole") and not _by_kind(docs, "ClusterRoleBinding")


def test_only_the_training_container_gets_an_api_token(
    docs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for doc in docs:
        if doc["kind"] not in {"Deployment", "DaemonSet", "StatefulSet", "Job", "CronJob"}:
            continue
        pod = _pod_spec(doc)
        assert pod["automountServiceAccountToken"] is False, doc["metadata"]["name"]
        projected = [v for v in pod.get("volumes", []) if "projected" in v]
        if doc["metadata"]["name"] == "ls-linesight-training":
            assert pod["serviceAccountName"] == SA
            (volume,) = projected
            sources = volume["projected"]["sources"]
            assert {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}} in sources
            container = pod["containers"][0]
            mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
            assert mounts["/var/run/secrets/kubernetes.io/serviceaccount"]["readOnly"] is True
            assert mounts["/etc/linesight/training-job"]["name"] == "training-job"
            for name, value in _env(container).items():  # what the service reads from its environment
                if name.startswith("LINESIGHT_TRAINING_"):
                    monkeypatch.setenv(name, value)
            config = JobsConfig()
            assert (config.runner, config.max_workers, config.heartbeat_timeout_s) == ("kubernetes", 3, 900.0)
            assert config.kube_job_template.parent.as_posix() in mounts
            assert config.kube_account_dir.as_posix() in mounts
        else:
            assert not projected and pod["serviceAccountName"] != SA, doc["metadata"]["name"]


def test_worker_job_runs_the_worker_hardened_and_is_never_retried(docs: list[dict[str, Any]]) -> None:
    template = _template(docs)
    job = job_manifest(template, "job-7")
    pod = _pod_spec(job)
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", "linesight.training.worker"]
    assert container["args"] == ["job-7"]
    assert job["spec"]["backoffLimit"] == 0 and pod["restartPolicy"] == "Never"
    assert job["spec"]["activeDeadlineSeconds"] == 7200 and job["spec"]["ttlSecondsAfterFinished"] == 3600
    assert pod["serviceAccountName"] == "ls-linesight" and pod["automountServiceAccountToken"] is False
    assert job["spec"]["template"]["metadata"]["labels"][JOB_LABEL] == "job-7"
    assert job["metadata"]["namespace"] == "linesight"
    # settings from the same ConfigMap and Secret as the service; no probes or ports (a batch pod)
    assert {"configMapRef": {"name": "ls-linesight-settings"}} in container["envFrom"]
    assert "ports" not in container and "livenessProbe" not in container
    assert container["resources"] == {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "8Gi"}}
    sc, pod_sc = container["securityContext"], pod["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])


def test_process_mode_is_the_default_and_renders_no_cluster_access() -> None:
    docs = render()
    assert not _by_kind(docs, "Role") and not _by_kind(docs, "RoleBinding")
    assert "ls-linesight-training-job" not in _by_kind(docs, "ConfigMap")
    pod = _pod_spec(_by_kind(docs, "Deployment")["ls-linesight-training"])
    assert pod["serviceAccountName"] == "ls-linesight"
    assert "LINESIGHT_TRAINING_RUNNER" not in _env(pod["containers"][0])
    assert JobsConfig().runner == "process"
