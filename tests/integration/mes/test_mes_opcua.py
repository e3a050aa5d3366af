"""The OPC UA Machine Vision server with asyncua's Client: the namespace is served, each configured
station is a VisionSystemType object (state machine Operational, ResultManagement), the last
result is readable, and a ResultReady event per inspection carries the result."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from asyncua import Client, ua

from linesight.common.embedded import free_port
from linesight.common.events import new_meta
from linesight.common.pb import common_pb2, events_pb2
from linesight.common.service import service_running
from linesight.common.settings import Settings
from linesight.mes.api.opcua import (
    LOCAL_NS,
    MACHINE_VISION_NS,
    RESULT_READY_EVENT_TYPE,
    VISION_SYSTEM_TYPE,
    VisionServer,
)
from linesight.mes.app.adapters import OpcUaEndpoint
from linesight.mes.service import MesOptions, make_setup

pytestmark = pytest.mark.integration

STATIONS = ["line1/station1", "line1/station2"]
BROWSE_NAMES = ["line1_station1", "line1_station2"]


@pytest.fixture(scope="module")
async def vision_server() -> AsyncIterator[VisionServer]:
    server = VisionServer(OpcUaEndpoint(kind="opcua", port=free_port(), stations=STATIONS))
    await server.start()
    yield server
    await server.close()


def disposition(station: str, part: str, verdict: str, disposition: str) -> dict[str, Any]:
    captured = datetime.now(UTC) - timedelta(milliseconds=180)
    return {
        "frame_id": uuid.uuid4().hex,
        "part_id": part,
        "plant": "plant1",
        "line": "line1",
        "station": station,
        "verdict": verdict,
        "defect_class": "scratch" if verdict == "defect" else "",
        "severity": "major" if verdict == "defect" else "unspecified",
        "disposition": disposition,
        "confidence": 0.93,
        "model_version": "m-7",
        "taxonomy_version": "t-3",
        "captured_at": captured.isoformat(),
        "decided_at": (captured + timedelta(milliseconds=150)).isoformat(),
        "image_url": "http://s3/frames/x.png?sig",
    }


def generated(name: str, **fields: Any) -> Any:
    """A structure of the Machine Vision model (made by load_data_type_definitions at run time)."""
    return getattr(ua, name)(**fields)


class Events:
    def __init__(self) -> None:
        self.items: list[Any] = []
        self.arrived = asyncio.Event()

    def event_notification(self, event: Any) -> None:
        self.items.append(event)
        self.arrived.set()


async def test_vision_systems_results_and_result_ready_events(vision_server: VisionServer) -> None:
    async with Client(vision_server.endpoint.url) as client:
        await client.load_data_type_definitions()
        mv = await client.get_namespace_index(MACHINE_VISION_NS)
        local = await client.get_namespace_index(LOCAL_NS)
        systems: dict[str, Any] = {}
        for node in await client.nodes.objects.get_children():
            if (await node.read_type_definition()) == ua.NodeId(ua.Int32(VISION_SYSTEM_TYPE), ua.Int16(mv)):
                systems[str((await node.read_browse_name()).Name)] = node
        assert set(BROWSE_NAMES) <= set(systems)
        station = systems["line1_station1"]
        assert (await station.read_display_name()).Text == "line1/station1"
        state = await station.get_child([f"{mv}:VisionStateMachine", "0:CurrentState"])
        assert (await state.read_value()).Text == "Operational"

        events = Events()
        sub = await client.create_subscription(50, events)
        event_type = client.get_node(ua.NodeId(ua.Int32(RESULT_READY_EVENT_TYPE), ua.Int16(mv)))
        await sub.subscribe_events(station, event_type)

        payload = disposition("station1", "P-42", "defect", "reject")
        att = await vision_server.deliver("key-1", payload)
        assert att.outcome == "delivered"
        assert (await vision_server.deliver("key-1", payload)).outcome == "delivered"  # a retry: no 2nd event
        await asyncio.wait_for(events.arrived.wait(), 10)
        await asyncio.sleep(0.3)
        assert len(events.items) == 1
        ev = events.items[0]
        assert ev.ResultId.Id == "key-1" and ev.PartId.Id == "P-42" and ev.ResultState == 2
        assert ev.CreationTime.replace(tzinfo=UTC) == datetime.fromisoformat(payload["decided_at"])
        assert abs(ev.ProcessingTimes.ProcessingDuration - 150.0) < 1.0
        # ResultContent is BaseDataType[]: each element a Variant holding a KeyValuePair.
        pairs = [item.Value for item in ev.ResultContent]
        content = {kv.Key.Name: kv.Value.Value for kv in pairs}
        assert (content["verdict"], content["defect_class"], content["severity"], content["disposition"]) == (
            "defect",
            "scratch",
            "major",
            "reject",
        )
        assert content["model_version"] == "m-7" and content["frame_id"] == payload["frame_id"]

        last = await station.get_child([f"{mv}:ResultManagement", f"{mv}:Results", f"{local}:LastResult"])
        result = await last.read_value()
        assert result.ResultId.Id == "key-1" and result.PartId.Id == "P-42" and result.ResultState == 2

        # A pass on another station: its own object, its own last result.
        await vision_server.deliver("key-2", disposition("station2", "P-43", "pass", "pass"))
        other = systems["line1_station2"]
        last2 = await other.get_child([f"{mv}:ResultManagement", f"{mv}:Results", f"{local}:LastResult"])
        assert (await last2.read_value()).ResultState == 1
        assert (await last.read_value()).ResultId.Id == "key-1"
        await sub.delete()


async def test_mes_service_serves_opcua_and_publishes_dispatched_results(stack_settings: Settings) -> None:
    """What `linesight up` runs: MES with `mes_opcua` on serves its station's VisionSystem and the
    dispatcher's deliveries reach it next to the webhook."""
    plant = f"opc{uuid.uuid4().hex[:6]}"
    port = free_port()
    settings = stack_settings.model_copy(
        update={
            "plant": plant,
            "mes_opcua": True,
            "mes_opcua_port": port,
            "mes_endpoint": f"http://127.0.0.1:{free_port()}/dispositions",  # down: retried, never lost
            "line": "line1",
            "station": "station9",
        }
    )
    async with service_running("mes", make_setup(MesOptions(consume=False)), settings=settings) as svc:
        assert "opcua:opc.tcp://" in svc.app.config.endpoint
        result = events_pb2.InspectionResult(
            meta=new_meta("inference", correlation_id="f-opc-1"),
            frame_id=f"f-{uuid.uuid4().hex}",
            capture=common_pb2.CaptureMeta(
                station=common_pb2.StationRef(plant=plant, line="line1", station="station9"), part_id="P-9"
            ),
            verdict=common_pb2.VERDICT_PASS,
            disposition=common_pb2.DISPOSITION_PASS,
            model_version="m-1",
        )
        assert await svc.app.enqueue(result)
        async with Client(f"opc.tcp://{settings.listen_host}:{port}") as client:
            await client.load_data_type_definitions()
            mv = await client.get_namespace_index(MACHINE_VISION_NS)
            local = await client.get_namespace_index(LOCAL_NS)
            station = await client.nodes.objects.get_child(f"{local}:line1_station9")
            last = await station.get_child([f"{mv}:ResultManagement", f"{mv}:Results", f"{local}:LastResult"])
            deadline = asyncio.get_running_loop().time() + 20
            while (value := await last.read_value()) is None:
                assert asyncio.get_running_loop().time() < deadline, "no result reached OPC UA"
                await asyncio.sleep(0.2)
            assert value.PartId.Id == "P-9" and value.ResultState == 1
        # The webhook is down: its delivery stays pending (and with it the message's state).
        assert (await svc.app.status(result.frame_id)).state == "pending"


