"""Bus transport: InspectionResult -> outbox row. Decides only ack / retry / dead-letter."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import psycopg

from linesight.common import subjects
from linesight.common.bus import HDR_TRACEPARENT, Delivery, PoisonMessage, TransientError, require_producer
from linesight.common.db import DatabaseUnavailable
from linesight.common.pb import events_pb2
from linesight.mes.app.dispatch import MesApp

DURABLE = subjects.durable_name("mes", subjects.INSPECTION_RESULT)
# Only inference decides dispositions.
RESULT_PRODUCER = "inference"


def make_result_handler(
    mes: MesApp,
) -> Callable[[events_pb2.InspectionResult, Delivery], Awaitable[None]]:
    """Ack only after the outbox row is committed; a failed commit naks and the bus redelivers."""

    async def handle(result: events_pb2.InspectionResult, delivery: Delivery) -> None:
        require_producer(result, RESULT_PRODUCER)
        if not result.frame_id:
            raise PoisonMessage("InspectionResult without frame_id has no MES disposition")
        try:
            await mes.enqueue(result, traceparent=delivery.headers.get(HDR_TRACEPARENT, ""))
        except (psycopg.OperationalError, DatabaseUnavailable) as exc:
            raise TransientError(f"outbox write for {result.frame_id} failed: {exc}") from exc
        except (psycopg.DataError, ValueError) as exc:
            raise PoisonMessage(f"result {result.frame_id} cannot enter the outbox: {exc}") from exc

    return handle


def result_subject(plant: str) -> str:
    """Only our plant's results (from LINESIGHT_PLANT): the outbox delivers to this plant's MES
    endpoint, which must never receive another plant's parts."""
    return subjects.station_pattern(subjects.INSPECTION_RESULT, plant=plant)
