"""The events labeling publishes, with deterministic event ids so a retried publish is dropped by
JetStream: ReviewRequested (a frame entered a queue, or was assigned) and LabelSubmitted (a
confirmed label: the only way a label reaches training)."""

from __future__ import annotations

from datetime import datetime
from typing import cast

from google.protobuf.timestamp_pb2 import Timestamp

from linesight.common.enums import enum_value
from linesight.common.events import new_meta
from linesight.common.pb import common_pb2, events_pb2
from linesight.labeling.app.routing import QUEUE_RELABEL
from linesight.labeling.store.ledger import LedgerRow, ReviewEntry
from linesight.labeling.store.workflow import FrameLabel, NewLabel

PRODUCER = "labeling"


def review_requested(
    station: common_pb2.StationRef,
    frame_id: str,
    queue: str,
    reason: str,
    priority: int,
    product: str,
    round_no: int = 1,
    assigned_to: str = "",
) -> events_pb2.ReviewRequested:
    """A frame on `queue` (round `round_no`), or reserved for `assigned_to`."""
    meta = new_meta(PRODUCER, correlation_id=frame_id)
    meta.event_id = f"review:{queue}:{frame_id}" + (f":{round_no}" if round_no > 1 else "")
    if assigned_to:
        meta.event_id += f":assigned:{assigned_to}"
    return events_pb2.ReviewRequested(
        meta=meta,
        frame_id=frame_id,
        queue=queue,
        reason=reason,
        priority=priority,
        station=station,
        product=product,
        assigned_to=assigned_to,
    )


def label_submitted(
    result: LedgerRow,
    entry: ReviewEntry,
    first: FrameLabel | NewLabel,
    *,
    reviewer: str,
    final: FrameLabel | NewLabel,
    decided_by: str = "",
    default_product: str,
) -> events_pb2.LabelSubmitted:
    """The LabelSubmitted of a confirmed label: `first` is the first pass, `final` what was decided."""
    frame_id = result.frame_id
    original = events_pb2.InspectionResult.FromString(bytes(result.payload))
    meta = new_meta(PRODUCER, correlation_id=frame_id)
    meta.event_id = f"label:{frame_id}:{entry.round}"
    source = (
        "override" if first.kind == "override" else "relabel" if entry.queue == QUEUE_RELABEL else "review"
    )
    event = events_pb2.LabelSubmitted(
        meta=meta,
        frame_id=frame_id,
        label=final.label,
        severity=cast(
            common_pb2.Severity, enum_value(common_pb2.Severity, final.severity) if final.severity else 0
        ),
        regions=[common_pb2.Region(**b) for b in final.boxes],
        polygons=[
            events_pb2.LabelPolygon(
                x=[p[0] for p in poly["points"]],
                y=[p[1] for p in poly["points"]],
                named_region=poly["named_region"],
            )
            for poly in final.polygons
        ],
        taxonomy_version=final.taxonomy_version,
        labeler=first.author_name,
        reviewer=reviewer,
        source=source,
        station=original.capture.station,
        image=original.image,
        ambiguous=final.ambiguous,
        ambiguity_reason=final.ambiguity_reason,
        product=entry.product or default_product,
        decided_by=decided_by,
        part_id=original.capture.part_id,
        model_version=original.model_version,
        round=entry.round,
    )
    if first.kind == "override" and first.provenance:
        p = first.provenance
        at = Timestamp()
        at.FromDatetime(datetime.fromisoformat(p["at"]))
        event.provenance.CopyFrom(
            events_pb2.LabelProvenance(
                operator=p["operator"],
                station=common_pb2.StationRef(**p["station"]),
                at=at,
                original_verdict=p["original_verdict"],
                original_class=p["original_class"],
                model_version=p["model_version"],
            )
        )
    return event
