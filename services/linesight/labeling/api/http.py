"""HTTP transport: the results page with its label/review/decision forms (server-rendered, login
required, CSRF token in every form) and the JSON API of the label workflow, queues, agreement
and audit trail. Who acts is the authenticated principal; errors map to 401/403/404/409/422."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Protocol
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from linesight.common.audit import AuditRecord
from linesight.common.enums import enum_value, enum_word, enum_words
from linesight.common.identity import Forbidden
from linesight.common.identity.fastapi import CurrentPrincipal, client_address, require
from linesight.common.limits import Comment, Name, TextError
from linesight.common.pb import common_pb2
from linesight.labeling.app import roles
from linesight.labeling.app.errors import (
    ConflictError,
    FieldError,
    FrameNotFoundError,
    InvalidLabelError,
    NotFoundError,
)
from linesight.labeling.app.labeling import LabelingApp
from linesight.labeling.app.labels import AMBIGUITY_REASONS, Box, LabelInput, Polygon
from linesight.labeling.app.routing import reason_words
from linesight.labeling.store.ledger import QueueItem, ResultRow

log = logging.getLogger(__name__)

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


class UrlSigner(Protocol):
    """linesight.common.storage.ObjectStore's presigning method."""

    def presigned_get_url(self, bucket: str, key: str, expires_s: int = 3600) -> str: ...


def get_labeling(request: Request) -> LabelingApp:
    labeling: LabelingApp = request.app.state.labeling
    return labeling


def get_signer(request: Request) -> UrlSigner | None:
    return getattr(request.app.state, "object_store", None)


LabelingDep = Annotated[LabelingApp, Depends(get_labeling)]
SignerDep = Annotated[UrlSigner | None, Depends(get_signer)]
Limit = Annotated[int, Query(ge=1, le=1000)]

router = APIRouter()


# ---- request bodies ------------------------------------------------------------------------------


class _Strict(BaseModel):
    """Unknown fields and values of the wrong JSON type are 422s: `"ambiguous": "yes"` or
    `"label": 5` is a client bug, not something to coerce and store."""

    model_config = ConfigDict(extra="forbid", strict=True)


class BoxBody(_Strict):
    x_min: int = Field(ge=0)
    y_min: int = Field(ge=0)
    x_max: int = Field(ge=0)
    y_max: int = Field(ge=0)
    named_region: Name = ""


# An [x, y] pair. A JSON array, not a tuple: strict validation of a parsed body refuses a list
# where a tuple is declared, which made every polygon a browser sent a 422.
Point = Annotated[list[float], Field(min_length=2, max_length=2)]


class PolygonBody(_Strict):
    points: list[Point] = Field(min_length=3, max_length=1000)
    named_region: Name = ""


def _severity(word: str) -> str:
    """An unknown severity is the caller's 422 naming the allowed words, checked before any lookup
    (it never reads as 'unspecified')."""
    if word.strip():
        enum_value(common_pb2.Severity, word)
    return word


def _verdict(word: str) -> str:
    """A verdict filter in the ledger's spelling (`pass`); an unknown word is a 422 naming the
    allowed ones, not an empty page."""
    return enum_word(common_pb2.Verdict, enum_value(common_pb2.Verdict, word)) if word.strip() else ""


Severity = Annotated[Name, AfterValidator(_severity)]
VerdictFilter = Annotated[Name, AfterValidator(_verdict)]


class LabelBody(_Strict):
    label: Name
    severity: Severity = ""
    regions: list[BoxBody] = Field(default_factory=list, max_length=100)
    polygons: list[PolygonBody] = Field(default_factory=list, max_length=100)
    ambiguous: bool = False
    ambiguity_reason: Name = ""
    comment: Comment = ""

    def to_input(self) -> LabelInput:
        return LabelInput(
            label=self.label,
            severity=self.severity,
            boxes=tuple(Box(**b.model_dump()) for b in self.regions),
            polygons=tuple(
                Polygon(tuple((x, y) for x, y in p.points), p.named_region) for p in self.polygons
            ),
            ambiguous=self.ambiguous,
            ambiguity_reason=self.ambiguity_reason,
            comment=self.comment,
        )


