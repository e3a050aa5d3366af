"""The chart hands `mes.endpoints` to the service as LINESIGHT_MES_ENDPOINTS, which the MES parses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from linesight.mes.app.adapters import MqttEndpoint, OpcUaEndpoint, WebhookEndpoint, parse_endpoints
from tests.unit.deploy.test_charts import HELM_PROBLEM, render

if HELM_PROBLEM:
    print(f"SKIP tests/unit/mes/test_mes_chart.py chart tests: {HELM_PROBLEM}")
needs_helm = pytest.mark.skipif(bool(HELM_PROBLEM), reason=HELM_PROBLEM or "helm is usable")


@needs_helm
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


def _mes_endpoints(docs: list[dict[str, Any]]) -> list[Any]:
    config = next(
        d for d in docs if d["kind"] == "ConfigMap" and "LINESIGHT_MES_ENDPOINTS" in d.get("data", {})
    )
    raw: list[dict[str, Any]] = json.loads(config["data"]["LINESIGHT_MES_ENDPOINTS"])
    return raw


@needs_helm
def test_opcua_gets_a_port_one_replica_and_its_certificate_from_an_existing_secret() -> None:
    docs = render(
        {
            "networkPolicy": {"enabled": True},
            "mes": {
                "endpoint": "https://erp/api",
                "secretFiles": "mes-endpoint-secrets",
                "opcua": {
                    "enabled": True,
                    "stations": ["line1/st1"],
                    "certificateSecret": "mes-opcua-cert",
                    "serviceType": "LoadBalancer",
                    "from": [{"ipBlock": {"cidr": "10.20.0.0/16"}}],
                },
            },
        }
    )
    deployment = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "ls-linesight-mes"
    )
    assert deployment["spec"]["replicas"] == 1
    assert not [
        d for d in docs if d["kind"] == "PodDisruptionBudget" and d["metadata"]["name"].endswith("-mes")
    ]
    pod = deployment["spec"]["template"]["spec"]
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets["mes-opcua"] == "mes-opcua-cert" and secrets["mes-secrets"] == "mes-endpoint-secrets"
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["mes-opcua"]["mountPath"] == "/etc/linesight/mes-opcua" and mounts["mes-opcua"]["readOnly"]
    assert mounts["mes-secrets"]["mountPath"] == "/etc/linesight/mes-secrets"

    service = next(
        d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "ls-linesight-mes-opcua"
    )
    assert service["spec"]["type"] == "LoadBalancer"
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(4840, 4840)]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    policy = next(
        d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"].endswith("-mes-opcua")
    )
    (rule,) = policy["spec"]["ingress"]
    assert (
        rule["ports"] == [{"protocol": "TCP", "port": 4840}]
        and rule["from"][0]["ipBlock"]["cidr"] == "10.20.0.0/16"
    )

    parsed = parse_endpoints(_mes_endpoints(docs), "http://unused")
    webhook, opcua = parsed
    assert isinstance(webhook, WebhookEndpoint) and webhook.url == "https://erp/api"
    assert isinstance(opcua, OpcUaEndpoint) and opcua.security == "Basic256Sha256" and opcua.port == 4840
    assert opcua.certificate == "/etc/linesight/mes-opcua/certificate.pem" and opcua.host == "0.0.0.0"
    assert opcua.stations == ["line1/st1"]


@needs_helm
def test_opcua_with_security_needs_the_certificate_secret() -> None:
    from helm_python.errors import HelmRenderError  # imported by test_charts' render already

    with pytest.raises(HelmRenderError, match=r"mes\.opcua\.certificateSecret"):
        render({"mes": {"opcua": {"enabled": True}}})
    docs = render({"mes": {"opcua": {"enabled": True, "security": "None"}}})
    (opcua,) = parse_endpoints(_mes_endpoints(docs), "http://unused")
    assert isinstance(opcua, OpcUaEndpoint) and opcua.security == "None"
    deployment = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "ls-linesight-mes"
    )
    assert deployment["spec"]["replicas"] == 1
    plain = render()
    mes = next(d for d in plain if d["kind"] == "Deployment" and d["metadata"]["name"] == "ls-linesight-mes")
    assert mes["spec"]["replicas"] == 2 and not [
        d for d in plain if d["metadata"]["name"].endswith("-mes-opcua")
    ]


def test_endpoint_secrets_are_read_from_mounted_files(tmp_path: Path) -> None:
    (tmp_path / "hmac").write_text("s3cret\n")
    (tmp_path / "mqtt").write_text("pw")
    raw = [
        {"kind": "webhook", "name": "erp", "url": "https://erp", "secret_file": str(tmp_path / "hmac")},
        {"kind": "mqtt", "name": "bus", "host": "broker", "password_file": str(tmp_path / "mqtt")},
    ]
    webhook, mqtt = parse_endpoints(raw, "http://unused")
    assert isinstance(webhook, WebhookEndpoint) and webhook.secret == "s3cret"
    assert isinstance(mqtt, MqttEndpoint) and mqtt.password == "pw"
    with pytest.raises(ValueError, match=r"'erp'.*secret file"):
        parse_endpoints([{**raw[0], "secret_file": str(tmp_path / "missing")}], "http://unused")
