"""What a training worker process does for one job: fetch its data, fit (full) or extend a base
model (incremental), upload the artifact and the engine state, and hand the result to the
service through the job's row. Progress and a heartbeat go to PostgreSQL every second; a worker
that reads its job as cancelled stops at once.

Write path: the artifact `models/<product>/<version>.tar.gz` and the engine state
`models/<product>/<version>.engine.tar.gz` (what a later incremental job extends) are uploaded
first; then the result is stored on the job row. The service registers the model and publishes
ModelPublished (jobs.py), so a worker never announces anything; a worker that dies before the
result is stored leaves nothing registered, and the service requeues or fails the job.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import math
import os
import socket
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from linesight.common.ports import ConnectionSource
from linesight.training.app.datasets import HoldoutReader
from linesight.training.app.jobs import BUCKET_MODELS, ArtifactStore, options_from_json
from linesight.training.app.trainer import TrainingOptions, code_version, dataset_version_of, train
from linesight.training.store import datasets as dataset_repo
from linesight.training.store import jobs as repo
from linesight.training.store import registry, taxonomies
from linesight.vision.taxonomy import Taxonomy

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
EXIT_CANCELLED = 3
HOLDOUT = "holdout"  # the dataset version's protected split: never read here


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class _Progress:
    """Latest progress from the training thread, with an ETA from the elapsed time."""

    started: float = field(default_factory=time.monotonic)
    stage: str = "starting"
    fraction: float = 0.0
    message: str = ""

    def update(self, stage: str, fraction: float, message: str) -> None:
        self.stage, self.fraction = stage, max(self.fraction, min(1.0, max(0.0, fraction)))
        if message:
            self.message = message

    def eta_s(self) -> float | None:
        if self.fraction < 0.05:
            return None
        elapsed = time.monotonic() - self.started
        return max(0.0, elapsed * (1.0 - self.fraction) / self.fraction)


@dataclass
class WorkerResult:
    """The job's model, uploaded and waiting for the service to register it."""

    model_version: str
    metrics: dict[str, float]
    taxonomy_version: str
    dataset_version: str
    artifact: dict[str, Any]  # bucket, key, sha256, size_bytes
    engine_key: str
    mode: str
    seconds: float
    notes: list[str] = field(default_factory=list)


