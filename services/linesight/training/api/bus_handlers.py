"""Bus transport: LabelSubmitted -> confirmed labels (the dataset training can freeze)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import psycopg

from linesight.common import subjects
from linesight.common.bus import Bus, Delivery, PoisonMessage, TransientError
from linesight.common.db import DatabaseUnavailable
from linesight.common.pb import events_pb2
from linesight.training.app.jobs import Trainer

DURABLE = subjects.durable_name("training", subjects.LABEL_SUBMITTED)


def make_label_handler(trainer: Trainer) -> Callable[[events_pb2.LabelSubmitted, Delivery], Awaitable[None]]:
    async def handle(label: events_pb2.LabelSubmitted, delivery: Delivery) -> None:
        if not label.frame_id or not label.label:
            raise PoisonMessage("LabelSubmitted without frame_id or label")
        try:
            await trainer.record_label(label)
        except (psycopg.OperationalError, DatabaseUnavailable) as exc:
            raise TransientError(f"label for {label.frame_id} not stored: {exc}") from exc

    return handle


def start_label_consumer(bus: Bus, trainer: Trainer, stop: asyncio.Event | None = None) -> asyncio.Task[None]:
    return bus.consume_in_background(
        subjects.plant_pattern(subjects.LABEL_SUBMITTED), DURABLE, events_pb2.LabelSubmitted,
        make_label_handler(trainer), stop=stop,
    )  # fmt: skip
