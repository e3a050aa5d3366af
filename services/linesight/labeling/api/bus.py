"""Bus transport: InspectionResult -> ledger, TaxonomyPublished -> the product's class list and the
relabel queue. Decides only ack / retry / dead-letter."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

import psycopg

from linesight.common import subjects
from linesight.common.bus import BusUnavailable, Delivery, PoisonMessage, TransientError, require_producer
from linesight.common.pb import common_pb2, events_pb2
from linesight.common.storage import StorageUnavailable
from linesight.labeling.app.labeling import LabelingApp
from linesight.labeling.store.workflow import TaxonomyRow
from linesight.vision.taxonomy import Taxonomy, TaxonomyError

log = logging.getLogger(__name__)

DURABLE = subjects.durable_name("labeling", subjects.INSPECTION_RESULT)
TAXONOMY_DURABLE = subjects.durable_name("labeling", subjects.TAXONOMY_PUBLISHED)
_TRANSIENT = (psycopg.OperationalError, psycopg.errors.AdminShutdown, BusUnavailable)


class DocumentReader(Protocol):
    """The slice of ObjectStore that reads a taxonomy document (sha256-checked)."""

    async def aget_ref(self, ref: common_pb2.ObjectRef, *, verify: bool = True) -> bytes: ...


def make_result_handler(
    labeling: LabelingApp,
) -> Callable[[events_pb2.InspectionResult, Delivery], Awaitable[None]]:
    """Handler for InspectionResult deliveries (idempotent: redelivery never double-counts)."""

    async def handle(result: events_pb2.InspectionResult, delivery: Delivery) -> None:
        require_producer(result, "inference")  # only inference's verdicts enter the ledger
        if not result.frame_id:
            raise PoisonMessage("InspectionResult without frame_id cannot enter the ledger")
        try:
            await labeling.record_result(result)
        except _TRANSIENT as exc:
            raise TransientError(f"ledger write for {result.frame_id} failed: {exc}") from exc
        except (psycopg.DataError, ValueError) as exc:
            raise PoisonMessage(f"result {result.frame_id} cannot be recorded: {exc}") from exc

    return handle


def make_taxonomy_handler(
    labeling: LabelingApp, documents: DocumentReader
) -> Callable[[events_pb2.TaxonomyPublished, Delivery], Awaitable[None]]:
    """Handler for TaxonomyPublished: read the published document for its classes (the event names
    only what changed), keep it as the product's latest, requeue labels of classes whose definition
    changed (added, removed or redefined: a disposition-only change keeps every label valid)."""

    async def handle(event: events_pb2.TaxonomyPublished, delivery: Delivery) -> None:
        if not event.product or not event.version or not event.document.key:
            raise PoisonMessage("TaxonomyPublished without product, version or document")
        try:
            text = await documents.aget_ref(event.document)
        except StorageUnavailable as exc:  # unreachable, missing or not the published bytes: retry
            raise TransientError(f"taxonomy document {event.document.key} unreadable: {exc}") from exc
        try:
            taxonomy = Taxonomy.from_yaml(text.decode("utf-8"), source=event.document.key)
        except (TaxonomyError, UnicodeDecodeError) as exc:
            raise PoisonMessage(f"taxonomy {event.product} v{event.version} does not parse: {exc}") from exc
        row = TaxonomyRow(
            product=event.product,
            version=event.version,
            previous_version=event.previous_version,
            classes=list(taxonomy.class_names),
            changed_classes=list(event.relabel_classes),
            event_id=event.meta.event_id,
        )
        try:
            requeued = await labeling.on_taxonomy(row)
        except _TRANSIENT as exc:
            raise TransientError(f"taxonomy {event.product} v{event.version} not stored: {exc}") from exc
        log.info(
            "taxonomy %s v%s: %d classes, %d labels to relabel",
            row.product,
            row.version,
            len(row.classes),
            len(requeued),
        )

    return handle


def result_subject(plant: str) -> str:
    """Only our plant's results (from LINESIGHT_PLANT), like inference's frame consumer: on a bus
    that carries several plants, another plant's results belong to that plant's ledger."""
    return subjects.station_pattern(subjects.INSPECTION_RESULT, plant=plant)


def taxonomy_subject(plant: str) -> str:
    return subjects.plant_pattern(subjects.TAXONOMY_PUBLISHED, plant=plant)
