"""gRPC LabelingService: review queue, label submission, ledger stats (transport only)."""

from __future__ import annotations

import grpc

from linesight.common.pb import common_pb2, labeling_pb2, labeling_pb2_grpc
from linesight.labeling.app.labeling import FrameNotFoundError, InvalidLabelError, LabelingApp
from linesight.labeling.store.ledger import QueueItem


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
    )


class LabelingServicer(labeling_pb2_grpc.LabelingServiceServicer):
    def __init__(self, labeling: LabelingApp) -> None:
        self.labeling = labeling

    async def ListReviewQueue(  # noqa: N802 - gRPC method name
        self, request: labeling_pb2.ListReviewQueueRequest, context: grpc.aio.ServicerContext
    ) -> labeling_pb2.ListReviewQueueResponse:
        rows = await self.labeling.review_queue(queue=request.queue, limit=request.limit or 100)
        return labeling_pb2.ListReviewQueueResponse(items=[review_item(r) for r in rows])

    async def SubmitLabel(  # noqa: N802
        self, request: labeling_pb2.SubmitLabelRequest, context: grpc.aio.ServicerContext
    ) -> labeling_pb2.SubmitLabelResponse:
        try:
            state = await self.labeling.submit_label(
                frame_id=request.frame_id,
                label=request.label,
                user=request.user,
                severity=request.severity,
                ambiguous=request.ambiguous,
                comment=request.comment,
                regions=list(request.regions),
            )
        except FrameNotFoundError:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no result for frame {request.frame_id!r}")
        except InvalidLabelError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return labeling_pb2.SubmitLabelResponse(state=state)

    async def GetLedgerStats(  # noqa: N802
        self, request: labeling_pb2.GetLedgerStatsRequest, context: grpc.aio.ServicerContext
    ) -> labeling_pb2.LedgerStats:
        s = await self.labeling.stats()
        return labeling_pb2.LedgerStats(
            results=s.results, review_queue=s.review_queue, verdicts=s.verdicts, dispositions=s.dispositions
        )


def register(server: grpc.aio.Server, servicer: LabelingServicer) -> None:
    labeling_pb2_grpc.add_LabelingServiceServicer_to_server(servicer, server)