class SubmitBody(LabelBody):
    frame_id: Name


class EditBody(LabelBody):
    expected_version: int = Field(ge=1)


class ReviewBody(_Strict):
    frame_id: Name
    accept: bool
    reason: Comment = ""
    correction: LabelBody | None = None


class DecisionBody(_Strict):
    frame_id: Name
    decision: LabelBody
    reason: Comment
    taxonomy_draft_needed: bool = False


class OverrideBody(LabelBody):
    frame_id: Name
    reason: Comment


class ClaimBody(_Strict):
    queue: Name = ""
    frame_id: Name = ""


class AssignBody(_Strict):
    assignee: Name


class SampleBody(_Strict):
    name: Name
    frame_ids: list[Name] = Field(min_length=2, max_length=1000)


class SampleLabelBody(_Strict):
    frame_id: Name
    label: Name


# ---- helpers -------------------------------------------------------------------------------------


def _url(signer: UrlSigner | None, bucket: str | None, key: str | None) -> str:
    """Presigned thumbnail URL; '' when there is no object or storage is unreachable (page still renders)."""
    if signer is None or not bucket or not key:
        return ""
    try:
        return signer.presigned_get_url(bucket, key, 3600)
    except Exception as exc:
        log.warning("cannot presign %s/%s: %s", bucket, key, exc)
        return ""


def _with_urls(rows: Sequence[ResultRow | QueueItem], signer: UrlSigner | None) -> list[dict[str, Any]]:
    """Rows as the page and the JSON API show them: thumbnails presigned, queue reasons in words."""
    out = []
    for row in rows:
        r = dataclasses.asdict(row)
        r["image_url"] = _url(signer, row.image_bucket, row.image_key)
        r["heatmap_url"] = _url(signer, row.heatmap_bucket, row.heatmap_key)
        if isinstance(row, QueueItem):
            r["reason_text"] = reason_words(row.reason)
        out.append(r)
    return out


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}


def _record(r: AuditRecord) -> dict[str, Any]:
    return {**_jsonable(dataclasses.asdict(r)), "old_value": r.old(), "new_value": r.new()}


# ---- the page ------------------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse, dependencies=[require(roles.VIEW)])
async def results_page(
    request: Request,
    who: CurrentPrincipal,
    labeling: LabelingDep,
    signer: SignerDep,
    verdict: VerdictFilter = "",
    limit: Limit = 100,
    message: Comment = "",
    error: Comment = "",
) -> HTMLResponse:
    results = _with_urls(await labeling.list_results(limit=limit, verdict=verdict), signer)
    queue = _with_urls(await labeling.review_queue(limit=100), signer)
    taxonomy = await labeling.taxonomy(labeling.product)
    return templates.TemplateResponse(
        request,
        "index.html",
        {
            "results": results,
            "queue": queue,
            "stats": await labeling.stats(),
            "queue_stats": await labeling.queue_stats(),
            "verdict": verdict,
            "message": message,
            "error": error,
            "who": who,
            "csrf_token": request.cookies.get(request.app.state.linesight_auth.settings.csrf_cookie_name, ""),
            "classes": ["good", *(taxonomy.classes if taxonomy else [])],
            "severities": enum_words(common_pb2.Severity),
            "ambiguity_reasons": AMBIGUITY_REASONS,
        },
    )


async def _form(request: Request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}


def _form_label(form: dict[str, str], prefix: str = "") -> LabelInput:
    return LabelInput(
        label=form.get(prefix + "label", ""),
        severity=form.get(prefix + "severity", ""),
        ambiguous=form.get(prefix + "ambiguous", "") in ("on", "true", "1"),
        ambiguity_reason=form.get(prefix + "ambiguity_reason", ""),
        comment=form.get(prefix + "comment", ""),
    )


