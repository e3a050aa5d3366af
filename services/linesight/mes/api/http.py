"""HTTP transport: outbox views and redelivery, and the inbound MES API (part context, quality
holds, result queries, per-endpoint delivery status) under `/api/plants/{plant}/...`.

Inbound callers are MES clients (service accounts with the `mes_client` role on their plant, who
exchange their API key for a bearer token at the issuer's /auth/token) or people with a grant on
the plant; each client is rate limited (429 with Retry-After). This service serves one plant: any
other plant in the path is a 404, never another plant's data.
"""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from linesight.common.identity.fastapi import CurrentPrincipal, require
from linesight.common.limits import Name, Text
from linesight.mes.api.policy import (
    HTTP_DELIVERY_STATUS,
    HTTP_DISPATCH_STATUS,
    HTTP_HOLD,
    HTTP_OUTBOX,
    HTTP_PART_CONTEXT_READ,
    HTTP_PART_CONTEXT_WRITE,
    HTTP_QUERY_HOLDS,
    HTTP_QUERY_RESULTS,
    HTTP_REDELIVER,
    HTTP_RELEASE_HOLD,
)
from linesight.mes.api.ratelimit import RateLimit, TokenBuckets
from linesight.mes.app.dispatch import MesApp, UnknownFrameError
from linesight.mes.app.inbound import InboundApp, UnknownHoldError
from linesight.mes.store.inbound import Hold, PartContext
from linesight.mes.store.outbox import OutboxRow

_MAX_ID = 2**62  # ids are BIGINT: a larger number is the caller's error (422), not the database's


def get_mes(request: Request) -> MesApp:
    mes: MesApp = request.app.state.mes
    return mes


def get_inbound(request: Request) -> InboundApp:
    inbound: InboundApp = request.app.state.mes_inbound
    return inbound


def rate_limited(request: Request) -> None:
    """429 when this caller (token subject) is over its rate; runs after `require`."""
    principal = getattr(request.state, "principal", None)
    buckets: TokenBuckets = request.app.state.mes_rate
    wait = buckets.take(principal.subject if principal is not None else "anonymous")
    if wait > 0:
        raise HTTPException(
            429,
            f"rate limit of {buckets.limit.rate_per_s:g} requests/s exceeded",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )


def _instant(value: datetime) -> datetime:
    """Aware and in a sane range: a naive time is UTC; years outside 1900-2200 are refused."""
    value = value if value.tzinfo else value.replace(tzinfo=UTC)
    if not 1900 <= value.astimezone(UTC).year <= 2200:
        raise ValueError("time must lie between the years 1900 and 2200")
    return value


MesDep = Annotated[MesApp, Depends(get_mes)]
InboundDep = Annotated[InboundApp, Depends(get_inbound)]
Instant = Annotated[datetime, AfterValidator(_instant)]
PlantPath = Annotated[Name, Path(description="the plant this MES service serves")]
HoldId = Annotated[int, Path(ge=1, le=_MAX_ID)]
LIMITED = Depends(rate_limited)
router = APIRouter(prefix="/api")


def _json(v: Any) -> Any:
    return v.isoformat() if isinstance(v, datetime) else v


@router.get("/outbox", dependencies=[require(HTTP_OUTBOX)])
async def outbox_counts(mes: MesDep) -> dict[str, Any]:
    return {"endpoint": mes.config.endpoint, "counts": await mes.counts()}


@router.get("/dispatch/{frame_id}", dependencies=[require(HTTP_DISPATCH_STATUS)])
async def dispatch_status(frame_id: Name, mes: MesDep) -> dict[str, Any]:
    try:
        row = await mes.status(frame_id)
    except UnknownFrameError as exc:
        raise HTTPException(404, f"no disposition for frame {frame_id!r}") from exc
    return {k: _json(v) for k, v in dataclasses.asdict(row).items()}


@router.post("/dispatch/{frame_id}/redeliver", dependencies=[require(HTTP_REDELIVER)])
async def redeliver(frame_id: Name, mes: MesDep) -> dict[str, Any]:
    try:
        row = await mes.redeliver(frame_id)
    except UnknownFrameError as exc:
        raise HTTPException(404, f"no disposition for frame {frame_id!r}") from exc
    return {"frame_id": row.frame_id, "state": row.state, "attempts": row.attempts}


# ---- inbound MES API ---------------------------------------------------------------------------


