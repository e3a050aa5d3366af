"""Client of the LabelingService: queues and claims, the two label passes, QA decisions, operator
overrides, agreement figures, the audit trail and ledger counts. The caller is whoever the
`token` names; no request carries a user name."""

from __future__ import annotations

from linesight.common.clients.base import PeerClient
from linesight.common.pb import labeling_pb2, labeling_pb2_grpc


class LabelingClient(PeerClient[labeling_pb2_grpc.LabelingServiceStub]):
    """Thick client for the labeling API."""

    stub_class = labeling_pb2_grpc.LabelingServiceStub
    service_name = "labeling"

    async def review_queue(self, queue: str = "", limit: int = 0) -> list[labeling_pb2.ReviewItem]:
        request = labeling_pb2.ListReviewQueueRequest(queue=queue, limit=limit)
        response = await self._rpc("ListReviewQueue", request, labeling_pb2.ListReviewQueueResponse)
        return list(response.items)

    async def claim(self, *, queue: str = "", frame_id: str = "") -> labeling_pb2.ReviewItem | None:
        """The next item of `queue` (or `frame_id`) held for the caller under a lease; None: nothing left.
        Not retried: a lost answer would leave a claim the caller does not know it holds."""
        request = labeling_pb2.ClaimItemRequest(queue=queue, frame_id=frame_id)
        response = await self._rpc("ClaimItem", request, labeling_pb2.ClaimItemResponse, idempotent=False)
        return response.item if response.claimed else None

    async def release(self, frame_id: str) -> None:
        await self.call("ReleaseItem", labeling_pb2.ReleaseItemRequest(frame_id=frame_id))

    async def submit_label(
        self, frame_id: str, body: labeling_pb2.LabelBody
    ) -> labeling_pb2.SubmitLabelResponse:
        """Pass 1. Not retried: the first attempt may have been recorded."""
        request = labeling_pb2.SubmitLabelRequest(
            frame_id=frame_id,
            label=body.label,
            severity=body.severity,
            regions=list(body.regions),
            polygons=list(body.polygons),
            ambiguous=body.ambiguous,
            ambiguity_reason=body.ambiguity_reason,
            comment=body.comment,
        )
        return await self._rpc("SubmitLabel", request, labeling_pb2.SubmitLabelResponse, idempotent=False)

    async def review(
        self,
        frame_id: str,
        *,
        accept: bool,
        reason: str = "",
        correction: labeling_pb2.LabelBody | None = None,
    ) -> labeling_pb2.SubmitLabelResponse:
        """Pass 2 (never by the first labeler): accept, or reject with a reason and a correction."""
        request = labeling_pb2.ReviewLabelRequest(frame_id=frame_id, accept=accept, reason=reason)
        if correction is not None:
            request.correction.CopyFrom(correction)
        return await self._rpc("ReviewLabel", request, labeling_pb2.SubmitLabelResponse, idempotent=False)

    async def decide(
        self,
        frame_id: str,
        decision: labeling_pb2.LabelBody,
        *,
        reason: str,
        taxonomy_draft_needed: bool = False,
    ) -> labeling_pb2.SubmitLabelResponse:
        """The product's QA owner settles a dispute (final)."""
        request = labeling_pb2.DecideDisputeRequest(
            frame_id=frame_id, decision=decision, reason=reason, taxonomy_draft_needed=taxonomy_draft_needed
        )
        return await self._rpc("DecideDispute", request, labeling_pb2.SubmitLabelResponse, idempotent=False)

    async def override(
        self, frame_id: str, label: labeling_pb2.LabelBody, *, reason: str
    ) -> labeling_pb2.SubmitLabelResponse:
        """A line operator overrides the machine verdict (captured as a label with provenance)."""
        request = labeling_pb2.RecordOverrideRequest(frame_id=frame_id, label=label, reason=reason)
        return await self._rpc("RecordOverride", request, labeling_pb2.SubmitLabelResponse, idempotent=False)

    async def queue_stats(self) -> list[labeling_pb2.QueueStat]:
        response = await self._rpc(
            "GetQueueStats", labeling_pb2.GetQueueStatsRequest(), labeling_pb2.QueueStatsResponse
        )
        return list(response.queues)

    async def agreement(self, sample_id: str) -> labeling_pb2.AgreementReport:
        return await self._rpc(
            "GetAgreement",
            labeling_pb2.GetAgreementRequest(sample_id=sample_id),
            labeling_pb2.AgreementReport,
        )

    async def audit(
        self, *, after_seq: int = 0, limit: int = 100, actor: str = "", action: str = "", object_id: str = ""
    ) -> list[labeling_pb2.AuditRecord]:
        request = labeling_pb2.ListAuditRequest(
            after_seq=after_seq, limit=limit, actor=actor, action=action, object_id=object_id
        )
        response = await self._rpc("ListAudit", request, labeling_pb2.ListAuditResponse)
        return list(response.records)

    async def verify_audit(self) -> labeling_pb2.VerifyAuditResponse:
        return await self._rpc(
            "VerifyAudit", labeling_pb2.VerifyAuditRequest(), labeling_pb2.VerifyAuditResponse
        )

    async def ledger_stats(self) -> labeling_pb2.LedgerStats:
        return await self._rpc(
            "GetLedgerStats", labeling_pb2.GetLedgerStatsRequest(), labeling_pb2.LedgerStats
        )
