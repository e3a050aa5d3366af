"""Labeling service against real NATS + PostgreSQL (+ S3 for thumbnails)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import grpc
import httpx
import psycopg
import pytest

from linesight.common import subjects
from linesight.common.bus import HDR_DLQ_REASON, Bus, Delivery
from linesight.common.identity import Principal
from linesight.common.identity.grpc import bearer_interceptors
from linesight.common.pb import common_pb2, events_pb2, labeling_pb2, labeling_pb2_grpc
from linesight.common.service import RunningService
from linesight.common.settings import Settings
from linesight.common.storage import ObjectStore, S3Config
from linesight.labeling.api import http
from linesight.labeling.app.labeling import LabelingApp

from .conftest import PLANT, make_result

pytestmark = pytest.mark.integration

SUBJECT = subjects.station_subject(PLANT, "line1", "st1", subjects.INSPECTION_RESULT)


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


Labeling = RunningService[LabelingApp]


async def ledger_rows(svc: Labeling, frame_id: str) -> int:
    assert svc.ctx.db is not None
    async with svc.ctx.db.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM ledger WHERE frame_id = %s", (frame_id,))
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def test_redelivered_result_is_counted_once(labeling_svc: Labeling, bus: Bus) -> None:
    before = (await labeling_svc.app.stats()).results
    result = make_result()
    await bus.publish(SUBJECT, result)
    # The same result again under a new event id: JetStream cannot de-duplicate it, the ledger must.
    again = events_pb2.InspectionResult()
    again.CopyFrom(result)
    again.meta.event_id = str(uuid.uuid4())
    await bus.publish(SUBJECT, again)

    async def recorded() -> bool:
        return await ledger_rows(labeling_svc, result.frame_id) == 1

    await eventually(recorded)
    outcome = await labeling_svc.app.record_result(result)  # a third, direct redelivery
    assert not outcome.recorded
    await asyncio.sleep(0.5)  # give the consumer time to handle the second publish
    assert await ledger_rows(labeling_svc, result.frame_id) == 1
    assert (await labeling_svc.app.stats()).results == before + 1
    # A new model version inspecting the same frame is a new ledger entry, not a duplicate.
    newer = make_result(frame_id=result.frame_id, model_version="m-test-2")
    assert (await labeling_svc.app.record_result(newer)).recorded


async def test_ledger_is_append_only(labeling_svc: Labeling) -> None:
    result = make_result()
    await labeling_svc.app.record_result(result)
    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        assert labeling_svc.ctx.db is not None
        async with labeling_svc.ctx.db.connection() as conn:
            await conn.execute("DELETE FROM ledger WHERE frame_id = %s", (result.frame_id,))
    assert await ledger_rows(labeling_svc, result.frame_id) == 1


async def test_review_verdict_enters_queue_and_requests_review(labeling_svc: Labeling, bus: Bus) -> None:
    review = make_result(
        verdict=common_pb2.VERDICT_REVIEW, confidence=0.4, disposition=common_pb2.DISPOSITION_REVIEW
    )
    low = make_result(
        verdict=common_pb2.VERDICT_DEFECT,
        defect_class="scratch",
        confidence=0.3,
        disposition=common_pb2.DISPOSITION_REJECT,
    )
    confident = make_result(
        verdict=common_pb2.VERDICT_DEFECT,
        defect_class="scratch",
        confidence=0.95,
        disposition=common_pb2.DISPOSITION_REJECT,
    )
    seen: dict[str, events_pb2.ReviewRequested] = {}

    async def on_review(msg: events_pb2.ReviewRequested, _: Delivery) -> None:
        seen[msg.frame_id] = msg

    stop = asyncio.Event()
    watcher = bus.consume_in_background(
        subjects.station_pattern(subjects.REVIEW_REQUESTED, plant=PLANT),
        f"t-review-{uuid.uuid4().hex[:8]}",
        events_pb2.ReviewRequested,
        on_review,
        stop=stop,
    )
    try:
        for r in (review, low, confident):
            await bus.publish(SUBJECT, r)

        async def all_seen() -> bool:
            return review.frame_id in seen and low.frame_id in seen

        await eventually(all_seen)
        queued = {q.frame_id: q for q in await labeling_svc.app.review_queue(limit=1000)}
        assert queued[review.frame_id].reason == "ANOMALY_ONLY"
        assert queued[low.frame_id].reason == "LOW_CONFIDENCE"
        assert await ledger_rows(labeling_svc, confident.frame_id) == 1
        assert confident.frame_id not in queued
        assert confident.frame_id not in seen
        assert seen[review.frame_id].queue == "review"
        assert seen[review.frame_id].station.station == "st1"
    finally:
        stop.set()
        await watcher


async def test_results_page_lists_results_with_thumbnails(
    labeling_svc: Labeling, labeling_settings: Settings, s3: object, mint: Callable[..., str]
) -> None:
    store = ObjectStore(S3Config.from_settings(labeling_settings))
    await asyncio.to_thread(store.ensure_buckets)
    image = await asyncio.to_thread(
        store.put_content_addressed, "frames", b"\x89PNG fake " + uuid.uuid4().bytes
    )
    result = make_result(
        verdict=common_pb2.VERDICT_DEFECT,
        defect_class="crack",
        confidence=0.91,
        disposition=common_pb2.DISPOSITION_REJECT,
        latency_ms=77.0,
    )
    result.image.CopyFrom(image)
    await labeling_svc.app.record_result(result)

    app = labeling_svc.ctx.app
    token = mint(f"labeler@{PLANT}/*", subject="alice")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://test",
        headers={"authorization": f"Bearer {token}"},
    ) as client:
        page = await client.get("/")
        assert page.status_code == 200
        assert result.frame_id[:12] in page.text
        assert "crack" in page.text and "reject" in page.text and "m-test-1" in page.text
        assert image.key in page.text  # presigned thumbnail URL points at the stored frame

        rows = (await client.get("/api/results", params={"verdict": "defect"})).json()
        mine = next(r for r in rows if r["frame_id"] == result.frame_id)
        assert mine["image_url"].startswith("http") and mine["latency_ms"] == 77.0
        thumb = await asyncio.to_thread(httpx.get, mine["image_url"])  # presigned URL serves it
        assert thumb.status_code == 200 and thumb.content.startswith(b"\x89PNG fake")

        stats = (await client.get("/api/stats")).json()
        assert stats["verdicts"]["defect"] >= 1 and stats["verdicts_by_class"]["crack"] >= 1
        assert stats["dispositions"]["reject"] >= 1
        assert stats["latency_ms"]["p99"] >= stats["latency_ms"]["p50"] > 0

        form = await client.post(
            "/label",
            content=f"frame_id={result.frame_id}&label=crack&severity=major",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert form.status_code == 303 and "first_pass" in form.headers["location"]
        again = await client.post(
            "/api/labels", json={"frame_id": result.frame_id, "label": "crack", "severity": "major"}
        )
        assert again.status_code == 409  # already labeled in this round: the next step is a review
        unknown = await client.post("/api/labels", json={"frame_id": "nope", "label": "crack"})
        assert unknown.status_code == 404
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as anonymous:
        assert (await anonymous.get("/api/results")).status_code == 401
        login = await anonymous.get("/", headers={"accept": "text/html"})
        assert login.status_code == 303 and login.headers["location"] == "/auth/refresh?next=/"


async def test_review_queue_shows_the_models_best_class_and_the_reason_in_words(
    labeling_svc: Labeling, mint: Callable[..., str]
) -> None:
    """A low-confidence pass reads "good" + the engine's reason, not the pseudo-class "review"."""
    unsure = make_result(
        verdict=common_pb2.VERDICT_REVIEW, confidence=0.55, disposition=common_pb2.DISPOSITION_REVIEW
    )
    unsure.review_reason = "low confidence pass"
    unsure.class_scores.add(defect_class="good", probability=0.55)
    unsure.class_scores.add(defect_class="scratch", probability=0.45)
    low = make_result(
        verdict=common_pb2.VERDICT_DEFECT,
        defect_class="scratch",
        confidence=0.3,
        disposition=common_pb2.DISPOSITION_REJECT,
    )
    for r in (unsure, low):
        await labeling_svc.app.record_result(r)
    app = labeling_svc.ctx.app
    token = mint(f"reviewer@{PLANT}/*", subject="rita")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://test",
        headers={"authorization": f"Bearer {token}"},
    ) as client:
        rows = (await client.get("/api/review-queue", params={"limit": 1000})).json()
    queued = {r["frame_id"]: r for r in rows}
    assert (queued[unsure.frame_id]["best_class"], queued[unsure.frame_id]["reason_text"]) == (
        "good",
        "low confidence pass",
    )
    assert (queued[low.frame_id]["best_class"], queued[low.frame_id]["reason_text"]) == (
        "scratch",
        "the model is not sure of its call",
    )
    page = http.templates.get_template("index.html").render(
        queue=[queued[unsure.frame_id]],
        results=[],
        stats=await labeling_svc.app.stats(),
        queue_stats=[],
        severities=[],
        classes=["good"],
        ambiguity_reasons=[],
        who=Principal("rita", "rita", "user"),
        csrf_token="t",
    )
    row = page.split(f'title="{unsure.frame_id}"')[1].split("</tr>")[0]
    assert "<td>good</td>" in row and ">low confidence pass<" in row
    assert row.count("<td>review</td>") == 1  # the queue's name; the model's call is not "review"


