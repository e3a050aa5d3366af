"""Bus transport: InspectionResult -> ledger. Decides only ack / retry / dead-letter."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import psycopg

from linesight.common import subjects
from linesight.common.bus import Bus, BusUnavailable, Delivery, PoisonMessage, TransientError
from linesight.common.pb import events_pb2
from linesight.labeling.app.labeling import Labeling

log = logging.getLogger(__name__)

DURABLE = subjects.durable_name("labeling", subjects.INSPECTION_RESULT)


def make_result_handler(
    labeling: Labeling,
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


def start_result_consumer(
    bus: Bus, labeling: Labeling, stop: asyncio.Event | None = None
) -> asyncio.Task[None]:
    """Consume the inspection results of every station of our plant into the ledger (durable
    `labeling-inspection-result`).

    Only our plant's (`labeling.plant`, from LINESIGHT_PLANT), like inference's frame consumer: on a
    bus that carries several plants, another plant's results belong to that plant's ledger.
    """
    return bus.consume_in_background(
        subjects.station_pattern(subjects.INSPECTION_RESULT, plant=labeling.plant),
        DURABLE,
        events_pb2.InspectionResult,
        make_result_handler(labeling),
        batch=32,
        stop=stop,
    )
