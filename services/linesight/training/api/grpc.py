"""gRPC TrainingService (transport only)."""

from __future__ import annotations

import grpc

from linesight.common.pb import training_pb2, training_pb2_grpc
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


class TrainingServicer(training_pb2_grpc.TrainingServiceServicer):
    def __init__(self, trainer: TrainingApp) -> None:
        self.trainer = trainer

    async def StartTraining(  # noqa: N802 - gRPC method name
        self, request: training_pb2.StartTrainingRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.TrainingJob:
        if request.incremental:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "incremental training is not available yet")
        if request.dataset_version:
            try:
                self.trainer.resolve_dataset(request.dataset_version)
            except FileNotFoundError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        job_id = await self.trainer.start(request.product, request.dataset_version)
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
        """A named approver releases a model to production (or rolls back to a retired one).

        See `TrainingApp.promote`: NOT_FOUND for an unknown version (or one of another product),
        INVALID_ARGUMENT for an empty `approved_by` or a missing reason for overriding failed
        release gate checks. Promoting the current production model is a no-op that returns it.
        """
        try:
            model = await self.trainer.promote(
                request.model_version, request.approved_by, request.reason, product=request.product
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
