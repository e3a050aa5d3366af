"""The demo's per-adapter counts, read on the receiving side: its Mosquitto broker takes MES's
QoS-1 publishes and the demo's subscriber counts distinct idempotency keys (a repeated key is one
disposition); its OPC UA client counts the results in every station's ResultManagement, across
the server's result pages."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from asyncua.ua.ua_binary import struct_to_binary

from linesight.cli.cmd_demo import MqttCounter, OpcUaCounter, demo_endpoints, result_id
from linesight.common.embedded import free_port
from linesight.common.embedded.mqtt import MosquittoBroker, mosquitto_binary
from linesight.common.settings import Settings
from linesight.mes.api.mqtt import MqttDeliverer
from linesight.mes.api.opcua import DEFAULT_MAX_RESULTS, VisionServer
from linesight.mes.app.adapters import MqttEndpoint, OpcUaEndpoint, parse_endpoints

pytestmark = pytest.mark.integration

PLANT = "p-demo"


def payload(station: str, n: int) -> dict[str, Any]:
    return {
        "frame_id": uuid.uuid4().hex,
        "part_id": f"P{n}",
        "plant": PLANT,
        "line": "l1",
        "station": station,
        "verdict": "pass" if n % 3 else "defect",
        "disposition": "pass" if n % 3 else "reject",
        "captured_at": "2026-01-01T00:00:00+00:00",
        "decided_at": "2026-01-01T00:00:00.100000+00:00",
    }


@pytest.fixture
def broker(tmp_path: Path) -> Any:
    binary = mosquitto_binary()
    if binary is None:
        pytest.fail("mosquitto is missing: the demo's broker is Debian's; `apt-get install mosquitto`")
    b = MosquittoBroker(tmp_path, free_port(), binary=binary)
    b.start(timeout=20)
    yield b
    b.stop()
    assert not b.pid_path.exists()


async def test_mqtt_counter_counts_distinct_keys_from_the_demo_broker(broker: MosquittoBroker) -> None:
    deliverer = MqttDeliverer(MqttEndpoint(kind="mqtt", host=broker.host, port=broker.port), plant=PLANT)
    counter = MqttCounter(broker.host, broker.port, PLANT)
    try:
        async with counter.running():
            for n in range(7):
                station = f"s{n % 2}"
                assert (await deliverer.deliver(f"k{n}", payload(station, n))).outcome == "delivered"
            assert (await deliverer.deliver("k3", payload("s1", 3))).outcome == "delivered"  # a retry
            for _ in range(100):
                if counter.count >= 7:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
    finally:
        await deliverer.close()
    assert counter.count == 7 and counter.keys == {f"k{n}" for n in range(7)}
    assert not counter.error and counter.malformed == 0


async def test_opcua_counter_pages_through_every_station() -> None:
    server = VisionServer(OpcUaEndpoint(kind="opcua", port=free_port(), stations=["l1/s0"]))
    await server.start()
    try:
        counter = OpcUaCounter(server.endpoint.url)
        assert await counter.count() == 0 and not counter.error
        n_results = DEFAULT_MAX_RESULTS + 30  # more than one page on station s0
        for n in range(n_results):
            assert (await server.deliver(f"r{n}", payload("s0" if n % 5 else "s1", n))).outcome == "delivered"
        assert (await server.deliver("r7", payload("s0", 7))).outcome == "delivered"  # a retry: no new result
        assert await counter.count() == n_results, counter.error
        # A client process without the generated ResultDataType class (the demo's) gets each
        # result as a raw ExtensionObject: its id is read from the binary encoding.
        raw = ua.ExtensionObject(Body=struct_to_binary(server.result_data("r-Ω-12", payload("s0", 12))))
        assert result_id(raw) == "r-Ω-12"
        with pytest.raises(ValueError):
            result_id(ua.ExtensionObject(Body=b"\x00\x00\x00\x00\xff\x00\x00\x00"))
    finally:
        await server.close()
    assert await counter.count() == 0 and "OPC UA client" in counter.error  # server gone: said, not raised


def test_demo_endpoints_configure_the_three_adapters_or_say_why_not(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, mes_opcua=True, mes_opcua_port=4841)
    broker = MosquittoBroker(tmp_path, 4999)
    endpoints, adapters = demo_endpoints(settings, "http://127.0.0.1:17200/dispositions", broker, "")
    parsed = parse_endpoints(endpoints, settings.mes_endpoint)  # what the MES service validates at start
    assert [e.kind for e in parsed] == ["webhook", "mqtt", "opcua"]
    assert adapters.mqtt == ("127.0.0.1", 4999) and adapters.opcua_url == "opc.tcp://127.0.0.1:4841"
    assert not adapters.not_shown

    off = settings.model_copy(update={"mes_opcua": False})
    endpoints, adapters = demo_endpoints(off, "http://x/dispositions", None, "no broker here")
    assert [e["kind"] for e in endpoints] == ["webhook"]
    assert adapters.not_shown == {"mqtt": "no broker here", "opcua": "LINESIGHT_MES_OPCUA is off"}
