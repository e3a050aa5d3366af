"""Bus transport: LabelSubmitted -> confirmed labels (the dataset training can freeze)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import psycopg

from linesight.common import subjects
from linesight.common.bus import Delivery, PoisonMessage, TransientError
from linesight.common.db import DatabaseUnavailable
from linesight.common.pb import events_pb2
from linesight.training.app.jobs import TrainingApp

DURABLE = subjects.durable_name("training", subjects.LABEL_SUBMITTED)


def make_label_handler(
    trainer: TrainingApp,
) -> Callable[[events_pb2.LabelSubmitted, Delivery], Awaitable[None]]:
    async def handle(label: events_pb2.LabelSubmitted, delivery: Delivery) -> None:
        if not label.frame_id or not label.label:
            raise PoisonMessage("LabelSubmitted without frame_id or label")
        try:
            await trainer.record_label(label)
        except (psycopg.OperationalError, DatabaseUnavailable) as exc:
            raise TransientError(f"label for {label.frame_id} not stored: {exc}") from exc

    return handle


LABELS = subjects.plant_pattern(subjects.LABEL_SUBMITTED)  # every plant's: one model per product
