"""Taxonomy workflow, diff, immutability, auth and audit against real NATS, PostgreSQL and S3."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import httpx
import psycopg
import pytest
import yaml

from linesight.common import subjects
from linesight.common.audit import AuditLog
from linesight.common.bus import Bus, Delivery
from linesight.common.clients.taxonomy import TaxonomyClient
from linesight.common.grpcutil import Forbidden, InvalidArgument
from linesight.common.identity.grpc import bearer_metadata
from linesight.common.pb import events_pb2, taxonomy_pb2, taxonomy_pb2_grpc
from linesight.common.service import RunningService, service_running
from linesight.common.settings import Settings
from linesight.common.storage import ObjectStore, S3Config
from linesight.taxonomy.app.catalogue import TaxonomyApp
from linesight.taxonomy.service import bundled_dir, setup

pytestmark = pytest.mark.integration

Mint = Callable[..., str]


@pytest.fixture
async def bus(stack_settings: Settings) -> AsyncIterator[Bus]:
    b = await Bus.connect(stack_settings.nats_url, "test-taxonomy")
    await b.ensure_streams()
    yield b
    await b.close()


@pytest.fixture
async def store(stack_settings: Settings) -> ObjectStore:
    s = ObjectStore(S3Config.from_settings(stack_settings))
    await asyncio.to_thread(s.ensure_buckets)
    return s


@pytest.fixture
async def taxonomy_svc(stack_settings: Settings) -> AsyncIterator[RunningService[TaxonomyApp]]:
    async with service_running("taxonomy", setup, settings=stack_settings) as svc:
        yield svc


def document(product: str, version: str, classes: list[str], **class_fields: Any) -> str:
    doc = yaml.safe_load((bundled_dir() / "default.yaml").read_text())
    doc["product"], doc["version"] = product, version
    template = {**doc["classes"][0], **class_fields}
    doc["classes"] = [{**template, "name": c} for c in classes]
    doc["disposition"] = {"default": {"minor": "rework", "major": "reject", "critical": "reject"}}
    return yaml.safe_dump(doc, sort_keys=False)


def client(settings: Settings, token: str) -> TaxonomyClient:
    return TaxonomyClient(settings.grpc_target("taxonomy"), token=token)


class Announced:
    """TaxonomyPublished events of one product, as the bus delivers them."""

    def __init__(self, product: str) -> None:
        self.product = product
        self.events: list[events_pb2.TaxonomyPublished] = []

    async def on(self, msg: events_pb2.TaxonomyPublished, _: Delivery) -> None:
        if msg.product == self.product:
            self.events.append(msg)

    async def wait(self, n: int) -> None:
        async with asyncio.timeout(10):
            while len(self.events) < n:  # noqa: ASYNC110 - filled by the consumer callback
                await asyncio.sleep(0.05)


@pytest.fixture
async def announced(bus: Bus) -> AsyncIterator[Callable[[str], Announced]]:
    stop = asyncio.Event()
    watchers: list[Any] = []

    def watch(product: str) -> Announced:
        seen = Announced(product)
        watchers.append(bus.consume_in_background(
            subjects.plant_pattern(subjects.TAXONOMY_PUBLISHED), f"t-tax-{uuid.uuid4().hex[:8]}",
            events_pb2.TaxonomyPublished, seen.on, stop=stop,
        ))  # fmt: skip
        return seen

    yield watch
    stop.set()
    for w in watchers:
        await w


async def test_bundled_taxonomies_are_seeded(
    taxonomy_svc: RunningService[TaxonomyApp], stack_settings: Settings
) -> None:
    cat = taxonomy_svc.app
    assert await cat.list_versions("magnetic-tile")  # product named inside magnetic_tile.yaml
    default = await cat.get(stack_settings.product)
    assert default.approved_by == "seed" and "classes" in default.yaml
    assert await cat.seed(bundled_dir()) == []  # not empty any more: a restart seeds nothing


async def test_draft_review_publish(
    taxonomy_svc: RunningService[TaxonomyApp],
    stack_settings: Settings,
    mint: Mint,
    store: ObjectStore,
    announced: Callable[[str], Announced],
) -> None:
    product = f"p{uuid.uuid4().hex[:8]}"
    seen = announced(product)
    plant = stack_settings.plant
    eng = client(stack_settings, mint(f"engineer@{plant}/{product}", subject="erin"))
    qa = client(stack_settings, mint(f"qa_owner@{plant}/{product}", subject="quinn"))
    v1 = document(product, "1", ["scratch", "pit"], definition="A line scratched into the glaze.")
    first = await qa.publish_taxonomy(product, v1, migration_notes="first version")
    assert (first.version, first.approved_by, first.author) == ("1", "quinn", "quinn")
    assert list(first.added_classes) == ["pit", "scratch"] and first.document_yaml == v1
    assert store.get_bytes(first.document.bucket, first.document.key).decode() == v1

    # v2: scratch redefined, pit's rule changed only, stain added
    v2 = yaml.safe_load(v1)
    v2["version"] = "2"
    v2["classes"][0]["definition"] = "A line deeper than 0.1 mm."
    v2["classes"][1]["severity_rules"] = [{"severity": "critical", "min_area_px": 50}]
    v2["classes"].append({**v2["classes"][1], "name": "stain"})
    draft = await eng.create_draft(product, yaml.safe_dump(v2), migration_notes="scratch now needs depth")
    assert (draft.state, draft.author, draft.base_version) == ("draft", "erin", "1")
    v2["classes"][0]["visible_evidence"] = "Shadow along the line under raking light."
    text2 = yaml.safe_dump(v2)
    draft = await eng.update_draft(product, "2", text2)
    assert draft.yaml == text2 and draft.migration_notes == "scratch now needs depth"
    assert (await eng.submit_draft(product, "2")).state == "in_review"
    with pytest.raises(InvalidArgument, match="in_review"):  # FAILED_PRECONDITION: frozen under review
        await eng.update_draft(product, "2", text2)
    with pytest.raises(Forbidden):  # an engineer drafts but never approves
        await eng.approve_draft(product, "2")
    with pytest.raises(InvalidArgument, match="comment"):
        await qa.reject_draft(product, "2", comment=" ")
    rejected = await qa.reject_draft(product, "2", comment="say how deep")
    assert (rejected.state, rejected.review_comment) == ("draft", "say how deep")
    await eng.submit_draft(product, "2")

    diff = await qa.diff(product, "1", "2")  # a published version against a draft
    assert list(diff.redefined_classes) == ["scratch"] and list(diff.added_classes) == ["stain"]
    assert list(diff.rule_changed_classes) == ["pit"]
    change = next(c for c in diff.changes if c.path == "classes.scratch.definition")
    assert (change.category, change.new_json) == ("definition", '"A line deeper than 0.1 mm."')

    published = await qa.approve_draft(product, "2", comment="ok")
    assert (published.previous_version, published.author, published.approved_by) == ("1", "erin", "quinn")
    assert list(published.redefined_classes) == ["scratch"]
    assert list(published.rule_changed_classes) == ["pit"]
    assert list(published.relabel_classes) == ["scratch", "stain"]
    assert published.migration_notes == "scratch now needs depth"
    assert await eng.list_drafts(product) == []
    doc = await eng.get_taxonomy(product)
    assert (doc.version, doc.author, doc.approved_by) == ("2", "erin", "quinn")

    await seen.wait(2)
    await asyncio.sleep(0.3)
    assert [e.version for e in seen.events] == ["1", "2"]
    assert list(seen.events[1].relabel_classes) == ["scratch", "stain"]

    assert taxonomy_svc.ctx.db is not None
    trail = AuditLog(taxonomy_svc.ctx.db)
    assert await trail.verify() is None
    mine = [r async for r in trail.records() if r.object_id.startswith(f"{product}:")]
    assert [(r.action, r.actor, r.role) for r in mine] == [
        ("taxonomy.publish", "quinn", "qa_owner"),
        ("taxonomy.submit", "erin", "engineer"),
        ("taxonomy.reject", "quinn", "qa_owner"),
        ("taxonomy.submit", "erin", "engineer"),
        ("taxonomy.approve", "quinn", "qa_owner"),
    ]
    assert mine[2].reason == "say how deep"


async def test_published_versions_are_immutable(
    taxonomy_svc: RunningService[TaxonomyApp], stack_settings: Settings, mint: Mint
) -> None:
    product = f"i{uuid.uuid4().hex[:8]}"
    token = mint(f"qa_owner@{stack_settings.plant}/{product}", subject="quinn")
    metadata = bearer_metadata(token)
    v1 = document(product, "1", ["scratch"])
    async with grpc.aio.insecure_channel(stack_settings.grpc_target("taxonomy")) as channel:
        stub = taxonomy_pb2_grpc.TaxonomyServiceStub(channel)
        first = await stub.PublishTaxonomy(
            taxonomy_pb2.PublishTaxonomyRequest(product=product, yaml=v1, approved_by="mallory"),
            metadata=metadata,
        )
        assert first.approved_by == "quinn"  # the request's approved_by is ignored
        again = await stub.PublishTaxonomy(
            taxonomy_pb2.PublishTaxonomyRequest(product=product, yaml=v1), metadata=metadata
        )
        again.meta.ClearField("emitted_at")
        first.meta.ClearField("emitted_at")
        assert again == first  # idempotent: the same event, nothing new announced
        edited = document(product, "1", ["scratch", "crack"])
        for call, request in (
            (stub.PublishTaxonomy, taxonomy_pb2.PublishTaxonomyRequest(product=product, yaml=edited)),
            (stub.CreateDraft, taxonomy_pb2.SaveDraftRequest(product=product, yaml=edited)),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(request, metadata=metadata)
            assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
            assert "immutable" in (err.value.details() or "") or "already published" in (
                err.value.details() or ""
            )
        assert (await stub.GetTaxonomy(taxonomy_pb2.GetTaxonomyRequest(product=product, version="1"),
                                       metadata=metadata)).yaml == v1  # fmt: skip
    assert taxonomy_svc.ctx.db is not None
    with pytest.raises(psycopg.errors.RaiseException, match="immutable"):
        async with taxonomy_svc.ctx.db.connection() as conn:
            await conn.execute("UPDATE taxonomy_versions SET yaml = '' WHERE product = %s", (product,))


async def test_validation_names_the_field(
    taxonomy_svc: RunningService[TaxonomyApp], stack_settings: Settings, mint: Mint
) -> None:
    product = f"v{uuid.uuid4().hex[:8]}"
    token = mint(f"engineer@{stack_settings.plant}/{product}", subject="erin")
    headers = {"authorization": f"Bearer {token}"}
    bad_severity = document(product, "1", ["scratch"]).replace(
        "default_severity: major", "default_severity: fatal"
    )
    unknown_class = yaml.safe_load(document(product, "1", ["scratch"]))
    unknown_class["disposition"]["pit"] = {"major": "reject"}
    async with httpx.AsyncClient(base_url=stack_settings.http_url("taxonomy"), headers=headers) as http:
        r = await http.post(f"/api/taxonomies/{product}/drafts", json={"yaml": bad_severity})
        assert r.status_code == 422 and "default_severity 'fatal'" in r.json()["detail"]
        r = await http.post(f"/api/taxonomies/{product}/drafts", json={"yaml": yaml.safe_dump(unknown_class)})
        assert r.status_code == 422 and "unknown class 'pit'" in r.json()["detail"]
        r = await http.post(
            f"/api/taxonomies/{product}/drafts", json={"yaml": "a: [", "migration_notes": "x"}
        )
        assert r.status_code == 422 and "YAML" in r.json()["detail"]
        body = {"yaml": document(product, "1", ["scratch"]), "migration_notes": "a\x00b"}
        r = await http.post(f"/api/taxonomies/{product}/drafts", json=body)
        assert r.status_code == 422 and "migration_notes" in r.text
        assert (await http.get(f"/api/taxonomies/{product}/drafts")).json()["drafts"] == []  # nothing kept
    async with grpc.aio.insecure_channel(stack_settings.grpc_target("taxonomy")) as channel:
        stub = taxonomy_pb2_grpc.TaxonomyServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CreateDraft(taxonomy_pb2.SaveDraftRequest(product=product, yaml=bad_severity),
                                   metadata=bearer_metadata(token))  # fmt: skip
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "default_severity 'fatal'" in (err.value.details() or "")


async def test_http_workflow_and_auth(
    taxonomy_svc: RunningService[TaxonomyApp], stack_settings: Settings, mint: Mint
) -> None:
    product = f"h{uuid.uuid4().hex[:8]}"
    plant = stack_settings.plant
    labeler = {"authorization": f"Bearer {mint(f'labeler@{plant}/{product}', subject='lena')}"}
    eng = {"authorization": f"Bearer {mint(f'engineer@{plant}/{product}', subject='erin')}"}
    qa = {"authorization": f"Bearer {mint(f'qa_owner@{plant}/{product}', subject='quinn')}"}
    other_qa = {"authorization": f"Bearer {mint(f'qa_owner@{plant}/elsewhere', subject='otto')}"}
    base = f"/api/taxonomies/{product}"
    async with httpx.AsyncClient(base_url=stack_settings.http_url("taxonomy")) as http:
        assert (await http.get(base)).status_code == 401
        assert (
            await http.post(f"{base}/publish", json={"yaml": document(product, "1", ["a"])})
        ).status_code == 401
        r = await http.post(f"{base}/publish", json={"yaml": document(product, "1", ["a"])}, headers=labeler)
        assert r.status_code == 403
        r = await http.post(f"{base}/publish", json={"yaml": document(product, "1", ["a"])}, headers=other_qa)
        assert r.status_code == 403  # qa_owner, but of another product
        body = {"yaml": document(product, "1", ["a"]), "approved_by": "x"}
        r = await http.post(f"{base}/publish", json=body, headers=qa)
        assert r.status_code == 201 and r.json()["approved_by"] == "quinn"

        r = await http.post(
            f"{base}/drafts", json={"yaml": document(product, "2", ["a", "b"])}, headers=labeler
        )
        assert r.status_code == 403
        r = await http.post(f"{base}/drafts", json={"yaml": document(product, "2", ["a", "b"]),
                                                    "migration_notes": "add b"}, headers=eng)  # fmt: skip
        assert r.status_code == 201 and r.json()["state"] == "draft"
        assert (
            await http.post(f"{base}/drafts/2/approve", json={}, headers=qa)
        ).status_code == 409  # not submitted
        assert (await http.post(f"{base}/drafts/2/submit", headers=eng)).json()["state"] == "in_review"
        assert (await http.post(f"{base}/drafts/2/approve", json={}, headers=labeler)).status_code == 403
        assert (await http.post(f"{base}/drafts/2/approve", json={}, headers=eng)).status_code == 403
        r = await http.post(f"{base}/drafts/2/approve", json={"comment": "fine"}, headers=qa)
        assert r.status_code == 200 and r.json()["added_classes"] == ["b"] and r.json()["author"] == "erin"

        r = await http.get(f"{base}/diff", params={"from": "1", "to": "2"}, headers=labeler)
        assert r.status_code == 200 and r.json()["added_classes"] == ["b"]
        assert (await http.get(f"{base}/latest", headers=labeler)).text == document(product, "2", ["a", "b"])
        listed = (await http.get(base, headers=labeler)).json()
        assert listed["versions"] == ["1", "2"] and listed["drafts"] == []
        assert (await http.get(f"{base}/9", headers=labeler)).status_code == 404
    async with grpc.aio.insecure_channel(stack_settings.grpc_target("taxonomy")) as channel:
        stub = taxonomy_pb2_grpc.TaxonomyServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListVersions(taxonomy_pb2.ListTaxonomyVersionsRequest(product=product))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.PublishTaxonomy(
                taxonomy_pb2.PublishTaxonomyRequest(product=product, yaml=document(product, "3", ["a"])),
                metadata=labeler_metadata(mint, plant, product),
            )
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        listed = await stub.ListVersions(taxonomy_pb2.ListTaxonomyVersionsRequest(product=product),
                                         metadata=labeler_metadata(mint, plant, product))  # fmt: skip
        assert list(listed.versions) == ["1", "2"]


def labeler_metadata(mint: Mint, plant: str, product: str) -> tuple[tuple[str, str], ...]:
    return bearer_metadata(mint(f"labeler@{plant}/{product}", subject="lena"))
