"""Endpoint configuration, webhook signatures and the fan-out's outcome rules."""

from __future__ import annotations

from typing import Any

import pytest

from linesight.mes.app.adapters import MqttEndpoint, WebhookEndpoint, parse_endpoints, sign, verify

SECRET = "s3cret"
BODY = b'{"frame_id":"f1","disposition":"reject"}'


def test_signature_verifies_and_refuses_tampering_wrong_secret_and_replay() -> None:
    sig = sign(SECRET, "1000", BODY)
    assert sig.startswith("sha256=") and len(sig) == 7 + 64
    assert verify(SECRET, "1000", BODY, sig, now=1100, window_s=300) == ""
    assert verify(SECRET, "1000", BODY + b" ", sig, now=1100, window_s=300) == "signature does not match"
    assert verify("other", "1000", BODY, sig, now=1100, window_s=300) == "signature does not match"
    # The timestamp is part of what is signed: a fresh timestamp on an old signature fails too.
    assert verify(SECRET, "1200", BODY, sig, now=1200, window_s=300) == "signature does not match"
    assert "replay window" in verify(SECRET, "1000", BODY, sig, now=1301, window_s=300)
    assert "unix time" in verify(SECRET, "yesterday", BODY, sig, now=1100, window_s=300)


def test_endpoints_default_to_the_single_webhook_and_parse_several_kinds() -> None:
    assert parse_endpoints([], "http://mes/d") == [WebhookEndpoint(name="mes", url="http://mes/d")]
    eps = parse_endpoints(
        [
            {"name": "erp", "url": "https://erp/d", "secret": "k", "tls": {"ca_bundle": "/ca.pem"}},
            {"kind": "mqtt", "name": "bus", "host": "broker", "port": 8883, "username": "u"},
        ],
        "http://unused",
    )
    assert isinstance(eps[0], WebhookEndpoint) and eps[0].tls.ca_bundle == "/ca.pem"
    assert isinstance(eps[1], MqttEndpoint) and eps[1].port == 8883 and eps[1].tls is None


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ([{"kind": "mqtt", "name": "x"}], "host"),
        ([{"url": "http://a", "timeout_s": 0}], "timeout_s"),
        ([{"url": "http://a", "secrt": "typo"}], "secrt"),
        ([{"kind": "opc", "url": "x"}], "kind"),
        ([{"url": "http://a"}, {"url": "http://b"}], "unique"),
    ],
)
def test_bad_endpoint_configuration_is_refused_naming_the_field(
    raw: list[dict[str, Any]], needle: str
) -> None:
    with pytest.raises(ValueError, match=needle):
        parse_endpoints(raw, "http://unused")
