"""What the labeling service does: record every inspection result once, route doubtful ones (and
an audit sample of confident ones) to human queues, run the two-pass label workflow with claims,
QA decisions and operator overrides, and keep a hash-chained audit trail of every step.

Delivery from the bus is at-least-once, so recording is idempotent on (frame_id, model_version):
a redelivered result never double-counts. Events this service emits carry deterministic event
ids, so a retried publish is de-duplicated by JetStream. Each write publishes *before* its
transaction commits and appends its audit record inside that transaction: if the bus or the
database refuses, nothing is recorded and the caller retries (bus redelivery, or a re-submit).
Who acted always comes from the authenticated Principal; each step checks the caller's roles
on the frame's plant and product (roles.py).
"""

from __future__ import annotations

import hashlib
import logging
import math
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from google.protobuf.timestamp_pb2 import Timestamp

from linesight.common import subjects
from linesight.common.audit import AuditEntry, AuditLog
from linesight.common.bus import PayloadTooLarge, check_fits
from linesight.common.enums import enum_value, enum_word, enum_words
from linesight.common.events import new_meta
from linesight.common.identity import Forbidden, Principal
from linesight.common.limits import check_name, check_text
from linesight.common.pb import common_pb2, events_pb2
from linesight.common.ports import ConnectionSource, EventPublisher
from linesight.labeling.app import roles
from linesight.labeling.app.agreement import AgreementFigures, agreement, disagreement_rates, pass_agreement
from linesight.labeling.app.config import QUEUES, LabelingConfig
from linesight.labeling.store import ledger, workflow
from linesight.labeling.store.ledger import LedgerRow, LedgerStats, QueueItem, ResultRow, ReviewEntry
from linesight.labeling.store.workflow import FrameLabel, NewLabel, Sample, SampleLabel, TaxonomyRow

log = logging.getLogger(__name__)

PRODUCER = "labeling"
GOOD = "good"
QUEUE_REVIEW, QUEUE_AUDIT, QUEUE_DISPUTE, QUEUE_RELABEL = QUEUES

# Workflow states of a frame (SubmitLabelResponse.state).
OPEN = "open"
FIRST_PASS = "first_pass"
DISPUTED = "disputed"
CONFIRMED = "confirmed"
FINAL_STATES = workflow.FINAL_STATES
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


class InvalidLabelError(ValueError):
    """A step the workflow does not allow in the frame's state (already final, not yet labeled...)."""


class ConflictError(RuntimeError):
    """Someone else got there first: the item is claimed, assigned to another person, or the label
    changed since the caller read it. Nothing was written; re-read and retry."""


class FrameNotFoundError(KeyError):
    """No result for this frame is in the ledger."""

    def __str__(self) -> str:
        return f"no result for frame {self.args[0]!r}" if self.args else "unknown frame"


class FieldError(ValueError):
    """A request field is invalid; `field` names it (`label`, `correction.severity`, ...)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


class NotFoundError(KeyError):
    """No such label or sample."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not found"


# Review reasons this service assigns, in the words a reviewer reads; the engine's own reasons
# ("low confidence pass", ...) are already words and are shown as they are.
REASON_WORDS = {
    "ERROR": "the inspection failed",
    "REVIEW": "the model asked for a human look",
    "NO_VERDICT": "the model gave no verdict",
    "LOW_CONFIDENCE": "the model is not sure of its call",
    "ANOMALY_ONLY": "looks unusual but matches no known defect class",
    "AUDIT_FLAGGED": "the image-quality audit flagged the frame",
    "AUDIT_SAMPLE_PASS": "random audit of an automatic pass",
    "AUDIT_SAMPLE_REJECT": "random audit of an automatic reject",
    "UNCERTAIN": "the call sits close to the model's operating point",
    "NOVEL": "unlike anything the model was trained on",
    "DISAGREEMENT": "the defect classifier and the anomaly score disagree",
    "REPEATED_FRAME": "the camera delivered the same image again",
    "MANUAL": "added by a reviewer",
    "OPERATOR_OVERRIDE": "a line operator overrode the machine verdict",
    "REVIEWER_DISAGREEMENT": "the reviewer rejected the first label",
    "TAXONOMY_CHANGED": "the class definition changed since this label",
}


def reason_words(reason: str) -> str:
    """A queue reason as plain words (`LOW_CONFIDENCE` -> `the model is not sure of its call`)."""
    return REASON_WORDS.get(reason, reason)


