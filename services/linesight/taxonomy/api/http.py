"""HTTP transport: the same operations as gRPC, as JSON (documents also as plain YAML).

Errors: 422 invalid document or field (the message names it), 409 published version or draft in
the wrong state, 404 unknown, 401 without a token, 403 without the role on that product.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import PlainTextResponse
from google.protobuf.json_format import MessageToDict
from pydantic import BaseModel, ConfigDict, Field

from linesight.common.bus import PayloadTooLarge
from linesight.common.identity.fastapi import CurrentPrincipal, require
from linesight.common.identity.model import Forbidden
from linesight.common.limits import Name, Text
from linesight.common.pb import events_pb2
from linesight.taxonomy.app.catalogue import (
    MAX_DOCUMENT,
    DraftRow,
    DraftStateError,
    ImmutableVersionError,
    TaxonomyApp,
    TaxonomyInvalidError,
    UnknownTaxonomyError,
)

T = TypeVar("T")


def get_taxonomy(request: Request) -> TaxonomyApp:
    taxonomy: TaxonomyApp = request.app.state.taxonomy
    return taxonomy


TaxonomyDep = Annotated[TaxonomyApp, Depends(get_taxonomy)]
READ = [require("taxonomy.read")]
DRAFT = [require("taxonomy.draft", product="product")]
APPROVE = [require("taxonomy.approve", product="product")]
router = APIRouter(prefix="/api/taxonomies")


class _Strict(BaseModel):
    """A value of the wrong JSON type is a 422, never coerced into the document or a comment.
    Unknown fields are ignored: old clients still send `approved_by` (the caller approves)."""

    model_config = ConfigDict(strict=True)


class DocumentBody(_Strict):
    """The YAML is validated field by field by the app; here only its size is bounded."""

    yaml: str = Field(max_length=MAX_DOCUMENT)
    migration_notes: Text | None = None  # None on an edit: keep the draft's notes


class ReviewBody(_Strict):
    comment: Text = ""


async def _run(work: Awaitable[T]) -> T:
    try:
        return await work
    except TaxonomyInvalidError as exc:
        raise HTTPException(422, str(exc)) from exc
    except (ImmutableVersionError, DraftStateError) as exc:
        raise HTTPException(409, str(exc)) from exc
    except UnknownTaxonomyError as exc:
        raise HTTPException(404, str(exc.args[0])) from exc
    except Forbidden as exc:
        raise HTTPException(403, str(exc)) from exc
    except PayloadTooLarge as exc:  # the document's event would not fit the bus: nothing was stored
        raise HTTPException(413, f"yaml: document too large to publish ({exc})") from exc


def _draft(row: DraftRow) -> dict[str, Any]:
    return {
        "product": row.product, "version": row.version, "yaml": row.yaml, "state": row.state,
        "author": row.author, "submitted_by": row.submitted_by, "review_comment": row.review_comment,
        "migration_notes": row.migration_notes, "base_version": row.base_version,
        "updated_at": row.updated_at.isoformat() if row.updated_at else None,
    }  # fmt: skip


def _published(event: events_pb2.TaxonomyPublished) -> dict[str, Any]:
    out = MessageToDict(event, preserving_proto_field_name=True)
    out.pop("document_yaml", None)  # the caller sent it; GET /{product}/{version} returns it
    return out


@router.get("/{product}", dependencies=READ)
async def versions(product: Name, taxonomy: TaxonomyDep) -> dict[str, Any]:
    listed = await _run(taxonomy.list_versions(product))
    drafts = await _run(taxonomy.list_drafts(product))
    return {"product": product, "versions": listed,
            "drafts": [{"version": d.version, "state": d.state} for d in drafts]}  # fmt: skip


@router.get("/{product}/latest", response_class=PlainTextResponse, dependencies=READ)
async def latest(product: Name, taxonomy: TaxonomyDep) -> str:
    return (await _run(taxonomy.get(product))).yaml


@router.get("/{product}/diff", dependencies=READ)
async def diff(
    product: Name,
    taxonomy: TaxonomyDep,
    from_version: Annotated[Name, Query(alias="from")],
    to_version: Annotated[Name, Query(alias="to")] = "",
) -> dict[str, Any]:
    """`?from=1&to=2`; `to` empty = the latest published; either may be a draft."""
    return {"product": product, **(await _run(taxonomy.diff(product, from_version, to_version))).to_json()}


@router.post("/{product}/publish", status_code=201, dependencies=APPROVE)
async def publish(product: Name, body: DocumentBody, who: CurrentPrincipal, taxonomy: TaxonomyDep) -> Any:
    """Draft, review and approval in one step (the product's qa_owner)."""
    return _published(
        await _run(taxonomy.publish_directly(who, body.yaml, product, body.migration_notes or ""))
    )


@router.get("/{product}/drafts", dependencies=READ)
async def list_drafts(product: Name, taxonomy: TaxonomyDep) -> dict[str, Any]:
    return {"product": product, "drafts": [_draft(d) for d in await _run(taxonomy.list_drafts(product))]}


@router.post("/{product}/drafts", status_code=201, dependencies=DRAFT)
async def create_draft(
    product: Name, body: DocumentBody, who: CurrentPrincipal, taxonomy: TaxonomyDep
) -> dict[str, Any]:
    return _draft(await _run(taxonomy.create_draft(who, product, body.yaml, body.migration_notes or "")))


@router.get("/{product}/drafts/{version}", dependencies=READ)
async def get_draft(product: Name, version: Name, taxonomy: TaxonomyDep) -> dict[str, Any]:
    return _draft(await _run(taxonomy.get_draft(product, version)))


@router.put("/{product}/drafts/{version}", dependencies=DRAFT)
async def update_draft(
    product: Name, version: Name, body: DocumentBody, who: CurrentPrincipal, taxonomy: TaxonomyDep
) -> dict[str, Any]:
    return _draft(await _run(taxonomy.update_draft(who, product, version, body.yaml, body.migration_notes)))


@router.post("/{product}/drafts/{version}/submit", dependencies=DRAFT)
async def submit_draft(
    product: Name, version: Name, who: CurrentPrincipal, taxonomy: TaxonomyDep
) -> dict[str, Any]:
    return _draft(await _run(taxonomy.submit_draft(who, product, version)))


@router.post("/{product}/drafts/{version}/approve", dependencies=APPROVE)
async def approve_draft(
    product: Name, version: Name, body: ReviewBody, who: CurrentPrincipal, taxonomy: TaxonomyDep
) -> Any:
    return _published(await _run(taxonomy.approve_draft(who, product, version, body.comment)))


@router.post("/{product}/drafts/{version}/reject", dependencies=APPROVE)
async def reject_draft(
    product: Name, version: Name, body: ReviewBody, who: CurrentPrincipal, taxonomy: TaxonomyDep
) -> dict[str, Any]:
    return _draft(await _run(taxonomy.reject_draft(who, product, version, body.comment)))


@router.get("/{product}/{version}", response_class=PlainTextResponse, dependencies=READ)
async def document(product: Name, version: Name, taxonomy: TaxonomyDep) -> str:
    return (await _run(taxonomy.get(product, version))).yaml


def mount(app: FastAPI, taxonomy: TaxonomyApp) -> None:
    """Attach the taxonomy routes to the service's FastAPI app."""
    app.state.taxonomy = taxonomy
    app.include_router(router)
