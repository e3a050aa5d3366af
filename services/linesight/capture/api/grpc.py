"""gRPC CaptureService: software trigger from a PLC gateway, profile and status queries."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import grpc.aio

from linesight.capture.app.profile import StationProfile
from linesight.capture.app.sources import SourceError
from linesight.capture.app.station import CaptureStation, CaptureStatus, LineStopped, StationStopped
from linesight.common.limits import TextError, check_name
from linesight.common.pb import capture_pb2, capture_pb2_grpc

MAX_EXTRA = 32  # PLC attributes per trigger; each key and value is a Name


def _checked_trigger(request: capture_pb2.TriggerRequest) -> dict[str, str]:
    """The trigger's extra attributes, after every text the PLC sent is checked (TextError ->
    INVALID_ARGUMENT naming the field): they end up in the frame event and the results ledger."""
    check_name(request.part_id, "part_id")
    check_name(request.batch, "batch")
    check_name(request.shift, "shift")
    if len(request.extra) > MAX_EXTRA:
        raise TextError(f"extra: at most {MAX_EXTRA} attributes (got {len(request.extra)})")
    for key, value in request.extra.items():
        check_name(key, "extra (key)")
        check_name(value, f"extra[{key}]")
    return dict(request.extra)


class CaptureServicer(capture_pb2_grpc.CaptureServiceServicer):
    """Thin transport over one CaptureStation; errors become status codes the PLC gateway can act on."""

    def __init__(self, station: CaptureStation) -> None:
        self.station = station

    async def Trigger(  # noqa: N802 - gRPC method name
        self, request: capture_pb2.TriggerRequest, context: grpc.aio.ServicerContext
    ) -> capture_pb2.TriggerResponse:
        extra = _checked_trigger(request)
        try:
            event, spooled = await self.station.trigger(
                part_id=request.part_id, batch=request.batch, shift=request.shift, extra=extra
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
        for name in ("plant", "line", "station"):
            check_name(getattr(want, name), f"station.{name}")
        have = self.station.profile.station_ref()
        if want.station and (want.plant, want.line, want.station) != (have.plant, have.line, have.station):
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"this capture instance serves {have.plant}/{have.line}/{have.station}, "
                f"not {want.plant}/{want.line}/{want.station}",
            )
        return profile_proto(self.station.profile)

    async def GetStatus(  # noqa: N802
        self, request: capture_pb2.GetCaptureStatusRequest, context: grpc.aio.ServicerContext
    ) -> capture_pb2.CaptureStatus:
        return status_proto(self.station.status())


def profile_proto(profile: StationProfile) -> capture_pb2.StationProfile:
    return capture_pb2.StationProfile(
        station=profile.station_ref(),
        version=profile.version,
        camera_model=profile.camera_model,
        camera_serial=profile.camera_serial,
        lens=profile.lens,
        exposure_us=profile.exposure_us,
        gain_db=profile.gain_db,
        lighting_profile=profile.lighting_profile,
        working_distance_mm=profile.working_distance_mm,
        px_per_mm=profile.px_per_mm,
        roi_x=profile.roi_x,
        roi_y=profile.roi_y,
        roi_width=profile.roi_width,
        roi_height=profile.roi_height,
        pixel_format=profile.pixel_format,
        source=profile.source,
        trigger_mode=profile.trigger_mode,
    )


def status_proto(status: CaptureStatus) -> capture_pb2.CaptureStatus:
    return capture_pb2.CaptureStatus(
        station=status.station,
        frames_captured=status.frames_captured,
        frames_published=status.frames_published,
        spool_depth=status.spool_depth,
        audit_rejects=status.audit_rejects,
        alarm=status.alarm,
    )


def register(station: CaptureStation) -> Callable[[grpc.aio.Server], None]:
    """Registration callback for ServiceContext.add_grpc."""

    def _add(server: grpc.aio.Server) -> None:
        capture_pb2_grpc.add_CaptureServiceServicer_to_server(CaptureServicer(station), server)

    return _add
