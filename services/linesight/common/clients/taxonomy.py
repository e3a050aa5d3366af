"""Client of the TaxonomyService (defect class catalogue per product, versioned, reviewed).

Authors and approvers are whoever the `token` names; nothing in a request can claim otherwise.
"""

from __future__ import annotations

from linesight.common.grpcutil import ServiceClient, TokenSource
from linesight.common.pb import events_pb2, taxonomy_pb2, taxonomy_pb2_grpc


class TaxonomyClient(ServiceClient[taxonomy_pb2_grpc.TaxonomyServiceStub]):
    """Thick client for the taxonomy API."""

    def __init__(self, target: str, *, timeout_s: float = 10.0, token: TokenSource | None = None) -> None:
        super().__init__(
            target,
            taxonomy_pb2_grpc.TaxonomyServiceStub,
            service="taxonomy",
            timeout_s=timeout_s,
            token=token,
        )

    async def get_taxonomy(self, product: str, version: str = "") -> taxonomy_pb2.TaxonomyDocument:
        """`version` empty = the latest approved one."""
        request = taxonomy_pb2.GetTaxonomyRequest(product=product, version=version)
        result: taxonomy_pb2.TaxonomyDocument = await self.call("GetTaxonomy", request)
        return result

    async def publish_taxonomy(
        self, product: str, yaml: str, *, migration_notes: str = ""
    ) -> events_pb2.TaxonomyPublished:
        """Draft, review and approval in one step (the product's qa_owner). Not retried: a
        timed-out publish may have created the version already (a repeat is then a no-op)."""
        request = taxonomy_pb2.PublishTaxonomyRequest(
            product=product, yaml=yaml, migration_notes=migration_notes
        )
        result: events_pb2.TaxonomyPublished = await self.call("PublishTaxonomy", request, idempotent=False)
        return result

    async def list_versions(self, product: str) -> list[str]:
        request = taxonomy_pb2.ListTaxonomyVersionsRequest(product=product)
        response: taxonomy_pb2.ListTaxonomyVersionsResponse = await self.call("ListVersions", request)
        return list(response.versions)

    async def create_draft(
        self, product: str, yaml: str, *, migration_notes: str = ""
    ) -> taxonomy_pb2.TaxonomyDraft:
        request = taxonomy_pb2.SaveDraftRequest(product=product, yaml=yaml, migration_notes=migration_notes)
        result: taxonomy_pb2.TaxonomyDraft = await self.call("CreateDraft", request, idempotent=False)
        return result

    async def update_draft(
        self, product: str, version: str, yaml: str, *, migration_notes: str = ""
    ) -> taxonomy_pb2.TaxonomyDraft:
        """Empty `migration_notes` keeps the draft's notes."""
        request = taxonomy_pb2.SaveDraftRequest(
            product=product, version=version, yaml=yaml, migration_notes=migration_notes
        )
        result: taxonomy_pb2.TaxonomyDraft = await self.call("UpdateDraft", request)
        return result

    async def get_draft(self, product: str, version: str) -> taxonomy_pb2.TaxonomyDraft:
        request = taxonomy_pb2.DraftRef(product=product, version=version)
        result: taxonomy_pb2.TaxonomyDraft = await self.call("GetDraft", request)
        return result

    async def list_drafts(self, product: str) -> list[taxonomy_pb2.TaxonomyDraft]:
        request = taxonomy_pb2.ListDraftsRequest(product=product)
        response: taxonomy_pb2.ListDraftsResponse = await self.call("ListDrafts", request)
        return list(response.drafts)

    async def submit_draft(self, product: str, version: str) -> taxonomy_pb2.TaxonomyDraft:
        request = taxonomy_pb2.DraftRef(product=product, version=version)
        result: taxonomy_pb2.TaxonomyDraft = await self.call("SubmitDraft", request, idempotent=False)
        return result

    async def approve_draft(
        self, product: str, version: str, *, comment: str = ""
    ) -> events_pb2.TaxonomyPublished:
        """Publishes the reviewed draft; a repeat after a timeout answers NOT_FOUND (it was published)."""
        request = taxonomy_pb2.ReviewDraftRequest(product=product, version=version, comment=comment)
        result: events_pb2.TaxonomyPublished = await self.call("ApproveDraft", request, idempotent=False)
        return result

    async def reject_draft(self, product: str, version: str, *, comment: str) -> taxonomy_pb2.TaxonomyDraft:
        request = taxonomy_pb2.ReviewDraftRequest(product=product, version=version, comment=comment)
        result: taxonomy_pb2.TaxonomyDraft = await self.call("RejectDraft", request, idempotent=False)
        return result

    async def diff(self, product: str, from_version: str, to_version: str = "") -> taxonomy_pb2.TaxonomyDiff:
        """`to_version` empty = the latest published; either side may be a draft."""
        request = taxonomy_pb2.DiffTaxonomyRequest(
            product=product, from_version=from_version, to_version=to_version
        )
        result: taxonomy_pb2.TaxonomyDiff = await self.call("DiffVersions", request)
        return result
