"""HTTP transport: the taxonomy as the inspector's pages need it. The class panel beside the frame
(definition, rules, gold examples and hard negatives of the published version) and the taxonomy
editor (draft -> submit -> approve, diff of two versions) both call the taxonomy service over
gRPC *with the viewer's own token*: the taxonomy service decides who may draft or approve, and its
audit trail names the person, never this service."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from pydantic import BaseModel, ConfigDict

from linesight.common.clients.taxonomy import TaxonomyClient
from linesight.common.grpcutil import (
    Forbidden,
    InvalidArgument,
    NotFound,
    ServiceError,
    ServiceUnavailable,
    Unauthenticated,
)
from linesight.common.identity.fastapi import CurrentPrincipal, require
from linesight.common.limits import Comment, Name
from linesight.labeling.api import policy
from linesight.labeling.api.http import LabelingDep
from linesight.labeling.api.pages import render_page
from linesight.labeling.app import roles
from linesight.labeling.app.taxonomy_view import (
    DISPOSITIONS,
    CardCache,
    TaxonomyError,
    class_cards,
    editable,
    to_yaml,
)

log = logging.getLogger(__name__)
CALL_TIMEOUT_S = 5.0

router = APIRouter()


class TaxonomyGateway:
    """Where the taxonomy service is, and the published versions already read."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.cards = CardCache()

    @asynccontextmanager
    async def client(self, request: Request) -> AsyncIterator[TaxonomyClient]:
        """A client that speaks as the caller: their bearer token, or their session cookie's."""
        async with TaxonomyClient(self.target, timeout_s=CALL_TIMEOUT_S, token=_caller_token(request)) as c:
            yield c


def _caller_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    if header:
        return header.partition(" ")[2].strip()
    cookie_name: str = request.app.state.linesight_auth.settings.cookie_name
    return request.cookies.get(cookie_name, "")


def _gateway(request: Request) -> TaxonomyGateway:
    gateway: TaxonomyGateway | None = getattr(request.app.state, "taxonomy_gateway", None)
    if gateway is None:
        raise HTTPException(503, "the taxonomy service is not configured for this labeling service")
    return gateway


def _http_error(exc: Exception) -> HTTPException:
    """The taxonomy service's answer as the browser should see it (its words kept)."""
    text = str(exc)
    if isinstance(exc, InvalidArgument | TaxonomyError):
        return HTTPException(422, text)
    if isinstance(exc, NotFound):
        return HTTPException(404, text)
    if isinstance(exc, Forbidden):
        return HTTPException(403, text)
    if isinstance(exc, Unauthenticated):
        return HTTPException(401, text)
    if isinstance(exc, ServiceUnavailable):
        return HTTPException(503, f"the taxonomy service is unavailable: {text}")
    if (
        isinstance(exc, ServiceError)
        and exc.code is not None
        and exc.code.name in ("ALREADY_EXISTS", "ABORTED")
    ):
        return HTTPException(409, text)
    return HTTPException(502, text)


