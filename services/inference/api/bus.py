"""Bus side of the inference service.

FrameCaptured: a durable pull consumer per station group (`inference-frame-captured-<group>`).
`Bus.consume` handles one message at a time, so `config.consumers` loops share the durable; that
keeps up to that many frames in flight for the micro-batcher. The handler returns (-> ack) only
after the InspectionResult is published; a dependency outage nak's the frame for a later retry.

ModelPublished: every instance must see every version, so it is read with an ordered (ephemeral)
JetStream consumer from the start of the MODELS stream; the app installs only the newest per role.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from nats.aio.msg import Msg

from linesight.common import subjects
from linesight.common.bus import Bus, Delivery, TransientError
from linesight.common.pb import common_pb2, events_pb2
from linesight.inference.app.inspection import Outcome, RetryLater
from linesight.inference.app.service import InferenceApp

log = logging.getLogger(__name__)


def frames_filter(app: InferenceApp) -> str:
    """Frames of every station of our plant (station groups narrow by line when configured)."""
    lines = {s.split("/")[0] for s in app.config.stations if "/" in s}
    line = lines.pop() if len(lines) == 1 else "*"
    return subjects.station_pattern(subjects.FRAME_CAPTURED, plant=app.settings.plant, line=line)


def station_from_subject(subject: str) -> common_pb2.StationRef:
    parts = subject.split(".")
    return common_pb2.StationRef(plant=parts[1], line=parts[2], station=parts[3])


class InspectionWorker:
    """Consumes frames, publishes results; `start()`/`stop()` for in-process use."""

    def __init__(self, app: InferenceApp, bus: Bus) -> None:
        self.app = app
        self.bus = bus
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._model_sub: object | None = None
        self.published = 0

    @property
    def durable(self) -> str:
        return (
            subjects.durable_name("inference", subjects.FRAME_CAPTURED) + f"-{self.app.config.station_group}"
        )

    async def start(self) -> None:
        await self._follow_models()
        cfg = self.app.config
        for _ in range(cfg.consumers):
            self._tasks.append(
                self.bus.consume_in_background(
                    frames_filter(self.app),
                    self.durable,
                    events_pb2.FrameCaptured,
                    self.handle_frame,
                    batch=1,
                    max_deliver=cfg.max_deliver,
                    ack_wait_s=cfg.ack_wait_s,
                    stop=self._stop,
                    fetch_timeout_s=0.5,
                )
            )

    async def stop(self) -> None:
        self._stop.set()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5.0)
        for t in self._tasks:
            t.cancel()
        self._tasks.clear()
        if self._model_sub is not None:
            with contextlib.suppress(Exception):
                await self._model_sub.unsubscribe()  # type: ignore[attr-defined]
            self._model_sub = None

    async def handle_frame(self, frame: events_pb2.FrameCaptured, delivery: Delivery) -> None:
        station = station_from_subject(delivery.subject)
        try:
            outcome = await self.app.inspect(frame, station=station)
        except RetryLater as exc:
            raise TransientError(str(exc), delay_s=min(30.0, 1.0 * delivery.num_delivered)) from exc
        await self.publish(outcome, station)

    async def publish(self, outcome: Outcome, station: common_pb2.StationRef) -> None:
        """Result first (the frame is acked after this returns), then the shadow result."""
        t0 = time.monotonic()
        result = outcome.result
        subject = subjects.station_subject(
            station.plant, station.line, station.station, subjects.INSPECTION_RESULT
        )
        await self.bus.publish(subject, result)
        dt = time.monotonic() - t0
        metrics = self.app.metrics
        metrics.stage.record(dt, {"stage": "publish"})
        metrics.frames.add(
            1, {"verdict": common_pb2.Verdict.Name(result.verdict), "model_version": result.model_version}
        )
        if result.latency_ms:
            metrics.end_to_end.record(result.latency_ms / 1000.0)
        self.published += 1
        if outcome.shadow is not None:
            shadow_subject = subjects.station_subject(
                station.plant, station.line, station.station, subjects.INSPECTION_SHADOW
            )
            try:
                await self.bus.publish(shadow_subject, outcome.shadow)
            except Exception as exc:  # a lost shadow result must not redeliver the frame
                log.warning("shadow result of %s not published: %s", result.frame_id, exc)

    async def _follow_models(self) -> None:
        subject = subjects.plant_subject(self.app.settings.plant, subjects.MODEL_PUBLISHED)

        async def on_msg(msg: Msg) -> None:
            try:
                event = events_pb2.ModelPublished.FromString(msg.data)
            except Exception as exc:
                log.warning("undecodable ModelPublished on %s: %s", msg.subject, exc)
                return
            self.app.model_published(event)

        self._model_sub = await self.bus.jetstream.subscribe(subject, cb=on_msg, ordered_consumer=True)