@dataclass(frozen=True)
class ReviewPolicy:
    """Which results a human must look at: review/error verdicts and low-confidence calls."""

    min_confidence: float = 0.6

    def reason(self, result: events_pb2.InspectionResult) -> str:
        """Why this result needs review, or '' when it can stand on its own."""
        if result.verdict == common_pb2.VERDICT_ERROR:
            return "ERROR"
        if result.verdict == common_pb2.VERDICT_REVIEW:
            return result.review_reason or "REVIEW"
        if result.verdict == common_pb2.VERDICT_UNSPECIFIED:
            return "NO_VERDICT"
        if result.confidence < self.min_confidence:
            return "LOW_CONFIDENCE"
        return ""

    @staticmethod
    def priority(result: events_pb2.InspectionResult) -> int:
        """Errors and severe calls first: a reviewer's time goes where escapes cost most."""
        if result.verdict == common_pb2.VERDICT_ERROR:
            return 10
        return int(result.severity) + (1 if result.disposition == common_pb2.DISPOSITION_ESCALATE else 0)


def routed_reason(result: events_pb2.InspectionResult) -> tuple[str, str]:
    """(queue, reason) for an automatic call inference routed to a person for learning
    (`route_reason`); ('', '') when it did not, or its station's rate cap held it back."""
    route = result.route_reason
    automatic = result.verdict in (common_pb2.VERDICT_PASS, common_pb2.VERDICT_DEFECT)
    if not route or result.route_capped or not automatic:
        return "", ""
    if route == "audit":
        sample = "AUDIT_SAMPLE_PASS" if result.verdict == common_pb2.VERDICT_PASS else "AUDIT_SAMPLE_REJECT"
        return QUEUE_AUDIT, sample
    return QUEUE_REVIEW, route.upper()[:64]


@dataclass(frozen=True)
class AuditSampler:
    """Picks a configurable share of automatic passes and rejects per station for a human re-check.

    The pick is sha256(seed, frame id) < share: deterministic (a redelivery or a replay samples the
    same frames, and a test can reproduce it) yet uncorrelated with time, part or station order.
    """

    share: float
    by_station: dict[str, float] = field(default_factory=dict)
    seed: str = "linesight"

    def reason(self, result: events_pb2.InspectionResult) -> str:
        """AUDIT_SAMPLE_PASS / AUDIT_SAMPLE_REJECT when this automatic call is sampled, else ''."""
        if result.verdict == common_pb2.VERDICT_PASS:
            reason = "AUDIT_SAMPLE_PASS"
        elif result.verdict == common_pb2.VERDICT_DEFECT:
            reason = "AUDIT_SAMPLE_REJECT"
        else:
            return ""
        share = self.by_station.get(result.capture.station.station, self.share)
        digest = hashlib.sha256(f"{self.seed}:{result.frame_id}".encode()).digest()
        return reason if int.from_bytes(digest[:8], "big") / 2**64 < share else ""


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


@dataclass(frozen=True)
class RecordOutcome:
    recorded: bool  # False: a redelivery of something already in the ledger
    queued: bool  # entered a queue now
    queue: str  # which queue ('' when none)


@dataclass(frozen=True)
class Outcome:
    state: str
    label_id: int
    version: int


@dataclass(frozen=True)
class QueueStat:
    queue: str
    depth: int
    oldest_age_s: float
    capacity_per_shift: int
    over_capacity: bool
    claimed: int


def to_ledger_row(result: events_pb2.InspectionResult) -> LedgerRow:
    cap = result.capture
    captured_at = cap.captured_at.ToDatetime(tzinfo=UTC) if cap.HasField("captured_at") else None
    return LedgerRow(
        frame_id=result.frame_id,
        model_version=result.model_version,
        event_id=result.meta.event_id,
        plant=cap.station.plant,
        line=cap.station.line,
        station=cap.station.station,
        part_id=cap.part_id,
        verdict=enum_word(common_pb2.Verdict, result.verdict) or "unspecified",
        defect_class=result.defect_class,
        severity=enum_word(common_pb2.Severity, result.severity),
        confidence=result.confidence,
        anomaly_score=result.anomaly_score,
        disposition=enum_word(common_pb2.Disposition, result.disposition),
        taxonomy_version=result.taxonomy_version,
        review_reason=result.review_reason,
        error=result.error,
        image_bucket=result.image.bucket,
        image_key=result.image.key,
        heatmap_bucket=result.heatmap.bucket,
        heatmap_key=result.heatmap.key,
        latency_ms=result.latency_ms,
        shadow=result.shadow,
        captured_at=captured_at,
        payload=result.SerializeToString(),
    )


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


