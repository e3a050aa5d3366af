"""The label workflow against real PostgreSQL and NATS: two passes, disputes decided by the QA owner,
operator overrides, relabel rounds, claims, optimistic edits, bad input and role checks over HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import yaml

from linesight.common import subjects
from linesight.common.bus import Bus, Delivery
from linesight.common.events import new_meta
from linesight.common.identity import Forbidden
from linesight.common.pb import common_pb2, events_pb2
from linesight.common.service import RunningService
from linesight.common.storage import BUCKET_REPORTS, ObjectStore, S3Config
from linesight.labeling.app.errors import ConflictError
from linesight.labeling.app.labeling import LabelingApp
from linesight.labeling.app.labels import Box, LabelInput, Polygon
from linesight.labeling.app.routing import AuditSampler
from linesight.labeling.store.workflow import TaxonomyRow
from linesight.vision.taxonomy import bundled_taxonomy

from .conftest import CLASSES, PLANT, PRODUCT, make_result, person

pytestmark = pytest.mark.integration

Labeling = RunningService[LabelingApp]
Mint = Callable[..., str]

ANN = person("labeler", subject="ann")
BOB = person("reviewer", subject="bob")
QUINN = person("qa_owner", subject="quinn")
OLGA = person("line_operator", subject="olga")


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
async def confirmed(labeling_settings: Any) -> AsyncIterator[dict[str, list[events_pb2.LabelSubmitted]]]:
    """Every LabelSubmitted of this plant, by frame, while the module runs."""
    seen: dict[str, list[events_pb2.LabelSubmitted]] = {}
    bus = await Bus.connect(labeling_settings.nats_url, "test-labels")
    await bus.ensure_streams()

    async def on_label(msg: events_pb2.LabelSubmitted, _: Delivery) -> None:
        seen.setdefault(msg.frame_id, []).append(msg)

    stop = asyncio.Event()
    watcher = bus.consume_in_background(
        subjects.plant_pattern(subjects.LABEL_SUBMITTED, plant=PLANT),
        f"t-wf-{uuid.uuid4().hex[:8]}",
        events_pb2.LabelSubmitted,
        on_label,
        stop=stop,
    )
    yield seen
    stop.set()
    await watcher
    await bus.close()


def client(svc: Labeling, token: str = "") -> httpx.AsyncClient:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=svc.ctx.app), base_url="http://test", headers=headers
    )


async def queued(svc: Labeling, **result: Any) -> str:
    r = make_result(verdict=common_pb2.VERDICT_REVIEW, confidence=0.4, **result)
    await svc.app.record_result(r)
    return r.frame_id


SCRATCH = LabelInput("scratch", "major", boxes=(Box(10, 12, 40, 30),))


async def test_two_pass_confirms_and_carries_regions_to_training(
    labeling_svc: Labeling, confirmed: dict[str, list[events_pb2.LabelSubmitted]], mint: Mint
) -> None:
    app = labeling_svc.app
    frame = await queued(labeling_svc)
    body = LabelInput(
        "scratch",
        "major",
        boxes=(Box(10, 12, 40, 30, "sealing_face"),),
        polygons=(Polygon(((1.0, 1.0), (9.0, 1.0), (5.0, 7.5))),),
        ambiguous=True,
        ambiguity_reason="borderline_size",
        comment="faint",
    )
    first = await app.submit_label(ANN, frame, body)
    assert first.state == "first_pass"
    # The first labeler reviewing their own label is refused by identity, over HTTP too.
    async with client(
        labeling_svc, mint(f"labeler@{PLANT}/{PRODUCT}", f"reviewer@{PLANT}/*", subject="ann")
    ) as c:
        own = await c.post("/api/reviews", json={"frame_id": frame, "accept": True})
    assert own.status_code == 403 and "another person" in own.json()["detail"]
    await asyncio.sleep(0.3)
    assert frame not in confirmed  # nothing reaches training before the second pass
    second = await app.review(BOB, frame, accept=True)
    assert second.state == "confirmed"

    async def published() -> bool:
        return frame in confirmed

    await eventually(published)
    (msg,) = confirmed[frame]
    assert (msg.label, msg.labeler, msg.reviewer, msg.source, msg.product) == (
        "scratch",
        "ann",
        "bob",
        "review",
        PRODUCT,
    )
    assert (
        msg.severity == common_pb2.SEVERITY_MAJOR
        and msg.ambiguous
        and msg.ambiguity_reason == "borderline_size"
    )
    assert (msg.regions[0].x_min, msg.regions[0].y_max, msg.regions[0].named_region) == (
        10,
        30,
        "sealing_face",
    )
    assert list(msg.polygons[0].x) == [1.0, 9.0, 5.0] and list(msg.polygons[0].y) == [1.0, 1.0, 7.5]
    assert msg.taxonomy_version == "1" and msg.round == 1
    with pytest.raises(Exception, match="confirmed"):
        await app.review(QUINN, frame, accept=True)


async def test_rejection_goes_to_the_qa_owner_whose_decision_is_final(
    labeling_svc: Labeling, confirmed: dict[str, list[events_pb2.LabelSubmitted]], mint: Mint
) -> None:
    app = labeling_svc.app
    frame = await queued(labeling_svc)
    await app.submit_label(ANN, frame, SCRATCH)
    reviewer = mint(f"reviewer@{PLANT}/{PRODUCT}", subject="bob")
    async with client(labeling_svc, reviewer) as c:
        no_reason = await c.post("/api/reviews", json={"frame_id": frame, "accept": False})
        assert no_reason.status_code == 422 and no_reason.json()["detail"][0]["loc"] == ["body", "reason"]
        bad_fix = await c.post(
            "/api/reviews",
            json={
                "frame_id": frame,
                "accept": False,
                "reason": "it is a crack",
                "correction": {"label": "crak"},
            },
        )
        assert bad_fix.status_code == 422
        assert bad_fix.json()["detail"][0]["loc"] == ["body", "correction", "label"]
        rejected = await c.post(
            "/api/reviews",
            json={
                "frame_id": frame,
                "accept": False,
                "reason": "it is a crack",
                "correction": {"label": "crack", "severity": "critical"},
            },
        )
        assert rejected.status_code == 200 and rejected.json()["state"] == "disputed"
        # A reviewer cannot settle the dispute, nor can the QA owner of another product.
        decision = {
            "frame_id": frame,
            "decision": {"label": "crack", "severity": "critical"},
            "reason": "crack per definition 2.1",
            "taxonomy_draft_needed": True,
        }
        assert (await c.post("/api/decisions", json=decision)).status_code == 403
    assert frame in {q.frame_id for q in await app.review_queue(queue="dispute", limit=1000)}
    other_qa = person("qa_owner", subject="otto", product="otherproduct")
    with pytest.raises(Forbidden):
        await app.decide(other_qa, frame, LabelInput("crack", "critical"), reason="x")
    async with client(labeling_svc, mint(f"qa_owner@{PLANT}/{PRODUCT}", subject="quinn")) as c:
        final = await c.post("/api/decisions", json=decision)
        assert final.status_code == 200 and final.json()["state"] == "confirmed"
        audit = (await c.get("/api/audit", params={"object_id": frame, "limit": 100})).json()["records"]

    async def published() -> bool:
        return frame in confirmed

    await eventually(published)
    msg = confirmed[frame][-1]
    assert (msg.label, msg.labeler, msg.reviewer, msg.decided_by) == ("crack", "ann", "bob", "quinn")
    actions = [(r["action"], r["actor"], r["role"]) for r in audit]
    assert actions == [
        ("label.submit", "ann", "labeler"),
        ("label.review", "bob", "reviewer"),
        ("dispute.decide", "quinn", "qa_owner"),
    ]
    decided = audit[2]
    assert decided["reason"] == "crack per definition 2.1" and decided["client"] == "127.0.0.1"
    assert decided["old_value"]["first_pass"]["label"] == "scratch"
    assert decided["old_value"]["review"]["label"] == "crack"
    assert decided["new_value"]["taxonomy_draft_needed"] is True


async def test_operator_override_is_a_label_with_provenance(
    labeling_svc: Labeling, confirmed: dict[str, list[events_pb2.LabelSubmitted]], mint: Mint
) -> None:
    passed = make_result(verdict=common_pb2.VERDICT_PASS, confidence=0.97)
    await labeling_svc.app.record_result(passed)
    async with client(labeling_svc, mint(f"line_operator@{PLANT}/{PRODUCT}", subject="olga")) as c:
        body = {
            "frame_id": passed.frame_id,
            "label": "dent",
            "severity": "minor",
            "reason": "visible dent at gate",
        }
        out = await c.post("/api/overrides", json=body)
        assert out.status_code == 200 and out.json()["state"] == "first_pass"
        # An operator does not label the review queue.
        refused = await c.post("/api/labels", json={"frame_id": passed.frame_id, "label": "dent"})
        assert refused.status_code == 403
    await labeling_svc.app.review(BOB, passed.frame_id, accept=True)

    async def published() -> bool:
        return passed.frame_id in confirmed

    await eventually(published)
    msg = confirmed[passed.frame_id][-1]
    assert (msg.source, msg.label, msg.labeler, msg.reviewer) == ("override", "dent", "olga", "bob")
    p = msg.provenance
    assert (p.operator, p.original_verdict, p.station.station, p.model_version) == (
        "olga",
        "pass",
        "st1",
        "m-test-1",
    )
    assert p.at.seconds > 0


async def test_taxonomy_change_puts_confirmed_labels_on_the_relabel_queue(
    labeling_svc: Labeling, confirmed: dict[str, list[events_pb2.LabelSubmitted]]
) -> None:
    app = labeling_svc.app
    scratched, dented = await queued(labeling_svc), await queued(labeling_svc)
    await app.submit_label(ANN, scratched, SCRATCH)
    await app.review(BOB, scratched, accept=True)
    await app.submit_label(ANN, dented, LabelInput("dent", "minor"))
    await app.review(BOB, dented, accept=True)
    requeued = await app.on_taxonomy(
        TaxonomyRow(PRODUCT, "2", "1", [*CLASSES, "pit"], changed_classes=["scratch"], event_id="t2")
    )
    assert scratched in requeued and dented not in requeued
    item = next(q for q in await app.review_queue(queue="relabel", limit=1000) if q.frame_id == scratched)
    assert (item.state, item.reason) == ("open", "TAXONOMY_CHANGED")
    await app.submit_label(ANN, scratched, LabelInput("pit", "minor"))
    assert (await app.review(BOB, scratched, accept=True)).state == "confirmed"

    async def relabeled() -> bool:
        return len(confirmed.get(scratched, [])) == 2

    await eventually(relabeled)
    msg = confirmed[scratched][-1]
    assert (msg.label, msg.source, msg.round, msg.taxonomy_version) == ("pit", "relabel", 2, "2")
    # Labels made under version 2 stay put when version 2 is announced again.
    assert await app.on_taxonomy(TaxonomyRow(PRODUCT, "2", "1", [*CLASSES, "pit"], ["scratch"], "t2")) == []


async def test_claims_leases_and_concurrent_edits(labeling_svc: Labeling, mint: Mint) -> None:
    app = labeling_svc.app
    station = f"cl{uuid.uuid4().hex[:6]}"
    frames = [await queued(labeling_svc, station=station) for _ in range(2)]
    carl = person("labeler", subject="carl")
    dana = person("labeler", subject="dana")
    # Two inspectors claim the same frame at once: exactly one holds it.
    results = await asyncio.gather(
        app.claim(carl, frame_id=frames[0]), app.claim(dana, frame_id=frames[0]), return_exceptions=True
    )
    assert sorted(type(r).__name__ for r in results) == ["ConflictError", "QueueItem"]
    holder, other = (carl, dana) if not isinstance(results[0], Exception) else (dana, carl)
    with pytest.raises(ConflictError, match="claimed"):
        await app.submit_label(other, frames[0], SCRATCH)
    # Claiming "the next" item never hands out a frame someone holds.
    nxt = await app.claim(other, queue="review")
    assert nxt is not None and nxt.frame_id != frames[0]
    # The holder walks away: once the lease runs out the frame returns.
    assert labeling_svc.ctx.db is not None
    async with labeling_svc.ctx.db.connection() as conn:
        await conn.execute(
            "UPDATE review_queue SET claim_expires_at = now() - interval '1 second' WHERE frame_id = %s",
            (frames[0],),
        )
    assert (await app.claim(other, frame_id=frames[0])) is not None
    out = await app.submit_label(other, frames[0], SCRATCH)
    await app.release(other, nxt.frame_id)
    assert (await app.claim(holder, frame_id=nxt.frame_id)) is not None  # released: free again

    # Two concurrent edits of one label from the same version: one wins, the other gets 409.
    token = mint(f"labeler@{PLANT}/{PRODUCT}", subject=other.subject)
    edit = {"expected_version": out.version, "label": "crack", "severity": "minor"}
    async with client(labeling_svc, token) as c:
        a, b = await asyncio.gather(
            c.put(f"/api/labels/{out.label_id}", json=edit),
            c.put(f"/api/labels/{out.label_id}", json={**edit, "label": "dent"}),
        )
        assert sorted([a.status_code, b.status_code]) == [200, 409]
        winner = a if a.status_code == 200 else b
        assert winner.json()["version"] == out.version + 1
        labels = (await c.get(f"/api/frames/{frames[0]}/labels")).json()
    assert (
        labels[0]["label"] == ("crack" if winner is a else "dent") and labels[0]["version"] == out.version + 1
    )
    with pytest.raises(Forbidden):
        await app.edit_label(holder, out.label_id, out.version + 1, SCRATCH)


async def test_bad_and_hostile_input(labeling_svc: Labeling, mint: Mint) -> None:
    frame = await queued(labeling_svc)
    async with client(labeling_svc, mint(f"labeler@{PLANT}/{PRODUCT}", subject="eve")) as c:

        async def label(**body: Any) -> httpx.Response:
            return await c.post("/api/labels", json={"frame_id": frame, **body})

        unknown = await label(label="scrach", severity="major")
        assert unknown.status_code == 422 and unknown.json()["detail"][0]["loc"] == ["body", "label"]
        assert "scratch" in unknown.json()["detail"][0]["msg"]  # names what is allowed
        bad_sev = await label(label="scratch", severity="huge")
        assert bad_sev.status_code == 422 and bad_sev.json()["detail"][0]["loc"] == ["body", "severity"]
        no_reason = await label(label="scratch", severity="minor", ambiguous=True)
        assert no_reason.json()["detail"][0]["loc"] == ["body", "ambiguity_reason"]
        bad_box = await label(
            label="scratch", severity="minor", regions=[{"x_min": 5, "y_min": 1, "x_max": 2, "y_max": 9}]
        )
        assert bad_box.status_code == 422 and bad_box.json()["detail"][0]["loc"] == ["body", "regions[0]"]
        missing = await c.post("/api/labels", json={"frame_id": "no-such-frame", "label": "scratch"})
        assert missing.status_code == 404
        huge = await label(label="scratch", severity="minor", comment="x" * (10 * 1024 * 1024))
        assert huge.status_code == 413
        nul = await label(label="scratch", severity="minor", comment="bad\x00byte")
        assert nul.status_code == 422 and nul.json()["detail"][0]["loc"] == ["body", "comment"]
        hostile = "<script>alert(1)</script> '); DROP TABLE ledger; --"
        ok = await label(label="scratch", severity="minor", comment=hostile)
        assert ok.status_code == 200
        stored = (await c.get(f"/api/frames/{frame}/labels")).json()
        assert stored[0]["comment"] == hostile  # stored as data, byte for byte
        assert (await c.get("/api/stats")).status_code == 200  # the ledger is still there
        page = await c.get("/", params={"error": hostile})
        assert page.status_code == 200
        assert (
            "<script>alert(1)</script>" not in page.text
            and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
        )


async def test_role_checks(labeling_svc: Labeling, mint: Mint) -> None:
    frame = await queued(labeling_svc)
    cases = [
        ("post", "/api/labels", {"frame_id": frame, "label": "good"}, f"engineer@{PLANT}/*", 403),
        ("post", "/api/decisions", {"frame_id": frame, "decision": {"label": "good"}, "reason": "r"},
         f"reviewer@{PLANT}/*", 403),
        ("get", "/api/audit", None, f"labeler@{PLANT}/*", 403),
        ("get", "/api/audit/verify", None, f"engineer@{PLANT}/*", 403),
        ("post", "/api/samples", {"name": "s", "frame_ids": [frame, frame + "x"]}, f"labeler@{PLANT}/*", 403),
        ("get", "/api/queues", None, f"line_operator@{PLANT}/*", 200),
        ("get", "/api/audit", None, f"admin@{PLANT}/*", 200),
        ("get", "/api/stats", None, "", 401),
        ("get", "/api/stats", None, f"service@{PLANT}/*", 403),
    ]  # fmt: skip
    for method, path, body, grant, expected in cases:
        token = mint(grant, subject="rolecheck") if grant else ""
        async with client(labeling_svc, token) as c:
            response = await c.request(method, path, json=body)
        assert response.status_code == expected, (method, path, grant, response.text)


async def test_audit_sample_queue_depth_and_capacity(labeling_svc: Labeling) -> None:
    app = labeling_svc.app
    sampler = AuditSampler(share=0.0, by_station={"audited": 1.0}, seed="s1")
    picks = [sampler.reason(make_result(station="audited")) for _ in range(5)]
    assert picks == ["AUDIT_SAMPLE_PASS"] * 5
    half = AuditSampler(share=0.5, seed="s1")
    frames = [make_result(station="st9") for _ in range(400)]
    chosen = [f.frame_id for f in frames if half.reason(f)]
    assert 150 < len(chosen) < 250  # about half
    assert chosen == [f.frame_id for f in frames if AuditSampler(share=0.5, seed="s1").reason(f)]  # seeded
    original = app.sampler
    app.sampler = sampler
    try:
        reject = make_result(
            verdict=common_pb2.VERDICT_DEFECT, defect_class="scratch", confidence=0.99, station="audited"
        )
        assert (await app.record_result(reject)).queue == "audit"
        unsampled = make_result(station="elsewhere")
        assert (await app.record_result(unsampled)).queue == ""
    finally:
        app.sampler = original
    item = next(q for q in await app.review_queue(queue="audit", limit=1000) if q.frame_id == reject.frame_id)
    assert item.reason == "AUDIT_SAMPLE_REJECT"
    stats = {s.queue: s for s in await app.queue_stats()}
    assert set(stats) == {"review", "audit", "dispute", "relabel"}
    assert stats["audit"].depth >= 1 and stats["review"].oldest_age_s > 0
    assert stats["review"].capacity_per_shift == 400 and not stats["review"].over_capacity
    app.config = app.config.model_copy(update={"capacity_per_shift": {"review": 1}})
    try:
        tight = {s.queue: s for s in await app.queue_stats()}
        async with client(labeling_svc) as c:
            metrics = (await c.get("/metrics")).text
    finally:
        app.config = app.config.model_copy(update={"capacity_per_shift": {"review": 400}})
    assert tight["review"].over_capacity and tight["review"].depth > 1
    assert 'linesight_labeling_queue_over_capacity{queue="review"} 1' in metrics
    assert 'linesight_labeling_queue_depth{queue="audit"}' in metrics


async def test_assignment_reserves_an_item_for_one_person(
    labeling_svc: Labeling, bus: Bus, mint: Mint
) -> None:
    app = labeling_svc.app
    station = f"as{uuid.uuid4().hex[:6]}"
    frame = await queued(labeling_svc, station=station)
    seen: list[events_pb2.ReviewRequested] = []

    async def on_review(msg: events_pb2.ReviewRequested, _: Delivery) -> None:
        seen.append(msg)

    stop = asyncio.Event()
    watcher = bus.consume_in_background(
        subjects.station_pattern(subjects.REVIEW_REQUESTED, plant=PLANT, station=station),
        f"t-assign-{uuid.uuid4().hex[:8]}",
        events_pb2.ReviewRequested,
        on_review,
        stop=stop,
    )
    try:
        async with client(labeling_svc, mint(f"labeler@{PLANT}/{PRODUCT}", subject="gus")) as c:
            refused = await c.post(f"/api/frames/{frame}/assign", json={"assignee": "gus"})
            assert refused.status_code == 403  # labelers do not hand out work
        async with client(labeling_svc, mint(f"qa_owner@{PLANT}/{PRODUCT}", subject="quinn")) as c:
            assigned = await c.post(f"/api/frames/{frame}/assign", json={"assignee": "hana"})
            assert assigned.status_code == 204
            trail = (await c.get("/api/audit", params={"action": "queue.assign", "object_id": frame})).json()
        assert trail["records"][0]["new_value"] == {"assigned_to": "hana"}
        gus, hana = person("labeler", subject="gus"), person("labeler", subject="hana")
        with pytest.raises(ConflictError, match="assigned to hana"):
            await app.claim(gus, frame_id=frame)
        with pytest.raises(ConflictError, match="assigned to hana"):
            await app.submit_label(gus, frame, SCRATCH)
        item = await app.claim(hana, frame_id=frame)
        assert item is not None and (item.assigned_to, item.claimed_by) == ("hana", "hana")

        async def announced() -> bool:
            return any(m.frame_id == frame and m.assigned_to == "hana" for m in seen)

        await eventually(announced)
    finally:
        stop.set()
        await watcher


async def test_published_taxonomy_arrives_over_the_bus(labeling_svc: Labeling, bus: Bus, s3: Any) -> None:
    """TaxonomyPublished names the document; labeling reads its classes from S3 and checks labels
    against them (a product of its own, so the module's product keeps its classes)."""
    product = f"glass{uuid.uuid4().hex[:6]}"
    document = bundled_taxonomy("default").to_dict()
    document.update(product=product, version="7")
    text = yaml.safe_dump(document).encode()
    store = ObjectStore(S3Config.from_settings(labeling_svc.ctx.settings))
    await asyncio.to_thread(store.ensure_buckets)
    ref = await store.aput_bytes(BUCKET_REPORTS, f"taxonomy/{product}/7.yaml", text, "application/yaml")
    ref.sha256 = hashlib.sha256(text).hexdigest()
    event = events_pb2.TaxonomyPublished(
        meta=new_meta("taxonomy"), product=product, version="7", document=ref, approved_by="quinn"
    )
    await bus.publish(subjects.plant_subject(PLANT, subjects.TAXONOMY_PUBLISHED), event)

    async def stored() -> bool:
        return await labeling_svc.app.taxonomy(product) is not None

    await eventually(stored)
    row = await labeling_svc.app.taxonomy(product)
    assert row is not None and row.version == "7" and row.classes == ["defect"]