class JobWorker:
    """Runs one job in this process (the worker process's use case)."""

    def __init__(self, db: ConnectionSource, store: ArtifactStore, *, datasets_root: Path) -> None:
        self.db = db
        self.store = store
        self.datasets_root = datasets_root
        self.name = worker_name()

    async def run(self, job_id: str) -> WorkerResult:
        """Run the job; raises on failure (the caller records it). Exits the process with
        EXIT_CANCELLED when the job is cancelled meanwhile."""
        async with self.db.connection() as conn, conn.transaction():
            job = await repo.get(conn, job_id)
            if job is None:
                raise LookupError(f"no training job {job_id!r}")
            if job.state != "running":
                raise RuntimeError(f"job {job_id} is {job.state}, not running: nothing to do")
            await repo.set_worker(conn, job_id, self.name)
        progress = _Progress()
        beat = asyncio.create_task(self._heartbeat(job_id, progress), name=f"heartbeat-{job_id}")
        t0 = time.monotonic()
        try:
            opts = options_from_json(job.options, job.product)
            taxonomy = await self._taxonomy(job.product)
            with tempfile.TemporaryDirectory(prefix="ls-job-") as tmp:
                work = Path(tmp)
                progress.update("dataset", 0.01, "fetching the dataset")
                data_dir = await self._materialize(job, work / "data")
                if job.mode == "incremental":
                    engine = await self._fetch_engine(job.product, job.base_model, work / "base")
                    trained = await asyncio.to_thread(
                        train_incremental, engine, data_dir, opts, work / "out", progress.update,
                        taxonomy=taxonomy, base_model=job.base_model,
                    )  # fmt: skip
                else:
                    holdout = await self._protected_holdout(job, work / "holdout")
                    trained = await asyncio.to_thread(
                        train_full, data_dir, opts, work / "out", progress.update, taxonomy=taxonomy,
                        holdout=holdout,
                    )  # fmt: skip
                if job.dataset_version:
                    trained.dataset_version = job.dataset_version
                progress.update("upload", 0.97, "uploading the model")
                result = await self._upload(job.product, trained, job.mode, time.monotonic() - t0)
            async with self.db.connection() as conn, conn.transaction():
                await repo.set_result(conn, job_id, asdict(result))
            return result
        finally:
            beat.cancel()

    async def _heartbeat(self, job_id: str, progress: _Progress) -> None:
        while True:
            try:
                async with self.db.connection() as conn, conn.transaction():
                    state = await repo.progress(
                        conn, job_id, progress.stage, round(100 * progress.fraction, 1),
                        progress.eta_s(), progress.message,
                    )  # fmt: skip
                if state == "cancelled":
                    log.warning("job %s cancelled: worker %s stops", job_id, self.name)
                    os._exit(EXIT_CANCELLED)  # the training thread cannot be interrupted otherwise
            except Exception as exc:  # a database blip must not kill training; the service judges staleness
                log.warning("heartbeat of job %s not recorded: %s", job_id, exc)
            await asyncio.sleep(HEARTBEAT_S)

    async def _taxonomy(self, product: str) -> Taxonomy | None:
        async with self.db.connection() as conn:
            found = await taxonomies.newest(conn, product)
        return None if found is None else Taxonomy.from_yaml(found[1], source=f"{product} v{found[0]}")

    async def _materialize(self, job: repo.JobRun, out: Path) -> Path:
        """The job's training data as a manifest folder: a dataset version's train and val rows
        (never its protected holdout), a folder under the datasets root, or the confirmed labels
        received since the base model (incremental) / all of them (full)."""
        await asyncio.to_thread(out.mkdir, parents=True)
        rows: list[dict[str, Any]] = []
        if job.dataset_version:
            async with self.db.connection() as conn:
                rec = await dataset_repo.get_version(conn, job.dataset_version)
            if rec is None:
                raise LookupError(f"dataset version {job.dataset_version!r} does not exist")
            manifest = json.loads(await self.store.aget_bytes(rec.manifest_bucket, rec.manifest_key))
            await self._write_rows([r for r in manifest["rows"] if r["split"] != HOLDOUT], out)
            return out
        if job.dataset:
            src = Path(job.dataset)
            if not src.is_absolute():
                src = self.datasets_root / src
            if not (src / "manifest.csv").is_file():
                raise FileNotFoundError(f"dataset {job.dataset!r}: no manifest.csv in {src}")
            return src
        since = None
        async with self.db.connection() as conn:
            labels = await registry.confirmed_labels(conn)
            if job.mode == "incremental":  # what arrived since the model it extends
                base = await registry.get_model(conn, job.base_model)
                since = base.created_at if base is not None else None
        for lab in labels:
            if not (lab.image_bucket and lab.image_key):
                continue
            if lab.product and lab.product != job.product:
                continue
            if since is not None and lab.received_at <= since:
                continue
            name = f"images/{lab.frame_id}{Path(lab.image_key).suffix or '.png'}"
            data = await self.store.aget_bytes(lab.image_bucket, lab.image_key)
            await asyncio.to_thread(_write, out / name, data)
            rows.append({"image": name, "label": lab.label, "part_id": lab.part_id or lab.frame_id,
                         "batch": "", "station": lab.station, "captured_at": "",
                         "boxes": json.dumps(lab.boxes) if lab.boxes else "", "split": "",
                         "seeded": ""})  # fmt: skip
        if not rows:
            raise ValueError(
                f"no confirmed labels with images for {job.product!r}"
                + (" since the base model" if since is not None else "")
                + " yet"
            )
        await asyncio.to_thread(_write_manifest, out, rows)
        return out

    async def _protected_holdout(self, job: repo.JobRun, out: Path) -> list[Any] | None:
        """A full job's release evaluation set: its dataset version's protected holdout, read
        through the logged reader (who: the job and its requester; why: the release evaluation)
        into a folder of its own, apart from the training data. None: no version, or a version
        without holdout rows (the trainer then holds out a part-disjoint split itself)."""
        if not job.dataset_version:
            return None
        rows = await HoldoutReader(self.db, self.store).read(
            job.dataset_version, purpose=f"release evaluation of training job {job.job_id}",
            reader=f"training job {job.job_id} ({job.requested_by or 'unknown requester'})",
        )  # fmt: skip
        if not rows:
            return None
        await asyncio.to_thread(out.mkdir, parents=True)
        await self._write_rows(rows, out)
        return await asyncio.to_thread(_load_samples, out)

    async def _write_rows(self, rows: Sequence[dict[str, Any]], out: Path) -> None:
        """A dataset version's rows as a manifest folder (images fetched from S3)."""
        lines = []
        for r in rows:
            name = f"images/{r['sha256'][:16]}{Path(r['name']).suffix or '.png'}"
            data = await self.store.aget_bytes("datasets", r["key"])
            await asyncio.to_thread(_write, out / name, data)
            lines.append({"image": name, "label": r["label"], "part_id": r["part_id"],
                          "batch": r.get("batch", ""), "station": r.get("station", ""),
                          "captured_at": r.get("captured_at", ""),
                          "boxes": json.dumps(r["boxes"]) if r.get("boxes") else "",
                          "split": r["split"], "seeded": "1" if r.get("seeded") else ""})  # fmt: skip
        await asyncio.to_thread(_write_manifest, out, lines)

    async def _fetch_engine(self, product: str, base_model: str, out: Path) -> Path:
        async with self.db.connection() as conn:
            model = await registry.get_model(conn, base_model)
        if model is None:
            raise LookupError(f"base model {base_model!r} does not exist")
        key = engine_key(model.product or product, base_model)
        try:
            blob = await self.store.aget_bytes(BUCKET_MODELS, key)
        except Exception as exc:
            raise ValueError(
                f"base model {base_model} has no engine state (models/{key}): it was trained before "
                "training jobs kept it; train a full model first"
            ) from exc
        await asyncio.to_thread(_untar, blob, out)
        return out / "engine"

    async def _upload(self, product: str, trained: Trained, mode: str, seconds: float) -> WorkerResult:
        key = f"{product}/{trained.model_version}.tar.gz"
        ref = await self.store.aput_bytes(BUCKET_MODELS, key, trained.artifact, "application/gzip")
        ekey = engine_key(product, trained.model_version)
        await self.store.aput_bytes(BUCKET_MODELS, ekey, trained.engine, "application/gzip")
        return WorkerResult(
            model_version=trained.model_version,
            metrics={k: float(v) for k, v in trained.metrics.items() if math.isfinite(v)},  # JSON has no NaN
            taxonomy_version=trained.taxonomy_version, dataset_version=trained.dataset_version,
            artifact={"bucket": ref.bucket, "key": ref.key, "sha256": ref.sha256,
                      "size_bytes": int(ref.size_bytes)},
            engine_key=ekey, mode=mode, seconds=round(seconds, 2), notes=trained.notes,
        )  # fmt: skip