class PartContextIn(BaseModel):
    """What MES knows about a serial; all fields replace what was pushed before."""

    model_config = ConfigDict(extra="forbid")
    order: Name = ""
    product: Name = ""
    batch: Name = ""
    customer_requirement: Text = ""


class HoldIn(BaseModel):
    """Hold a batch or an order (`value`), or parts captured in [from_ts, until_ts)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["batch", "order", "time_range"]
    value: Name = ""
    from_ts: Instant | None = None
    until_ts: Instant | None = None
    reason: Text = Field(min_length=1)


def _check_plant(mes: MesApp, plant: str) -> None:
    if plant != mes.plant:
        raise HTTPException(404, f"this MES service serves plant {mes.plant!r}, not {plant!r}")


def _context(c: PartContext) -> dict[str, Any]:
    return {
        "serial": c.serial,
        "order": c.order_no,
        "product": c.product,
        "batch": c.batch,
        "customer_requirement": c.customer_requirement,
        "updated_by": c.updated_by,
        "updated_at": _json(c.updated_at),
    }


def _hold(h: Hold) -> dict[str, Any]:
    return {k: _json(v) for k, v in dataclasses.asdict(h).items()} | {"active": h.active}


def _result(r: OutboxRow, holds: list[int]) -> dict[str, Any]:
    p = r.payload
    return {
        "seq": r.seq,
        "frame_id": r.frame_id,
        "event_id": r.event_id,
        "serial": r.part_id,
        "batch": r.batch,
        "order": p.get("order", ""),
        "plant": r.plant,
        "line": r.line,
        "station": r.station,
        "disposition": p.get("disposition"),
        "verdict": p.get("verdict"),
        "defect_class": p.get("defect_class"),
        "severity": p.get("severity"),
        "confidence": p.get("confidence"),
        "model_version": p.get("model_version"),
        "captured_at": _json(r.captured_at),
        "received_at": _json(r.created_at),
        "delivery_state": r.state,
        "delivery_key": r.key,
        "attempts": r.attempts,
        "delivered_at": _json(r.delivered_at),
        "correction_of": r.corrects_event_id or None,
        "holds": holds,
    }


@router.put(
    "/plants/{plant}/parts/{serial}",
    dependencies=[require(HTTP_PART_CONTEXT_WRITE, plant="plant"), LIMITED],
)
async def put_part_context(
    plant: PlantPath,
    serial: Name,
    body: PartContextIn,
    who: CurrentPrincipal,
    mes: MesDep,
    inbound: InboundDep,
) -> dict[str, Any]:
    """Set a serial's order, product, batch and customer requirement. Parts of it already
    inspected that an active batch or order hold now covers are put on hold (`held`)."""
    _check_plant(mes, plant)
    if not serial:
        raise HTTPException(422, "serial must not be empty")
    saved, held = await inbound.put_context(
        PartContext(
            serial=serial,
            order_no=body.order,
            product=body.product,
            batch=body.batch,
            customer_requirement=body.customer_requirement,
            updated_by=who.subject,
        )
    )
    return {"context": _context(saved), "held": held}


@router.get(
    "/plants/{plant}/parts/{serial}",
    dependencies=[require(HTTP_PART_CONTEXT_READ, plant="plant"), LIMITED],
)
async def get_part_context(
    plant: PlantPath, serial: Name, mes: MesDep, inbound: InboundDep
) -> dict[str, Any]:
    _check_plant(mes, plant)
    found = await inbound.get_context(serial)
    if found is None:
        raise HTTPException(404, f"no context for serial {serial!r}")
    return _context(found)


@router.post(
    "/plants/{plant}/holds", status_code=201, dependencies=[require(HTTP_HOLD, plant="plant"), LIMITED]
)
async def create_hold(
    plant: PlantPath, body: HoldIn, who: CurrentPrincipal, mes: MesDep, inbound: InboundDep
) -> dict[str, Any]:
    """Put a batch, an order or a capture time range on quality hold: parts already dispositioned
    get a `hold` correction naming their original message; parts arriving later are held."""
    _check_plant(mes, plant)
    try:
        hold, changed = await inbound.hold(
            kind=body.kind,
            value=body.value,
            from_ts=body.from_ts,
            until_ts=body.until_ts,
            reason=body.reason,
            by=who.subject,
        )
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc
    return {"hold": _hold(hold), "parts_changed": changed}


@router.get("/plants/{plant}/holds", dependencies=[require(HTTP_QUERY_HOLDS, plant="plant"), LIMITED])
async def list_holds(
    plant: PlantPath,
    mes: MesDep,
    inbound: InboundDep,
    active: bool = True,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    _check_plant(mes, plant)
    return {"holds": [_hold(h) for h in await inbound.holds(active_only=active, limit=limit)]}


@router.get(
    "/plants/{plant}/holds/{hold_id}", dependencies=[require(HTTP_QUERY_HOLDS, plant="plant"), LIMITED]
)
async def get_hold(plant: PlantPath, hold_id: HoldId, mes: MesDep, inbound: InboundDep) -> dict[str, Any]:
    _check_plant(mes, plant)
    try:
        return _hold(await inbound.get_hold(hold_id))
    except UnknownHoldError as exc:
        raise HTTPException(404, f"no hold {hold_id}") from exc


@router.post(
    "/plants/{plant}/holds/{hold_id}/release",
    dependencies=[require(HTTP_RELEASE_HOLD, plant="plant"), LIMITED],
)
async def release_hold(
    plant: PlantPath, hold_id: HoldId, who: CurrentPrincipal, mes: MesDep, inbound: InboundDep
) -> dict[str, Any]:
    """End a hold: its parts (unless another hold holds them) get their own disposition again,
    sent as corrections. Releasing twice changes nothing."""
    _check_plant(mes, plant)
    try:
        hold, changed = await inbound.release(hold_id, by=who.subject)
    except UnknownHoldError as exc:
        raise HTTPException(404, f"no hold {hold_id}") from exc
    return {"hold": _hold(hold), "parts_changed": changed}


@router.get("/plants/{plant}/results", dependencies=[require(HTTP_QUERY_RESULTS, plant="plant"), LIMITED])
async def query_results(
    plant: PlantPath,
    mes: MesDep,
    inbound: InboundDep,
    serial: Name | None = None,
    batch: Name | None = None,
    line: Name | None = None,
    station: Name | None = None,
    since: Annotated[Instant | None, Query(description="capture time, inclusive")] = None,
    until: Annotated[Instant | None, Query(description="capture time, exclusive")] = None,
    after: Annotated[int, Query(ge=0, le=_MAX_ID, description="page cursor: `next_after`")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Results by serial, batch, line/station and capture time range, oldest first, with their
    current disposition (holds and corrections applied) and delivery state."""
    _check_plant(mes, plant)
    found = await inbound.results(
        serial=serial,
        batch=batch,
        line=line,
        station=station,
        since=since,
        until=until,
        after_seq=after,
        limit=limit,
    )
    items = [_result(r, h) for r, h in found]
    return {"items": items, "next_after": items[-1]["seq"] if len(items) == limit else None}