class LabelingApp:
    """The labeling use cases over its database schema and the bus."""

    def __init__(
        self,
        db: ConnectionSource,
        bus: EventPublisher,
        *,
        plant: str,
        product: str = "default",
        trail: AuditLog,
        config: LabelingConfig | None = None,
    ) -> None:
        self.db = db
        self.trail = trail  # reads of the audit trail (writes go through the use cases' transactions)
        self.bus = bus
        self.plant = plant
        self.product = product
        self.config = config or LabelingConfig()
        self.policy = ReviewPolicy(self.config.min_confidence)
        self.sampler = AuditSampler(
            self.config.audit_share, dict(self.config.audit_share_by_station), self.config.audit_seed
        )
        self.last_queue_stats: list[QueueStat] = []  # read by the metrics callbacks
        self.last_agreement: dict[str, AgreementFigures] = {}

    # ---- results -------------------------------------------------------------------------

    async def record_result(self, result: events_pb2.InspectionResult) -> RecordOutcome:
        """Append a result to the ledger and queue it when the policy or the audit sample says so.

        Raises ValueError for a result that can never be recorded (no frame id); database and
        bus errors propagate so the bus redelivers (the insert is idempotent).
        """
        if not result.frame_id:
            raise ValueError("InspectionResult without frame_id")
        row = to_ledger_row(result)
        queue, reason, priority = QUEUE_REVIEW, "", self.policy.priority(result)
        if not result.shadow:
            reason = self.policy.reason(result)
            if not reason:
                queue, reason = routed_reason(result)  # inference's selection, within its caps
                priority = 1
            if not reason and not result.route_capped:
                queue, reason, priority = QUEUE_AUDIT, self.sampler.reason(result), 1
        product = result.capture.extra.get("product") or self.product
        async with self.db.connection() as conn, conn.transaction():
            recorded = await ledger.insert_result(conn, row)
            queued = False
            if reason:
                queued = await ledger.enqueue_review(
                    conn, result.frame_id, result.model_version, queue, reason, priority, product
                )
                if recorded or queued:
                    # Also on a redelivery whose first attempt failed to publish: the event id
                    # is deterministic, so JetStream drops a repeat.
                    await self._publish_review(
                        result.capture.station, result.frame_id, queue, reason, priority, product
                    )
        return RecordOutcome(recorded=recorded, queued=queued, queue=queue if reason else "")

    async def _publish_review(
        self,
        station: common_pb2.StationRef,
        frame_id: str,
        queue: str,
        reason: str,
        priority: int,
        product: str,
        round_no: int = 1,
        assigned_to: str = "",
    ) -> None:
        meta = new_meta(PRODUCER, correlation_id=frame_id)
        meta.event_id = f"review:{queue}:{frame_id}" + (f":{round_no}" if round_no > 1 else "")
        if assigned_to:
            meta.event_id += f":assigned:{assigned_to}"
        event = events_pb2.ReviewRequested(
            meta=meta,
            frame_id=frame_id,
            queue=queue,
            reason=reason,
            priority=priority,
            station=station,
            product=product,
            assigned_to=assigned_to,
        )
        subject = subjects.station_subject(
            station.plant or self.plant,
            station.line or "unknown",
            station.station or "unknown",
            subjects.REVIEW_REQUESTED,
        )
        await self.bus.publish(subject, event)

    async def list_results(
        self, *, limit: int = 100, verdict: str = "", station: str = ""
    ) -> list[ResultRow]:
        async with self.db.connection() as conn:
            return await ledger.list_results(
                conn, limit=min(max(limit, 1), 1000), verdict=verdict, station=station
            )

    async def review_queue(self, *, queue: str = "", frame_id: str = "", limit: int = 100) -> list[QueueItem]:
        async with self.db.connection() as conn:
            return await ledger.list_review_queue(
                conn, queue=queue, frame_id=frame_id, limit=min(max(limit, 1), 1000)
            )

    async def latest_result(self, frame_id: str) -> LedgerRow | None:
        """The frame's newest non-shadow inspection result (the UI shows its regions and scores)."""
        async with self.db.connection() as conn:
            return await ledger.latest_result(conn, frame_id)

    async def stats(self) -> LedgerStats:
        async with self.db.connection() as conn:
            return await ledger.stats(conn)

    async def frame_labels(self, frame_id: str) -> list[FrameLabel]:
        async with self.db.connection() as conn:
            return await workflow.labels_for(conn, frame_id)

    # ---- taxonomy ------------------------------------------------------------------------

    async def on_taxonomy(self, row: TaxonomyRow) -> list[str]:
        """Keep the product's latest taxonomy; put confirmed labels of the classes whose definition
        changed (made under another version) on the relabel queue. Returns the frames requeued."""
        async with self.db.connection() as conn, conn.transaction():
            await workflow.put_taxonomy(conn, row)
            requeued = []
            if row.changed_classes:
                requeued = await workflow.queue_for_relabel(
                    conn, row.product, row.changed_classes, row.version
                )
            for entry in requeued:
                result = await ledger.latest_result(conn, entry.frame_id)
                station = common_pb2.StationRef(
                    plant=result.plant if result else self.plant,
                    line=result.line if result else "",
                    station=result.station if result else "",
                )
                await self._publish_review(
                    station, entry.frame_id, QUEUE_RELABEL, "TAXONOMY_CHANGED", 2, row.product, entry.round
                )
            await workflow.audit(
                conn,
                AuditEntry(
                    f"service:{PRODUCER}",
                    PRODUCER,
                    "service",
                    "taxonomy.received",
                    "taxonomy",
                    row.product,
                    new_value={
                        "version": row.version,
                        "changed_classes": row.changed_classes,
                        "relabel": [e.frame_id for e in requeued],
                    },
                ),
            )
        return [e.frame_id for e in requeued]

    async def taxonomy(self, product: str) -> TaxonomyRow | None:
        async with self.db.connection() as conn:
            return await workflow.get_taxonomy(conn, product)

    @staticmethod
    async def _check_class(conn: Any, product: str, text: str, field_name: str) -> tuple[str, TaxonomyRow]:
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

    async def _validate(
        self, conn: Any, product: str, body: LabelInput, prefix: str = ""
    ) -> tuple[NewLabel, str]:
        """The label as stored, and the taxonomy version it is made under; FieldError naming the field."""
        label, tax = await self._check_class(conn, product, body.label, prefix + "label")
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
        stored = NewLabel(
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
        return stored, tax.version

    # ---- claims ------------------------------------------------------------------------------

    def _states_for(self, principal: Principal) -> list[str]:
        held = principal.roles_at(self.plant, None)
        states = []
        if held & roles.ROLES[roles.LABEL]:
            states.append(OPEN)
        if held & roles.ROLES[roles.REVIEW]:
            states.append(FIRST_PASS)
        if held & roles.ROLES[roles.DECIDE]:
            states.append(DISPUTED)
        return states

    def _products(self, principal: Principal) -> list[str] | None:
        """Products the caller labels on this plant; None = every product (a `*` grant)."""
        grants = [
            g for g in principal.grants if g.covers(self.plant, None) and g.role in roles.ROLES[roles.CLAIM]
        ]
        if any(g.product == "*" for g in grants):
            return None
        return sorted({g.product for g in grants})

    async def claim(self, principal: Principal, *, queue: str = "", frame_id: str = "") -> QueueItem | None:
        """Claim the next item of `queue` this caller can work on (None: nothing to do), or a given
        frame (ConflictError when someone else holds it). The claim lasts `lease_s`; when it runs
        out the item returns to the queue."""
        roles.acting_role(principal, roles.CLAIM, self.plant, None)
        async with self.db.connection() as conn, conn.transaction():
            if frame_id:
                entry = await self._entry(conn, frame_id)
                roles.acting_role(principal, roles.CLAIM, self.plant, entry.product or self.product)
                self._check_free(entry, principal)
                await workflow.set_claim(conn, frame_id, principal.subject, self.config.lease_s)
            else:
                if queue not in QUEUES:
                    raise FieldError("queue", f"unknown queue {queue!r}; one of {list(QUEUES)}")
                found = await workflow.next_claimable(
                    conn, queue, principal.subject, self._states_for(principal), self._products(principal)
                )
                if found is None:
                    return None
                frame_id = found
                await workflow.set_claim(conn, frame_id, principal.subject, self.config.lease_s)
        async with self.db.connection() as conn:
            items = await ledger.list_review_queue(conn, frame_id=frame_id, limit=1)
        return items[0] if items else None

    async def release(self, principal: Principal, frame_id: str) -> None:
        """Give a claimed item back; only its holder can (a QA owner too, for someone who left)."""
        async with self.db.connection() as conn, conn.transaction():
            entry = await self._entry(conn, frame_id)
            product = entry.product or self.product
            if entry.claimed_by != principal.subject:
                roles.acting_role(principal, roles.ASSIGN, self.plant, product)
            await workflow.clear_claim(conn, frame_id)

    async def assign(self, principal: Principal, frame_id: str, assignee: str, client: str = "") -> None:
        """Reserve an item for one person (subject); only they can claim or work it until reassigned."""
        assignee = check_name(assignee.strip(), "assignee")
        async with self.db.connection() as conn, conn.transaction():
            entry = await self._entry(conn, frame_id)
            role = roles.acting_role(principal, roles.ASSIGN, self.plant, entry.product or self.product)
            if entry.state not in ledger.OPEN_STATES:
                raise InvalidLabelError(f"frame {frame_id} is {entry.state}; only open items are assigned")
            await workflow.assign(conn, frame_id, assignee)
            result = await ledger.latest_result(conn, frame_id)
            station = common_pb2.StationRef(
                plant=result.plant if result else self.plant,
                line=result.line if result else "",
                station=result.station if result else "",
            )
            await self._publish_review(
                station,
                frame_id,
                entry.queue,
                entry.reason,
                entry.priority,
                entry.product or self.product,
                entry.round,
                assigned_to=assignee,
            )
            await workflow.audit(
                conn,
                AuditEntry.by(
                    principal,
                    role,
                    "queue.assign",
                    "frame",
                    frame_id,
                    old_value={"assigned_to": entry.assigned_to},
                    new_value={"assigned_to": assignee},
                    client=client,
                ),
            )

    async def _entry(self, conn: Any, frame_id: str) -> ReviewEntry:
        entry = await workflow.lock_entry(conn, frame_id)
        if entry is None:
            if await ledger.latest_result(conn, frame_id) is None:
                raise FrameNotFoundError(frame_id)
            raise InvalidLabelError(f"frame {frame_id} is on no queue")
        return entry

    @staticmethod
    def _check_free(entry: ReviewEntry, principal: Principal) -> None:
        now = datetime.now(UTC)
        if (
            entry.claimed_by
            and entry.claimed_by != principal.subject
            and entry.claim_expires_at is not None
            and entry.claim_expires_at > now
        ):
            raise ConflictError(
                f"frame {entry.frame_id} is claimed by someone else until "
                f"{entry.claim_expires_at.isoformat()}"
            )
        if entry.assigned_to and entry.assigned_to != principal.subject:
            raise ConflictError(f"frame {entry.frame_id} is assigned to {entry.assigned_to}")

    # ---- the two passes ------------------------------------------------------------------------

    async def submit_label(
        self, principal: Principal, frame_id: str, body: LabelInput, client: str = ""
    ) -> Outcome:
        """Pass 1: the caller's label of a frame that nobody has labeled in this round."""
        async with self.db.connection() as conn, conn.transaction():
            result = await ledger.latest_result(conn, frame_id)
            if result is None:
                raise FrameNotFoundError(frame_id)
            entry = await workflow.lock_entry(conn, frame_id)
            if entry is None:
                # A frame nobody queued (e.g. a missed defect spotted on the results page).
                await ledger.enqueue_review(
                    conn, frame_id, result.model_version, QUEUE_REVIEW, "MANUAL", 0, self.product
                )
                entry = await self._entry(conn, frame_id)
            product = entry.product or self.product
            role = roles.acting_role(principal, roles.LABEL, result.plant or self.plant, product)
            if entry.state != OPEN:
                raise InvalidLabelError(f"frame {frame_id} is {entry.state}; a first pass needs an open item")
            self._check_free(entry, principal)
            new, _ = await self._validate(conn, product, body)
            new = _as(new, frame_id, entry.round, "label", principal, role)
            self._check_fits(result, entry, new, principal.name, "label")
            stored = await workflow.insert_label(conn, new)
            await ledger.set_review_state(conn, frame_id, FIRST_PASS, entry.queue)
            await workflow.audit(
                conn,
                AuditEntry.by(
                    principal,
                    role,
                    "label.submit",
                    "frame",
                    frame_id,
                    old_value={"state": entry.state},
                    new_value=_label_json(stored),
                    client=client,
                ),
            )
        return Outcome(FIRST_PASS, stored.id, stored.version)

    async def edit_label(
        self, principal: Principal, label_id: int, expected_version: int, body: LabelInput, client: str = ""
    ) -> Outcome:
        """Change one's own first pass before it is reviewed. Optimistic: `expected_version` is the
        version the caller read; a concurrent edit that won first makes this one a ConflictError."""
        async with self.db.connection() as conn, conn.transaction():
            current = await workflow.get_label(conn, label_id)
            if current is None:
                raise NotFoundError(f"no label {label_id}")
            entry = await self._entry(conn, current.frame_id)
            product = entry.product or self.product
            role = roles.acting_role(principal, roles.LABEL, self.plant, product)
            if current.author != principal.subject:
                raise Forbidden(f"{principal.name} may edit only their own labels")
            if (
                current.kind not in ("label", "override")
                or entry.state != FIRST_PASS
                or current.round != entry.round
            ):
                raise InvalidLabelError(f"label {label_id} was already reviewed; it can no longer change")
            new, _ = await self._validate(conn, product, body)
            result = await ledger.latest_result(conn, current.frame_id)
            if result is not None:
                labeled = _as(new, current.frame_id, current.round, current.kind, principal, role)
                self._check_fits(result, entry, labeled, principal.name, "label")
            updated = await workflow.update_label(conn, label_id, expected_version, new)
            if updated is None:
                raise ConflictError(
                    f"label {label_id} changed since version {expected_version} (now {current.version}); "
                    "reload it and apply the edit again"
                )
            await workflow.audit(
                conn,
                AuditEntry.by(
                    principal,
                    role,
                    "label.edit",
                    "label",
                    str(label_id),
                    old_value=_label_json(current),
                    new_value=_label_json(updated),
                    client=client,
                ),
            )
        return Outcome(FIRST_PASS, updated.id, updated.version)

    async def review(
        self,
        principal: Principal,
        frame_id: str,
        *,
        accept: bool,
        reason: str = "",
        correction: LabelInput | None = None,
        client: str = "",
    ) -> Outcome:
        """Pass 2 by someone other than the first labeler: accept (the label is confirmed and goes
        to training) or reject with a reason and a corrected label (the frame goes to the product's
        QA owner as a dispute)."""
        async with self.db.connection() as conn, conn.transaction():
            result = await ledger.latest_result(conn, frame_id)
            if result is None:
                raise FrameNotFoundError(frame_id)
            entry = await self._entry(conn, frame_id)
            product = entry.product or self.product
            role = roles.acting_role(principal, roles.REVIEW, result.plant or self.plant, product)
            if entry.state != FIRST_PASS:
                raise InvalidLabelError(f"frame {frame_id} is {entry.state}; a review needs a first pass")
            first = _first_pass(await workflow.labels_for(conn, frame_id, entry.round))
            if first.author == principal.subject:
                raise Forbidden(f"{principal.name} labeled this frame; the second pass needs another person")
            self._check_free(entry, principal)
            reason = check_text(reason.strip(), "reason")
            if accept:
                stored = await workflow.insert_label(
                    conn,
                    NewLabel(
                        frame_id,
                        entry.round,
                        "review",
                        first.label,
                        first.severity,
                        first.boxes,
                        first.polygons,
                        first.ambiguous,
                        first.ambiguity_reason,
                        "",
                        principal.subject,
                        principal.name,
                        role,
                        first.taxonomy_version,
                        accepted=True,
                        reason=reason,
                    ),
                )
                await self._publish_label(result, entry, first, reviewer=principal.name, final=first)
                await workflow.confirm(conn, frame_id, first.label, first.taxonomy_version)
                state = CONFIRMED
            else:
                if not reason:
                    raise FieldError("reason", "required when rejecting a label")
                if correction is None:
                    raise FieldError("correction", "a rejection carries the corrected label")
                new, _ = await self._validate(conn, product, correction, "correction.")
                new = _as(
                    new, frame_id, entry.round, "review", principal, role, accepted=False, reason=reason
                )
                self._check_fits(result, entry, new, principal.name, "correction.label")
                stored = await workflow.insert_label(conn, new)
                await ledger.set_review_state(conn, frame_id, DISPUTED, QUEUE_DISPUTE)
                station = common_pb2.StationRef(plant=result.plant, line=result.line, station=result.station)
                await self._publish_review(
                    station, frame_id, QUEUE_DISPUTE, "REVIEWER_DISAGREEMENT", 5, product, entry.round
                )
                state = DISPUTED
            await workflow.audit(
                conn,
                AuditEntry.by(
                    principal,
                    role,
                    "label.review",
                    "frame",
                    frame_id,
                    old_value=_label_json(first),
                    new_value={**_label_json(stored), "state": state},
                    reason=reason,
                    client=client,
                ),
            )
        return Outcome(state, stored.id, stored.version)

    async def decide(
        self,
        principal: Principal,
        frame_id: str,
        decision: LabelInput,
        *,
        reason: str,
        taxonomy_draft_needed: bool = False,
        client: str = "",
    ) -> Outcome:
        """The product's QA owner settles a dispute; the decision is final and goes to training.
        `taxonomy_draft_needed` records that the disagreement came from the definitions themselves."""
        async with self.db.connection() as conn, conn.transaction():
            result = await ledger.latest_result(conn, frame_id)
            if result is None:
                raise FrameNotFoundError(frame_id)
            entry = await self._entry(conn, frame_id)
            product = entry.product or self.product
            role = roles.acting_role(principal, roles.DECIDE, result.plant or self.plant, product)
            if entry.state != DISPUTED:
                raise InvalidLabelError(f"frame {frame_id} is {entry.state}; only a dispute takes a decision")
            self._check_free(entry, principal)
            reason = check_text(reason.strip(), "reason")
            if not reason:
                raise FieldError("reason", "a decision states its reason")
            new, _ = await self._validate(conn, product, decision, "decision.")
            stored = await workflow.insert_label(
                conn, _as(new, frame_id, entry.round, "decision", principal, role, reason=reason)
            )
            labels = await workflow.labels_for(conn, frame_id, entry.round)
            first = _first_pass(labels)
            review = next(x for x in labels if x.kind == "review")
            await self._publish_label(
                result, entry, first, reviewer=review.author_name, final=stored, decided_by=principal.name
            )
            await workflow.confirm(conn, frame_id, stored.label, stored.taxonomy_version)
            await workflow.audit(
                conn,
                AuditEntry.by(
                    principal,
                    role,
                    "dispute.decide",
                    "frame",
                    frame_id,
                    old_value={"first_pass": _label_json(first), "review": _label_json(review)},
                    new_value={**_label_json(stored), "taxonomy_draft_needed": taxonomy_draft_needed},
                    reason=reason,
                    client=client,
                ),
            )
        return Outcome(CONFIRMED, stored.id, stored.version)

    async def override(
        self, principal: Principal, frame_id: str, body: LabelInput, *, reason: str, client: str = ""
    ) -> Outcome:
        """A line operator overrules the machine's verdict. The override is captured as a first-pass
        label with its provenance (who, station, when, what the machine said); a reviewer still
        confirms it before it reaches training."""
        async with self.db.connection() as conn, conn.transaction():
            result = await ledger.latest_result(conn, frame_id)
            if result is None:
                raise FrameNotFoundError(frame_id)
            reason = check_text(reason.strip(), "reason")
            if not reason:
                raise FieldError("reason", "an override states its reason")
            entry = await workflow.lock_entry(conn, frame_id)
            if entry is None:
                await ledger.enqueue_review(
                    conn, frame_id, result.model_version, QUEUE_REVIEW, "OPERATOR_OVERRIDE", 6, self.product
                )
                entry = await self._entry(conn, frame_id)
            product = entry.product or self.product
            role = roles.acting_role(principal, roles.OVERRIDE, result.plant or self.plant, product)
            if entry.state != OPEN:
                raise InvalidLabelError(
                    f"frame {frame_id} is {entry.state}; its label is already being decided"
                )
            new, _ = await self._validate(conn, product, body)
            provenance = {
                "operator": principal.name,
                "operator_subject": principal.subject,
                "station": {"plant": result.plant, "line": result.line, "station": result.station},
                "at": datetime.now(UTC).isoformat(),
                "original_verdict": result.verdict,
                "original_class": result.defect_class,
                "model_version": result.model_version,
            }
            new = _as(
                new, frame_id, entry.round, "override", principal, role, reason=reason, provenance=provenance
            )
            self._check_fits(result, entry, new, principal.name, "label")
            stored = await workflow.insert_label(conn, new)
            await ledger.set_review_state(conn, frame_id, FIRST_PASS, entry.queue)
            await workflow.audit(
                conn,
                AuditEntry.by(
                    principal,
                    role,
                    "verdict.override",
                    "frame",
                    frame_id,
                    old_value={"verdict": result.verdict, "class": result.defect_class},
                    new_value=_label_json(stored),
                    reason=reason,
                    client=client,
                ),
            )
        return Outcome(FIRST_PASS, stored.id, stored.version)

    async def _publish_label(
        self,
        result: LedgerRow,
        entry: ReviewEntry,
        first: FrameLabel,
        *,
        reviewer: str,
        final: FrameLabel,
        decided_by: str = "",
    ) -> None:
        """LabelSubmitted for a confirmed label: the only way a label reaches training."""
        event = _label_event(
            result,
            entry,
            first,
            reviewer=reviewer,
            final=final,
            decided_by=decided_by,
            default_product=self.product,
        )
        await self.bus.publish(
            subjects.plant_subject(result.plant or self.plant, subjects.LABEL_SUBMITTED), event
        )

    def _check_fits(
        self, result: LedgerRow, entry: ReviewEntry, label: NewLabel, reviewer: str, field_name: str
    ) -> None:
        """FieldError unless the LabelSubmitted that confirming `label` publishes fits the bus.

        Checked before the label is stored: a label that committed but could never be published
        would block its frame's confirmation for good.
        """
        event = _label_event(
            result, entry, label, reviewer=reviewer, final=label, default_product=self.product
        )
        try:
            check_fits(self.bus, event)
        except PayloadTooLarge as exc:
            raise FieldError(field_name, f"too large to publish: {exc}") from exc

    # ---- queues ---------------------------------------------------------------------------------

    async def queue_stats(self) -> list[QueueStat]:
        """Depth, age of the oldest item and capacity per queue (every queue, empty ones included)."""
        async with self.db.connection() as conn:
            depths = {d.queue: d for d in await workflow.queue_depths(conn)}
        now = datetime.now(UTC)
        stats = []
        for q in QUEUES:
            d = depths.get(q)
            depth = d.depth if d else 0
            capacity = self.config.capacity_per_shift.get(q, 0)
            stats.append(
                QueueStat(
                    queue=q,
                    depth=depth,
                    oldest_age_s=(now - d.oldest).total_seconds() if d and d.oldest else 0.0,
                    capacity_per_shift=capacity,
                    over_capacity=capacity > 0 and depth > capacity,
                    claimed=d.claimed if d else 0,
                )
            )
        self.last_queue_stats = stats
        return stats

    # ---- agreement ------------------------------------------------------------------------------

    async def create_sample(
        self, principal: Principal, name: str, frame_ids: Sequence[str], client: str = ""
    ) -> Sample:
        """A shared sample: the same frames for several people to label independently."""
        name = check_name(name.strip(), "name")
        if not name:
            raise FieldError("name", "required")
        frames = list(dict.fromkeys(check_name(f, "frame_ids") for f in frame_ids))
        if len(frames) < 2:
            raise FieldError("frame_ids", "a shared sample needs at least two frames")
        role = roles.acting_role(principal, roles.SAMPLE_CREATE, self.plant, self.product)
        sample = Sample(
            uuid.uuid4().hex[:16], name, self.product, frames, principal.subject, datetime.now(UTC)
        )
        async with self.db.connection() as conn, conn.transaction():
            missing = sorted(set(frames) - await workflow.existing_frames(conn, frames))
            if missing:
                raise FrameNotFoundError(missing[0])
            await workflow.insert_sample(conn, sample)
            await workflow.audit(
                conn,
                AuditEntry.by(
                    principal,
                    role,
                    "sample.create",
                    "sample",
                    sample.id,
                    new_value={"name": name, "frames": frames},
                    client=client,
                ),
            )
        return sample

    async def sample_label(
        self, principal: Principal, sample_id: str, frame_id: str, label: str, client: str = ""
    ) -> None:
        """One rater's independent label of a sample frame (once: agreement needs first opinions)."""
        async with self.db.connection() as conn, conn.transaction():
            sample = await workflow.get_sample(conn, sample_id)
            if sample is None:
                raise NotFoundError(f"no sample {sample_id!r}")
            if frame_id not in sample.frames:
                raise FrameNotFoundError(frame_id)
            role = roles.acting_role(principal, roles.SAMPLE_LABEL, self.plant, sample.product)
            checked, _ = await self._check_class(conn, sample.product, label, "label")
            added = await workflow.add_sample_label(
                conn, sample_id, SampleLabel(frame_id, principal.subject, principal.name, checked)
            )
            if not added:
                raise ConflictError(f"{principal.name} already labeled {frame_id} in sample {sample_id}")
            await workflow.audit(
                conn,
                AuditEntry.by(
                    principal,
                    role,
                    "sample.label",
                    "sample",
                    sample_id,
                    new_value={"frame_id": frame_id, "label": checked},
                    client=client,
                ),
            )

    async def agreement(self, sample_id: str) -> AgreementFigures:
        """Kappa figures of a shared sample plus the two-pass workflow's disagreement breakdown."""
        async with self.db.connection() as conn:
            sample = await workflow.get_sample(conn, sample_id)
            if sample is None:
                raise NotFoundError(f"no sample {sample_id!r}")
            rows = await workflow.sample_labels(conn, sample_id)
            outcomes = await workflow.review_outcomes(conn)
        by_rater: dict[str, dict[str, str]] = {}
        for r in rows:
            by_rater.setdefault(r.rater_name or r.rater, {})[r.frame_id] = r.label
        try:
            figures = agreement(by_rater)
        except ValueError as exc:
            raise InvalidLabelError(f"sample {sample_id}: {exc}") from exc
        figures = AgreementFigures(
            **{
                **asdict(figures),
                "pairs": figures.pairs,
                "disagreement_by_class": disagreement_rates((o.first_label, o.accepted) for o in outcomes),
                "disagreement_by_station": disagreement_rates((o.station, o.accepted) for o in outcomes),
                "disagreement_by_part": disagreement_rates((o.part_id, o.accepted) for o in outcomes),
                "disagreement_by_reviewer": disagreement_rates((o.reviewer, o.accepted) for o in outcomes),
            }
        )
        self.last_agreement[sample_id] = figures
        return figures

    async def workflow_agreement(self) -> AgreementFigures:
        """Labeler/reviewer agreement of the two-pass workflow (kappa per pair and per class,
        confusion pairs) with its disagreement breakdown: what the agreement page shows without a
        shared sample. InvalidLabelError while nothing has been reviewed yet."""
        async with self.db.connection() as conn:
            outcomes = await workflow.review_outcomes(conn)
        try:
            figures = pass_agreement(
                (o.labeler, o.first_label, o.reviewer, o.corrected_label) for o in outcomes
            )
        except ValueError as exc:
            raise InvalidLabelError(f"two-pass agreement: {exc}") from exc
        return AgreementFigures(
            **{
                **asdict(figures),
                "pairs": figures.pairs,
                "disagreement_by_class": disagreement_rates((o.first_label, o.accepted) for o in outcomes),
                "disagreement_by_station": disagreement_rates((o.station, o.accepted) for o in outcomes),
                "disagreement_by_part": disagreement_rates((o.part_id, o.accepted) for o in outcomes),
                "disagreement_by_reviewer": disagreement_rates((o.reviewer, o.accepted) for o in outcomes),
            }
        )

    # ---- audit ------------------------------------------------------------------------------------

    async def record(self, entry: AuditEntry) -> None:
        """An audit record of something that happened outside a labeling transaction (logins)."""
        async with self.db.connection() as conn, conn.transaction():
            await workflow.audit(conn, entry)


def _first_pass(labels: Sequence[FrameLabel]) -> FrameLabel:
    first = next((x for x in labels if x.kind in ("label", "override")), None)
    if first is None:
        raise InvalidLabelError("no first-pass label in this round")
    return first


def _label_event(
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


def _as(
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
    return NewLabel(
        **{
            **asdict(new),
            "frame_id": frame_id,
            "round": round_no,
            "kind": kind,
            "author": principal.subject,
            "author_name": principal.name,
            "role": str(role),
            "accepted": accepted,
            "reason": reason,
            "provenance": provenance,
        }
    )


def _label_json(label: FrameLabel) -> dict[str, Any]:
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
