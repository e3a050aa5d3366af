"""What the taxonomy service does: validate, version, store and announce defect taxonomies.

A version is immutable: publishing the same (product, version) again with identical content is
a no-op that returns the original record; different content is refused (ImmutableVersionError),
because labels and model releases cite the version. Write order on publish: the YAML goes to the
`reports` bucket first (an overwrite with identical bytes is harmless), then one transaction
inserts the row and publishes TaxonomyPublished before committing; if the bus refuses, nothing
is recorded and the caller may retry.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Protocol

import yaml

from linesight.common import subjects
from linesight.common.events import new_meta
from linesight.common.pb import common_pb2, events_pb2
from linesight.common.ports import ConnectionSource, EventPublisher
from linesight.taxonomy.store import versions
from linesight.taxonomy.store.versions import VersionRow

log = logging.getLogger(__name__)

PRODUCER = "taxonomy"
BUCKET = "reports"


class DocumentStore(Protocol):
    def aput_bytes(
        self, bucket: str, key: str, data: bytes, content_type: str = ..., metadata: Any = ...
    ) -> Awaitable[common_pb2.ObjectRef]: ...


class TaxonomyInvalidError(ValueError):
    """The YAML is not a valid taxonomy document; the message names the field."""


class ImmutableVersionError(ValueError):
    """This (product, version) already exists with different content."""


class UnknownTaxonomyError(KeyError):
    """No such product or version."""


def validate(text: str, product: str = "") -> tuple[str, str, dict[str, Any]]:
    """(product, version, classes by name) of a document, validated by linesight.vision's Taxonomy."""
    try:
        from linesight.vision.taxonomy import Taxonomy, TaxonomyError
    except ImportError:  # the engine is optional for this service; fall back to shape checks
        return _validate_shape(text, product)
    try:
        tax = Taxonomy.from_yaml(text, source=f"taxonomy for {product or '?'}")
    except TaxonomyError as exc:
        raise TaxonomyInvalidError(str(exc)) from exc
    if product and tax.product != product:
        raise TaxonomyInvalidError(f"document is for product {tax.product!r}, not {product!r}")
    classes = {c["name"]: c for c in tax.to_dict()["classes"]}
    return tax.product, tax.version, classes


def _validate_shape(text: str, product: str) -> tuple[str, str, dict[str, Any]]:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TaxonomyInvalidError(f"not valid YAML: {exc}") from exc
    if not isinstance(doc, dict) or not all(k in doc for k in ("product", "version", "classes")):
        raise TaxonomyInvalidError("document must be a mapping with product, version and classes")
    if product and str(doc["product"]) != product:
        raise TaxonomyInvalidError(f"document is for product {doc['product']!r}, not {product!r}")
    return str(doc["product"]), str(doc["version"]), {str(c.get("name")): c for c in doc["classes"] or []}


def changed_classes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Classes added, removed or redefined: what the labeling service must queue for relabeling."""
    return sorted(n for n in set(old) | set(new) if old.get(n) != new.get(n))


class TaxonomyApp:
    """Taxonomy use cases over the `taxonomy` schema, the reports bucket and the bus."""

    def __init__(
        self, db: ConnectionSource, bus: EventPublisher, store: DocumentStore | None, *, plant: str
    ) -> None:
        self.db = db
        self.bus = bus
        self.store = store
        self.plant = plant

    async def publish(self, text: str, approved_by: str, product: str = "") -> events_pb2.TaxonomyPublished:
        """Validate and record a new immutable version; returns its TaxonomyPublished event."""
        if not approved_by.strip():
            raise TaxonomyInvalidError("approved_by is required: a taxonomy version needs a named approver")
        product, version, classes = validate(text, product)
        digest = hashlib.sha256(text.encode()).hexdigest()
        key = f"taxonomy/{product}/{version}.yaml"
        ref = common_pb2.ObjectRef()
        async with self.db.connection() as conn, conn.transaction():
            await versions.lock_product(conn, product)
            existing = await versions.get(conn, product, version)
            if existing is not None:
                if existing.sha256 != digest:
                    raise ImmutableVersionError(
                        f"{product} version {version} already exists with different content "
                        f"(approved by {existing.approved_by}); publish it under a new version"
                    )
                return self._event(existing)
            previous = await versions.get(conn, product)
            old_classes = validate(previous.yaml, product)[2] if previous else {}
            if self.store is not None:
                ref = await self.store.aput_bytes(BUCKET, key, text.encode(), "application/yaml")
            row = VersionRow(
                product=product, version=version, yaml=text, sha256=digest, approved_by=approved_by.strip(),
                previous_version=previous.version if previous else "",
                changed_classes=tuple(changed_classes(old_classes, classes)),
                document_bucket=ref.bucket, document_key=ref.key,
            )  # fmt: skip
            await versions.insert(conn, row)
            event = self._event(row, ref)
            await self.bus.publish(subjects.plant_subject(self.plant, subjects.TAXONOMY_PUBLISHED), event)
        log.info("taxonomy %s v%s published by %s (changed: %s)", product, version, approved_by,
                 list(row.changed_classes))  # fmt: skip
        return event

    def _event(
        self, row: VersionRow, ref: common_pb2.ObjectRef | None = None
    ) -> events_pb2.TaxonomyPublished:
        meta = new_meta(PRODUCER, correlation_id=f"{row.product}:{row.version}")
        meta.event_id = f"taxonomy:{row.product}:{row.version}"
        doc = ref or common_pb2.ObjectRef(bucket=row.document_bucket, key=row.document_key, sha256=row.sha256)
        return events_pb2.TaxonomyPublished(
            meta=meta, product=row.product, version=row.version, previous_version=row.previous_version,
            document=doc, changed_classes=list(row.changed_classes), approved_by=row.approved_by,
        )  # fmt: skip

    async def get(self, product: str, version: str = "") -> VersionRow:
        async with self.db.connection() as conn:
            row = await versions.get(conn, product, version)
        if row is None:
            raise UnknownTaxonomyError(
                f"no taxonomy for product {product!r}" + (f" version {version!r}" if version else "")
            )
        return row

    async def list_versions(self, product: str) -> list[str]:
        async with self.db.connection() as conn:
            return await versions.list_versions(conn, product)

    async def seed(self, directory: Path, *, default_product: str = "") -> list[str]:
        """Publish the bundled taxonomies when the catalogue is empty; returns what was seeded.

        `default.yaml` is also published under `default_product` (the plant's configured product)
        so a fresh installation has a taxonomy for the product it runs.
        """
        async with self.db.connection() as conn:
            if await versions.count(conn):
                return []
        seeded: list[str] = []
        documents = await asyncio.to_thread(
            lambda: [(p.stem, p.read_text(encoding="utf-8")) for p in sorted(directory.glob("*.yaml"))]
        )
        for stem, text in documents:
            event = await self.publish(text, approved_by="seed")
            seeded.append(f"{event.product}:{event.version}")
            if stem == "default" and default_product and default_product != event.product:
                doc = yaml.safe_load(text)
                doc["product"] = default_product
                event = await self.publish(yaml.safe_dump(doc, sort_keys=False), approved_by="seed")
                seeded.append(f"{event.product}:{event.version}")
        return seeded