async def _form_step(request: Request, frame_id: Name, step: Any) -> RedirectResponse:
    """Run a form's step and send the browser back to the page with the outcome in words."""
    try:
        outcome = await step
    except (FieldError, TextError, FrameNotFoundError, InvalidLabelError, ConflictError, Forbidden) as exc:
        return RedirectResponse(f"/?error={quote(str(exc)[:500])}", status_code=303)
    return RedirectResponse(f"/?message={quote(f'{frame_id[:12]}: {outcome.state}')}", status_code=303)


@router.post("/label", dependencies=[require(roles.LABEL)])
async def label_form(request: Request, who: CurrentPrincipal, labeling: LabelingDep) -> RedirectResponse:
    form = await _form(request)
    frame_id = form.get("frame_id", "")
    return await _form_step(
        request, frame_id, labeling.submit_label(who, frame_id, _form_label(form), client_address(request))
    )


@router.post("/review", dependencies=[require(roles.REVIEW)])
async def review_form(request: Request, who: CurrentPrincipal, labeling: LabelingDep) -> RedirectResponse:
    form = await _form(request)
    frame_id = form.get("frame_id", "")
    accept = form.get("accept", "") == "yes"
    step = labeling.review(
        who,
        frame_id,
        accept=accept,
        reason=form.get("reason", ""),
        correction=None if accept else _form_label(form, "correction_"),
        client=client_address(request),
    )
    return await _form_step(request, frame_id, step)


@router.post("/decide", dependencies=[require(roles.DECIDE)])
async def decide_form(request: Request, who: CurrentPrincipal, labeling: LabelingDep) -> RedirectResponse:
    form = await _form(request)
    frame_id = form.get("frame_id", "")
    step = labeling.decide(
        who,
        frame_id,
        _form_label(form),
        reason=form.get("reason", ""),
        taxonomy_draft_needed=form.get("taxonomy_draft_needed", "") in ("on", "true", "1"),
        client=client_address(request),
    )
    return await _form_step(request, frame_id, step)


# ---- JSON API ------------------------------------------------------------------------------------


@router.get("/api/results", dependencies=[require(roles.VIEW)])
async def api_results(
    labeling: LabelingDep,
    signer: SignerDep,
    verdict: VerdictFilter = "",
    station: Name = "",
    limit: Limit = 100,
) -> list[dict[str, Any]]:
    rows = await labeling.list_results(limit=limit, verdict=verdict, station=station)
    return [_jsonable(r) for r in _with_urls(rows, signer)]


@router.get("/api/review-queue", dependencies=[require(roles.VIEW)])
async def api_review_queue(
    labeling: LabelingDep, signer: SignerDep, queue: Name = "", limit: Limit = 100
) -> list[dict[str, Any]]:
    return [_jsonable(r) for r in _with_urls(await labeling.review_queue(queue=queue, limit=limit), signer)]


@router.get("/api/stats", dependencies=[require(roles.VIEW)])
async def api_stats(labeling: LabelingDep) -> dict[str, Any]:
    return dataclasses.asdict(await labeling.stats())


@router.get("/api/queues", dependencies=[require(roles.VIEW)])
async def api_queues(labeling: LabelingDep) -> list[dict[str, Any]]:
    """Depth, age of the oldest item, capacity per shift and the over-capacity signal per queue."""
    return [dataclasses.asdict(s) for s in await labeling.queue_stats()]


@router.post("/api/claims", dependencies=[require(roles.CLAIM)])
async def api_claim(body: ClaimBody, who: CurrentPrincipal, labeling: LabelingDep) -> dict[str, Any]:
    item = await labeling.claim(who, queue=body.queue, frame_id=body.frame_id)
    return {"claimed": item is not None, "item": _jsonable(dataclasses.asdict(item)) if item else None}


