"""Endpoint configuration, webhook signatures and the fan-out's outcome rules."""

from __future__ import annotations

from typing import Any

import pytest

from linesight.mes.app.adapters import FanOut, MqttEndpoint, WebhookEndpoint, parse_endpoints, sign, verify
from linesight.mes.app.dispatch import Attempt

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


class Fixed:
    def __init__(self, outcome: str, code: int | None = None) -> None:
        self.outcome, self.code, self.calls = outcome, code, 0

    async def deliver(self, key: str, payload: dict[str, Any]) -> Attempt:
        self.calls += 1
        return Attempt(key, self.code, "" if self.outcome == "delivered" else self.outcome, self.outcome)


@pytest.mark.parametrize(
    ("outcomes", "expected"),
    [
        (("delivered", "delivered"), "delivered"),
        (("delivered", "retry"), "retry"),
        (("dead", "retry"), "retry"),
        (("dead", "delivered"), "dead"),
    ],
)
async def test_fan_out_is_delivered_only_when_every_endpoint_accepted(
    outcomes: tuple[str, str], expected: str
) -> None:
    a, b = Fixed(outcomes[0], 500), Fixed(outcomes[1], 503)
    att = await FanOut([("a", a), ("b", b)]).deliver("k1", {})
    assert att.outcome == expected and a.calls == b.calls == 1
    if expected != "delivered":
        assert att.error and att.status_code in (500, 503)
