"""Bus transport: LabelSubmitted -> confirmed labels (the dataset training can freeze) and the
automatic incremental update's count; TaxonomyPublished -> the product's newest taxonomy (what
training fits with); InspectionResult (production's and the shadow model's) -> the shadow
comparison."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

import psycopg

from linesight.common import subjects
from linesight.common.bus import Delivery, PoisonMessage, TransientError
from linesight.common.db import DatabaseUnavailable
from linesight.common.pb import events_pb2
from linesight.training.app.jobs import TrainingApp
from linesight.training.app.promotion import PromotionApp
from linesight.vision.taxonomy import TaxonomyError

log = logging.getLogger(__name__)

DURABLE = subjects.durable_name("training", subjects.LABEL_SUBMITTED)


class AutoUpdater(Protocol):
    def auto_update(self, product: str = "") -> Awaitable[list[str]]: ...


def make_label_handler(
    trainer: TrainingApp, updater: AutoUpdater | None = None
) -> Callable[[events_pb2.LabelSubmitted, Delivery], Awaitable[None]]:
    """With `updater`, each stored label may start the product's automatic incremental update;
    a failure there is logged, never redelivers the label (the periodic check retries it)."""

    async def handle(label: events_pb2.LabelSubmitted, delivery: Delivery) -> None:
        if not label.frame_id or not label.label:
            raise PoisonMessage("LabelSubmitted without frame_id or label")
        try:
            await trainer.record_label(label)
        except (psycopg.OperationalError, DatabaseUnavailable) as exc:
            raise TransientError(f"label for {label.frame_id} not stored: {exc}") from exc
        if updater is not None and label.product:
            try:
                await updater.auto_update(label.product)
            except Exception as exc:
                log.warning("automatic update check for %s failed: %s", label.product, exc)

    return handle


LABELS = subjects.plant_pattern(subjects.LABEL_SUBMITTED)  # every plant's: one model per product


TAXONOMIES = subjects.plant_pattern(subjects.TAXONOMY_PUBLISHED)
TAXONOMY_DURABLE = subjects.durable_name("training", subjects.TAXONOMY_PUBLISHED)


def make_taxonomy_handler(
    trainer: TrainingApp,
) -> Callable[[events_pb2.TaxonomyPublished, Delivery], Awaitable[None]]:
    """A document training cannot fit with is dead-lettered (the version in force stays); a
    database outage retries it."""

    async def handle(event: events_pb2.TaxonomyPublished, delivery: Delivery) -> None:
        try:
            await trainer.record_taxonomy(event, delivery.stream_seq)
        except TaxonomyError as exc:
            raise PoisonMessage(f"taxonomy {event.product} v{event.version} unusable: {exc}") from exc
        except (psycopg.OperationalError, DatabaseUnavailable) as exc:
            raise TransientError(f"taxonomy {event.product} v{event.version} not stored: {exc}") from exc

    return handle


# Live decisions for the shadow comparison: the shadow model's results and production's.
RESULTS = subjects.station_pattern(subjects.INSPECTION_RESULT)
RESULTS_DURABLE = subjects.durable_name("training", subjects.INSPECTION_RESULT)
SHADOW_RESULTS = subjects.station_pattern(subjects.INSPECTION_SHADOW)
SHADOW_DURABLE = subjects.durable_name("training", subjects.INSPECTION_SHADOW)


def make_result_handler(
    promotions: PromotionApp,
) -> Callable[[events_pb2.InspectionResult, Delivery], Awaitable[None]]:
    """A result without frame or model is not comparable (dropped); a database outage retries."""

    async def handle(result: events_pb2.InspectionResult, delivery: Delivery) -> None:
        try:
            await promotions.record_result(result)
        except (psycopg.OperationalError, DatabaseUnavailable) as exc:
            raise TransientError(f"result of {result.frame_id} not kept: {exc}") from exc

    return handle
