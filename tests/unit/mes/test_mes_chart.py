"""The chart hands `mes.endpoints` to the service as LINESIGHT_MES_ENDPOINTS, which the MES parses."""

from __future__ import annotations

import json

from linesight.mes.app.adapters import MqttEndpoint, WebhookEndpoint, parse_endpoints
from tests.unit.deploy.test_charts import render


def test_endpoints_from_values_reach_the_settings_and_parse() -> None:
    endpoints = [
        {"kind": "webhook", "name": "erp", "url": "https://erp/api", "tls": {"ca_bundle": "/ca.pem"}},
        {"kind": "mqtt", "name": "bus", "host": "broker", "port": 8883},
    ]
    docs = render({"mes": {"endpoints": endpoints}})
    config = next(
        d for d in docs if d["kind"] == "ConfigMap" and "LINESIGHT_MES_ENDPOINTS" in d.get("data", {})
    )
    parsed = parse_endpoints(json.loads(config["data"]["LINESIGHT_MES_ENDPOINTS"]), "http://unused")
    assert isinstance(parsed[0], WebhookEndpoint) and parsed[0].tls.ca_bundle == "/ca.pem"
    assert isinstance(parsed[1], MqttEndpoint) and parsed[1].port == 8883
    # Without endpoints the variable is absent and the single `endpoint` applies.
    plain = render()
    assert not any("LINESIGHT_MES_ENDPOINTS" in d.get("data", {}) for d in plain if d["kind"] == "ConfigMap")
