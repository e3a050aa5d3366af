"""gRPC TrainingService (transport only).

Methods raise the application's errors; `_STATUS` is the one place that says which status code
each becomes on the wire and `_errors_as_status` (applied to every RPC of the servicer) answers
with it. An error the table does not know (Forbidden, an outage) goes on to the server's
interceptor (linesight.common.grpcutil), which maps the generic kinds the same way everywhere.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc

from linesight.common.grpcutil import brief_details
from linesight.common.identity.grpc import current_principal
from linesight.common.identity.model import Principal
from linesight.common.identity.policy import Policy
from linesight.common.limits import check_name, check_text
from linesight.common.pb import training_pb2, training_pb2_grpc
from linesight.training.api.policy import (
    CREATE_DATASET_VERSION,
    IMPORT_DATASET,
    PROMOTE_MODEL,
    ROLLBACK_MODEL,
    SET_MODEL_STAGE,
    SET_RELEASE_GATE,
    UPLOAD_DATASET,
    WAIVE_DATASET_FINDING,
)
from linesight.training.app.datasets import (
    CurveUnavailableError,
    DatasetApp,
    DatasetBlockedError,
    LabelsNotReadyError,
    UnknownDatasetError,
)
from linesight.training.app.gates import ReleaseGate
from linesight.training.app.jobs import NotFoundError, TrainingApp, UnknownJobError
from linesight.training.app.promotion import (
    Assessment,
    GateNotMetError,
    PromotionApp,
    RollbackError,
    StageError,
)
from linesight.training.app.uploads import StagedUpload, UploadLimits, UploadTooLargeError
from linesight.training.store.datasets import DatasetRecord
from linesight.training.store.jobs import JobRun
from linesight.training.store.registry import GateVersion, ModelRecord, gate_failures

# Application error -> status code and the message the caller reads. First match wins, so a
# subclass precedes its base: refusals that depend on the state of things (a gate not met, a
# blocked dataset, nothing to roll back to, labels not ready) are FAILED_PRECONDITION, unknown
# ids NOT_FOUND, any other ValueError (a bad name, a missing reason) INVALID_ARGUMENT.
_STATUS: tuple[tuple[type[Exception], grpc.StatusCode, Callable[[Exception], str]], ...] = (
    (GateNotMetError, grpc.StatusCode.FAILED_PRECONDITION, str),
    (DatasetBlockedError, grpc.StatusCode.FAILED_PRECONDITION, str),
    (RollbackError, grpc.StatusCode.FAILED_PRECONDITION, str),
    (StageError, grpc.StatusCode.FAILED_PRECONDITION, str),
    (LabelsNotReadyError, grpc.StatusCode.FAILED_PRECONDITION, str),
    (CurveUnavailableError, grpc.StatusCode.FAILED_PRECONDITION, str),
    (UploadTooLargeError, grpc.StatusCode.RESOURCE_EXHAUSTED, str),
    (NotFoundError, grpc.StatusCode.NOT_FOUND, str),
    (KeyError, grpc.StatusCode.NOT_FOUND, lambda e: str(e.args[0]) if e.args else "not found"),
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT, str),
)


def status_of(exc: Exception) -> tuple[grpc.StatusCode, str] | None:
    """(status code, message) for an application error; None: not ours to map."""
    for kind, code, message in _STATUS:
        if isinstance(exc, kind):
            return code, message(exc)
    return None


Rpc = TypeVar("Rpc", bound=Callable[..., Awaitable[Any]])


def _errors_as_status(method: Rpc) -> Rpc:
    @functools.wraps(method)
    async def rpc(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            mapped = status_of(exc)
            if mapped is None:
                raise
            await context.abort(mapped[0], brief_details(mapped[1]))
            raise  # unreachable: abort raises

    return rpc  # type: ignore[return-value]


def _map_errors(cls: type[Any]) -> type[Any]:
    """Wrap every RPC the servicer implements (the generated base's methods) in _errors_as_status."""
    for name in vars(training_pb2_grpc.TrainingServiceServicer):
        if name[:1].isupper() and name in vars(cls):
            setattr(cls, name, _errors_as_status(vars(cls)[name]))
    return cls


def model_entry(model: ModelRecord, assessment: Assessment | None = None) -> training_pb2.ModelEntry:
    """A registry record (with its last stage change, and its gate verdict when judged) as the
    API's ModelEntry."""
    entry = training_pb2.ModelEntry(
        model_version=model.model_version, stage=model.stage,
        metrics={k: float(v) for k, v in (model.metrics or {}).items()},
        taxonomy_version=model.taxonomy_version, gate_failures=gate_failures(model),
        product=model.product or "", stage_changed_by=model.stage_changed_by or "",
        stage_reason=model.stage_reason or "", dataset_version=model.dataset_version or "",
        lineage_json=json.dumps(model.lineage or {}),
    )  # fmt: skip
    if model.stage_changed_at is not None:
        entry.stage_changed_at.FromDatetime(model.stage_changed_at)
    if model.assessed_passed is not None:  # judged against the product's gate before
        entry.eligible = model.assessed_passed
        entry.gate_version = model.assessed_gate_version or 0
        entry.gate_report_key = model.assessed_html_key
    else:  # only the registration's verdict (the service's default gate)
        entry.eligible = not entry.gate_failures
    if assessment is not None:
        entry.eligible = assessment.passed
        entry.gate_version = assessment.gate_version
        entry.gate_report_key = assessment.html_key
        del entry.gate_failures[:]
        entry.gate_failures.extend(assessment.failures)
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


@_map_errors
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
        promotions: PromotionApp | None = None,
        upload_limits: UploadLimits | None = None,
    ) -> None:
        self.promotions = promotions
        self.upload_limits = upload_limits or UploadLimits()
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
        product = check_name(request.product, "product").strip()
        name = check_name(request.dataset_version, "dataset_version").strip()
        base_model = check_name(request.base_model, "base_model").strip()
        version, dataset = "", ""
        if name and self.datasets is not None and await self._is_version(name):
            version = name
            product = product or (await self._datasets().get(name)).product
        elif name:
            dataset = await self._dataset_folder(name, context)
        job_id = await self.trainer.start(
            product, dataset, mode="incremental" if request.incremental else "full",
            dataset_version=version, base_model=base_model, requested_by=approver_of(principal),
        )  # fmt: skip
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
            name = check_name(job_id, "job_id")
        except ValueError:  # not a job id at all: no such job, like any other unknown one
            raise UnknownJobError(job_id) from None
        run = await self.trainer.get_run(name)
        job = await self.trainer.get_job(run.job_id)
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
        """The caller, a QA owner of the model's product, signs the model off for production;
        the approver recorded is the caller, `approved_by` is ignored.

        NOT_FOUND: unknown version (or one of another product); PERMISSION_DENIED: no qa_owner
        grant on the model's product; FAILED_PRECONDITION: the model fails its product's release
        gate (the failing checks named; no override) or its dataset version has an unwaived
        blocking finding. Promoting the current production model is a no-op that returns it.
        """
        principal = current_principal()
        version = check_name(request.model_version, "model_version").strip()
        product = check_name(request.product, "product").strip()
        if not version:
            raise ValueError("model_version is required")
        promotions = self._promotions()
        found = await promotions.get_model(version, product)
        # Forbidden propagates: the auth interceptor answers PERMISSION_DENIED.
        self.policy.authorize(principal, PROMOTE_MODEL, self.plant, found.product or None)
        if self.datasets is not None and found.stage != "production":
            await self.datasets.check_promotable(found.dataset_version)
        model = await promotions.promote(
            found.model_version, principal, check_text(request.reason, "reason"), product=found.product
        )
        assessment = await promotions.assess(model.model_version)
        return model_entry(model, assessment)

    # ---- registry stages, release gates, shadow comparison, rollback -----------------------

    def _promotions(self) -> PromotionApp:
        if self.promotions is None:  # the composition root always wires it
            raise RuntimeError("the registry's release decisions are not wired into this servicer")
        return self.promotions

    async def _model(self, version: str, product: str = "") -> ModelRecord:
        return await self._promotions().get_model(check_name(version, "model_version").strip(), product)

    async def GetModel(  # noqa: N802
        self, request: training_pb2.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.ModelEntry:
        """The model with its lineage and its gate verdict against the product's gate in force."""
        model = await self._model(request.model_version)
        assessment = await self._promotions().assess(model.model_version)
        return model_entry(assessment.model, assessment)

    async def SetModelStage(  # noqa: N802
        self, request: training_pb2.SetModelStageRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.ModelEntry:
        principal = current_principal()
        model = await self._model(request.model_version)
        self.policy.authorize(principal, SET_MODEL_STAGE, self.plant, model.product or None)
        moved = await self._promotions().set_stage(
            model.model_version, check_name(request.stage, "stage"), principal,
            check_text(request.reason, "reason"),
        )  # fmt: skip
        return model_entry(moved)

    async def RollbackModel(  # noqa: N802
        self, request: training_pb2.RollbackModelRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.ModelEntry:
        """Production back to an earlier production model (empty version: the previous one)."""
        principal = current_principal()
        product = check_name(request.product, "product").strip()
        if request.model_version.strip():
            product = (await self._model(request.model_version, product)).product
        elif not product:
            raise ValueError("product or model_version is required")
        self.policy.authorize(principal, ROLLBACK_MODEL, self.plant, product or None)
        model = await self._promotions().rollback(
            product, request.model_version.strip(), principal, check_text(request.reason, "reason")
        )
        return model_entry(model)

    async def SetReleaseGate(  # noqa: N802
        self, request: training_pb2.SetReleaseGateRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.ReleaseGateVersion:
        principal = current_principal()
        product = _product(request.product)
        self.policy.authorize(principal, SET_RELEASE_GATE, self.plant, product)
        stored = await self._promotions().set_gate(
            product, check_text(request.gate_yaml, "gate_yaml"), principal,
            check_text(request.reason, "reason"),
        )  # fmt: skip
        return _gate_entry(product, ReleaseGate.from_dict(stored.spec), stored)

    async def GetReleaseGate(  # noqa: N802
        self, request: training_pb2.GetReleaseGateRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.ReleaseGateVersion:
        product = _product(request.product)
        gate, stored = await self._promotions().gate_for(product, max(0, request.version))
        return _gate_entry(product, gate, stored)

    async def GetGateReport(  # noqa: N802
        self, request: training_pb2.GetGateReportRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.GateReport:
        model = await self._model(request.model_version)
        promotions = self._promotions()
        found = await promotions.assess(model.model_version)
        return training_pb2.GateReport(
            model_version=model.model_version, gate_version=found.gate_version, passed=found.passed,
            failures=found.failures, report_json=json.dumps(found.report), html_key=found.html_key,
            html=await promotions.gate_page(found.html_key) if request.html else "",
        )  # fmt: skip

    async def GetShadowReport(  # noqa: N802
        self, request: training_pb2.GetShadowReportRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.ShadowReport:
        if request.model_version.strip():
            await self._model(request.model_version)
        elif not request.product.strip():
            raise ValueError("model_version or product is required")
        report = await self._promotions().shadow_report(
            request.model_version.strip(), check_name(request.product, "product").strip()
        )
        return training_pb2.ShadowReport(
            model_version=report["model_version"], product=report["product"], frames=report["frames"],
            unpaired=report["unpaired"], agreement=report["agreement"],
            would_reject=report["would_reject"], would_pass=report["would_pass"],
            report_json=json.dumps(report),
        )  # fmt: skip

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
        product = _product(request.product)
        self.policy.authorize(principal, IMPORT_DATASET, self.plant, product)
        path = confined_dataset(self.datasets_root, request.directory)
        if path is None or not path.is_dir():
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"directory must be a dataset folder under the training service's dataset root "
                f"{self.datasets_root} (LINESIGHT_DATASETS_DIR)",
            )
            raise AssertionError("unreachable")
        reason = check_text(request.reason, "reason")
        record, created = await self._datasets().import_directory(
            path, product, approver_of(principal), reason, request.parent_version.strip()
        )
        return dataset_entry(record, created)

    async def UploadDataset(  # noqa: N802
        self,
        request_iterator: AsyncIterator[training_pb2.DatasetUploadChunk],
        context: grpc.aio.ServicerContext,
    ) -> training_pb2.DatasetVersion:
        """ImportDataset of a folder the caller streams (see StagedUpload): the header first
        (product, reason, parent; the caller must be allowed to import for that product before a
        byte is written), then the files. INVALID_ARGUMENT / RESOURCE_EXHAUSTED name the file."""
        principal = current_principal()
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("part") != "header":
            raise ValueError("the first message of an upload must be its header (product, reason, parent)")
        header = first.header
        product = _product(header.product)
        self.policy.authorize(principal, UPLOAD_DATASET, self.plant, product)
        reason = check_text(header.reason, "reason")
        parent = check_name(header.parent_version, "parent_version").strip()
        datasets = self._datasets()
        staged = StagedUpload(self.datasets_root, self.upload_limits)
        try:
            async for message in request_iterator:
                if message.WhichOneof("part") != "file":
                    raise ValueError("an upload has one header, as its first message")
                staged.chunk(message.file.path, message.file.data, message.file.last)
            record, created = await datasets.import_directory(
                staged.finish(), product, approver_of(principal), reason, parent
            )
        finally:
            staged.discard()
        return dataset_entry(record, created)

    async def CreateDatasetVersion(  # noqa: N802
        self, request: training_pb2.CreateDatasetVersionRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.DatasetVersion:
        principal = current_principal()
        product = _product(request.product)
        self.policy.authorize(principal, CREATE_DATASET_VERSION, self.plant, product)
        record, created = await self._datasets().create_from_labels(
            product, approver_of(principal), check_text(request.reason, "reason"),
            request.parent_version.strip(),
        )  # fmt: skip
        return dataset_entry(record, created)

    async def ListDatasetVersions(  # noqa: N802
        self, request: training_pb2.ListDatasetVersionsRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.ListDatasetVersionsResponse:
        records = await self._datasets().list_versions(request.product.strip())
        return training_pb2.ListDatasetVersionsResponse(versions=[dataset_entry(r) for r in records])

    async def GetDatasetVersion(  # noqa: N802
        self, request: training_pb2.GetDatasetVersionRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.DatasetVersion:
        return dataset_entry(await self._version(request.version))

    async def DiffDatasetVersions(  # noqa: N802
        self, request: training_pb2.DiffDatasetVersionsRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.DatasetDiff:
        await self._version(request.base)
        await self._version(request.other)
        diff = await self._datasets().diff(request.base.strip(), request.other.strip())
        return training_pb2.DatasetDiff(
            base=request.base.strip(), other=request.other.strip(), added=diff["added"],
            removed=diff["removed"], relabelled=diff["relabelled"],
            counts_delta_json=json.dumps(diff["counts_delta"]), examples=diff["examples"],
        )  # fmt: skip

    async def GetDatasetReport(  # noqa: N802
        self, request: training_pb2.GetDatasetReportRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.DatasetReport:
        await self._version(request.version)
        record, report, page = await self._datasets().report(
            request.version.strip(), html=request.html, learning_curve=request.learning_curve
        )
        return training_pb2.DatasetReport(
            version=record.version, report_json=json.dumps(report), html=page,
            blocking=record.blocking, html_key=record.report_html_key,
        )  # fmt: skip

    async def WaiveDatasetFinding(  # noqa: N802
        self, request: training_pb2.WaiveDatasetFindingRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.DatasetReport:
        """The caller, a QA owner of the version's product, accepts one blocking finding."""
        principal = current_principal()
        found = await self._version(request.version)
        self.policy.authorize(principal, WAIVE_DATASET_FINDING, self.plant, found.product)
        await self._datasets().waive(
            found.version, check_name(request.kind, "kind"), principal, check_text(request.reason, "reason")
        )
        record, report, _ = await self._datasets().report(found.version)
        return training_pb2.DatasetReport(
            version=record.version, report_json=json.dumps(report), blocking=record.blocking,
            html_key=record.report_html_key,
        )  # fmt: skip

    async def _version(self, version: str) -> DatasetRecord:
        return await self._datasets().get(version.strip())


def _product(product: str) -> str:
    name = check_name(product, "product").strip()
    if not name:
        raise ValueError("product is required")
    return name


def _gate_entry(
    product: str, gate: ReleaseGate, stored: GateVersion | None
) -> training_pb2.ReleaseGateVersion:
    entry = training_pb2.ReleaseGateVersion(product=product, gate_yaml=gate.to_yaml())
    if stored is not None:
        entry.version, entry.author, entry.reason = stored.version, stored.author, stored.reason
        entry.created_at.FromDatetime(stored.created_at)
    return entry


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
