"""InferenceApp: the inference service as an object the demo, tests and `__main__` can start.

It owns the model manager, the micro-batcher and the inspection pipeline, installs what the model
rollout (`rollout.py`) chooses from ModelPublished events (hot swap, shadow candidates),
recalibrates stations from golden samples, and raises alarms when the queue backs up or Triton goes
away. Transport (bus consumers, gRPC) lives in `api/`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf.message import Message

from linesight.common import subjects
from linesight.common.events import new_meta
from linesight.common.pb import common_pb2, events_pb2
from linesight.common.ports import EventPublisher
from linesight.common.settings import Settings
from linesight.common.storage import ObjectStore, StorageUnavailable
from linesight.inference.app import preprocess
from linesight.inference.app.backends.base import Backend, BackendUnavailable
from linesight.inference.app.backends.in_process import InProcessBackend
from linesight.inference.app.batcher import MicroBatcher
from linesight.inference.app.bundle import ModelBundle, ModelLoadError, ModelLoadPending, load_bundle
from linesight.inference.app.config import BackendKind, InferenceConfig
from linesight.inference.app.inspection import PRODUCER, InspectionPipeline, Outcome, station_key
from linesight.inference.app.metrics import InferenceMetrics
from linesight.inference.app.models import ModelInfo, ModelManager, Role, ServingModel, session_loader
from linesight.inference.app.rollout import LoadFailure, Rollout, role_of
from linesight.inference.app.threads import limit_blas_threads, limit_threads
from linesight.inference.store.objects import (
    ArtifactError,
    CalibrationStore,
    FrameImages,
    HeatmapStore,
    ModelArtifacts,
    StationCalibration,
)
from linesight.vision.data.imageio import ImageError

log = logging.getLogger(__name__)


class InferenceApp:
    """Start with `await app.start()`, stop with `await app.stop()`."""

    def __init__(
        self,
        settings: Settings,
        store: ObjectStore,
        publisher: EventPublisher | None = None,
        config: InferenceConfig | None = None,
    ) -> None:
        self.settings = settings
        self.config = config or InferenceConfig.from_env()
        self.store = store
        self.publisher = publisher
        self.metrics = InferenceMetrics()
        self.backend, fallback = self._backends()
        self.models = ModelManager(
            session_loader(self.backend, fallback, self.config.triton_down_policy, self._backend_down)
        )
        self.models.listeners.append(self._on_model_change)
        self.batcher = MicroBatcher(
            self.models,
            self.metrics,
            max_batch=self.config.max_batch,
            max_wait_s=self.config.max_wait_ms / 1000.0,
            max_queue=self.config.max_queue,
            oldest_alarm_s=self.config.oldest_frame_alarm_s,
            on_backlog=self._backlog,
        )
        self.artifacts = ModelArtifacts(store, Path(self.config.work_dir) / "models")
        self.calibrations = CalibrationStore(store, settings.product)
        self.pipeline = InspectionPipeline(
            settings,
            self.config,
            self.models,
            self.batcher,
            self.metrics,
            FrameImages(store),
            HeatmapStore(store) if self.config.store_heatmaps else None,
        )
        self.pipeline.on_drift = self._drift_alerts
        self.rollout = Rollout(settings.product, self.config.retry_backoff)
        self._wanted_changed = asyncio.Event()
        self._applier: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[object]] = set()
        self.installed_events = 0

    def _backends(self) -> tuple[Backend, Backend | None]:
        cfg = self.config
        in_process = InProcessBackend(cfg.model_loader, threads=cfg.threads)
        if cfg.backend == BackendKind.IN_PROCESS:
            return in_process, None
        from linesight.inference.app.backends.triton import TritonBackend

        repo = cfg.triton_model_repository or Path(cfg.work_dir) / "triton-repository"
        triton = TritonBackend(
            cfg.backend,
            cfg.triton_url,
            repo,
            loader_spec=cfg.model_loader,
            max_batch=cfg.max_batch,
            # Our batcher already formed the batch; Triton only merges requests of several
            # replicas, which must not cost a lone frame the full wait again.
            max_queue_delay_us=int(min(cfg.max_wait_ms, 0.5) * 1000),
            timeout_s=cfg.triton_timeout_s,
            http_url=cfg.triton_http_url or None,
            threads=cfg.threads,
        )
        return triton, in_process

    # --- life cycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        limit_threads(self.config)
        self.batcher.start()
        self._applier = asyncio.create_task(self._apply_wanted(), name="inference-model-applier")
        if self.config.model_dir is not None:
            try:
                await self.install_directory(self.config.model_dir)
            except ModelLoadPending:
                self._spawn(self._retry_directory(Path(self.config.model_dir)), "inference-initial-model")
            except ModelLoadError as exc:
                self.models.last_error = f"initial model {self.config.model_dir}: {exc}"
                log.error("%s", self.models.last_error)

    async def stop(self) -> None:
        if self._applier is not None:
            self._applier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._applier
        for task in list(self._background):
            task.cancel()
        await self.batcher.stop()
        self.pipeline.close()
        await asyncio.to_thread(self.models.close)
        await asyncio.to_thread(self.backend.close)

    # --- models -------------------------------------------------------------------------------
    async def install_directory(
        self, directory: Path, *, version: str | None = None, role: Role = Role.PRODUCTION
    ) -> ServingModel:
        """Load an export directory and make it serve `role`.

        Raises ModelLoadError, or ModelLoadPending when S3 or Triton (policy `stop`) is down.
        """
        try:
            bundle = await asyncio.to_thread(
                load_bundle, Path(directory), version=version, product=self.settings.product
            )
        except ModelLoadError as exc:
            self._load_failed(role, version or Path(directory).name, str(exc), transient=False)
            raise
        serving = await self._install(bundle, role)
        self._load_succeeded(role)
        return serving

    async def _install(self, bundle: ModelBundle, role: Role) -> ServingModel:
        """Station calibrations first (a frame must never see the new version without them), then
        the session; ModelLoadPending when a dependency is down, ModelLoadError otherwise."""
        try:
            stored = await self.calibrations.load(bundle.version)
        except StorageUnavailable as exc:
            message = f"model {bundle.version} waits for object storage: {exc}"
            self._load_failed(role, bundle.version, message, transient=True)
            raise ModelLoadPending(message) from exc
        table = self.pipeline.station_thresholds.setdefault(bundle.version, {})
        for station, calibration in stored.items():
            table.setdefault(station, calibration)  # a RecalibrationPerformed seen since is newer
        try:
            serving = await self.models.install(bundle, role)
        except BackendUnavailable as exc:
            message = f"model {bundle.version} waits for Triton: {exc}"
            self._load_failed(role, bundle.version, message, transient=True)
            raise ModelLoadPending(message) from exc
        except Exception as exc:
            message = f"model {bundle.version} failed to load: {exc}"
            self._load_failed(role, bundle.version, message, transient=False)
            raise ModelLoadError(message) from exc
        limit_blas_threads(self.config.blas_threads)  # a library the model brought along
        return serving

    async def install_published(self, event: events_pb2.ModelPublished) -> ServingModel | None:
        """Download the artifact of a ModelPublished and install it (production or shadow candidate)."""
        if not self.rollout.accepts(event):
            log.info("ignoring model %s for product %s", event.model_version, event.product)
            return None
        role = role_of(event)
        try:
            directory = await self.artifacts.fetch(
                event.artifact,
                product=event.product or self.settings.product,
                model_version=event.model_version,
            )
            bundle = await asyncio.to_thread(
                load_bundle, directory, version=event.model_version, product=self.settings.product
            )
            if event.taxonomy_version and not bundle.taxonomy_version:
                bundle.taxonomy_version = event.taxonomy_version
        except StorageUnavailable as exc:
            message = f"model {event.model_version} waits for object storage: {exc}"
            self._load_failed(role, event.model_version, message, transient=True)
            raise ModelLoadPending(message) from exc
        except (ArtifactError, ModelLoadError, OSError) as exc:
            message = f"model {event.model_version} failed to load: {exc}"
            self._load_failed(role, event.model_version, message, transient=False)
            raise ModelLoadError(message) from exc
        return await self._install(bundle, role)

    def model_published(self, event: events_pb2.ModelPublished) -> None:
        """Hand the event to the rollout; the applier installs only the newest one per role.

        Called in stream order, also for the replay of the MODELS stream at start.
        """
        role = self.rollout.published(event)
        if role is None:
            return
        if role == Role.PRODUCTION and self.models.production is None:
            self.models.pending[Role.PRODUCTION] = event.model_version  # frames wait for it, not error
        self._wanted_changed.set()

    async def _apply_wanted(self) -> None:
        while True:
            await self._wanted_changed.wait()
            self._wanted_changed.clear()
            for role in (Role.PRODUCTION, Role.CANDIDATE):
                event = self.rollout.take(role)
                if event is None:
                    continue
                try:
                    await self._apply(role, event)
                except Exception:
                    log.exception("installing model %s failed", event.model_version)
                self.installed_events += 1

    async def _apply(self, role: Role, event: events_pb2.ModelPublished) -> None:
        """Install the newest event of `role`; on failure keep what serves or fall back."""
        version = event.model_version
        failure = self.rollout.failed.get(version)
        if failure is None:
            try:
                await self.install_published(event)
            except ModelLoadPending:
                self._retry_later(role, version)  # frames keep waiting (models.pending) meanwhile
                return
            except ModelLoadError as exc:
                failure = self.rollout.cannot_load(role, version, str(exc))
            else:
                self._load_succeeded(role)
                return
        if role == Role.PRODUCTION:
            await self._fall_back(failure)

    async def _fall_back(self, failure: LoadFailure) -> None:
        """The newest production version cannot load: keep what serves, else the newest one that loads."""
        serving = self.models.production
        if serving is not None:
            log.warning("production model stays %s (%s cannot load)", serving.version, failure.version)
            self.models.pending.pop(Role.PRODUCTION, None)
            return
        for event in self.rollout.fallback_order():
            version = event.model_version
            if version in self.rollout.failed:
                continue
            log.warning("%s cannot load; falling back to production model %s", failure.version, version)
            self.models.pending[Role.PRODUCTION] = version
            try:
                await self.install_published(event)
            except ModelLoadPending:
                self._retry_later(Role.PRODUCTION, version)
                return
            except ModelLoadError as exc:
                self.rollout.cannot_load(Role.PRODUCTION, version, str(exc))
                continue
            # Serving, but not what was published last: ModelInfo and the metric keep saying so.
            self.rollout.fell_back(failure)
            self.models.pending.pop(Role.PRODUCTION, None)
            self._show_failure(Role.PRODUCTION, failure)
            log.error("serving older production model %s: %s", version, failure.message)
            return
        self.models.pending.pop(Role.PRODUCTION, None)
        log.error("no production model loads; every frame gets an error result routed to review")

    def _retry_later(self, role: Role, version: str) -> None:
        """S3 or Triton is down: try the role's newest event again after a growing delay."""
        attempt, delay = self.rollout.retry_delay(version)
        log.warning("loading %s model %s again in %.0f s (attempt %d)", role, version, delay, attempt)

        async def later() -> None:
            await asyncio.sleep(delay)
            if self.rollout.requeue(role):
                self._wanted_changed.set()

        self._spawn(later(), f"inference-retry-{role}")

    async def _retry_directory(self, directory: Path) -> None:
        """The initial model directory could not load for an outage: retry until it does."""
        self.models.pending[Role.PRODUCTION] = directory.name
        attempt = 0
        while self.models.production is None and self.models.pending.get(Role.PRODUCTION) == directory.name:
            attempt += 1
            await asyncio.sleep(self.config.retry_delay_s(attempt))
            try:
                await self.install_directory(directory)
            except ModelLoadPending:
                continue
            except ModelLoadError as exc:
                log.error("initial model %s: %s", directory, exc)
                break
        if self.models.pending.get(Role.PRODUCTION) == directory.name:
            self.models.pending.pop(Role.PRODUCTION, None)

    def _load_failed(self, role: Role, version: str, message: str, *, transient: bool) -> None:
        log.log(logging.WARNING if transient else logging.ERROR, "%s", message)
        failure = LoadFailure(version, message, transient)
        self.rollout.load_failed(role, failure)
        self._show_failure(role, failure)
        self.metrics.load_failures.add(
            1, {"role": str(role), "model_version": version, "transient": transient}
        )

    def _show_failure(self, role: Role, failure: LoadFailure) -> None:
        """Frames without a model and the load-error metric say what the rollout recorded."""
        self.models.last_error = failure.message
        self.metrics.set_load_error(str(role), failure.version)

    def _load_succeeded(self, role: Role) -> None:
        """The newest wanted version of `role` serves: no failure to show any more."""
        self.rollout.load_succeeded(role)
        self.metrics.set_load_error(str(role), "")
        if role == Role.PRODUCTION:
            self.models.pending.pop(role, None)
        if not self.rollout.errors:
            self.models.last_error = ""

    def _spawn(self, coro: Coroutine[Any, Any, object], name: str) -> None:
        task: asyncio.Task[object] = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def wait_for_version(
        self, version: str, role: Role = Role.PRODUCTION, timeout_s: float = 60.0
    ) -> None:
        """For the demo and tests: until `version` serves `role`."""
        async with asyncio.timeout(timeout_s):
            while True:
                serving = self.models.get(role)
                if serving is not None and serving.version == version:
                    return
                await asyncio.sleep(0.05)

    # --- use cases ----------------------------------------------------------------------------
    async def inspect(
        self,
        frame: events_pb2.FrameCaptured,
        *,
        image: bytes | None = None,
        station: common_pb2.StationRef | None = None,
    ) -> Outcome:
        return await self.pipeline.inspect(frame, image=image, station=station)

    def model_info(self) -> ModelInfo:
        """What serves, what failed to load and the thresholds in force (GetModelInfo)."""
        prod, cand = self.models.production, self.models.candidate
        failure = self.rollout.shown_failure()
        info = ModelInfo(
            backend=prod.session.backend_name if prod else str(self.config.backend),
            model_version=prod.version if prod else "",
            candidate_version=cand.version if cand else "",
            last_load_error=failure.message if failure else "",
            failed_version=failure.version if failure else "",
            fallback=self.rollout.fallback and prod is not None,
            pending_version=self.models.pending.get(Role.PRODUCTION, ""),
        )
        if prod is not None:
            info.taxonomy_version = self.pipeline.taxonomy_for(prod)[1]
            info.classes.extend(str(c) for c in prod.bundle.classes)
            info.thresholds.update({k: float(v) for k, v in prod.bundle.thresholds.items()})
            for station, c in self.pipeline.station_thresholds.get(prod.version, {}).items():
                info.thresholds[f"station:{station}"] = c.anomaly_scale
                if c.defect_threshold is not None:
                    info.thresholds[f"station_defect:{station}"] = c.defect_threshold
        return info

    async def recalibrate(
        self, station: common_pb2.StationRef, golden_frames: list[common_pb2.ObjectRef]
    ) -> events_pb2.RecalibrationPerformed:
        """Golden-sample recalibration of a station from known-good frames: its anomaly scale
        (highest golden score x margin) and its defect threshold (the engine's rule, from the
        export's reference scores; the model's own when the export has none)."""
        prod = self.models.production
        if prod is None:
            raise ModelLoadError(self.models.last_error or "no production model loaded")
        if not golden_frames:
            raise ValueError("recalibration needs at least one golden frame")
        subjects.validate_token("line", station.line)
        subjects.validate_token("station", station.station)
        if not station.plant:
            station = common_pb2.StationRef(
                plant=self.settings.plant, line=station.line, station=station.station
            )
        scores: list[float] = []
        defect_probabilities: list[float] = []
        reported: float | None = None  # the model's defect threshold as the backend reports it
        for ref in golden_frames:
            data = await self.pipeline.frames.fetch(ref)
            try:
                image = await asyncio.to_thread(preprocess.decode, data, source=f"golden {ref.key}")
            except ImageError as exc:
                raise ValueError(f"golden frame s3://{ref.bucket}/{ref.key}: {exc}") from exc
            tensor = preprocess.to_model_input(image, prod.bundle.input_size)
            scored = await self.batcher.score(tensor, Role.PRODUCTION)
            prediction = scored.prediction
            scores.append(float(prediction.anomaly_score))
            p = getattr(prediction, "defect_probability", None)
            if p is not None:
                defect_probabilities.append(float(p))
            t = getattr(prediction, "defect_threshold", None)
            if reported is None and t is not None:
                reported = float(t)
        version = prod.version
        key = station_key(station)
        table = self.pipeline.station_thresholds.setdefault(version, {})
        before = table.get(key, StationCalibration())
        new_scale = float(np.clip(max(scores) * self.config.golden_margin, 0.25, 4.0))
        moved = await asyncio.to_thread(
            prod.bundle.recalibrated_defect_threshold, defect_probabilities, model_threshold=reported
        )
        # the threshold the bundle moved (the export's own, else what the backend reported)
        model_defect = prod.bundle.defect_threshold if prod.bundle.defect_threshold is not None else reported
        after = StationCalibration(new_scale, moved.threshold if moved is not None else None)
        table[key] = after
        # Another replica may have recalibrated other stations since: keep theirs, add ours.
        stored = await self.calibrations.load(version)
        await self.calibrations.save(version, {**table, **stored, key: after})
        event = events_pb2.RecalibrationPerformed(
            meta=new_meta(PRODUCER),
            model_version=version,
            golden_frames=len(scores),
            old_threshold=before.anomaly_scale,
            new_threshold=new_scale,
            defect_recalibrated=moved is not None,
            old_defect_threshold=_or(before.defect_threshold, model_defect),
            new_defect_threshold=_or(after.defect_threshold, model_defect),
        )
        if moved is not None:
            event.defect_shift_logit = moved.shift_logit
            event.defect_observed_shift_logit = moved.observed_shift_logit
            event.defect_noise_logit = moved.noise_logit
            event.defect_quantile = moved.quantile
        event.station.CopyFrom(station)
        log.info(
            "station %s recalibrated on %d golden frames: anomaly scale %.3f -> %.3f, defect threshold %s",
            key,
            len(scores),
            before.anomaly_scale,
            new_scale,
            f"{event.old_defect_threshold:.4f} -> {event.new_defect_threshold:.4f} "
            f"(shift {moved.shift_logit:+.2f} logit of {moved.observed_shift_logit:+.2f} observed, "
            f"noise {moved.noise_logit:.2f})"
            if moved is not None
            else "kept at the model's own (the artifact has no reference scores)",
        )
        if self.publisher is not None:
            subject = subjects.station_subject(
                station.plant or self.settings.plant,
                station.line,
                station.station,
                subjects.MODEL_RECALIBRATED,
            )
            await self.publisher.publish(subject, event)
        return event

    def label_submitted(self, event: events_pb2.LabelSubmitted) -> None:
        """A confirmed label: when it is of a frame this replica audit-sampled, whether the person
        overruled the automatic call counts towards the station's audit disagreement (drift)."""
        self.pipeline.label_confirmed(event)

    def taxonomy_published(self, event: events_pb2.TaxonomyPublished) -> None:
        """The next frame of that product is decided under this version (no retraining, no restart)."""
        self.pipeline.taxonomies.published(event)

    def recalibration_performed(self, event: events_pb2.RecalibrationPerformed) -> None:
        """Apply a station recalibration made by any replica (this one included; idempotent): both
        the anomaly scale and the defect threshold, which an event of an older producer (or of an
        artifact without reference scores) leaves at the model's own."""
        if not event.model_version or not event.station.station or not event.station.line:
            return
        station = event.station
        if not station.plant:
            station = common_pb2.StationRef(
                plant=self.settings.plant, line=station.line, station=station.station
            )
        key = station_key(station)
        defect = (
            float(event.new_defect_threshold)
            if event.defect_recalibrated and 0.0 < event.new_defect_threshold < 1.0
            else None
        )
        calibration = StationCalibration(float(event.new_threshold), defect)
        table = self.pipeline.station_thresholds.setdefault(event.model_version, {})
        if table.get(key) != calibration:
            log.info(
                "station %s of model %s: anomaly scale %.3f, defect threshold %s (RecalibrationPerformed)",
                key,
                event.model_version,
                calibration.anomaly_scale,
                "model's own" if defect is None else f"{defect:.4f}",
            )
        table[key] = calibration

    # --- alarms -------------------------------------------------------------------------------
    def _on_model_change(self, role: Role, serving: ServingModel | None) -> None:
        self.metrics.set_model(
            str(role), serving.version if serving else "", serving.session.backend_name if serving else ""
        )

    def _alarm(self, kind: str, message: str) -> None:
        log.error("inference alarm %s: %s", kind, message)
        if self.publisher is None:
            return
        s = self.settings
        alarm = events_pb2.CaptureAlarm(meta=new_meta(PRODUCER), kind=kind, message=message)
        alarm.station.CopyFrom(common_pb2.StationRef(plant=s.plant, line=s.line, station=s.station))
        subject = subjects.station_subject(s.plant, s.line, s.station, subjects.CAPTURE_ALARM)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called from the model thread
            return
        task: asyncio.Task[object] = loop.create_task(self._publish_quietly(subject, alarm))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _publish_quietly(self, subject: str, message: Message) -> object:
        assert self.publisher is not None
        try:
            return await self.publisher.publish(subject, message)
        except Exception as exc:
            log.warning("could not publish alarm: %s", exc)
            return None

    def _drift_alerts(self, alerts: list[events_pb2.DriftAlert]) -> None:
        """Publish what a station's drift window raised (best effort: the record stays in
        GetModelInfo either way, and the next drifted window raises it again after a recovery)."""
        if self.publisher is None:
            return
        subject = subjects.plant_subject(self.settings.plant, subjects.DRIFT_ALERT)
        for alert in alerts:
            self._spawn(self._publish_quietly(subject, alert), "inference-drift-alert")

    def _backlog(self, age_s: float, depth: int) -> None:
        self._alarm(
            "INFERENCE_BACKLOG", f"oldest frame waits {age_s:.1f}s for the model; {depth} frames queued"
        )

    def _backend_down(self, message: str) -> None:
        self.metrics.backend_unavailable.add(1)
        policy = self.config.triton_down_policy
        text = f"Triton unreachable ({message}); policy {policy}"
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._alarm, "INFERENCE_BACKEND_DOWN", text)
        else:
            self._alarm("INFERENCE_BACKEND_DOWN", text)

    _loop: asyncio.AbstractEventLoop | None = None


def _or(value: float | None, default: float | None) -> float:
    """A threshold for the event: ``value``, else ``default``, else 0 (unknown)."""
    if value is not None:
        return float(value)
    return float(default) if default is not None else 0.0
