"""Queues and claims: who works which item. A claim holds an item for `lease_s` (then it returns
to the queue); an assignment reserves it for one person; queue stats say how deep each queue is
against one shift's capacity."""

from __future__ import annotations

from datetime import UTC, datetime

from linesight.common.identity import Principal
from linesight.common.limits import check_name
from linesight.labeling.app import roles
from linesight.labeling.app.config import QUEUES
from linesight.labeling.app.core import DISPUTED, FIRST_PASS, OPEN, LabelingCore, QueueStat
from linesight.labeling.app.errors import FieldError, InvalidLabelError
from linesight.labeling.app.events import review_requested
from linesight.labeling.store import ledger, workflow
from linesight.labeling.store.ledger import QueueItem


class ClaimUseCases(LabelingCore):
    def _states_for(self, principal: Principal) -> list[str]:
        """The workflow states whose items the caller's roles on this plant can work."""
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
                roles.acting_role(principal, roles.CLAIM, self.plant, self._product_of(entry))
                self._check_free(entry, principal)
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
            if entry.claimed_by != principal.subject:
                roles.acting_role(principal, roles.ASSIGN, self.plant, self._product_of(entry))
            await workflow.clear_claim(conn, frame_id)

    async def assign(self, principal: Principal, frame_id: str, assignee: str, client: str = "") -> None:
        """Reserve an item for one person (subject); only they can claim or work it until reassigned."""
        assignee = check_name(assignee.strip(), "assignee")
        async with self.db.connection() as conn, conn.transaction():
            entry = await self._entry(conn, frame_id)
            product = self._product_of(entry)
            role = roles.acting_role(principal, roles.ASSIGN, self.plant, product)
            if entry.state not in ledger.OPEN_STATES:
                raise InvalidLabelError(f"frame {frame_id} is {entry.state}; only open items are assigned")
            await workflow.assign(conn, frame_id, assignee)
            station = self._station(await ledger.latest_result(conn, frame_id))
            await self._publish_review(
                review_requested(
                    station,
                    frame_id,
                    entry.queue,
                    entry.reason,
                    entry.priority,
                    product,
                    entry.round,
                    assigned_to=assignee,
                )
            )
            await self._audit(
                conn,
                principal,
                role,
                "queue.assign",
                ("frame", frame_id),
                old={"assigned_to": entry.assigned_to},
                new={"assigned_to": assignee},
                client=client,
            )

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
