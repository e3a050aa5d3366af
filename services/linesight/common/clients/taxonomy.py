"""Client of the TaxonomyService (defect class catalogue per product, versioned, reviewed).

Authors and approvers are whoever the `token` names; nothing in a request can claim otherwise.
"""

from __future__ import annotations

from linesight.common.clients.base import PeerClient
from linesight.common.pb import events_pb2, taxonomy_pb2, taxonomy_pb2_grpc


class TaxonomyClient(PeerClient[taxonomy_pb2_grpc.TaxonomyServiceStub]):
    """Thick client for the taxonomy API."""

    stub_class = taxonomy_pb2_grpc.TaxonomyServiceStub
    service_name = "taxonomy"

    async def get_taxonomy(self, product: str, version: str = "") -> taxonomy_pb2.TaxonomyDocument:
        """`version` empty = the latest approved one."""
        request = taxonomy_pb2.GetTaxonomyRequest(product=product, version=version)
        return await self._rpc("GetTaxonomy", request, taxonomy_pb2.TaxonomyDocument)

    async def publish_taxonomy(
        self, product: str, yaml: str, *, migration_notes: str = ""
    ) -> events_pb2.TaxonomyPublished:
        """Draft, review and approval in one step (the product's qa_owner). Not retried: a
        timed-out publish may have created the version already (a repeat is then a no-op)."""
        request = taxonomy_pb2.PublishTaxonomyRequest(
            product=product, yaml=yaml, migration_notes=migration_notes
        )
        return await self._rpc("PublishTaxonomy", request, events_pb2.TaxonomyPublished, idempotent=False)

    async def list_versions(self, product: str) -> list[str]:
        request = taxonomy_pb2.ListTaxonomyVersionsRequest(product=product)
        response = await self._rpc("ListVersions", request, taxonomy_pb2.ListTaxonomyVersionsResponse)
        return list(response.versions)

    async def create_draft(
        self, product: str, yaml: str, *, migration_notes: str = ""
    ) -> taxonomy_pb2.TaxonomyDraft:
        request = taxonomy_pb2.SaveDraftRequest(product=product, yaml=yaml, migration_notes=migration_notes)
        return await self._rpc("CreateDraft", request, taxonomy_pb2.TaxonomyDraft, idempotent=False)

    async def update_draft(
        self, product: str, version: str, yaml: str, *, migration_notes: str = ""
    ) -> taxonomy_pb2.TaxonomyDraft:
        """Empty `migration_notes` keeps the draft's notes."""
        request = taxonomy_pb2.SaveDraftRequest(
            product=product, version=version, yaml=yaml, migration_notes=migration_notes
        )
        return await self._rpc("UpdateDraft", request, taxonomy_pb2.TaxonomyDraft)

    async def get_draft(self, product: str, version: str) -> taxonomy_pb2.TaxonomyDraft:
        request = taxonomy_pb2.DraftRef(product=product, version=version)
        return await self._rpc("GetDraft", request, taxonomy_pb2.TaxonomyDraft)

    async def list_drafts(self, product: str) -> list[taxonomy_pb2.TaxonomyDraft]:
        request = taxonomy_pb2.ListDraftsRequest(product=product)
        response = await self._rpc("ListDrafts", request, taxonomy_pb2.ListDraftsResponse)
        return list(response.drafts)

    async def submit_draft(self, product: str, version: str) -> taxonomy_pb2.TaxonomyDraft:
        request = taxonomy_pb2.DraftRef(product=product, version=version)
        return await self._rpc("SubmitDraft", request, taxonomy_pb2.TaxonomyDraft, idempotent=False)

    async def approve_draft(
        self, product: str, version: str, *, comment: str = ""
    ) -> events_pb2.TaxonomyPublished:
        """Publishes the reviewed draft; a repeat after a timeout answers NOT_FOUND (it was published)."""
        request = taxonomy_pb2.ReviewDraftRequest(product=product, version=version, comment=comment)
        return await self._rpc("ApproveDraft", request, events_pb2.TaxonomyPublished, idempotent=False)

    async def reject_draft(self, product: str, version: str, *, comment: str) -> taxonomy_pb2.TaxonomyDraft:
        request = taxonomy_pb2.ReviewDraftRequest(product=product, version=version, comment=comment)
        return await self._rpc("RejectDraft", request, taxonomy_pb2.TaxonomyDraft, idempotent=False)

    async def diff(self, product: str, from_version: str, to_version: str = "") -> taxonomy_pb2.TaxonomyDiff:
        """`to_version` empty = the latest published; either side may be a draft."""
        request = taxonomy_pb2.DiffTaxonomyRequest(
            product=product, from_version=from_version, to_version=to_version
        )
        return await self._rpc("DiffVersions", request, taxonomy_pb2.TaxonomyDiff)
