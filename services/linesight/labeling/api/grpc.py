"""gRPC LabelingService (transport only): the caller is the token's principal; use-case errors map
to INVALID_ARGUMENT / NOT_FOUND / ABORTED / FAILED_PRECONDITION, Forbidden to PERMISSION_DENIED."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import grpc

from linesight.common.enums import enum_word
from linesight.common.identity.grpc import current_principal
from linesight.common.limits import TextError
from linesight.common.pb import common_pb2, events_pb2, labeling_pb2, labeling_pb2_grpc
from linesight.labeling.app.core import Outcome
from linesight.labeling.app.errors import (
    ConflictError,
    FieldError,
    FrameNotFoundError,
    InvalidLabelError,
    NotFoundError,
)
from linesight.labeling.app.labeling import LabelingApp
from linesight.labeling.app.labels import Box, LabelInput, Polygon
from linesight.labeling.store.ledger import QueueItem

T = TypeVar("T")


def review_item(r: QueueItem) -> labeling_pb2.ReviewItem:
    return labeling_pb2.ReviewItem(
        frame_id=r.frame_id,
        queue=r.queue,
        reason=r.reason,
        station=common_pb2.StationRef(plant=r.plant or "", line=r.line or "", station=r.station or ""),
        predicted_class=r.defect_class or "",
        confidence=r.confidence or 0.0,
        image=common_pb2.ObjectRef(bucket=r.image_bucket or "", key=r.image_key or ""),
        heatmap=common_pb2.ObjectRef(bucket=r.heatmap_bucket or "", key=r.heatmap_key or ""),
        priority=r.priority,
        state=r.state,
        product=r.product,
        assigned_to=r.assigned_to,
        claimed_by=r.claimed_by,
        claim_expires_unix_ms=int(r.claim_expires_at.timestamp() * 1000) if r.claim_expires_at else 0,
        version=r.version,
    )


def label_input(
    label: str,
    severity: int,
    regions: Any,
    polygons: Any,
    ambiguous: bool,
    ambiguity_reason: str,
    comment: str,
) -> LabelInput:
    return LabelInput(
        label=label,
        severity=enum_word(common_pb2.Severity, severity),
        boxes=tuple(Box(r.x_min, r.y_min, r.x_max, r.y_max, r.named_region) for r in regions),
        polygons=tuple(_polygon(p) for p in polygons),
        ambiguous=ambiguous,
        ambiguity_reason=ambiguity_reason,
        comment=comment,
    )


def _polygon(p: events_pb2.LabelPolygon) -> Polygon:
    if len(p.x) != len(p.y):
        raise FieldError("polygons", "x and y need the same number of coordinates")
    return Polygon(tuple(zip(p.x, p.y, strict=True)), p.named_region)


def body_input(body: labeling_pb2.LabelBody) -> LabelInput:
    return label_input(
        body.label,
        body.severity,
        body.regions,
        body.polygons,
        body.ambiguous,
        body.ambiguity_reason,
        body.comment,
    )


def outcome(o: Outcome) -> labeling_pb2.SubmitLabelResponse:
    return labeling_pb2.SubmitLabelResponse(state=o.state, label_id=o.label_id, version=o.version)


@asynccontextmanager
async def _errors(context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    try:
        yield
    except (FieldError, TextError) as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    except (FrameNotFoundError, NotFoundError) as exc:
        await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
    except ConflictError as exc:
        await context.abort(grpc.StatusCode.ABORTED, str(exc))
    except InvalidLabelError as exc:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))


class LabelingServicer(labeling_pb2_grpc.LabelingServiceServicer):
    def __init__(self, labeling: LabelingApp) -> None:
        self.labeling = labeling

    async def _run(self, context: grpc.aio.ServicerContext, call: Callable[[], Awaitable[T]]) -> T:
        async with _errors(context):
            return await call()
        raise AssertionError("unreachable: abort raises")  # pragma: no cover

    async def ListReviewQueue(  # noqa: N802 - gRPC method name
        self, request: labeling_pb2.ListReviewQueueRequest, context: grpc.aio.ServicerContext
    ) -> labeling_pb2.ListReviewQueueResponse:
        rows = await self.labeling.review_queue(queue=request.queue, limit=request.limit or 100)
        return labeling_pb2.ListReviewQueueResponse(items=[review_item(r) for r in rows])

    async def SubmitLabel(  # noqa: N802
        self, request: labeling_pb2.SubmitLabelRequest, context: grpc.aio.ServicerContext
    ) -> labeling_pb2.SubmitLabelResponse:
        body = label_input(
            request.label,
            request.severity,
            request.regions,
            request.polygons,
            request.ambiguous,
            request.ambiguity_reason,
            request.comment,
        )
        return outcome(
            await self._run(
                context,
                lambda: self.labeling.submit_label(
                    current_principal(), request.frame_id, body, context.peer()
                ),
            )
        )

    async def ReviewLabel(  # noqa: N802
        self, request: labeling_pb2.ReviewLabelRequest, context: grpc.aio.ServicerContext
    ) -> labeling_pb2.SubmitLabelResponse:
        correction = body_input(request.correction) if request.HasField("correction") else None
        return outcome(
            await self._run(
                context,
                lambda: self.labeling.review(
                    current_principal(),
                    request.frame_id,
                    accept=request.accept,
                    reason=request.reason,
                    correction=correction,
                    client=context.peer(),
                ),
            )
        )

    async def DecideDispute(  # noqa: N802
        self, request: labeling_pb2.DecideDisputeRequest, context: grpc.aio.ServicerContext
    ) -> labeling_pb2.SubmitLabelResponse:
        return outcome(
            await self._run(
                context,
                lambda: self.labeling.decide(
                    current_principal(),
                    request.frame_id,
                    body_input(request.decision),
                    reason=request.reason,
                    taxonomy_draft_needed=request.taxonomy_draft_needed,
                    client=context.peer(),
                ),
            )
        )

    async def RecordOverride(  # noqa: N802
        self, request: labeling_pb2.RecordOverrideRequest, context: grpc.aio.ServicerContext
    ) -> labeling_pb2.SubmitLabelResponse:
        return outcome(
            await self._run(
                context,
                lambda: self.labeling.override(
                    current_principal(),
                    request.frame_id,
                    body_input(request.label),
                    reason=request.reason,
                    client=context.peer(),
                ),
            )
        )

    async def ClaimItem(  # noqa: N802
        self, request: labeling_pb2.ClaimItemRequest, context: grpc.aio.ServicerContext
    ) -> labeling_pb2.ClaimItemResponse:
        item = await self._run(
            context,
            lambda: self.labeling.claim(current_principal(), queue=request.queue, frame_id=request.frame_id),
        )
        if item is None:
            return labeling_pb2.ClaimItemResponse(claimed=False)
        return labeling_pb2.ClaimItemResponse(claimed=True, item=review_item(item))

    async def ReleaseItem(  # noqa: N802
        self, request: labeling_pb2.ReleaseItemRequest, context: grpc.aio.ServicerContext
    ) -> labeling_pb2.ReleaseItemResponse:
        await self._run(context, lambda: self.labeling.release(current_principal(), request.frame_id))
        return labeling_pb2.ReleaseItemResponse()

    async def GetQueueStats(  # noqa: N802
        self, request: labeling_pb2.GetQueueStatsRequest, context: grpc.aio.ServicerContext
    ) -> labeling_pb2.QueueStatsResponse:
        stats = await self.labeling.queue_stats()
        return labeling_pb2.QueueStatsResponse(
            queues=[labeling_pb2.QueueStat(**dataclasses.asdict(s)) for s in stats]
        )

    async def GetAgreement(  # noqa: N802
        self, request: labeling_pb2.GetAgreementRequest, context: grpc.aio.ServicerContext
    ) -> labeling_pb2.AgreementReport:
        f = await self._run(context, lambda: self.labeling.agreement(request.sample_id))
        return labeling_pb2.AgreementReport(
            sample_id=request.sample_id,
            frames=f.frames,
            raters=f.raters,
            fleiss_kappa=f.fleiss_kappa,
            pairs=[labeling_pb2.PairKappa(**dataclasses.asdict(p)) for p in f.pairs],
            classes=[labeling_pb2.ClassKappa(label=c, kappa=k) for c, k in f.classes.items()],
            confusion=[labeling_pb2.ConfusionPair(label_a=a, label_b=b, count=n) for a, b, n in f.confusion],
            disagreement_by_class=f.disagreement_by_class,
            disagreement_by_station=f.disagreement_by_station,
            disagreement_by_part=f.disagreement_by_part,
            disagreement_by_reviewer=f.disagreement_by_reviewer,
        )

    async def ListAudit(  # noqa: N802
        self, request: labeling_pb2.ListAuditRequest, context: grpc.aio.ServicerContext
    ) -> labeling_pb2.ListAuditResponse:
        records = await self.labeling.trail.page(
            after_seq=request.after_seq,
            limit=min(max(request.limit or 100, 1), 1000),
            actor=request.actor or None,
            action=request.action or None,
            object_id=request.object_id or None,
        )
        return labeling_pb2.ListAuditResponse(
            records=[
                labeling_pb2.AuditRecord(
                    seq=r.seq,
                    at=r.at.isoformat(),
                    actor=r.actor,
                    actor_name=r.actor_name,
                    role=r.role,
                    action=r.action,
                    object_kind=r.object_kind,
                    object_id=r.object_id,
                    old_value=r.old_value or "",
                    new_value=r.new_value or "",
                    reason=r.reason,
                    client=r.client,
                    hash=r.hash,
                )
                for r in records
            ]
        )

    async def VerifyAudit(  # noqa: N802
        self, request: labeling_pb2.VerifyAuditRequest, context: grpc.aio.ServicerContext
    ) -> labeling_pb2.VerifyAuditResponse:
        broken = await self.labeling.trail.verify()
        head = await self.labeling.trail.head()
        return labeling_pb2.VerifyAuditResponse(
            intact=broken is None,
            broken_seq=broken.seq if broken else 0,
            reason=broken.reason if broken else "",
            records=head.seq if head else 0,
        )

    async def GetLedgerStats(  # noqa: N802
        self, request: labeling_pb2.GetLedgerStatsRequest, context: grpc.aio.ServicerContext
    ) -> labeling_pb2.LedgerStats:
        s = await self.labeling.stats()
        return labeling_pb2.LedgerStats(
            results=s.results, review_queue=s.review_queue, verdicts=s.verdicts, dispositions=s.dispositions
        )


def register(server: grpc.aio.Server, servicer: LabelingServicer) -> None:
    labeling_pb2_grpc.add_LabelingServiceServicer_to_server(servicer, server)
