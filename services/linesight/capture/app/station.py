"""CaptureStation: one camera station from trigger to published FrameCaptured, without losing frames.

Flow of a frame: acquire (source) -> decode + audit -> lossless PNG -> on-disk spool -> deliverer
(S3 put, then FrameCaptured on `linesight.<plant>.<line>.<station>.frame.captured`) -> entry removed.
Every frame goes through the spool, so an S3 or NATS outage or a restart only delays frames; the
deliverer retries the oldest entry until it succeeds, which keeps the published order. The event
is built once and replayed byte for byte, so its event id (Nats-Msg-Id) de-duplicates a publish
that succeeded but whose ack was lost.

Usable in-process (the demo) and behind the gRPC API (`python -m linesight.capture`):

    async with CaptureStation(profile, bus=bus, store=store, spool_dir=path) as station:
        report = await station.run_replay(dataset_dir, ppm=120, limit=50)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import urllib.parse
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Protocol

import cv2
import numpy as np
from google.protobuf.message import Message
from opentelemetry import context as otel_context
from opentelemetry import metrics as otel_metrics

from linesight.capture.app import audit as qa
from linesight.capture.app.imaging import FrameDecodeError, decode, encode_png, to_uint8
from linesight.capture.app.profile import StationProfile
from linesight.capture.app.sources import AcquisitionTimeout, FrameSource, RawFrame, ReplaySource, SourceError
from linesight.capture.store.spool import DiskSpool, SpoolCorrupt, SpoolEntry, SpoolFull
from linesight.common import subjects, telemetry
from linesight.common.backoff import Backoff
from linesight.common.events import new_meta
from linesight.common.limits import TextError, check_name
from linesight.common.pb import common_pb2, events_pb2
from linesight.common.ports import EventPublisher
from linesight.common.storage import BUCKET_FRAMES, content_key

log = logging.getLogger(__name__)

_tracer = telemetry.tracer("linesight.capture")


# Retry delays while S3 or NATS is down: frame delivery, and alarms / drift alerts.
DELIVERY_BACKOFF = Backoff(base_s=0.1, cap_s=5.0)
CONTROL_BACKOFF = Backoff(base_s=0.2, cap_s=5.0)


# Namespace of the name-based (UUIDv5) frame ids.
_FRAME_NAMESPACE = uuid.UUID("6f1c1d0e-3a51-4c8e-9a0e-2f7b1c5d4e01")


class FrameStore(Protocol):
    """Object storage as the station needs it (linesight.common.storage.ObjectStore fits)."""

    def put_content_addressed(
        self,
        bucket: str,
        data: bytes,
        suffix: str = ".png",
        content_type: str = "image/png",
        metadata: Any = None,
    ) -> common_pb2.ObjectRef: ...


class LineStopped(RuntimeError):  # noqa: N818 - it is a state the PLC acts on, not a bug
    """The spool is full under the stop_line policy: the line must stop until frames drain."""


class StationStopped(RuntimeError):  # noqa: N818
    """The station is shutting down and takes no more frames."""


@dataclass
class CaptureStatus:
    """What the station has done so far (GetStatus, /capture/status)."""

    station: common_pb2.StationRef
    frames_captured: int
    frames_published: int
    spool_depth: int
    audit_rejects: dict[str, int]
    alarm: bool  # the line is stopped or delivery is failing


@dataclass
class ReplayReport:
    """What a replay run did (the demo prints it)."""

    frames: int = 0
    flagged: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0
    target_ppm: float = 0.0
    achieved_ppm: float = 0.0
    published: int = 0
    spool_depth: int = 0
    frame_ids: list[str] = field(default_factory=list)


class _Metrics:
    """OTel instruments shared by every station in the process (attributes say which station)."""

    _stations: ClassVar[list[CaptureStation]] = []
    _instance: ClassVar[_Metrics | None] = None

    def __init__(self) -> None:
        m = telemetry.meter("linesight.capture")
        self.captured = m.create_counter("linesight_capture_frames", description="frames captured")
        self.published = m.create_counter("linesight_capture_published", description="frames published")
        self.rejects = m.create_counter(
            "linesight_capture_audit_rejects", description="audit flags by reason"
        )
        self.repeated = m.create_counter(
            "linesight_capture_repeated_frames",
            description="captures whose bytes equal the previous capture's (stuck buffer, looping replay)",
        )
        self.dropped = m.create_counter(
            "linesight_capture_dropped", description="frames dropped (drop_oldest)"
        )
        self.acquire_ms = m.create_histogram(
            "linesight_capture_acquisition_ms", unit="ms", description="trigger -> frame in memory"
        )
        self.publish_ms = m.create_histogram(
            "linesight_capture_trigger_to_publish_ms",
            unit="ms",
            description="trigger -> FrameCaptured acknowledged",
        )
        m.create_observable_gauge(
            "linesight_capture_spool_depth",
            callbacks=[self._spool_depth],
            description="frames waiting in the local spool",
        )
        m.create_observable_gauge(
            "linesight_capture_frames_per_s",
            callbacks=[self._fps],
            description="frames captured per second (last 10 s)",
        )

    @classmethod
    def get(cls) -> _Metrics:
        if cls._instance is None:
            cls._instance = _Metrics()
        return cls._instance

    def _spool_depth(self, _options: Any) -> list[otel_metrics.Observation]:
        return [otel_metrics.Observation(s.spool.depth, s.attrs) for s in self._stations]

    def _fps(self, _options: Any) -> list[otel_metrics.Observation]:
        return [otel_metrics.Observation(s.frames_per_s(), s.attrs) for s in self._stations]


@dataclass
class _Prepared:
    event: events_pb2.FrameCaptured
    payload: bytes
    header: dict[str, str]


class CaptureStation:
    """One station: a source, its profile, the audit, the spool and the deliverer."""

    def __init__(
        self,
        profile: StationProfile,
        *,
        bus: EventPublisher,
        store: FrameStore,
        spool_dir: str | Path,
        source: FrameSource | None = None,
        producer: str = "",
        fsync: bool = False,
        deliver_timeout_s: float = 15.0,
        trigger_wait_s: float = 0.0,
        on_stop_line: Callable[[bool], None] | None = None,
    ) -> None:
        self.profile = profile
        self.bus = bus
        self.store = store
        self.source = source
        self.producer = producer or f"capture/{profile.station}"
        self.deliver_timeout_s = deliver_timeout_s
        self.trigger_wait_s = trigger_wait_s
        self.on_stop_line = on_stop_line
        self.spool = DiskSpool(
            spool_dir, max_bytes=profile.spool_max_bytes, max_frames=profile.spool_max_frames, fsync=fsync
        )
        self.auditor = qa.FrameAuditor(
            profile.audit,
            expected_size=(profile.roi_width, profile.roi_height),
            expected_pixel_format=profile.pixel_format,
        )
        self.subject = subjects.station_subject(
            profile.plant, profile.line, profile.station, subjects.FRAME_CAPTURED
        )
        self.alarm_subject = subjects.station_subject(
            profile.plant, profile.line, profile.station, subjects.CAPTURE_ALARM
        )
        self.drift_subject = subjects.plant_subject(profile.plant, subjects.DRIFT_ALERT)
        self.attrs = {"plant": profile.plant, "line": profile.line, "station": profile.station}
        self.frames_captured = 0
        self.frames_published = 0
        self.frames_dropped = 0
        self.audit_rejects: Counter[str] = Counter()
        self.line_stopped = False
        self.delivery_error = ""
        self._capture_times: deque[float] = deque(maxlen=4096)
        self._waiters: dict[int, asyncio.Future[None]] = {}
        self._wake = asyncio.Event()
        self._control: asyncio.Queue[tuple[str, Message]] = asyncio.Queue(maxsize=1000)
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()  # one frame at a time through audit + spool keeps the order
        self._stopping = False
        self._drift_alerted: dict[str, Any] = {}
        self._source_open = False
        self._camera_lost = False
        self._metrics = _Metrics.get()
        self._trigger_seq = 0  # per-process capture counter, part of each frame id
        self._repeating = False  # inside a run of REPEATED_FRAME captures (one alarm per run)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the deliverer (resuming any spool left by a previous run) and open the source."""
        if self._tasks:
            return
        self._stopping = False
        if self.spool.depth:
            log.info("station %s resumes %d spooled frame(s)", self.profile.station, self.spool.depth)
        self._tasks = [
            asyncio.create_task(self._deliver_loop(), name=f"capture-deliver-{self.profile.station}"),
            asyncio.create_task(self._control_loop(), name=f"capture-control-{self.profile.station}"),
        ]
        _Metrics._stations.append(self)
        if self.source is not None and not self._source_open:
            await self.source.open()
            self._source_open = True
            for note in getattr(self.source, "notes", []):
                log.warning("station %s: %s", self.profile.station, note)

    async def stop(self, *, drain_timeout_s: float = 5.0) -> None:
        """Stop taking frames, give the deliverer `drain_timeout_s` to empty the spool, then stop.

        Frames still spooled stay on disk and are delivered by the next start.
        """
        if drain_timeout_s > 0 and self._tasks:
            await self.drain(timeout_s=drain_timeout_s)
        self._stopping = True
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self in _Metrics._stations:
            _Metrics._stations.remove(self)
        if self.source is not None and self._source_open:
            await self.source.close()
            self._source_open = False

    async def __aenter__(self) -> CaptureStation:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def drain(self, *, timeout_s: float = 60.0) -> bool:
        """Wait until every spooled frame is published; False when the timeout hit first."""
        deadline = time.monotonic() + timeout_s
        while self.spool.depth and time.monotonic() < deadline:
            self._wake.set()
            await asyncio.sleep(0.02)
        return self.spool.depth == 0

    # ------------------------------------------------------------------ acquisition

    async def trigger(
        self, *, part_id: str = "", batch: str = "", shift: str = "", extra: dict[str, str] | None = None
    ) -> tuple[events_pb2.FrameCaptured, bool]:
        """Software trigger: acquire one frame now; (event, spooled) where spooled means "published later".

        Returns once the frame is in the spool: the bus and S3 are never waited on unless the
        station was built with `trigger_wait_s` > 0 (a trigger that blocks on a down NATS slows the
        whole line). Raises LineStopped when the spool is full under stop_line (the PLC must stop the line).
        """
        if self.source is None:
            raise RuntimeError("station has no frame source to trigger (check the station profile's source)")
        await self.start()
        if self.profile.spool_policy == "stop_line" and not self.spool.has_room(1):
            raise LineStopped(f"spool full ({self.spool.depth} frames): line stopped until S3/NATS drain it")
        event, seq = await self.capture_one(
            "software", part_id=part_id, batch=batch, shift=shift, extra=extra
        )
        if seq is None:
            return event, False
        waiter = self._waiters.get(seq)
        if waiter is None:  # already delivered
            return event, False
        if self.trigger_wait_s <= 0:
            return event, not waiter.done()
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout=self.trigger_wait_s)
            return event, False
        except TimeoutError:
            return event, True

    async def capture_one(
        self,
        trigger_source: str,
        *,
        part_id: str = "",
        batch: str = "",
        shift: str = "",
        extra: dict[str, str] | None = None,
    ) -> tuple[events_pb2.FrameCaptured, int | None]:
        """Acquire from the source and process; raises EOFError when a finite source is exhausted.

        Raises TextError (a ValueError naming the field) for an identifier no caller has a reason
        to send: control characters or over 200 characters. Nothing is acquired then.
        """
        if self.source is None:
            raise RuntimeError("station has no frame source")
        check_capture_fields(part_id=part_id, batch=batch, shift=shift, extra=extra)
        with _tracer.start_as_current_span(
            "capture.trigger", attributes={**self.attrs, "trigger": trigger_source}
        ):
            raw = await self.source.acquire(trigger_source)
            if raw is None:
                raise EOFError(f"source {self.source.name} has no more frames")
            if part_id:
                raw.part_id = part_id
            if batch:
                raw.batch = batch
            if extra:
                raw.extra.update(extra)
            return await self.process(raw, shift=shift)

    async def process(self, raw: RawFrame, *, shift: str = "") -> tuple[events_pb2.FrameCaptured, int | None]:
        """Audit, encode and spool one acquired frame; (event, spool seq). Never drops a bad frame."""
        if self._stopping:
            raise StationStopped(f"station {self.profile.station} is stopping")
        acquire_ms = (raw.acquired_at - raw.triggered_at).total_seconds() * 1000.0
        self._metrics.acquire_ms.record(acquire_ms, self.attrs)
        async with self._lock:
            with _tracer.start_as_current_span("capture.audit", attributes=self.attrs) as span:
                prepared = await asyncio.to_thread(self._prepare, raw, shift)
                span.set_attribute("frame_id", prepared.event.frame_id)
                span.set_attribute("audit.passed", prepared.event.audit.passed)
            telemetry.inject_trace_headers(prepared.header)
            seq = await self._spool(prepared)
        self.frames_captured += 1
        self._capture_times.append(time.monotonic())
        self._metrics.captured.add(1, self.attrs)
        for reason in prepared.event.audit.reason_codes:
            self.audit_rejects[reason] += 1
            self._metrics.rejects.add(1, {**self.attrs, "reason": reason})
        self._note_repeated(prepared.event)
        if not prepared.event.audit.passed:
            log.info(
                "frame %s of part %s flagged: %s",
                prepared.event.frame_id[:12],
                raw.part_id,
                ",".join(prepared.event.audit.reason_codes),
            )
        self._check_drift()
        return prepared.event, seq

    def _prepare(self, raw: RawFrame, shift: str) -> _Prepared:
        """CPU part of processing (runs in a worker thread): decode, audit, PNG, event."""
        th = self.profile.audit
        width = height = 0
        pixel_format = raw.pixel_format
        image: np.ndarray | None = None
        reasons: list[str] = []
        error = ""
        if raw.image is not None:
            arr = raw.image
            payload = _png_lossless(arr)
            image = to_uint8(arr)
            height, width = arr.shape[:2]
        else:
            payload = raw.data or b""
            if raw.read_error:
                reasons, error = [qa.READ_ERROR], raw.read_error
            else:
                try:
                    image, info = decode(payload, max_pixels=th.max_pixels, min_side=th.min_side)
                    width, height, pixel_format = info.width, info.height, info.pixel_format
                    if info.fmt != "png":
                        payload = encode_png(image)  # lossless from here on; PNG input is kept bit-exact
                except FrameDecodeError as exc:
                    reasons, error = [exc.reason], str(exc)
        sha = qa.sha256_hex(payload)
        suffix, content_type = _kind_of(payload)
        frame_id = self._frame_id(raw)
        if image is not None:
            result = self.auditor.audit(image, pixel_format=pixel_format, sha256=sha, frame_id=frame_id)
        else:
            result = qa.AuditResult(reasons=reasons, error=error)
            earlier, repeated = self.auditor.remember_undecodable(sha, frame_id)
            if earlier or repeated:
                result.reasons.append(qa.REPEATED_FRAME if repeated else qa.DUPLICATE)
                result.duplicate_of = earlier
        event = self._event(
            raw, shift, frame_id, sha, suffix, content_type, len(payload), width, height, pixel_format, result
        )
        meta: dict[str, str] = {"error": error} if error else {}
        meta["metadata"] = urllib.parse.urlencode(self._object_metadata(event))
        return _Prepared(event, payload, meta)

    def _frame_id(self, raw: RawFrame) -> str:
        """A deterministic id for this capture event: station, trigger sequence, trigger time, part.

        Never the content hash: a stuck buffer or a looping replay yields identical bytes for
        different parts, and each part needs its own ledger row and disposition.
        """
        self._trigger_seq += 1
        p = self.profile
        key = "|".join(
            (
                p.plant,
                p.line,
                p.station,
                str(self._trigger_seq),
                raw.triggered_at.isoformat(),
                raw.part_id,
                self.producer,
            )
        )
        return str(uuid.uuid5(_FRAME_NAMESPACE, key))

    def _note_repeated(self, event: events_pb2.FrameCaptured) -> None:
        """Count REPEATED_FRAME captures; one CaptureAlarm per run of repeats (a stuck camera)."""
        if qa.REPEATED_FRAME not in event.audit.reason_codes:
            self._repeating = False
            return
        self._metrics.repeated.add(1, self.attrs)
        if self._repeating:
            return
        self._repeating = True
        log.warning(
            "station %s: frame %s has the same bytes as the previous capture (part %r)",
            self.profile.station,
            event.frame_id,
            event.capture.part_id,
        )
        self.alarm(
            "REPEATED_FRAME",
            f"capture of part {event.capture.part_id!r} repeats the previous frame's bytes "
            f"(sha256 {event.content_sha256[:12]}): stuck camera buffer or looping replay",
            [event.frame_id],
        )

    def _event(
        self,
        raw: RawFrame,
        shift: str,
        frame_id: str,
        sha: str,
        suffix: str,
        content_type: str,
        size: int,
        width: int,
        height: int,
        pixel_format: str,
        result: qa.AuditResult,
    ) -> events_pb2.FrameCaptured:
        p = self.profile
        capture = common_pb2.CaptureMeta(
            station=p.station_ref(),
            camera_id=p.camera_id,
            profile_version=p.version,
            part_id=raw.part_id,
            batch=raw.batch,
            shift=shift or p.shift,
            lighting_profile=p.lighting_profile,
            px_per_mm=p.px_per_mm,
            extra={k: v for k, v in raw.extra.items() if v},
        )
        capture.captured_at.FromDatetime(raw.acquired_at)
        if result.error:
            capture.extra["audit_error"] = result.error[:500]
        event = events_pb2.FrameCaptured(
            meta=new_meta(self.producer, correlation_id=frame_id),
            frame_id=frame_id,
            content_sha256=sha,
            capture=capture,
            image=common_pb2.ObjectRef(
                bucket=BUCKET_FRAMES,
                key=content_key(sha, suffix),
                sha256=sha,
                content_type=content_type,
                size_bytes=size,
            ),
            width=width,
            height=height,
            pixel_format=pixel_format,
            audit=result.to_proto(),
            trigger_source=raw.trigger_source,
        )
        event.triggered_at.FromDatetime(raw.triggered_at)
        return event

    @staticmethod
    def _object_metadata(event: events_pb2.FrameCaptured) -> dict[str, str]:
        """Capture metadata stored with the S3 object (ASCII-safe: values are percent-encoded)."""
        c = event.capture
        raw = {
            "plant": c.station.plant,
            "line": c.station.line,
            "station": c.station.station,
            "camera": c.camera_id,
            "profile-version": c.profile_version,
            "part-id": c.part_id,
            "batch": c.batch,
            "shift": c.shift,
            "captured-at": c.captured_at.ToJsonString(),
            "pixel-format": event.pixel_format,
            "width": str(event.width),
            "height": str(event.height),
            "audit-passed": str(event.audit.passed).lower(),
            "audit-reasons": ",".join(event.audit.reason_codes),
            "frame-id": event.frame_id,
        }
        return {k: urllib.parse.quote(v, safe=" :,-_.@+") for k, v in raw.items() if v}

    async def _spool(self, prepared: _Prepared) -> int | None:
        """Put into the spool, applying the full-spool policy; the frame is never silently lost."""
        event_bytes = prepared.event.SerializeToString()
        alarmed = False
        while True:
            try:
                seq = await asyncio.to_thread(self.spool.put, event_bytes, prepared.payload, prepared.header)
            except SpoolFull as exc:
                if self.profile.spool_policy == "drop_oldest":
                    dropped = await asyncio.to_thread(self.spool.drop_oldest, "spool full (drop_oldest)")
                    if dropped is not None:
                        self._record_drop(dropped)
                        continue
                elif not alarmed:
                    self._set_line_stopped(True, str(exc))
                alarmed = True
                if self._stopping:
                    raise StationStopped("station stopped while the spool was full") from exc
                await asyncio.sleep(0.1)
                continue
            if self.line_stopped:
                self._set_line_stopped(False, "spool has room again")
            loop = asyncio.get_running_loop()
            self._waiters[seq] = loop.create_future()
            self._wake.set()
            return seq

    def _record_drop(self, entry: SpoolEntry) -> None:
        event = events_pb2.FrameCaptured.FromString(entry.event)
        self.frames_dropped += 1
        self._metrics.dropped.add(1, self.attrs)
        log.error(
            "spool full: dropped frame %s (part %s) under drop_oldest; recorded in %s/dropped.jsonl",
            event.frame_id[:12],
            event.capture.part_id,
            self.spool.dir,
        )
        self.alarm(
            "FRAME_DROPPED",
            f"spool full: dropped oldest frame of part {event.capture.part_id!r}",
            [event.frame_id],
        )
        waiter = self._waiters.pop(entry.seq, None)
        if waiter is not None and not waiter.done():
            waiter.set_exception(RuntimeError("frame dropped from a full spool"))
            waiter.exception()  # mark retrieved: nobody may be waiting

    def _camera_problem(self, why: str) -> None:
        if not self._camera_lost:
            self._camera_lost = True
            log.error("station %s: %s", self.profile.station, why)
            self.alarm("CAMERA_LOST", why)

    def _set_line_stopped(self, stopped: bool, why: str) -> None:
        if stopped == self.line_stopped:
            return
        self.line_stopped = stopped
        if stopped:
            log.error("station %s: %s; signalling STOP_LINE", self.profile.station, why)
            self.alarm("SPOOL_FULL", why)
            self.alarm("STOP_LINE", f"stop the line: {why}")
        else:
            log.warning("station %s: line may restart (%s)", self.profile.station, why)
        if self.on_stop_line is not None:
            self.on_stop_line(stopped)

    # ------------------------------------------------------------------ free-run and replay

    async def run_free_run(
        self,
        *,
        ppm: float | None = None,
        jitter: float = 0.0,
        limit: int | None = None,
        stop: asyncio.Event | None = None,
        seed: int | None = None,
        trigger_source: str = "free_run",
    ) -> ReplayReport:
        """Acquire continuously, paced at `ppm` parts per minute (+- jitter share) or as fast as possible.

        Pacing follows an absolute schedule, so the achieved rate converges on the target even when
        single frames take longer; a source that runs out ends the run.
        """
        if ppm is not None and ppm <= 0:
            raise ValueError(f"ppm must be positive, got {ppm}")
        if not 0 <= jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {jitter}")
        await self.start()
        rng = random.Random(seed)
        report = ReplayReport(target_ppm=ppm or 0.0)
        published_before = self.frames_published
        start = time.monotonic()
        next_at = start
        while limit is None or report.frames < limit:
            if stop is not None and stop.is_set():
                break
            if ppm:
                delay = next_at - time.monotonic()
                if delay > 0:
                    if stop is not None:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), timeout=delay)
                        if stop.is_set():
                            break
                    else:
                        await asyncio.sleep(delay)
                next_at += 60.0 / ppm * (1.0 + jitter * rng.uniform(-1.0, 1.0))
            try:
                event, _seq = await self.capture_one(trigger_source)
            except EOFError:
                break
            except AcquisitionTimeout:
                if trigger_source != "hardware":  # free-run cameras must deliver; say so once
                    self._camera_problem("camera delivered no frame in time")
                continue
            except SourceError as exc:  # a camera that drops out: alarm once, keep trying
                self._camera_problem(str(exc))
                await asyncio.sleep(1.0)
                continue
            if self._camera_lost:
                log.info("station %s: camera delivering again", self.profile.station)
                self._camera_lost = False
            report.frames += 1
            report.frame_ids.append(event.frame_id)
            if not event.audit.passed:
                report.flagged += 1
                report.reasons.update(event.audit.reason_codes)
        report.elapsed_s = time.monotonic() - start
        if report.frames > 1 and report.elapsed_s > 0:
            report.achieved_ppm = (
                (report.frames - 1) / report.elapsed_s * 60.0
                if ppm
                else report.frames / report.elapsed_s * 60.0
            )
        report.published = self.frames_published - published_before
        report.spool_depth = self.spool.depth
        return report

    async def run_replay(
        self,
        source_dir: str | Path,
        *,
        ppm: float | None = 60.0,
        limit: int | None = None,
        jitter: float = 0.1,
        loop: bool = False,
        seed: int | None = None,
        stop: asyncio.Event | None = None,
        drain_timeout_s: float = 60.0,
    ) -> ReplayReport:
        """Play a folder or dataset manifest as a line at `ppm` parts/minute; waits for publication.

        Part id, batch and station of each frame come from the manifest. With `drain_timeout_s` 0
        the call returns as soon as the frames are spooled.
        """
        published_before = self.frames_published
        previous, self.source = self.source, ReplaySource(source_dir, loop=loop, limit=limit)
        was_open, self._source_open = self._source_open, False
        try:
            await self.source.open()
            self._source_open = True
            report = await self.run_free_run(
                ppm=ppm, jitter=jitter, limit=limit, stop=stop, seed=seed, trigger_source="replay"
            )
        finally:
            await self.source.close()
            self.source, self._source_open = previous, was_open
        if drain_timeout_s > 0:
            await self.drain(timeout_s=drain_timeout_s)
        report.published = self.frames_published - published_before
        report.spool_depth = self.spool.depth
        return report

    # ------------------------------------------------------------------ delivery

    async def _deliver_loop(self) -> None:
        """Deliver spooled frames oldest first; on failure keep retrying the same one (order)."""
        failures = 0
        while not self._stopping:
            try:
                entry = await asyncio.to_thread(self.spool.oldest)
            except SpoolCorrupt as exc:
                log.error("%s", exc)
                self.alarm("SPOOL_CORRUPT", str(exc))
                continue
            if entry is None:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=0.5)
                continue
            try:
                await self._deliver(entry)
            except asyncio.CancelledError:
                self.spool.release(entry.seq)
                raise
            except Exception as exc:
                self.spool.release(entry.seq)
                if not self.delivery_error:
                    log.warning(
                        "station %s: delivery failing, frames stay in the spool (%d): %s",
                        self.profile.station,
                        self.spool.depth,
                        exc,
                    )
                self.delivery_error = str(exc)
                failures += 1
                await asyncio.sleep(DELIVERY_BACKOFF.delay(failures))
                continue
            if self.delivery_error:
                log.info(
                    "station %s: delivery recovered; %d frame(s) still spooled",
                    self.profile.station,
                    self.spool.depth,
                )
                self.delivery_error = ""
            failures = 0
            # Count before the entry leaves the spool: drain() returns on an empty spool and its
            # caller reads frames_published at once.
            self.frames_published += 1
            await asyncio.to_thread(self.spool.remove, entry.seq)
            waiter = self._waiters.pop(entry.seq, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    async def _deliver(self, entry: SpoolEntry) -> None:
        event = events_pb2.FrameCaptured.FromString(entry.event)
        ctx = telemetry.extract_trace_context(entry.header)
        token = otel_context.attach(ctx)
        try:
            with _tracer.start_as_current_span(
                "capture.deliver", attributes={**self.attrs, "frame_id": event.frame_id}
            ):
                metadata = dict(urllib.parse.parse_qsl(entry.header.get("metadata", "")))
                suffix = "." + event.image.key.rsplit(".", 1)[-1] if "." in event.image.key else ""
                ref = await asyncio.wait_for(
                    asyncio.to_thread(
                        self.store.put_content_addressed,
                        event.image.bucket,
                        entry.payload,
                        suffix,
                        event.image.content_type,
                        metadata,
                    ),
                    timeout=self.deliver_timeout_s,
                )
                if ref.key != event.image.key:
                    raise RuntimeError(f"object store wrote {ref.key}, event names {event.image.key}")
                await asyncio.wait_for(self.bus.publish(self.subject, event), timeout=self.deliver_timeout_s)
        finally:
            otel_context.detach(token)
        latency = (datetime.now(UTC) - event.triggered_at.ToDatetime(tzinfo=UTC)).total_seconds() * 1000.0
        self._metrics.published.add(1, self.attrs)
        self._metrics.publish_ms.record(latency, self.attrs)

    # ------------------------------------------------------------------ alarms and drift

    def alarm(self, kind: str, message: str, frame_ids: list[str] | None = None) -> None:
        """Queue a CaptureAlarm (SPOOL_FULL, FRAME_DROPPED, STOP_LINE, CAMERA_LOST, ...) for the bus."""
        event = events_pb2.CaptureAlarm(
            meta=new_meta(self.producer),
            station=self.profile.station_ref(),
            kind=kind,
            message=message,
            frame_ids=frame_ids or [],
        )
        self._enqueue_control(self.alarm_subject, event)

    def _enqueue_control(self, subject: str, message: Message) -> None:
        try:
            self._control.put_nowait((subject, message))
        except asyncio.QueueFull:
            log.error("control event queue full; not sent (logged only): %s %s", subject, message)

    async def _control_loop(self) -> None:
        """Alarms and drift alerts: retried until the bus takes them (same event id each time)."""
        while True:
            subject, message = await self._control.get()
            attempt = 0
            while True:
                try:
                    await asyncio.wait_for(self.bus.publish(subject, message), timeout=self.deliver_timeout_s)
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.debug("control event to %s not sent yet: %s", subject, exc)
                    attempt += 1
                    await asyncio.sleep(CONTROL_BACKOFF.delay(attempt))

    def _check_drift(self) -> None:
        every = max(1, self.profile.drift_check_every)
        if self.source is None or self.frames_captured % every != 1 % every:
            return
        self.check_drift()

    def check_drift(self) -> list[events_pb2.DriftAlert]:
        """Compare the camera's read-back settings with the profile; alert once per change."""
        if self.source is None:
            return []
        try:
            expected = self.source.expected_settings()
            actual = self.source.settings()
        except Exception as exc:
            log.warning("station %s: cannot read camera settings: %s", self.profile.station, exc)
            return []
        alerts = []
        for name, want in expected.items():
            have = actual.get(name)
            if _same(want, have):
                self._drift_alerted.pop(name, None)
                continue
            if name in self._drift_alerted and _same(self._drift_alerted[name], have):
                continue
            self._drift_alerted[name] = have
            alert = events_pb2.DriftAlert(
                meta=new_meta(self.producer),
                station=self.profile.station_ref(),
                kind="camera_setting",
                value=_as_float(have),
                baseline=_as_float(want),
                message=f"camera setting {name} is {have!r}, profile {self.profile.version} says {want!r}",
            )
            log.warning("station %s: %s", self.profile.station, alert.message)
            self._enqueue_control(self.drift_subject, alert)
            alerts.append(alert)
        return alerts

    # ------------------------------------------------------------------ status

    def frames_per_s(self, window_s: float = 10.0) -> float:
        now = time.monotonic()
        recent = [t for t in self._capture_times if now - t <= window_s]
        if len(recent) < 2:
            return 0.0
        span = max(now - recent[0], 1e-6)
        return len(recent) / span

    def status(self) -> CaptureStatus:
        return CaptureStatus(
            station=self.profile.station_ref(),
            frames_captured=self.frames_captured,
            frames_published=self.frames_published,
            spool_depth=self.spool.depth,
            audit_rejects=dict(self.audit_rejects),
            alarm=self.line_stopped or bool(self.delivery_error),
        )


def check_capture_fields(
    *, part_id: str = "", batch: str = "", shift: str = "", extra: dict[str, str] | None = None
) -> None:
    """Trigger inputs travel on every event and into S3 metadata: one-line names, string values."""
    check_name(part_id, "part_id")
    check_name(batch, "batch")
    check_name(shift, "shift")
    for key, value in (extra or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TextError(f"extra: keys and values must be strings, got {key!r}: {value!r}")
        check_name(key, "extra key")
        check_name(value, f"extra[{key!r}]")


def _png_lossless(image: np.ndarray) -> bytes:
    """PNG keeping the camera's bit depth (16-bit stays 16-bit); RGB arrays are stored as RGB."""
    if image.dtype in (np.uint8, np.uint16):
        return encode_png(image)
    arr = to_uint8(image)
    ok, buf = cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise FrameDecodeError("ENCODE_ERROR", f"cannot encode a {image.dtype} frame as PNG")
    return bytes(buf.tobytes())


def _kind_of(payload: bytes) -> tuple[str, str]:
    """(key suffix, content type) of what is stored: PNG normally; raw bytes of undecodable frames."""
    if payload.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png", "image/png"
    if payload.startswith(b"\xff\xd8"):
        return ".jpg", "image/jpeg"
    return ".bin", "application/octet-stream"


def _same(want: Any, have: Any) -> bool:
    if isinstance(want, int | float) and isinstance(have, int | float) and not isinstance(want, bool):
        return abs(float(want) - float(have)) <= max(1e-6, 0.01 * abs(float(want)))
    return str(want) == str(have)


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0
