"""HTTP transport: the inspector's pages (queue, frame labeling/review/dispute view, line operator,
agreement, audit) and the one JSON view of a frame they need. Pages are server-rendered shells;
their data comes from the JSON API (api/http.py) so a live update replaces data, never the page.
The vendored libraries under static/ are served without a session (they hold no data)."""

from __future__ import annotations

import dataclasses
import logging
import mimetypes
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from linesight.common.enums import enum_words
from linesight.common.identity import Principal
from linesight.common.identity.fastapi import CurrentPrincipal, require
from linesight.common.limits import Name
from linesight.common.pb import common_pb2, events_pb2
from linesight.common.storage import ObjectNotFound, StorageUnavailable
from linesight.labeling.api import policy
from linesight.labeling.api.http import LabelingDep, _jsonable
from linesight.labeling.app import roles
from linesight.labeling.app.config import QUEUES
from linesight.labeling.app.labeling import LabelingApp
from linesight.labeling.app.labels import AMBIGUITY_REASONS, GOOD
from linesight.labeling.app.routing import REASON_WORDS, reason_words

log = logging.getLogger(__name__)

STATIC_PATH = "/static"
# The browser caches a frame's image for this long (a frame id's pixels never change).
IMAGE_MAX_AGE_S = 3600
_HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(_HERE / "templates"))

router = APIRouter()

# Navigation: (path, title, operation the viewer needs to see the link).
NAV = (
    ("/queue", "Queue", roles.VIEW),
    ("/", "Results", roles.VIEW),
    ("/operator", "Line", roles.OVERRIDE),
    ("/agreement", "Agreement", roles.AGREEMENT),
    ("/audit", "Audit", roles.AUDIT_READ),
    ("/taxonomy", "Taxonomy", policy.TAXONOMY_EDIT),
)
# What the pages let a viewer do, by the operation the API will check again.
ABILITIES = {
    "label": roles.LABEL,
    "claim": roles.CLAIM,
    "review": roles.REVIEW,
    "decide": roles.DECIDE,
    "override": roles.OVERRIDE,
    "audit_verify": roles.AUDIT_VERIFY,
    "assign": roles.ASSIGN,
    "taxonomy_edit": policy.TAXONOMY_EDIT,
    "taxonomy_approve": policy.TAXONOMY_APPROVE,
}


def _may(who: Principal, plant: str, operation: str) -> bool:
    return bool(who.roles_at(plant, None) & policy.ROLES[operation])


def render_page(request: Request, who: Principal, template: str, **context: Any) -> HTMLResponse:
    """A page with the role-aware navigation and what the viewer may do (the API decides again)."""
    plant = request.app.state.labeling.plant
    settings = request.app.state.linesight_auth.settings
    return templates.TemplateResponse(
        request,
        template,
        {
            "who": who,
            "nav": [(path, title) for path, title, op in NAV if _may(who, plant, op)],
            "can": {k: _may(who, plant, op) for k, op in ABILITIES.items()},
            "csrf_cookie": settings.csrf_cookie_name,
            "csrf_header": settings.csrf_header,
            "csrf_token": request.cookies.get(settings.csrf_cookie_name, ""),
            "path": request.url.path,
            **context,
        },
    )


@router.get("/queue", response_class=HTMLResponse, dependencies=[require(roles.VIEW)])
async def queue_page(request: Request, who: CurrentPrincipal) -> HTMLResponse:
    return render_page(
        request,
        who,
        "queue.html",
        queues=list(QUEUES),
        reasons=sorted(REASON_WORDS.items()),
    )


def image_url(frame_id: str, kind: Literal["image", "heatmap"], key: str | None) -> str:
    """The frame's picture from this origin, under the viewer's session ('' when there is none)."""
    return f"/api/frames/{quote(frame_id, safe='')}/{kind}" if key else ""


async def frame_view(labeling: LabelingApp, frame_id: str) -> dict[str, Any]:
    """Everything the frame view shows: the queue entry, the model's call with its regions and
    class scores, the capture metadata, the labels so far and the product's classes."""
    items = await labeling.review_queue(frame_id=frame_id, limit=1)
    result = await labeling.latest_result(frame_id)
    if result is None:
        raise HTTPException(404, f"no inspection result for frame {frame_id!r}")
    decoded = events_pb2.InspectionResult.FromString(bytes(result.payload))
    item = items[0] if items else None
    taxonomy = await labeling.taxonomy(item.product if item and item.product else labeling.product)
    labels = await labeling.frame_labels(frame_id)
    return {
        "frame_id": frame_id,
        "state": item.state if item else "closed",
        "queue": item.queue if item else "",
        "reason": item.reason if item else result.review_reason,
        "reason_text": reason_words(item.reason if item else result.review_reason),
        "claimed_by": item.claimed_by if item else "",
        "best_class": item.best_class if item else result.defect_class,
        "product": item.product if item and item.product else labeling.product,
        "capture": {
            "plant": result.plant,
            "line": result.line,
            "station": result.station,
            "part_id": result.part_id,
            "captured_at": result.captured_at.isoformat() if result.captured_at else None,
            "camera": decoded.capture.camera_id,
            "batch": decoded.capture.batch,
            "shift": decoded.capture.shift,
            "lighting_profile": decoded.capture.lighting_profile,
            "profile_version": decoded.capture.profile_version,
        },
        "model": {
            "version": result.model_version,
            "verdict": result.verdict,
            "defect_class": result.defect_class,
            "severity": result.severity,
            "confidence": result.confidence,
            "anomaly_score": result.anomaly_score,
            "taxonomy_version": result.taxonomy_version,
            "class_scores": sorted(
                ({"class": s.defect_class, "score": s.probability} for s in decoded.class_scores),
                key=lambda s: -float(s["score"]),
            ),
            "regions": [
                {
                    "x_min": r.x_min,
                    "y_min": r.y_min,
                    "x_max": r.x_max,
                    "y_max": r.y_max,
                    "peak_score": r.peak_score,
                    "named_region": r.named_region,
                }
                for r in decoded.regions
            ],
        },
        "image_url": image_url(frame_id, "image", result.image_key),
        "heatmap_url": image_url(frame_id, "heatmap", result.heatmap_key),
        "labels": [_jsonable(dataclasses.asdict(x)) for x in labels],
        "classes": [GOOD, *(taxonomy.classes if taxonomy else [])],
        "taxonomy_version": taxonomy.version if taxonomy else "",
    }


