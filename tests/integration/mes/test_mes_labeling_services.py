"""Labeling and MES run as real services (run_service: HTTP, gRPC, consumers) on one result stream.

The session's NATS and PostgreSQL are shared with every other test module; this module runs both
services in a plant of its own (`PLANT`), so their consumers see only the results published here.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
import uvicorn

from linesight.common import subjects
from linesight.common.bus import Bus
from linesight.common.events import new_meta
from linesight.common.identity.model import Role
from linesight.common.pb import common_pb2, events_pb2
from linesight.common.service import service_running
from linesight.common.settings import Settings
from linesight.labeling.service import setup as labeling_setup
from linesight.mes.api.receiver import DispositionLog, create_receiver_app
from linesight.mes.service import setup as mes_setup

pytestmark = pytest.mark.integration

PLANT = f"pipe{uuid.uuid4().hex[:8]}"


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.2)


async def test_results_reach_ledger_page_and_mes_receiver(stack_settings: Settings, mint: Any) -> None:
    settings = stack_settings.model_copy(update={"plant": PLANT})  # this module's own plant
    log = DispositionLog()
    server = uvicorn.Server(
        uvicorn.Config(
            create_receiver_app(log),
            host="127.0.0.1",
            port=settings.mes_receiver_port,
            log_level="warning",
            lifespan="off",
        )
    )
    receiver = asyncio.create_task(server.serve())
    station = f"svc{uuid.uuid4().hex[:6]}"
    subject = subjects.station_subject(PLANT, "line1", station, subjects.INSPECTION_RESULT)
    verdicts = [common_pb2.VERDICT_PASS, common_pb2.VERDICT_DEFECT, common_pb2.VERDICT_REVIEW]
    results = []
    for i in range(6):
        fid = uuid.uuid4().hex
        v = verdicts[i % 3]
        results.append(
            events_pb2.InspectionResult(
                meta=new_meta("inference", fid),
                frame_id=fid,
                verdict=v,
                capture=common_pb2.CaptureMeta(
                    station=common_pb2.StationRef(plant=PLANT, line="line1", station=station)
                ),
                defect_class="pit" if v == common_pb2.VERDICT_DEFECT else "",
                confidence=0.9,
                disposition=common_pb2.DISPOSITION_REJECT
                if v == common_pb2.VERDICT_DEFECT
                else common_pb2.DISPOSITION_PASS,
                model_version="m1",
                latency_ms=10.0 + i,
            )
        )
    try:
        async with (
            service_running("labeling", labeling_setup, settings=settings),
            service_running("mes", mes_setup, settings=settings),
        ):
            bus = await Bus.connect(settings.nats_url, "test-pipeline")
            try:
                for r in results:
                    await bus.publish(subject, r)
            finally:
                await bus.close()
            frames = {r.frame_id for r in results}

            async def delivered() -> bool:
                return frames <= set(log.snapshot())

            await eventually(delivered)
            base = settings.http_url("labeling")
            everyone = mint(*(f"{role.value}@*/*" for role in Role), subject="pat")
            auth = {"Authorization": f"Bearer {everyone}"}
            async with httpx.AsyncClient(base_url=base, headers=auth) as client:

                async def listed() -> bool:
                    rows = (await client.get("/api/results", params={"station": station})).json()
                    return {r["frame_id"] for r in rows} == frames

                await eventually(listed)
                page = await client.get("/")
                assert page.status_code == 200 and results[1].frame_id[:12] in page.text
                assert (await client.get("/readyz")).status_code == 200
            mes_base = settings.http_url("mes")
            async with httpx.AsyncClient(base_url=mes_base) as client:
                url = f"/api/dispatch/{results[1].frame_id}"
                assert (await client.get(url)).status_code == 401
                operator = mint("line_operator@*/*", subject="olga")
                status = (await client.get(url, headers={"Authorization": f"Bearer {operator}"})).json()
                assert status["state"] == "delivered" and status["payload"]["disposition"] == "reject"
            assert log.duplicates == 0
    finally:
        server.should_exit = True
        await receiver
