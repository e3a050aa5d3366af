"""Training workers as Kubernetes Jobs: the cluster mode of the job runner (runner.py).

The service creates one batch/v1 Job per training job through the Kubernetes API, from the Job
template the Helm chart renders into a ConfigMap (`training.jobs.runner: kubernetes`): the
training image, the settings ConfigMap and Secret, the hardened pod, the resources of
`training.run`. The service adds only the name, the job id argument and labels, so what a worker
pod is allowed to be is decided by the chart (and validated there), not by code. The worker is
the same entry point as locally (`python -m linesight.training.worker JOB_ID`).

Why the API over HTTP and not the official `kubernetes` client: the service needs four calls
(create, read, delete Jobs) and already ships httpx; the client would add a large dependency
for them. Credentials are the pod's service-account token, CA and namespace (the chart mounts
them as a projected volume into the training container only, and binds a Role that allows
exactly these verbs on Jobs in the release's namespace).

Liveness stays the heartbeat in the job row (runner.py), so the Job's own status only speeds
up noticing an exit, and a Job outlives a service restart: the next service instance adopts it
by its heartbeat instead of killing and requeueing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
JOB_LABEL = "linesight.io/training-job"
EXIT_DELETED = -15  # what a terminated local worker reports; a deleted Job reads the same
MAX_NAME = 63


class KubernetesError(RuntimeError):
    """The Kubernetes API refused or failed a call (status and message included)."""


@dataclass(frozen=True)
class KubeAccess:
    """Where the API is and how to authenticate: in a pod, from its service account."""

    server: str
    namespace: str
    token_file: Path
    ca_file: Path | None

    @classmethod
    def resolve(
        cls, account_dir: Path = SERVICE_ACCOUNT_DIR, *, namespace: str = "", server: str = ""
    ) -> KubeAccess:
        """In a pod: the API server from KUBERNETES_SERVICE_HOST/PORT and the service account's
        token, CA and namespace under `account_dir`. `server` / `namespace` override them (a
        service run outside the cluster with a token directory of its own)."""
        if not server:
            host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
            port = os.environ.get("KUBERNETES_SERVICE_PORT", "") or "443"
            if not host:
                raise KubernetesError(
                    "LINESIGHT_TRAINING_RUNNER=kubernetes needs the Kubernetes API: no "
                    "KUBERNETES_SERVICE_HOST (not in a pod) and no LINESIGHT_TRAINING_KUBE_API_SERVER"
                )
            server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
        token = account_dir / "token"
        if not token.is_file():
            raise KubernetesError(
                f"no service-account token at {token}: the chart mounts it when "
                "training.jobs.runner is kubernetes"
            )
        ns_file = account_dir / "namespace"
        ns = namespace or (ns_file.read_text().strip() if ns_file.is_file() else "")
        if not ns:
            raise KubernetesError(
                f"no namespace: none at {ns_file} and LINESIGHT_TRAINING_KUBE_NAMESPACE unset"
            )
        ca = account_dir / "ca.crt"
        return cls(server.rstrip("/"), ns, token, ca if ca.is_file() else None)


def job_name(prefix: str, job_id: str) -> str:
    """A DNS-1123 name unique per training job: the prefix, the id's readable part, a hash."""
    digest = hashlib.sha256(job_id.encode()).hexdigest()[:8]
    readable = re.sub(r"[^a-z0-9-]+", "-", job_id.lower()).strip("-")
    head = f"{prefix}-{readable}"[: MAX_NAME - len(digest) - 1].rstrip("-")
    return f"{head}-{digest}"


