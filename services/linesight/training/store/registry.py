"""Repository for models, jobs and confirmed labels; the caller owns the transaction.
Reads return the typed records below."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import class_row, dict_row
from psycopg.types.json import Jsonb


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
    lineage: dict[str, Any] | None = None  # code version, parameters (also in the artifact)


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
    lineage: dict[str, Any] = field(default_factory=dict)
    # the newest gate report (promotion.py): None until the model was judged against its
    # product's gate; the registration's `gate` holds the default gate's verdict meanwhile
    assessed_passed: bool | None = None
    assessed_gate_version: int | None = None
    assessed_failures: list[str] = field(default_factory=list)
    assessed_html_key: str = ""


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
    product: str = ""
    part_id: str = ""  # empty: the capture named no part, each photo counts as its own part
    severity: str = ""
    boxes: list[list[Any]] = field(default_factory=list)  # [class, x_min, y_min, x_max, y_max]
    polygons: list[dict[str, Any]] = field(default_factory=list)  # {"class", "x": [...], "y": [...]}
    source: str = ""
    round: int = 1


GATE_ACTOR = "release-gate"  # stage_history.changed_by of the release gate's automatic decision
CANDIDATE, SHADOW, PRODUCTION, ARCHIVED = "candidate", "shadow", "production", "archived"
STAGES = (CANDIDATE, SHADOW, PRODUCTION, ARCHIVED)


class StageError(ValueError):
    """A stage change the registry does not make (e.g. registering a model as production)."""


@dataclass(frozen=True)
class StageMove:
    """What `move_stage` did: the model as it is now, the stage it had, what it displaced."""

    model: ModelRecord
    previous_stage: str
    displaced: list[str]

    @property
    def changed(self) -> bool:
        return self.previous_stage != self.model.stage


async def register_model(conn: AsyncConnection[Any], row: ModelRow) -> None:
    """Insert a model as a candidate, with the release gate's verdict in the stage history.

    A new model is never anything but a candidate: production needs a QA owner's sign-off
    (`move_stage`), so StageError refuses any other stage.
    """
    if row.stage != CANDIDATE:
        raise StageError(
            f"model {row.model_version} registered as {row.stage!r}: a new model is a candidate until "
            "a QA owner signs it off"
        )
    failures = list((row.gate or {}).get("failures") or [])
    await lock_product(conn, row.product)
    await conn.execute(
        "INSERT INTO models (model_version, product, stage, metrics, gate, taxonomy_version, "
        "dataset_version, artifact_bucket, artifact_key, artifact_sha256, artifact_bytes, lineage) "
        "VALUES (%s, %s, %s, %s::jsonb, %s::jsonb, %s, %s, %s, %s, %s, %s, %s::jsonb)",
        (row.model_version, row.product, row.stage, json.dumps(row.metrics), json.dumps(row.gate or {}),
         row.taxonomy_version, row.dataset_version, row.artifact_bucket, row.artifact_key,
         row.artifact_sha256, row.artifact_bytes, json.dumps(row.lineage or {})),
    )  # fmt: skip
    reason = (
        "release gate failed: " + "; ".join(failures)
        if failures
        else "release gate passed: eligible for sign-off"
    )
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


async def lock_model(conn: AsyncConnection[Any], model_version: str) -> ModelRecord | None:
    """The model, read after taking its product's lock (None: no such model)."""
    cur = await conn.execute("SELECT product FROM models WHERE model_version = %s", (model_version,))
    found = await cur.fetchone()
    if found is None:
        return None
    await lock_product(conn, str(found[0]))
    return await get_model(conn, model_version)


async def move_stage(
    conn: AsyncConnection[Any], model_version: str, to_stage: str, changed_by: str, reason: str
) -> StageMove | None:
    """Move a model to `to_stage` (None: no such model); the caller holds the product lock
    (`lock_model`) and has checked that the move is allowed.

    Production and shadow hold one model per product: the one there is displaced (production ->
    archived, shadow -> candidate) and every change is appended to the stage history with the
    person and reason. Moving a model to the stage it has changes nothing and records nothing.
    """
    if to_stage not in STAGES:
        raise StageError(f"unknown stage {to_stage!r}; stages: {', '.join(STAGES)}")
    model = await get_model(conn, model_version)
    if model is None:
        return None
    previous = model.stage
    displaced: list[str] = []
    if previous != to_stage:
        if to_stage in (PRODUCTION, SHADOW):
            down = ARCHIVED if to_stage == PRODUCTION else CANDIDATE
            why = f"replaced by {model_version}" + (f": {reason}" if reason else "")
            cur = await conn.execute(
                "UPDATE models SET stage = %s WHERE product = %s AND stage = %s AND model_version <> %s "
                "RETURNING model_version",
                (down, model.product, to_stage, model_version),
            )
            displaced = [str(r[0]) for r in await cur.fetchall()]
            for version in displaced:
                await record_stage_change(conn, version, model.product, to_stage, down, changed_by, why)
        await conn.execute("UPDATE models SET stage = %s WHERE model_version = %s", (to_stage, model_version))
        await record_stage_change(conn, model_version, model.product, previous, to_stage, changed_by, reason)
    now = await get_model(conn, model_version)
    assert now is not None  # models rows are never deleted
    return StageMove(model=now, previous_stage=previous, displaced=displaced)


