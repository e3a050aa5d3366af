"""Training jobs: queued in PostgreSQL, run by worker processes (runner.py starts them,
worker.py is what they run), registered as candidates and announced here; the release gate
makes a model eligible, and only a QA owner's sign-off (promotion.py) releases it.
`train_once` runs the same fit in the caller's process (`linesight train`).

Write path of a finished job: the artifact is uploaded to `models/<product>/<version>.tar.gz`
first (a retry overwrites identical bytes), then one transaction registers the model, marks
the job succeeded and publishes ModelPublished before committing. If the upload, database or bus
fails, the job is marked failed with the error (and TrainingProgress says so); the model is not
registered, so nothing half-published is ever served. A job cancelled meanwhile registers
nothing. TrainingProgress events are best effort.
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import os
import socket
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from linesight.common import subjects
from linesight.common.enums import enum_word
from linesight.common.events import new_meta
from linesight.common.pb import common_pb2, events_pb2
from linesight.common.ports import ConnectionSource, EventPublisher
from linesight.training.app.trainer import ReleaseGate, TrainedModel, TrainingOptions, train
from linesight.training.store import datasets as dataset_repo
from linesight.training.store import jobs as job_repo
from linesight.training.store import registry, taxonomies
from linesight.training.store.registry import JobRecord, ModelRecord, ModelRow
from linesight.vision.taxonomy import Taxonomy, TaxonomyError

log = logging.getLogger(__name__)

PRODUCER = "training"
BUCKET_MODELS = "models"
MODES = ("full", "incremental")
IN_PROCESS = "in_process"  # options key of a job run by `linesight train`, not by a worker
HEARTBEAT_S = 2.0
Progress = Callable[[str, float, str], None]  # (stage, fraction 0..1, message)


def options_to_json(options: TrainingOptions) -> dict[str, Any]:
    """TrainingOptions as the job row keeps them (what the worker fits with)."""
    out = asdict(options)
    out["input_size"] = list(options.input_size) if options.input_size else None
    return out


def options_from_json(values: dict[str, Any], product: str) -> TrainingOptions:
    known = {k: v for k, v in (values or {}).items() if k in TrainingOptions.__dataclass_fields__}
    if known.get("input_size"):
        known["input_size"] = tuple(known["input_size"])
    return TrainingOptions(**{**known, "product": product})


class ArtifactStore(Protocol):
    def aput_bytes(
        self, bucket: str, key: str, data: bytes, content_type: str = ..., metadata: Any = ...
    ) -> Awaitable[common_pb2.ObjectRef]: ...

    def aget_bytes(self, bucket: str, key: str) -> Awaitable[bytes]: ...


@dataclass(frozen=True)
class TrainingOutcome:
    """One finished training run: the registered model and the release gate's decision."""

    job_id: str
    product: str
    model_version: str
    stage: str  # candidate (held back by the gate: needs an approver's PromoteModel) or production
    gate_failures: list[str]
    metrics: dict[str, float]
    dataset_version: str


class NotFoundError(KeyError):
    """Base of the "no such thing" errors: str() reads as a sentence ("no model 'x'"), not as
    KeyError's repr of the key, because it is what a caller is told."""

    noun = "entity"

    def __str__(self) -> str:
        return f"no {self.noun} {self.args[0]!r}" if self.args else f"no such {self.noun}"


class UnknownJobError(NotFoundError):
    """No training job with this id."""

    noun = "training job"


class UnknownDatasetVersionError(NotFoundError):
    """No recorded dataset version with this id."""

    noun = "dataset version"


class JobRequestError(ValueError):
    """A job request that cannot be queued as given."""


class JobStateError(RuntimeError):
    """The job left the state this step needs (cancelled meanwhile)."""


class UnknownModelError(NotFoundError):
    """No registered model with this version (for the product asked about)."""

    noun = "model"


class PromotionError(ValueError):
    """A promotion request that cannot be accepted as given (no approver, no reason, ...)."""