def job_manifest(template: dict[str, Any], job_id: str) -> dict[str, Any]:
    """The Job for `job_id` from the chart's template: named, labelled, its worker container given
    the job id as its last argument. Never retried by Kubernetes (backoffLimit 0): the runner
    requeues a job whose worker died, so a Kubernetes retry would run it twice."""
    if template.get("kind") != "Job" or template.get("apiVersion") != "batch/v1":
        raise KubernetesError("the training job template is not a batch/v1 Job")
    job = copy.deepcopy(template)
    meta = job.setdefault("metadata", {})
    prefix = meta.pop("generateName", "") or meta.get("name", "") or "linesight-train"
    meta["name"] = job_name(prefix.rstrip("-"), job_id)
    meta.setdefault("labels", {})[JOB_LABEL] = _label_value(job_id)
    meta.setdefault("annotations", {})[JOB_LABEL] = job_id
    spec = job.setdefault("spec", {})
    spec["backoffLimit"] = 0
    pod = spec.setdefault("template", {})
    pod.setdefault("metadata", {}).setdefault("labels", {})[JOB_LABEL] = _label_value(job_id)
    containers = pod.get("spec", {}).get("containers") or []
    if not containers:
        raise KubernetesError("the training job template has no container")
    worker = containers[0]
    worker["args"] = [*worker.get("args", []), job_id]
    return job


def _label_value(job_id: str) -> str:
    value = re.sub(r"[^A-Za-z0-9_.-]+", "-", job_id)[:MAX_NAME].strip("-_.")
    return value or hashlib.sha256(job_id.encode()).hexdigest()[:16]


class KubeClient:
    """The four Job calls the runner needs, over the API server's REST interface."""

    def __init__(self, access: KubeAccess, *, timeout_s: float = 10.0) -> None:
        self.access = access
        verify: Any = str(access.ca_file) if access.ca_file is not None else True
        self._http = httpx.AsyncClient(base_url=access.server, verify=verify, timeout=timeout_s)

    def _headers(self) -> dict[str, str]:
        # Read per call: the kubelet rotates projected tokens.
        return {"Authorization": f"Bearer {self.access.token_file.read_text().strip()}"}

    def _jobs(self, name: str = "") -> str:
        path = f"/apis/batch/v1/namespaces/{self.access.namespace}/jobs"
        return f"{path}/{name}" if name else path

    async def _call(self, method: str, url: str, **kw: Any) -> httpx.Response:
        try:
            reply = await self._http.request(method, url, headers=self._headers(), **kw)
        except httpx.HTTPError as exc:
            raise KubernetesError(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
        return reply

    async def create_job(self, manifest: dict[str, Any], *, retries: int = 20) -> dict[str, Any]:
        """Create the Job. Its name is the training job's, so one may exist already: still running
        (created before a restart of ours) it is the same attempt and is kept; finished (an
        earlier attempt of a requeued job) it is deleted and created again."""
        name = manifest["metadata"]["name"]
        for _ in range(retries):
            reply = await self._call("POST", self._jobs(), json=manifest)
            if reply.status_code != 409:
                break
            existing = await self.read_job(name)
            if existing is not None and exit_code(existing) is None:
                return existing
            if existing is not None:
                await self.delete_job(name, grace_s=0)
            await asyncio.sleep(0.5)  # until the deletion has gone through
        if reply.status_code >= 300:
            raise KubernetesError(f"creating Job {name}: {_why(reply)}")
        created: dict[str, Any] = reply.json()
        return created

    async def read_job(self, name: str) -> dict[str, Any] | None:
        reply = await self._call("GET", self._jobs(name))
        if reply.status_code == 404:
            return None
        if reply.status_code >= 300:
            raise KubernetesError(f"reading Job {name}: {_why(reply)}")
        found: dict[str, Any] = reply.json()
        return found

    async def delete_job(self, name: str, *, grace_s: int | None = None) -> None:
        body: dict[str, Any] = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "propagationPolicy": "Background",
        }
        if grace_s is not None:
            body["gracePeriodSeconds"] = grace_s
        reply = await self._call("DELETE", self._jobs(name), json=body)
        if reply.status_code not in (200, 202, 404):
            raise KubernetesError(f"deleting Job {name}: {_why(reply)}")

    async def close(self) -> None:
        await self._http.aclose()


def _why(reply: httpx.Response) -> str:
    try:
        message = str(reply.json().get("message", ""))
    except ValueError:
        message = reply.text[:300]
    return f"HTTP {reply.status_code}: {message}"