@router.delete("/api/claims/{frame_id}", status_code=204, dependencies=[require(roles.CLAIM)])
async def api_release(frame_id: Name, who: CurrentPrincipal, labeling: LabelingDep) -> Response:
    await labeling.release(who, frame_id)
    return Response(status_code=204)


@router.post("/api/frames/{frame_id}/assign", status_code=204, dependencies=[require(roles.ASSIGN)])
async def api_assign(
    frame_id: Name, body: AssignBody, request: Request, who: CurrentPrincipal, labeling: LabelingDep
) -> Response:
    await labeling.assign(who, frame_id, body.assignee, client_address(request))
    return Response(status_code=204)


@router.get("/api/frames/{frame_id}/labels", dependencies=[require(roles.VIEW)])
async def api_frame_labels(frame_id: Name, labeling: LabelingDep) -> list[dict[str, Any]]:
    return [_jsonable(dataclasses.asdict(x)) for x in await labeling.frame_labels(frame_id)]


@router.post("/api/labels", dependencies=[require(roles.LABEL)])
async def api_submit_label(
    body: SubmitBody, request: Request, who: CurrentPrincipal, labeling: LabelingDep
) -> dict[str, Any]:
    """Pass 1. The labeler is the caller; the class must be in the product's taxonomy."""
    out = await labeling.submit_label(who, body.frame_id, body.to_input(), client_address(request))
    return dataclasses.asdict(out)


@router.put("/api/labels/{label_id}", dependencies=[require(roles.LABEL)])
async def api_edit_label(
    label_id: int, body: EditBody, request: Request, who: CurrentPrincipal, labeling: LabelingDep
) -> dict[str, Any]:
    """Edit one's own first pass; `expected_version` is the version read (409 when it moved on)."""
    out = await labeling.edit_label(
        who, label_id, body.expected_version, body.to_input(), client_address(request)
    )
    return dataclasses.asdict(out)


@router.post("/api/reviews", dependencies=[require(roles.REVIEW)])
async def api_review(
    body: ReviewBody, request: Request, who: CurrentPrincipal, labeling: LabelingDep
) -> dict[str, Any]:
    out = await labeling.review(
        who,
        body.frame_id,
        accept=body.accept,
        reason=body.reason,
        correction=body.correction.to_input() if body.correction else None,
        client=client_address(request),
    )
    return dataclasses.asdict(out)


@router.post("/api/decisions", dependencies=[require(roles.DECIDE)])
async def api_decide(
    body: DecisionBody, request: Request, who: CurrentPrincipal, labeling: LabelingDep
) -> dict[str, Any]:
    out = await labeling.decide(
        who,
        body.frame_id,
        body.decision.to_input(),
        reason=body.reason,
        taxonomy_draft_needed=body.taxonomy_draft_needed,
        client=client_address(request),
    )
    return dataclasses.asdict(out)


@router.post("/api/overrides", dependencies=[require(roles.OVERRIDE)])
async def api_override(
    body: OverrideBody, request: Request, who: CurrentPrincipal, labeling: LabelingDep
) -> dict[str, Any]:
    out = await labeling.override(
        who, body.frame_id, body.to_input(), reason=body.reason, client=client_address(request)
    )
    return dataclasses.asdict(out)


@router.post("/api/samples", dependencies=[require(roles.SAMPLE_CREATE)])
async def api_create_sample(
    body: SampleBody, request: Request, who: CurrentPrincipal, labeling: LabelingDep
) -> dict[str, Any]:
    sample = await labeling.create_sample(who, body.name, body.frame_ids, client_address(request))
    return _jsonable(dataclasses.asdict(sample))


@router.post("/api/samples/{sample_id}/labels", status_code=204, dependencies=[require(roles.SAMPLE_LABEL)])
async def api_sample_label(
    sample_id: Name, body: SampleLabelBody, request: Request, who: CurrentPrincipal, labeling: LabelingDep
) -> Response:
    await labeling.sample_label(who, sample_id, body.frame_id, body.label, client_address(request))
    return Response(status_code=204)


