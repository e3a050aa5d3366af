"""Pass 1: a labeler's label of an open frame, its edits until someone reviews it, and a line
operator's override of the machine verdict (a first-pass label with its provenance, which a
reviewer still confirms before it reaches training)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from linesight.common.identity import Forbidden, Principal
from linesight.labeling.app import roles
from linesight.labeling.app.core import FIRST_PASS, OPEN, LabelingCore, Outcome, required_reason
from linesight.labeling.app.errors import ConflictError, InvalidLabelError, NotFoundError
from linesight.labeling.app.labels import FIRST_PASS_KINDS, LabelInput, authored, label_json, validate
from linesight.labeling.store import ledger, workflow
from linesight.labeling.store.ledger import LedgerRow, ReviewEntry
from linesight.labeling.store.workflow import NewLabel


class FirstPassUseCases(LabelingCore):
    async def submit_label(
        self, principal: Principal, frame_id: str, body: LabelInput, client: str = ""
    ) -> Outcome:
        """Pass 1: the caller's label of a frame that nobody has labeled in this round."""
        async with self.db.connection() as conn, conn.transaction():
            result = await self._result(conn, frame_id)
            entry = await self._entry_or_enqueue(conn, result, "MANUAL", 0)
            product, role = self._acting(
                principal, roles.LABEL, result, entry, OPEN, "a first pass needs an open item"
            )
            self._check_free(entry, principal)
            content = await validate(conn, product, body)
            new = authored(content, frame_id, entry.round, "label", principal, role)
            return await self._store_first_pass(
                conn, principal, role, result, entry, new, "label.submit", {"state": entry.state}, client
            )

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
            product = self._product_of(entry)
            role = roles.acting_role(principal, roles.LABEL, self.plant, product)
            if current.author != principal.subject:
                raise Forbidden(f"{principal.name} may edit only their own labels")
            if (
                current.kind not in FIRST_PASS_KINDS
                or entry.state != FIRST_PASS
                or current.round != entry.round
            ):
                raise InvalidLabelError(f"label {label_id} was already reviewed; it can no longer change")
            new = await validate(conn, product, body)
            result = await ledger.latest_result(conn, current.frame_id)
            if result is not None:
                labeled = authored(new, current.frame_id, current.round, current.kind, principal, role)
                self._check_fits(result, entry, labeled, principal.name, "label")
            updated = await workflow.update_label(conn, label_id, expected_version, new)
            if updated is None:
                raise ConflictError(
                    f"label {label_id} changed since version {expected_version} (now {current.version}); "
                    "reload it and apply the edit again"
                )
            await self._audit(
                conn,
                principal,
                role,
                "label.edit",
                ("label", str(label_id)),
                old=label_json(current),
                new=label_json(updated),
                client=client,
            )
        return Outcome(FIRST_PASS, updated.id, updated.version)

    async def override(
        self, principal: Principal, frame_id: str, body: LabelInput, *, reason: str, client: str = ""
    ) -> Outcome:
        """A line operator overrules the machine's verdict. The override is captured as a first-pass
        label with its provenance (who, station, when, what the machine said); a reviewer still
        confirms it before it reaches training."""
        async with self.db.connection() as conn, conn.transaction():
            result = await self._result(conn, frame_id)
            reason = required_reason(reason, "an override states its reason")
            entry = await self._entry_or_enqueue(conn, result, "OPERATOR_OVERRIDE", 6)
            product, role = self._acting(
                principal, roles.OVERRIDE, result, entry, OPEN, "its label is already being decided"
            )
            content = await validate(conn, product, body)
            provenance = {
                "operator": principal.name,
                "operator_subject": principal.subject,
                "station": {"plant": result.plant, "line": result.line, "station": result.station},
                "at": datetime.now(UTC).isoformat(),
                "original_verdict": result.verdict,
                "original_class": result.defect_class,
                "model_version": result.model_version,
            }
            new = authored(
                content,
                frame_id,
                entry.round,
                "override",
                principal,
                role,
                reason=reason,
                provenance=provenance,
            )
            old = {"verdict": result.verdict, "class": result.defect_class}
            return await self._store_first_pass(
                conn, principal, role, result, entry, new, "verdict.override", old, client
            )

    async def _store_first_pass(
        self,
        conn: Any,
        principal: Principal,
        role: str,
        result: LedgerRow,
        entry: ReviewEntry,
        new: NewLabel,
        action: str,
        old: dict[str, Any],
        client: str,
    ) -> Outcome:
        """Store an authored first-pass label (once its LabelSubmitted is known to fit the bus),
        move the frame on to review, and record `action` with the label's reason."""
        self._check_fits(result, entry, new, principal.name, "label")
        stored = await workflow.insert_label(conn, new)
        await ledger.set_review_state(conn, new.frame_id, FIRST_PASS, entry.queue)
        await self._audit(
            conn,
            principal,
            role,
            action,
            ("frame", new.frame_id),
            old=old,
            new=label_json(stored),
            reason=new.reason,
            client=client,
        )
        return Outcome(FIRST_PASS, stored.id, stored.version)
