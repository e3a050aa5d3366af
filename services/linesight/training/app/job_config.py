"""Training jobs' own settings (`LINESIGHT_TRAINING_*`): workers, liveness, and the automatic
incremental update from confirmed labels. Kept apart from the core Settings."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class JobsConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LINESIGHT_TRAINING_", extra="forbid", frozen=True)

    # Where a job's worker runs: a local process (the default; `linesight up`, one host), or a
    # Kubernetes Job per training job created from the chart's template (training/kube.py).
    runner: Literal["process", "kubernetes"] = "process"
    # Kubernetes mode: the Job template the chart mounts, the service account's token directory,
    # the namespace and API server (empty: the pod's own) and how often a Job's status is read.
    kube_job_template: Path = Path("/etc/linesight/training-job/job.yaml")
    kube_account_dir: Path = Path("/var/run/secrets/kubernetes.io/serviceaccount")
    kube_namespace: str = ""
    kube_api_server: str = ""
    kube_poll_s: float = Field(default=5.0, gt=0.0, le=300.0)
    # Workers at once: a fit uses every core of its host, so one by default (in Kubernetes each
    # Job has its own pod, so a cluster may allow more).
    max_workers: int = Field(default=1, ge=1, le=16)
    # A running job whose worker has not written a heartbeat for this long is dead.
    heartbeat_timeout_s: float = Field(default=60.0, gt=0.0)
    # A job whose worker died is requeued until it has been started this many times, then failed.
    max_attempts: int = Field(default=2, ge=1, le=10)
    # How often the service looks at the queue and at running jobs' progress.
    poll_s: float = Field(default=0.5, gt=0.0, le=60.0)
    # Automatic incremental update of a product's model from its confirmed labels: off switch,
    # after this many new labels, or after this long with at least one.
    auto_update: bool = True
    auto_update_labels: int = Field(default=20, ge=1)
    auto_update_after_s: float = Field(default=3600.0, gt=0.0)
    auto_check_s: float = Field(default=60.0, gt=0.0)
    # A dataset folder uploaded by a caller (UploadDataset): the largest file, the whole upload
    # and the number of files the service stages on its disk before importing them.
    upload_max_file_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    upload_max_total_bytes: int = Field(default=8 * 1024 * 1024 * 1024, ge=1)
    upload_max_files: int = Field(default=200_000, ge=1)
