"""Inspect one frame: fetch -> preprocess -> model (micro-batched) -> decision -> heatmap.

Every frame ends in exactly one InspectionResult. A frame that cannot be inspected (bad image,
missing object, unknown station, no usable model, a model error) gets VERDICT_ERROR with
disposition REVIEW and the cause in `error`; it is never dropped and never passed. Only when a
dependency is down (S3, Triton under the stop policy) does it raise RetryLater, so the frame stays
on the bus and is inspected when the dependency returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from opentelemetry import trace

from linesight.common import telemetry
from linesight.common.enums import enum_value
from linesight.common.events import new_meta
from linesight.common.pb import common_pb2, events_pb2
from linesight.common.settings import Settings
from linesight.common.storage import ObjectNotFound, StorageUnavailable
from linesight.inference.app import preprocess
from linesight.inference.app.backends.base import BackendUnavailable, InferenceFailed
from linesight.inference.app.batcher import MicroBatcher, NoModel, Scored
from linesight.inference.app.config import InferenceConfig
from linesight.inference.app.drift import DriftMonitor, artifact_baseline
from linesight.inference.app.metrics import InferenceMetrics
from linesight.inference.app.models import ModelManager, Role, ServingModel
from linesight.inference.app.routing import ReviewRouter, RoutingConfig
from linesight.inference.app.taxonomy_rules import TaxonomyRules
from linesight.inference.store.objects import FrameImages, HeatmapStore, StationCalibration
from linesight.vision import drift as vdrift
from linesight.vision.data.imageio import ImageError

if TYPE_CHECKING:
    from linesight.vision.decide import Decision

log = logging.getLogger(__name__)
T = TypeVar("T")

PRODUCER = "inference"
_RESULT_NS = uuid.UUID("6f1d0c1e-4f0a-4d55-9a43-5b1c6a7e2f10")

# Error codes carried in InspectionResult.error as "<CODE>: <message>".
UNDECODABLE_IMAGE = "UNDECODABLE_IMAGE"
IMAGE_NOT_FOUND = "IMAGE_NOT_FOUND"
UNKNOWN_STATION = "UNKNOWN_STATION"
MODEL_UNAVAILABLE = "MODEL_UNAVAILABLE"
INFERENCE_FAILED = "INFERENCE_FAILED"
DECISION_FAILED = "DECISION_FAILED"

_UNCALIBRATED = StationCalibration()
MAX_AUDITED = 10_000  # audit-sampled frames remembered until a person's label says whether they held

_VERDICTS = {
    "pass": common_pb2.VERDICT_PASS,
    "defect": common_pb2.VERDICT_DEFECT,
    "review": common_pb2.VERDICT_REVIEW,
}
_VERDICT_WORDS = {v: k for k, v in _VERDICTS.items()} | {common_pb2.VERDICT_ERROR: "error"}


class RetryLater(RuntimeError):  # noqa: N818
    """A dependency is down; leave the frame on the bus and try again later."""


@dataclass
class Outcome:
    """The result to publish, and the shadow model's result when a candidate is being evaluated."""

    result: events_pb2.InspectionResult
    shadow: events_pb2.InspectionResult | None = None
    stage_s: dict[str, float] = field(default_factory=dict)


def station_key(station: common_pb2.StationRef) -> str:
    return f"{station.plant}/{station.line}/{station.station}"


def result_event_id(frame: events_pb2.FrameCaptured, suffix: str = "result") -> str:
    """Deterministic per frame: a redelivered frame's result is de-duplicated by JetStream."""
    basis = frame.meta.event_id or frame.frame_id or frame.image.key
    return str(uuid.uuid5(_RESULT_NS, f"{basis}:{suffix}"))


def _enum(value: Any, enum_type: EnumTypeWrapper, default: int) -> int:
    """A decision field (enum member, word or number) as the proto enum value; unknown -> default."""
    if value is None or value == "":
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    try:
        return enum_value(enum_type, str(getattr(value, "value", getattr(value, "name", value))))
    except ValueError:
        return default