async def test_result_management_methods_and_state_machine_over_a_client(vision_server: VisionServer) -> None:
    """GetResultById / GetResultListFiltered answer from the station's results; Halt and Reset
    move the VisionStateMachine (Reset only from Halted)."""
    keys = {
        f"rm-{i}": disposition("station2", f"P-RM-{i % 2}", "defect" if i % 2 else "pass", "x")
        for i in range(5)
    }
    for key, payload in keys.items():
        assert (await vision_server.deliver(key, payload)).outcome == "delivered"
    async with Client(vision_server.endpoint.url) as client:
        await client.load_data_type_definitions()
        mv = await client.get_namespace_index(MACHINE_VISION_NS)
        local = await client.get_namespace_index(LOCAL_NS)
        station = await client.nodes.objects.get_child(f"{local}:line1_station2")
        rm = await station.get_child(f"{mv}:ResultManagement")

        def ext(value: Any) -> ua.Variant:
            return ua.Variant(value, ua.VariantType.ExtensionObject)

        timeout = ua.Variant(1000, ua.VariantType.Int32)
        handle, result, error = await rm.call_method(
            f"{mv}:GetResultById", ext(generated("ResultIdDataType", Id="rm-3")), timeout
        )
        assert error == 0 and handle > 0
        assert result.ResultId.Id == "rm-3" and result.PartId.Id == "P-RM-1" and result.ResultState == 2
        *_, missing = await rm.call_method(
            f"{mv}:GetResultById", ext(generated("ResultIdDataType", Id="nope")), timeout
        )
        assert missing == -1

        def filters(part: str = "", state: int = 0, most: int = 0, start: int = 0) -> list[ua.Variant]:
            return [
                ua.Variant(state, ua.VariantType.Int32),
                ext(generated("MeasIdDataType", Id="")),
                ext(generated("PartIdDataType", Id=part)),
                ext(generated("RecipeIdExternalDataType", Id="")),
                ext(generated("RecipeIdInternalDataType", Id="")),
                ext(generated("ConfigurationIdDataType", Id="")),
                ext(generated("ConfigurationIdDataType", Id="")),
                ext(generated("ProductIdDataType", Id="")),
                ext(generated("JobIdDataType", Id="")),
                ua.Variant(most, ua.VariantType.UInt32),
                ua.Variant(start, ua.VariantType.UInt32),
                timeout,
            ]

        complete, count, _, listed, error = await rm.call_method(
            f"{mv}:GetResultListFiltered", *filters(part="P-RM-0")
        )
        assert error == 0 and complete and count == 3
        assert [r.ResultId.Id for r in listed] == ["rm-0", "rm-2", "rm-4"]
        complete, count, _, listed, _ = await rm.call_method(
            f"{mv}:GetResultListFiltered", *filters(state=2, most=1)
        )
        assert not complete and count == 1 and listed[0].ResultId.Id == "rm-1"
        complete, _, _, listed, _ = await rm.call_method(
            f"{mv}:GetResultListFiltered", *filters(state=2, most=1, start=1)
        )
        assert complete and listed[0].ResultId.Id == "rm-3"

        machine = await station.get_child(f"{mv}:VisionStateMachine")
        state = await machine.get_child("0:CurrentState")
        cause = [ua.Variant(1, ua.VariantType.Int32), ua.Variant("changeover", ua.VariantType.String)]
        with pytest.raises(ua.UaStatusCodeError):  # Operational: nothing to reset
            await machine.call_method(f"{mv}:Reset", *cause)
        assert await machine.call_method(f"{mv}:Halt", *cause) == 0
        assert (await state.read_value()).Text == "Halted"
        halted = await machine.get_child(f"{mv}:Halted")
        assert await (await state.get_child("0:Id")).read_value() == halted.nodeid
        assert await machine.call_method(f"{mv}:Reset", *cause) == 0
        assert (await state.read_value()).Text == "Operational"