async def set_lineage(conn: AsyncConnection[Any], model_version: str, lineage: dict[str, Any]) -> None:
    """Merge `lineage` (read from the artifact) into the model's record."""
    await conn.execute(
        "UPDATE models SET lineage = lineage || %s::jsonb WHERE model_version = %s",
        (json.dumps(lineage), model_version),
    )


async def was_production(conn: AsyncConnection[Any], model_version: str) -> bool:
    """Whether the model ever served production (what a rollback may return to)."""
    cur = await conn.execute(
        "SELECT 1 FROM model_stage_history WHERE model_version = %s AND to_stage = 'production' LIMIT 1",
        (model_version,),
    )
    return await cur.fetchone() is not None


@dataclass(frozen=True)
class Promotion:
    """What `promote_model` did: the model as it is now, the stage it had, what it archived."""

    model: ModelRecord
    previous_stage: str
    retired: list[str]

    @property
    def changed(self) -> bool:
        return self.previous_stage != PRODUCTION


async def promote_model(
    conn: AsyncConnection[Any], model_version: str, approved_by: str, reason: str
) -> Promotion | None:
    """`move_stage` to production under the product lock, without any eligibility check: the
    application layer (promotion.py) decides whether the move is allowed before calling it."""
    if await lock_model(conn, model_version) is None:
        return None
    move = await move_stage(conn, model_version, PRODUCTION, approved_by, reason)
    if move is None:
        return None
    return Promotion(model=move.model, previous_stage=move.previous_stage, retired=move.displaced)


_MODEL_COLUMNS = (
    "m.*, h.changed_by AS stage_changed_by, h.reason AS stage_reason, h.changed_at AS stage_changed_at, "
    "g.passed AS assessed_passed, g.gate_version AS assessed_gate_version, "
    "coalesce(g.failures, '[]'::jsonb) AS assessed_failures, coalesce(g.html_key, '') AS assessed_html_key"
)
_LAST_CHANGE = (
    "LEFT JOIN LATERAL (SELECT changed_by, reason, changed_at FROM model_stage_history s "
    "WHERE s.model_version = m.model_version ORDER BY s.id DESC LIMIT 1) h ON true "
    "LEFT JOIN LATERAL (SELECT passed, gate_version, failures, html_key FROM gate_reports r "
    "WHERE r.model_version = m.model_version ORDER BY r.id DESC LIMIT 1) g ON true"
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
    """The release gate checks a model (or a job's model) failed ([] when it passed or has no gate
    record): its newest gate report's, else the registration's."""
    if isinstance(record, ModelRecord) and record.assessed_passed is not None:
        return [str(f) for f in record.assessed_failures]
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


_LABEL_TEXT = ("frame_id", "label", "image_bucket", "image_key", "station", "taxonomy_version",
               "labeler", "reviewer", "product", "part_id", "severity", "source")  # fmt: skip
_LABEL_JSON = ("boxes", "polygons")


async def upsert_label(conn: AsyncConnection[Any], values: dict[str, Any]) -> None:
    """The latest confirmed label of a frame wins (a resolved dispute or a relabel replaces an
    earlier one); an older round arriving late never overwrites a newer one."""
    cols = (*_LABEL_TEXT, *_LABEL_JSON, "round")
    params = (
        *(str(values.get(c, "")) for c in _LABEL_TEXT),
        *(Jsonb(values.get(c) or []) for c in _LABEL_JSON),
        int(values.get("round") or 1),
    )
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in cols if c != "frame_id")
    await conn.execute(
        f"INSERT INTO confirmed_labels ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))}) "
        f"ON CONFLICT (frame_id) DO UPDATE SET {updates}, received_at = now() "
        "WHERE confirmed_labels.round <= EXCLUDED.round",
        params,
    )


async def confirmed_labels(conn: AsyncConnection[Any]) -> list[ConfirmedLabel]:
    async with conn.cursor(row_factory=class_row(ConfirmedLabel)) as cur:
        await cur.execute("SELECT * FROM confirmed_labels ORDER BY frame_id")
        return await cur.fetchall()


# ---- release gates, gate reports -----------------------------------------------------------


@dataclass(frozen=True)
class GateVersion:
    """One stored version of a product's release gate."""

    product: str
    version: int
    spec: dict[str, Any]
    author: str
    reason: str
    created_at: datetime


@dataclass(frozen=True)
class GateReportRecord:
    id: int
    model_version: str
    product: str
    gate_version: int
    passed: bool
    failures: list[str]
    report: dict[str, Any]
    html_key: str
    created_at: datetime


