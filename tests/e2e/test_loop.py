"""The improvement loop through the real services: a line streams a shifted session; the review
queue receives frames with their reasons; a scripted inspector confirms them through the labeling
API (two people, two passes); the training service updates the model incrementally from those
labels; inference hot-swaps; false rejects on the rest of the stream drop, compared with the same
frames decided by the model before the loop.

Training, inference and labeling run in-process on the session's NATS, PostgreSQL and S3 (their
real setup: gRPC, HTTP, bus consumers; training jobs in worker processes), in a plant and product
of their own. Frames are synthetic (vision/data/synth.py) at 64 px: the model trains on two
batches; the line's session is a brighter lamp and a new material batch, which the model first
calls unusual on good parts.

The update: the training service's automatic incremental update fires after
`LINESIGHT_TRAINING_AUTO_UPDATE_LABELS` confirmed labels; where it does not (a build without it),
the test starts the incremental job through the training gRPC API, as an engineer would.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

import cv2
import grpc
import httpx
import numpy as np
import pytest

from linesight.common import subjects
from linesight.common.bus import Bus, Delivery
from linesight.common.events import new_meta
from linesight.common.identity.grpc import bearer_interceptors
from linesight.common.pb import common_pb2, events_pb2, training_pb2, training_pb2_grpc
from linesight.common.service import service_running
from linesight.common.settings import Settings
from linesight.common.storage import BUCKET_FRAMES, ObjectStore, S3Config
from linesight.inference.app.routing import REASONS
from linesight.vision.data.synth import BatchStyle, StationStyle, capture_part, generate_dataset, render_part

pytestmark = [pytest.mark.slow, pytest.mark.integration]

PLANT = f"loop{uuid.uuid4().hex[:8]}"
PRODUCT = f"tile{uuid.uuid4().hex[:6]}"
LINE, STATION = "l1", "s1"
SIZE = 64
FIRST_HALF = 48  # frames the inspector may see
SECOND_HALF = 48  # decided by the updated model, never labeled
DEFECT_EVERY = 8  # one scratch part in eight
AUTO_LABELS = 12  # confirmed labels that start the automatic incremental update


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:.0f} s")
        await asyncio.sleep(0.25)


def _session(n: int, seed: int) -> list[tuple[np.ndarray, str]]:
    """The line's session: a new batch under a brighter, flatter lamp (the deliberate shift)."""
    rng = np.random.default_rng(seed)
    batch = BatchStyle.draw(rng)
    batch = BatchStyle(**{**batch.__dict__, "brightness": min(0.9, batch.brightness + 0.3)})
    station = StationStyle.draw(rng)
    frames = []
    for i in range(n):
        label = "scratch" if i % DEFECT_EVERY == DEFECT_EVERY - 1 else "good"
        part = render_part(SIZE, "brushed", label, 50_000 + seed * 1000 + i, batch)
        image, _ = capture_part(part, station, 90_000 + i)
        frames.append((image, label))
    return frames


def _png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return bytes(buf)


def _frame(ref: common_pb2.ObjectRef, index: int) -> events_pb2.FrameCaptured:
    frame = events_pb2.FrameCaptured(meta=new_meta("capture"), frame_id=f"{PLANT}-{index:04d}", image=ref)
    frame.capture.station.CopyFrom(common_pb2.StationRef(plant=PLANT, line=LINE, station=STATION))
    frame.capture.part_id = f"part-{index:04d}"
    frame.capture.extra["product"] = PRODUCT
    frame.audit.passed = True
    frame.triggered_at.FromDatetime(datetime.now(UTC))
    return frame


def _false_rejects(verdicts: dict[str, int], truth: dict[str, str]) -> tuple[int, int]:
    """(good parts not passed, good parts) among the frames in `verdicts`."""
    good = [f for f in verdicts if truth[f] == "good"]
    return sum(verdicts[f] != common_pb2.VERDICT_PASS for f in good), len(good)


@pytest.fixture
async def results_watch(stack_settings: Settings) -> AsyncIterator[dict[str, events_pb2.InspectionResult]]:
    seen: dict[str, events_pb2.InspectionResult] = {}
    bus = await Bus.connect(stack_settings.nats_url, "test-loop")
    await bus.ensure_streams()

    async def on_result(msg: events_pb2.InspectionResult, _: Delivery) -> None:
        seen[msg.frame_id] = msg

    stop = asyncio.Event()
    watcher = bus.consume_in_background(
        subjects.station_pattern(subjects.INSPECTION_RESULT, plant=PLANT),
        f"t-loop-{uuid.uuid4().hex[:8]}",
        events_pb2.InspectionResult,
        on_result,
        stop=stop,
    )
    yield seen
    stop.set()
    await watcher
    await bus.close()


