"""HTTP status route (/capture/status) for dashboards and operators; health lives in common."""

from __future__ import annotations

from fastapi import APIRouter

from linesight.capture.api.policy import HTTP_STATUS
from linesight.capture.app.station import CaptureStation
from linesight.common.identity.fastapi import require


def status_router(station: CaptureStation) -> APIRouter:
    router = APIRouter(prefix="/capture", tags=["capture"])

    @router.get("/status", dependencies=[require(HTTP_STATUS)])
    async def status() -> dict[str, object]:
        s = station.status()
        return {
            "station": {"plant": s.station.plant, "line": s.station.line, "station": s.station.station},
            "profile_version": station.profile.version,
            "frames_captured": s.frames_captured,
            "frames_published": s.frames_published,
            "frames_per_s": round(station.frames_per_s(), 3),
            "spool_depth": s.spool_depth,
            "spool_bytes": station.spool.size_bytes,
            "frames_dropped": station.frames_dropped,
            "audit_rejects": dict(s.audit_rejects),
            "line_stopped": station.line_stopped,
            "delivery_error": station.delivery_error,
            "alarm": s.alarm,
        }

    return router
