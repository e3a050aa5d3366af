"""HTTP transport: the results page (server-rendered, no JS build), the label form and JSON APIs."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Protocol
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from linesight.common.enums import enum_value, enum_words
from linesight.common.pb import common_pb2
from linesight.labeling.app.labeling import FrameNotFoundError, InvalidLabelError, LabelingApp, reason_words
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

router = APIRouter()


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


def _severity(word: str) -> int:
    """'major' -> SEVERITY_MAJOR; unknown or empty -> unspecified (the label still counts)."""
    try:
        return enum_value(common_pb2.Severity, word) if word.strip() else 0
    except ValueError:
        return 0


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}


@router.get("/", response_class=HTMLResponse)
async def results_page(
    request: Request,
    labeling: LabelingDep,
    signer: SignerDep,
    verdict: str = "",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    message: str = "",
    error: str = "",
) -> HTMLResponse:
    results = _with_urls(await labeling.list_results(limit=limit, verdict=verdict), signer)
    queue = _with_urls(await labeling.review_queue(limit=100), signer)
    stats = await labeling.stats()
    return templates.TemplateResponse(
        request,
        "index.html",
        {
            "results": results,
            "queue": queue,
            "stats": stats,
            "verdict": verdict,
            "message": message,
            "error": error,
            "severities": enum_words(common_pb2.Severity),
        },
    )


@router.post("/label")
async def submit_label_form(request: Request, labeling: LabelingDep) -> RedirectResponse:
    """Label form target (urlencoded). Redirects back to the page with the outcome in the query."""
    form = {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
    severity = _severity(form.get("severity", ""))
    try:
        state = await labeling.submit_label(
            frame_id=form.get("frame_id", ""),
            label=form.get("label", ""),
            user=form.get("user", ""),
            severity=severity,
            ambiguous=form.get("ambiguous", "") in ("on", "true", "1"),
            comment=form.get("comment", ""),
        )
    except FrameNotFoundError:
        return RedirectResponse(
            f"/?error={quote('unknown frame ' + form.get('frame_id', ''))}", status_code=303
        )
    except InvalidLabelError as exc:
        return RedirectResponse(f"/?error={quote(str(exc))}", status_code=303)
    msg = f"{form.get('frame_id', '')[:12]}: {state}"
    return RedirectResponse(f"/?message={quote(msg)}", status_code=303)


@router.get("/api/results")
async def api_results(
    labeling: LabelingDep,
    signer: SignerDep,
    verdict: str = "",
    station: str = "",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    rows = await labeling.list_results(limit=limit, verdict=verdict, station=station)
    return [_jsonable(r) for r in _with_urls(rows, signer)]


@router.get("/api/review-queue")
async def api_review_queue(
    labeling: LabelingDep,
    signer: SignerDep,
    queue: str = "",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    return [_jsonable(r) for r in _with_urls(await labeling.review_queue(queue=queue, limit=limit), signer)]


@router.get("/api/stats")
async def api_stats(labeling: LabelingDep) -> dict[str, Any]:
    return dataclasses.asdict(await labeling.stats())


@router.get("/api/audit")
async def api_audit(
    labeling: LabelingDep, frame_id: str = "", limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[dict[str, Any]]:
    return [_jsonable(dataclasses.asdict(r)) for r in await labeling.audit_trail(frame_id, limit)]


@router.post("/api/labels")
async def api_submit_label(labeling: LabelingDep, body: dict[str, Any]) -> dict[str, str]:
    """JSON twin of the form: {frame_id, label, user, severity?, ambiguous?, comment?}."""
    try:
        state = await labeling.submit_label(
            frame_id=str(body.get("frame_id", "")),
            label=str(body.get("label", "")),
            user=str(body.get("user", "")),
            severity=_severity(str(body.get("severity", ""))),
            ambiguous=bool(body.get("ambiguous", False)),
            comment=str(body.get("comment", "")),
        )
    except FrameNotFoundError as exc:
        raise HTTPException(404, f"no result for frame {exc}") from exc
    except InvalidLabelError as exc:
        raise HTTPException(409, str(exc)) from exc
    return {"state": state}


def mount(app: FastAPI, labeling: LabelingApp, object_store: UrlSigner | None) -> None:
    """Attach the labeling UI and APIs to the service's FastAPI app."""
    app.state.labeling = labeling
    app.state.object_store = object_store
    app.include_router(router)