async def test_result_history_survives_a_mes_restart(stack_settings: Settings) -> None:
    """Results delivered before a restart are still answered by GetResultById and are the
    station's LastResult afterwards (served from the outbox, not only from memory)."""
    plant = f"opr{uuid.uuid4().hex[:6]}"
    settings = stack_settings.model_copy(
        update={
            "plant": plant,
            "mes_opcua": True,
            "mes_opcua_port": free_port(),
            "mes_endpoint": f"http://127.0.0.1:{free_port()}/dispositions",  # down: not in the way
            "line": "line1",
            "station": "station8",
        }
    )
    frames = [f"f-{uuid.uuid4().hex}" for _ in range(3)]
    async with service_running("mes", make_setup(MesOptions(consume=False)), settings=settings) as svc:
        for n, frame in enumerate(frames):
            result = events_pb2.InspectionResult(
                meta=new_meta("inference", correlation_id=frame),
                frame_id=frame,
                capture=common_pb2.CaptureMeta(
                    station=common_pb2.StationRef(plant=plant, line="line1", station="station8"),
                    part_id=f"P-R{n}",
                ),
                verdict=common_pb2.VERDICT_DEFECT if n == 1 else common_pb2.VERDICT_PASS,
                disposition=common_pb2.DISPOSITION_REJECT if n == 1 else common_pb2.DISPOSITION_PASS,
                model_version="m-1",
            )
            assert await svc.app.enqueue(result)
        deadline = asyncio.get_running_loop().time() + 20
        while len(await svc.app.delivered("opcua", 10)) < len(frames):
            assert asyncio.get_running_loop().time() < deadline, "results did not reach OPC UA"
            await asyncio.sleep(0.2)

    port = free_port()
    restarted = settings.model_copy(update={"mes_opcua_port": port})
    async with (
        service_running("mes", make_setup(MesOptions(consume=False, dispatch=False)), settings=restarted),
        Client(f"opc.tcp://{restarted.listen_host}:{port}") as client,
    ):
        await client.load_data_type_definitions()
        mv = await client.get_namespace_index(MACHINE_VISION_NS)
        local = await client.get_namespace_index(LOCAL_NS)
        station = await client.nodes.objects.get_child(f"{local}:line1_station8")
        last = await station.get_child([f"{mv}:ResultManagement", f"{mv}:Results", f"{local}:LastResult"])
        assert (await last.read_value()).PartId.Id == "P-R2"
        rm = await station.get_child(f"{mv}:ResultManagement")
        _, found, error = await rm.call_method(
            f"{mv}:GetResultById",
            ua.Variant(generated("ResultIdDataType", Id=frames[1]), ua.VariantType.ExtensionObject),
            ua.Variant(1000, ua.VariantType.Int32),
        )
        assert error == 0
        assert found.PartId.Id == "P-R1" and found.ResultState == 2  # NOK, as delivered before