def exit_code(job: dict[str, Any] | None) -> int | None:
    """A Job's status as a process's return code: None while it runs, 0 succeeded, 1 failed,
    EXIT_DELETED when it is gone."""
    if job is None:
        return EXIT_DELETED
    status = job.get("status") or {}
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    if status.get("succeeded") or conditions.get("Complete") == "True":
        return 0
    if status.get("failed") or conditions.get("Failed") == "True":
        return 1
    return None


class KubeWorker:
    """A worker Job seen as the runner's WorkerProcess. `detached`: the Job keeps running when
    the service stops (the next instance adopts it by its heartbeat)."""

    detached = True

    def __init__(self, client: KubeClient, name: str, *, poll_s: float) -> None:
        self.client = client
        self.name = name
        self.poll_s = poll_s
        self.returncode: int | None = None
        self._poller: asyncio.Task[int] | None = None

    @property
    def pid(self) -> int:
        return 0  # no process here; `where` names the Job

    @property
    def where(self) -> str:
        return f"Kubernetes Job {self.name}"

    async def _poll(self) -> int:
        while self.returncode is None:
            try:
                self.returncode = exit_code(await self.client.read_job(self.name))
            except KubernetesError as exc:  # an API blip: the heartbeat still judges liveness
                log.warning("training Job %s: %s", self.name, exc)
            if self.returncode is None:
                await asyncio.sleep(self.poll_s)
        return self.returncode

    async def wait(self) -> int:
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll(), name=f"kube-job-{self.name}")
        return await asyncio.shield(self._poller)

    def stop_following(self) -> None:
        """The service stops: stop reading the Job's status (the Job itself keeps running)."""
        if self._poller is not None:
            self._poller.cancel()

    def terminate(self) -> None:
        self._delete(None)

    def kill(self) -> None:
        self._delete(0)

    def _delete(self, grace_s: int | None) -> None:
        async def delete() -> None:
            try:
                await self.client.delete_job(self.name, grace_s=grace_s)
            except KubernetesError as exc:
                log.error("training Job %s not deleted: %s", self.name, exc)
                return
            if self.returncode is None:
                self.returncode = EXIT_DELETED

        task = asyncio.get_running_loop().create_task(delete(), name=f"kube-delete-{self.name}")
        _background.add(task)
        task.add_done_callback(_background.discard)


_background: set[asyncio.Task[None]] = set()


class KubeJobs:
    """The runner's `spawn` in cluster mode: one Kubernetes Job per training job."""

    def __init__(self, client: KubeClient, template: dict[str, Any], *, poll_s: float = 2.0) -> None:
        job_manifest(template, "check")  # a broken template fails at start, not at the first job
        self.client = client
        self.template = template
        self.poll_s = poll_s
        self._workers: list[KubeWorker] = []

    @classmethod
    def from_files(cls, template_file: Path, access: KubeAccess, *, poll_s: float = 2.0) -> KubeJobs:
        try:
            template = yaml.safe_load(template_file.read_text())
        except OSError as exc:
            raise KubernetesError(f"training job template {template_file}: {exc}") from exc
        if not isinstance(template, dict):
            raise KubernetesError(f"training job template {template_file} is not a YAML mapping")
        return cls(KubeClient(access), template, poll_s=poll_s)

    async def __call__(self, job_id: str) -> KubeWorker:
        manifest = job_manifest(self.template, job_id)
        created = await self.client.create_job(manifest)
        name = str(created.get("metadata", {}).get("name") or manifest["metadata"]["name"])
        log.info("training job %s: Kubernetes Job %s created", job_id, name)
        worker = KubeWorker(self.client, name, poll_s=self.poll_s)
        self._workers = [w for w in self._workers if w.returncode is None] + [worker]
        return worker

    async def close(self) -> None:
        for w in self._workers:
            w.stop_following()
        with contextlib.suppress(Exception):
            await self.client.close()
