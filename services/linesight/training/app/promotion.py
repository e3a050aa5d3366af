"""The registry's release decisions: stages, release gates, gate reports, shadow comparison,
sign-off and rollback.

Stages: candidate -> shadow -> production -> archived. Training registers every model as a
candidate; the product's release gate (versioned per product, `gates.ReleaseGate`) applied to
the model's holdout evaluation makes it *eligible*; only a QA owner's PromoteModel makes it
production, and a model that fails its gate is refused with the failing checks named. Nothing
is promoted automatically. A rollback returns production to a model that served it before.

Write paths: a stage change takes the product's lock, records every change (and what it
displaced) in the append-only stage history and publishes ModelPublished before the transaction
commits, so the registry never names a production model inference was not told about; a bus
failure rolls the change back and the caller sees the error. Gate changes and sign-offs are
also appended to the audit log (after the commit: an audit outage fails the call, the change
stays, and the stage history still records it). A gate report's HTML goes to S3 first, then
its record; a failed upload records nothing.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import tarfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from linesight.common import subjects
from linesight.common.audit import AuditEntry
from linesight.common.enums import enum_word
from linesight.common.events import new_meta
from linesight.common.identity.model import Principal, Role
from linesight.common.pb import common_pb2, events_pb2
from linesight.common.ports import ConnectionSource, EventPublisher
from linesight.training.app.gates import GateConfigError, ReleaseGate, gate_report, render_html
from linesight.training.app.jobs import PromotionError, UnknownModelError
from linesight.training.store import registry
from linesight.training.store.registry import (
    ARCHIVED,
    CANDIDATE,
    PRODUCTION,
    SHADOW,
    GateVersion,
    ModelRecord,
)

log = logging.getLogger(__name__)

PRODUCER = "training"
BUCKET_REPORTS = "reports"
SHADOW_CHECK_S = 5.0  # how long "does any product have a shadow model" is cached by the consumer

__all__ = [
    "GateNotMetError",
    "NoShadowModelError",
    "PromotionApp",
    "PromotionError",
    "RollbackError",
    "StageError",
    "UnknownModelError",
]


class GateNotMetError(PromotionError):
    """The model fails its product's release gate: not eligible for production."""


class StageError(PromotionError):
    """A stage move the registry does not make (production through set_stage, leaving production)."""


class NoShadowModelError(UnknownModelError):
    """The product has no model in shadow."""

    def __str__(self) -> str:
        return f"no model in shadow for {self.args[0]!r}"


class RollbackError(PromotionError):
    """The version asked for never served production (or there is nothing to roll back to)."""


class ReportStore(Protocol):
    def aput_bytes(
        self, bucket: str, key: str, data: bytes, content_type: str = ..., metadata: Any = ...
    ) -> Awaitable[common_pb2.ObjectRef]: ...

    def aget_bytes(self, bucket: str, key: str) -> Awaitable[bytes]: ...


class Trail(Protocol):
    def append(self, entry: AuditEntry) -> Awaitable[Any]: ...


@dataclass(frozen=True)
class Assessment:
    """A model judged against its product's gate in force."""

    model: ModelRecord
    gate_version: int
    passed: bool
    failures: list[str]
    report: dict[str, Any]
    html_key: str


def approver_name(principal: Principal) -> str:
    if principal.name and principal.name != principal.subject:
        return f"{principal.name} <{principal.subject}>"
    return principal.subject


