"""What the inference service does (no transport): score frames, qualify them, swap models."""

from linesight.inference.app.config import BackendKind, InferenceConfig, TritonDownPolicy
from linesight.inference.app.inspection import Outcome, RetryLater
from linesight.inference.app.models import ModelInfo, Role
from linesight.inference.app.service import InferenceApp

__all__ = [
    "BackendKind",
    "InferenceApp",
    "InferenceConfig",
    "ModelInfo",
    "Outcome",
    "RetryLater",
    "Role",
    "TritonDownPolicy",
]
