"""gRPC TrainingService (transport only)."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from linesight.common.pb import training_pb2, training_pb2_grpc
from linesight.training.app.jobs import Trainer, UnknownJobError


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
        try:
            job = await self.trainer.get_job(request.job_id)
        except UnknownJobError:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no training job {request.job_id!r}")
            raise
        return training_pb2.TrainingJob(
            job_id=job["job_id"], state=job["state"], model_version=job["model_version"],
            metrics={k: float(v) for k, v in (job["metrics"] or {}).items()}, error=job["error"],
        )  # fmt: skip

    async def ListModels(  # noqa: N802
        self, request: training_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> training_pb2.ListModelsResponse:
        rows = await self.trainer.list_models(request.product)
        return training_pb2.ListModelsResponse(
            models=[
                training_pb2.ModelEntry(
                    model_version=r["model_version"],
                    stage=r["stage"],
                    metrics={k: float(v) for k, v in (r["metrics"] or {}).items()},
                    taxonomy_version=r["taxonomy_version"],
                )
                for r in rows
            ]
        )


def register(trainer: Trainer) -> Callable[[grpc.aio.Server], None]:
    def _register(server: grpc.aio.Server) -> None:
        training_pb2_grpc.add_TrainingServiceServicer_to_server(TrainingServicer(trainer), server)

    return _register
