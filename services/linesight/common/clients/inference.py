"""Client of the InferenceService (synchronous inspection, model info, golden recalibration)."""

from __future__ import annotations

from collections.abc import Sequence

from linesight.common.clients.base import PeerClient
from linesight.common.pb import common_pb2, events_pb2, inference_pb2, inference_pb2_grpc


class InferenceClient(PeerClient[inference_pb2_grpc.InferenceServiceStub]):
    """Thick client for the inference API."""

    stub_class = inference_pb2_grpc.InferenceServiceStub
    service_name = "inference"

    async def inspect(
        self, frame: events_pb2.FrameCaptured, image: bytes = b""
    ) -> events_pb2.InspectionResult:
        """Not retried: the service publishes every result it returns, a retry would publish twice."""
        request = inference_pb2.InspectRequest(frame=frame, image=image)
        return await self._rpc("Inspect", request, events_pb2.InspectionResult, idempotent=False)

    async def model_info(self) -> inference_pb2.ModelInfo:
        return await self._rpc("GetModelInfo", inference_pb2.GetModelInfoRequest(), inference_pb2.ModelInfo)

    async def recalibrate(
        self, station: common_pb2.StationRef, golden_frames: Sequence[common_pb2.ObjectRef]
    ) -> events_pb2.RecalibrationPerformed:
        """Not retried: each call moves the station's thresholds and publishes the change."""
        request = inference_pb2.RecalibrateRequest(station=station, golden_frames=list(golden_frames))
        return await self._rpc("Recalibrate", request, events_pb2.RecalibrationPerformed, idempotent=False)