class PromotionApp:
    """Registry use cases beyond training itself; `default_gate` is the service's gate for a
    product that has no stored version (the YAML file or the built-in thresholds)."""

    def __init__(
        self,
        db: ConnectionSource,
        bus: EventPublisher,
        store: ReportStore,
        trail: Trail,
        *,
        plant: str,
        default_gate: Callable[[], ReleaseGate],
    ) -> None:
        self.db = db
        self.bus = bus
        self.store = store
        self.trail = trail
        self.plant = plant
        self.default_gate = default_gate
        self._shadow_checked = (0.0, False)

    # ---- release gates -----------------------------------------------------------------

    async def gate_for(self, product: str, version: int = 0) -> tuple[ReleaseGate, GateVersion | None]:
        """The product's gate (version 0: the one in force) and its stored record (None: default).

        KeyError for a version number the product never had."""
        async with self.db.connection() as conn:
            found = await registry.gate_version(conn, product, version)
        if found is None:
            if version:
                raise KeyError(f"{product} has no release gate version {version}")
            return self.default_gate(), None
        return ReleaseGate.from_dict(found.spec, source=f"{product} gate v{found.version}"), found

    async def set_gate(self, product: str, gate_yaml: str, principal: Principal, reason: str) -> GateVersion:
        """A QA owner sets the product's next gate version (GateConfigError for a bad document)."""
        gate = ReleaseGate.from_yaml(gate_yaml, source=f"{product} release gate")
        if not reason.strip():
            raise GateConfigError("a release gate change needs a reason")
        previous, _ = await self.gate_for(product)
        async with self.db.connection() as conn, conn.transaction():
            stored = await registry.add_gate_version(
                conn, product, gate.to_dict(), approver_name(principal), reason.strip()
            )
        await self.trail.append(AuditEntry.by(
            principal, Role.QA_OWNER.value, "release_gate.set", "release_gate",
            f"{product}@v{stored.version}", old_value=previous.to_dict(), new_value=gate.to_dict(),
            reason=reason.strip(),
        ))  # fmt: skip
        return stored

    # ---- models ------------------------------------------------------------------------

    async def get_model(self, model_version: str, product: str = "") -> ModelRecord:
        async with self.db.connection() as conn:
            model = await registry.get_model(conn, model_version.strip())
        if model is None or (product and model.product != product):
            raise UnknownModelError(model_version)
        return model

    async def assess(self, model_version: str, *, render: bool = True) -> Assessment:
        """Judge the model against its product's gate in force; reuses the stored report when it
        was made against the same gate version, else reads the evaluation and lineage packaged
        in the artifact and stores a new report (JSON in PostgreSQL, HTML in S3)."""
        model = await self.get_model(model_version)
        gate, stored = await self.gate_for(model.product)
        version = stored.version if stored else 0
        async with self.db.connection() as conn:
            last = await registry.latest_gate_report(conn, model.model_version)
        if last is not None and last.gate_version == version and (last.html_key or not render):
            return Assessment(model, version, last.passed, list(last.failures), last.report, last.html_key)
        evaluation, lineage = await self._packaged(model)
        report = gate_report(
            gate, evaluation, model_version=model.model_version, product=model.product,
            gate_version=version, metrics=model.metrics,
        )  # fmt: skip
        report["lineage"] = {**(model.lineage or {}), **lineage}
        html_key = ""
        if render:
            page = await asyncio.to_thread(render_html, report, evaluation)
            html_key = f"models/{model.product}/{model.model_version}-gate-v{version}.html"
            await self.store.aput_bytes(BUCKET_REPORTS, html_key, page.encode(), "text/html; charset=utf-8")
        async with self.db.connection() as conn, conn.transaction():
            if lineage:
                await registry.set_lineage(conn, model.model_version, lineage)
            await registry.add_gate_report(conn, model, version, report, html_key)
        model = await self.get_model(model.model_version)
        return Assessment(model, version, bool(report["passed"]), list(report["failures"]), report, html_key)

    async def gate_page(self, html_key: str) -> str:
        return (await self.store.aget_bytes(BUCKET_REPORTS, html_key)).decode() if html_key else ""

    async def _packaged(self, model: ModelRecord) -> tuple[dict[str, Any], dict[str, Any]]:
        """evaluation.json and lineage.json from the model's artifact ({} when it has none)."""
        try:
            data = await self.store.aget_bytes(model.artifact_bucket, model.artifact_key)
        except Exception as exc:  # the figures in the registry still judge the gate
            log.warning("artifact of %s not readable for its gate report: %s", model.model_version, exc)
            return {}, {}

        def read() -> tuple[dict[str, Any], dict[str, Any]]:
            found: dict[str, dict[str, Any]] = {}
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
                for member in tar.getmembers():
                    name = member.name.rsplit("/", 1)[-1]
                    if member.isfile() and name in ("evaluation.json", "lineage.json"):
                        fh = tar.extractfile(member)
                        if fh is not None:
                            found[name] = json.loads(fh.read().decode("utf-8") or "{}")
            return found.get("evaluation.json", {}), found.get("lineage.json", {})

        try:
            return await asyncio.to_thread(read)
        except (tarfile.TarError, ValueError, OSError) as exc:
            log.warning("artifact of %s has no readable evaluation: %s", model.model_version, exc)
            return {}, {}

    # ---- stages ------------------------------------------------------------------------

    async def set_stage(
        self, model_version: str, stage: str, principal: Principal, reason: str
    ) -> ModelRecord:
        """candidate <-> shadow, and -> archived; production only through promote / rollback.

        Entering shadow announces ModelPublished(stage=shadow): inference scores it beside
        production without dispatching. PromotionError for a move the registry does not make.
        """
        stage = stage.strip().lower()
        if stage not in (CANDIDATE, SHADOW, ARCHIVED):
            raise StageError(
                f"stage {stage!r}: set shadow, candidate or archived here; production needs PromoteModel "
                "(a QA owner's sign-off) or RollbackModel"
            )
        who = approver_name(principal)
        async with self.db.connection() as conn, conn.transaction():
            model = await registry.lock_model(conn, model_version.strip())
            if model is None:
                raise UnknownModelError(model_version)
            if model.stage == PRODUCTION:
                raise StageError(
                    f"{model.model_version} is the production model: promote or roll back to another "
                    "model instead (production is never left empty)"
                )
            move = await registry.move_stage(conn, model.model_version, stage, who, reason.strip())
            assert move is not None
            if move.changed and stage == SHADOW:
                await registry.prune_observations(conn)  # production decisions nothing compared
                await self._announce(move.model, SHADOW)
        return move.model

    async def promote(
        self, model_version: str, principal: Principal, reason: str, *, product: str = ""
    ) -> ModelRecord:
        """A QA owner signs the model off: it becomes production, the previous one archived.

        Refused (GateNotMetError, the failing checks named) when the model fails its product's
        release gate in force; there is no override. The shadow comparison, when there is one,
        is quoted in the stage history next to the approver's reason. Promoting the model that
        serves production changes nothing.
        """
        model = await self.get_model(model_version, product)
        if model.stage == PRODUCTION:
            return model
        assessment = await self.assess(model.model_version)
        if not assessment.passed:
            raise GateNotMetError(
                f"model {model.model_version} fails the {model.product} release gate "
                f"v{assessment.gate_version}: {'; '.join(assessment.failures)}; it is not eligible for "
                "production (train a better model, or a QA owner changes the gate with SetReleaseGate)"
            )
        evidence = ""
        shadow = await self.shadow_report(model.model_version)
        if shadow["frames"]:
            evidence = f" [shadow: {shadow['frames']} frames, agreement {shadow['agreement']:.1%}]"
        note = (reason.strip() or "signed off") + f" (gate v{assessment.gate_version} passed){evidence}"
        return await self._to_production(model.model_version, principal, note, rollback=False)

    async def rollback(
        self, product: str, model_version: str, principal: Principal, reason: str
    ) -> ModelRecord:
        """Production goes back to `model_version` (empty: the production model before the
        current one), which must have served production before. One call; audited; inference
        hot-swaps on the ModelPublished it sends. No gate check: it was signed off when it served.
        """
        if not reason.strip():
            raise PromotionError("a rollback needs a reason")
        async with self.db.connection() as conn:
            if model_version.strip():
                target = await registry.get_model(conn, model_version.strip())
                if target is None or (product and target.product != product):
                    raise UnknownModelError(model_version)
            else:
                if not product:
                    raise PromotionError("name the product, or the model version to roll back to")
                history = await registry.stage_history(conn, product=product)
                current = [h.model_version for h in history if h.to_stage == PRODUCTION]
                now = await registry.list_models(conn, product)
                serving = next((m.model_version for m in now if m.stage == PRODUCTION), "")
                earlier = [v for v in reversed(current) if v != serving]
                if not earlier:
                    raise RollbackError(f"{product} has no earlier production model to roll back to")
                target = await registry.get_model(conn, earlier[0])
                assert target is not None
            if not await registry.was_production(conn, target.model_version):
                raise RollbackError(
                    f"{target.model_version} never served production: a rollback returns to a model "
                    "that did; promote it (PromoteModel) instead"
                )
        if target.stage == PRODUCTION:
            return target
        return await self._to_production(
            target.model_version, principal, f"rollback: {reason.strip()}", rollback=True
        )

    async def _to_production(
        self, model_version: str, principal: Principal, reason: str, *, rollback: bool
    ) -> ModelRecord:
        who = approver_name(principal)
        async with self.db.connection() as conn, conn.transaction():
            model = await registry.lock_model(conn, model_version)
            if model is None:
                raise UnknownModelError(model_version)
            move = await registry.move_stage(conn, model_version, PRODUCTION, who, reason)
            assert move is not None
            if move.changed:
                await self._announce(move.model, PRODUCTION)
        if move.changed:
            await self.trail.append(AuditEntry.by(
                principal, Role.QA_OWNER.value, "model.rollback" if rollback else "model.promote", "model",
                model_version, old_value={"stage": move.previous_stage, "production": move.displaced},
                new_value={"stage": PRODUCTION}, reason=reason,
            ))  # fmt: skip
            log.info("%s %s %s by %s: %s; archived %s", "rollback to" if rollback else "promotion of",
                     move.model.product, model_version, who, reason, move.displaced or "none")  # fmt: skip
        return move.model

    async def _announce(self, model: ModelRecord, stage: str) -> None:
        ref = common_pb2.ObjectRef(
            bucket=model.artifact_bucket, key=model.artifact_key, sha256=model.artifact_sha256,
            content_type="application/gzip", size_bytes=int(model.artifact_bytes or 0),
        )  # fmt: skip
        meta = new_meta(PRODUCER, correlation_id=f"{stage}:{model.model_version}")
        # A fresh id: JetStream must never drop it as a duplicate of an earlier announcement.
        meta.event_id = f"model:{model.model_version}:{stage}:{uuid.uuid4().hex[:12]}"
        event = events_pb2.ModelPublished(
            meta=meta, model_version=model.model_version, product=model.product, artifact=ref,
            taxonomy_version=model.taxonomy_version, dataset_version=model.dataset_version,
            metrics={k: float(v) for k, v in (model.metrics or {}).items()}, stage=stage,
        )  # fmt: skip
        await self.bus.publish(subjects.plant_subject(self.plant, subjects.MODEL_PUBLISHED), event)

    # ---- shadow comparison -------------------------------------------------------------

    async def record_result(self, result: events_pb2.InspectionResult) -> bool:
        """Keep a live decision for the shadow comparison: every shadow result, and production's
        while some product has a model in shadow. Returns whether it was kept."""
        if not result.frame_id or not result.model_version:
            return False
        if not result.shadow and not await self._any_shadow():
            return False
        async with self.db.connection() as conn, conn.transaction():
            await registry.record_observation(
                conn, result.frame_id, "shadow" if result.shadow else "production", result.model_version,
                enum_word(common_pb2.Verdict, result.verdict) or "unspecified", result.defect_class,
                result.capture.station.station,
            )  # fmt: skip
        return True

    async def _any_shadow(self) -> bool:
        at, value = self._shadow_checked
        if time.monotonic() - at < SHADOW_CHECK_S:
            return value
        async with self.db.connection() as conn:
            value = await registry.shadow_products_exist(conn)
        self._shadow_checked = (time.monotonic(), value)
        return value

    async def shadow_report(self, model_version: str = "", product: str = "") -> dict[str, Any]:
        """The shadow model's decisions against production's on the same live frames."""
        if not model_version:
            async with self.db.connection() as conn:
                models = await registry.list_models(conn, product)
            shadow = [m for m in models if m.stage == SHADOW]
            if not shadow:
                raise NoShadowModelError(product)
            model_version = shadow[0].model_version
        model = await self.get_model(model_version)
        async with self.db.connection() as conn:
            pairs = await registry.shadow_pairs(conn, model_version)
            unpaired = await registry.unpaired_shadow_frames(conn, model_version)
        return compare(model, pairs, unpaired)


