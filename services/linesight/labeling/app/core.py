"""What every labeling use case stands on: the database and the bus, the plant and default
product, the frame's queue entry and latest result, who may work an item, and the three writes
each step ends with (its events, its label check against the bus limit, its audit record).

The use cases themselves are grouped by responsibility (results.py, claims.py, first_pass.py,
second_pass.py, samples.py) and assembled into one LabelingApp in labeling.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from linesight.common import subjects
from linesight.common.audit import AuditEntry, AuditLog
from linesight.common.bus import PayloadTooLarge, check_fits
from linesight.common.identity import Principal
from linesight.common.limits import check_text
from linesight.common.pb import common_pb2, events_pb2
from linesight.common.ports import ConnectionSource, EventPublisher
from linesight.labeling.app import roles
from linesight.labeling.app.agreement import AgreementFigures
from linesight.labeling.app.config import LabelingConfig
from linesight.labeling.app.errors import ConflictError, FieldError, FrameNotFoundError, InvalidLabelError
from linesight.labeling.app.events import label_submitted
from linesight.labeling.app.routing import QUEUE_REVIEW, AuditSampler, ReviewPolicy
from linesight.labeling.store import ledger, workflow
from linesight.labeling.store.ledger import LedgerRow, ReviewEntry
from linesight.labeling.store.workflow import FrameLabel, NewLabel

# Workflow states of a frame (SubmitLabelResponse.state).
OPEN = "open"
FIRST_PASS = "first_pass"
DISPUTED = "disputed"
CONFIRMED = "confirmed"
FINAL_STATES = workflow.FINAL_STATES


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


def limited(limit: int) -> int:
    """A page size a listing honours: 1 to 1000."""
    return min(max(limit, 1), 1000)


def required_reason(reason: str, why: str) -> str:
    """The stated reason, bounded; FieldError `reason` (saying `why`) when there is none."""
    reason = check_text(reason.strip(), "reason")
    if not reason:
        raise FieldError("reason", why)
    return reason


class LabelingCore:
    """The labeling app's state and the steps its use cases share."""

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

    # ---- the frame ----------------------------------------------------------------------------

    @staticmethod
    async def _result(conn: Any, frame_id: str) -> LedgerRow:
        """The frame's newest result; FrameNotFoundError when the ledger has none."""
        result = await ledger.latest_result(conn, frame_id)
        if result is None:
            raise FrameNotFoundError(frame_id)
        return result

    async def _entry(self, conn: Any, frame_id: str) -> ReviewEntry:
        """The frame's queue entry, row-locked; FrameNotFoundError or InvalidLabelError without one."""
        entry = await workflow.lock_entry(conn, frame_id)
        if entry is None:
            if await ledger.latest_result(conn, frame_id) is None:
                raise FrameNotFoundError(frame_id)
            raise InvalidLabelError(f"frame {frame_id} is on no queue")
        return entry

    async def _entry_or_enqueue(
        self, conn: Any, result: LedgerRow, reason: str, priority: int
    ) -> ReviewEntry:
        """The frame's queue entry, row-locked; a frame nobody queued (a missed defect spotted on
        the results page, an operator's override) enters the review queue for `reason` first."""
        entry = await workflow.lock_entry(conn, result.frame_id)
        if entry is not None:
            return entry
        await ledger.enqueue_review(
            conn, result.frame_id, result.model_version, QUEUE_REVIEW, reason, priority, self.product
        )
        return await self._entry(conn, result.frame_id)

    def _product_of(self, entry: ReviewEntry) -> str:
        return entry.product or self.product

    def _acting(
        self,
        principal: Principal,
        action: str,
        result: LedgerRow,
        entry: ReviewEntry,
        state: str,
        refusal: str,
    ) -> tuple[str, str]:
        """(product, role) of `principal` running `action` on the frame: Forbidden without a role
        for it on the frame's plant and product, InvalidLabelError (`refusal`) unless the frame is
        in `state`."""
        product = self._product_of(entry)
        role = roles.acting_role(principal, action, result.plant or self.plant, product)
        if entry.state != state:
            raise InvalidLabelError(f"frame {entry.frame_id} is {entry.state}; {refusal}")
        return product, role

    def _station(self, result: LedgerRow | None) -> common_pb2.StationRef:
        """Where the frame was taken (this plant, station unknown, when the ledger has no result)."""
        return common_pb2.StationRef(
            plant=result.plant if result else self.plant,
            line=result.line if result else "",
            station=result.station if result else "",
        )

    @staticmethod
    def _check_free(entry: ReviewEntry, principal: Principal) -> None:
        """ConflictError when someone else holds the item's claim or it is assigned to another."""
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

    # ---- what each step writes besides its rows -------------------------------------------------

    async def _publish_review(self, event: events_pb2.ReviewRequested) -> None:
        """ReviewRequested on the subject of the frame's station (see events.review_requested)."""
        station = event.station
        subject = subjects.station_subject(
            station.plant or self.plant,
            station.line or "unknown",
            station.station or "unknown",
            subjects.REVIEW_REQUESTED,
        )
        await self.bus.publish(subject, event)

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
        event = label_submitted(
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
        event = label_submitted(
            result, entry, label, reviewer=reviewer, final=label, default_product=self.product
        )
        try:
            check_fits(self.bus, event)
        except PayloadTooLarge as exc:
            raise FieldError(field_name, f"too large to publish: {exc}") from exc

    @staticmethod
    async def _audit(
        conn: Any,
        principal: Principal,
        role: str,
        action: str,
        target: tuple[str, str],
        *,
        old: Any = None,
        new: Any = None,
        reason: str = "",
        client: str = "",
    ) -> None:
        """The step's audit record, in its transaction; `target` is (object kind, object id)."""
        kind, object_id = target
        entry = AuditEntry.by(
            principal,
            role,
            action,
            kind,
            object_id,
            old_value=old,
            new_value=new,
            reason=reason,
            client=client,
        )
        await workflow.audit(conn, entry)
