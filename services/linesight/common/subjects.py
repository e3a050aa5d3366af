"""NATS subject scheme and JetStream stream layout (docs/messaging.md).

Station events: `linesight.<plant>.<line>.<station>.<event>`; plant events: `linesight.<plant>.<event>`.
Dead letters keep the original subject: `linesight.dlq.<original subject>`.

JetStream refuses two streams whose subjects can match the same message, so each stream lists
its events literally (`linesight.*.*.*.frame.captured`) and the DLQ stream lists one pattern per
event rather than `linesight.dlq.>` (which would overlap `linesight.*.label.submitted` at plant
"dlq"). Station and plant events therefore must never share an event name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

ROOT = "linesight"
DLQ_PREFIX = "linesight.dlq"

# Station events: linesight.<plant>.<line>.<station>.<event>
FRAME_CAPTURED = "frame.captured"
INSPECTION_RESULT = "inspection.result"
INSPECTION_SHADOW = "inspection.shadow"
REVIEW_REQUESTED = "review.requested"
CAPTURE_ALARM = "capture.alarm"
MODEL_RECALIBRATED = "model.recalibrated"

# Plant events: linesight.<plant>.<event>
DRIFT_ALERT = "drift.alert"
LABEL_SUBMITTED = "label.submitted"
MODEL_PUBLISHED = "model.published"
TAXONOMY_PUBLISHED = "taxonomy.published"
DATASET_CREATED = "dataset.created"
TRAINING_PROGRESS = "training.progress"
MES_DISPATCHED = "mes.dispatched"

STATION_EVENTS: tuple[str, ...] = (
    FRAME_CAPTURED,
    INSPECTION_RESULT,
    INSPECTION_SHADOW,
    REVIEW_REQUESTED,
    CAPTURE_ALARM,
    MODEL_RECALIBRATED,
)
PLANT_EVENTS: tuple[str, ...] = (
    DRIFT_ALERT,
    LABEL_SUBMITTED,
    MODEL_PUBLISHED,
    TAXONOMY_PUBLISHED,
    DATASET_CREATED,
    TRAINING_PROGRESS,
    MES_DISPATCHED,
)

# A token is what sits between two dots: letters, digits, '-' and '_' only.
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")
_EVENT = re.compile(r"^[a-z0-9_-]+\.[a-z0-9_-]+$")
_RESERVED_PLANTS = {"dlq"}

_MiB = 1024 * 1024
_GiB = 1024 * _MiB
_DAY = 24 * 3600.0


def validate_token(kind: str, value: str) -> str:
    """Reject a plant/line/station name that would change the subject's shape (dots, wildcards)."""
    if not isinstance(value, str) or not _TOKEN.match(value):
        raise ValueError(
            f"invalid {kind} {value!r}: use letters, digits, '-' or '_' only "
            "(no dots, spaces, '*' or '>'; they would change the NATS subject)"
        )
    if kind == "plant" and value.lower() in _RESERVED_PLANTS:
        raise ValueError(f"invalid plant {value!r}: '{value}' is reserved for dead letters")
    return value


def _check_event(event: str, allowed: tuple[str, ...], scope: str) -> None:
    if not _EVENT.match(event):
        raise ValueError(f"invalid event {event!r}: expected '<noun>.<verb>' like 'frame.captured'")
    if event not in allowed:
        raise ValueError(
            f"event {event!r} is not a {scope} event; known {scope} events: {', '.join(allowed)} "
            "(add new events to linesight.common.subjects and a stream in STREAMS)"
        )


def station_subject(plant: str, line: str, station: str, event: str) -> str:
    """Subject of an event that belongs to one camera station."""
    validate_token("plant", plant)
    validate_token("line", line)
    validate_token("station", station)
    _check_event(event, STATION_EVENTS, "station")
    return f"{ROOT}.{plant}.{line}.{station}.{event}"


def plant_subject(plant: str, event: str) -> str:
    """Subject of an event that concerns the whole plant (labels, models, taxonomy, MES)."""
    validate_token("plant", plant)
    _check_event(event, PLANT_EVENTS, "plant")
    return f"{ROOT}.{plant}.{event}"


def station_pattern(event: str, plant: str = "*", line: str = "*", station: str = "*") -> str:
    """Filter subject for consumers: every station (default) or a narrower set."""
    for kind, value in (("plant", plant), ("line", line), ("station", station)):
        if value != "*":
            validate_token(kind, value)
    _check_event(event, STATION_EVENTS, "station")
    return f"{ROOT}.{plant}.{line}.{station}.{event}"


def plant_pattern(event: str, plant: str = "*") -> str:
    """Filter subject for consumers of a plant event: every plant (default) or one."""
    if plant != "*":
        validate_token("plant", plant)
    _check_event(event, PLANT_EVENTS, "plant")
    return f"{ROOT}.{plant}.{event}"


