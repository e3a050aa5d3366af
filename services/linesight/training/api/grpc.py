"""gRPC TrainingService (transport only)."""

from __future__ import annotations

import json
from pathlib import Path

import grpc

from linesight.common.identity.grpc import current_principal
from linesight.common.identity.model import Principal
from linesight.common.identity.policy import Policy
from linesight.common.limits import check_name, check_text
from linesight.common.pb import training_pb2, training_pb2_grpc
from linesight.training.api.policy import (
    CREATE_DATASET_VERSION,
    IMPORT_DATASET,
    PROMOTE_MODEL,
    WAIVE_DATASET_FINDING,
)
from linesight.training.app.datasets import DatasetApp, DatasetImportError, UnknownDatasetError
from linesight.training.app.jobs import (
    JobRequestError,
    PromotionError,
    TrainingApp,
    UnknownDatasetVersionError,
    UnknownJobError,
    UnknownModelError,
)
from linesight.training.store.datasets import DatasetRecord
from linesight.training.store.jobs import JobRun
from linesight.training.store.registry import ModelRecord, gate_failures


def model_entry(model: ModelRecord) -> training_pb2.ModelEntry:
    """A registry record (with its last stage change) as the API's ModelEntry."""
    entry = training_pb2.ModelEntry(
        model_version=model.model_version, stage=model.stage,
        metrics={k: float(v) for k, v in (model.metrics or {}).items()},
        taxonomy_version=model.taxonomy_version, gate_failures=gate_failures(model),
        product=model.product or "", stage_changed_by=model.stage_changed_by or "",
        stage_reason=model.stage_reason or "",
    )  # fmt: skip
    if model.stage_changed_at is not None:
        entry.stage_changed_at.FromDatetime(model.stage_changed_at)
    return entry


def approver_of(principal: Principal) -> str:
    """How a release records who signed it: the authenticated caller, never a request field."""
    if principal.name and principal.name != principal.subject:
        return f"{principal.name} <{principal.subject}>"
    return principal.subject


def confined_dataset(root: Path, name: str) -> Path | None:
    """`name` (relative to `root`, or an absolute path inside it) as a folder under `root`, or
    None when it points elsewhere. Symlinks and `..` are resolved first, so neither escapes."""
    base = root.resolve()
    candidate = (base / name).resolve()
    return candidate if candidate != base and candidate.is_relative_to(base) else None