def _region(r: Any) -> common_pb2.Region:
    """A decision region (dataclass, dict or box tuple) as the proto Region."""
    get = r.get if isinstance(r, dict) else (lambda k, d=None: getattr(r, k, d))
    box = get("box") or get("bbox")
    x0, y0, x1, y1 = (
        box if box is not None else (get("x_min", 0), get("y_min", 0), get("x_max", 0), get("y_max", 0))
    )
    return common_pb2.Region(
        x_min=int(x0), y_min=int(y0), x_max=int(x1), y_max=int(y1),
        area_px=float(get("area_px", 0.0) or 0.0),
        area_mm2=float(get("area_mm2", 0.0) or 0.0),
        length_mm=float(get("length_mm", 0.0) or 0.0),
        peak_score=float(get("peak_score", None) or get("peak", 0.0) or 0.0),
        named_region=str(get("named_region", "") or ",".join(get("named_regions", ()) or ())),
        # measured geometry (vision/geometry.py): why the part is major or critical
        length_px=float(get("length_px", 0.0) or 0.0),
        width_px=float(get("width_px", 0.0) or 0.0),
        width_mm=float(get("width_mm", 0.0) or 0.0),
        angle_deg=float(get("angle_deg", 0.0) or 0.0),
        edge_distance_px=float(get("edge_distance_px", 0.0) or 0.0),
        edge_distance_mm=float(get("edge_distance_mm", 0.0) or 0.0),
        region_distance_px={str(k): float(v) for k, v in dict(get("region_distance_px", ()) or ()).items()},
        severity=str(get("severity", "") or ""),
        severity_reason=str(get("severity_reason", "") or ""),
        defect_class=str(get("defect_class", "") or ""),
    )  # fmt: skip


def _scaled(prediction: Any, calibration: StationCalibration) -> Any:
    """The prediction as the station's golden-sample calibration sees it: anomaly fields divided
    by its anomaly scale (1.0 = threshold), and its defect threshold in place of the model's, so
    ``is_defect`` (what decide() reads) compares with the station's operating point."""
    changes: dict[str, Any] = {}
    if calibration.anomaly_scale != 1.0:
        changes["anomaly_score"] = float(prediction.anomaly_score) / calibration.anomaly_scale
        changes["heatmap"] = np.asarray(prediction.heatmap, dtype=np.float32) / calibration.anomaly_scale
    if calibration.defect_threshold is not None:
        changes["defect_threshold"] = float(calibration.defect_threshold)
    if not changes:
        return prediction
    if dataclasses.is_dataclass(prediction) and not isinstance(prediction, type):
        return dataclasses.replace(prediction, **changes)
    for k, v in changes.items():
        setattr(prediction, k, v)
    return prediction


