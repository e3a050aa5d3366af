"""The MQTT adapter against a real Mosquitto broker (started here on a free port, with a password
file and persistence): QoS-1 dispositions reach a persistent-session subscriber across a broker
restart, with the idempotency key in each message; station status is retained; the publisher's
status is retained `online`, and its last will says `offline` when its connection dies."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiomqtt
import pytest

from linesight.common.embedded import free_port
from linesight.mes.api.mqtt import MqttDeliverer, publisher_status_topic
from linesight.mes.app.adapters import MqttEndpoint

pytestmark = pytest.mark.integration

MOSQUITTO = Path("/usr/sbin/mosquitto")
MOSQUITTO_PASSWD = Path("/usr/bin/mosquitto_passwd")
USER, PASSWORD = "linesight", "broker-pass"
PLANT = "p1"


class Broker:
    """A Mosquitto process on `port` with a generated configuration; restartable (same data)."""

    def __init__(self, root: Path) -> None:
        if not MOSQUITTO.exists() or not MOSQUITTO_PASSWD.exists():
            pytest.fail(
                f"{MOSQUITTO} (or mosquitto_passwd) is missing: the MQTT adapter is tested against a real "
                "broker; install it with `apt-get install mosquitto`"
            )
        self.port = free_port()
        (root / "data").mkdir()
        passwords = root / "passwords"
        passwords.touch(mode=0o600)
        subprocess.run([str(MOSQUITTO_PASSWD), "-b", str(passwords), USER, PASSWORD], check=True)
        self.conf = root / "mosquitto.conf"
        self.conf.write_text(
            # Run as root (containers), mosquitto would switch to user `mosquitto` and lose access
            # to these files; as anyone else the line is ignored.
            f"user {getpass.getuser()}\n"
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous false\n"
            f"password_file {passwords}\n"
            "persistence true\n"
            f"persistence_location {root / 'data'}/\n"
            "log_dest stderr\n"
        )
        self.log = root / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([str(MOSQUITTO), "-c", str(self.conf)], stdout=out, stderr=out)
        for _ in range(100):
            if self.proc.poll() is not None:
                pytest.fail(f"mosquitto exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            with socket.socket() as s, contextlib.suppress(OSError):
                s.connect(("127.0.0.1", self.port))
                return
            time.sleep(0.05)
        pytest.fail(f"mosquitto did not listen on {self.port}: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()  # SIGTERM: mosquitto writes its persistence file
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()


async def connect(broker: Broker, identifier: str, *, clean: bool = True) -> aiomqtt.Client:
    """A subscriber's connection, retried while the broker (re)starts."""
    for _ in range(100):
        client = aiomqtt.Client(
            "127.0.0.1",
            broker.port,
            identifier=identifier,
            username=USER,
            password=PASSWORD,
            clean_session=clean,
        )
        try:
            await client.__aenter__()
            return client
        except aiomqtt.MqttError:
            await asyncio.sleep(0.1)
    raise AssertionError(f"broker on {broker.port} not reachable; see {broker.log}")


@contextlib.asynccontextmanager
async def session(broker: Broker, identifier: str, *, clean: bool = True) -> AsyncIterator[aiomqtt.Client]:
    client = await connect(broker, identifier, clean=clean)
    try:
        yield client
    finally:
        with contextlib.suppress(aiomqtt.MqttError):
            await client.__aexit__(None, None, None)


async def collect(client: aiomqtt.Client, keys: set[str], want: set[str], timeout_s: float = 20) -> None:
    async with asyncio.timeout(timeout_s):
        async for msg in client.messages:
            keys.add(json.loads(bytes(msg.payload))["idempotency_key"])
            if want <= keys:
                return


def payload(station: str, n: int) -> dict[str, object]:
    return {"plant": PLANT, "line": "l1", "station": station, "part_id": f"P{n}", "disposition": "reject"}


async def deliver_until_accepted(d: MqttDeliverer, key: str, body: dict[str, object]) -> int:
    """What the dispatcher does: retry the same key until the broker acknowledges it."""
    for tries in range(1, 200):
        if (await d.deliver(key, body)).outcome == "delivered":
            return tries
        await asyncio.sleep(0.1)
    raise AssertionError(f"{key} never delivered")


async def test_qos1_dispositions_survive_a_broker_restart(broker: Broker) -> None:
    endpoint = MqttEndpoint(
        kind="mqtt", name="line-bus", host="127.0.0.1", port=broker.port, username=USER, password=PASSWORD
    )
    deliverer = MqttDeliverer(endpoint, plant=PLANT)
    station = f"st{uuid.uuid4().hex[:4]}"
    keys_before = [f"k{n}" for n in range(5)]
    keys_after = [f"k{n}" for n in range(5, 10)]
    received: set[str] = set()
    try:
        # A persistent-session subscriber (clean_session off): the broker queues QoS-1 messages for it.
        async with session(broker, "mes-consumer", clean=False) as sub:
            await sub.subscribe(f"linesight/{PLANT}/+/+/disposition", qos=1)
        for n, key in enumerate(keys_before):
            assert (await deliverer.deliver(key, payload(station, n))).outcome == "delivered"

        broker.stop()
        down = await deliverer.deliver("k-down", payload(station, 99))
        assert down.outcome == "retry" and "mqtt" in down.error  # broker gone: a retry, never lost
        broker.start()
        for n, key in enumerate(keys_after, start=5):
            await deliver_until_accepted(deliverer, key, payload(station, n))

        # Messages queued before the restart (persisted) and after it both reach the subscriber.
        async with session(broker, "mes-consumer", clean=False) as sub:
            await collect(sub, received, set(keys_before + keys_after))
        assert set(keys_before + keys_after) <= received

        # Station status is retained: a new subscriber sees the last disposition at once.
        async with session(broker, "late-viewer") as viewer:
            await viewer.subscribe(f"linesight/{PLANT}/l1/{station}/status", qos=1)
            await viewer.subscribe(publisher_status_topic("linesight", PLANT), qos=1)
            seen: dict[str, bytes] = {}
            async with asyncio.timeout(10):
                async for msg in viewer.messages:
                    seen[str(msg.topic)] = bytes(msg.payload)
                    if len(seen) == 2:
                        break
        status = json.loads(seen[f"linesight/{PLANT}/l1/{station}/status"])
        assert (status["part_id"], status["idempotency_key"]) == ("P9", "k9")
        assert seen[publisher_status_topic("linesight", PLANT)] == b"online"

        # The publisher's connection dies without a DISCONNECT: the broker publishes its last will.
        async with session(broker, "will-watcher") as watcher:
            await watcher.subscribe(publisher_status_topic("linesight", PLANT), qos=1)
            assert deliverer._client is not None
            sock = deliverer._client._client.socket()
            assert isinstance(sock, socket.socket)
            # The TCP connection ends with no DISCONNECT packet, as when the process crashes. (shutdown,
            # not close: the event loop still watches this descriptor.)
            sock.shutdown(socket.SHUT_RDWR)
            async with asyncio.timeout(90):  # the broker notices within 1.5 keepalives
                async for msg in watcher.messages:
                    if bytes(msg.payload) == b"offline":
                        break
    finally:
        await deliverer.close()
