"""gRPC TaxonomyService (transport only): errors map to INVALID_ARGUMENT / ALREADY_EXISTS / NOT_FOUND."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from linesight.common.pb import events_pb2, taxonomy_pb2, taxonomy_pb2_grpc
from linesight.taxonomy.app.catalogue import (
    Catalogue,
    ImmutableVersionError,
    TaxonomyInvalidError,
    UnknownTaxonomyError,
)


class TaxonomyServicer(taxonomy_pb2_grpc.TaxonomyServiceServicer):
    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue

    async def GetTaxonomy(  # noqa: N802 - gRPC method name
        self, request: taxonomy_pb2.GetTaxonomyRequest, context: grpc.aio.ServicerContext
    ) -> taxonomy_pb2.TaxonomyDocument:
        try:
            row = await self.catalogue.get(request.product, request.version)
        except UnknownTaxonomyError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc.args[0]))
            raise
        return taxonomy_pb2.TaxonomyDocument(product=row.product, version=row.version, yaml=row.yaml)

    async def PublishTaxonomy(  # noqa: N802
        self, request: taxonomy_pb2.PublishTaxonomyRequest, context: grpc.aio.ServicerContext
    ) -> events_pb2.TaxonomyPublished:
        try:
            return await self.catalogue.publish(request.yaml, request.approved_by, request.product)
        except ImmutableVersionError as exc:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(exc))
            raise
        except TaxonomyInvalidError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise

    async def ListVersions(  # noqa: N802
        self, request: taxonomy_pb2.ListTaxonomyVersionsRequest, context: grpc.aio.ServicerContext
    ) -> taxonomy_pb2.ListTaxonomyVersionsResponse:
        return taxonomy_pb2.ListTaxonomyVersionsResponse(
            versions=await self.catalogue.list_versions(request.product)
        )


def register(catalogue: Catalogue) -> Callable[[grpc.aio.Server], None]:
    def _register(server: grpc.aio.Server) -> None:
        taxonomy_pb2_grpc.add_TaxonomyServiceServicer_to_server(TaxonomyServicer(catalogue), server)

    return _register