class InspectionPipeline:
    """The use case behind both the bus consumer and the gRPC Inspect call."""

    def __init__(
        self,
        settings: Settings,
        config: InferenceConfig,
        models: ModelManager,
        batcher: MicroBatcher,
        metrics: InferenceMetrics,
        frames: FrameImages,
        heatmaps: HeatmapStore | None,
        router: ReviewRouter | None = None,
    ) -> None:
        self.settings = settings
        self.config = config
        self.models = models
        self.batcher = batcher
        self.metrics = metrics
        self.frames = frames
        self.heatmaps = heatmaps
        # model_version -> station key -> golden-sample calibration (anomaly scale, defect threshold)
        self.station_thresholds: dict[str, dict[str, StationCalibration]] = {}
        self.taxonomies = TaxonomyRules()  # the newest published taxonomy per product decides
        self._tracer = telemetry.tracer("linesight.inference")
        self._known = {s.strip("/") for s in config.stations}
        # Which frames go to a person and why; what drifts per station (both on production results).
        self.router = router or ReviewRouter(
            RoutingConfig(
                selection=dict(config.review_selection),
                audit_rate=config.review_audit_rate,
                audit_rate_by_station=dict(config.review_audit_rate_by_station),
                audit_seed=config.review_audit_seed,
                rate_per_min=config.review_rate_per_min,
                rate_by_station=dict(config.review_rate_by_station),
                burst=config.review_burst,
            )
        )
        self.drift = DriftMonitor(
            window=config.drift_window,
            thresholds=vdrift.Thresholds(psi=config.drift_psi_threshold),
            baseline_for=self._release_baseline,
        )
        # set by the app: publishes the drift alerts a window raised (called on the event loop)
        self.on_drift: Callable[[list[events_pb2.DriftAlert]], None] | None = None
        # audit-sampled frames of this replica: frame id -> (station, automatic verdict)
        self.audited: OrderedDict[str, tuple[common_pb2.StationRef, int]] = OrderedDict()
        # Per-frame CPU work (decode, resize, decision, heatmap PNG) runs on a few threads of its
        # own: bounded, so it does not crowd out the model's threads, and never queued behind
        # blocking S3 calls (those use the default executor).
        self._cpu = ThreadPoolExecutor(max_workers=config.cpu_threads, thread_name_prefix="linesight-cpu")

    def close(self) -> None:
        self._cpu.shutdown(wait=False, cancel_futures=True)

    async def _cpu_call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._cpu, fn, *args)

    # --- stations -----------------------------------------------------------------------------
    def station_known(self, station: common_pb2.StationRef) -> bool:
        if station.plant != self.settings.plant or not station.line or not station.station:
            return False
        if not self._known:
            return True
        return f"{station.line}/{station.station}" in self._known or station.station in self._known

    def calibration_for(self, model_version: str, station: common_pb2.StationRef) -> StationCalibration:
        """The station's calibration for that version; the model's own thresholds when none."""
        return self.station_thresholds.get(model_version, {}).get(station_key(station), _UNCALIBRATED)

    def threshold_for(self, model_version: str, station: common_pb2.StationRef) -> float:
        return self.calibration_for(model_version, station).anomaly_scale

    def _release_baseline(self, version: str) -> vdrift.Baseline | None:
        for serving in (self.models.production, self.models.candidate):
            if serving is not None and serving.version == version:
                return artifact_baseline(getattr(serving.bundle, "directory", None))
        return None

    def taxonomy_for(self, serving: ServingModel) -> tuple[Any, str]:
        """(taxonomy, version): the newest published one of the model's product, else the model's."""
        bundle = serving.bundle
        return self.taxonomies.for_model(bundle.product, bundle.taxonomy, bundle.taxonomy_version)

    # --- the use case -------------------------------------------------------------------------
    async def inspect(
        self,
        frame: events_pb2.FrameCaptured,
        *,
        image: bytes | None = None,
        station: common_pb2.StationRef | None = None,
    ) -> Outcome:
        """One frame -> its result (and shadow result); raises RetryLater when a dependency is down."""
        started = time.monotonic()
        stage: dict[str, float] = {}
        station = station or frame.capture.station
        if not frame.capture.HasField("station") or not frame.capture.station.station:
            frame = _with_station(frame, station)

        with self._tracer.start_as_current_span(
            "inspect", attributes={"frame.id": frame.frame_id, "station": station_key(station)}
        ) as span:
            if not self.station_known(station):
                # Its own event id: the station group that serves it publishes the real result
                # under result_event_id(frame), which this must never take (JetStream de-dup).
                return self._error(
                    frame,
                    stage,
                    UNKNOWN_STATION,
                    f"station {station_key(station)} is not served by station group "
                    f"{self.config.station_group!r}",
                    suffix=f"unknown-station:{self.config.station_group}",
                )
            # fetch
            try:
                with self._stage("fetch", stage):
                    data = image if image else await self.frames.fetch(frame.image)
            except ObjectNotFound as exc:
                return self._error(frame, stage, IMAGE_NOT_FOUND, str(exc))
            except StorageUnavailable as exc:
                raise RetryLater(f"object storage unavailable: {exc}") from exc
            # preprocess
            production = self.models.production
            size = production.bundle.input_size if production else (256, 256)
            try:
                with self._stage("preprocess", stage):
                    original, tensor = await self._cpu_call(self._prepare, data, frame, size)
            except ImageError as exc:
                return self._error(frame, stage, UNDECODABLE_IMAGE, str(exc))
            # model (production and, in shadow mode, the candidate at the same time)
            shadow_task = None
            if self.config.shadow and self.models.candidate is not None:
                shadow_task = asyncio.create_task(self._score_shadow(frame, original, tensor, station))
            try:
                with self._stage("model", stage):
                    scored = await self.batcher.score(tensor, Role.PRODUCTION)
            except NoModel as exc:
                await _cancel(shadow_task)
                pending = self.models.pending.get(Role.PRODUCTION)
                if pending:  # loading, or waiting for S3/Triton: not the frame's fault, not final
                    raise RetryLater(f"production model {pending} is not loaded yet") from exc
                return self._error(frame, stage, MODEL_UNAVAILABLE, str(exc))
            except BackendUnavailable as exc:
                await _cancel(shadow_task)
                raise RetryLater(str(exc)) from exc
            except InferenceFailed as exc:
                await _cancel(shadow_task)
                return self._error(frame, stage, INFERENCE_FAILED, str(exc))
            stage["queue"] = scored.queued_s
            self.metrics.stage.record(scored.queued_s, {"stage": "queue"})
            result = await self._qualify(frame, original, scored, station, stage)
            shadow = await shadow_task if shadow_task is not None else None
            span.set_attribute("model.version", scored.model.version)
            span.set_attribute(
                "verdict",
                events_pb2.InspectionResult.DESCRIPTOR.fields_by_name["verdict"]
                .enum_type.values_by_number[result.verdict]
                .name,
            )
            total = time.monotonic() - started
            log.debug("frame %s inspected in %.1f ms", frame.frame_id, total * 1000)
            return Outcome(result, shadow, stage)

    def _prepare(
        self, data: bytes, frame: events_pb2.FrameCaptured, size: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        original = preprocess.decode(data, source=f"frame {frame.frame_id or frame.image.key}")
        return original, preprocess.to_model_input(original, size)

    async def _score_shadow(
        self,
        frame: events_pb2.FrameCaptured,
        original: np.ndarray,
        tensor: np.ndarray,
        station: common_pb2.StationRef,
    ) -> events_pb2.InspectionResult | None:
        """The candidate's result; failures only cost the shadow result, never the real one."""
        candidate = self.models.candidate
        try:
            if candidate is not None and candidate.bundle.input_size != tensor.shape[:2]:
                tensor = preprocess.to_model_input(original, candidate.bundle.input_size)
            scored = await self.batcher.score(tensor, Role.CANDIDATE)
            stage: dict[str, float] = {}
            result = await self._qualify(frame, original, scored, station, stage, shadow=True)
        except Exception as exc:
            log.warning("shadow scoring of %s failed: %s", frame.frame_id, exc)
            return None
        return result

    async def _qualify(
        self,
        frame: events_pb2.FrameCaptured,
        original: np.ndarray,
        scored: Scored,
        station: common_pb2.StationRef,
        stage: dict[str, float],
        *,
        shadow: bool = False,
    ) -> events_pb2.InspectionResult:
        stage["model"] = stage.get("model", scored.model_s)
        serving = scored.model
        calibration = self.calibration_for(serving.version, station)
        px_per_mm = frame.capture.px_per_mm or None
        audit_passed = frame.audit.passed if frame.HasField("audit") else True
        # The heatmap at the frame's size (station threshold applied) first; then the decision and
        # storing its PNG run side by side: the result waits for both, never for one after the other.
        t0 = time.monotonic()
        try:
            prediction, _ = await self._cpu_call(
                self._to_frame,
                scored.prediction,
                (int(original.shape[0]), int(original.shape[1])),
                calibration,
            )
        except Exception as exc:
            log.exception("decision failed for frame %s", frame.frame_id)
            return self._error(
                frame, stage, DECISION_FAILED, f"{type(exc).__name__}: {exc}", model=serving, shadow=shadow
            )

        to_frame_s = time.monotonic() - t0
        # taken once: a version published while this frame is decided applies from the next frame
        taxonomy, taxonomy_version = self.taxonomy_for(serving)

        async def decide() -> Decision:
            t1 = time.monotonic()
            with self._child_span("decision"):
                try:
                    return await self._cpu_call(self._decide, prediction, taxonomy, px_per_mm, audit_passed)
                finally:
                    dt = to_frame_s + time.monotonic() - t1
                    stage["decision"] = dt
                    self.metrics.stage.record(dt, {"stage": "decision"})

        decision = asyncio.ensure_future(decide())

        async def store_heatmap() -> common_pb2.ObjectRef | None:
            """The readable heatmap (vision/render.py): frame + colour scale + the decision's
            regions with class and size, so it waits for the decision (or draws none)."""
            if self.heatmaps is None:
                return None
            regions = await self.heatmaps.regions_of(decision)
            with self._stage("heatmap", stage):
                png = await self._cpu_call(
                    self.heatmaps.render, original, prediction.heatmap, regions, self.config.heatmap_max_side
                )
                return await self.heatmaps.put(png, frame_id=frame.frame_id, model_version=serving.version)

        decided, stored = await asyncio.gather(decision, store_heatmap(), return_exceptions=True)
        if isinstance(decided, asyncio.CancelledError) or isinstance(stored, asyncio.CancelledError):
            raise asyncio.CancelledError
        if isinstance(decided, BaseException):
            log.error("decision failed for frame %s", frame.frame_id, exc_info=decided)
            return self._error(
                frame,
                stage,
                DECISION_FAILED,
                f"{type(decided).__name__}: {decided}",
                model=serving,
                shadow=shadow,
            )
        heatmap_ref: common_pb2.ObjectRef | None = None
        if isinstance(stored, StorageUnavailable):
            if not shadow:
                raise RetryLater(f"object storage unavailable for heatmap: {stored}") from stored
        elif isinstance(stored, BaseException):
            raise stored
        else:
            heatmap_ref = stored
        res = self._result(frame, decided, prediction, serving, heatmap_ref, stage, shadow, taxonomy_version)
        if not shadow:
            self._route(res, frame, prediction)
            await self._watch_drift(res, original, scored.prediction)
        return res

    def _route(
        self, res: events_pb2.InspectionResult, frame: events_pb2.FrameCaptured, prediction: Any
    ) -> None:
        """Set why (and whether) this production result goes to a person."""
        route = self.router.route(
            frame_id=frame.frame_id,
            station=station_key(res.capture.station),
            verdict=_VERDICT_WORDS.get(res.verdict, "review"),
            prediction=prediction,
            audit_codes=tuple(frame.audit.reason_codes) if frame.HasField("audit") else (),
        )
        res.route_reason = route.reason
        res.route_capped = route.capped
        if route.routed and route.reason == "audit":
            self.audited[frame.frame_id] = (res.capture.station, res.verdict)
            while len(self.audited) > MAX_AUDITED:
                self.audited.popitem(last=False)

    def label_confirmed(self, label: events_pb2.LabelSubmitted) -> bool | None:
        """A confirmed label of a frame this replica audit-sampled feeds the station's concept-drift
        rate: True when the person overruled the automatic call (a missed defect, or a good part
        rejected), False when it held, None for any other frame."""
        seen = self.audited.pop(label.frame_id, None)
        if seen is None or not label.label:
            return None
        station, verdict = seen
        overruled = (verdict == common_pb2.VERDICT_PASS) != (label.label == "good")
        self.drift.audit_outcome(station, overruled)
        return overruled

    async def _watch_drift(self, res: events_pb2.InspectionResult, original: np.ndarray, raw: Any) -> None:
        """Feed the station's drift window; a monitoring failure never costs the frame its result."""
        if not self.drift.enabled:
            return
        try:
            stats = await self._cpu_call(vdrift.input_stats, original)
            # the model's own numbers, before any station calibration: what the release's baseline
            # was measured in (vision.drift.model_stats)
            model = vdrift.model_stats(raw)
            alerts = self.drift.observe(
                res.capture.station,
                res.model_version,
                stats,
                anomaly_score=model["anomaly_score"],
                confidence=model["confidence"],
            )
        except Exception:
            log.exception("drift monitoring of frame %s failed", res.frame_id)
            return
        if alerts and self.on_drift is not None:
            self.on_drift(alerts)

    def _to_frame(
        self, prediction: Any, frame_hw: tuple[int, int], calibration: StationCalibration
    ) -> tuple[Any, bytes | None]:
        """The prediction with its heatmap at the frame's resolution, normalised to the station's
        calibration (regions are in camera pixels, for px/mm), and that heatmap as PNG."""
        heat = preprocess.heatmap_to_frame(prediction.heatmap, (int(frame_hw[0]), int(frame_hw[1])))
        if dataclasses.is_dataclass(prediction) and not isinstance(prediction, type):
            prediction = dataclasses.replace(prediction, heatmap=heat)
        else:
            prediction.heatmap = heat
        prediction = _scaled(prediction, calibration)
        return prediction, None  # the heatmap PNG is rendered with the decision's regions

    @staticmethod
    def _decide(prediction: Any, taxonomy: Any, px_per_mm: float | None, audit_passed: bool) -> Decision:
        from linesight.vision.decide import decide

        return decide(prediction, taxonomy, px_per_mm=px_per_mm, audit_passed=audit_passed)

    # --- results ------------------------------------------------------------------------------
    def _base(
        self, frame: events_pb2.FrameCaptured, shadow: bool, suffix: str
    ) -> events_pb2.InspectionResult:
        meta = new_meta(PRODUCER, correlation_id=frame.frame_id)
        meta.event_id = result_event_id(frame, suffix)
        res = events_pb2.InspectionResult(meta=meta, frame_id=frame.frame_id, shadow=shadow)
        res.capture.CopyFrom(frame.capture)
        res.image.CopyFrom(frame.image)
        return res

    def _result(
        self,
        frame: events_pb2.FrameCaptured,
        decision: Any,
        prediction: Any,
        serving: ServingModel,
        heatmap: common_pb2.ObjectRef | None,
        stage: dict[str, float],
        shadow: bool,
        taxonomy_version: str,
    ) -> events_pb2.InspectionResult:
        res = self._base(frame, shadow, f"shadow:{serving.version}" if shadow else "result")
        res.verdict = _VERDICTS.get(
            str(getattr(decision, "verdict", "review")).lower(), common_pb2.VERDICT_REVIEW
        )
        res.defect_class = str(getattr(decision, "defect_class", "") or "")
        res.severity = cast(
            common_pb2.Severity, _enum(getattr(decision, "severity", None), common_pb2.Severity, 0)
        )
        res.disposition = cast(
            common_pb2.Disposition,
            _enum(
                getattr(decision, "disposition", None), common_pb2.Disposition, common_pb2.DISPOSITION_REVIEW
            ),
        )
        if res.verdict != common_pb2.VERDICT_PASS and res.disposition == common_pb2.DISPOSITION_PASS:
            res.disposition = common_pb2.DISPOSITION_REVIEW  # never pass a part the model did not pass
        res.confidence = float(getattr(decision, "confidence", 0.0) or 0.0)
        res.anomaly_score = float(prediction.anomaly_score)
        res.review_reason = str(getattr(decision, "review_reason", "") or "")
        for name, p in sorted(dict(prediction.class_probs).items(), key=lambda kv: -kv[1]):
            res.class_scores.add(defect_class=str(name), probability=float(p))
        for r in getattr(decision, "regions", None) or []:
            res.regions.append(_region(r))
        if heatmap is not None:
            res.heatmap.CopyFrom(heatmap)
        res.model_version = serving.version
        res.taxonomy_version = taxonomy_version  # the version this decision was made under
        self._finish(res, frame, stage)
        return res

    def _error(
        self,
        frame: events_pb2.FrameCaptured,
        stage: dict[str, float],
        code: str,
        message: str,
        *,
        model: ServingModel | None = None,
        shadow: bool = False,
        suffix: str = "result",
    ) -> Any:
        """An explicit error result routed to review (for the bus: an Outcome; shadow: the result)."""
        log.warning("frame %s -> error result %s: %s", frame.frame_id, code, message)
        self.metrics.errors.add(1, {"reason": code})
        res = self._base(frame, shadow, suffix if not shadow else f"shadow:{model.version if model else ''}")
        res.verdict = common_pb2.VERDICT_ERROR
        res.disposition = common_pb2.DISPOSITION_REVIEW
        res.review_reason = "ERROR"
        res.error = f"{code}: {message}"
        if not shadow:
            res.route_reason = self.router.route(
                frame_id=frame.frame_id,
                station=station_key(res.capture.station),
                verdict="error",
                prediction=None,
            ).reason
        serving = model or self.models.production
        if serving is not None:
            res.model_version = serving.version
            res.taxonomy_version = self.taxonomy_for(serving)[1]
        self._finish(res, frame, stage)
        return res if shadow else Outcome(res, None, stage)

    def _finish(
        self, res: events_pb2.InspectionResult, frame: events_pb2.FrameCaptured, stage: dict[str, float]
    ) -> None:
        for k, v in stage.items():
            res.stage_ms[k] = round(v * 1000.0, 3)
        res.latency_ms = latency_ms(frame)

    def _child_span(self, name: str) -> contextlib.AbstractContextManager[object]:
        """A stage's span under the frame's span; none when that one is not recorded (no tracing
        configured, or sampled out), where five no-op spans per frame only cost event-loop time."""
        if not trace.get_current_span().is_recording():
            return contextlib.nullcontext()
        return self._tracer.start_as_current_span(name)

    @contextmanager
    def _stage(self, name: str, stage: dict[str, float]) -> Iterator[None]:
        t0 = time.monotonic()
        with self._child_span(name):
            try:
                yield
            finally:
                dt = time.monotonic() - t0
                stage[name] = dt
                self.metrics.stage.record(dt, {"stage": name})


def latency_ms(frame: events_pb2.FrameCaptured) -> float:
    """Milliseconds from the trigger (or capture) until now; 0 when the frame has neither time."""
    ts = (
        frame.triggered_at
        if frame.HasField("triggered_at")
        else (frame.capture.captured_at if frame.capture.HasField("captured_at") else None)
    )
    if ts is None:
        return 0.0
    return max(0.0, (datetime.now(UTC) - ts.ToDatetime(tzinfo=UTC)).total_seconds() * 1000.0)


def _with_station(
    frame: events_pb2.FrameCaptured, station: common_pb2.StationRef
) -> events_pb2.FrameCaptured:
    copy = events_pb2.FrameCaptured()
    copy.CopyFrom(frame)
    copy.capture.station.CopyFrom(station)
    return copy


async def _cancel(task: asyncio.Task[Any] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
