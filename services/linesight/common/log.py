"""Structured logs: one JSON object per line on stderr, with service name and trace id.

Collectors (Loki, Fluent Bit, `kubectl logs | jq`) parse them without regexes; the trace id lets
a reader jump from a log line to the trace of the frame it is about.
"""

from __future__ import annotations

import json as jsonlib
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace

# Attributes every LogRecord has; anything else came in through `extra=` and is logged as a field.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName", "color_message"}
_LEVELS = {"CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"}


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "service", "logger", "msg", "trace_id"?, "span_id"?, "exc"?, **extra}`."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            entry["trace_id"] = format(span_context.trace_id, "032x")
            entry["span_id"] = format(span_context.span_id, "016x")
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key not in entry:
                entry[key] = value
        return jsonlib.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Human-readable lines for a terminal (`LINESIGHT_LOG_JSON=false`)."""

    def __init__(self, service: str) -> None:
        super().__init__(f"%(asctime)s %(levelname)-7s {service} %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            line += f" trace={format(span_context.trace_id, '032x')}"
        return line


def configure_logging(service: str, level: str = "INFO", json: bool = True) -> None:
    """Route every logger (ours, uvicorn's, nats') through one stderr handler; idempotent."""
    name = level.upper() if isinstance(level, str) else ""
    if name not in _LEVELS:
        raise ValueError(f"unknown log level {level!r}; use one of {', '.join(sorted(_LEVELS))}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if json else TextFormatter(service))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(name)
    for noisy in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(noisy)
        lg.handlers.clear()
        lg.propagate = True
    # Access logs per /healthz probe add nothing but volume.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
