"""Inference metrics (OpenTelemetry; rendered on /metrics by linesight.common.service).

Names: linesight_inference_stage_seconds{stage}, _frames{verdict,model_version,shadow},
_batch_size, _queue_depth, _oldest_frame_age_seconds, _model_info{model_version,backend,role},
_errors{reason}, _backend_unavailable, _model_load_failures{role,model_version,transient},
_model_load_error{role,model_version} (1 while set), _frame_retries{reason}.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Observation

from linesight.common import telemetry

STAGES = ("fetch", "preprocess", "queue", "model", "decision", "heatmap", "publish")
_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class InferenceMetrics:
    """Instruments plus the gauges' current values (read by observable callbacks)."""

    def __init__(self) -> None:
        m = telemetry.meter("linesight.inference")
        self._lock = threading.Lock()
        self.stage = m.create_histogram(
            "linesight_inference_stage_seconds",
            unit="s",
            description="per-stage latency of one frame",
            explicit_bucket_boundaries_advisory=list(_SECONDS_BUCKETS),
        )
        self.end_to_end = m.create_histogram(
            "linesight_inference_latency_seconds",
            unit="s",
            description="trigger -> result published",
            explicit_bucket_boundaries_advisory=list(_SECONDS_BUCKETS),
        )
        self.frames = m.create_counter("linesight_inference_frames", description="results published")
        self.errors = m.create_counter("linesight_inference_errors", description="error results, by reason")
        self.batch_size = m.create_histogram(
            "linesight_inference_batch_size",
            description="frames per model call",
            explicit_bucket_boundaries_advisory=[1, 2, 4, 8, 16, 32, 64],
        )
        self.backend_unavailable = m.create_counter(
            "linesight_inference_backend_unavailable", description="model calls that found Triton unreachable"
        )
        self.load_failures = m.create_counter(
            "linesight_inference_model_load_failures",
            description="model versions that failed to load, by role and whether it is retried (transient)",
        )
        self.retries = m.create_counter(
            "linesight_inference_frame_retries",
            description="frames put back on the bus for a later delivery (dependency down, model loading)",
        )
        self._queue_depth = 0
        self._oldest_age: Callable[[], float] = lambda: 0.0
        self._models: dict[str, tuple[str, str]] = {}
        self._load_errors: dict[str, str] = {}
        m.create_observable_gauge(
            "linesight_inference_queue_depth",
            [self._observe_depth],
            description="frames waiting for the model",
        )
        m.create_observable_gauge(
            "linesight_inference_oldest_frame_age_seconds",
            [self._observe_age],
            unit="s",
            description="age of the oldest frame waiting for the model",
        )
        m.create_observable_gauge(
            "linesight_inference_model_info", [self._observe_models], description="model versions in use (1)"
        )
        m.create_observable_gauge(
            "linesight_inference_model_load_error",
            [self._observe_load_errors],
            description="1 while the newest version of a role failed to load (GetModelInfo says why)",
        )

    def set_queue(self, depth: int, oldest_age: Callable[[], float]) -> None:
        self._queue_depth = depth
        self._oldest_age = oldest_age

    def set_model(self, role: str, version: str, backend: str) -> None:
        with self._lock:
            if version:
                self._models[role] = (version, backend)
            else:
                self._models.pop(role, None)

    def set_load_error(self, role: str, version: str) -> None:
        """`version` failed to load for `role`; "" clears it."""
        with self._lock:
            if version:
                self._load_errors[role] = version
            else:
                self._load_errors.pop(role, None)

    def _observe_load_errors(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            items = list(self._load_errors.items())
        return [Observation(1, {"role": r, "model_version": v}) for r, v in items]

    def _observe_depth(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self._queue_depth)]

    def _observe_age(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self._oldest_age())]

    def _observe_models(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            items = list(self._models.items())
        return [Observation(1, {"role": r, "model_version": v, "backend": b}) for r, (v, b) in items]