@router.get("/api/samples/{sample_id}/agreement", dependencies=[require(roles.AGREEMENT)])
async def api_agreement(sample_id: Name, labeling: LabelingDep) -> dict[str, Any]:
    """Cohen's kappa per rater pair and per class, Fleiss' kappa, confusion pairs, disagreement."""
    return dataclasses.asdict(await labeling.agreement(sample_id))


@router.get("/api/agreement/workflow", dependencies=[require(roles.AGREEMENT)])
async def api_workflow_agreement(labeling: LabelingDep) -> dict[str, Any]:
    """Labeler/reviewer agreement of the two-pass workflow: kappa per pair and per class, confusion
    pairs, disagreement by class, station, part and reviewer (409 until something is reviewed)."""
    return dataclasses.asdict(await labeling.workflow_agreement())


@router.get("/api/audit", dependencies=[require(roles.AUDIT_READ)])
async def api_audit(
    labeling: LabelingDep,
    after_seq: Annotated[int, Query(ge=0)] = 0,
    limit: Limit = 100,
    actor: Name | None = None,
    action: Name | None = None,
    object_kind: Name | None = None,
    object_id: Name | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> dict[str, Any]:
    """A page of the audit trail, oldest first; pass the last `seq` as `after_seq` for the next."""
    records = await labeling.trail.page(
        after_seq=after_seq,
        limit=limit,
        actor=actor,
        action=action,
        object_kind=object_kind,
        object_id=object_id,
        since=since,
        until=until,
    )
    return {"records": [_record(r) for r in records], "next_after_seq": records[-1].seq if records else None}


@router.get("/api/audit/verify", dependencies=[require(roles.AUDIT_VERIFY)])
async def api_audit_verify(labeling: LabelingDep) -> dict[str, Any]:
    """Walk the whole chain; names the first record that does not fit (edited, removed, reordered)."""
    broken = await labeling.trail.verify()
    head = await labeling.trail.head()
    return {
        "intact": broken is None,
        "records": head.seq if head else 0,
        "broken_seq": broken.seq if broken else None,
        "reason": broken.reason if broken else "",
    }


# ---- errors --------------------------------------------------------------------------------------


def _unprocessable(field: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"detail": [{"loc": ["body", *field.split(".")], "msg": message, "type": "value_error"}]},
        status_code=422,
    )


async def _field_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, FieldError):
        return _unprocessable(exc.field, exc.message)
    field, _, message = str(exc).partition(": ")
    return _unprocessable(field, message or str(exc))


def _status(code: int) -> Any:
    async def handler(request: Request, exc: Exception) -> Response:
        return JSONResponse({"detail": str(exc)}, status_code=code)

    return handler


async def _login_redirect(request: Request, exc: Exception) -> Response:
    """A browser asking for a page without a live session token goes to renew it (or log in);
    API callers get the plain 401."""
    assert isinstance(exc, StarletteHTTPException)
    if (
        exc.status_code == 401
        and request.method == "GET"
        and not request.url.path.startswith("/api/")
        and "text/html" in request.headers.get("accept", "")
    ):
        return RedirectResponse(f"/auth/refresh?next={quote(request.url.path)}", status_code=303)
    return await http_exception_handler(request, exc)


def mount(app: FastAPI, labeling: LabelingApp, object_store: UrlSigner | None) -> None:
    """Attach the labeling UI and APIs to the service's FastAPI app."""
    app.state.labeling = labeling
    app.state.object_store = object_store
    app.include_router(router)
    app.add_exception_handler(FieldError, _field_error)
    app.add_exception_handler(TextError, _field_error)
    app.add_exception_handler(FrameNotFoundError, _status(404))
    app.add_exception_handler(NotFoundError, _status(404))
    app.add_exception_handler(Forbidden, _status(403))
    app.add_exception_handler(ConflictError, _status(409))
    app.add_exception_handler(InvalidLabelError, _status(409))
    app.add_exception_handler(StarletteHTTPException, _login_redirect)
