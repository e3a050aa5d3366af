"""Job queue and progress of training jobs run by worker processes (`jobs` + `job_runs`); the
caller owns the transaction except where a function says it claims a row."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

ACTIVE = ("queued", "running")
FINISHED = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class JobSpec:
    """What a job asks for (written once, at StartTraining)."""

    job_id: str
    product: str
    dataset: str = ""  # a folder under the datasets root ('' = the version or the labels)
    mode: str = "full"
    dataset_version: str = ""
    base_model: str = ""
    options: dict[str, Any] | None = None
    requested_by: str = ""
    production_eligible: bool = True
    ineligible_reason: str = ""


@dataclass(frozen=True)
class JobRun:
    """A job's request, state and progress (one row of `jobs` joined with `job_runs`)."""

    job_id: str
    product: str
    dataset: str
    state: str
    model_version: str
    metrics: dict[str, float]
    error: str
    created_at: datetime
    updated_at: datetime
    mode: str
    dataset_version: str
    base_model: str
    options: dict[str, Any]
    requested_by: str
    production_eligible: bool
    ineligible_reason: str
    stage: str
    percent: float
    eta_seconds: float | None
    message: str
    worker: str
    attempts: int
    heartbeat_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    cancelled_by: str
    result: dict[str, Any] | None
    heartbeat_age_s: float | None


_SELECT = (
    "SELECT j.job_id, j.product, j.dataset, j.state, j.model_version, j.metrics, j.error, j.created_at, "
    "j.updated_at, coalesce(r.mode, 'full') AS mode, coalesce(r.dataset_version, '') AS dataset_version, "
    "coalesce(r.base_model, '') AS base_model, coalesce(r.options, '{}'::jsonb) AS options, "
    "coalesce(r.requested_by, '') AS requested_by, "
    "coalesce(r.production_eligible, true) AS production_eligible, "
    "coalesce(r.ineligible_reason, '') AS ineligible_reason, coalesce(r.stage, '') AS stage, "
    "coalesce(r.percent, 0)::float8 AS percent, r.eta_seconds::float8 AS eta_seconds, "
    "coalesce(r.message, '') AS message, coalesce(r.worker, '') AS worker, "
    "coalesce(r.attempts, 0) AS attempts, "
    "r.heartbeat_at, r.started_at, r.finished_at, coalesce(r.cancelled_by, '') AS cancelled_by, r.result, "
    "extract(epoch FROM now() - r.heartbeat_at)::float8 AS heartbeat_age_s "
    "FROM jobs j LEFT JOIN job_runs r ON r.job_id = j.job_id "
)


async def create(conn: AsyncConnection[Any], spec: JobSpec) -> None:
    await conn.execute(
        "INSERT INTO jobs (job_id, product, dataset, state) VALUES (%s, %s, %s, 'queued')",
        (spec.job_id, spec.product, spec.dataset),
    )
    await conn.execute(
        "INSERT INTO job_runs (job_id, mode, dataset_version, base_model, options, requested_by, "
        "production_eligible, ineligible_reason, stage) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'queued')",
        (spec.job_id, spec.mode, spec.dataset_version, spec.base_model, Jsonb(spec.options or {}),
         spec.requested_by, spec.production_eligible, spec.ineligible_reason),
    )  # fmt: skip


async def get(conn: AsyncConnection[Any], job_id: str) -> JobRun | None:
    async with conn.cursor(row_factory=class_row(JobRun)) as cur:
        await cur.execute(_SELECT + "WHERE j.job_id = %s", (job_id,))
        return await cur.fetchone()


async def list_jobs(conn: AsyncConnection[Any], states: tuple[str, ...]) -> list[JobRun]:
    async with conn.cursor(row_factory=class_row(JobRun)) as cur:
        await cur.execute(_SELECT + "WHERE j.state = ANY(%s) ORDER BY j.created_at", (list(states),))
        return await cur.fetchall()


async def claim_next(conn: AsyncConnection[Any], worker: str) -> JobRun | None:
    """Mark the oldest queued job running for `worker` (skipping rows another service instance
    is claiming); None when the queue is empty. Run it in a transaction."""
    cur = await conn.execute(
        "SELECT job_id FROM jobs WHERE state = 'queued' ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED"
    )
    row = await cur.fetchone()
    if row is None:
        return None
    job_id = row[0]
    await conn.execute("UPDATE jobs SET state = 'running', updated_at = now() WHERE job_id = %s", (job_id,))
    await conn.execute(
        "INSERT INTO job_runs (job_id) VALUES (%s) ON CONFLICT (job_id) DO NOTHING", (job_id,)
    )  # a job queued before job_runs existed
    await conn.execute(
        "UPDATE job_runs SET worker = %s, attempts = attempts + 1, heartbeat_at = now(), "
        "started_at = now(), stage = 'starting', percent = 0, eta_seconds = NULL, result = NULL "
        "WHERE job_id = %s",
        (worker, job_id),
    )
    return await get(conn, job_id)


