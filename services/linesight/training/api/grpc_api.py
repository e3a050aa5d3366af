"""gRPC TrainingService (transport only)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import grpc

from linesight.common.pb import training_pb2, training_pb2_grpc
from linesight.training.app.jobs import PromotionError, Trainer, UnknownJobError, UnknownModelError
from linesight.training.store.registry import gate_failures


def model_entry(row: dict[str, Any]) -> training_pb2.ModelEntry:
    """A registry row (with its last stage change) as the API's ModelEntry."""
    entry = training_pb2.ModelEntry(
        model_version=row["model_version"], stage=row["stage"],
        metrics={k: float(v) for k, v in (row["metrics"] or {}).items()},
        taxonomy_version=row["taxonomy_version"], gate_failures=gate_failures(row),
        product=row.get("product") or "", stage_changed_by=row.get("stage_changed_by") or "",
        stage_reason=row.get("stage_reason") or "",
    )  # fmt: skip
    changed_at = row.get("stage_changed_at")
    if isinstance(changed_at, datetime):
        entry.stage_changed_at.FromDatetime(changed_at)
    return entry


class TrainingServicer(training_pb2_grpc.TrainingServiceServicer):
    def __init__(self, trainer: Trainer) -> None:
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
            job_id=job["job_id"], state=job["state"], model_version=job["model_version"],
            metrics={k: float(v) for k, v in (job["metrics"] or {}).items()}, error=job["error"],
            stage=job.get("stage") or "", gate_failures=gate_failures(job),
        )  # fmt: skip

    async def ListModels(  # noqa: N802
        self, request: training_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.ListModelsResponse:
        rows = await self.trainer.list_models(request.product)
        return training_pb2.ListModelsResponse(models=[model_entry(r) for r in rows])

    async def PromoteModel(  # noqa: N802
        self, request: training_pb2.PromoteModelRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.ModelEntry:
        """A named approver releases a model to production (or rolls back to a retired one).

        See `Trainer.promote`: NOT_FOUND for an unknown version (or one of another product),
        INVALID_ARGUMENT for an empty `approved_by` or a missing reason for overriding failed
        release gate checks. Promoting the current production model is a no-op that returns it.
        """
        try:
            row = await self.trainer.promote(
                request.model_version, request.approved_by, request.reason, product=request.product
            )
        except PromotionError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise
        except UnknownModelError:
            where = f" for product {request.product!r}" if request.product else ""
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no model {request.model_version!r}{where}")
            raise
        return model_entry(row)


def register(trainer: Trainer) -> Callable[[grpc.aio.Server], None]:
    def _register(server: grpc.aio.Server) -> None:
        training_pb2_grpc.add_TrainingServiceServicer_to_server(TrainingServicer(trainer), server)

    return _register
