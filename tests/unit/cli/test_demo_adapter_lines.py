"""The demo summary's MES lines: one per adapter with the count its receiving side read, and for
an adapter the demo could not show (no broker on the machine), the reason instead of a number."""

from __future__ import annotations

from linesight.cli.cmd_demo import NO_BROKER, adapter_lines


def test_one_line_per_adapter_with_count_and_where() -> None:
    summary = {
        "adapters": {"webhook": 300, "mqtt": 299, "opcua": 300},
        "adapter_urls": {"webhook": "http://h/d", "mqtt": "mqtt://h:1, Mosquitto", "opcua": "opc.tcp://h:2"},
        "adapters_not_shown": {},
        "adapter_errors": {"mqtt": "MQTT subscriber: lost"},
    }
    assert adapter_lines(summary) == [
        "  MES webhook        300 delivered (http://h/d)",
        "  MES mqtt           299 (mqtt://h:1, Mosquitto); MQTT subscriber: lost",
        "  MES opcua          300 (opc.tcp://h:2)",
    ]


def test_an_adapter_not_shown_says_why() -> None:
    summary = {
        "adapters": {"webhook": 5, "mqtt": None, "opcua": 5},
        "adapter_urls": {"webhook": "http://h/d", "opcua": "opc.tcp://h:2"},
        "adapters_not_shown": {"mqtt": NO_BROKER},
        "adapter_errors": {},
    }
    lines = adapter_lines(summary)
    assert lines[1] == f"  MES mqtt           not shown: {NO_BROKER}"
    assert "apt-get install mosquitto" in lines[1]
