"""What the taxonomy service does: draft, review, publish, compare and announce defect taxonomies.

Workflow per (product, version): a qa_owner or engineer of the product creates a draft and edits
it; submitting puts it under review (no more edits); the product's qa_owner approves it, which
publishes it, or rejects it back to draft with a reason. `publish_directly` does all of that in
one step for the product's qa_owner. Authors and approvers are the authenticated Principal,
never a request field.

A published version is immutable: publishing the same (product, version) again with identical
content is a no-op that returns the original event; different content is refused
(ImmutableVersionError), and so is a draft of a published version, because labels and model
releases cite the version.

Write order on publish: the YAML goes to the `reports` bucket first (an overwrite with identical
bytes is harmless), then one transaction inserts the version, removes the draft, appends the
audit record and publishes TaxonomyPublished before committing; if the bus or the audit append
fails, nothing is recorded and the caller may retry.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import yaml

from linesight.common import subjects
from linesight.common.audit import AuditEntry
from linesight.common.events import new_meta
from linesight.common.identity.model import Forbidden, Principal, Role
from linesight.common.limits import MAX_TEXT, TextError, check_name, check_text
from linesight.common.pb import common_pb2, events_pb2
from linesight.common.ports import ConnectionSource, EventPublisher
from linesight.taxonomy.app.diff import TaxonomyDiff, diff
from linesight.taxonomy.store import audit, drafts, versions
from linesight.taxonomy.store.drafts import DRAFT, IN_REVIEW, DraftRow
from linesight.taxonomy.store.versions import VersionRow
from linesight.vision.taxonomy import Taxonomy, TaxonomyError

__all__ = [
    "DraftRow",
    "DraftStateError",
    "ImmutableVersionError",
    "TaxonomyApp",
    "TaxonomyInvalidError",
    "UnknownTaxonomyError",
    "VersionRow",
    "parse",
    "validate",
]

log = logging.getLogger(__name__)

PRODUCER = "taxonomy"
BUCKET = "reports"
MAX_DOCUMENT = 256 * 1024  # characters; a plant's taxonomy with galleries is tens of KiB
RESERVED_VERSIONS = frozenset({"latest", "drafts", "diff"})  # HTTP path words
DRAFTERS = frozenset({Role.QA_OWNER, Role.ENGINEER})
SEED = "seed"


class DocumentStore(Protocol):
    def aput_bytes(
        self, bucket: str, key: str, data: bytes, content_type: str = ..., metadata: Any = ...
    ) -> Awaitable[common_pb2.ObjectRef]: ...


class TaxonomyInvalidError(ValueError):
    """The request or the YAML is not valid; the message names the field."""


class ImmutableVersionError(ValueError):
    """This (product, version) is already published (with different content)."""


class DraftStateError(ValueError):
    """The draft is not in the state the operation needs (e.g. editing one under review)."""


class UnknownTaxonomyError(KeyError):
    """No such product, version or draft."""

    def __str__(self) -> str:  # the message itself, not KeyError's quoted repr of it
        return str(self.args[0]) if self.args else "unknown taxonomy"


def parse(text: str, product: str = "") -> Taxonomy:
    """The document as the engine's Taxonomy, with every free-text field bounded."""
    try:
        check_text(text, "yaml", max_len=MAX_DOCUMENT)
        tax = Taxonomy.from_yaml(text, source=f"taxonomy for {product or '?'}")
        check_name(tax.product, "product")
        check_name(tax.version, "version")
        for c in tax.classes:
            check_name(c.name, "classes[].name")
            for key in ("description", "definition", "visible_evidence", "acceptable_variation"):
                check_text(getattr(c, key), f"classes.{c.name}.{key}", max_len=MAX_TEXT)
            for g in c.gallery:
                check_name(g.frame_id, f"classes.{c.name}.gallery[].frame_id")
                check_text(g.note, f"classes.{c.name}.gallery[].note")
        for r in tax.ambiguous_reasons:
            check_name(r.code, "ambiguous.reasons[].code")
            check_text(r.description, f"ambiguous.reasons.{r.code}.description")
    except (TaxonomyError, TextError) as exc:
        raise TaxonomyInvalidError(str(exc)) from exc
    if product and tax.product != product:
        raise TaxonomyInvalidError(f"product: document is for {tax.product!r}, not {product!r}")
    if tax.version in RESERVED_VERSIONS:
        raise TaxonomyInvalidError(f"version: {tax.version!r} is reserved ({sorted(RESERVED_VERSIONS)})")
    return tax


def validate(text: str, product: str = "") -> tuple[str, str, dict[str, Any]]:
    """(product, version, classes by name) of a valid document."""
    tax = parse(text, product)
    return tax.product, tax.version, {c["name"]: c for c in tax.to_dict()["classes"]}


