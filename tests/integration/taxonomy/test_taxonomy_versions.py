"""Taxonomy catalogue against real NATS, PostgreSQL and S3."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import psycopg
import pytest
import yaml

from linesight.common import subjects
from linesight.common.bus import Bus, Delivery
from linesight.common.pb import events_pb2, taxonomy_pb2, taxonomy_pb2_grpc
from linesight.common.service import RunningService, service_running
from linesight.common.settings import Settings
from linesight.common.storage import ObjectStore, S3Config
from linesight.taxonomy.app.catalogue import ImmutableVersionError, TaxonomyApp, TaxonomyInvalidError
from linesight.taxonomy.service import bundled_dir, setup

pytestmark = pytest.mark.integration


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


def document(product: str, version: str, classes: list[str]) -> str:
    doc = yaml.safe_load((bundled_dir() / "default.yaml").read_text())
    doc["product"], doc["version"] = product, version
    template = doc["classes"][0]
    doc["classes"] = [{**template, "name": c} for c in classes]
    doc.pop("disposition", None)
    doc["disposition"] = {"default": {"minor": "rework", "major": "reject", "critical": "reject"}}
    return yaml.safe_dump(doc, sort_keys=False)


async def test_bundled_taxonomies_are_seeded(
    taxonomy_svc: RunningService[TaxonomyApp], stack_settings: Settings
) -> None:
    cat = taxonomy_svc.app
    assert await cat.list_versions("magnetic-tile")  # product named inside magnetic_tile.yaml
    default = await cat.get(stack_settings.product)
    assert default.approved_by == "seed" and "classes" in default.yaml
    assert await cat.seed(bundled_dir()) == []  # not empty any more: a restart seeds nothing


async def test_versions_are_immutable_and_announced(
    taxonomy_svc: RunningService[TaxonomyApp], bus: Bus, store: ObjectStore
) -> None:
    cat = taxonomy_svc.app
    product = f"p{uuid.uuid4().hex[:8]}"
    seen: list[events_pb2.TaxonomyPublished] = []
    two_seen = asyncio.Event()

    async def on_published(msg: events_pb2.TaxonomyPublished, _: Delivery) -> None:
        if msg.product == product:
            seen.append(msg)
            if len(seen) >= 2:
                two_seen.set()

    stop = asyncio.Event()
    watcher = bus.consume_in_background(
        subjects.plant_pattern(subjects.TAXONOMY_PUBLISHED), f"t-tax-{uuid.uuid4().hex[:8]}",
        events_pb2.TaxonomyPublished, on_published, stop=stop,
    )  # fmt: skip
    try:
        v1 = document(product, "1", ["scratch"])
        first = await cat.publish(v1, approved_by="qa-owner")
        assert (first.version, first.previous_version, list(first.changed_classes)) == ("1", "", ["scratch"])
        assert store.get_bytes(first.document.bucket, first.document.key).decode() == v1

        assert (await cat.publish(v1, approved_by="someone-else")).approved_by == "qa-owner"  # idempotent
        with pytest.raises(ImmutableVersionError):
            await cat.publish(document(product, "1", ["scratch", "crack"]), approved_by="qa-owner")

        second = await cat.publish(document(product, "2", ["scratch", "crack"]), approved_by="qa-owner")
        assert second.previous_version == "1" and list(second.changed_classes) == ["crack"]
        assert await cat.list_versions(product) == ["1", "2"]
        assert (await cat.get(product)).version == "2"
        assert (await cat.get(product, "1")).yaml == v1

        with pytest.raises(psycopg.errors.RaiseException, match="immutable"):
            assert taxonomy_svc.ctx.db is not None
            async with taxonomy_svc.ctx.db.connection() as conn:
                await conn.execute("UPDATE taxonomy_versions SET yaml = '' WHERE product = %s", (product,))

        with pytest.raises(TaxonomyInvalidError):
            await cat.publish("classes: [", approved_by="qa-owner")
        with pytest.raises(TaxonomyInvalidError, match="approved_by"):
            await cat.publish(document(product, "3", ["scratch"]), approved_by=" ")
        with pytest.raises(TaxonomyInvalidError):
            await cat.publish(document(product, "3", ["scratch"]).replace("kind: surface", "kind: bogus"),
                              approved_by="qa-owner")  # fmt: skip

        await asyncio.wait_for(two_seen.wait(), 10)
        await asyncio.sleep(0.3)
        assert [e.version for e in seen] == ["1", "2"]  # the idempotent re-publish announced nothing
    finally:
        stop.set()
        await watcher


async def test_grpc_api(taxonomy_svc: RunningService[TaxonomyApp]) -> None:
    product = f"g{uuid.uuid4().hex[:8]}"
    target = taxonomy_svc.ctx.settings.grpc_target("taxonomy")
    async with grpc.aio.insecure_channel(target) as channel:
        stub = taxonomy_pb2_grpc.TaxonomyServiceStub(channel)
        published = await stub.PublishTaxonomy(taxonomy_pb2.PublishTaxonomyRequest(
            product=product, yaml=document(product, "7", ["pit"]), approved_by="qa"))  # fmt: skip
        assert published.version == "7"
        doc = await stub.GetTaxonomy(taxonomy_pb2.GetTaxonomyRequest(product=product))
        assert doc.version == "7" and "pit" in doc.yaml
        listed = await stub.ListVersions(taxonomy_pb2.ListTaxonomyVersionsRequest(product=product))
        assert list(listed.versions) == ["7"]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            changed = document(product, "7", ["pit", "stain"])
            await stub.PublishTaxonomy(
                taxonomy_pb2.PublishTaxonomyRequest(product=product, yaml=changed, approved_by="qa")
            )
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetTaxonomy(taxonomy_pb2.GetTaxonomyRequest(product="nope-" + product))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
