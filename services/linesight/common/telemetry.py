"""OpenTelemetry traces and metrics, and W3C trace context for bus headers and gRPC metadata.

Exporting is opt-in: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans and metrics go to that OTLP
gRPC collector; without it nothing leaves the process (the embedded stack needs no collector).
Metrics are always readable in-process so `/metrics` can render them as Prometheus text.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, MutableMapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    MetricReader,
    NumberDataPoint,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger(__name__)

_propagator = TraceContextTextMapPropagator()
_PROM_TYPES = {"sum": "counter", "gauge": "gauge", "histogram": "histogram"}
_lock = threading.Lock()
_service: str | None = None
_tracer_provider: TracerProvider | None = None
_meter_provider: MeterProvider | None = None
_metric_reader: InMemoryMetricReader | None = None


def setup_telemetry(service: str) -> None:
    """Install tracer and meter providers once per process; later calls are no-ops.

    OTel allows setting the global providers only once, so a second service name in the same
    process (tests running several services) shares the first one's providers.
    """
    global _service, _tracer_provider, _meter_provider, _metric_reader
    with _lock:
        if _tracer_provider is not None:
            return
        resource = Resource.create(
            {"service.name": service, "service.namespace": "linesight", "service.instance.id": _instance()}
        )
        endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
        tracer_provider = TracerProvider(resource=resource)
        readers: list[MetricReader] = []
        in_memory = InMemoryMetricReader()
        readers.append(in_memory)
        if endpoint:
            # Imported lazily: the exporter pulls in grpc channels we do not need otherwise.
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
            log.info("telemetry exporting to %s", endpoint)
        meter_provider = MeterProvider(resource=resource, metric_readers=readers)
        trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(meter_provider)
        _service, _tracer_provider, _meter_provider, _metric_reader = (
            service,
            tracer_provider,
            meter_provider,
            in_memory,
        )


def shutdown_telemetry() -> None:
    """Flush exporters (best effort: a dead collector must not block shutdown)."""
    try:
        if _tracer_provider is not None:
            _tracer_provider.force_flush(timeout_millis=2000)
        if _meter_provider is not None:
            _meter_provider.force_flush(timeout_millis=2000)
    except Exception as exc:  # exporters may raise on an unreachable collector
        log.warning("telemetry flush failed: %s", exc)


def _instance() -> str:
    return f"{os.uname().nodename}-{os.getpid()}"


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def meter(name: str) -> metrics.Meter:
    return metrics.get_meter(name)


def inject_trace_headers(headers: MutableMapping[str, str], ctx: Context | None = None) -> None:
    """Write `traceparent` (and `tracestate`) of the current span into `headers`, if any."""
    _propagator.inject(headers, context=ctx)


def extract_trace_context(headers: Mapping[str, str] | None) -> Context:
    """Context continuing the trace in `headers`; an empty context when there is none."""
    if not headers:
        return otel_context.Context()
    return _propagator.extract(dict(headers))


def current_trace_id() -> str:
    """Hex trace id of the current span, '' outside a sampled span (used in log lines)."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return ""
    return format(span_context.trace_id, "032x")


def render_prometheus() -> str:
    """Current metrics in Prometheus text format (counters, gauges, histograms)."""
    if _metric_reader is None:
        return ""
    data = _metric_reader.get_metrics_data()
    if data is None:
        return ""
    lines: list[str] = []
    seen: set[str] = set()
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                name = _prom_name(metric.name)
                kind = type(metric.data).__name__.lower()
                prom_type = _PROM_TYPES.get(kind, "untyped")
                if prom_type == "counter" and not getattr(metric.data, "is_monotonic", True):
                    prom_type = "gauge"
                if name not in seen:
                    if metric.description:
                        lines.append(f"# HELP {name} {metric.description}")
                    lines.append(f"# TYPE {name} {prom_type}")
                    seen.add(name)
                for point in metric.data.data_points:
                    labels = dict(point.attributes or {})
                    if isinstance(point, HistogramDataPoint):
                        cumulative = 0
                        for bound, count in zip(
                            [*point.explicit_bounds, float("inf")], point.bucket_counts, strict=False
                        ):
                            cumulative += count
                            le = "+Inf" if bound == float("inf") else _num(bound)
                            lines.append(f"{name}_bucket{_labels({**labels, 'le': le})} {cumulative}")
                        lines.append(f"{name}_sum{_labels(labels)} {_num(point.sum)}")
                        lines.append(f"{name}_count{_labels(labels)} {point.count}")
                    elif isinstance(point, NumberDataPoint):
                        lines.append(f"{name}{_labels(labels)} {_num(point.value)}")
    return "\n".join(lines) + ("\n" if lines else "")


def _prom_name(name: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name)


def _num(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _labels(labels: Mapping[str, Any]) -> str:
    if not labels:
        return ""
    body = ",".join(
        f'{_prom_name(str(k))}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in labels.items()
    )
    return "{" + body + "}"
