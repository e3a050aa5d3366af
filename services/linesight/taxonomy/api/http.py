"""HTTP transport: read-only JSON/YAML views of the catalogue (publishing goes through gRPC)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import PlainTextResponse

from linesight.taxonomy.app.catalogue import TaxonomyApp, UnknownTaxonomyError


def get_taxonomy(request: Request) -> TaxonomyApp:
    taxonomy: TaxonomyApp = request.app.state.taxonomy
    return taxonomy


TaxonomyDep = Annotated[TaxonomyApp, Depends(get_taxonomy)]
router = APIRouter(prefix="/api/taxonomies")


@router.get("/{product}")
async def versions(product: str, taxonomy: TaxonomyDep) -> dict[str, Any]:
    return {"product": product, "versions": await taxonomy.list_versions(product)}


@router.get("/{product}/latest", response_class=PlainTextResponse)
async def latest(product: str, taxonomy: TaxonomyDep) -> str:
    try:
        return (await taxonomy.get(product)).yaml
    except UnknownTaxonomyError as exc:
        raise HTTPException(404, str(exc.args[0])) from exc


@router.get("/{product}/{version}", response_class=PlainTextResponse)
async def document(product: str, version: str, taxonomy: TaxonomyDep) -> str:
    try:
        return (await taxonomy.get(product, version)).yaml
    except UnknownTaxonomyError as exc:
        raise HTTPException(404, str(exc.args[0])) from exc


def mount(app: FastAPI, taxonomy: TaxonomyApp) -> None:
    """Attach the catalogue views to the service's FastAPI app."""
    app.state.taxonomy = taxonomy
    app.include_router(router)
