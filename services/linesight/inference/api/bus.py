"""Bus side of the inference service.

FrameCaptured: a durable pull consumer per station group (`inference-frame-captured-<group>`),
filtered to exactly the group's stations (`config.stations`; empty = the whole plant), so a
group never sees another group's frames. `Bus.consume` handles one message at a time, so
`config.consumers` loops share the durable; that keeps up to that many frames in flight for the
micro-batcher. The handler returns (-> ack) only after the InspectionResult is published.

Outages (S3, NATS, Triton under policy `stop`, the model still loading) are never the frame's
fault: the frame is nak'ed with a delay growing from `retry_base_s` to `retry_max_s` and the
consumer allows `max_deliver` deliveries, so an outage of `config.outage_budget_s()` (about half
an hour by default) loses nothing. Bad input gets an explicit error result (never a retry); any
other handler failure is a bug and dead-letters the frame after `max_failures` deliveries.

ModelPublished, RecalibrationPerformed and TaxonomyPublished: every instance must see every event,
so they are read with ordered (ephemeral) JetStream consumers from the start of their streams; the
app installs only the newest model per role, applies every station recalibration, whichever
replica made it, and decides with the newest published taxonomy of the product.
Frames are consumed only after the ModelPublished replay has been read, so a restarted instance
waits for its model instead of answering MODEL_UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TypeVar

import nats.js.errors
from google.protobuf.message import Message
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from linesight.common import subjects
from linesight.common.bus import Bus, BusUnavailable, Delivery, PoisonMessage, TransientError
from linesight.common.consumers import ConsumerSpec, inference_durable
from linesight.common.pb import common_pb2, events_pb2
from linesight.inference.app.inspection import Outcome, RetryLater
from linesight.inference.app.models import Role
from linesight.inference.app.service import InferenceApp

log = logging.getLogger(__name__)
M = TypeVar("M", bound=Message)

REPLAY_WAIT_S = 15.0  # how long start() waits for the ModelPublished replay before consuming frames
MODEL_WAIT_S = 30.0  # how long frames wait (on the bus) for the replayed production model to load


def frames_filters(app: InferenceApp) -> list[str]:
    """The FrameCaptured subjects of this station group: exactly its stations, or the whole plant.

    `line/station` narrows to one station, a bare `station` to that station on any line (the same
    rule as InspectionPipeline.station_known). Filters never overlap (JetStream refuses that).
    """
    plant = app.settings.plant
    out: list[str] = []
    for line, station in subjects.station_scopes(app.config.stations):
        out.append(subjects.station_pattern(subjects.FRAME_CAPTURED, plant=plant, line=line, station=station))
    return sorted(out)


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
        self._subs: list[object] = []
        self.published = 0

    @property
    def durable(self) -> str:
        return inference_durable(self.app.config.station_group)

    def consumer(self) -> ConsumerSpec:
        """This station group's frame consumer as this replica's configuration wants it."""
        cfg = self.app.config
        return ConsumerSpec(
            "inference",
            self.durable,
            tuple(frames_filters(self.app)),
            ack_wait_s=cfg.ack_wait_s,
            max_deliver=cfg.max_deliver,
            batch=1,
        )

    async def _require_consumer(self) -> None:
        """A service user binds to the provisioner's consumer: checked at start, before the model
        loads, so a missing one fails the replica at once (naming the provisioning step), and
        settings that are not this replica's say which step to rerun."""
        if self.bus.provisions:  # anonymous development bus: Bus.consume creates it
            return
        await self.bus.require_consumer(
            self.consumer(), hint="run the provisioner with this station group (--inference-groups)"
        )

    async def start(self) -> None:
        await self._follow_recalibrations()
        await self._follow_labels()
        await self._follow_taxonomies()
        await self._follow_models()
        await self._require_consumer()
        self._tasks.append(asyncio.create_task(self._consume_frames(), name="inference-frames"))

    async def _consume_frames(self) -> None:
        """Take frames once the replayed production model serves (or `MODEL_WAIT_S` passed).

        A frame fetched while the model still loads is nak'ed with a retry delay (1 s, then 2 s
        for a redelivered one): after a crash that put the restarted replica's first frames
        seconds past the reject window. Left on the bus meanwhile, they go to a live replica, or
        to this one the moment its model serves.
        """
        await self._await_model()
        if self._stop.is_set():
            return
        cfg = self.app.config
        filters = frames_filters(self.app)
        log.info(
            "station group %s consumes %s (outages up to %.0f s are retried)",
            cfg.station_group,
            ", ".join(filters),
            cfg.outage_budget_s(),
        )
        consumers = [
            self.bus.consume_in_background(
                filters,
                self.durable,
                events_pb2.FrameCaptured,
                self.handle_frame,
                batch=1,
                max_deliver=cfg.max_deliver,
                ack_wait_s=cfg.ack_wait_s,
                stop=self._stop,
                fetch_timeout_s=0.5,
            )
            for _ in range(cfg.consumers)
        ]
        try:
            await asyncio.gather(*consumers, return_exceptions=True)
        finally:
            for task in consumers:
                task.cancel()

    async def _await_model(self) -> None:
        """Until no production model is loading: one serves, none was published, or it failed."""
        models = self.app.models
        deadline = time.monotonic() + MODEL_WAIT_S
        t0 = time.monotonic()
        while models.production is None and models.pending.get(Role.PRODUCTION):
            if time.monotonic() >= deadline:
                log.warning(
                    "production model %s still loading after %.0f s; taking frames (they wait for it)",
                    models.pending.get(Role.PRODUCTION),
                    MODEL_WAIT_S,
                )
                return
            if self._stop.is_set():
                return
            await asyncio.sleep(0.02)
        if models.production is not None:
            log.info(
                "production model %s serves after %.2f s", models.production.version, time.monotonic() - t0
            )

    async def stop(self) -> None:
        self._stop.set()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5.0)
        for t in self._tasks:
            t.cancel()
        self._tasks.clear()
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()  # type: ignore[attr-defined]
        self._subs.clear()

    async def handle_frame(self, frame: events_pb2.FrameCaptured, delivery: Delivery) -> None:
        station = station_from_subject(delivery.subject)
        try:
            outcome = await self.app.inspect(frame, station=station)
            await self.publish(outcome, station)
        except (RetryLater, BusUnavailable) as exc:
            raise self._retry(exc, delivery) from exc
        except (TransientError, PoisonMessage):
            raise
        except Exception as exc:
            if delivery.num_delivered >= self.app.config.max_failures:
                log.exception(
                    "frame %s failed %d times; dead-lettering it", frame.frame_id, delivery.num_delivered
                )
                raise PoisonMessage(
                    f"inspection failed {delivery.num_delivered} times: {type(exc).__name__}: {exc}"
                ) from exc
            raise  # the bus logs it and redelivers it after a short delay

    def _retry(self, exc: Exception, delivery: Delivery) -> TransientError:
        """A dependency is down: back off (1 s, 2 s, 4 s ... retry_max_s) and keep the frame."""
        cfg = self.app.config
        delay = cfg.retry_delay_s(delivery.num_delivered)
        reason = "bus" if isinstance(exc, BusUnavailable) else "dependency"
        self.app.metrics.retries.add(1, {"reason": reason})
        if delivery.num_delivered >= cfg.max_deliver:
            log.error(
                "frame on %s: %s; delivery %d of %d, dead-lettering it",
                delivery.subject,
                exc,
                delivery.num_delivered,
                cfg.max_deliver,
            )
        elif delivery.num_delivered == 1 or delay >= cfg.retry_max_s:
            log.warning(
                "frame on %s waits: %s; delivery %d, next in %.0f s",
                delivery.subject,
                exc,
                delivery.num_delivered,
                delay,
            )
        return TransientError(str(exc), delay_s=delay)

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
        """ModelPublished from the start of the stream; returns once the replay has been read."""
        subject = subjects.plant_subject(self.app.settings.plant, subjects.MODEL_PUBLISHED)
        await self._follow(subject, events_pb2.ModelPublished, self.app.model_published, wait_s=REPLAY_WAIT_S)

    async def _follow_taxonomies(self) -> None:
        """TaxonomyPublished from the start; frames wait for the replay, so a restarted instance
        decides with the newest published taxonomy from its first frame."""
        subject = subjects.plant_subject(self.app.settings.plant, subjects.TAXONOMY_PUBLISHED)
        await self._follow(
            subject, events_pb2.TaxonomyPublished, self.app.taxonomy_published, wait_s=REPLAY_WAIT_S
        )

    async def _follow_recalibrations(self) -> None:
        subject = subjects.station_pattern(subjects.MODEL_RECALIBRATED, plant=self.app.settings.plant)
        await self._follow(subject, events_pb2.RecalibrationPerformed, self.app.recalibration_performed)

    async def _follow_labels(self) -> None:
        """Confirmed labels from now on (those of frames this replica audit-sampled feed the
        concept-drift rate; older ones concern frames it no longer remembers)."""
        subject = subjects.plant_subject(self.app.settings.plant, subjects.LABEL_SUBMITTED)
        await self._follow(subject, events_pb2.LabelSubmitted, self.app.label_submitted, new_only=True)

    async def _follow(
        self,
        subject: str,
        message_type: type[M],
        apply: Callable[[M], None],
        *,
        wait_s: float = 0.0,
        new_only: bool = False,
    ) -> None:
        """An ordered consumer from the start of the stream (`new_only`: from now on); with
        `wait_s`, wait for the replay."""
        stream = subjects.stream_for_subject(subject).name
        last_seq = 0
        if wait_s > 0:
            try:
                last_seq = (await self.bus.jetstream.get_last_msg(stream, subject)).seq or 0
            except nats.js.errors.NotFoundError:
                last_seq = 0
        caught_up = asyncio.Event()
        if last_seq == 0:
            caught_up.set()

        async def on_msg(msg: Msg) -> None:
            try:
                event = message_type.FromString(msg.data)
            except Exception as exc:
                log.warning("undecodable %s on %s: %s", message_type.DESCRIPTOR.name, msg.subject, exc)
            else:
                try:
                    apply(event)
                except Exception:
                    log.exception("applying %s from %s failed", message_type.DESCRIPTOR.name, msg.subject)
            if not caught_up.is_set() and msg.metadata.sequence.stream >= last_seq:
                caught_up.set()

        policy = DeliverPolicy.NEW if new_only else None
        self._subs.append(
            await self.bus.jetstream.subscribe(
                subject, cb=on_msg, ordered_consumer=True, deliver_policy=policy
            )
        )
        try:
            await asyncio.wait_for(caught_up.wait(), wait_s or None)
        except TimeoutError:
            log.warning("replay of %s not read within %.0f s; consuming frames anyway", subject, wait_s)