@router.get("/api/frames/{frame_id}/view", dependencies=[require(roles.VIEW)])
async def api_frame_view(frame_id: Name, labeling: LabelingDep) -> dict[str, Any]:
    """The frame view's data (the page prefetches the next frame with it)."""
    return await frame_view(labeling, frame_id)


class ObjectReader(Protocol):
    """linesight.common.storage.ObjectStore's async read."""

    async def aget_bytes(self, bucket: str, key: str) -> bytes: ...


async def _picture(request: Request, labeling: LabelingApp, frame_id: str, kind: str) -> Response:
    """Stream a frame's image or heatmap from S3 through this origin: the browser never needs S3's
    address or a presigned URL, and the viewer's session decides who sees a frame."""
    result = await labeling.latest_result(frame_id)
    bucket, key = (
        (
            (result.image_bucket, result.image_key)
            if kind == "image"
            else (result.heatmap_bucket, result.heatmap_key)
        )
        if result
        else (None, None)
    )
    store: ObjectReader | None = getattr(request.app.state, "object_store", None)
    if not bucket or not key:
        raise HTTPException(404, f"no {kind} for frame {frame_id!r}")
    if store is None:
        raise HTTPException(503, "object storage is not configured")
    try:
        data = await store.aget_bytes(bucket, key)
    except ObjectNotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except StorageUnavailable as exc:
        log.warning("cannot read %s of %s: %s", kind, frame_id, exc)
        raise HTTPException(503, f"object storage unavailable: {exc}") from exc
    media = mimetypes.guess_type(key)[0] or "application/octet-stream"
    return Response(data, media_type=media, headers={"cache-control": f"private, max-age={IMAGE_MAX_AGE_S}"})


@router.get("/api/frames/{frame_id}/image", dependencies=[require(roles.VIEW)])
async def api_frame_image(request: Request, frame_id: Name, labeling: LabelingDep) -> Response:
    return await _picture(request, labeling, frame_id, "image")


@router.get("/api/frames/{frame_id}/heatmap", dependencies=[require(roles.VIEW)])
async def api_frame_heatmap(request: Request, frame_id: Name, labeling: LabelingDep) -> Response:
    return await _picture(request, labeling, frame_id, "heatmap")


@router.get("/frames/{frame_id}", response_class=HTMLResponse, dependencies=[require(roles.VIEW)])
async def frame_page(
    request: Request, frame_id: Name, who: CurrentPrincipal, labeling: LabelingDep
) -> HTMLResponse:
    return render_page(
        request,
        who,
        "frame.html",
        view=await frame_view(labeling, frame_id),
        severities=enum_words(common_pb2.Severity),
        ambiguity_reasons=list(AMBIGUITY_REASONS),
    )


@router.get("/operator", response_class=HTMLResponse, dependencies=[require(roles.OVERRIDE)])
async def operator_page(request: Request, who: CurrentPrincipal, labeling: LabelingDep) -> HTMLResponse:
    taxonomy = await labeling.taxonomy(labeling.product)
    return render_page(request, who, "operator.html", defect_classes=taxonomy.classes if taxonomy else [])


@router.get("/agreement", response_class=HTMLResponse, dependencies=[require(roles.AGREEMENT)])
async def agreement_page(request: Request, who: CurrentPrincipal, sample: Name = "") -> HTMLResponse:
    return render_page(request, who, "agreement.html", sample=sample)


@router.get("/audit", response_class=HTMLResponse, dependencies=[require(roles.AUDIT_READ)])
async def audit_page(request: Request, who: CurrentPrincipal) -> HTMLResponse:
    return render_page(request, who, "audit.html")


def mount(app: FastAPI) -> None:
    """Attach the pages and the vendored static files (the service opens STATIC_PATH in its auth)."""
    app.include_router(router)
    app.mount(STATIC_PATH, StaticFiles(directory=str(_HERE / "static")), name="static")
