"""Client of the MesIntegrationService (disposition delivery state, manual redelivery)."""

from __future__ import annotations

from linesight.common.grpcutil import ServiceClient, TokenSource
from linesight.common.pb import mes_pb2, mes_pb2_grpc


class MesClient(ServiceClient[mes_pb2_grpc.MesIntegrationServiceStub]):
    """Thick client for the MES integration API."""

    def __init__(self, target: str, *, timeout_s: float = 10.0, token: TokenSource | None = None) -> None:
        super().__init__(
            target, mes_pb2_grpc.MesIntegrationServiceStub, service="mes", timeout_s=timeout_s, token=token
        )

    async def dispatch_status(self, frame_id: str) -> mes_pb2.DispatchStatus:
        request = mes_pb2.GetDispatchStatusRequest(frame_id=frame_id)
        result: mes_pb2.DispatchStatus = await self.call("GetDispatchStatus", request)
        return result

    async def redeliver(self, frame_id: str) -> mes_pb2.DispatchStatus:
        """Not retried: each call queues one more delivery to the MES."""
        request = mes_pb2.RedeliverRequest(frame_id=frame_id)
        result: mes_pb2.DispatchStatus = await self.call("Redeliver", request, idempotent=False)
        return result
