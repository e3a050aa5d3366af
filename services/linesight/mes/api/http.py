"""HTTP transport: outbox counts and per-frame delivery status (JSON)."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request

from linesight.common.identity.fastapi import require
from linesight.common.limits import Name
from linesight.mes.api.policy import HTTP_DISPATCH_STATUS, HTTP_OUTBOX, HTTP_REDELIVER
from linesight.mes.app.dispatch import MesApp, UnknownFrameError


def get_mes(request: Request) -> MesApp:
    mes: MesApp = request.app.state.mes
    return mes


MesDep = Annotated[MesApp, Depends(get_mes)]
router = APIRouter(prefix="/api")


@router.get("/outbox", dependencies=[require(HTTP_OUTBOX)])
async def outbox_counts(mes: MesDep) -> dict[str, Any]:
    return {"endpoint": mes.config.endpoint, "counts": await mes.counts()}


@router.get("/dispatch/{frame_id}", dependencies=[require(HTTP_DISPATCH_STATUS)])
async def dispatch_status(frame_id: Name, mes: MesDep) -> dict[str, Any]:
    try:
        row = await mes.status(frame_id)
    except UnknownFrameError as exc:
        raise HTTPException(404, f"no disposition for frame {frame_id!r}") from exc
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in dataclasses.asdict(row).items()}


@router.post("/dispatch/{frame_id}/redeliver", dependencies=[require(HTTP_REDELIVER)])
async def redeliver(frame_id: Name, mes: MesDep) -> dict[str, Any]:
    try:
        row = await mes.redeliver(frame_id)
    except UnknownFrameError as exc:
        raise HTTPException(404, f"no disposition for frame {frame_id!r}") from exc
    return {"frame_id": row.frame_id, "state": row.state, "attempts": row.attempts}


def mount(app: FastAPI, mes: MesApp) -> None:
    """Attach the outbox views to the service's FastAPI app."""
    app.state.mes = mes
    app.include_router(router)
