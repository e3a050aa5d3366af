"""Shadow -> promote -> rollback through the real inference service's hot swap.

The training service (gRPC, real PostgreSQL/NATS/S3) and the inference application (in-process
backend, its bus worker) share one plant: a QA owner's release makes inference serve the model,
a model put in shadow is scored beside production on live frames and never dispatched, the
comparison training builds from the results inference publishes says what the shadow model
would have rejected, and a rollback swaps production back in one call.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from linesight.common.pb import training_pb2
from linesight.common.settings import Settings
from linesight.common.storage import BUCKET_MODELS, ObjectStore, S3Config
from linesight.inference.api.bus import InspectionWorker
from linesight.inference.app import InferenceApp, InferenceConfig, Role
from linesight.inference.store.objects import pack_export
from linesight.training.store.registry import ModelRow
from tests.integration.inference import helpers as h
from tests.integration.training.test_model_promotion import Api, _register
from tests.integration.training.test_registry_stages import svc  # noqa: F401 - fixture
from tests.unit.inference.standin import LOADER, make_export

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


async def _artifact(store: ObjectStore, product: str, version: str, export: Path) -> ModelRow:
    key = f"{product}/{version}.tar.gz"
    ref = await store.aput_bytes(BUCKET_MODELS, key, pack_export(export), "application/gzip")
    return ModelRow(
        model_version=version, product=product, stage="candidate",
        metrics={"defect_recall": 0.9, "false_reject_rate": 0.05}, taxonomy_version="tx-1",
        dataset_version="ds-test", artifact_bucket=ref.bucket, artifact_key=ref.key,
        artifact_sha256=ref.sha256, artifact_bytes=ref.size_bytes, gate={"failures": []},
    )  # fmt: skip


async def test_shadow_promote_rollback_through_the_inference_hot_swap(
    svc: Api,  # noqa: F811
    stack_settings: Settings,
    tmp_path: Path,
) -> None:
    product = f"hs{uuid.uuid4().hex[:6]}"
    settings = stack_settings.model_copy(
        update={"product": product, "line": "l1", "station": "s1", "state_dir": tmp_path / "inf"}
    )
    store = ObjectStore(S3Config.from_settings(settings))
    await asyncio.to_thread(store.ensure_buckets)
    v1, cand = f"v1-{uuid.uuid4().hex[:6]}", f"cand-{uuid.uuid4().hex[:6]}"
    await _register(
        svc, await _artifact(store, product, v1, make_export(tmp_path / "v1", v1, product=product))
    )
    cand_export = make_export(tmp_path / "c", cand, gain=3.0, product=product)  # anomalous on every frame
    await _register(svc, await _artifact(store, product, cand, cand_export))

    cfg = InferenceConfig(model_loader=LOADER, work_dir=tmp_path / "work", station_group=settings.plant,
                          consumers=4, max_wait_ms=5.0)  # fmt: skip
    app = InferenceApp(settings, store, svc.bus, cfg)
    await app.start()
    worker = InspectionWorker(app, svc.bus)
    await worker.start()
    try:
        svc.login(f"qa_owner@*/{product}", subject="quinn")
        await svc.stub.PromoteModel(
            training_pb2.PromoteModelRequest(model_version=v1, reason="first release")
        )
        await app.wait_for_version(v1)

        svc.login(f"engineer@*/{product}", subject="eve")
        await svc.stub.SetModelStage(
            training_pb2.SetModelStageRequest(model_version=cand, stage="shadow", reason="line trial")
        )
        await app.wait_for_version(cand, Role.CANDIDATE)

        async with h.collect(svc.bus.url, settings) as results:
            frames = [h.frame_for(settings, "s1", await h.put_frame(store, h.png(60))) for _ in range(4)]
            for f in frames:
                await h.publish_frame(svc.bus, f)
            await results.wait(4)
        assert {results.one(f.frame_id).model_version for f in frames} == {v1}  # production dispatches

        ask = training_pb2.GetShadowReportRequest(model_version=cand)
        async with asyncio.timeout(30):
            while (report := await svc.stub.GetShadowReport(ask)).frames < 4:  # noqa: ASYNC110
                await asyncio.sleep(0.2)
        assert report.frames == 4 and report.would_reject == 4 and report.agreement == 0.0

        svc.login(f"qa_owner@*/{product}", subject="quinn")
        entry = await svc.stub.PromoteModel(
            training_pb2.PromoteModelRequest(model_version=cand, reason="shadow reviewed")
        )
        assert "shadow: 4 frames" in entry.stage_reason
        await app.wait_for_version(cand)  # hot swap to the promoted model

        back = await svc.stub.RollbackModel(
            training_pb2.RollbackModelRequest(product=product, reason="too many rejects on the line")
        )
        assert back.model_version == v1 and back.stage == "production"
        await app.wait_for_version(v1)  # and back, in one call
        assert app.models.production is not None and app.models.production.version == v1
    finally:
        await worker.stop()
        await app.stop()
