"""Client of the LabelingService (review queue, label submission, ledger counts)."""

from __future__ import annotations

from collections.abc import Sequence

from linesight.common.grpcutil import ServiceClient, TokenSource
from linesight.common.pb import common_pb2, labeling_pb2, labeling_pb2_grpc


class LabelingClient(ServiceClient[labeling_pb2_grpc.LabelingServiceStub]):
    """Thick client for the labeling API."""

    def __init__(self, target: str, *, timeout_s: float = 10.0, token: TokenSource | None = None) -> None:
        super().__init__(
            target,
            labeling_pb2_grpc.LabelingServiceStub,
            service="labeling",
            timeout_s=timeout_s,
            token=token,
        )

    async def review_queue(self, queue: str = "", limit: int = 0) -> list[labeling_pb2.ReviewItem]:
        request = labeling_pb2.ListReviewQueueRequest(queue=queue, limit=limit)
        response: labeling_pb2.ListReviewQueueResponse = await self.call("ListReviewQueue", request)
        return list(response.items)

    async def submit_label(
        self,
        frame_id: str,
        label: str,
        *,
        user: str,
        severity: common_pb2.Severity = common_pb2.SEVERITY_UNSPECIFIED,
        regions: Sequence[common_pb2.Region] = (),
        ambiguous: bool = False,
        comment: str = "",
    ) -> labeling_pb2.SubmitLabelResponse:
        """Not retried: a second submission by the same user counts as a new vote."""
        request = labeling_pb2.SubmitLabelRequest(
            frame_id=frame_id,
            label=label,
            severity=severity,
            regions=list(regions),
            user=user,
            ambiguous=ambiguous,
            comment=comment,
        )
        response: labeling_pb2.SubmitLabelResponse = await self.call("SubmitLabel", request, idempotent=False)
        return response

    async def ledger_stats(self) -> labeling_pb2.LedgerStats:
        result: labeling_pb2.LedgerStats = await self.call(
            "GetLedgerStats", labeling_pb2.GetLedgerStatsRequest()
        )
        return result
