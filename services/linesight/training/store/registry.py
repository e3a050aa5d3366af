"""Repository for models, jobs and confirmed labels; the caller owns the transaction.
Reads return the typed records below."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import class_row, dict_row


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


@dataclass(frozen=True)
class ModelRecord:
    """A registered model as the registry holds it, with its last stage change."""

    model_version: str
    product: str
    stage: str
    metrics: dict[str, float]
    gate: dict[str, Any]  # the release gate's thresholds and the checks that failed
    taxonomy_version: str
    dataset_version: str
    artifact_bucket: str
    artifact_key: str
    artifact_sha256: str
    artifact_bytes: int
    created_at: datetime
    stage_changed_by: str | None
    stage_reason: str | None
    stage_changed_at: datetime | None


@dataclass(frozen=True)
class JobRecord:
    """A training job, with its model's current `stage` and `gate` ('' / {} until one is registered)."""

    job_id: str
    product: str
    dataset: str
    state: str
    model_version: str
    metrics: dict[str, float]
    error: str
    created_at: datetime
    updated_at: datetime
    stage: str
    gate: dict[str, Any]


@dataclass(frozen=True)
class StageChange:
    """One row of the append-only model stage history."""

    id: int
    model_version: str
    product: str
    from_stage: str
    to_stage: str
    changed_by: str
    reason: str
    changed_at: datetime


@dataclass(frozen=True)
class ConfirmedLabel:
    """The latest confirmed label of a frame: what a frozen dataset is built from."""

    frame_id: str
    label: str
    image_bucket: str
    image_key: str
    station: str
    taxonomy_version: str
    labeler: str
    reviewer: str
    received_at: datetime
    part_id: str = ""  # from the frame's capture metadata; '' when capture did not know it
    severity: str = ""
    product: str = ""


GATE_ACTOR = "release-gate"  # stage_history.changed_by of the release gate's automatic decision


@dataclass(frozen=True)
class Promotion:
    """What `promote_model` did: the model as it is now, the stage it had, what it retired."""

    model: ModelRecord
    previous_stage: str
    retired: list[str]

    @property
    def changed(self) -> bool:
        return self.previous_stage != "production"


async def register_model(conn: AsyncConnection[Any], row: ModelRow) -> None:
    """Insert a model; a new production model retires the previous one of its product.

    Both stage changes are written to `model_stage_history` as the release gate's decision.
    """
    failures = list((row.gate or {}).get("failures") or [])
    await lock_product(conn, row.product)
    if row.stage == "production":
        await _retire_production(conn, row.product, GATE_ACTOR, f"replaced by {row.model_version}")
    await conn.execute(
        "INSERT INTO models (model_version, product, stage, metrics, gate, taxonomy_version, "
        "dataset_version, artifact_bucket, artifact_key, artifact_sha256, artifact_bytes) "
        "VALUES (%s, %s, %s, %s::jsonb, %s::jsonb, %s, %s, %s, %s, %s, %s)",
        (row.model_version, row.product, row.stage, json.dumps(row.metrics), json.dumps(row.gate or {}),
         row.taxonomy_version, row.dataset_version, row.artifact_bucket, row.artifact_key,
         row.artifact_sha256, row.artifact_bytes),
    )  # fmt: skip
    reason = "release gate failed: " + "; ".join(failures) if failures else "release gate passed"
    await record_stage_change(conn, row.model_version, row.product, "", row.stage, GATE_ACTOR, reason)