@pytest.mark.timeout(420)
async def test_reviews_of_a_shifted_session_update_the_model_and_cut_false_rejects(
    stack_settings: Settings,
    mint: Any,
    results_watch: dict[str, events_pb2.InspectionResult],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from linesight.inference.service import setup as inference_setup
    from linesight.labeling.service import setup as labeling_setup
    from linesight.labeling.store.workflow import TaxonomyRow
    from linesight.training.app.trainer import ReleaseGate, TrainingOptions
    from linesight.training.service import TrainingServiceOptions, make_setup

    t0 = time.monotonic()
    datasets = stack_settings.state_dir / f"loop-{PLANT}" / "datasets"
    settings = stack_settings.model_copy(
        update={"plant": PLANT, "product": PRODUCT, "datasets_dir": str(datasets)}
    )
    # training set: two batches of the product, one station (small: trains in seconds)
    generate_dataset(
        settings.datasets_root / "initial", n_good=40, per_class=10, seed=3, size=SIZE,
        classes=("scratch",), n_batches=2, n_stations=1,
    )  # fmt: skip
    stream = _session(FIRST_HALF + SECOND_HALF, seed=11)
    monkeypatch.setenv("LINESIGHT_LABELING_AUDIT_SHARE", "0")  # inference samples the audits
    monkeypatch.setenv("LINESIGHT_INFERENCE_REVIEW_AUDIT_RATE", "0.25")
    monkeypatch.setenv("LINESIGHT_INFERENCE_STORE_HEATMAPS", "false")
    monkeypatch.setenv("LINESIGHT_INFERENCE_DRIFT_WINDOW", "0")
    monkeypatch.setenv("LINESIGHT_TRAINING_AUTO_UPDATE_LABELS", str(AUTO_LABELS))
    monkeypatch.setenv("LINESIGHT_TRAINING_AUTO_CHECK_S", "1")
    lenient = ReleaseGate(
        min_defect_recall=0.0, max_false_reject_rate=1.0
    )  # a tiny set: the loop is tested here
    training_setup = make_setup(
        TrainingServiceOptions(
            gate=lenient, defaults=TrainingOptions(product=PRODUCT, input_size=(SIZE, SIZE))
        )
    )
    store = ObjectStore(S3Config.from_settings(settings))
    await asyncio.to_thread(store.ensure_buckets)
    engineer = mint(f"engineer@{PLANT}/{PRODUCT}", f"qa_owner@{PLANT}/{PRODUCT}", subject="eve")
    ann = mint(f"labeler@{PLANT}/{PRODUCT}", subject="ann")
    bob = mint(f"reviewer@{PLANT}/{PRODUCT}", subject="bob")

    async with AsyncExitStack() as services:
        await services.enter_async_context(service_running("training", training_setup, settings=settings))
        inference = await services.enter_async_context(
            service_running("inference", inference_setup, settings=settings)
        )
        labeling = await services.enter_async_context(
            service_running("labeling", labeling_setup, settings=settings)
        )
        await labeling.app.on_taxonomy(
            TaxonomyRow(product=PRODUCT, version="1", previous_version="", classes=["scratch"],
                        changed_classes=[], event_id="")
        )  # fmt: skip
        channel = grpc.aio.insecure_channel(
            settings.grpc_target("training"), interceptors=bearer_interceptors(lambda: engineer)
        )
        services.push_async_callback(channel.close)
        stub = training_pb2_grpc.TrainingServiceStub(channel)

        async def finished(job_id: str, timeout_s: float) -> training_pb2.TrainingJob:
            job = training_pb2.TrainingJob()

            async def done() -> bool:
                nonlocal job
                job = await stub.GetTrainingJob(training_pb2.GetTrainingJobRequest(job_id=job_id))
                return job.state in ("succeeded", "failed", "cancelled")

            await eventually(done, timeout_s, f"training job {job_id}")
            assert job.state == "succeeded", job
            return job

        async def serving(version: str) -> None:
            await inference.app.wait_for_version(version, timeout_s=60.0)

        # 1. the release the line starts with
        job = await stub.StartTraining(
            training_pb2.StartTrainingRequest(product=PRODUCT, dataset_version="initial")
        )
        first = await finished(job.job_id, 180.0)
        # every trained model is a candidate; the QA owner signs the first release off
        await stub.PromoteModel(
            training_pb2.PromoteModelRequest(
                model_version=first.model_version, reason="loop test: first release"
            )
        )
        await serving(first.model_version)
        print(f"initial model {first.model_version} serving after {time.monotonic() - t0:.0f} s")

        # 2. the line streams the first half of the session
        truth: dict[str, str] = {}
        refs: list[common_pb2.ObjectRef] = []
        bus = await Bus.connect(settings.nats_url, "test-loop-line")
        services.push_async_callback(bus.close)
        for i, (image, label) in enumerate(stream):
            ref = await store.aput_bytes(BUCKET_FRAMES, f"loop/{PLANT}/{i:04d}.png", _png(image), "image/png")
            refs.append(ref)
            truth[f"{PLANT}-{i:04d}"] = label
        subject = subjects.station_subject(PLANT, LINE, STATION, subjects.FRAME_CAPTURED)
        for i in range(FIRST_HALF):
            await bus.publish(subject, _frame(refs[i], i))
        first_ids = [f"{PLANT}-{i:04d}" for i in range(FIRST_HALF)]

        async def first_half_decided() -> bool:
            return all(f in results_watch for f in first_ids)

        await eventually(first_half_decided, 120.0, "results of the first half")
        routed = {f: results_watch[f].route_reason for f in first_ids if results_watch[f].route_reason}
        assert routed, "no frame of a shifted session went to review"
        assert set(routed.values()) <= set(REASONS), routed  # every routing carries its reason

        # 3. the review queue has them, each with its reason; the inspector confirms them
        base = settings.http_url("labeling")
        async with (
            httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {ann}"}) as ann_c,
            httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {bob}"}) as bob_c,
        ):
            queue: dict[str, dict[str, Any]] = {}

            async def queued() -> bool:
                rows = (await ann_c.get("/api/review-queue", params={"limit": 500})).json()
                queue.update({r["frame_id"]: r for r in rows if r["frame_id"] in routed})
                return len(queue) >= min(len(routed), AUTO_LABELS)

            await eventually(queued, 30.0, "routed frames in the review queue")
            assert all(row["reason"] for row in queue.values()), queue
            print(f"review queue: {len(queue)} of {FIRST_HALF} frames, reasons "
                  f"{sorted({r['reason'][:30] for r in queue.values()})}")  # fmt: skip
            for frame_id in queue:
                body: dict[str, Any] = {"frame_id": frame_id, "label": truth[frame_id]}
                if truth[frame_id] != "good":
                    body["severity"] = "major"
                r = await ann_c.post("/api/labels", json=body)
                assert r.status_code == 200, r.text
                r = await bob_c.post("/api/reviews", json={"frame_id": frame_id, "accept": True})
                assert r.status_code == 200 and r.json()["state"] == "confirmed", r.text

        # the same second half as the initial model decides it (the stream without the loop)
        before = {}
        for i in range(FIRST_HALF, FIRST_HALF + SECOND_HALF):
            outcome = await inference.app.inspect(_frame(refs[i], 10_000 + i))
            before[f"{PLANT}-{i:04d}"] = outcome.result.verdict

        # 4. the training service updates the model from the confirmed labels
        async def update_job() -> training_pb2.TrainingJob | None:
            for model in (await stub.ListModels(training_pb2.ListModelsRequest(product=PRODUCT))).models:
                if model.model_version != first.model_version:
                    return training_pb2.TrainingJob(model_version=model.model_version, state="succeeded")
            return None

        async def auto_started() -> bool:
            return await update_job() is not None

        try:
            await eventually(auto_started, 20.0, "the automatic incremental update")
            print("the automatic incremental update ran")
        except AssertionError:
            try:
                job = await stub.StartTraining(
                    training_pb2.StartTrainingRequest(product=PRODUCT, incremental=True)
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    pytest.skip(f"this build's training service has no incremental update: {exc.details()}")
                raise
            print("no automatic update within 20 s: started the incremental job through the gRPC API")
            await finished(job.job_id, 120.0)
        await eventually(auto_started, 120.0, "the updated model")
        updated = await update_job()
        assert updated is not None
        listed = {
            m.model_version: m
            for m in (await stub.ListModels(training_pb2.ListModelsRequest(product=PRODUCT))).models
        }
        if listed[updated.model_version].stage != "production":  # the QA owner's signature
            await stub.PromoteModel(
                training_pb2.PromoteModelRequest(
                    model_version=updated.model_version, reason="loop test: reviewed labels"
                )
            )
        # 5. inference hot-swaps, and the rest of the stream is decided by the updated model
        await serving(updated.model_version)
        second_ids = [f"{PLANT}-{i:04d}" for i in range(FIRST_HALF, FIRST_HALF + SECOND_HALF)]
        for i in range(FIRST_HALF, FIRST_HALF + SECOND_HALF):
            await bus.publish(subject, _frame(refs[i], i))

        async def second_half_decided() -> bool:
            return all(f in results_watch for f in second_ids)

        await eventually(second_half_decided, 120.0, "results of the second half")
        after = {f: results_watch[f].verdict for f in second_ids}
        assert {results_watch[f].model_version for f in second_ids} == {updated.model_version}
        was, goods = _false_rejects(before, truth)
        now, _ = _false_rejects(after, truth)
        print(
            f"false rejects on the second half ({goods} good parts): {was} before the loop, {now} after; "
            f"{len(queue)} labels, {time.monotonic() - t0:.0f} s in all"
        )
        assert was > 0, "the initial model rejects no good part of the shifted session: nothing to learn"
        assert now < was
