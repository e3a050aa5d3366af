"""Repository for models, jobs and confirmed labels; the caller owns the transaction."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row


@dataclass(frozen=True)
class ModelRow:
    model_version: str
    product: str
    stage: str
    metrics: dict[str, float]
    taxonomy_version: str
    dataset_version: str
    artifact_bucket: str
    artifact_key: str
    artifact_sha256: str
    artifact_bytes: int = 0
    gate: dict[str, Any] | None = None


async def register_model(conn: AsyncConnection[Any], row: ModelRow) -> None:
    """Insert a model; a new production model retires the previous one of its product."""
    if row.stage == "production":
        await conn.execute(
            "UPDATE models SET stage = 'retired' WHERE product = %s AND stage = 'production'", (row.product,)
        )
    await conn.execute(
        "INSERT INTO models (model_version, product, stage, metrics, gate, taxonomy_version, "
        "dataset_version, artifact_bucket, artifact_key, artifact_sha256, artifact_bytes) "
        "VALUES (%s, %s, %s, %s::jsonb, %s::jsonb, %s, %s, %s, %s, %s, %s)",
        (row.model_version, row.product, row.stage, json.dumps(row.metrics), json.dumps(row.gate or {}),
         row.taxonomy_version, row.dataset_version, row.artifact_bucket, row.artifact_key,
         row.artifact_sha256, row.artifact_bytes),
    )  # fmt: skip


async def list_models(conn: AsyncConnection[Any], product: str = "") -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        if product:
            await cur.execute("SELECT * FROM models WHERE product = %s ORDER BY created_at DESC", (product,))
        else:
            await cur.execute("SELECT * FROM models ORDER BY created_at DESC")
        return await cur.fetchall()


async def create_job(conn: AsyncConnection[Any], job_id: str, product: str, dataset: str) -> None:
    await conn.execute(
        "INSERT INTO jobs (job_id, product, dataset, state) VALUES (%s, %s, %s, 'queued')",
        (job_id, product, dataset),
    )


async def update_job(
    conn: AsyncConnection[Any],
    job_id: str,
    state: str,
    *,
    model_version: str = "",
    metrics: dict[str, float] | None = None,
    error: str = "",
) -> None:
    await conn.execute(
        "UPDATE jobs SET state = %s, model_version = %s, metrics = %s::jsonb, error = %s, updated_at = now() "
        "WHERE job_id = %s",
        (state, model_version, json.dumps(metrics or {}), error, job_id),
    )


async def get_job(conn: AsyncConnection[Any], job_id: str) -> dict[str, Any] | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT * FROM jobs WHERE job_id = %s", (job_id,))
        return await cur.fetchone()


async def fail_interrupted_jobs(conn: AsyncConnection[Any]) -> int:
    """Jobs left queued/running by a previous process can never finish: mark them failed."""
    cur = await conn.execute(
        "UPDATE jobs SET state = 'failed', error = 'interrupted by a service restart', updated_at = now() "
        "WHERE state IN ('queued', 'running')"
    )
    return cur.rowcount


async def upsert_label(conn: AsyncConnection[Any], values: dict[str, str]) -> None:
    """The latest confirmed label of a frame wins (a resolved dispute replaces an earlier label)."""
    cols = (
        "frame_id",
        "label",
        "image_bucket",
        "image_key",
        "station",
        "taxonomy_version",
        "labeler",
        "reviewer",
    )
    await conn.execute(
        f"INSERT INTO confirmed_labels ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))}) "
        "ON CONFLICT (frame_id) DO UPDATE SET label = EXCLUDED.label, reviewer = EXCLUDED.reviewer, "
        "labeler = EXCLUDED.labeler, taxonomy_version = EXCLUDED.taxonomy_version, received_at = now()",
        tuple(values.get(c, "") for c in cols),
    )


async def confirmed_labels(conn: AsyncConnection[Any]) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT * FROM confirmed_labels ORDER BY frame_id")
        return await cur.fetchall()
