"""Client of a station's CaptureService (PLC gateways, the demo, tools, tests)."""

from __future__ import annotations

from linesight.common.clients.base import PeerClient
from linesight.common.pb import capture_pb2, capture_pb2_grpc, common_pb2


class CaptureClient(PeerClient[capture_pb2_grpc.CaptureServiceStub]):
    """Thick client for a station's capture API."""

    stub_class = capture_pb2_grpc.CaptureServiceStub
    service_name = "capture"

    async def trigger(
        self, part_id: str = "", *, batch: str = "", shift: str = "", extra: dict[str, str] | None = None
    ) -> capture_pb2.TriggerResponse:
        """Not retried: a timed-out trigger may have captured the part already."""
        request = capture_pb2.TriggerRequest(part_id=part_id, batch=batch, shift=shift, extra=extra or {})
        return await self._rpc("Trigger", request, capture_pb2.TriggerResponse, idempotent=False)

    async def status(self) -> capture_pb2.CaptureStatus:
        return await self._rpc("GetStatus", capture_pb2.GetCaptureStatusRequest(), capture_pb2.CaptureStatus)

    async def profile(self, station: common_pb2.StationRef | None = None) -> capture_pb2.StationProfile:
        request = capture_pb2.GetStationProfileRequest(station=station)
        return await self._rpc("GetStationProfile", request, capture_pb2.StationProfile)
