"""Registry stages, per-product release gates, QA sign-off, shadow comparison and rollback, against
real NATS, PostgreSQL and S3 (the training service as it runs, called over gRPC).

A model that passes its gate stays a candidate until a QA owner signs it off; a model that fails
the gate in force is refused with the failing checks named; a rollback returns production to an
earlier production model and announces it again (what drives inference's hot swap); the shadow
comparison is computed from the production and shadow results inference publishes.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from linesight.common import subjects
from linesight.common.bus import Bus
from linesight.common.pb import common_pb2, events_pb2, training_pb2
from linesight.common.settings import Settings
from linesight.training.app.trainer import ReleaseGate, TrainingOptions
from linesight.training.service import TrainingServiceOptions, make_setup, train_once
from linesight.training.store import registry
from tests.integration.training.test_model_promotion import Api, Published, _register, _row

pytestmark = pytest.mark.integration

PASSING = {"defect_recall": 0.9, "false_reject_rate": 0.05}
LENIENT = ReleaseGate(min_defect_recall=0.0, max_false_reject_rate=1.0)  # every tiny model passes


@pytest.fixture
async def svc(stack_settings: Settings, mint: Any) -> AsyncIterator[Api]:
    """The training service with its consumers (the shadow comparison reads inference's results)."""
    from linesight.common.identity.grpc import bearer_interceptors
    from linesight.common.pb import training_pb2_grpc
    from linesight.common.service import service_running

    bus = await Bus.connect(stack_settings.nats_url, "test-registry")
    await bus.ensure_streams()
    setup = make_setup(TrainingServiceOptions(gate=LENIENT))
    holder: list[Api] = []
    try:
        async with (
            service_running("training", setup, settings=stack_settings) as running,
            grpc.aio.insecure_channel(
                stack_settings.grpc_target("training"),
                interceptors=bearer_interceptors(lambda: holder[0].token),
            ) as channel,
        ):
            assert running.ctx.db is not None
            holder.append(
                Api(running.ctx.db, training_pb2_grpc.TrainingServiceStub(channel), bus, stack_settings, mint)
            )
            yield holder[0]
    finally:
        await bus.close()


async def _code(call: Awaitable[Any]) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value.code()


async def test_gate_passing_model_stays_a_candidate_until_a_qa_owner_signs_it_off(
    svc: Api, tiny_train_set: Path
) -> None:
    product = f"reg{uuid.uuid4().hex[:6]}"
    published = Published(svc.bus, product)
    try:
        outcome = await train_once(
            tiny_train_set, svc.settings, product=product, gate=LENIENT, bus=svc.bus,
            options=TrainingOptions(product=product, input_size=(64, 64)),
        )  # fmt: skip
        version = outcome.model_version
        assert (outcome.stage, outcome.gate_failures) == ("candidate", [])
        await published.wait_for(version, "candidate")

        svc.login(f"engineer@*/{product}", subject="eve")
        entry = await svc.stub.GetModel(training_pb2.GetModelRequest(model_version=version))
        assert (entry.stage, entry.eligible, entry.gate_version) == ("candidate", True, 0)
        lineage = json.loads(entry.lineage_json)
        assert lineage["code_version"].startswith("0.") and lineage["parameters"]["input_size"] == [64, 64]
        assert lineage["holdout_images"] > 0 and entry.dataset_version == outcome.dataset_version
        ask_report = training_pb2.GetGateReportRequest(model_version=version, html=True)
        report = await svc.stub.GetGateReport(ask_report)
        body = json.loads(report.report_json)
        assert report.passed and body["evaluation"]["per_class"] and "confusion" in body["evaluation"]
        assert "review_rate" in body["evaluation"]["metrics"] and "ece" in body["evaluation"]["metrics"]
        assert report.html.startswith("<!doctype html>") and "data:image/png;base64," in report.html
        assert report.html_key.endswith(f"{version}-gate-v0.html")

        # Eligible is not production: nothing promoted it, and inference was told only "candidate".
        await asyncio.sleep(0.5)
        models = await svc.stub.ListModels(training_pb2.ListModelsRequest(product=product))
        assert [(m.model_version, m.stage) for m in models.models] == [(version, "candidate")]
        assert {e.stage for e in published.events if e.model_version == version} == {"candidate"}

        # Sign-off: anonymous, an engineer, a QA owner of another product are refused.
        promote = training_pb2.PromoteModelRequest(model_version=version, reason="holdout reviewed")
        svc.token = ""
        assert await _code(svc.stub.PromoteModel(promote)) == grpc.StatusCode.UNAUTHENTICATED
        for grants in (["engineer@*/*", "admin@*/*"], ["qa_owner@*/another-product"]):
            svc.login(*grants, subject="mallory")
            assert await _code(svc.stub.PromoteModel(promote)) == grpc.StatusCode.PERMISSION_DENIED

        # The QA owner tightens the product's gate: critical recall needs evidence this holdout lacks.
        svc.login("engineer@*/*", subject="eve")
        strict = training_pb2.SetReleaseGateRequest(
            product=product, gate_yaml="min_recall: {critical: 0.99, major: 0.95}\n", reason="plant policy"
        )
        assert await _code(svc.stub.SetReleaseGate(strict)) == grpc.StatusCode.PERMISSION_DENIED
        approver = svc.login(f"qa_owner@*/{product}", subject="quinn", name="Quinn QA")
        v1 = await svc.stub.SetReleaseGate(strict)
        assert (v1.version, v1.author) == (1, approver) and "critical: 0.99" in v1.gate_yaml
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await svc.stub.PromoteModel(promote)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "recall[critical] not measured" in (err.value.details() or "")
        assert "v1" in (err.value.details() or "")
        entry = await svc.stub.GetModel(training_pb2.GetModelRequest(model_version=version))
        assert (entry.stage, entry.eligible, entry.gate_version) == ("candidate", False, 1)
        assert any("recall[critical]" in f for f in entry.gate_failures)
        bad = training_pb2.SetReleaseGateRequest(product=product, gate_yaml="min_recal: 1", reason="typo")
        assert await _code(svc.stub.SetReleaseGate(bad)) == grpc.StatusCode.INVALID_ARGUMENT

        v2 = await svc.stub.SetReleaseGate(training_pb2.SetReleaseGateRequest(
            product=product, gate_yaml="min_defect_recall: 0\nmax_false_reject_rate: 1\n",
            reason="pilot: every decision reviewed by hand",
        ))  # fmt: skip
        assert v2.version == 2
        got = await svc.stub.GetReleaseGate(training_pb2.GetReleaseGateRequest(product=product, version=1))
        assert got.version == 1 and got.reason == "plant policy"
        entry = await svc.stub.PromoteModel(promote)
        assert (entry.stage, entry.stage_changed_by, entry.eligible) == ("production", approver, True)
        assert entry.stage_reason.startswith("holdout reviewed (gate v2 passed)")
        await published.wait_for(version, "production")

        async with svc.db.connection() as conn:
            history = await registry.stage_history(conn, product=product)
            cur = await conn.execute(
                "SELECT action, object_id FROM audit_trail WHERE object_id LIKE %s OR object_id = %s "
                "ORDER BY seq",
                (f"{product}@%", version),
            )
            audit = await cur.fetchall()
        assert [(h.from_stage, h.to_stage, h.changed_by) for h in history] == [
            ("", "candidate", "release-gate"), ("candidate", "production", approver),
        ]  # fmt: skip
        assert audit == [
            ("release_gate.set", f"{product}@v1"), ("release_gate.set", f"{product}@v2"),
            ("model.promote", version),
        ]  # fmt: skip
    finally:
        await published.close()


async def test_the_registry_never_registers_a_new_model_as_production(svc: Api) -> None:
    """What keeps `linesight train` (the nightly CronJob) from releasing anything."""
    product = f"np{uuid.uuid4().hex[:6]}"
    with pytest.raises(registry.StageError, match="candidate until a QA owner signs it off"):
        await _register(svc, replace(_row(product, "v-prod", "production"), metrics=PASSING))
    async with svc.db.connection() as conn:
        assert await registry.list_models(conn, product) == []


async def test_rollback_republishes_the_earlier_production_model(svc: Api) -> None:
    product = f"rb{uuid.uuid4().hex[:6]}"
    first, second, never = (f"2000010100000{i}-{uuid.uuid4().hex[:8]}" for i in range(3))
    for version in (first, second, never):
        await _register(svc, replace(_row(product, version, "candidate"), metrics=PASSING))
    published = Published(svc.bus, product)
    try:
        approver = svc.login(f"qa_owner@*/{product}", subject="quinn")
        for version in (first, second):
            entry = await svc.stub.PromoteModel(training_pb2.PromoteModelRequest(model_version=version))
            assert entry.stage == "production"
        await published.wait_for(second, "production")

        rollback = training_pb2.RollbackModelRequest(product=product, reason="false rejects on line 2")
        svc.login("engineer@*/*", subject="eve")
        assert await _code(svc.stub.RollbackModel(rollback)) == grpc.StatusCode.PERMISSION_DENIED
        svc.login(f"qa_owner@*/{product}", subject="quinn")
        no_reason = training_pb2.RollbackModelRequest(product=product)
        assert await _code(svc.stub.RollbackModel(no_reason)) == grpc.StatusCode.INVALID_ARGUMENT
        to_never = training_pb2.RollbackModelRequest(model_version=never, reason="x")
        assert await _code(svc.stub.RollbackModel(to_never)) == grpc.StatusCode.FAILED_PRECONDITION

        before = sum(e.model_version == first and e.stage == "production" for e in published.events)
        entry = await svc.stub.RollbackModel(rollback)  # one call, no version: the previous one
        assert (entry.model_version, entry.stage, entry.stage_changed_by) == (first, "production", approver)
        deadline = asyncio.get_running_loop().time() + 10
        while asyncio.get_running_loop().time() < deadline:
            again = [e for e in published.events if e.model_version == first and e.stage == "production"]
            if len(again) > before:
                break
            await asyncio.sleep(0.1)
        assert len(again) == before + 1 and again[-1].artifact.key == f"{product}/{first}.tar.gz"
        models = await svc.stub.ListModels(training_pb2.ListModelsRequest(product=product))
        assert {m.model_version: m.stage for m in models.models} == {
            first: "production", second: "archived", never: "candidate",
        }  # fmt: skip
    finally:
        await published.close()


def _result(
    frame: str, model: str, verdict: common_pb2.Verdict, cls: str = "", *, shadow: bool
) -> events_pb2.InspectionResult:
    return events_pb2.InspectionResult(
        frame_id=frame, model_version=model, verdict=verdict, defect_class=cls, shadow=shadow,
        capture=common_pb2.CaptureMeta(station=common_pb2.StationRef(plant="p", line="l1", station="s1")),
    )  # fmt: skip


async def test_shadow_comparison_from_the_results_inference_publishes(svc: Api) -> None:
    product = f"sh{uuid.uuid4().hex[:6]}"
    prod, cand = (f"2000010100001{i}-{uuid.uuid4().hex[:8]}" for i in range(2))
    for version in (prod, cand):
        await _register(svc, replace(_row(product, version, "candidate"), metrics=PASSING))
    published = Published(svc.bus, product)
    try:
        svc.login(f"qa_owner@*/{product}", subject="quinn")
        await svc.stub.PromoteModel(training_pb2.PromoteModelRequest(model_version=prod))
        svc.login(f"engineer@*/{product}", subject="eve")
        to_prod = training_pb2.SetModelStageRequest(model_version=cand, stage="production")
        assert await _code(svc.stub.SetModelStage(to_prod)) == grpc.StatusCode.FAILED_PRECONDITION
        entry = await svc.stub.SetModelStage(
            training_pb2.SetModelStageRequest(model_version=cand, stage="shadow", reason="compare on line")
        )
        assert entry.stage == "shadow"
        await published.wait_for(cand, "shadow")

        tag = uuid.uuid4().hex[:6]
        result = subjects.station_subject(svc.settings.plant, "l1", "s1", subjects.INSPECTION_RESULT)
        shadow = subjects.station_subject(svc.settings.plant, "l1", "s1", subjects.INSPECTION_SHADOW)
        v = common_pb2
        decisions = [  # production, shadow
            ((v.VERDICT_PASS, ""), (v.VERDICT_PASS, "")),
            ((v.VERDICT_PASS, ""), (v.VERDICT_DEFECT, "scratch")),  # the candidate would reject
            ((v.VERDICT_DEFECT, "scratch"), (v.VERDICT_DEFECT, "scratch")),
            ((v.VERDICT_DEFECT, "crack"), (v.VERDICT_PASS, "")),  # the candidate would pass a crack
        ]
        for i, ((pv, pc), (sv, sc)) in enumerate(decisions):
            frame = f"f-{tag}-{i}"
            await svc.bus.publish(result, _result(frame, prod, pv, pc, shadow=False))
            await svc.bus.publish(shadow, _result(frame, cand, sv, sc, shadow=True))
        await svc.bus.publish(shadow, _result(f"f-{tag}-lonely", cand, v.VERDICT_PASS, shadow=True))

        ask = training_pb2.GetShadowReportRequest(product=product)  # the product's shadow model
        deadline = asyncio.get_running_loop().time() + 15
        while True:
            report = await svc.stub.GetShadowReport(ask)
            if (report.frames == 4 and report.unpaired == 1) or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.2)
        assert (report.model_version, report.frames, report.unpaired) == (cand, 4, 1)
        assert report.agreement == 0.5 and (report.would_reject, report.would_pass) == (1, 1)
        body = json.loads(report.report_json)
        assert body["flips"] == {"pass -> defect:scratch": 1, "defect:crack -> pass": 1}
        assert body["flips_by_class"] == {"scratch": 1, "crack": 1}
        assert body["production_versions"] == [prod]
        assert body["examples"]["would_pass"] == [f"f-{tag}-3"]

        # The comparison is the evidence at sign-off: quoted next to the approver's reason.
        svc.login(f"qa_owner@*/{product}", subject="quinn")
        entry = await svc.stub.PromoteModel(training_pb2.PromoteModelRequest(model_version=cand, reason="ok"))
        assert entry.stage == "production" and "shadow: 4 frames, agreement 50.0%" in entry.stage_reason
        svc.token = ""
        assert await _code(svc.stub.GetShadowReport(ask)) == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await published.close()
