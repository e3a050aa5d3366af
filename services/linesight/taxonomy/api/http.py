"""HTTP transport: read-only JSON/YAML views of the catalogue (publishing goes through gRPC)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import PlainTextResponse

from linesight.taxonomy.app.catalogue import Catalogue, UnknownTaxonomyError


def get_catalogue(request: Request) -> Catalogue:
    catalogue: Catalogue = request.app.state.catalogue
    return catalogue


CatalogueDep = Annotated[Catalogue, Depends(get_catalogue)]
router = APIRouter(prefix="/api/taxonomies")


@router.get("/{product}")
async def versions(product: str, catalogue: CatalogueDep) -> dict[str, Any]:
    return {"product": product, "versions": await catalogue.list_versions(product)}


@router.get("/{product}/latest", response_class=PlainTextResponse)
async def latest(product: str, catalogue: CatalogueDep) -> str:
    try:
        return (await catalogue.get(product)).yaml
    except UnknownTaxonomyError as exc:
        raise HTTPException(404, str(exc.args[0])) from exc


@router.get("/{product}/{version}", response_class=PlainTextResponse)
async def document(product: str, version: str, catalogue: CatalogueDep) -> str:
    try:
        return (await catalogue.get(product, version)).yaml
    except UnknownTaxonomyError as exc:
        raise HTTPException(404, str(exc.args[0])) from exc


def mount(app: FastAPI, catalogue: Catalogue) -> None:
    app.state.catalogue = catalogue
    app.include_router(router)
