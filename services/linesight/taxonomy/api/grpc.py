"""gRPC TaxonomyService (transport only): errors map to INVALID_ARGUMENT / ALREADY_EXISTS / NOT_FOUND."""

from __future__ import annotations

import grpc

from linesight.common.pb import events_pb2, taxonomy_pb2, taxonomy_pb2_grpc
from linesight.taxonomy.app.catalogue import (
    ImmutableVersionError,
    TaxonomyApp,
    TaxonomyInvalidError,
    UnknownTaxonomyError,
)


class TaxonomyServicer(taxonomy_pb2_grpc.TaxonomyServiceServicer):
    def __init__(self, taxonomy: TaxonomyApp) -> None:
        self.taxonomy = taxonomy

    async def GetTaxonomy(  # noqa: N802 - gRPC method name
        self, request: taxonomy_pb2.GetTaxonomyRequest, context: grpc.aio.ServicerContext
    ) -> taxonomy_pb2.TaxonomyDocument:
        try:
            row = await self.taxonomy.get(request.product, request.version)
        except UnknownTaxonomyError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc.args[0]))
            raise
        return taxonomy_pb2.TaxonomyDocument(product=row.product, version=row.version, yaml=row.yaml)

    async def PublishTaxonomy(  # noqa: N802
        self, request: taxonomy_pb2.PublishTaxonomyRequest, context: grpc.aio.ServicerContext
    ) -> events_pb2.TaxonomyPublished:
        try:
            return await self.taxonomy.publish(request.yaml, request.approved_by, request.product)
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
            versions=await self.taxonomy.list_versions(request.product)
        )


def register(server: grpc.aio.Server, servicer: TaxonomyServicer) -> None:
    taxonomy_pb2_grpc.add_TaxonomyServiceServicer_to_server(servicer, server)
