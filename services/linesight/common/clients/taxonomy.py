"""Client of the TaxonomyService (defect class catalogue per product, versioned)."""

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
        self, product: str, yaml: str, *, approved_by: str
    ) -> events_pb2.TaxonomyPublished:
        """Not retried: a timed-out publish may have created the version already."""
        request = taxonomy_pb2.PublishTaxonomyRequest(product=product, yaml=yaml, approved_by=approved_by)
        result: events_pb2.TaxonomyPublished = await self.call("PublishTaxonomy", request, idempotent=False)
        return result

    async def list_versions(self, product: str) -> list[str]:
        request = taxonomy_pb2.ListTaxonomyVersionsRequest(product=product)
        response: taxonomy_pb2.ListTaxonomyVersionsResponse = await self.call("ListVersions", request)
        return list(response.versions)