async def test_grpc_api(labeling_svc: Labeling, mint: Callable[..., str]) -> None:
    result = make_result(
        verdict=common_pb2.VERDICT_ERROR, confidence=0.0, disposition=common_pb2.DISPOSITION_REVIEW
    )
    fresh = make_result(verdict=common_pb2.VERDICT_REVIEW, confidence=0.3)
    for r in (result, fresh):
        await labeling_svc.app.record_result(r)
    token = mint(f"labeler@{PLANT}/*", subject="alice")
    target = labeling_svc.ctx.settings.grpc_target("labeling")
    async with grpc.aio.insecure_channel(target) as anonymous:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await labeling_pb2_grpc.LabelingServiceStub(anonymous).GetLedgerStats(
                labeling_pb2.GetLedgerStatsRequest()
            )
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    async with grpc.aio.insecure_channel(target, interceptors=bearer_interceptors(lambda: token)) as channel:
        stub = labeling_pb2_grpc.LabelingServiceStub(channel)
        queue = await stub.ListReviewQueue(labeling_pb2.ListReviewQueueRequest(limit=1000))
        item = next(i for i in queue.items if i.frame_id == result.frame_id)
        assert item.reason == "ERROR" and item.station.station == "st1"
        stats = await stub.GetLedgerStats(labeling_pb2.GetLedgerStatsRequest())
        assert stats.results >= 1 and stats.review_queue >= 1 and stats.verdicts["error"] >= 1
        # `user` is ignored: the labeler is the token's subject.
        resp = await stub.SubmitLabel(
            labeling_pb2.SubmitLabelRequest(frame_id=result.frame_id, label="good", user="mallory")
        )
        assert resp.state == "first_pass"
        labels = await labeling_svc.app.frame_labels(result.frame_id)
        assert [(x.author, x.label) for x in labels] == [("alice", "good")]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SubmitLabel(labeling_pb2.SubmitLabelRequest(frame_id="missing", label="good"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub.SubmitLabel(labeling_pb2.SubmitLabelRequest(frame_id=fresh.frame_id, label="crak"))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "label" in (bad.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await stub.ReviewLabel(labeling_pb2.ReviewLabelRequest(frame_id=result.frame_id, accept=True))
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED  # a labeler does not review


async def test_malformed_messages_go_to_dlq(labeling_svc: Labeling, bus: Bus) -> None:
    station = f"bad{uuid.uuid4().hex[:6]}"
    subject = subjects.station_subject(PLANT, "line1", station, subjects.INSPECTION_RESULT)
    # Undecodable bytes claiming to be an InspectionResult.
    await bus.jetstream.publish(
        subject,
        b"\xff\xfe not protobuf",
        headers={"Ls-Type": "linesight.v1.InspectionResult", "Nats-Msg-Id": uuid.uuid4().hex},
    )
    dlq = subjects.dlq_subject(subject)

    async def dead_lettered() -> bool:
        try:
            msg = await bus.jetstream.get_last_msg("DLQ", dlq)
        except Exception:
            return False
        return bool(msg.headers and msg.headers.get(HDR_DLQ_REASON) == "undecodable")

    await eventually(dead_lettered)
    # A decodable result without a frame id is poison for the ledger: DLQ, and the consumer keeps going.
    station2 = f"bad{uuid.uuid4().hex[:6]}"
    subject2 = subjects.station_subject(PLANT, "line1", station2, subjects.INSPECTION_RESULT)
    no_frame = make_result(station=station2)
    no_frame.frame_id = ""
    await bus.publish(subject2, no_frame)

    async def poisoned() -> bool:
        try:
            msg = await bus.jetstream.get_last_msg("DLQ", subjects.dlq_subject(subject2))
        except Exception:
            return False
        return bool(msg.headers and msg.headers.get(HDR_DLQ_REASON) == "poison")

    await eventually(poisoned)
    good = make_result()
    await bus.publish(SUBJECT, good)

    async def still_consuming() -> bool:
        return await ledger_rows(labeling_svc, good.frame_id) == 1

    await eventually(still_consuming)


async def test_other_plants_results_stay_out_of_this_ledger(labeling_svc: Labeling, bus: Bus) -> None:
    """The consumer reads only its plant's results: another plant on the same bus keeps its own."""
    foreign = make_result()
    other_plant = f"other{uuid.uuid4().hex[:6]}"
    foreign.capture.station.plant = other_plant
    await bus.publish(
        subjects.station_subject(other_plant, "line1", "st1", subjects.INSPECTION_RESULT), foreign
    )
    ours = make_result()
    await bus.publish(SUBJECT, ours)  # published after the foreign one: once it is in, the other was seen

    async def recorded() -> bool:
        return await ledger_rows(labeling_svc, ours.frame_id) == 1

    await eventually(recorded)
    assert await ledger_rows(labeling_svc, foreign.frame_id) == 0