async def lock_product(conn: AsyncConnection[Any], product: str) -> None:
    """Serialise stage changes of one product until the transaction ends (registration,
    promotion): two of them at once could otherwise both see no production model to retire."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"linesight.training.models/{product}",)
    )


async def record_stage_change(
    conn: AsyncConnection[Any],
    model_version: str,
    product: str,
    from_stage: str,
    to_stage: str,
    changed_by: str,
    reason: str = "",
) -> None:
    await conn.execute(
        "INSERT INTO model_stage_history (model_version, product, from_stage, to_stage, changed_by, reason) "
        "VALUES (%s, %s, %s, %s, %s, %s)",
        (model_version, product, from_stage, to_stage, changed_by, reason),
    )


async def _retire_production(
    conn: AsyncConnection[Any], product: str, changed_by: str, reason: str
) -> list[str]:
    cur = await conn.execute(
        "UPDATE models SET stage = 'retired' WHERE product = %s AND stage = 'production' "
        "RETURNING model_version",
        (product,),
    )
    retired = [str(r[0]) for r in await cur.fetchall()]
    for version in retired:
        await record_stage_change(conn, version, product, "production", "retired", changed_by, reason)
    return retired


async def promote_model(
    conn: AsyncConnection[Any], model_version: str, approved_by: str, reason: str
) -> Promotion | None:
    """Make `model_version` its product's production model (None: no such model).

    Retires the current production model and records both changes with the approver and reason.
    Works from any stage: a candidate (release), a retired model (rollback). Promoting the model
    that already serves production changes nothing and records nothing. Stage changes of the
    product are serialised (`lock_product`), so two promotions run one after the other.
    """
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT product FROM models WHERE model_version = %s", (model_version,))
        found = await cur.fetchone()
        if found is None:
            return None
        product = found["product"]
        await lock_product(conn, product)
        await cur.execute("SELECT stage FROM models WHERE model_version = %s", (model_version,))
        current = await cur.fetchone()
    assert current is not None  # models rows are never deleted
    previous = str(current["stage"])
    retired: list[str] = []
    if previous != "production":
        why = f"replaced by {model_version}" + (f": {reason}" if reason else "")
        retired = await _retire_production(conn, product, approved_by, why)
        await conn.execute(
            "UPDATE models SET stage = 'production' WHERE model_version = %s", (model_version,)
        )
        await record_stage_change(conn, model_version, product, previous, "production", approved_by, reason)
    model = await get_model(conn, model_version)
    assert model is not None
    return Promotion(model=model, previous_stage=previous, retired=retired)


_MODEL_COLUMNS = (
    "m.*, h.changed_by AS stage_changed_by, h.reason AS stage_reason, h.changed_at AS stage_changed_at"
)
_LAST_CHANGE = (
    "LEFT JOIN LATERAL (SELECT changed_by, reason, changed_at FROM model_stage_history s "
    "WHERE s.model_version = m.model_version ORDER BY s.id DESC LIMIT 1) h ON true"
)


async def get_model(conn: AsyncConnection[Any], model_version: str) -> ModelRecord | None:
    """A registry row with its last stage change (`stage_changed_by`, `stage_reason`, `stage_changed_at`)."""
    async with conn.cursor(row_factory=class_row(ModelRecord)) as cur:
        await cur.execute(
            f"SELECT {_MODEL_COLUMNS} FROM models m {_LAST_CHANGE} WHERE m.model_version = %s",
            (model_version,),
        )
        return await cur.fetchone()


async def list_models(conn: AsyncConnection[Any], product: str = "") -> list[ModelRecord]:
    async with conn.cursor(row_factory=class_row(ModelRecord)) as cur:
        base = f"SELECT {_MODEL_COLUMNS} FROM models m {_LAST_CHANGE}"
        if product:
            await cur.execute(base + " WHERE m.product = %s ORDER BY m.created_at DESC", (product,))
        else:
            await cur.execute(base + " ORDER BY m.created_at DESC")
        return await cur.fetchall()


async def stage_history(
    conn: AsyncConnection[Any], *, product: str = "", model_version: str = ""
) -> list[StageChange]:
    """Stage changes, oldest first, of one product and/or one model."""
    where, params = [], []
    if product:
        where.append("product = %s")
        params.append(product)
    if model_version:
        where.append("model_version = %s")
        params.append(model_version)
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    async with conn.cursor(row_factory=class_row(StageChange)) as cur:
        await cur.execute(f"SELECT * FROM model_stage_history{clause} ORDER BY id", params)
        return await cur.fetchall()


def gate_failures(record: ModelRecord | JobRecord | None) -> list[str]:
    """The release gate checks a model (or a job's model) failed ([] when it passed or has no gate record)."""
    gate = (record.gate if record is not None else None) or {}
    return [str(f) for f in gate.get("failures") or []]


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


async def get_job(conn: AsyncConnection[Any], job_id: str) -> JobRecord | None:
    """A job row plus its model's current `stage` and `gate` ('' / {} until a model is registered)."""
    async with conn.cursor(row_factory=class_row(JobRecord)) as cur:
        await cur.execute(
            "SELECT j.*, coalesce(m.stage, '') AS stage, coalesce(m.gate, '{}'::jsonb) AS gate "
            "FROM jobs j LEFT JOIN models m ON m.model_version = j.model_version AND j.model_version <> '' "
            "WHERE j.job_id = %s",
            (job_id,),
        )
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
        "part_id",
        "severity",
        "product",
    )
    await conn.execute(
        f"INSERT INTO confirmed_labels ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))}) "
        "ON CONFLICT (frame_id) DO UPDATE SET label = EXCLUDED.label, reviewer = EXCLUDED.reviewer, "
        "labeler = EXCLUDED.labeler, taxonomy_version = EXCLUDED.taxonomy_version, received_at = now(), "
        "part_id = EXCLUDED.part_id, severity = EXCLUDED.severity, product = EXCLUDED.product",
        tuple(values.get(c, "") for c in cols),
    )


async def confirmed_labels(conn: AsyncConnection[Any]) -> list[ConfirmedLabel]:
    async with conn.cursor(row_factory=class_row(ConfirmedLabel)) as cur:
        await cur.execute("SELECT * FROM confirmed_labels ORDER BY frame_id")
        return await cur.fetchall()
