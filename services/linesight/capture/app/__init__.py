"""What a capture station does: sources, audit, capture standards, no-frame-lost delivery."""

from linesight.capture.app.profile import AuditThresholds, GenICamSettings, ProfileError, StationProfile
from linesight.capture.app.sources import SourceError, make_source
from linesight.capture.app.station import CaptureStation, CaptureStatus, LineStopped, ReplayReport

__all__ = [
    "AuditThresholds",
    "CaptureStation",
    "CaptureStatus",
    "GenICamSettings",
    "LineStopped",
    "ProfileError",
    "ReplayReport",
    "SourceError",
    "StationProfile",
    "make_source",
]
