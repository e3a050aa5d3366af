"""What the inference service keeps in object storage: frames (read), heatmaps, model artifacts,
station calibrations."""

from linesight.inference.store.objects import (
    ArtifactError,
    CalibrationStore,
    FrameImages,
    HeatmapStore,
    ModelArtifacts,
    StationCalibration,
    pack_export,
)

__all__ = [
    "ArtifactError",
    "CalibrationStore",
    "FrameImages",
    "HeatmapStore",
    "ModelArtifacts",
    "StationCalibration",
    "pack_export",
]