def _dict(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


_FAILURES = (InvalidArgument, NotFound, Forbidden, Unauthenticated, ServiceError, TaxonomyError)


# ---- the class panel beside the frame ------------------------------------------------------------


@router.get("/api/taxonomy/classes", dependencies=[require(roles.VIEW)])
async def api_class_cards(
    request: Request, labeling: LabelingDep, product: Name = "", version: Name = ""
) -> dict[str, Any]:
    """Per class of a published version (the latest the ledger knows when none is named): its
    definition, severity rules, dispositions and gallery frames. When the taxonomy service cannot
    be asked, `available` is false with the reason: the frame view works on without the panel."""
    product = product or labeling.product
    if not version:
        row = await labeling.taxonomy(product)
        version = row.version if row else ""
    gateway = _gateway(request)
    cards = gateway.cards.get(product, version) if version else None
    if cards is None:
        try:
            async with gateway.client(request) as client:
                doc = await client.get_taxonomy(product, version)
            cards = class_cards(doc.yaml)
        except _FAILURES as exc:
            log.info("class definitions of %s v%s not available: %s", product, version, exc)
            return {
                "product": product,
                "version": version,
                "available": False,
                "reason": str(exc),
                "classes": {},
            }
        version = doc.version
        gateway.cards.put(product, version, cards)
    for card in cards.values():
        for example in card["gallery"]:
            example["image_url"] = f"/api/frames/{quote(example['frame_id'], safe='')}/image"
    return {"product": product, "version": version, "available": True, "reason": "", "classes": cards}


# ---- the editor ----------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class DraftBody(_Strict):
    product: Name
    document: dict[str, Any]
    migration_notes: Comment = ""
    # The draft to replace (its document must name the same version); empty: a new draft.
    replaces: Name = ""


class DraftRefBody(_Strict):
    product: Name
    version: Name


class ReviewBody(_Strict):
    product: Name
    version: Name
    comment: Comment = ""


@router.get("/taxonomy", response_class=HTMLResponse, dependencies=[require(policy.TAXONOMY_EDIT)])
async def taxonomy_page(
    request: Request, who: CurrentPrincipal, labeling: LabelingDep, product: Name = ""
) -> HTMLResponse:
    return render_page(
        request,
        who,
        "taxonomy.html",
        product=product or labeling.product,
        dispositions=list(DISPOSITIONS),
    )


@router.get("/api/taxonomy/versions", dependencies=[require(policy.TAXONOMY_EDIT)])
async def api_versions(request: Request, product: Name) -> dict[str, Any]:
    """The product's published versions (oldest first) and its open drafts."""
    try:
        async with _gateway(request).client(request) as client:
            versions = await client.list_versions(product)
            drafts = await client.list_drafts(product)
    except _FAILURES as exc:
        raise _http_error(exc) from exc
    return {
        "product": product,
        "versions": versions,
        "drafts": [{k: v for k, v in _dict(d).items() if k != "yaml"} for d in drafts],
    }


@router.get("/api/taxonomy/document", dependencies=[require(policy.TAXONOMY_EDIT)])
async def api_document(
    request: Request, product: Name, version: Name = "", draft: bool = False
) -> dict[str, Any]:
    """A published version (latest when none is named) or a draft, as the editor edits it."""
    try:
        async with _gateway(request).client(request) as client:
            if draft:
                d = await client.get_draft(product, version)
                text, meta = d.yaml, {k: v for k, v in _dict(d).items() if k != "yaml"}
            else:
                doc = await client.get_taxonomy(product, version)
                text, meta = (
                    doc.yaml,
                    {**{k: v for k, v in _dict(doc).items() if k != "yaml"}, "state": "published"},
                )
        return {**meta, "document": editable(text), "yaml": text}
    except _FAILURES as exc:
        raise _http_error(exc) from exc


@router.post("/api/taxonomy/drafts", dependencies=[require(policy.TAXONOMY_EDIT)])
async def api_save_draft(request: Request, body: DraftBody) -> dict[str, Any]:
    """Save the edited document as a new draft, or over the draft it replaces. A document that does
    not validate is a 422 naming the field; nothing is stored then and the editor keeps the edits."""
    try:
        text = to_yaml({**body.document, "product": body.product})
        async with _gateway(request).client(request) as client:
            if body.replaces:
                d = await client.update_draft(
                    body.product, body.replaces, text, migration_notes=body.migration_notes
                )
            else:
                d = await client.create_draft(body.product, text, migration_notes=body.migration_notes)
    except _FAILURES as exc:
        raise _http_error(exc) from exc
    return _dict(d)


@router.post("/api/taxonomy/drafts/submit", dependencies=[require(policy.TAXONOMY_EDIT)])
async def api_submit_draft(request: Request, body: DraftRefBody) -> dict[str, Any]:
    try:
        async with _gateway(request).client(request) as client:
            return _dict(await client.submit_draft(body.product, body.version))
    except _FAILURES as exc:
        raise _http_error(exc) from exc


@router.post("/api/taxonomy/drafts/approve", dependencies=[require(policy.TAXONOMY_APPROVE)])
async def api_approve_draft(request: Request, body: ReviewBody) -> dict[str, Any]:
    """Publish the reviewed draft (the taxonomy service announces it; labeling hears it on the bus)."""
    try:
        async with _gateway(request).client(request) as client:
            published = await client.approve_draft(body.product, body.version, comment=body.comment)
    except _FAILURES as exc:
        raise _http_error(exc) from exc
    return {
        "product": published.product,
        "version": published.version,
        "previous_version": published.previous_version,
        "relabel_classes": list(published.relabel_classes),
    }


@router.post("/api/taxonomy/drafts/reject", dependencies=[require(policy.TAXONOMY_APPROVE)])
async def api_reject_draft(request: Request, body: ReviewBody) -> dict[str, Any]:
    try:
        async with _gateway(request).client(request) as client:
            return _dict(await client.reject_draft(body.product, body.version, comment=body.comment))
    except _FAILURES as exc:
        raise _http_error(exc) from exc


@router.get("/api/taxonomy/diff", dependencies=[require(policy.TAXONOMY_EDIT)])
async def api_diff(
    request: Request, product: Name, from_version: Name, to_version: Name = ""
) -> dict[str, Any]:
    """What changed between two versions (either may be a draft), field by field."""
    try:
        async with _gateway(request).client(request) as client:
            return _dict(await client.diff(product, from_version, to_version))
    except _FAILURES as exc:
        raise _http_error(exc) from exc


def mount(app: FastAPI, taxonomy_target: str | None) -> None:
    """Attach the routes; without a target the panel says so and the editor answers 503."""
    if taxonomy_target:
        app.state.taxonomy_gateway = TaxonomyGateway(taxonomy_target)
    app.include_router(router)
