"""Training service against real NATS, PostgreSQL and S3, on a tiny generated dataset."""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from linesight.common import subjects
from linesight.common.bus import Bus, Delivery
from linesight.common.identity.grpc import bearer_interceptors
from linesight.common.pb import events_pb2, training_pb2, training_pb2_grpc
from linesight.common.service import service_running
from linesight.common.settings import Settings
from linesight.common.storage import ObjectStore, S3Config
from linesight.training.app.trainer import ReleaseGate, TrainingOptions
from linesight.training.service import TrainingServiceOptions, make_setup, train_once

pytestmark = pytest.mark.integration

NO_CONSUMER = make_setup(TrainingServiceOptions(consume=False))


@pytest.fixture
async def bus(stack_settings: Settings) -> AsyncIterator[Bus]:
    b = await Bus.connect(stack_settings.nats_url, "test-training")
    await b.ensure_streams()
    yield b
    await b.close()


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from linesight.vision.data.synth import generate_dataset

    return generate_dataset(
        tmp_path_factory.mktemp("tiny") / "ds", n_good=16, per_class=6, seed=1, size=64,
        classes=("scratch",), n_batches=2, n_stations=1,
    )  # fmt: skip


async def test_train_once_registers_uploads_and_announces(
    stack_settings: Settings, bus: Bus, tiny_dataset: Path
) -> None:
    product = f"tiny{uuid.uuid4().hex[:6]}"
    events: dict[str, list[object]] = {"model": [], "progress": []}

    async def on_model(msg: events_pb2.ModelPublished, _: Delivery) -> None:
        if msg.product == product:
            events["model"].append(msg)

    async def on_progress(msg: events_pb2.TrainingProgress, _: Delivery) -> None:
        events["progress"].append(msg)

    stop = asyncio.Event()
    tag = uuid.uuid4().hex[:8]
    watchers = [
        bus.consume_in_background(subjects.plant_pattern(subjects.MODEL_PUBLISHED), f"t-model-{tag}",
                                  events_pb2.ModelPublished, on_model, stop=stop),
        bus.consume_in_background(subjects.plant_pattern(subjects.TRAINING_PROGRESS), f"t-prog-{tag}",
                                  events_pb2.TrainingProgress, on_progress, stop=stop),
    ]  # fmt: skip
    lenient = ReleaseGate(min_defect_recall=0.0, max_false_reject_rate=1.0)
    try:
        outcome = await train_once(
            tiny_dataset, stack_settings, product=product, gate=lenient,
            options=TrainingOptions(product=product, input_size=(64, 64)), bus=bus,
        )  # fmt: skip
        version = outcome.model_version
        store = ObjectStore(S3Config.from_settings(stack_settings))
        blob = store.get_bytes("models", f"{product}/{version}.tar.gz")
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
            meta = json.load(tar.extractfile(f"{version}/metadata.json"))  # type: ignore[arg-type]
        assert meta["model_version"] == version

        async with service_running("training", NO_CONSUMER, settings=stack_settings) as svc:
            models = await svc.app.list_models(product)
            # passing the gate makes it eligible, never production: a QA owner signs it off
            assert [(m.model_version, m.stage) for m in models] == [(version, "candidate")]
            assert "defect_recall" in models[0].metrics or "false_reject_rate" in models[0].metrics
            assert models[0].artifact_key == f"{product}/{version}.tar.gz"

        deadline = asyncio.get_running_loop().time() + 10
        while not events["model"] and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        published = events["model"][0]
        assert isinstance(published, events_pb2.ModelPublished)
        assert published.model_version == version and published.stage == "candidate"
        assert published.artifact.key == f"{product}/{version}.tar.gz"
        assert any(isinstance(p, events_pb2.TrainingProgress) and p.finished for p in events["progress"])
    finally:
        stop.set()
        await asyncio.gather(*watchers)


async def test_grpc_jobs_and_failures(stack_settings: Settings, mint: Any, tmp_path: Path) -> None:
    engineer = mint("engineer@*/*", subject="erin")
    async with (
        service_running("training", NO_CONSUMER, settings=stack_settings) as svc,
        grpc.aio.insecure_channel(
            stack_settings.grpc_target("training"), interceptors=bearer_interceptors(lambda: engineer)
        ) as channel,
    ):
        stub = training_pb2_grpc.TrainingServiceStub(channel)
        # Only folders under the dataset root are read, and the answer never says whether a path
        # elsewhere exists: an existing folder outside the root gets the same reply as a missing one.
        outside = tmp_path / "elsewhere"
        outside.mkdir()
        (outside / "manifest.csv").write_text("path,label\n")
        replies: set[str | None] = set()
        for path in ("/nope", str(outside), "/etc", "../../etc", "."):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.StartTraining(training_pb2.StartTrainingRequest(product="p", dataset_version=path))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND, path
            replies.add((err.value.details() or "").replace(repr(path), "NAME"))
        assert len(replies) == 1 and "dataset root" in (replies.pop() or "")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.StartTraining(
                training_pb2.StartTrainingRequest(product="p", dataset_version="not-there")
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "no dataset version 'not-there'" in (
            err.value.details() or ""
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetTrainingJob(training_pb2.GetTrainingJobRequest(job_id="missing"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        # From confirmed labels, with none recorded for this fresh product: the job fails, clearly.
        assert svc.ctx.db is not None
        async with svc.ctx.db.connection() as conn:
            await conn.execute("DELETE FROM confirmed_labels")
        job = await stub.StartTraining(training_pb2.StartTrainingRequest(product="p"))
        assert job.state in ("queued", "running")
        done = job
        for _ in range(600):  # the worker process fails it
            done = await stub.GetTrainingJob(training_pb2.GetTrainingJobRequest(job_id=job.job_id))
            if done.state not in ("queued", "running"):
                break
            await asyncio.sleep(0.2)
        assert done.state == "failed" and "no confirmed labels" in done.error
        listed = await stub.ListModels(training_pb2.ListModelsRequest(product="nobody"))
        assert list(listed.models) == []
