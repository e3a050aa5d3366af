"""PromoteModel: the QA owner's release decision, against real NATS, PostgreSQL and S3.

A candidate that passes its product's release gate is promoted by the authenticated QA owner of
its product (one that fails it is refused, with no override): the previous production model is
archived, both changes land in the append-only stage history with the caller as approver (the
request's `approved_by` is ignored) and the reason, and ModelPublished(stage=production) reaches
the bus so inference swaps to it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest

from linesight.common import subjects
from linesight.common.bus import Bus, Delivery
from linesight.common.db import Database
from linesight.common.identity.grpc import bearer_interceptors
from linesight.common.pb import events_pb2, training_pb2, training_pb2_grpc
from linesight.common.service import service_running
from linesight.common.settings import Settings
from linesight.training.app.trainer import ReleaseGate, TrainingOptions
from linesight.training.service import TrainingServiceOptions, make_setup, train_once
from linesight.training.store import registry
from linesight.training.store.registry import ModelRow

pytestmark = pytest.mark.integration

FORGED = "mallory"  # what a caller claims in approved_by; never recorded
IMPOSSIBLE_GATE = ReleaseGate(min_defect_recall=2.0, max_false_reject_rate=0.1)  # always a candidate


@dataclass
class Api:
    db: Database
    stub: training_pb2_grpc.TrainingServiceStub
    bus: Bus
    settings: Settings
    mint: Any
    token: str = ""  # the caller of the next RPCs ('' = anonymous)

    def login(self, *grants: str, subject: str, name: str = "") -> str:
        """Call as this principal from now on; returns how the registry records it."""
        self.token = self.mint(*grants, subject=subject, name=name)
        return f"{name} <{subject}>" if name else subject


@pytest.fixture
async def api(stack_settings: Settings, mint: Any) -> AsyncIterator[Api]:
    bus = await Bus.connect(stack_settings.nats_url, "test-promotion")
    await bus.ensure_streams()
    setup = make_setup(TrainingServiceOptions(consume=False))
    holder: list[Api] = []
    try:
        async with (
            service_running("training", setup, settings=stack_settings) as svc,
            grpc.aio.insecure_channel(
                stack_settings.grpc_target("training"),
                interceptors=bearer_interceptors(lambda: holder[0].token),
            ) as channel,
        ):
            assert svc.ctx.db is not None
            holder.append(
                Api(svc.ctx.db, training_pb2_grpc.TrainingServiceStub(channel), bus, stack_settings, mint)
            )
            yield holder[0]
    finally:
        await bus.close()


class Published:
    """ModelPublished events of one product, as the bus delivers them."""

    def __init__(self, bus: Bus, product: str) -> None:
        self.events: list[events_pb2.ModelPublished] = []
        self.stop = asyncio.Event()

        async def on_model(msg: events_pb2.ModelPublished, _: Delivery) -> None:
            if msg.product == product:
                self.events.append(msg)

        self.task = bus.consume_in_background(
            subjects.plant_pattern(subjects.MODEL_PUBLISHED), f"t-promote-{uuid.uuid4().hex[:8]}",
            events_pb2.ModelPublished, on_model, stop=self.stop,
        )  # fmt: skip

    async def wait_for(self, version: str, stage: str, timeout_s: float = 10.0) -> events_pb2.ModelPublished:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while asyncio.get_running_loop().time() < deadline:
            for e in self.events:
                if e.model_version == version and e.stage == stage:
                    return e
            await asyncio.sleep(0.1)
        seen = [(e.model_version, e.stage) for e in self.events]
        raise AssertionError(f"no ModelPublished({version}, {stage}) within {timeout_s} s; saw {seen}")

    async def close(self) -> None:
        self.stop.set()
        await self.task


def _row(product: str, version: str, stage: str, failures: tuple[str, ...] = ()) -> ModelRow:
    return ModelRow(
        model_version=version, product=product, stage=stage, metrics={"defect_recall": 0.9},
        taxonomy_version="1", dataset_version="ds-test", artifact_bucket="models",
        artifact_key=f"{product}/{version}.tar.gz", artifact_sha256="0" * 64, artifact_bytes=10,
        gate={"min_defect_recall": 0.8, "max_false_reject_rate": 0.1, "failures": list(failures)},
    )  # fmt: skip


async def _register(api: Api, row: ModelRow) -> None:
    async with api.db.connection() as conn, conn.transaction():
        await registry.register_model(conn, row)


async def _history(api: Api, product: str) -> list[tuple[str, str, str, str, str]]:
    async with api.db.connection() as conn:
        rows = await registry.stage_history(conn, product=product)
    return [(r.model_version, r.from_stage, r.to_stage, r.changed_by, r.reason) for r in rows]


async def _production(api: Api, row: ModelRow) -> None:
    """Register `row` and make it production as a QA owner would (the registry layer)."""
    await _register(api, row)
    async with api.db.connection() as conn, conn.transaction():
        await registry.promote_model(conn, row.model_version, "earlier.qa", "earlier release")


async def test_candidate_promoted_by_approver_archives_production_and_is_announced(
    api: Api, tiny_train_set: Path
) -> None:
    product = f"promo{uuid.uuid4().hex[:6]}"
    old = f"20000101000000-{uuid.uuid4().hex[:8]}"
    await _production(api, _row(product, old, "candidate"))
    published = Published(api.bus, product)
    try:
        # A real training run that fails the service's default gate: not eligible.
        outcome = await train_once(
            tiny_train_set, api.settings, product=product, gate=IMPOSSIBLE_GATE, bus=api.bus,
            options=TrainingOptions(product=product, input_size=(64, 64)),
        )  # fmt: skip
        version = outcome.model_version
        assert outcome.stage == "candidate"
        assert any("defect_recall" in f and "< 2.0" in f for f in outcome.gate_failures), outcome
        await published.wait_for(version, "candidate")

        approver = api.login(f"qa_owner@*/{product}", subject="quinn", name="Quinn QA")
        job = await api.stub.GetTrainingJob(training_pb2.GetTrainingJobRequest(job_id=outcome.job_id))
        assert (job.state, job.model_version, job.stage) == ("succeeded", version, "candidate")
        assert list(job.gate_failures) == outcome.gate_failures

        # A failed gate is not overridden, whatever the reason: refused with the checks named.
        reason = "QA review of the holdout: recall acceptable for a supervised pilot"
        request = training_pb2.PromoteModelRequest(
            product=product, model_version=version, approved_by=FORGED, reason=reason
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api.stub.PromoteModel(request)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        # judged against the promoting service's gate in force (its default: recall >= 0.8)
        assert "release gate v0: defect_recall" in (err.value.details() or "")

        # The QA owner sets a gate for this product (versioned, audited); the model is eligible now.
        await api.stub.SetReleaseGate(training_pb2.SetReleaseGateRequest(
            product=product, gate_yaml="min_defect_recall: 0\nmax_false_reject_rate: 1\n", reason="pilot",
        ))  # fmt: skip
        entry = await api.stub.PromoteModel(request)
        assert (entry.model_version, entry.product, entry.stage) == (version, product, "production")
        assert entry.stage_changed_by == approver and entry.stage_reason.startswith(reason)
        assert entry.stage_changed_at.seconds > 0 and entry.eligible and entry.gate_version == 1

        event = await published.wait_for(version, "production")
        assert event.artifact.bucket == "models" and event.artifact.key == f"{product}/{version}.tar.gz"
        assert event.artifact.sha256 and event.artifact.size_bytes > 0
        assert event.meta.event_id != f"model:{version}"  # never de-duplicated against the registration

        models = await api.stub.ListModels(training_pb2.ListModelsRequest(product=product))
        assert {m.model_version: m.stage for m in models.models} == {version: "production", old: "archived"}
        job = await api.stub.GetTrainingJob(training_pb2.GetTrainingJobRequest(job_id=outcome.job_id))
        assert job.stage == "production"

        history = await _history(api, product)
        assert history[0][:4] == (old, "", "candidate", "release-gate")
        assert history[1][:4] == (old, "candidate", "production", "earlier.qa")
        assert history[2][:4] == (version, "", "candidate", "release-gate")
        assert history[2][4].startswith("release gate failed: defect_recall")
        assert history[3][:4] == (old, "production", "archived", approver)
        assert history[4][:4] == (version, "candidate", "production", approver)
        assert len(history) == 5

        # Promoting what already serves production is a harmless retry: nothing recorded.
        again = await api.stub.PromoteModel(
            training_pb2.PromoteModelRequest(product=product, model_version=version)
        )
        assert again.stage == "production" and len(await _history(api, product)) == 5

        # Rollback: one call back to the earlier production model.
        lead = api.login(f"qa_owner@{api.settings.plant}/{product}", subject="shift.lead")
        back = await api.stub.RollbackModel(
            training_pb2.RollbackModelRequest(model_version=old, reason="false rejects on line 2")
        )
        assert back.stage == "production" and back.stage_changed_by == lead == "shift.lead"
        await published.wait_for(old, "production")
        models = await api.stub.ListModels(training_pb2.ListModelsRequest(product=product))
        assert {m.model_version: m.stage for m in models.models} == {version: "archived", old: "production"}
        assert (await _history(api, product))[-2:] == [
            (
                version,
                "production",
                "archived",
                "shift.lead",
                f"replaced by {old}: rollback: false rejects on line 2",
            ),
            (old, "archived", "production", "shift.lead", "rollback: false rejects on line 2"),
        ]
    finally:
        await published.close()


async def test_promote_refuses_unknown_versions_and_anonymous_or_unexplained_releases(api: Api) -> None:
    product = f"promo{uuid.uuid4().hex[:6]}"
    held = f"20000101000001-{uuid.uuid4().hex[:8]}"
    await _register(api, _row(product, held, "candidate", ("defect_recall 0.5 < 0.8",)))
    forged = training_pb2.PromoteModelRequest(
        product=product, model_version=held, approved_by="qa.owner", reason="looks fine"
    )

    async def code_of(request: training_pb2.PromoteModelRequest) -> grpc.StatusCode:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api.stub.PromoteModel(request)
        return err.value.code()

    # Anonymous, or signed in without the QA owner's grant on this product: refused, whatever
    # approved_by claims.
    api.token = ""
    assert await code_of(forged) == grpc.StatusCode.UNAUTHENTICATED
    for grants in (["engineer@*/*", "admin@*/*"], ["qa_owner@*/another-product"]):
        api.login(*grants, subject="mallory")
        assert await code_of(forged) == grpc.StatusCode.PERMISSION_DENIED

    api.login(f"qa_owner@*/{product}", subject="quinn")
    assert (
        await code_of(training_pb2.PromoteModelRequest(product=product, model_version="nope"))
        == grpc.StatusCode.NOT_FOUND
    )
    assert (  # a real version, asked for under another product
        await code_of(training_pb2.PromoteModelRequest(product="other", model_version=held))
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        await code_of(training_pb2.PromoteModelRequest(product=product, model_version="  "))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    # Failed gate checks are never overridden, with or without a reason.
    for reason in ("", "looks fine"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api.stub.PromoteModel(
                training_pb2.PromoteModelRequest(product=product, model_version=held, reason=reason)
            )
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    models = await api.stub.ListModels(training_pb2.ListModelsRequest(product=product))
    assert [(m.model_version, m.stage) for m in models.models] == [(held, "candidate")]
    assert len(await _history(api, product)) == 1  # only the registration: refusals change nothing

    # The history is append-only.
    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        async with api.db.connection() as conn:
            await conn.execute(
                "UPDATE model_stage_history SET changed_by = 'someone else' WHERE product = %s", (product,)
            )
