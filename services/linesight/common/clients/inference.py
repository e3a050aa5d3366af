"""Client of the InferenceService (synchronous inspection, model info, golden recalibration)."""

from __future__ import annotations

from collections.abc import Sequence

from linesight.common.grpcutil import ServiceClient, TokenSource
from linesight.common.pb import common_pb2, events_pb2, inference_pb2, inference_pb2_grpc


class InferenceClient(ServiceClient[inference_pb2_grpc.InferenceServiceStub]):
    """Thick client for the inference API."""

    def __init__(self, target: str, *, timeout_s: float = 10.0, token: TokenSource | None = None) -> None:
        super().__init__(
            target,
            inference_pb2_grpc.InferenceServiceStub,
            service="inference",
            timeout_s=timeout_s,
            token=token,
        )

    async def inspect(
        self, frame: events_pb2.FrameCaptured, image: bytes = b""
    ) -> events_pb2.InspectionResult:
        """Not retried: the service publishes every result it returns, a retry would publish twice."""
        request = inference_pb2.InspectRequest(frame=frame, image=image)
        result: events_pb2.InspectionResult = await self.call("Inspect", request, idempotent=False)
        return result

    async def model_info(self) -> inference_pb2.ModelInfo:
        result: inference_pb2.ModelInfo = await self.call("GetModelInfo", inference_pb2.GetModelInfoRequest())
        return result

    async def recalibrate(
        self, station: common_pb2.StationRef, golden_frames: Sequence[common_pb2.ObjectRef]
    ) -> events_pb2.RecalibrationPerformed:
        """Not retried: each call moves the station's thresholds and publishes the change."""
        request = inference_pb2.RecalibrateRequest(station=station, golden_frames=list(golden_frames))
        result: events_pb2.RecalibrationPerformed = await self.call("Recalibrate", request, idempotent=False)
        return result
