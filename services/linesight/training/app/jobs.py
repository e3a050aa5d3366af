"""Training jobs: run the trainer off the event loop, then package, register and announce.
Release decisions: the release gate's automatic one at registration, a named approver's
promotion (`TrainingApp.promote`) afterwards.

Write path of a finished job: the artifact is uploaded to `models/<product>/<version>.tar.gz`
first (a retry overwrites identical bytes), then one transaction registers the model, marks
the job succeeded and publishes ModelPublished before committing. If the upload, database or bus
fails, the job is marked failed with the error (and TrainingProgress says so); the model is not
registered, so nothing half-published is ever served. TrainingProgress events are best effort.
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import tempfile
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from linesight.common import subjects
from linesight.common.enums import enum_word
from linesight.common.events import new_meta
from linesight.common.pb import common_pb2, events_pb2
from linesight.common.ports import ConnectionSource, EventPublisher
from linesight.training.app.trainer import ReleaseGate, TrainedModel, TrainingOptions, train
from linesight.training.store import registry, taxonomies
from linesight.training.store.registry import JobRecord, ModelRecord, ModelRow
from linesight.vision.taxonomy import Taxonomy, TaxonomyError

log = logging.getLogger(__name__)

PRODUCER = "training"
BUCKET_MODELS = "models"


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


class UnknownJobError(KeyError):
    """No training job with this id."""


class UnknownModelError(KeyError):
    """No registered model with this version (for the product asked about)."""


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
        self._lock = asyncio.Lock()  # one training at a time: it uses every core
        self._tasks: set[asyncio.Task[Any]] = set()

    # ---- jobs ----------------------------------------------------------------------------

    async def fail_interrupted_jobs(self) -> int:
        """Jobs a previous process left queued or running can never finish: mark them failed."""
        async with self.db.connection() as conn, conn.transaction():
            return await registry.fail_interrupted_jobs(conn)

    async def start(self, product: str, dataset: str = "") -> str:
        """Queue a job (dataset directory, or '' = confirmed labels); returns its id at once."""
        job_id = uuid.uuid4().hex[:12]
        async with self.db.connection() as conn, conn.transaction():
            await registry.create_job(conn, job_id, product or self.defaults.product, dataset)
        task = asyncio.create_task(self._run_queued(job_id, product, dataset), name=f"training-{job_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job_id

    async def train_once(
        self, dataset_dir: Path | None, *, product: str = "", options: TrainingOptions | None = None
    ) -> TrainingOutcome:
        """Train now, in the caller's task, on a manifest dataset (None: freeze the confirmed labels
        into one, like StartTraining with no dataset); returns the registered model's outcome.

        What `linesight train` runs. Failures raise; once the job row exists it records them.
        """
        opts = options or self.defaults
        product = product or opts.product
        job_id = "cli-" + uuid.uuid4().hex[:8]
        async with self.db.connection() as conn, conn.transaction():
            await registry.create_job(conn, job_id, product, str(dataset_dir or ""))
        if dataset_dir is not None:
            version = await self.run_job(job_id, Path(dataset_dir), product=product, options=opts)
        else:
            with tempfile.TemporaryDirectory(prefix="ls-labels-") as tmp:
                try:
                    root = await self.freeze_labels(Path(tmp))
                except Exception as exc:
                    await self.fail_job(job_id, exc)
                    raise
                version = await self.run_job(job_id, root, product=product, options=opts)
        model = await self.get_model(version)
        return TrainingOutcome(
            job_id=job_id, product=product, model_version=version, stage=model.stage,
            gate_failures=registry.gate_failures(model),
            metrics={k: float(v) for k, v in (model.metrics or {}).items()},
            dataset_version=model.dataset_version,
        )  # fmt: skip

    async def _run_queued(self, job_id: str, product: str, dataset: str) -> None:
        try:
            if dataset:
                await self.run_job(job_id, self.resolve_dataset(dataset), product=product)
            else:
                with tempfile.TemporaryDirectory(prefix="ls-labels-") as tmp:
                    root = await self.freeze_labels(Path(tmp))
                    await self.run_job(job_id, root, product=product)
        except Exception as exc:  # already recorded on the job by run_job, or failed before it
            log.error("training job %s failed: %s", job_id, exc)
            await self.fail_job(job_id, exc)

    def resolve_dataset(self, dataset: str) -> Path:
        path = Path(dataset)
        if not path.is_absolute() and self.datasets_root is not None:
            path = self.datasets_root / path
        if not (path / "manifest.csv").is_file():
            raise FileNotFoundError(f"dataset {dataset!r}: no manifest.csv in {path}")
        return path

    async def run_job(
        self, job_id: str, dataset_dir: Path, *, product: str = "", options: TrainingOptions | None = None
    ) -> str:
        """Train, upload, register, announce; returns the model version. Failures mark the job failed."""
        opts = replace(options or self.defaults, product=product or (options or self.defaults).product)
        async with self._lock:
            await self._set_job(job_id, "running")
            loop = asyncio.get_running_loop()
            pending: set[asyncio.Future[Any]] = set()

            def progress(stage: str, fraction: float, message: str) -> None:
                # Called from the training thread: hop to the loop, never block training on the bus.
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
                if pending:
                    await asyncio.gather(*pending, return_exceptions=True)
        await self._progress(job_id, "done", 1.0, f"model {version}", finished=True)
        return version

    async def _publish_model(self, job_id: str, product: str, trained: TrainedModel) -> str:
        stage, failures = self.gate.evaluate(trained.metrics)
        key = f"{product}/{trained.model_version}.tar.gz"
        ref = await self.store.aput_bytes(BUCKET_MODELS, key, trained.artifact, "application/gzip")
        row = ModelRow(
            model_version=trained.model_version, product=product, stage=stage, metrics=trained.metrics,
            taxonomy_version=trained.taxonomy_version, dataset_version=trained.dataset_version,
            artifact_bucket=ref.bucket, artifact_key=ref.key, artifact_sha256=ref.sha256,
            artifact_bytes=ref.size_bytes,
            gate={"min_defect_recall": self.gate.min_defect_recall,
                  "max_false_reject_rate": self.gate.max_false_reject_rate, "failures": failures},
        )  # fmt: skip
        meta = new_meta(PRODUCER, correlation_id=job_id)
        meta.event_id = f"model:{trained.model_version}"
        event = events_pb2.ModelPublished(
            meta=meta, model_version=trained.model_version, product=product, artifact=ref,
            taxonomy_version=trained.taxonomy_version, dataset_version=trained.dataset_version,
            metrics=trained.metrics, stage=stage,
        )  # fmt: skip
        async with self.db.connection() as conn, conn.transaction():
            await registry.register_model(conn, row)
            await registry.update_job(conn, job_id, "succeeded", model_version=trained.model_version,
                                      metrics=trained.metrics)  # fmt: skip
            await self.bus.publish(subjects.plant_subject(self.plant, subjects.MODEL_PUBLISHED), event)
        log.info("model %s for %s registered as %s %s", trained.model_version, product, stage, failures or "")
        return trained.model_version

    async def _set_job(self, job_id: str, state: str) -> None:
        async with self.db.connection() as conn, conn.transaction():
            await registry.update_job(conn, job_id, state)

    async def fail_job(self, job_id: str, exc: BaseException) -> None:
        """Record a job's failure (once) and announce it on TrainingProgress."""
        error = f"{type(exc).__name__}: {exc}"[:2000]
        try:
            async with self.db.connection() as conn, conn.transaction():
                job = await registry.get_job(conn, job_id)
                if job is not None and job.state != "failed":
                    await registry.update_job(conn, job_id, "failed", error=error)
        except Exception as db_exc:
            log.error("cannot record failure of job %s (%s): %s", job_id, error, db_exc)
        await self._progress(job_id, "failed", 1.0, "", finished=True, error=error)

    async def _progress(
        self,
        job_id: str,
        stage: str,
        fraction: float,
        message: str,
        *,
        finished: bool = False,
        error: str = "",
    ) -> None:
        event = events_pb2.TrainingProgress(
            meta=new_meta(PRODUCER, correlation_id=job_id), job_id=job_id, stage=stage,
            fraction=max(0.0, min(1.0, fraction)), message=message, finished=finished, error=error,
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

    # ---- release decisions ---------------------------------------------------------------

    async def promote(
        self, model_version: str, approved_by: str, reason: str = "", *, product: str = ""
    ) -> ModelRecord:
        """A named approver makes `model_version` its product's production model; returns its row.

        The human side of the release gate: in a plant the QA owner signs the release off. Works
        from any stage:

        * a `candidate` (typically one the release gate held back): released to production;
        * a `retired` version: a **rollback** to that earlier model;
        * the model already in production: nothing changes, nothing is recorded or published
          (so a retried request is harmless).

        The product's previous production model is retired; both stage changes are appended to
        `model_stage_history` with the approver, the reason and the time; ModelPublished
        (stage `production`, a fresh event id so JetStream never drops it as a duplicate of the
        registration's `model:<version>`) is published before the transaction commits, so the
        registry never says production for a model inference was not told about.

        Raises PromotionError for an empty `approved_by`, or an empty `reason` when the model
        failed release gate checks (overriding the gate needs a stated reason), and
        UnknownModelError when no such model exists (or it belongs to another product than a
        non-empty `product`).
        """
        model_version, approved_by, reason = model_version.strip(), approved_by.strip(), reason.strip()
        if not model_version:
            raise PromotionError("model_version is required")
        if not approved_by:
            raise PromotionError(
                "approved_by is required: a release to production needs a named approver (the QA owner)"
            )
        async with self.db.connection() as conn, conn.transaction():
            model = await registry.get_model(conn, model_version)
            if model is None or (product and model.product != product):
                raise UnknownModelError(model_version)
            failures = registry.gate_failures(model)
            if failures and not reason and model.stage != "production":
                raise PromotionError(
                    f"model {model_version} failed release gate checks ({'; '.join(failures)}): "
                    "overriding the gate needs a reason"
                )
            promotion = await registry.promote_model(conn, model_version, approved_by, reason)
            if promotion is None:  # deleted between the two reads: cannot happen, rows are never deleted
                raise UnknownModelError(model_version)
            if promotion.changed:
                await self._announce_promotion(promotion.model)
        if promotion.changed:
            kind = "rollback to" if promotion.previous_stage == "retired" else "promotion of"
            log.info(
                "%s %s %s (was %s) by %s: %s; retired %s", kind, promotion.model.product, model_version,
                promotion.previous_stage, approved_by, reason or "-", promotion.retired or "none",
            )  # fmt: skip
        return promotion.model

    async def _announce_promotion(self, model: ModelRecord) -> None:
        ref = common_pb2.ObjectRef(
            bucket=model.artifact_bucket, key=model.artifact_key, sha256=model.artifact_sha256,
            content_type="application/gzip", size_bytes=int(model.artifact_bytes or 0),
        )  # fmt: skip
        meta = new_meta(PRODUCER, correlation_id=f"promote:{model.model_version}")
        meta.event_id = f"model:{model.model_version}:production:{uuid.uuid4().hex[:12]}"
        event = events_pb2.ModelPublished(
            meta=meta, model_version=model.model_version, product=model.product, artifact=ref,
            taxonomy_version=model.taxonomy_version, dataset_version=model.dataset_version,
            metrics={k: float(v) for k, v in (model.metrics or {}).items()}, stage="production",
        )  # fmt: skip
        await self.bus.publish(subjects.plant_subject(self.plant, subjects.MODEL_PUBLISHED), event)

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
