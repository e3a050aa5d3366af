"""Outbound MQTT delivery of dispositions (aiomqtt on paho-mqtt) behind the app's `Deliverer`.

Topics under the endpoint's prefix:
- `<prefix>/<plant>/<line>/<station>/disposition`: one QoS-1 message per disposition, JSON, with
  `idempotency_key` in the body (MQTT has no header for it; QoS 1 may deliver twice).
- `<prefix>/<plant>/<line>/<station>/status`: retained, the station's last disposition, so a
  subscriber that connects later sees where each station stands.
- `<prefix>/<plant>/mes/status`: retained `online` on connect and `offline` as the last will, so
  consumers see when LineSight's publisher is gone.
A publish counts as delivered once the broker acknowledged it (PUBACK); a lost connection is a
retry on a fresh connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from typing import Any, Protocol

import aiomqtt

from linesight.mes.api.webhook import ssl_context
from linesight.mes.app.adapters import MqttEndpoint
from linesight.mes.app.dispatch import Attempt

log = logging.getLogger(__name__)


class MqttPublish(Protocol):
    """The part of aiomqtt.Client used here: a publish to an MQTT topic (not to the NATS bus, which
    is how tools/gen_messaging_doc.py tells the two apart)."""

    async def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - aiomqtt's signature
    ) -> None: ...


def disposition_topic(prefix: str, plant: str, line: str, station: str) -> str:
    return f"{prefix}/{plant}/{line}/{station}/disposition"


def station_status_topic(prefix: str, plant: str, line: str, station: str) -> str:
    return f"{prefix}/{plant}/{line}/{station}/status"


def publisher_status_topic(prefix: str, plant: str) -> str:
    return f"{prefix}/{plant}/mes/status"


class MqttDeliverer:
    """One persistent connection, opened on first use and re-opened after a failure."""

    def __init__(self, endpoint: MqttEndpoint, *, plant: str) -> None:
        self.endpoint = endpoint
        self.plant = plant
        self._client: aiomqtt.Client | None = None
        self._lock = asyncio.Lock()

    def _new_client(self) -> aiomqtt.Client:
        e = self.endpoint
        status = publisher_status_topic(e.topic_prefix, self.plant)
        return aiomqtt.Client(
            e.host,
            e.port,
            identifier=e.client_id or f"linesight-mes-{e.name}",
            username=e.username or None,
            password=e.password or None,
            will=aiomqtt.Will(status, b"offline", qos=1, retain=True),
            tls_context=ssl_context(e.tls) if e.tls is not None else None,
            timeout=e.timeout_s,
        )

    async def _connected(self) -> aiomqtt.Client:
        async with self._lock:
            if self._client is None:
                client = self._new_client()
                await client.__aenter__()
                try:
                    mqtt: MqttPublish = client
                    await mqtt.publish(
                        publisher_status_topic(self.endpoint.topic_prefix, self.plant),
                        b"online",
                        qos=1,
                        retain=True,
                        timeout=self.endpoint.timeout_s,
                    )
                except BaseException:
                    await self._drop(client)
                    raise
                self._client = client
            return self._client

    async def _drop(self, client: aiomqtt.Client) -> None:
        """Forget a broken connection; the next delivery opens a new one."""
        if self._client is client:
            self._client = None
        try:
            await client.__aexit__(None, None, None)
        except Exception as exc:  # already broken: nothing more to learn
            log.debug("closing mqtt connection: %s", exc)

    async def deliver(self, key: str, payload: dict[str, Any]) -> Attempt:
        """Publish with QoS 1 and wait for the broker's PUBACK (never raises)."""
        e = self.endpoint
        plant = payload.get("plant") or self.plant
        line, station = payload.get("line", ""), payload.get("station", "")
        body = json.dumps({**payload, "idempotency_key": key}, separators=(",", ":")).encode()
        status = json.dumps(
            {
                "station": station,
                "part_id": payload.get("part_id", ""),
                "disposition": payload.get("disposition", ""),
                "idempotency_key": key,
                "at": datetime.now(UTC).isoformat(),
            }
        ).encode()
        client: aiomqtt.Client | None = None
        try:
            client = await self._connected()
            mqtt: MqttPublish = client
            await mqtt.publish(
                disposition_topic(e.topic_prefix, plant, line, station), body, qos=1, timeout=e.timeout_s
            )
            await mqtt.publish(
                station_status_topic(e.topic_prefix, plant, line, station),
                status,
                qos=1,
                retain=True,
                timeout=e.timeout_s,
            )
        except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
            if client is not None:
                await self._drop(client)
            return Attempt(key, None, f"mqtt {type(exc).__name__}: {exc}"[:500], "retry")
        return Attempt(key, None, "", "delivered")

    async def close(self) -> None:
        """A clean disconnect sends no last will: say `offline` first (best effort)."""
        client = self._client
        if client is None:
            return
        try:
            mqtt: MqttPublish = client
            await mqtt.publish(
                publisher_status_topic(self.endpoint.topic_prefix, self.plant),
                b"offline",
                qos=1,
                retain=True,
                timeout=self.endpoint.timeout_s,
            )
        except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
            log.warning("mqtt %s: could not publish offline status: %s", self.endpoint.name, exc)
        await self._drop(client)