async def add_gate_version(
    conn: AsyncConnection[Any], product: str, spec: dict[str, Any], author: str, reason: str
) -> GateVersion:
    """Store the next version of the product's gate (serialised per product)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"linesight.training.gates/{product}",))
    async with conn.cursor(row_factory=class_row(GateVersion)) as cur:
        await cur.execute(
            "INSERT INTO release_gates (product, version, spec, author, reason) "
            "SELECT %s, coalesce(max(version), 0) + 1, %s::jsonb, %s, %s FROM release_gates "
            "WHERE product = %s RETURNING *",
            (product, json.dumps(spec), author, reason, product),
        )
        row = await cur.fetchone()
    assert row is not None
    return row


async def gate_version(conn: AsyncConnection[Any], product: str, version: int = 0) -> GateVersion | None:
    """A stored version of the product's gate (0: the newest); None when there is none."""
    async with conn.cursor(row_factory=class_row(GateVersion)) as cur:
        if version:
            await cur.execute(
                "SELECT * FROM release_gates WHERE product = %s AND version = %s", (product, version)
            )
        else:
            await cur.execute(
                "SELECT * FROM release_gates WHERE product = %s ORDER BY version DESC LIMIT 1", (product,)
            )
        return await cur.fetchone()


async def add_gate_report(
    conn: AsyncConnection[Any], model: ModelRecord, gate_version_: int, report: dict[str, Any], html_key: str
) -> None:
    await conn.execute(
        "INSERT INTO gate_reports (model_version, product, gate_version, passed, failures, report, html_key) "
        "VALUES (%s, %s, %s, %s, %s::jsonb, %s::jsonb, %s)",
        (model.model_version, model.product, gate_version_, bool(report["passed"]),
         json.dumps(report["failures"]), json.dumps(report), html_key),
    )  # fmt: skip


async def latest_gate_report(conn: AsyncConnection[Any], model_version: str) -> GateReportRecord | None:
    async with conn.cursor(row_factory=class_row(GateReportRecord)) as cur:
        await cur.execute(
            "SELECT * FROM gate_reports WHERE model_version = %s ORDER BY id DESC LIMIT 1", (model_version,)
        )
        return await cur.fetchone()


# ---- shadow comparison ---------------------------------------------------------------------


async def shadow_products_exist(conn: AsyncConnection[Any]) -> bool:
    """Whether any product has a model in shadow (production decisions are kept only then)."""
    cur = await conn.execute("SELECT 1 FROM models WHERE stage = 'shadow' LIMIT 1")
    return await cur.fetchone() is not None


async def record_observation(
    conn: AsyncConnection[Any],
    frame_id: str,
    role: str,
    model_version: str,
    verdict: str,
    defect_class: str,
    station: str,
) -> None:
    """Keep one decision on a live frame (a redelivery changes nothing)."""
    await conn.execute(
        "INSERT INTO shadow_observations (frame_id, role, model_version, verdict, defect_class, station) "
        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (frame_id, role, model_version, verdict, defect_class, station),
    )


async def prune_observations(conn: AsyncConnection[Any], keep_days: int = 30) -> int:
    """Drop production decisions older than `keep_days` that no shadow decision pairs with."""
    cur = await conn.execute(
        "DELETE FROM shadow_observations p WHERE p.role = 'production' "
        "AND p.received_at < now() - make_interval(days => %s) AND NOT EXISTS "
        "(SELECT 1 FROM shadow_observations s WHERE s.frame_id = p.frame_id AND s.role = 'shadow')",
        (keep_days,),
    )
    return cur.rowcount


async def shadow_pairs(conn: AsyncConnection[Any], model_version: str) -> list[dict[str, Any]]:
    """Per frame the shadow model decided: its decision and production's on the same frame."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT s.frame_id, s.station, s.verdict AS shadow_verdict, s.defect_class AS shadow_class, "
            "p.model_version AS production_version, p.verdict AS production_verdict, "
            "p.defect_class AS production_class, s.received_at "
            "FROM shadow_observations s JOIN shadow_observations p "
            "ON p.frame_id = s.frame_id AND p.role = 'production' "
            "WHERE s.role = 'shadow' AND s.model_version = %s ORDER BY s.received_at",
            (model_version,),
        )
        return await cur.fetchall()


async def unpaired_shadow_frames(conn: AsyncConnection[Any], model_version: str) -> int:
    """Frames the shadow model decided with no production decision kept (not compared)."""
    cur = await conn.execute(
        "SELECT count(*) FROM shadow_observations s WHERE s.role = 'shadow' AND s.model_version = %s "
        "AND NOT EXISTS (SELECT 1 FROM shadow_observations p WHERE p.frame_id = s.frame_id "
        "AND p.role = 'production')",
        (model_version,),
    )
    row = await cur.fetchone()
    return int(row[0]) if row else 0