def engine_key(product: str, model_version: str) -> str:
    return f"{product}/{model_version}.engine.tar.gz"


def _untar(blob: bytes, out: Path) -> None:
    out.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        tar.extractall(out, filter="data")


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


# `split`: the dataset version's split of the row (train or val; the holdout never comes here).
# `seeded`: a known-defect part seeded into the holdout (reported apart in the evaluation).
_COLUMNS = ["image", "label", "part_id", "batch", "station", "captured_at", "boxes", "split", "seeded"]


def _write_manifest(out: Path, rows: Sequence[dict[str, Any]]) -> None:
    with (out / "manifest.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=_COLUMNS)
        w.writeheader()
        w.writerows(rows)


# ---- fitting (synchronous, in the worker's training thread) --------------------------------


@dataclass
class Trained:
    model_version: str
    metrics: dict[str, float]
    taxonomy_version: str
    dataset_version: str
    artifact: bytes  # .tar.gz of the export directory
    engine: bytes  # .tar.gz of the engine state (InspectionModel.save), for incremental jobs
    notes: list[str] = field(default_factory=list)


Say = Callable[[str, float, str], None]


TAR_LEVEL = 1  # float arrays and ONNX weights hardly compress: level 9 cost seconds for ~1 % less


def _tar(directory: Path, arcname: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=TAR_LEVEL) as tar:
        tar.add(directory, arcname=arcname)
    return buf.getvalue()


def _load_samples(data_dir: Path) -> list[Any]:
    from linesight.vision.data.manifest import load_manifest

    samples = load_manifest(data_dir, unknown_columns="ignore")
    if not samples:
        raise ValueError(f"{data_dir}: the manifest lists no images")
    return samples


def train_full(
    data_dir: Path,
    options: TrainingOptions,
    work: Path,
    say: Say,
    *,
    taxonomy: Taxonomy | None = None,
    holdout: Sequence[Any] | None = None,
) -> Trained:
    """`trainer.train` (near-duplicate parts merged before the holdout split, the holdout
    evaluation and lineage packaged for the release gate), keeping the engine state too: what a
    later incremental job extends."""
    trained = train(
        data_dir, options, work, say, taxonomy=taxonomy, engine_dir=work / "engine", holdout=holdout
    )
    metrics = dict(trained.metrics)
    links = next((n for n in trained.notes if "near-duplicate links" in n), "")
    metrics["near_duplicate_links"] = float(links.split()[0]) if links else 0.0
    return Trained(
        model_version=trained.model_version, metrics=metrics,
        taxonomy_version=trained.taxonomy_version, dataset_version=trained.dataset_version,
        artifact=trained.artifact, engine=_tar(work / "engine", "engine"), notes=list(trained.notes),
    )  # fmt: skip


def _package(model: Any, metrics: dict[str, float], dataset_version: str, work: Path, say: Say,
             notes: list[str], clock: dict[str, float] | None = None,
             lineage: dict[str, Any] | None = None) -> Trained:  # fmt: skip
    from linesight.vision.export.writer import export_model

    clock = clock if clock is not None else {}
    say("export", 0.9, "onnx export")
    t = time.perf_counter()
    export_dir = export_model(model, work / "export", metrics=metrics)
    if lineage is not None:  # what made the model, read by the registry (promotion.py)
        (export_dir / "lineage.json").write_text(json.dumps(lineage), encoding="utf-8")
    model.save(work / "engine")
    clock["export"] = time.perf_counter() - t
    t = time.perf_counter()
    artifact, engine = _tar(export_dir, model.version), _tar(work / "engine", "engine")
    clock["package"] = time.perf_counter() - t
    # the artifact's metrics.json was written before these two steps were timed: the job's own
    # result carries them
    metrics.update({f"seconds_{k}": round(clock[k], 2) for k in ("export", "package")})
    return Trained(
        model_version=model.version, metrics=metrics,
        taxonomy_version=model.taxonomy.version if model.taxonomy else "",
        dataset_version=dataset_version, artifact=artifact, engine=engine, notes=notes,
    )  # fmt: skip


class FrozenFeatures:
    """One backbone pass over a job's evaluation images; their predictions under any later head,
    thresholds and PatchCore bank of the same backbone, as `InspectionModel.predict` makes them
    (without the novelty score, which no figure here reads).

    An incremental job changes only the head, the operating point and (good frames) the bank, so
    "before" and "after" need not run the network twice, nor build the ONNX graph for each
    intermediate head: the images are scored against each state from the stored patches and
    pooled descriptors."""

    def __init__(self, model: Any, images: Sequence[np.ndarray]) -> None:
        from linesight.vision.components.scoring import check_images
        from linesight.vision.model.network import features, resize

        self.shapes = [im.shape for im in images]
        self.patches: np.ndarray | None = None
        self.pooled: np.ndarray | None = None
        if images:
            small = resize(check_images(list(images)), model.config.input_size)
            self.patches, self.pooled, _ = features(model.net, small, model.config.input_size)

    def predict(self, model: Any) -> list[Any]:
        from linesight.vision.components.scoring import assemble_predictions

        if self.patches is None or self.pooled is None:
            return []
        state = model.require_fitted()
        net = model.net
        z = (self.pooled - net.feat_mean.numpy()) / net.feat_scale.numpy()
        logits = z @ net.head.weight.detach().numpy().T + net.head.bias.detach().numpy()
        patch_scores, image_scores = model.patchcore.score(self.patches)
        return list(assemble_predictions(state, patch_scores, image_scores, logits, self.shapes,
                                         patches=self.patches))  # fmt: skip


def _flagged(preds: Sequence[Any]) -> np.ndarray:
    return np.array([bool(p.is_defect or p.anomaly_score >= 1.0) for p in preds], dtype=bool)


@dataclass
class _Eval:
    """The evaluation images of an incremental job, by label, scored from one backbone pass."""

    labels: list[str]
    features: FrozenFeatures

    def rates(self, model: Any, old: set[str]) -> dict[str, float | None]:
        flagged = _flagged(self.features.predict(model))
        lab = np.array(self.labels, dtype=object)

        def share(mask: np.ndarray) -> float | None:
            return float(flagged[mask].mean()) if mask.any() else None

        return {
            "old": share(np.isin(lab, sorted(old - {"good"}))),
            "good": share(lab == "good"),
            "new": share(~np.isin(lab, sorted(old)) & (lab != "good")),
        }


def train_incremental(
    engine_dir: Path,
    data_dir: Path,
    options: TrainingOptions,
    work: Path,
    say: Say,
    *,
    taxonomy: Taxonomy | None = None,
    base_model: str = "",
) -> Trained:
    """Extend the base model: each new class through the engine's `add_class`, more examples of
    known classes through `update_known_classes`; the backbone and PatchCore stay.

    Old-class recall is measured before and after on the same images, so the job's metrics say
    whether the update cost the classes it already knew. When the data is a dataset version
    with old-class (or good) rows in its val split, those rows are measured and never learned:
    an honest figure. Otherwise the job's own old-class images are measured after being learned
    (`old_class_recall_in_sample` = 1). New-class recall is on the examples it learned from.

    Speed (the ~30 s budget on 2 cores): the network runs once over the evaluation images
    (FrozenFeatures) instead of once per figure, and no ONNX graph is built for the intermediate
    heads (prediction runs on the torch runtime during the job; the export builds the one graph
    the artifact carries)."""
    from dataclasses import replace

    from linesight.vision.data.imageio import read_image
    from linesight.vision.model import InspectionModel

    clock: dict[str, float] = {}
    t = time.perf_counter()
    say("load", 0.05, f"loading base model {base_model}")
    model = InspectionModel.load(engine_dir)
    deployed_config = model.config
    model.config = replace(deployed_config, runtime="torch")  # no ONNX graph per intermediate head
    if taxonomy is not None and model.taxonomy is not None and taxonomy.version != model.taxonomy.version:
        model.taxonomy = taxonomy  # a class added since needs the taxonomy that defines it
    samples = _load_samples(data_dir)
    say("dataset", 0.1, f"{len(samples)} images")
    old = set(model.classes)  # what the base model decides, provisional classes included
    provisional = set(model.anomaly_only_classes)
    # old-class rows of the version's val split are for measuring only
    held = [s for s in samples if s.label in old and dict(s.extra).get("split") == "val"]
    learn = [s for s in samples if not (s.label in old and dict(s.extra).get("split") == "val")]
    in_sample = not [s for s in held if s.label != "good"]
    if in_sample:
        held = []
        learn = list(samples)
    by_label: dict[str, list[np.ndarray]] = {}
    for s in learn:
        by_label.setdefault(s.label, []).append(read_image(s.image))
    new = sorted(c for c in by_label if c not in old and c != "good")
    # add_class takes a new class, and more examples of a provisional one (it gets its head once
    # it has enough); classes with a head go to the known-class update.
    to_add = new + sorted(c for c in by_label if c in provisional)
    headed = {c: imgs for c, imgs in by_label.items() if c in old and c not in provisional}
    if in_sample:
        measured = [(c, img) for c, imgs in by_label.items() for img in imgs]
    else:
        measured = [(s.label, read_image(s.image)) for s in held]
        measured += [(c, img) for c in new for img in by_label[c]]
    clock["load"] = time.perf_counter() - t
    t = time.perf_counter()
    evaluation = _Eval([c for c, _ in measured], FrozenFeatures(model, [img for _, img in measured]))
    before = evaluation.rates(model, old)
    clock["eval_before"] = time.perf_counter() - t
    notes: list[str] = []
    t = time.perf_counter()
    for i, label in enumerate(to_add):
        say("add_class", 0.15 + 0.5 * i / max(1, len(to_add)), f"adding class {label}")
        if len(by_label[label]) < 2:
            notes.append(f"class {label!r}: {len(by_label[label])} example(s), needs 2: not added")
            continue
        report = model.add_class(by_label[label], label)
        for step, seconds in report.timings.items():  # the engine's own split: features, head, onnx
            if step != "total":
                clock[f"add_class_{step}"] = clock.get(f"add_class_{step}", 0.0) + seconds
    clock["add_class"] = time.perf_counter() - t
    t = time.perf_counter()
    say("update", 0.7, "updating known classes")
    notes += update_known_classes(model, headed)
    clock["update_known"] = time.perf_counter() - t
    t = time.perf_counter()
    say("evaluate", 0.8, "old-class recall after the update")
    after = evaluation.rates(model, old)
    metrics = {k: float(v) for k, v in model.metrics.items()}
    if before["good"] is not None and after["good"] is not None:
        metrics["good_flagged_before"], metrics["good_flagged_after"] = before["good"], after["good"]
    for k in ("defect_recall", "false_reject_rate"):
        if f"cv_{k}" in metrics:
            metrics[k] = metrics[f"cv_{k}"]
    if before["old"] is not None and after["old"] is not None:
        metrics["old_class_recall_before"], metrics["old_class_recall_after"] = before["old"], after["old"]
        metrics["old_class_recall_in_sample"] = float(in_sample)
        metrics["old_class_images_measured"] = float(sum(1 for c, _ in measured if c in old and c != "good"))
    added = [c for c in new if c in model.classes]
    if after["new"] is not None and added:
        metrics["new_class_recall_after"] = after["new"]
    clock["eval_after"] = time.perf_counter() - t
    metrics["new_classes"] = float(len(added))
    metrics["incremental_images"] = float(len(samples))
    metrics.update({f"seconds_{k}": round(v, 2) for k, v in clock.items()})
    model.config = deployed_config  # the artifact and engine state keep the deployed runtime
    version = dataset_version_of(data_dir)
    lineage = {
        "code_version": code_version(),
        "parameters": {
            "mode": "incremental",
            "base_model": base_model,
            "added_classes": added,
            "updated_classes": sorted(headed),
            "seed": options.seed,
        },
        "holdout": "none",
        "train_images": len(learn),
        "measured_images": len(measured),
    }
    return _package(model, metrics, version, work, say, notes, clock, lineage)


def update_known_classes(model: Any, by_label: dict[str, list[np.ndarray]]) -> list[str]:
    """More examples of classes the model already has, through the engine's review update
    (`InspectionModel.update_from_reviews`): confirmed good frames join the anomaly model's good
    reference and the head's negatives, defects of known classes extend the head, and the
    operating point is re-derived from out-of-fold scores with them."""
    images = [img for imgs in by_label.values() for img in imgs]
    labels = [c for c, imgs in by_label.items() for _ in imgs]
    if not images:
        return []
    report = model.update_from_reviews(images, labels)
    notes = [
        f"{len(images)} confirmed frames learned ({', '.join(f'{c}: {len(v)}' for c, v in by_label.items())})"
    ]
    if report.deferred:
        notes.append(f"{len(report.deferred)} frame(s) wait until their class has more examples")
    return notes