def station_scopes(stations: Sequence[str] = ()) -> list[tuple[str, str]]:
    """(line, station) of each "line/station" or bare "station" entry ("*" for any), never
    overlapping (JetStream refuses overlapping filters on one consumer: a bare station covers its
    line entries); [("*", "*")] for none, i.e. every station."""
    entries = [e.strip("/") for e in stations if e.strip("/")]
    if not entries:
        return [("*", "*")]
    bare = {e for e in entries if "/" not in e}
    out: set[tuple[str, str]] = set()
    for entry in entries:
        if "/" not in entry:
            out.add(("*", entry))
            continue
        line, station = entry.split("/", 1)
        if station not in bare:  # else covered by the bare entry
            out.add((line, station))
    return sorted(out)


def station_filters(event: str, plant: str, stations: Sequence[str] = ()) -> list[str]:
    """Consumer filters of `event` for exactly `stations` of `plant` (see station_scopes)."""
    return sorted(
        station_pattern(event, plant=plant, line=line, station=station)
        for line, station in station_scopes(stations)
    )


def dlq_subject(original: str) -> str:
    """Dead-letter subject for a message that arrived on `original`."""
    if not original.startswith(ROOT + ".") or original.startswith(DLQ_PREFIX + "."):
        raise ValueError(f"cannot dead-letter {original!r}: only {ROOT}.* subjects (not DLQ ones)")
    return f"{DLQ_PREFIX}.{original}"


def durable_name(service: str, event: str) -> str:
    """Consumer name `<service>-<event with dashes>`, e.g. `inference-frame-captured`."""
    validate_token("service", service)
    if not _EVENT.match(event):
        raise ValueError(f"invalid event {event!r}: expected '<noun>.<verb>'")
    return f"{service}-{event.replace('.', '-')}"


@dataclass(frozen=True)
class StreamSpec:
    """One JetStream stream: an event family with its own retention limits."""

    name: str
    subjects: tuple[str, ...]
    max_age_s: float
    max_bytes: int
    duplicate_window_s: float = 120.0
    description: str = ""
    events: tuple[str, ...] = field(default=())

    @property
    def max_age(self) -> float:
        return self.max_age_s

    @property
    def duplicate_window(self) -> float:
        return self.duplicate_window_s


def _stream(name: str, events: tuple[str, ...], max_age_days: float, max_bytes: int, desc: str) -> StreamSpec:
    subjects = tuple(station_pattern(e) if e in STATION_EVENTS else plant_pattern(e) for e in events)
    return StreamSpec(name, subjects, max_age_days * _DAY, max_bytes, 120.0, desc, events)


def _dlq_subjects() -> tuple[str, ...]:
    return tuple(
        [f"{DLQ_PREFIX}.{ROOT}.*.*.*.{e}" for e in STATION_EVENTS]
        + [f"{DLQ_PREFIX}.{ROOT}.*.{e}" for e in PLANT_EVENTS]
    )


# Descriptions say what a stream holds; who produces and consumes it is generated from the code
# into docs/messaging.md. Frames are only references (images live in S3) but arrive fast: short
# age, bounded size.
STREAMS: list[StreamSpec] = [
    _stream("FRAMES", (FRAME_CAPTURED,), 1, 4 * _GiB, "frame references (images live in S3)"),
    _stream(
        "INSPECTIONS",
        (INSPECTION_RESULT, INSPECTION_SHADOW),
        7,
        8 * _GiB,
        "verdicts (and shadow-model verdicts)",
    ),
    _stream("REVIEWS", (REVIEW_REQUESTED,), 30, 1 * _GiB, "human review queue entries"),
    _stream("LABELS", (LABEL_SUBMITTED,), 365, 4 * _GiB, "confirmed labels"),
    _stream(
        "MODELS",
        (MODEL_PUBLISHED, MODEL_RECALIBRATED),
        365,
        256 * _MiB,
        "model versions and station recalibrations",
    ),
    _stream("TAXONOMY", (TAXONOMY_PUBLISHED,), 365, 256 * _MiB, "published taxonomy versions"),
    _stream(
        "TRAINING",
        (DATASET_CREATED, TRAINING_PROGRESS),
        30,
        512 * _MiB,
        "dataset versions and training-job progress",
    ),
    _stream("MES", (MES_DISPATCHED,), 30, 1 * _GiB, "MES delivery outcomes"),
    _stream("ALERTS", (CAPTURE_ALARM, DRIFT_ALERT), 30, 512 * _MiB, "station alarms and drift alerts"),
    StreamSpec(
        "DLQ",
        _dlq_subjects(),
        30 * _DAY,
        2 * _GiB,
        120.0,
        "dead letters: raw payload + Ls-Dlq-* headers saying why",
    ),
]


def stream_for_subject(subject: str) -> StreamSpec:
    """The stream that stores `subject` (a concrete subject or a consumer filter)."""
    tokens = subject.split(".")
    for spec in STREAMS:
        for pattern in spec.subjects:
            if _matches(pattern.split("."), tokens):
                return spec
    raise ValueError(
        f"no JetStream stream stores {subject!r}: subjects must follow "
        "linesight.<plant>.<line>.<station>.<event> or linesight.<plant>.<event> with a known event "
        "(docs/messaging.md)"
    )


def _matches(pattern: list[str], tokens: list[str]) -> bool:
    """True when a concrete subject or narrower filter `tokens` falls inside `pattern`."""
    if len(pattern) != len(tokens):
        return False
    return all(p == "*" or p == t for p, t in zip(pattern, tokens, strict=True))
