"""Bus transport: InspectionResult -> outbox row. Decides only ack / retry / dead-letter."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import psycopg

from linesight.common import subjects
from linesight.common.bus import HDR_TRACEPARENT, Delivery, PoisonMessage, TransientError, require_producer
from linesight.common.db import DatabaseUnavailable
from linesight.common.pb import events_pb2
from linesight.mes.app.dispatch import MesApp

DURABLE = subjects.durable_name("mes", subjects.INSPECTION_RESULT)
# Only inference decides dispositions.
RESULT_PRODUCER = "inference"

ResultBatch = list[tuple[events_pb2.InspectionResult, Delivery]]


def make_result_handler(
    mes: MesApp,
) -> Callable[[events_pb2.InspectionResult, Delivery], Awaitable[None]]:
    """One result at a time (Bus.consume): ack only after its outbox row is committed."""
    batch = make_batch_handler(mes)

    async def handle(result: events_pb2.InspectionResult, delivery: Delivery) -> None:
        (outcome,) = await batch([(result, delivery)])
        if outcome is not None:
            raise outcome

    return handle


def make_batch_handler(mes: MesApp) -> Callable[[ResultBatch], Awaitable[Sequence[BaseException | None]]]:
    """A bus fetch of results (Bus.consume_batches) enters the outbox in one commit; each is acked
    only after it. A database that is down naks the batch (the bus redelivers it); a result the
    database refuses is found by writing the batch's results one by one, and dead-lettered alone."""

    async def handle(items: ResultBatch) -> list[BaseException | None]:
        outcomes: list[BaseException | None] = [None] * len(items)
        accepted: list[int] = []
        for i, (result, _) in enumerate(items):
            try:
                require_producer(result, RESULT_PRODUCER)
            except PoisonMessage as exc:
                outcomes[i] = exc
                continue
            if not result.frame_id:
                outcomes[i] = PoisonMessage("InspectionResult without frame_id has no MES disposition")
                continue
            accepted.append(i)
        if not accepted:
            return outcomes
        try:
            done = await mes.enqueue_many(
                [(items[i][0], items[i][1].headers.get(HDR_TRACEPARENT, "")) for i in accepted]
            )
        except (psycopg.OperationalError, DatabaseUnavailable) as exc:
            for i in accepted:
                outcomes[i] = _classify(items[i][0], exc)
            return outcomes
        except psycopg.DataError as exc:
            if len(accepted) == 1:
                outcomes[accepted[0]] = _classify(items[accepted[0]][0], exc)
                return outcomes
            for i in accepted:  # which one is it: each alone
                try:
                    (one,) = await mes.enqueue_many(
                        [(items[i][0], items[i][1].headers.get(HDR_TRACEPARENT, ""))]
                    )
                except Exception as exc:
                    one = exc
                outcomes[i] = _classify(items[i][0], one)
            return outcomes
        for i, outcome in zip(accepted, done, strict=True):
            outcomes[i] = _classify(items[i][0], outcome)
        return outcomes

    return handle


def _classify(result: events_pb2.InspectionResult, outcome: bool | BaseException) -> BaseException | None:
    """None: settled (ack); TransientError: the database is away (nak); PoisonMessage: never
    writable (DLQ); any other exception: nak and retry, as the bus does for an unknown failure."""
    if not isinstance(outcome, BaseException):
        return None
    if isinstance(outcome, psycopg.OperationalError | DatabaseUnavailable):
        return TransientError(f"outbox write for {result.frame_id} failed: {outcome}")
    if isinstance(outcome, psycopg.DataError | ValueError):
        return PoisonMessage(f"result {result.frame_id} cannot enter the outbox: {outcome}")
    return outcome


def result_subject(plant: str) -> str:
    """Only our plant's results (from LINESIGHT_PLANT): the outbox delivers to this plant's MES
    endpoint, which must never receive another plant's parts."""
    return subjects.station_pattern(subjects.INSPECTION_RESULT, plant=plant)