def _notes(value: str, field: str = "migration_notes") -> str:
    try:
        return check_text(value, field).strip()
    except TextError as exc:
        raise TaxonomyInvalidError(str(exc)) from exc


def _key(product: str, version: str) -> tuple[str, str]:
    try:
        return check_name(product, "product"), check_name(version, "version") if version else ""
    except TextError as exc:
        raise TaxonomyInvalidError(str(exc)) from exc


class TaxonomyApp:
    """Taxonomy use cases over the `taxonomy` schema, the reports bucket and the bus."""

    def __init__(
        self, db: ConnectionSource, bus: EventPublisher, store: DocumentStore | None, *, plant: str
    ) -> None:
        self.db = db
        self.bus = bus
        self.store = store
        self.plant = plant

    # -- who may ----------------------------------------------------------------------------
    def _drafter_role(self, who: Principal, product: str) -> Role:
        roles = who.roles_at(self.plant, product) & DRAFTERS
        if not roles:
            raise Forbidden(f"{who.name} may not draft taxonomies of {self.plant}/{product}: needs "
                            "qa_owner or engineer on that product")  # fmt: skip
        return Role.QA_OWNER if Role.QA_OWNER in roles else Role.ENGINEER

    def _approver(self, who: Principal, product: str) -> None:
        if not who.has(Role.QA_OWNER, self.plant, product):
            raise Forbidden(f"{who.name} may not approve taxonomies of {self.plant}/{product}: "
                            "only its qa_owner may")  # fmt: skip

    # -- drafts -----------------------------------------------------------------------------
    async def create_draft(self, who: Principal, product: str, text: str, notes: str = "") -> DraftRow:
        """A new draft for the version named in the document; refused when it exists in any state."""
        product, _ = _key(product, "")
        self._drafter_role(who, product)
        tax = parse(text, product)
        async with self.db.connection() as conn, conn.transaction():
            await versions.lock_product(conn, product)
            if await versions.get(conn, product, tax.version) is not None:
                raise ImmutableVersionError(
                    f"version: {product} {tax.version} is published and immutable; draft a new version"
                )
            latest = await versions.get(conn, product)
            row = DraftRow(
                product=product, version=tax.version, yaml=text, state=DRAFT, author=who.subject,
                migration_notes=_notes(notes), base_version=latest.version if latest else "",
            )  # fmt: skip
            if not await drafts.insert(conn, row):
                raise DraftStateError(f"version: a draft of {product} {tax.version} exists; edit it instead")
        log.info("taxonomy draft %s v%s created by %s", product, tax.version, who.subject)
        return await self.get_draft(product, tax.version)

    async def update_draft(
        self, who: Principal, product: str, version: str, text: str, notes: str | None = None
    ) -> DraftRow:
        """Replace a draft's document (and notes); only while it is a draft, not under review."""
        product, version = _key(product, version)
        self._drafter_role(who, product)
        tax = parse(text, product)
        if tax.version != version:
            raise TaxonomyInvalidError(
                f"version: the document says {tax.version!r} but draft {version!r} is being edited"
            )
        async with self.db.connection() as conn, conn.transaction():
            row = await self._locked_draft(conn, product, version, DRAFT)
            kept = row.migration_notes if notes is None else _notes(notes)
            await drafts.update(conn, replace(row, yaml=text, migration_notes=kept))
        return await self.get_draft(product, version)

    async def submit_draft(self, who: Principal, product: str, version: str) -> DraftRow:
        """draft -> in_review: the document is frozen until approved or rejected."""
        product, version = _key(product, version)
        role = self._drafter_role(who, product)
        async with self.db.connection() as conn, conn.transaction():
            row = await self._locked_draft(conn, product, version, DRAFT)
            await drafts.update(conn, replace(row, state=IN_REVIEW, submitted_by=who.subject))
            await audit.append(conn, AuditEntry.by(
                who, role.value, "taxonomy.submit", "taxonomy", f"{product}:{version}",
                old_value={"state": DRAFT}, new_value={"state": IN_REVIEW},
            ))  # fmt: skip
        return await self.get_draft(product, version)

    async def reject_draft(self, who: Principal, product: str, version: str, comment: str) -> DraftRow:
        """in_review -> draft, with the reason the author sees."""
        product, version = _key(product, version)
        self._approver(who, product)
        reason = _notes(comment, "comment")
        if not reason:
            raise TaxonomyInvalidError("comment: a rejection needs a reason the author can act on")
        async with self.db.connection() as conn, conn.transaction():
            row = await self._locked_draft(conn, product, version, IN_REVIEW)
            await drafts.update(conn, replace(row, state=DRAFT, review_comment=reason))
            await audit.append(conn, AuditEntry.by(
                who, Role.QA_OWNER.value, "taxonomy.reject", "taxonomy", f"{product}:{version}",
                old_value={"state": IN_REVIEW}, new_value={"state": DRAFT}, reason=reason,
            ))  # fmt: skip
        log.info("taxonomy draft %s v%s rejected by %s: %s", product, version, who.subject, reason)
        return await self.get_draft(product, version)

    async def approve_draft(
        self, who: Principal, product: str, version: str, comment: str = ""
    ) -> events_pb2.TaxonomyPublished:
        """in_review -> published (immutable) and announced."""
        product, version = _key(product, version)
        self._approver(who, product)
        reason = _notes(comment, "comment")
        async with self.db.connection() as conn:
            row = await drafts.get(conn, product, version)
        if row is None:
            raise UnknownTaxonomyError(f"no draft {product} {version}")
        if row.state != IN_REVIEW:
            raise DraftStateError(
                f"state: draft {product} {version} is {row.state!r}; submit it for review first"
            )
        return await self._publish(
            row.yaml, product, author=row.author, approver=who, notes=row.migration_notes,
            action="taxonomy.approve", reason=reason, from_draft=True,
        )  # fmt: skip

    async def publish_directly(
        self, who: Principal, text: str, product: str = "", notes: str = ""
    ) -> events_pb2.TaxonomyPublished:
        """Draft, review and approval in one step by the product's qa_owner."""
        tax = parse(text, product)
        self._approver(who, tax.product)
        return await self._publish(text, tax.product, author=who.subject, approver=who,
                                   notes=_notes(notes), action="taxonomy.publish")  # fmt: skip

    async def _locked_draft(self, conn: Any, product: str, version: str, state: str) -> DraftRow:
        row = await drafts.get(conn, product, version, lock=True)
        if row is None:
            raise UnknownTaxonomyError(f"no draft {product} {version}")
        if row.state != state:
            raise DraftStateError(f"state: draft {product} {version} is {row.state!r}, needs {state!r}")
        return row

    async def _publish(
        self, text: str, product: str, *, author: str, approver: Principal | None, notes: str,
        action: str, reason: str = "", from_draft: bool = False,
    ) -> events_pb2.TaxonomyPublished:  # fmt: skip
        tax = parse(text, product)
        version = tax.version
        approved_by = approver.subject if approver else SEED
        digest = hashlib.sha256(text.encode()).hexdigest()
        ref = common_pb2.ObjectRef()
        async with self.db.connection() as conn, conn.transaction():
            await versions.lock_product(conn, product)
            existing = await versions.get(conn, product, version)
            if existing is not None:
                if existing.sha256 != digest:
                    raise ImmutableVersionError(
                        f"version: {product} {version} is already published with different content "
                        f"(approved by {existing.approved_by}); publish it under a new version"
                    )
                return self._event(existing)
            if from_draft:  # the draft must still be under review now that the product is locked
                await self._locked_draft(conn, product, version, IN_REVIEW)
            previous = await versions.get(conn, product)
            old = parse(previous.yaml, product).to_dict() if previous else {"classes": []}
            change = diff(old, tax.to_dict())
            if self.store is not None:
                ref = await self.store.aput_bytes(
                    BUCKET, f"taxonomy/{product}/{version}.yaml", text.encode(), "application/yaml"
                )
            row = VersionRow(
                product=product, version=version, yaml=text, sha256=digest, approved_by=approved_by,
                previous_version=previous.version if previous else "",
                changed_classes=change.changed_classes, document_bucket=ref.bucket,
                document_key=ref.key, author=author, migration_notes=notes,
                added_classes=change.added_classes, removed_classes=change.removed_classes,
                redefined_classes=change.redefined_classes,
                rule_changed_classes=change.rule_changed_classes,
            )  # fmt: skip
            await versions.insert(conn, row)
            await drafts.delete(conn, product, version)
            summary = {"version": version, "previous_version": row.previous_version, "sha256": digest,
                       "relabel_classes": list(change.relabel_classes),
                       "rule_changed_classes": list(change.rule_changed_classes)}  # fmt: skip
            if approver is not None:
                entry = AuditEntry.by(approver, Role.QA_OWNER.value, action, "taxonomy",
                                      f"{product}:{version}", new_value=summary, reason=reason)  # fmt: skip
            else:
                entry = AuditEntry(SEED, SEED, Role.SERVICE.value, action, "taxonomy",
                                   f"{product}:{version}", new_value=summary, reason="bundled")  # fmt: skip
            await audit.append(conn, entry)
            event = self._event(row)
            await self.bus.publish(subjects.plant_subject(self.plant, subjects.TAXONOMY_PUBLISHED), event)
        log.info("taxonomy %s v%s published by %s (relabel: %s, rules: %s)", product, version, approved_by,
                 list(change.relabel_classes), list(change.rule_changed_classes))  # fmt: skip
        return event

    def _event(self, row: VersionRow) -> events_pb2.TaxonomyPublished:
        """The version's event, the same whenever it is rebuilt (a repeated publish answers it)."""
        meta = new_meta(PRODUCER, correlation_id=f"{row.product}:{row.version}")
        meta.event_id = f"taxonomy:{row.product}:{row.version}"
        doc = common_pb2.ObjectRef(bucket=row.document_bucket, key=row.document_key, sha256=row.sha256)
        relabel = sorted({*row.added_classes, *row.removed_classes, *row.redefined_classes})
        return events_pb2.TaxonomyPublished(
            meta=meta, product=row.product, version=row.version, previous_version=row.previous_version,
            document=doc, changed_classes=list(row.changed_classes), approved_by=row.approved_by,
            added_classes=list(row.added_classes), removed_classes=list(row.removed_classes),
            redefined_classes=list(row.redefined_classes),
            rule_changed_classes=list(row.rule_changed_classes), relabel_classes=relabel,
            author=row.author, migration_notes=row.migration_notes, document_yaml=row.yaml,
        )  # fmt: skip

    # -- reads ------------------------------------------------------------------------------
    async def get(self, product: str, version: str = "") -> VersionRow:
        product, version = _key(product, version)
        async with self.db.connection() as conn:
            row = await versions.get(conn, product, version)
        if row is None:
            raise UnknownTaxonomyError(
                f"no taxonomy for product {product!r}" + (f" version {version!r}" if version else "")
            )
        return row

    async def get_draft(self, product: str, version: str) -> DraftRow:
        product, version = _key(product, version)
        async with self.db.connection() as conn:
            row = await drafts.get(conn, product, version)
        if row is None:
            raise UnknownTaxonomyError(f"no draft {product} {version}")
        return row

    async def list_versions(self, product: str) -> list[str]:
        product, _ = _key(product, "")
        async with self.db.connection() as conn:
            return await versions.list_versions(conn, product)

    async def list_drafts(self, product: str) -> list[DraftRow]:
        product, _ = _key(product, "")
        async with self.db.connection() as conn:
            return await drafts.list_for(conn, product)

    async def document(self, product: str, version: str) -> str:
        """A published version's YAML, else a draft's; empty `version` = the latest published."""
        product, version = _key(product, version)
        async with self.db.connection() as conn:
            row = await versions.get(conn, product, version)
            if row is not None:
                return row.yaml
            draft = await drafts.get(conn, product, version) if version else None
        if draft is None:
            raise UnknownTaxonomyError(f"no taxonomy or draft {product} {version or '(latest)'}")
        return draft.yaml

    async def diff(self, product: str, from_version: str, to_version: str = "") -> TaxonomyDiff:
        """Field-by-field difference; either side may be published or a draft."""
        if not from_version:
            raise TaxonomyInvalidError("from_version: required")
        old = parse(await self.document(product, from_version), product).to_dict()
        new = parse(await self.document(product, to_version), product).to_dict()
        return diff(old, new)

    async def seed(self, directory: Path, *, default_product: str = "") -> list[str]:
        """Publish each bundled taxonomy whose product has no version yet; returns what was seeded.

        `default.yaml` is also published under `default_product` (the plant's configured product)
        so a fresh installation has a taxonomy for the product it runs. Per product, not "when the
        catalogue is empty": a catalogue that several installations' services share (or a product
        configured later) still gets its default, and a product with versions is never touched, so
        a restart seeds nothing. Recorded as approved by "seed" in the versions and the audit trail.
        """
        seeded: list[str] = []
        documents = await asyncio.to_thread(
            lambda: [(p.stem, p.read_text(encoding="utf-8")) for p in sorted(directory.glob("*.yaml"))]
        )
        for stem, text in documents:
            texts = [text]
            if stem == "default" and default_product:
                doc = yaml.safe_load(text)
                if doc["product"] != default_product:
                    doc["product"] = default_product
                    texts.append(yaml.safe_dump(doc, sort_keys=False))
            for t in texts:
                tax = parse(t)
                async with self.db.connection() as conn:
                    if await versions.list_versions(conn, tax.product):
                        continue
                event = await self._publish(t, tax.product, author=SEED, approver=None, notes="",
                                            action="taxonomy.seed")  # fmt: skip
                seeded.append(f"{event.product}:{event.version}")
        return seeded