class TrainingApp:
    """Training use cases: jobs, the model registry, confirmed labels."""

    def __init__(
        self,
        db: ConnectionSource,
        bus: EventPublisher,
        store: ArtifactStore,
        *,
        plant: str,
        gate: ReleaseGate | None = None,
        defaults: TrainingOptions | None = None,
        datasets_root: Path | None = None,
    ) -> None:
        self.db = db
        self.bus = bus
        self.store = store
        self.plant = plant
        self.gate = gate or ReleaseGate()
        self.defaults = defaults or TrainingOptions()
        self.datasets_root = datasets_root
        self._lock = asyncio.Lock()  # one in-process training at a time: it uses every core
        self._tasks: set[asyncio.Task[Any]] = set()
        # Set by the job runner: a new job wakes it; a cancelled one's worker is stopped.
        self.on_queued: Callable[[], None] | None = None
        self.on_cancelled: Callable[[str], None] | None = None
        self.runner: Any = None  # the service's JobRunner (tests and the bench reach it here)

    # ---- jobs ----------------------------------------------------------------------------

    async def start(
        self,
        product: str,
        dataset: str = "",
        *,
        mode: str = "full",
        dataset_version: str = "",
        base_model: str = "",
        requested_by: str = "",
        options: TrainingOptions | None = None,
    ) -> str:
        """Queue a job for a worker process; returns its id at once.

        The data: a recorded dataset version (its train and val rows; never its protected
        holdout), a folder under the datasets root, or '' = the confirmed labels (incremental:
        those received since the base model). A version with an unwaived blocking hygiene finding
        trains, but its model can only be a candidate (the reason is kept on the job).

        Raises JobRequestError (a bad mode or a missing base model for incremental),
        UnknownDatasetVersionError, UnknownModelError (no such base model).
        """
        product = product or self.defaults.product
        if mode not in MODES:
            raise JobRequestError(f"mode must be one of {list(MODES)}, got {mode!r}")
        eligible, why = True, ""
        async with self.db.connection() as conn:
            if dataset_version:
                rec = await dataset_repo.get_version(conn, dataset_version)
                if rec is None:
                    raise UnknownDatasetVersionError(dataset_version)
                if rec.product != product:
                    raise JobRequestError(
                        f"dataset version {dataset_version} is for product {rec.product!r}, not {product!r}"
                    )
                why = await _ineligibility(conn, rec)
                eligible = not why
            if mode == "incremental":
                base_model = base_model or await job_repo.newest_model(conn, product)
                if not base_model:
                    raise JobRequestError(
                        f"incremental training of {product!r} needs a base model; none exists"
                    )
                base = await registry.get_model(conn, base_model)
                if base is None or base.product != product:
                    raise UnknownModelError(base_model)
        job_id = uuid.uuid4().hex[:12]
        spec = job_repo.JobSpec(
            job_id=job_id, product=product, dataset=dataset, mode=mode, dataset_version=dataset_version,
            base_model=base_model,
            options=options_to_json(options or replace(self.defaults, product=product)),
            requested_by=requested_by, production_eligible=eligible, ineligible_reason=why,
        )  # fmt: skip
        async with self.db.connection() as conn, conn.transaction():
            await job_repo.create(conn, spec)
        log.info("training job %s queued: %s %s for %s by %s", job_id, mode,
                 dataset_version or dataset or "confirmed labels", product, requested_by or "-")  # fmt: skip
        if self.on_queued is not None:
            self.on_queued()
        return job_id

    async def cancel(self, job_id: str, by: str) -> job_repo.JobRun:
        """Cancel a queued or running job (its worker is stopped); a finished job is returned
        unchanged (idempotent). UnknownJobError for an unknown id."""
        async with self.db.connection() as conn, conn.transaction():
            job = await job_repo.get(conn, job_id)
            if job is None:
                raise UnknownJobError(job_id)
            changed = await job_repo.finish(conn, job_id, "cancelled", error=f"cancelled by {by}",
                                            cancelled_by=by)  # fmt: skip
        if changed:
            log.info("training job %s cancelled by %s", job_id, by)
            if self.on_cancelled is not None:
                self.on_cancelled(job_id)
            await self._progress(job_id, "cancelled", job.percent / 100, "", finished=True,
                                 error=f"cancelled by {by}")  # fmt: skip
        return await self.get_run(job_id)

    async def get_run(self, job_id: str) -> job_repo.JobRun:
        async with self.db.connection() as conn:
            job = await job_repo.get(conn, job_id)
        if job is None:
            raise UnknownJobError(job_id)
        return job

    async def register_result(self, job: job_repo.JobRun) -> str:
        """Register the model a worker uploaded for `job` (its row's result); returns the version."""
        r = job.result or {}
        a = r["artifact"]
        ref = common_pb2.ObjectRef(
            bucket=a["bucket"], key=a["key"], sha256=a["sha256"], content_type="application/gzip",
            size_bytes=int(a["size_bytes"]),
        )  # fmt: skip
        await self._register(
            job.job_id, job.product, model_version=r["model_version"],
            metrics={k: float(v) for k, v in r["metrics"].items()},
            taxonomy_version=r.get("taxonomy_version", ""), dataset_version=r.get("dataset_version", ""),
            ref=ref, held_back=await self._still_ineligible(job),
        )  # fmt: skip
        await self._progress(job.job_id, "done", 1.0, f"model {r['model_version']}", finished=True)
        return str(r["model_version"])

    async def _still_ineligible(self, job: job_repo.JobRun) -> str:
        """Why the job's model cannot be production ('' = it can): judged again at registration,
        so a waiver given while the job ran counts."""
        if job.production_eligible or not job.dataset_version:
            return ""
        async with self.db.connection() as conn:
            rec = await dataset_repo.get_version(conn, job.dataset_version)
            return job.ineligible_reason if rec is None else await _ineligibility(conn, rec)

    def resolve_dataset(self, dataset: str) -> Path:
        path = Path(dataset)
        if not path.is_absolute() and self.datasets_root is not None:
            path = self.datasets_root / path
        if not (path / "manifest.csv").is_file():
            raise FileNotFoundError(f"dataset {dataset!r}: no manifest.csv in {path}")
        return path

    async def train_once(
        self,
        dataset_dir: Path | None,
        *,
        product: str = "",
        options: TrainingOptions | None = None,
        progress: Progress | None = None,
    ) -> TrainingOutcome:
        """Train now, in the caller's task, on a manifest dataset (None: freeze the confirmed labels
        into one, like StartTraining with no dataset); returns the registered model's outcome.

        What `linesight train` runs (`progress`, called from the training thread, drives its
        progress bar). Failures raise; once the job row exists it records them.
        """
        opts = options or self.defaults
        product = product or opts.product
        job_id = "cli-" + uuid.uuid4().hex[:8]
        async with self.db.connection() as conn, conn.transaction():
            # Running from the start (a service's runner never claims it) with a heartbeat of this
            # process, so a service restart tells a live run from one whose process died.
            await job_repo.create(conn, job_repo.JobSpec(
                job_id=job_id, product=product, dataset=str(dataset_dir or ""),
                requested_by="linesight train",
                options={**options_to_json(replace(opts, product=product)), IN_PROCESS: True},
            ))  # fmt: skip
            await job_repo.start_in_process(conn, job_id, f"{socket.gethostname()}:{os.getpid()}")
        if dataset_dir is not None:
            version = await self.run_job(
                job_id, Path(dataset_dir), product=product, options=opts, watch=progress
            )
        else:
            with tempfile.TemporaryDirectory(prefix="ls-labels-") as tmp:
                try:
                    root = await self.freeze_labels(Path(tmp))
                except Exception as exc:
                    await self.fail_job(job_id, exc)
                    raise
                version = await self.run_job(job_id, root, product=product, options=opts, watch=progress)
        model = await self.get_model(version)
        return TrainingOutcome(
            job_id=job_id, product=product, model_version=version, stage=model.stage,
            gate_failures=registry.gate_failures(model),
            metrics={k: float(v) for k, v in (model.metrics or {}).items()},
            dataset_version=model.dataset_version,
        )  # fmt: skip

    async def run_job(
        self,
        job_id: str,
        dataset_dir: Path,
        *,
        product: str = "",
        options: TrainingOptions | None = None,
        watch: Progress | None = None,
    ) -> str:
        """Train, upload, register, announce; returns the model version. Failures mark the job failed."""
        opts = replace(options or self.defaults, product=product or (options or self.defaults).product)
        async with self._lock:
            await self._set_job(job_id, "running")
            loop = asyncio.get_running_loop()
            pending: set[asyncio.Future[Any]] = set()

            latest = [("starting", 0.0, "")]
            beat = asyncio.create_task(self._heartbeat(job_id, latest), name=f"heartbeat-{job_id}")

            def progress(stage: str, fraction: float, message: str) -> None:
                # Called from the training thread: hop to the loop, never block training on the bus.
                latest[0] = (stage, fraction, message)
                if watch is not None:
                    watch(stage, fraction, message)

                def publish() -> None:
                    pending.add(asyncio.ensure_future(self._progress(job_id, stage, fraction, message)))

                loop.call_soon_threadsafe(publish)

            try:
                taxonomy = await self.taxonomy_for(opts.product)
                with tempfile.TemporaryDirectory(prefix="ls-train-") as work:
                    trained = await asyncio.to_thread(
                        train, dataset_dir, opts, Path(work), progress, taxonomy=taxonomy
                    )
                version = await self._publish_model(job_id, opts.product, trained)
            except Exception as exc:
                await self.fail_job(job_id, exc)
                raise
            finally:
                beat.cancel()
                if pending:
                    await asyncio.gather(*pending, return_exceptions=True)
        await self._progress(job_id, "done", 1.0, f"model {version}", finished=True)
        return version

    async def _heartbeat(self, job_id: str, latest: list[tuple[str, float, str]]) -> None:
        """An in-process run's progress and heartbeat on its job row (what a worker writes)."""
        while True:
            stage, fraction, message = latest[0]
            try:
                async with self.db.connection() as conn, conn.transaction():
                    await job_repo.progress(conn, job_id, stage, round(100 * fraction, 1), None, message)
            except Exception as exc:
                log.warning("heartbeat of job %s not recorded: %s", job_id, exc)
            await asyncio.sleep(HEARTBEAT_S)

    async def _publish_model(self, job_id: str, product: str, trained: TrainedModel) -> str:
        key = f"{product}/{trained.model_version}.tar.gz"
        ref = await self.store.aput_bytes(BUCKET_MODELS, key, trained.artifact, "application/gzip")
        await self._register(
            job_id, product, model_version=trained.model_version, metrics=trained.metrics,
            taxonomy_version=trained.taxonomy_version, dataset_version=trained.dataset_version, ref=ref,
        )  # fmt: skip
        return trained.model_version

    async def _register(
        self,
        job_id: str,
        product: str,
        *,
        model_version: str,
        metrics: dict[str, float],
        taxonomy_version: str,
        dataset_version: str,
        ref: common_pb2.ObjectRef,
        held_back: str = "",
    ) -> None:
        """Register an uploaded model, mark its job succeeded and publish ModelPublished, in one
        transaction. `held_back` (a reason) keeps it a candidate whatever the gate says."""
        stage, failures = self.gate.evaluate(metrics)
        if held_back:
            stage, failures = "candidate", [*failures, held_back]
        row = ModelRow(
            model_version=model_version, product=product, stage=stage, metrics=metrics,
            taxonomy_version=taxonomy_version, dataset_version=dataset_version,
            artifact_bucket=ref.bucket, artifact_key=ref.key, artifact_sha256=ref.sha256,
            artifact_bytes=ref.size_bytes,
            gate={"min_defect_recall": self.gate.min_defect_recall,
                  "max_false_reject_rate": self.gate.max_false_reject_rate, "failures": failures},
        )  # fmt: skip
        meta = new_meta(PRODUCER, correlation_id=job_id)
        meta.event_id = f"model:{model_version}"
        event = events_pb2.ModelPublished(
            meta=meta, model_version=model_version, product=product, artifact=ref,
            taxonomy_version=taxonomy_version, dataset_version=dataset_version,
            metrics=metrics, stage=stage,
        )  # fmt: skip
        async with self.db.connection() as conn, conn.transaction():
            await registry.register_model(conn, row)
            if not await job_repo.finish(conn, job_id, "succeeded", model_version=model_version,
                                         metrics=metrics):  # fmt: skip
                raise JobStateError(f"job {job_id} was cancelled or finished meanwhile: model not registered")
            await self.bus.publish(subjects.plant_subject(self.plant, subjects.MODEL_PUBLISHED), event)
        log.info("model %s for %s registered as %s %s", model_version, product, stage, failures or "")

    async def _set_job(self, job_id: str, state: str) -> None:
        async with self.db.connection() as conn, conn.transaction():
            await registry.update_job(conn, job_id, state)

    async def fail_job(self, job_id: str, exc: BaseException) -> None:
        """Record a job's failure (once) and announce it on TrainingProgress."""
        error = f"{type(exc).__name__}: {exc}"[:2000]
        try:
            async with self.db.connection() as conn, conn.transaction():
                await job_repo.finish(conn, job_id, "failed", error=error)  # not a cancelled one
        except Exception as db_exc:
            log.error("cannot record failure of job %s (%s): %s", job_id, error, db_exc)
        await self._progress(job_id, "failed", 1.0, "", finished=True, error=error)

    async def announce_failure(self, job_id: str, error: str) -> None:
        """TrainingProgress for a job a worker recorded as failed."""
        await self._progress(job_id, "failed", 1.0, "", finished=True, error=error)

    async def publish_progress(
        self, job_id: str, stage: str, fraction: float, message: str, eta_seconds: float | None
    ) -> None:
        """A running job's progress as TrainingProgress (the runner relays its worker's row)."""
        await self._progress(job_id, stage, fraction, message, eta_seconds=eta_seconds)

    async def _progress(
        self,
        job_id: str,
        stage: str,
        fraction: float,
        message: str,
        *,
        finished: bool = False,
        error: str = "",
        eta_seconds: float | None = None,
    ) -> None:
        event = events_pb2.TrainingProgress(
            meta=new_meta(PRODUCER, correlation_id=job_id), job_id=job_id, stage=stage,
            fraction=max(0.0, min(1.0, fraction)), message=message, finished=finished, error=error,
            eta_seconds=-1.0 if eta_seconds is None else float(eta_seconds),
        )  # fmt: skip
        try:
            await self.bus.publish(subjects.plant_subject(self.plant, subjects.TRAINING_PROGRESS), event)
        except Exception as exc:
            log.warning("training progress for %s not published: %s", job_id, exc)

    async def get_job(self, job_id: str) -> JobRecord:
        async with self.db.connection() as conn:
            job = await registry.get_job(conn, job_id)
        if job is None:
            raise UnknownJobError(job_id)
        return job

    async def list_models(self, product: str = "") -> list[ModelRecord]:
        async with self.db.connection() as conn:
            return await registry.list_models(conn, product)

    async def get_model(self, model_version: str) -> ModelRecord:
        async with self.db.connection() as conn:
            model = await registry.get_model(conn, model_version)
        if model is None:
            raise UnknownModelError(model_version)
        return model

    async def wait_idle(self) -> None:
        """Wait for running jobs (shutdown, tests)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # ---- confirmed labels -> dataset -----------------------------------------------------

    async def record_taxonomy(self, event: events_pb2.TaxonomyPublished, stream_seq: int) -> bool:
        """Keep the product's newest published taxonomy (what the next training fits with).

        Raises TaxonomyError for a document training could not fit with (nothing is stored);
        returns False when the event carries no document or a newer version is already kept.
        """
        if not event.document_yaml:
            log.warning(
                "TaxonomyPublished %s v%s carries no document; not kept", event.product, event.version
            )
            return False
        tax = Taxonomy.from_yaml(event.document_yaml, source=f"{event.product} v{event.version}")
        if tax.product != event.product:
            raise TaxonomyError(
                f"TaxonomyPublished for {event.product!r} carries a document for {tax.product!r}"
            )
        async with self.db.connection() as conn, conn.transaction():
            kept = await taxonomies.keep_newest(
                conn, tax.product, tax.version, event.document_yaml, stream_seq
            )
        if kept:
            log.info("training for %s now fits with taxonomy v%s", tax.product, tax.version)
        return kept

    async def taxonomy_for(self, product: str) -> Taxonomy | None:
        """The product's newest published taxonomy; None before the first (the engine's generic one)."""
        async with self.db.connection() as conn:
            found = await taxonomies.newest(conn, product)
        return None if found is None else Taxonomy.from_yaml(found[1], source=f"{product} v{found[0]}")

    async def record_label(self, label: events_pb2.LabelSubmitted) -> None:
        """Keep a confirmed label with its part, severity and geometry (what training learns from)."""
        boxes = [
            [label.label, r.x_min, r.y_min, r.x_max, r.y_max] for r in label.regions if r.x_max > r.x_min
        ]
        polygons = [{"class": label.label, "x": list(p.x), "y": list(p.y), "named_region": p.named_region}
                    for p in label.polygons]  # fmt: skip
        async with self.db.connection() as conn, conn.transaction():
            await registry.upsert_label(conn, {
                "frame_id": label.frame_id, "label": label.label, "image_bucket": label.image.bucket,
                "image_key": label.image.key, "station": label.station.station,
                "taxonomy_version": label.taxonomy_version, "labeler": label.labeler,
                "reviewer": label.reviewer, "product": label.product, "part_id": label.part_id,
                "severity": enum_word(common_pb2.Severity, label.severity), "source": label.source,
                "boxes": boxes, "polygons": polygons, "round": label.round or 1,
            })  # fmt: skip

    async def freeze_labels(self, out_dir: Path) -> Path:
        """Write the confirmed labels as a manifest dataset (images fetched from S3) into `out_dir`."""
        async with self.db.connection() as conn:
            rows = await registry.confirmed_labels(conn)
        usable = [r for r in rows if r.image_bucket and r.image_key]
        if not usable:
            raise ValueError("no confirmed labels with images yet; label frames in the labeling UI first")
        images = out_dir / "images"
        await asyncio.to_thread(images.mkdir, parents=True, exist_ok=True)
        lines = []
        for r in usable:
            data = await self.store.aget_bytes(r.image_bucket, r.image_key)
            name = f"{r.frame_id}{Path(r.image_key).suffix or '.png'}"
            await asyncio.to_thread((images / name).write_bytes, data)
            # A polygon enters the manifest as its bounding box (the layout's geometry column)
            # and, rasterised with the boxes, as a mask: the segmentation head learns its pixels.
            polys = [p for p in r.polygons if p.get("x") and p.get("y")]
            boxes = [*r.boxes, *(_polygon_box(p) for p in polys)]
            mask = ""
            if polys:
                pixels = await asyncio.to_thread(_geometry_mask, data, r.boxes, polys)
                if pixels is not None:
                    mask = f"masks/{r.frame_id}.png"
                    await asyncio.to_thread(_write_mask, out_dir / mask, pixels)
            lines.append({"image": f"images/{name}", "label": r.label, "part_id": r.part_id,
                          "station": r.station, "boxes": json.dumps(boxes) if boxes else "",
                          "mask": mask})  # fmt: skip

        def write_manifest() -> None:
            with (out_dir / "manifest.csv").open("w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=["image", "label", "part_id", "station", "boxes", "mask"])
                w.writeheader()
                w.writerows(lines)

        await asyncio.to_thread(write_manifest)
        return out_dir


async def _ineligibility(conn: Any, rec: dataset_repo.DatasetRecord) -> str:
    """Why a model trained on this dataset version cannot go to production ('' = it can)."""
    if not rec.blocking:
        return ""
    waived = {w.kind for w in await dataset_repo.waivers(conn, rec.version)}
    kinds = sorted(
        {f["kind"] for f in rec.report.get("findings", []) if f.get("severity") == "blocking"} - waived
    )
    return (f"dataset {rec.version} has unwaived blocking hygiene findings {kinds}: "
            "its models stay candidates until a QA owner waives them")  # fmt: skip


def _geometry_mask(data: bytes, boxes: list[Any], polygons: list[dict[str, Any]]) -> Any:
    """A label's defect pixels at its image's size (boxes filled, polygons rasterised; uint8
    0/255); None when the image does not decode (the label keeps its boxes)."""
    import cv2
    import numpy as np

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        return None
    m = np.zeros(img.shape[:2], np.uint8)
    for b in boxes:
        x0, y0, x1, y1 = (int(v) for v in b[1:5])
        m[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)] = 255
    for p in polygons:
        pts = np.round(np.stack([p["x"], p["y"]], axis=1)).astype(np.int32)
        cv2.fillPoly(m, [pts], (255,))
    return m


def _write_mask(path: Path, mask: Any) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), mask):
        raise OSError(f"could not write mask {path}")


def _polygon_box(polygon: dict[str, Any]) -> list[Any]:
    xs, ys = polygon["x"], polygon["y"]
    return [polygon.get("class", ""), int(min(xs)), int(min(ys)), int(max(xs)) + 1, int(max(ys)) + 1]
