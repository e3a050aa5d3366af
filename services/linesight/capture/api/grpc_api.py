"""gRPC CaptureService: software trigger from a PLC gateway, profile and status queries."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import grpc.aio

from linesight.capture.app.sources import SourceError
from linesight.capture.app.station import CaptureStation, LineStopped, StationStopped
from linesight.common.grpcutil import ServiceClient
from linesight.common.pb import capture_pb2, capture_pb2_grpc, common_pb2


class CaptureServicer(capture_pb2_grpc.CaptureServiceServicer):
    """Thin transport over one CaptureStation; errors become status codes the PLC gateway can act on."""

    def __init__(self, station: CaptureStation) -> None:
        self.station = station

    async def Trigger(  # noqa: N802 - gRPC method name
        self, request: capture_pb2.TriggerRequest, context: grpc.aio.ServicerContext
    ) -> capture_pb2.TriggerResponse:
        try:
            event, spooled = await self.station.trigger(
                part_id=request.part_id, batch=request.batch, shift=request.shift, extra=dict(request.extra)
            )
        except LineStopped as exc:  # the PLC must stop the line: a distinct, non-retryable-now code
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except (SourceError, EOFError, StationStopped) as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"camera not available: {exc}")
        return capture_pb2.TriggerResponse(frame=event, spooled=spooled)

    async def GetStationProfile(  # noqa: N802
        self, request: capture_pb2.GetStationProfileRequest, context: grpc.aio.ServicerContext
    ) -> capture_pb2.StationProfile:
        want = request.station
        have = self.station.profile.station_ref()
        if want.station and (want.plant, want.line, want.station) != (have.plant, have.line, have.station):
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"this capture instance serves {have.plant}/{have.line}/{have.station}, "
                f"not {want.plant}/{want.line}/{want.station}",
            )
        return self.station.profile.to_proto()

    async def GetStatus(  # noqa: N802
        self, request: capture_pb2.GetCaptureStatusRequest, context: grpc.aio.ServicerContext
    ) -> capture_pb2.CaptureStatus:
        return self.station.status()


def register(station: CaptureStation) -> Callable[[grpc.aio.Server], None]:
    """Registration callback for ServiceContext.add_grpc."""

    def _add(server: grpc.aio.Server) -> None:
        capture_pb2_grpc.add_CaptureServiceServicer_to_server(CaptureServicer(station), server)

    return _add


class CaptureClient(ServiceClient[capture_pb2_grpc.CaptureServiceStub]):
    """Thick client for a station's capture API (PLC gateways, tools, tests)."""

    def __init__(self, target: str, *, timeout_s: float = 10.0) -> None:
        super().__init__(target, capture_pb2_grpc.CaptureServiceStub, service="capture", timeout_s=timeout_s)

    async def trigger(
        self, part_id: str, *, batch: str = "", shift: str = "", extra: dict[str, str] | None = None
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
