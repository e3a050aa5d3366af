"""gRPC InferenceService: synchronous Inspect for a PLC gateway, model info, golden recalibration."""

from __future__ import annotations

import grpc

from linesight.common.pb import events_pb2, inference_pb2, inference_pb2_grpc
from linesight.common.storage import ObjectNotFound, StorageUnavailable
from linesight.inference.api.bus import InspectionWorker
from linesight.inference.app.bundle import ModelLoadError
from linesight.inference.app.inspection import RetryLater
from linesight.inference.app.models import ModelInfo
from linesight.inference.app.service import InferenceApp


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    """Inspect returns the same result the bus path publishes (and publishes it too)."""

    def __init__(self, app: InferenceApp, worker: InspectionWorker | None = None) -> None:
        self.app = app
        self.worker = worker

    async def Inspect(  # noqa: N802 - gRPC method name
        self, request: inference_pb2.InspectRequest, context: grpc.aio.ServicerContext
    ) -> events_pb2.InspectionResult:
        frame = request.frame
        station = frame.capture.station
        if not station.station or not station.line:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "frame.capture.station (line, station) is required"
            )
        if not request.image and not frame.image.key:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "give an inline image or frame.image")
        try:
            outcome = await self.app.inspect(frame, image=request.image or None, station=station)
        except RetryLater as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        if self.worker is not None and self.app.pipeline.station_known(station):
            await self.worker.publish(outcome, station)
        return outcome.result

    async def GetModelInfo(  # noqa: N802
        self, request: inference_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.ModelInfo:
        info = model_info_proto(self.app.model_info())
        info.drift.extend(self.app.pipeline.drift.latest())  # incl. the "retrain recommended" records
        return info

    async def Recalibrate(  # noqa: N802
        self, request: inference_pb2.RecalibrateRequest, context: grpc.aio.ServicerContext
    ) -> events_pb2.RecalibrationPerformed:
        station = request.station
        if not station.plant:
            station.plant = self.app.settings.plant
        try:
            return await self.app.recalibrate(station, list(request.golden_frames))
        except (ValueError, ObjectNotFound) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except ModelLoadError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except StorageUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        raise AssertionError("unreachable")


def model_info_proto(info: ModelInfo) -> inference_pb2.ModelInfo:
    return inference_pb2.ModelInfo(
        model_version=info.model_version,
        candidate_version=info.candidate_version,
        backend=info.backend,
        taxonomy_version=info.taxonomy_version,
        classes=info.classes,
        thresholds=info.thresholds,
        last_load_error=info.last_load_error,
        failed_version=info.failed_version,
        fallback=info.fallback,
        pending_version=info.pending_version,
    )


def register(server: grpc.aio.Server, servicer: InferenceServicer) -> None:
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
