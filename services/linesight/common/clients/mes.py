"""Client of the MesIntegrationService (disposition delivery state, manual redelivery)."""

from __future__ import annotations

from linesight.common.clients.base import PeerClient
from linesight.common.pb import mes_pb2, mes_pb2_grpc


class MesClient(PeerClient[mes_pb2_grpc.MesIntegrationServiceStub]):
    """Thick client for the MES integration API."""

    stub_class = mes_pb2_grpc.MesIntegrationServiceStub
    service_name = "mes"

    async def dispatch_status(self, frame_id: str) -> mes_pb2.DispatchStatus:
        request = mes_pb2.GetDispatchStatusRequest(frame_id=frame_id)
        return await self._rpc("GetDispatchStatus", request, mes_pb2.DispatchStatus)

    async def redeliver(self, frame_id: str) -> mes_pb2.DispatchStatus:
        """Not retried: each call queues one more delivery to the MES."""
        request = mes_pb2.RedeliverRequest(frame_id=frame_id)
        return await self._rpc("Redeliver", request, mes_pb2.DispatchStatus, idempotent=False)
