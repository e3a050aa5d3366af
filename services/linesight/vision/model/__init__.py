"""The inspection model: PatchCore anomaly model + supervised defect-type head on one backbone."""

from linesight.vision.model.adapt import UpdateReport
from linesight.vision.model.inspection import (
    GOOD,
    CalibrationReport,
    FitReport,
    InputError,
    InspectionModel,
    ModelConfig,
    Prediction,
)

__all__ = [
    "GOOD",
    "CalibrationReport",
    "FitReport",
    "InputError",
    "InspectionModel",
    "ModelConfig",
    "Prediction",
    "UpdateReport",
]
