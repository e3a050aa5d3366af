"""gRPC MesIntegrationService: dispatch status and operator redelivery (transport only)."""

from __future__ import annotations

import grpc

from linesight.common.pb import mes_pb2, mes_pb2_grpc
from linesight.mes.app.dispatch import MesApp, UnknownFrameError
from linesight.mes.store.outbox import OutboxRow


def _status(row: OutboxRow) -> mes_pb2.DispatchStatus:
    return mes_pb2.DispatchStatus(
        frame_id=row.frame_id,
        disposition=row.disposition,
        state=row.state,
        attempts=row.attempts,
        last_error=row.last_error,
    )


class MesServicer(mes_pb2_grpc.MesIntegrationServiceServicer):
    def __init__(self, mes: MesApp) -> None:
        self.mes = mes

    async def GetDispatchStatus(  # noqa: N802 - gRPC method name
        self, request: mes_pb2.GetDispatchStatusRequest, context: grpc.aio.ServicerContext
    ) -> mes_pb2.DispatchStatus:
        try:
            return _status(await self.mes.status(request.frame_id))
        except UnknownFrameError:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no disposition for frame {request.frame_id!r}")
            raise

    async def Redeliver(  # noqa: N802
        self, request: mes_pb2.RedeliverRequest, context: grpc.aio.ServicerContext
    ) -> mes_pb2.DispatchStatus:
        try:
            return _status(await self.mes.redeliver(request.frame_id))
        except UnknownFrameError:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no disposition for frame {request.frame_id!r}")
            raise


def register(server: grpc.aio.Server, servicer: MesServicer) -> None:
    mes_pb2_grpc.add_MesIntegrationServiceServicer_to_server(servicer, server)
