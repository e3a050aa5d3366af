"""Taxonomy and training start as real services (run_service) and answer on their gRPC ports."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import httpx
import pytest

from linesight.common.identity.grpc import bearer_metadata
from linesight.common.pb import taxonomy_pb2, taxonomy_pb2_grpc, training_pb2, training_pb2_grpc
from linesight.common.service import service_running
from linesight.common.settings import Settings
from linesight.taxonomy.service import setup as taxonomy_setup
from linesight.training.service import setup as training_setup

pytestmark = pytest.mark.integration


async def test_services_answer(stack_settings: Settings, mint: Callable[..., str]) -> None:
    token = mint(f"line_operator@{stack_settings.plant}/{stack_settings.product}", subject="olga")
    async with service_running("taxonomy", taxonomy_setup, settings=stack_settings), \
            service_running("training", training_setup, settings=stack_settings):  # fmt: skip
        async with grpc.aio.insecure_channel(stack_settings.grpc_target("taxonomy")) as channel:
            doc = await taxonomy_pb2_grpc.TaxonomyServiceStub(channel).GetTaxonomy(
                taxonomy_pb2.GetTaxonomyRequest(product=stack_settings.product),
                metadata=bearer_metadata(token),
            )
            assert doc.product == stack_settings.product and "classes" in doc.yaml
        async with grpc.aio.insecure_channel(stack_settings.grpc_target("training")) as channel:
            models = await training_pb2_grpc.TrainingServiceStub(channel).ListModels(
                training_pb2.ListModelsRequest(product="no-such-product"),
                metadata=bearer_metadata(mint("engineer@*/*", subject="erin")),
            )
            assert list(models.models) == []
        headers = {"authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=stack_settings.http_url("taxonomy"), headers=headers) as client:
            listed = (await client.get(f"/api/taxonomies/{stack_settings.product}")).json()
            assert listed["versions"]
            assert (await client.get("/readyz")).status_code == 200