# A PLC engineer's client in a process of its own: it knows no Machine Vision type beforehand and
# builds them all from what the server publishes (in this process the server's types exist already).
_STANDALONE_CLIENT = """
import asyncio, sys
from asyncua import Client
async def main():
    async with Client(sys.argv[1]) as client:
        await client.load_data_type_definitions()
        mv = await client.get_namespace_index("http://opcfoundation.org/UA/MachineVision")
        ls = await client.get_namespace_index("urn:linesight:mes")
        station = await client.nodes.objects.get_child(f"{ls}:line1_station1")
        last = await station.get_child([f"{mv}:ResultManagement", f"{mv}:Results", f"{ls}:LastResult"])
        r = await last.read_value()
        print("RESULT", type(r).__name__, r.ResultId.Id, r.PartId.Id, r.ResultState, r.InternalRecipeId.Id)
asyncio.run(main())
"""


async def test_a_client_in_its_own_process_decodes_results(vision_server: VisionServer) -> None:
    payload = disposition("station1", "P-77", "defect", "reject")
    assert (await vision_server.deliver("key-77", payload)).outcome == "delivered"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _STANDALONE_CLIENT,
        vision_server.endpoint.url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    lines = [line for line in out.decode().splitlines() if line.startswith("RESULT ")]
    assert lines == ["RESULT ResultDataType key-77 P-77 2 m-7"], out.decode()[-2000:]