async def start_in_process(conn: AsyncConnection[Any], job_id: str, worker: str) -> None:
    """A job run by the process that created it (`linesight train`): running at once."""
    await conn.execute("UPDATE jobs SET state = 'running', updated_at = now() WHERE job_id = %s", (job_id,))
    await conn.execute(
        "UPDATE job_runs SET worker = %s, attempts = 1, heartbeat_at = now(), started_at = now(), "
        "stage = 'starting' WHERE job_id = %s",
        (worker, job_id),
    )


async def set_worker(conn: AsyncConnection[Any], job_id: str, worker: str) -> None:
    await conn.execute(
        "UPDATE job_runs SET worker = %s, heartbeat_at = now() WHERE job_id = %s", (worker, job_id)
    )


async def progress(
    conn: AsyncConnection[Any], job_id: str, stage: str, percent: float, eta_s: float | None, message: str
) -> str:
    """Record progress and the worker's heartbeat; returns the job's state (a worker that reads
    `cancelled` stops)."""
    await conn.execute(
        "UPDATE job_runs SET stage = %s, percent = %s, eta_seconds = %s, message = %s, heartbeat_at = now() "
        "WHERE job_id = %s AND (SELECT state FROM jobs WHERE job_id = %s) = 'running'",
        (stage, percent, eta_s, message[:500], job_id, job_id),
    )
    cur = await conn.execute("SELECT state FROM jobs WHERE job_id = %s", (job_id,))
    row = await cur.fetchone()
    return str(row[0]) if row else "missing"


async def set_result(conn: AsyncConnection[Any], job_id: str, result: dict[str, Any]) -> None:
    await conn.execute(
        "UPDATE job_runs SET result = %s, stage = 'register', percent = 99, heartbeat_at = now() "
        "WHERE job_id = %s",
        (Jsonb(result), job_id),
    )


async def finish(
    conn: AsyncConnection[Any],
    job_id: str,
    state: str,
    *,
    error: str = "",
    model_version: str = "",
    metrics: dict[str, float] | None = None,
    cancelled_by: str = "",
) -> bool:
    """Move an active job to a final state; False (nothing changed) when it already had one."""
    cur = await conn.execute(
        "UPDATE jobs SET state = %s, error = %s, model_version = %s, metrics = %s::jsonb, updated_at = now() "
        "WHERE job_id = %s AND state IN ('queued', 'running')",
        (state, error[:2000], model_version, json.dumps(metrics or {}), job_id),
    )
    if cur.rowcount == 0:
        return False
    await conn.execute(
        "UPDATE job_runs SET finished_at = now(), stage = %s, percent = CASE WHEN %s = 'succeeded' "
        "THEN 100 ELSE percent END, eta_seconds = 0, cancelled_by = %s WHERE job_id = %s",
        (state, state, cancelled_by, job_id),
    )
    return True


async def requeue(conn: AsyncConnection[Any], job_id: str, reason: str) -> bool:
    """A running job whose worker died goes back to the queue, the reason kept in `error`."""
    cur = await conn.execute(
        "UPDATE jobs SET state = 'queued', error = %s, updated_at = now() "
        "WHERE job_id = %s AND state = 'running'",
        (reason[:2000], job_id),
    )
    if cur.rowcount:
        await conn.execute(
            "UPDATE job_runs SET stage = 'queued', worker = '', percent = 0, eta_seconds = NULL, "
            "message = %s WHERE job_id = %s",
            (reason[:500], job_id),
        )
    return bool(cur.rowcount)


async def labels_since_last_model(conn: AsyncConnection[Any], product: str) -> tuple[int, float]:
    """(confirmed labels of `product` received since its newest model or job, age in seconds of
    the oldest of them; 0.0 when there are none)."""
    cur = await conn.execute(
        "WITH since AS (SELECT greatest("
        "  (SELECT max(created_at) FROM models WHERE product = %s),"
        "  (SELECT max(created_at) FROM jobs WHERE product = %s), '-infinity'::timestamptz) AS t) "
        "SELECT count(*), coalesce(extract(epoch FROM now() - min(received_at)), 0)::float8 "
        "FROM confirmed_labels, since WHERE product = %s AND received_at > since.t",
        (product, product, product),
    )
    row = await cur.fetchone()
    return (int(row[0]), float(row[1])) if row else (0, 0.0)


async def products_with_new_labels(conn: AsyncConnection[Any]) -> list[str]:
    cur = await conn.execute("SELECT DISTINCT product FROM confirmed_labels WHERE product <> ''")
    return [str(r[0]) for r in await cur.fetchall()]


async def has_active_job(conn: AsyncConnection[Any], product: str) -> bool:
    cur = await conn.execute(
        "SELECT 1 FROM jobs WHERE product = %s AND state IN ('queued', 'running') LIMIT 1", (product,)
    )
    return await cur.fetchone() is not None


async def newest_model(conn: AsyncConnection[Any], product: str) -> str:
    """The product's production model, else its newest one ('' = none)."""
    cur = await conn.execute(
        "SELECT model_version FROM models WHERE product = %s AND stage <> 'retired' "
        "ORDER BY (stage = 'production') DESC, created_at DESC LIMIT 1",
        (product,),
    )
    row = await cur.fetchone()
    return str(row[0]) if row else ""
