"""Pass 2 and disputes: someone other than the first labeler accepts the label (confirmed: it goes
to training) or rejects it with a corrected one (disputed: the product's QA owner decides, and
that decision is final)."""

from __future__ import annotations

from linesight.common.identity import Forbidden, Principal
from linesight.common.limits import check_text
from linesight.labeling.app import roles
from linesight.labeling.app.core import (
    CONFIRMED,
    DISPUTED,
    FIRST_PASS,
    LabelingCore,
    Outcome,
    required_reason,
)
from linesight.labeling.app.errors import FieldError
from linesight.labeling.app.events import review_requested
from linesight.labeling.app.labels import LabelInput, authored, first_pass, label_json, validate
from linesight.labeling.app.routing import QUEUE_DISPUTE
from linesight.labeling.store import ledger, workflow
from linesight.labeling.store.workflow import NewLabel


class SecondPassUseCases(LabelingCore):
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
            result = await self._result(conn, frame_id)
            entry = await self._entry(conn, frame_id)
            product, role = self._acting(
                principal, roles.REVIEW, result, entry, FIRST_PASS, "a review needs a first pass"
            )
            first = first_pass(await workflow.labels_for(conn, frame_id, entry.round))
            if first.author == principal.subject:
                raise Forbidden(f"{principal.name} labeled this frame; the second pass needs another person")
            self._check_free(entry, principal)
            reason = check_text(reason.strip(), "reason")
            if accept:
                accepted = NewLabel(
                    frame_id=frame_id,
                    round=entry.round,
                    kind="review",
                    label=first.label,
                    severity=first.severity,
                    boxes=first.boxes,
                    polygons=first.polygons,
                    ambiguous=first.ambiguous,
                    ambiguity_reason=first.ambiguity_reason,
                    comment="",
                    author=principal.subject,
                    author_name=principal.name,
                    role=role,
                    taxonomy_version=first.taxonomy_version,
                    accepted=True,
                    reason=reason,
                )
                stored = await workflow.insert_label(conn, accepted)
                await self._publish_label(result, entry, first, reviewer=principal.name, final=first)
                await workflow.confirm(conn, frame_id, first.label, first.taxonomy_version)
                state = CONFIRMED
            else:
                if not reason:
                    raise FieldError("reason", "required when rejecting a label")
                if correction is None:
                    raise FieldError("correction", "a rejection carries the corrected label")
                new = authored(
                    await validate(conn, product, correction, "correction."),
                    frame_id,
                    entry.round,
                    "review",
                    principal,
                    role,
                    accepted=False,
                    reason=reason,
                )
                self._check_fits(result, entry, new, principal.name, "correction.label")
                stored = await workflow.insert_label(conn, new)
                await ledger.set_review_state(conn, frame_id, DISPUTED, QUEUE_DISPUTE)
                await self._publish_review(
                    review_requested(
                        self._station(result),
                        frame_id,
                        QUEUE_DISPUTE,
                        "REVIEWER_DISAGREEMENT",
                        5,
                        product,
                        entry.round,
                    )
                )
                state = DISPUTED
            await self._audit(
                conn,
                principal,
                role,
                "label.review",
                ("frame", frame_id),
                old=label_json(first),
                new={**label_json(stored), "state": state},
                reason=reason,
                client=client,
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
            result = await self._result(conn, frame_id)
            entry = await self._entry(conn, frame_id)
            product, role = self._acting(
                principal, roles.DECIDE, result, entry, DISPUTED, "only a dispute takes a decision"
            )
            self._check_free(entry, principal)
            reason = required_reason(reason, "a decision states its reason")
            new = await validate(conn, product, decision, "decision.")
            stored = await workflow.insert_label(
                conn, authored(new, frame_id, entry.round, "decision", principal, role, reason=reason)
            )
            labels = await workflow.labels_for(conn, frame_id, entry.round)
            first = first_pass(labels)
            review = next(x for x in labels if x.kind == "review")
            await self._publish_label(
                result, entry, first, reviewer=review.author_name, final=stored, decided_by=principal.name
            )
            await workflow.confirm(conn, frame_id, stored.label, stored.taxonomy_version)
            await self._audit(
                conn,
                principal,
                role,
                "dispute.decide",
                ("frame", frame_id),
                old={"first_pass": label_json(first), "review": label_json(review)},
                new={**label_json(stored), "taxonomy_draft_needed": taxonomy_draft_needed},
                reason=reason,
                client=client,
            )
        return Outcome(CONFIRMED, stored.id, stored.version)