@router.get(
    "/plants/{plant}/deliveries/{frame_id}",
    dependencies=[require(HTTP_DELIVERY_STATUS, plant="plant"), LIMITED],
)
async def delivery_status(
    plant: PlantPath, frame_id: Name, mes: MesDep, inbound: InboundDep
) -> dict[str, Any]:
    """A message's delivery state and, per endpoint and message key (the original and each
    correction), the attempts, the last outcome, status code and error."""
    _check_plant(mes, plant)
    try:
        status = await inbound.delivery(frame_id)
    except UnknownFrameError as exc:
        raise HTTPException(404, f"no disposition for frame {frame_id!r}") from exc
    row = status.row
    return {
        "frame_id": row.frame_id,
        "delivery_key": row.key,
        "disposition": row.payload.get("disposition"),
        "state": row.state,
        "attempts": row.attempts,
        "last_error": row.last_error,
        "delivered_at": _json(row.delivered_at),
        "correction_of": row.corrects_event_id or None,
        "holds": status.holds,
        "endpoints": [{k: _json(v) for k, v in d.items()} for d in status.current],
        "attempts_by_endpoint": [
            {k: _json(v) for k, v in dataclasses.asdict(e).items()} for e in status.endpoints
        ],
    }


def mount(app: FastAPI, mes: MesApp, *, rate_limit: RateLimit | None = None) -> None:
    """Attach the outbox views and the inbound API to the service's FastAPI app."""
    app.state.mes = mes
    app.state.mes_inbound = InboundApp(mes)
    app.state.mes_rate = TokenBuckets(rate_limit or RateLimit())
    app.include_router(router)
