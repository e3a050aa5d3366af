"""gRPC TaxonomyService (transport only). Errors: INVALID_ARGUMENT (invalid document or field,
named), ALREADY_EXISTS (published version), FAILED_PRECONDITION (draft in the wrong state),
NOT_FOUND, PERMISSION_DENIED (not a drafter/approver of that product); all but the two conflicts
are grpcutil's own mapping of the exception."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import grpc
from grpc.aio import ServicerContext

from linesight.common.grpcutil import brief_details
from linesight.common.identity.grpc import current_principal
from linesight.common.pb import taxonomy_pb2, taxonomy_pb2_grpc
from linesight.common.pb.events_pb2 import TaxonomyPublished
from linesight.common.pb.taxonomy_pb2 import (
    DiffTaxonomyRequest,
    DraftRef,
    GetTaxonomyRequest,
    ListDraftsRequest,
    ListDraftsResponse,
    ListTaxonomyVersionsRequest,
    ListTaxonomyVersionsResponse,
    PublishTaxonomyRequest,
    ReviewDraftRequest,
    SaveDraftRequest,
    TaxonomyDocument,
    TaxonomyDraft,
)
from linesight.taxonomy.app.catalogue import DraftRow, DraftStateError, ImmutableVersionError, TaxonomyApp
from linesight.taxonomy.app.diff import TaxonomyDiff, as_json_text

Rpc = TypeVar("Rpc", bound=Callable[..., Awaitable[Any]])


def _conflicts(rpc: Rpc) -> Rpc:
    """The catalogue's two conflicts as their own codes (ALREADY_EXISTS, FAILED_PRECONDITION).

    Every other error takes grpcutil's one mapping in the server interceptor: TaxonomyInvalidError
    (a ValueError) INVALID_ARGUMENT, UnknownTaxonomyError (a KeyError) NOT_FOUND, Forbidden
    PERMISSION_DENIED; as ValueErrors themselves, these two would read INVALID_ARGUMENT there.
    """

    @functools.wraps(rpc)
    async def mapped(self: Any, request: Any, context: ServicerContext) -> Any:
        try:
            return await rpc(self, request, context)
        except (ImmutableVersionError, DraftStateError) as exc:
            code = grpc.StatusCode.ALREADY_EXISTS
            if isinstance(exc, DraftStateError):
                code = grpc.StatusCode.FAILED_PRECONDITION
            await context.abort(code, brief_details(str(exc)))
            raise

    return cast(Rpc, mapped)


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
    """The caller of every write is the token's principal; nothing in a request names them."""

    def __init__(self, taxonomy: TaxonomyApp) -> None:
        self.taxonomy = taxonomy

    @_conflicts
    async def GetTaxonomy(self, request: GetTaxonomyRequest, context: ServicerContext) -> TaxonomyDocument:  # noqa: N802 - gRPC method name
        row = await self.taxonomy.get(request.product, request.version)
        return TaxonomyDocument(
            product=row.product, version=row.version, yaml=row.yaml, previous_version=row.previous_version,
            author=row.author, approved_by=row.approved_by, migration_notes=row.migration_notes,
        )  # fmt: skip

    @_conflicts
    async def PublishTaxonomy(  # noqa: N802
        self, request: PublishTaxonomyRequest, context: ServicerContext
    ) -> TaxonomyPublished:
        # request.approved_by is deliberately ignored: the approver is the caller.
        who = current_principal()
        return await self.taxonomy.publish_directly(
            who, request.yaml, request.product, request.migration_notes
        )

    @_conflicts
    async def ListVersions(  # noqa: N802
        self, request: ListTaxonomyVersionsRequest, context: ServicerContext
    ) -> ListTaxonomyVersionsResponse:
        listed = await self.taxonomy.list_versions(request.product)
        return ListTaxonomyVersionsResponse(versions=listed)

    @_conflicts
    async def CreateDraft(self, request: SaveDraftRequest, context: ServicerContext) -> TaxonomyDraft:  # noqa: N802
        who = current_principal()
        return draft_pb(
            await self.taxonomy.create_draft(who, request.product, request.yaml, request.migration_notes)
        )

    @_conflicts
    async def UpdateDraft(self, request: SaveDraftRequest, context: ServicerContext) -> TaxonomyDraft:  # noqa: N802
        who = current_principal()
        notes = request.migration_notes or None  # empty keeps the draft's notes
        return draft_pb(
            await self.taxonomy.update_draft(who, request.product, request.version, request.yaml, notes)
        )

    @_conflicts
    async def GetDraft(self, request: DraftRef, context: ServicerContext) -> TaxonomyDraft:  # noqa: N802
        return draft_pb(await self.taxonomy.get_draft(request.product, request.version))

    @_conflicts
    async def ListDrafts(self, request: ListDraftsRequest, context: ServicerContext) -> ListDraftsResponse:  # noqa: N802
        rows = await self.taxonomy.list_drafts(request.product)
        return ListDraftsResponse(drafts=[draft_pb(r) for r in rows])

    @_conflicts
    async def SubmitDraft(self, request: DraftRef, context: ServicerContext) -> TaxonomyDraft:  # noqa: N802
        return draft_pb(
            await self.taxonomy.submit_draft(current_principal(), request.product, request.version)
        )

    @_conflicts
    async def ApproveDraft(self, request: ReviewDraftRequest, context: ServicerContext) -> TaxonomyPublished:  # noqa: N802
        who = current_principal()
        return await self.taxonomy.approve_draft(who, request.product, request.version, request.comment)

    @_conflicts
    async def RejectDraft(self, request: ReviewDraftRequest, context: ServicerContext) -> TaxonomyDraft:  # noqa: N802
        who = current_principal()
        return draft_pb(
            await self.taxonomy.reject_draft(who, request.product, request.version, request.comment)
        )

    @_conflicts
    async def DiffVersions(  # noqa: N802
        self, request: DiffTaxonomyRequest, context: ServicerContext
    ) -> taxonomy_pb2.TaxonomyDiff:
        d = await self.taxonomy.diff(request.product, request.from_version, request.to_version)
        return diff_pb(request.product, d)


def register(server: grpc.aio.Server, servicer: TaxonomyServicer) -> None:
    taxonomy_pb2_grpc.add_TaxonomyServiceServicer_to_server(servicer, server)