def compare(model: ModelRecord, pairs: list[dict[str, Any]], unpaired: int) -> dict[str, Any]:
    """Agreement, flips by class and what the shadow model would have rejected or passed."""

    def decision(verdict: str, cls: str) -> str:
        return "pass" if verdict == "pass" else f"{verdict}:{cls}" if cls else verdict

    n = len(pairs)
    agree = sum(
        decision(p["production_verdict"], p["production_class"])
        == decision(p["shadow_verdict"], p["shadow_class"])
        for p in pairs
    )
    flips: Counter[str] = Counter()
    verdicts: Counter[str] = Counter()
    would_reject, would_pass = [], []
    for p in pairs:
        a = decision(p["production_verdict"], p["production_class"])
        b = decision(p["shadow_verdict"], p["shadow_class"])
        verdicts[f"{p['production_verdict']} -> {p['shadow_verdict']}"] += 1
        if a != b:
            flips[f"{a} -> {b}"] += 1
        if p["production_verdict"] == "pass" and p["shadow_verdict"] != "pass":
            would_reject.append(p["frame_id"])
        elif p["production_verdict"] != "pass" and p["shadow_verdict"] == "pass":
            would_pass.append(p["frame_id"])
    by_class: Counter[str] = Counter()
    for p in pairs:
        if decision(p["production_verdict"], p["production_class"]) != decision(
            p["shadow_verdict"], p["shadow_class"]
        ):
            by_class[p["production_class"] or p["shadow_class"] or p["production_verdict"]] += 1
    return {
        "model_version": model.model_version,
        "product": model.product,
        "stage": model.stage,
        "frames": n,
        "unpaired": unpaired,
        "agreement": agree / n if n else 0.0,
        "production_versions": sorted({str(p["production_version"]) for p in pairs}),
        "verdicts": dict(sorted(verdicts.items())),
        "flips": dict(flips.most_common()),
        "flips_by_class": dict(by_class.most_common()),
        "would_reject": len(would_reject),
        "would_pass": len(would_pass),
        "examples": {"would_reject": would_reject[:10], "would_pass": would_pass[:10]},
    }
