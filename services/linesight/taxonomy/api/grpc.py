"""gRPC TaxonomyService (transport only). Errors: INVALID_ARGUMENT (invalid document or field,
named), ALREADY_EXISTS (published version), FAILED_PRECONDITION (draft in the wrong state),
NOT_FOUND, PERMISSION_DENIED (not a drafter/approver of that product)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from linesight.common.identity.grpc import current_principal
from linesight.common.identity.model import Forbidden
from linesight.common.pb import events_pb2, taxonomy_pb2, taxonomy_pb2_grpc
from linesight.taxonomy.app.catalogue import (
    DraftRow,
    DraftStateError,
    ImmutableVersionError,
    TaxonomyApp,
    TaxonomyInvalidError,
    UnknownTaxonomyError,
)
from linesight.taxonomy.app.diff import TaxonomyDiff, as_json_text

T = TypeVar("T")

_CODES: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (ImmutableVersionError, grpc.StatusCode.ALREADY_EXISTS),
    (DraftStateError, grpc.StatusCode.FAILED_PRECONDITION),
    (TaxonomyInvalidError, grpc.StatusCode.INVALID_ARGUMENT),
    (UnknownTaxonomyError, grpc.StatusCode.NOT_FOUND),
    (Forbidden, grpc.StatusCode.PERMISSION_DENIED),
)


async def _call(context: grpc.aio.ServicerContext, work: Callable[[], Awaitable[T]]) -> T:
    try:
        return await work()
    except tuple(e for e, _ in _CODES) as exc:
        code = next(c for e, c in _CODES if isinstance(exc, e))
        message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        await context.abort(code, message)
        raise


def draft_pb(row: DraftRow) -> taxonomy_pb2.TaxonomyDraft:
    return taxonomy_pb2.TaxonomyDraft(
        product=row.product, version=row.version, yaml=row.yaml, state=row.state, author=row.author,
        submitted_by=row.submitted_by, review_comment=row.review_comment,
        migration_notes=row.migration_notes, base_version=row.base_version,
    )  # fmt: skip


def diff_pb(product: str, d: TaxonomyDiff) -> taxonomy_pb2.TaxonomyDiff:
    out = taxonomy_pb2.TaxonomyDiff(
        product=product, from_version=d.from_version, to_version=d.to_version,
        added_classes=d.added_classes, removed_classes=d.removed_classes,
        redefined_classes=d.redefined_classes, rule_changed_classes=d.rule_changed_classes,
    )  # fmt: skip
    for c in d.changes:
        out.changes.add(
            path=c.path,
            change=c.change,
            old_json=as_json_text(c.old),
            new_json=as_json_text(c.new),
            class_name=c.class_name,
            category=c.category,
        )
    return out


class TaxonomyServicer(taxonomy_pb2_grpc.TaxonomyServiceServicer):
    def __init__(self, taxonomy: TaxonomyApp) -> None:
        self.taxonomy = taxonomy

    async def GetTaxonomy(  # noqa: N802 - gRPC method name
        self, request: taxonomy_pb2.GetTaxonomyRequest, context: grpc.aio.ServicerContext
    ) -> taxonomy_pb2.TaxonomyDocument:
        row = await _call(context, lambda: self.taxonomy.get(request.product, request.version))
        return taxonomy_pb2.TaxonomyDocument(
            product=row.product, version=row.version, yaml=row.yaml, previous_version=row.previous_version,
            author=row.author, approved_by=row.approved_by, migration_notes=row.migration_notes,
        )  # fmt: skip

    async def PublishTaxonomy(  # noqa: N802
        self, request: taxonomy_pb2.PublishTaxonomyRequest, context: grpc.aio.ServicerContext
    ) -> events_pb2.TaxonomyPublished:
        # request.approved_by is deliberately ignored: the approver is the caller.
        who = current_principal()
        return await _call(context, lambda: self.taxonomy.publish_directly(
            who, request.yaml, request.product, request.migration_notes))  # fmt: skip

    async def ListVersions(  # noqa: N802
        self, request: taxonomy_pb2.ListTaxonomyVersionsRequest, context: grpc.aio.ServicerContext
    ) -> taxonomy_pb2.ListTaxonomyVersionsResponse:
        listed = await _call(context, lambda: self.taxonomy.list_versions(request.product))
        return taxonomy_pb2.ListTaxonomyVersionsResponse(versions=listed)

    async def CreateDraft(  # noqa: N802
        self, request: taxonomy_pb2.SaveDraftRequest, context: grpc.aio.ServicerContext
    ) -> taxonomy_pb2.TaxonomyDraft:
        who = current_principal()
        return draft_pb(await _call(context, lambda: self.taxonomy.create_draft(
            who, request.product, request.yaml, request.migration_notes)))  # fmt: skip

    async def UpdateDraft(  # noqa: N802
        self, request: taxonomy_pb2.SaveDraftRequest, context: grpc.aio.ServicerContext
    ) -> taxonomy_pb2.TaxonomyDraft:
        who = current_principal()  # empty migration_notes keeps the draft's notes
        notes = request.migration_notes or None
        return draft_pb(await _call(context, lambda: self.taxonomy.update_draft(
            who, request.product, request.version, request.yaml, notes)))  # fmt: skip

    async def GetDraft(  # noqa: N802
        self, request: taxonomy_pb2.DraftRef, context: grpc.aio.ServicerContext
    ) -> taxonomy_pb2.TaxonomyDraft:
        return draft_pb(
            await _call(context, lambda: self.taxonomy.get_draft(request.product, request.version))
        )

    async def ListDrafts(  # noqa: N802
        self, request: taxonomy_pb2.ListDraftsRequest, context: grpc.aio.ServicerContext
    ) -> taxonomy_pb2.ListDraftsResponse:
        rows = await _call(context, lambda: self.taxonomy.list_drafts(request.product))
        return taxonomy_pb2.ListDraftsResponse(drafts=[draft_pb(r) for r in rows])

    async def SubmitDraft(  # noqa: N802
        self, request: taxonomy_pb2.DraftRef, context: grpc.aio.ServicerContext
    ) -> taxonomy_pb2.TaxonomyDraft:
        who = current_principal()
        return draft_pb(await _call(context, lambda: self.taxonomy.submit_draft(
            who, request.product, request.version)))  # fmt: skip

    async def ApproveDraft(  # noqa: N802
        self, request: taxonomy_pb2.ReviewDraftRequest, context: grpc.aio.ServicerContext
    ) -> events_pb2.TaxonomyPublished:
        who = current_principal()
        return await _call(context, lambda: self.taxonomy.approve_draft(
            who, request.product, request.version, request.comment))  # fmt: skip

    async def RejectDraft(  # noqa: N802
        self, request: taxonomy_pb2.ReviewDraftRequest, context: grpc.aio.ServicerContext
    ) -> taxonomy_pb2.TaxonomyDraft:
        who = current_principal()
        return draft_pb(await _call(context, lambda: self.taxonomy.reject_draft(
            who, request.product, request.version, request.comment)))  # fmt: skip

    async def DiffVersions(  # noqa: N802
        self, request: taxonomy_pb2.DiffTaxonomyRequest, context: grpc.aio.ServicerContext
    ) -> taxonomy_pb2.TaxonomyDiff:
        d = await _call(context, lambda: self.taxonomy.diff(
            request.product, request.from_version, request.to_version))  # fmt: skip
        return diff_pb(request.product, d)


def register(server: grpc.aio.Server, servicer: TaxonomyServicer) -> None:
    taxonomy_pb2_grpc.add_TaxonomyServiceServicer_to_server(servicer, server)
