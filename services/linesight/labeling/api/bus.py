"""Bus transport: InspectionResult -> ledger. Decides only ack / retry / dead-letter."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import psycopg

from linesight.common import subjects
from linesight.common.bus import BusUnavailable, Delivery, PoisonMessage, TransientError
from linesight.common.pb import events_pb2
from linesight.labeling.app.labeling import LabelingApp

log = logging.getLogger(__name__)

DURABLE = subjects.durable_name("labeling", subjects.INSPECTION_RESULT)


def make_result_handler(
    labeling: LabelingApp,
) -> Callable[[events_pb2.InspectionResult, Delivery], Awaitable[None]]:
    """Handler for InspectionResult deliveries (idempotent: redelivery never double-counts)."""

    async def handle(result: events_pb2.InspectionResult, delivery: Delivery) -> None:
        if not result.frame_id:
            raise PoisonMessage("InspectionResult without frame_id cannot enter the ledger")
        try:
            await labeling.record_result(result)
        except (psycopg.OperationalError, psycopg.errors.AdminShutdown, BusUnavailable) as exc:
            raise TransientError(f"ledger write for {result.frame_id} failed: {exc}") from exc
        except (psycopg.DataError, ValueError) as exc:
            raise PoisonMessage(f"result {result.frame_id} cannot be recorded: {exc}") from exc

    return handle


def result_subject(plant: str) -> str:
    """Only our plant's results (from LINESIGHT_PLANT), like inference's frame consumer: on a bus
    that carries several plants, another plant's results belong to that plant's ledger."""
    return subjects.station_pattern(subjects.INSPECTION_RESULT, plant=plant)