class TrainingServicer(training_pb2_grpc.TrainingServiceServicer):
    """`policy` authorises promotions again against the model's product; datasets are read only
    from `datasets_root`, so a caller cannot make the service read, or say whether there is, any
    other path on its disk."""

    def __init__(
        self,
        trainer: TrainingApp,
        policy: Policy,
        datasets_root: Path,
        *,
        plant: str,
        datasets: DatasetApp | None = None,
    ) -> None:
        self.trainer = trainer
        self.policy = policy
        self.datasets_root = datasets_root
        self.plant = plant
        self.datasets = datasets

    async def StartTraining(  # noqa: N802 - gRPC method name
        self, request: training_pb2.StartTrainingRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.TrainingJob:
        """Queue a full or incremental job; it runs in a worker process (GetTrainingJob and
        TrainingProgress follow it). `dataset_version` names a recorded version (NOT_FOUND when
        there is none) or, as before versions existed, a folder under the datasets root."""
        principal = current_principal()
        try:
            product = check_name(request.product, "product").strip()
            name = check_name(request.dataset_version, "dataset_version").strip()
            base_model = check_name(request.base_model, "base_model").strip()
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise
        version, dataset = "", ""
        if name and self.datasets is not None and await self._is_version(name):
            version = name
            product = product or (await self._datasets().get(name)).product
        elif name:
            dataset = await self._dataset_folder(name, context)
        try:
            job_id = await self.trainer.start(
                product, dataset, mode="incremental" if request.incremental else "full",
                dataset_version=version, base_model=base_model, requested_by=approver_of(principal),
            )  # fmt: skip
        except UnknownDatasetVersionError:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no dataset version {name!r}")
            raise
        except UnknownModelError:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no base model {base_model!r} for {product!r}")
            raise
        except JobRequestError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise
        return job_entry(await self.trainer.get_run(job_id))

    async def _is_version(self, name: str) -> bool:
        try:
            await self._datasets().get(name)
        except UnknownDatasetError:
            return False
        return True

    async def _dataset_folder(self, name: str, context: grpc.aio.ServicerContext) -> str:
        """A folder under the datasets root with a manifest; NOT_FOUND otherwise (the same answer
        for a path elsewhere, so a caller learns nothing about the rest of the disk)."""
        path = confined_dataset(self.datasets_root, name)
        if path is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no dataset version {name!r} (and no dataset folder of that name under the training "
                "service's dataset root, LINESIGHT_DATASETS_DIR); see ListDatasetVersions",
            )
            raise AssertionError("unreachable")
        try:
            self.trainer.resolve_dataset(str(path))
        except FileNotFoundError:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no dataset version {name!r} (and no dataset folder of that name with a manifest.csv "
                "under the training service's dataset root); see ListDatasetVersions",
            )
        return str(path)

    async def GetTrainingJob(  # noqa: N802
        self, request: training_pb2.GetTrainingJobRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.TrainingJob:
        """The job with its progress, its model's current stage and the gate checks it failed."""
        return await self._job(request.job_id, context)

    async def CancelTrainingJob(  # noqa: N802
        self, request: training_pb2.CancelTrainingJobRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.TrainingJob:
        """Stop a queued or running job; a finished one is returned unchanged."""
        principal = current_principal()
        await self._job(request.job_id, context)
        await self.trainer.cancel(request.job_id, approver_of(principal))
        return await self._job(request.job_id, context)

    async def _job(self, job_id: str, context: grpc.aio.ServicerContext) -> training_pb2.TrainingJob:
        try:
            run = await self.trainer.get_run(check_name(job_id, "job_id"))
            job = await self.trainer.get_job(run.job_id)
        except (UnknownJobError, ValueError):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no training job {job_id!r}")
            raise
        entry = job_entry(run)
        entry.stage, entry.gate_failures[:] = job.stage or "", gate_failures(job)
        return entry

    async def ListModels(  # noqa: N802
        self, request: training_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.ListModelsResponse:
        models = await self.trainer.list_models(request.product)
        return training_pb2.ListModelsResponse(models=[model_entry(m) for m in models])

    async def PromoteModel(  # noqa: N802
        self, request: training_pb2.PromoteModelRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.ModelEntry:
        """The caller, a QA owner of the model's product, releases it to production (or rolls
        back to a retired one); the approver recorded is the caller, `approved_by` is ignored.

        See `TrainingApp.promote`: NOT_FOUND for an unknown version (or one of another product),
        PERMISSION_DENIED without a qa_owner grant on the model's product, INVALID_ARGUMENT for a
        missing reason when overriding failed release gate checks. Promoting the current
        production model is a no-op that returns it.
        """
        principal = current_principal()
        if not request.model_version.strip():
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "model_version is required")
        try:
            found = await self.trainer.get_model(request.model_version.strip())
            if request.product and found.product != request.product:
                raise UnknownModelError(request.model_version)
            # Forbidden propagates: the auth interceptor answers PERMISSION_DENIED.
            self.policy.authorize(principal, PROMOTE_MODEL, self.plant, found.product or None)
            if self.datasets is not None:
                await self.datasets.check_promotable(found.dataset_version)
            model = await self.trainer.promote(
                request.model_version, approver_of(principal), request.reason, product=request.product
            )
        except PromotionError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise
        except UnknownModelError:
            where = f" for product {request.product!r}" if request.product else ""
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no model {request.model_version!r}{where}")
            raise
        return model_entry(model)

    # ---- dataset versions ------------------------------------------------------------------

    def _datasets(self) -> DatasetApp:
        if self.datasets is None:  # the composition root always wires it; a bare servicer in a test may not
            raise RuntimeError("dataset versions are not wired into this servicer")
        return self.datasets

    async def ImportDataset(  # noqa: N802
        self, request: training_pb2.ImportDatasetRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.DatasetVersion:
        """INVALID_ARGUMENT: a folder outside the datasets root, or rows that cannot be imported
        (each listed with its row and reason); the caller is recorded as the creator."""
        principal = current_principal()
        product = await self._product(request.product, context)
        self.policy.authorize(principal, IMPORT_DATASET, self.plant, product)
        path = confined_dataset(self.datasets_root, request.directory)
        if path is None or not path.is_dir():
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"directory must be a dataset folder under the training service's dataset root "
                f"{self.datasets_root} (LINESIGHT_DATASETS_DIR)",
            )
            raise AssertionError("unreachable")
        try:
            reason = check_text(request.reason, "reason")
            record, created = await self._datasets().import_directory(
                path, product, approver_of(principal), reason, request.parent_version.strip()
            )
        except (DatasetImportError, ValueError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise
        except UnknownDatasetError:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no parent version {request.parent_version!r}")
            raise
        return dataset_entry(record, created)

    async def CreateDatasetVersion(  # noqa: N802
        self, request: training_pb2.CreateDatasetVersionRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.DatasetVersion:
        principal = current_principal()
        product = await self._product(request.product, context)
        self.policy.authorize(principal, CREATE_DATASET_VERSION, self.plant, product)
        try:
            record, created = await self._datasets().create_from_labels(
                product, approver_of(principal), check_text(request.reason, "reason"),
                request.parent_version.strip(),
            )  # fmt: skip
        except (DatasetImportError, ValueError) as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
            raise
        except UnknownDatasetError:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no parent version {request.parent_version!r}")
            raise
        return dataset_entry(record, created)

    async def ListDatasetVersions(  # noqa: N802
        self, request: training_pb2.ListDatasetVersionsRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.ListDatasetVersionsResponse:
        records = await self._datasets().list_versions(request.product.strip())
        return training_pb2.ListDatasetVersionsResponse(versions=[dataset_entry(r) for r in records])

    async def GetDatasetVersion(  # noqa: N802
        self, request: training_pb2.GetDatasetVersionRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.DatasetVersion:
        return dataset_entry(await self._version(request.version, context))

    async def DiffDatasetVersions(  # noqa: N802
        self, request: training_pb2.DiffDatasetVersionsRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.DatasetDiff:
        await self._version(request.base, context)
        await self._version(request.other, context)
        diff = await self._datasets().diff(request.base.strip(), request.other.strip())
        return training_pb2.DatasetDiff(
            base=request.base.strip(), other=request.other.strip(), added=diff["added"],
            removed=diff["removed"], relabelled=diff["relabelled"],
            counts_delta_json=json.dumps(diff["counts_delta"]), examples=diff["examples"],
        )  # fmt: skip

    async def GetDatasetReport(  # noqa: N802
        self, request: training_pb2.GetDatasetReportRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.DatasetReport:
        await self._version(request.version, context)
        record, report, page = await self._datasets().report(request.version.strip(), html=request.html)
        return training_pb2.DatasetReport(
            version=record.version, report_json=json.dumps(report), html=page,
            blocking=record.blocking, html_key=record.report_html_key,
        )  # fmt: skip

    async def WaiveDatasetFinding(  # noqa: N802
        self, request: training_pb2.WaiveDatasetFindingRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.DatasetReport:
        """The caller, a QA owner of the version's product, accepts one blocking finding."""
        principal = current_principal()
        found = await self._version(request.version, context)
        self.policy.authorize(principal, WAIVE_DATASET_FINDING, self.plant, found.product)
        try:
            await self._datasets().waive(
                found.version,
                check_name(request.kind, "kind"),
                principal,
                check_text(request.reason, "reason"),
            )
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise
        record, report, _ = await self._datasets().report(found.version)
        return training_pb2.DatasetReport(
            version=record.version, report_json=json.dumps(report), blocking=record.blocking,
            html_key=record.report_html_key,
        )  # fmt: skip

    async def _product(self, product: str, context: grpc.aio.ServicerContext) -> str:
        try:
            name = check_name(product, "product").strip()
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise
        if not name:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "product is required")
        return name

    async def _version(self, version: str, context: grpc.aio.ServicerContext) -> DatasetRecord:
        try:
            return await self._datasets().get(version.strip())
        except UnknownDatasetError:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no dataset version {version!r}")
            raise


def job_entry(run: JobRun) -> training_pb2.TrainingJob:
    """A job's row as the API's TrainingJob (without its model's stage: see `_job`)."""
    return training_pb2.TrainingJob(
        job_id=run.job_id, state=run.state, model_version=run.model_version,
        metrics={k: float(v) for k, v in (run.metrics or {}).items()}, error=run.error,
        progress_stage=run.stage, percent=float(run.percent),
        eta_seconds=-1.0 if run.eta_seconds is None else float(run.eta_seconds), mode=run.mode,
        dataset_version=run.dataset_version, base_model=run.base_model,
        production_eligible=run.production_eligible, ineligible_reason=run.ineligible_reason,
        attempts=run.attempts, requested_by=run.requested_by,
    )  # fmt: skip


def dataset_entry(record: DatasetRecord, created: bool = False) -> training_pb2.DatasetVersion:
    entry = training_pb2.DatasetVersion(
        version=record.version, product=record.product, content_hash=record.content_hash,
        source=record.source, manifest_bucket=record.manifest_bucket, manifest_key=record.manifest_key,
        images=record.images, counts_json=json.dumps(record.counts),
        taxonomy_version=record.taxonomy_version, parent_version=record.parent_version or "",
        created_by=record.created_by, reason=record.reason, blocking=record.blocking,
        split_policy=record.split_policy, input_notes=list(record.input_notes), created=created,
    )  # fmt: skip
    entry.created_at.FromDatetime(record.created_at)
    return entry


def register(server: grpc.aio.Server, servicer: TrainingServicer) -> None:
    training_pb2_grpc.add_TrainingServiceServicer_to_server(servicer, server)
