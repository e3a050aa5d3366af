"""Client of a station's CaptureService (PLC gateways, the demo, tools, tests)."""

from __future__ import annotations

from linesight.common.grpcutil import ServiceClient, TokenSource
from linesight.common.pb import capture_pb2, capture_pb2_grpc, common_pb2


class CaptureClient(ServiceClient[capture_pb2_grpc.CaptureServiceStub]):
    """Thick client for a station's capture API."""

    def __init__(self, target: str, *, timeout_s: float = 10.0, token: TokenSource | None = None) -> None:
        super().__init__(
            target, capture_pb2_grpc.CaptureServiceStub, service="capture", timeout_s=timeout_s, token=token
        )

    async def trigger(
        self, part_id: str = "", *, batch: str = "", shift: str = "", extra: dict[str, str] | None = None
    ) -> capture_pb2.TriggerResponse:
        """Not retried: a timed-out trigger may have captured the part already."""
        request = capture_pb2.TriggerRequest(part_id=part_id, batch=batch, shift=shift, extra=extra or {})
        response: capture_pb2.TriggerResponse = await self.call("Trigger", request, idempotent=False)
        return response

    async def status(self) -> capture_pb2.CaptureStatus:
        result: capture_pb2.CaptureStatus = await self.call(
            "GetStatus", capture_pb2.GetCaptureStatusRequest()
        )
        return result

    async def profile(self, station: common_pb2.StationRef | None = None) -> capture_pb2.StationProfile:
        request = capture_pb2.GetStationProfileRequest(station=station)
        result: capture_pb2.StationProfile = await self.call("GetStationProfile", request)
        return result
