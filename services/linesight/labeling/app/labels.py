"""What a person says about a frame, checked against the product's taxonomy before it is stored:
the label input (class, severity, boxes, polygons, ambiguity), its validation with errors that
name the field, the stored label with its author, and the label as the audit trail records it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from linesight.common.enums import enum_value, enum_words
from linesight.common.identity import Principal
from linesight.common.limits import check_name, check_text
from linesight.common.pb import common_pb2
from linesight.labeling.app.errors import FieldError, InvalidLabelError
from linesight.labeling.store import workflow
from linesight.labeling.store.workflow import FrameLabel, NewLabel, TaxonomyRow

GOOD = "good"
# Why a labeler marks a label ambiguous; the code says what would resolve it.
AMBIGUITY_REASONS = (
    "borderline_size",
    "unclear_class",
    "image_quality",
    "multiple_defects",
    "not_in_taxonomy",
)
MAX_REGIONS = 100
MAX_POLYGON_POINTS = 1000
FIRST_PASS_KINDS = ("label", "override")


@dataclass(frozen=True)
class Box:
    x_min: int
    y_min: int
    x_max: int
    y_max: int
    named_region: str = ""


@dataclass(frozen=True)
class Polygon:
    points: tuple[tuple[float, float], ...]
    named_region: str = ""


@dataclass(frozen=True)
class LabelInput:
    """What a person says about a frame; validated against the product's taxonomy before storing."""

    label: str
    severity: str = ""
    boxes: tuple[Box, ...] = ()
    polygons: tuple[Polygon, ...] = ()
    ambiguous: bool = False
    ambiguity_reason: str = ""
    comment: str = ""


def _check_box(b: Box, where: str) -> dict[str, Any]:
    if not (0 <= b.x_min < b.x_max and 0 <= b.y_min < b.y_max):
        raise FieldError(where, "a box needs 0 <= x_min < x_max and 0 <= y_min < y_max")
    check_name(b.named_region, f"{where}.named_region")
    return asdict(b)


def _check_polygon(p: Polygon, where: str) -> dict[str, Any]:
    if not 3 <= len(p.points) <= MAX_POLYGON_POINTS:
        raise FieldError(where, f"a polygon needs 3 to {MAX_POLYGON_POINTS} points, got {len(p.points)}")
    if any(not (math.isfinite(x) and math.isfinite(y)) or x < 0 or y < 0 for x, y in p.points):
        raise FieldError(where, "polygon points must be finite, non-negative pixel coordinates")
    check_name(p.named_region, f"{where}.named_region")
    return {"points": [[x, y] for x, y in p.points], "named_region": p.named_region}


async def check_class(conn: Any, product: str, text: str, field_name: str) -> tuple[str, TaxonomyRow]:
    """'good' or a class of the product's latest taxonomy; FieldError naming `field_name`."""
    label = check_name(text.strip(), field_name)
    tax = await workflow.get_taxonomy(conn, product)
    if tax is None:
        raise FieldError(field_name, f"no taxonomy has been published for product {product!r} yet")
    if not label:
        raise FieldError(field_name, "required: 'good' or a class of the product's taxonomy")
    if label != GOOD and label not in tax.classes:
        raise FieldError(
            field_name,
            f"{label!r} is not a class of {product} taxonomy v{tax.version}; "
            f"expected 'good' or one of: {', '.join(tax.classes)}",
        )
    return label, tax


async def validate(conn: Any, product: str, body: LabelInput, prefix: str = "") -> NewLabel:
    """The label as stored (made under the product's latest taxonomy), not yet authored: see
    `authored`. FieldError naming the field, under `prefix` (`correction.`, `decision.`)."""
    label, tax = await check_class(conn, product, body.label, prefix + "label")
    severity = body.severity.strip().lower()
    if severity:
        try:
            enum_value(common_pb2.Severity, severity)
        except ValueError as exc:
            raise FieldError(prefix + "severity", str(exc)) from exc
    elif label != GOOD:
        raise FieldError(
            prefix + "severity", f"required for a defect; one of {enum_words(common_pb2.Severity)}"
        )
    if label == GOOD and (body.boxes or body.polygons or severity):
        raise FieldError(prefix + "label", "a 'good' label has no severity and no regions")
    if len(body.boxes) + len(body.polygons) > MAX_REGIONS:
        raise FieldError(prefix + "regions", f"at most {MAX_REGIONS} regions per label")
    boxes = [_check_box(b, f"{prefix}regions[{i}]") for i, b in enumerate(body.boxes)]
    polygons = [_check_polygon(p, f"{prefix}polygons[{i}]") for i, p in enumerate(body.polygons)]
    reason = body.ambiguity_reason.strip()
    if body.ambiguous and reason not in AMBIGUITY_REASONS:
        raise FieldError(
            prefix + "ambiguity_reason", f"required when ambiguous; one of {list(AMBIGUITY_REASONS)}"
        )
    if not body.ambiguous and reason:
        raise FieldError(prefix + "ambiguity_reason", "only for an ambiguous label")
    comment = check_text(body.comment, prefix + "comment")
    return NewLabel(
        frame_id="",
        round=0,
        kind="",
        label=label,
        severity=severity,
        boxes=boxes,
        polygons=polygons,
        ambiguous=body.ambiguous,
        ambiguity_reason=reason,
        comment=comment,
        author="",
        author_name="",
        role="",
        taxonomy_version=tax.version,
    )


def authored(
    new: NewLabel,
    frame_id: str,
    round_no: int,
    kind: str,
    principal: Principal,
    role: str,
    *,
    accepted: bool | None = None,
    reason: str = "",
    provenance: dict[str, Any] | None = None,
) -> NewLabel:
    """`new`'s content as the `kind` step of `principal` (acting as `role`) on a frame's round."""
    return replace(
        new,
        frame_id=frame_id,
        round=round_no,
        kind=kind,
        author=principal.subject,
        author_name=principal.name,
        role=str(role),
        accepted=accepted,
        reason=reason,
        provenance=provenance,
    )


def first_pass(labels: Sequence[FrameLabel]) -> FrameLabel:
    """The round's first-pass label (a labeler's, or an operator's override)."""
    first = next((x for x in labels if x.kind in FIRST_PASS_KINDS), None)
    if first is None:
        raise InvalidLabelError("no first-pass label in this round")
    return first


def label_json(label: FrameLabel) -> dict[str, Any]:
    """A label as the audit trail records it (content, not bookkeeping)."""
    return {
        "label_id": label.id,
        "kind": label.kind,
        "round": label.round,
        "label": label.label,
        "severity": label.severity,
        "boxes": label.boxes,
        "polygons": label.polygons,
        "ambiguous": label.ambiguous,
        "ambiguity_reason": label.ambiguity_reason,
        "comment": label.comment,
        "accepted": label.accepted,
        "taxonomy_version": label.taxonomy_version,
        "version": label.version,
    }
