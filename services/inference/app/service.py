"""InferenceApp: the inference service as an object the demo, tests and `__main__` can start.

It owns the model manager, the micro-batcher and the inspection pipeline, applies ModelPublished
events (hot swap, shadow candidates), recalibrates stations from golden samples, and raises alarms
when the queue backs up or Triton goes away. Transport (bus consumers, gRPC) lives in `api/`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from pathlib import Path
from typing import Protocol

import numpy as np
from google.protobuf.message import Message

from linesight.common import subjects
from linesight.common.events import new_meta
from linesight.common.pb import common_pb2, events_pb2, inference_pb2
from linesight.common.settings import Settings
from linesight.common.storage import ObjectStore
from linesight.inference.app import preprocess
from linesight.inference.app.backends.base import Backend
from linesight.inference.app.backends.in_process import InProcessBackend
from linesight.inference.app.batcher import MicroBatcher
from linesight.inference.app.bundle import ModelBundle, ModelLoadError, load_bundle
from linesight.inference.app.config import BackendKind, InferenceConfig
from linesight.inference.app.inspection import PRODUCER, InspectionPipeline, Outcome, station_key
from linesight.inference.app.metrics import InferenceMetrics
from linesight.inference.app.models import ModelManager, Role, ServingModel, session_loader
from linesight.inference.store.objects import (
    ArtifactError,
    CalibrationStore,
    FrameImages,
    HeatmapStore,
    ModelArtifacts,
)
from linesight.vision.imageio import ImageError

log = logging.getLogger(__name__)

STAGE_PRODUCTION = "production"
STAGE_CANDIDATE = "candidate"


class Publisher(Protocol):
    """What the app needs from the bus (linesight.common.bus.Bus fits)."""

    def publish(self, subject: str, message: Message) -> Awaitable[object]: ...


class InferenceApp:
    """Start with `await app.start()`, stop with `await app.stop()`."""

    def __init__(
        self,
        settings: Settings,
        store: ObjectStore,
        publisher: Publisher | None = None,
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
        self._wanted: dict[Role, events_pb2.ModelPublished] = {}
        self._wanted_changed = asyncio.Event()
        self._applier: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[object]] = set()
        self.installed_events = 0

    def _backends(self) -> tuple[Backend, Backend | None]:
        cfg = self.config
        in_process = InProcessBackend(cfg.model_loader)
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
            max_queue_delay_us=int(cfg.max_wait_ms * 1000),
            timeout_s=cfg.triton_timeout_s,
            http_url=cfg.triton_http_url or None,
        )
        return triton, in_process

    # --- life cycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.batcher.start()
        self._applier = asyncio.create_task(self._apply_wanted(), name="inference-model-applier")
        if self.config.model_dir is not None:
            try:
                await self.install_directory(self.config.model_dir)
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
        await asyncio.to_thread(self.models.close)
        await asyncio.to_thread(self.backend.close)

    # --- models -------------------------------------------------------------------------------
    async def install_directory(
        self, directory: Path, *, version: str | None = None, role: Role = Role.PRODUCTION
    ) -> ServingModel:
        """Load an export directory and make it serve `role` (raises ModelLoadError)."""
        bundle = await asyncio.to_thread(
            load_bundle, Path(directory), version=version, product=self.settings.product
        )
        return await self._install(bundle, role)

    async def _install(self, bundle: ModelBundle, role: Role) -> ServingModel:
        try:
            serving = await self.models.install(bundle, role)
        except Exception as exc:
            self.models.last_error = f"model {bundle.version} failed to load: {exc}"
            log.error("%s", self.models.last_error)
            raise exc if isinstance(exc, ModelLoadError) else ModelLoadError(str(exc)) from exc
        self.pipeline.station_thresholds[bundle.version] = await self.calibrations.load(bundle.version)
        return serving

    async def install_published(self, event: events_pb2.ModelPublished) -> ServingModel | None:
        """Download the artifact of a ModelPublished and install it (production or shadow candidate)."""
        if event.product and event.product != self.settings.product:
            log.info("ignoring model %s for product %s", event.model_version, event.product)
            return None
        role = Role.CANDIDATE if event.stage == STAGE_CANDIDATE else Role.PRODUCTION
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
        except (ArtifactError, ModelLoadError, OSError) as exc:
            self.models.last_error = f"model {event.model_version} failed to load: {exc}"
            log.error("%s", self.models.last_error)
            raise ModelLoadError(self.models.last_error) from exc
        return await self._install(bundle, role)

    def model_published(self, event: events_pb2.ModelPublished) -> None:
        """Note the newest wanted version per role; the applier installs only the latest one."""
        if event.product and event.product != self.settings.product:
            return
        role = Role.CANDIDATE if event.stage == STAGE_CANDIDATE else Role.PRODUCTION
        self._wanted[role] = event
        self._wanted_changed.set()

    async def _apply_wanted(self) -> None:
        while True:
            await self._wanted_changed.wait()
            self._wanted_changed.clear()
            for role in (Role.PRODUCTION, Role.CANDIDATE):
                event = self._wanted.pop(role, None)
                if event is None:
                    continue
                try:
                    await self.install_published(event)
                except ModelLoadError:
                    pass  # recorded in models.last_error; frames get error results if nothing serves
                except Exception:
                    log.exception("installing model %s failed", event.model_version)
                self.installed_events += 1

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

    def model_info(self) -> inference_pb2.ModelInfo:
        prod, cand = self.models.production, self.models.candidate
        info = inference_pb2.ModelInfo(
            backend=prod.session.backend_name if prod else str(self.config.backend),
            model_version=prod.version if prod else "",
            candidate_version=cand.version if cand else "",
        )
        if prod is not None:
            info.taxonomy_version = prod.bundle.taxonomy_version
            info.classes.extend(prod.bundle.classes)
            for k, v in prod.bundle.thresholds.items():
                info.thresholds[k] = v
            for station, t in self.pipeline.station_thresholds.get(prod.version, {}).items():
                info.thresholds[f"station:{station}"] = t
        return info

    async def recalibrate(
        self, station: common_pb2.StationRef, golden_frames: list[common_pb2.ObjectRef]
    ) -> events_pb2.RecalibrationPerformed:
        """Golden-sample recalibration: the station's anomaly threshold from known-good frames."""
        prod = self.models.production
        if prod is None:
            raise ModelLoadError(self.models.last_error or "no production model loaded")
        if not golden_frames:
            raise ValueError("recalibration needs at least one golden frame")
        subjects.validate_token("line", station.line)
        subjects.validate_token("station", station.station)
        scores: list[float] = []
        for ref in golden_frames:
            data = await self.pipeline.frames.fetch(ref)
            try:
                image = await asyncio.to_thread(preprocess.decode, data, source=f"golden {ref.key}")
            except ImageError as exc:
                raise ValueError(f"golden frame s3://{ref.bucket}/{ref.key}: {exc}") from exc
            tensor = preprocess.to_model_input(image, prod.bundle.input_size)
            scored = await self.batcher.score(tensor, Role.PRODUCTION)
            scores.append(float(scored.prediction.anomaly_score))
        version = prod.version
        key = station_key(station)
        table = self.pipeline.station_thresholds.setdefault(version, {})
        old = table.get(key, 1.0)
        new = float(np.clip(max(scores) * self.config.golden_margin, 0.25, 4.0))
        table[key] = new
        await self.calibrations.save(version, table)
        event = events_pb2.RecalibrationPerformed(
            meta=new_meta(PRODUCER),
            model_version=version,
            golden_frames=len(scores),
            old_threshold=old,
            new_threshold=new,
        )
        event.station.CopyFrom(station)
        log.info(
            "station %s recalibrated on %d golden frames: threshold %.3f -> %.3f", key, len(scores), old, new
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
