"""gRPC TrainingService (transport only)."""

from __future__ import annotations

from pathlib import Path

import grpc

from linesight.common.identity.grpc import current_principal
from linesight.common.identity.model import Principal
from linesight.common.identity.policy import Policy
from linesight.common.pb import training_pb2, training_pb2_grpc
from linesight.training.api.policy import PROMOTE_MODEL
from linesight.training.app.jobs import PromotionError, TrainingApp, UnknownJobError, UnknownModelError
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

    def __init__(self, trainer: TrainingApp, policy: Policy, datasets_root: Path, *, plant: str) -> None:
        self.trainer = trainer
        self.policy = policy
        self.datasets_root = datasets_root
        self.plant = plant

    async def StartTraining(  # noqa: N802 - gRPC method name
        self, request: training_pb2.StartTrainingRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.TrainingJob:
        if request.incremental:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "incremental training is not available yet")
        dataset = ""
        if request.dataset_version:
            path = confined_dataset(self.datasets_root, request.dataset_version)
            if path is None:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "dataset_version must name a dataset folder under the training service's dataset "
                    "root (LINESIGHT_DATASETS_DIR), e.g. 'tile-2026-11'",
                )
                raise AssertionError("unreachable")
            try:
                self.trainer.resolve_dataset(str(path))
            except FileNotFoundError:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"dataset {request.dataset_version!r}: no manifest.csv in that dataset folder",
                )
            dataset = str(path)
        job_id = await self.trainer.start(request.product, dataset)
        return training_pb2.TrainingJob(job_id=job_id, state="queued")

    async def GetTrainingJob(  # noqa: N802
        self, request: training_pb2.GetTrainingJobRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.TrainingJob:
        """The job, with its model's current stage and the release gate checks it failed."""
        try:
            job = await self.trainer.get_job(request.job_id)
        except UnknownJobError:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no training job {request.job_id!r}")
            raise
        return training_pb2.TrainingJob(
            job_id=job.job_id, state=job.state, model_version=job.model_version,
            metrics={k: float(v) for k, v in (job.metrics or {}).items()}, error=job.error,
            stage=job.stage or "", gate_failures=gate_failures(job),
        )  # fmt: skip

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


def register(server: grpc.aio.Server, servicer: TrainingServicer) -> None:
    training_pb2_grpc.add_TrainingServiceServicer_to_server(servicer, server)
